//! Anthropic structured output as a forced tool: the schema is the tool's
//! `input_schema`, unchanged, and must be an object at the top level.

use serde::Serialize;
use serde_json::Value;
use serde_json::value::{RawValue, to_raw_value};

use crate::error::Result;
use crate::model::ProviderKind;
use crate::provider::encode::check_schema_name;
use crate::request::OutputSchema;
use crate::schema::Walk;

/// The forced tool that carries the schema to Anthropic.
#[derive(Debug)]
pub struct AnthropicTool {
    /// `[{"name","description","input_schema"}]`
    pub tools: Box<RawValue>,
    /// `{"type":"tool","name"}`
    pub tool_choice: Box<RawValue>,
}

/// Used when the schema has no top-level `description` of its own.
const DEFAULT_TOOL_DESCRIPTION: &str =
    "Record the requested information. The input must match this tool's schema.";

/// The forced tool for `schema`, whose top level must be an object.
pub fn anthropic_tool(schema: &OutputSchema) -> Result<AnthropicTool> {
    #[derive(Serialize)]
    struct Tool<'a> {
        name: &'a str,
        description: &'a str,
        input_schema: &'a Value,
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
