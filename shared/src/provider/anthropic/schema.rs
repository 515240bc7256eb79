//! Anthropic structured output as a forced tool: the schema is the tool's
//! `input_schema`, unchanged, and must be an object at the top level. With prompt
//! caching on, the tool also carries the batch's `cache_control` breakpoint.

use serde::Serialize;
use serde_json::Value;
use serde_json::value::{RawValue, to_raw_value};

use crate::error::Result;
use crate::model::ProviderKind;
use crate::provider::encode::check_schema_name;
use crate::request::{OutputSchema, PromptCache};
use crate::schema::Walk;

/// The forced tool that carries the schema to Anthropic.
#[derive(Debug)]
pub struct AnthropicTool {
    /// `[{"name","description","input_schema"}]`
    pub tools: Box<RawValue>,
    /// `{"type":"tool","name"}`
    pub tool_choice: Box<RawValue>,
}

/// An Anthropic prompt-cache breakpoint, `{"type":"ephemeral","ttl":"1h"|"5m"}`: the
/// prefix up to and including the block that carries it is cached for `ttl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CacheControl {
    r#type: &'static str,
    ttl: &'static str,
}

impl CacheControl {
    /// The breakpoint for `cache`, or `None` when caching is off (nothing is marked).
    pub fn for_cache(cache: PromptCache) -> Option<Self> {
        let ttl = match cache {
            PromptCache::Off => return None,
            PromptCache::FiveMinutes => "5m",
            PromptCache::OneHour => "1h",
        };
        Some(Self {
            r#type: "ephemeral",
            ttl,
        })
    }
}

/// Used when the schema has no top-level `description` of its own.
const DEFAULT_TOOL_DESCRIPTION: &str =
    "Record the requested information. The input must match this tool's schema.";

/// The forced tool for `schema`, whose top level must be an object.
pub fn anthropic_tool(schema: &OutputSchema) -> Result<AnthropicTool> {
    anthropic_cached_tool(schema, None)
}

/// The forced tool for `schema`, carrying `cache_control` when it is set. Tools come
/// first in Anthropic's cache order (tools, system, messages), so a breakpoint here
/// caches the part of the prefix that every request of the batch shares.
pub fn anthropic_cached_tool(
    schema: &OutputSchema,
    cache_control: Option<CacheControl>,
) -> Result<AnthropicTool> {
    #[derive(Serialize)]
    struct Tool<'a> {
        name: &'a str,
        description: &'a str,
        input_schema: &'a Value,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<CacheControl>,
    }
    #[derive(Serialize)]
    struct ToolChoice<'a> {
        r#type: &'static str,
        name: &'a str,
    }
    check_schema_name(schema, ProviderKind::Anthropic)?;
    if schema.schema.get("type").and_then(Value::as_str) != Some("object") {
        return Err(Walk::new(schema, ProviderKind::Anthropic).error(
            "#",
            "a tool's input_schema must be `\"type\": \"object\"` at the top level",
        ));
    }
    let description = schema
        .schema
        .get("description")
        .and_then(Value::as_str)
        .unwrap_or(DEFAULT_TOOL_DESCRIPTION);
    Ok(AnthropicTool {
        tools: to_raw_value(&[Tool {
            name: &schema.name,
            description,
            input_schema: &schema.schema,
            cache_control,
        }])?,
        tool_choice: to_raw_value(&ToolChoice {
            r#type: "tool",
            name: &schema.name,
        })?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::test_support::{schema, unsupported_reason};
    use serde_json::json;

    #[test]
    fn anthropic_forces_a_tool_carrying_the_schema() {
        let input =
            json!({"type":"object","description":"A person","properties":{"n":{"type":"string"}}});
        let tool = anthropic_tool(&schema("person", input.clone())).unwrap();
        let tools: Value = serde_json::from_str(tool.tools.get()).unwrap();
        let choice: Value = serde_json::from_str(tool.tool_choice.get()).unwrap();
        assert_eq!(
            tools,
            json!([{"name":"person","description":"A person","input_schema":input}])
        );
        assert_eq!(choice, json!({"type":"tool","name":"person"}));

        let plain = anthropic_tool(&schema("p", json!({"type":"object"}))).unwrap();
        let tools: Value = serde_json::from_str(plain.tools.get()).unwrap();
        assert_eq!(tools[0]["description"], DEFAULT_TOOL_DESCRIPTION);
    }

    #[test]
    fn a_cached_tool_carries_the_breakpoint_after_its_schema() {
        let input = json!({"type":"object"});
        let cases = [
            (
                PromptCache::OneHour,
                r#","cache_control":{"type":"ephemeral","ttl":"1h"}}]"#,
            ),
            (
                PromptCache::FiveMinutes,
                r#","cache_control":{"type":"ephemeral","ttl":"5m"}}]"#,
            ),
            (PromptCache::Off, r#""input_schema":{"type":"object"}}]"#),
        ];
        for (cache, ending) in cases {
            let tool =
                anthropic_cached_tool(&schema("p", input.clone()), CacheControl::for_cache(cache))
                    .unwrap();
            assert!(
                tool.tools.get().ends_with(ending),
                "{cache:?}: {}",
                tool.tools.get()
            );
        }
        let off = anthropic_cached_tool(&schema("p", input.clone()), None).unwrap();
        let plain = anthropic_tool(&schema("p", input)).unwrap();
        assert_eq!(off.tools.get(), plain.tools.get());
        assert!(!plain.tools.get().contains("cache_control"));
    }

    #[test]
    fn anthropic_requires_an_object_at_the_top() {
        for input in [
            json!({"type":"array","items":{"type":"string"}}),
            json!({"$ref":"#/$defs/X","$defs":{"X":{"type":"object"}}}),
        ] {
            let reason = unsupported_reason(anthropic_tool(&schema("s", input)));
            assert!(reason.contains("object"), "{reason}");
        }
    }
}
