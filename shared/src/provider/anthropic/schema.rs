//! Anthropic structured output, in one of two encodings:
//!
//! - `output_config.format` ([`anthropic_output_config`]), constrained decoding, for the
//!   models [`supports_output_config`] names: the schema is translated to the subset the
//!   API accepts ([`output_config_schema`]) and the answer is the message's text;
//! - a forced tool ([`anthropic_cached_tool`]) for older models: the schema is the
//!   tool's `input_schema`, unchanged, and the answer is the tool call's input. With
//!   prompt caching on, the tool also carries the batch's `cache_control` breakpoint.
//!
//! Both need an object at the top level.

use serde::Serialize;
use serde_json::value::{RawValue, to_raw_value};
use serde_json::{Map, Value};

use crate::error::Result;
use crate::model::ProviderKind;
use crate::provider::encode::check_schema_name;
use crate::request::{OutputSchema, PromptCache};
use crate::schema::{Walk, resolve_local, type_names};

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

/// Whether `model` takes `output_config.format` (structured outputs, generally available
/// for Claude 4.5 and later: Opus, Sonnet and Haiku 4.5, Opus and Sonnet 4.6, Opus 4.7,
/// …). Older models (Opus 4.1 had it only as a beta, Claude 4, 3.x) and names without a
/// version get the forced tool, which every model takes.
///
/// Model ids carry the version as the first number after `claude-`, then the minor one:
/// `claude-sonnet-4-5`, `claude-haiku-4-5-20251001`, `claude-3-5-haiku-latest`. An
/// eight-digit snapshot date is not a minor version (`claude-sonnet-4-20250514` is 4.0).
pub fn supports_output_config(model: &str) -> bool {
    let mut numbers = model
        .strip_prefix("claude-")
        .unwrap_or("")
        .split('-')
        .skip_while(|part| !is_version_number(part));
    let Some(major) = numbers.next().and_then(|n| n.parse::<u32>().ok()) else {
        return false;
    };
    let minor = numbers
        .next()
        .filter(|part| is_version_number(part))
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(0);
    (major, minor) >= (4, 5)
}

/// A version number in a model id: one or two digits (a snapshot date has eight).
fn is_version_number(part: &str) -> bool {
    (1..=2).contains(&part.len()) && part.bytes().all(|b| b.is_ascii_digit())
}

/// `output_config` asking for answers that match `schema`:
/// `{"format":{"type":"json_schema","schema":…}}`, the schema translated by
/// [`output_config_schema`].
pub fn anthropic_output_config(schema: &OutputSchema) -> Result<Box<RawValue>> {
    #[derive(Serialize)]
    struct OutputConfig<'a> {
        format: Format<'a>,
    }
    #[derive(Serialize)]
    struct Format<'a> {
        r#type: &'static str,
        schema: &'a Value,
    }
    let translated = output_config_schema(schema)?;
    Ok(to_raw_value(&OutputConfig {
        format: Format {
            r#type: "json_schema",
            schema: &translated,
        },
    })?)
}

/// String formats structured outputs accept; others are stripped.
const SUPPORTED_FORMATS: &[&str] = &[
    "date-time",
    "time",
    "date",
    "duration",
    "email",
    "hostname",
    "uri",
    "ipv4",
    "ipv6",
    "uuid",
];

/// Keywords kept as they are.
const OUTPUT_CONFIG_KEPT: &[&str] = &["type", "title", "description", "required"];

/// Constraints structured outputs refuse ("For 'integer' type, property 'minimum' is
/// not supported") but that only narrow values: stripped, and written into the
/// description as the official SDKs do, so that the model may still follow them. The
/// collector validates answers against the user's schema, so they still hold.
const MOVED_TO_DESCRIPTION: &[&str] = &[
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minLength",
    "maxLength",
    "pattern",
    "maxItems",
    "uniqueItems",
    "minProperties",
    "maxProperties",
];

/// Annotations dropped without a trace.
const DROPPED: &[&str] = &[
    "$schema",
    "$id",
    "$comment",
    "default",
    "examples",
    "readOnly",
    "writeOnly",
    "deprecated",
    "contentEncoding",
    "contentMediaType",
];

/// The schema limits of structured outputs: optional properties and properties with a
/// union type (`anyOf`, or a `type` list), across the whole schema.
const MAX_OPTIONAL_PROPERTIES: usize = 24;
const MAX_UNION_PROPERTIES: usize = 16;

/// The user's schema in the subset `output_config.format` accepts: every object gets
/// `additionalProperties: false` (which only narrows: the user's schema is what answers
/// are validated against), `oneOf` becomes `anyOf`, unsupported constraints move into
/// the description. Fails, naming the path, on what the subset cannot express: a
/// recursive schema, a free-form object, tuples, conditionals, non-primitive enums, a
/// top level that is not an object, or more optional or union-typed properties than
/// the API allows. Optional properties stay optional (unlike OpenAI strict mode), so
/// answers need no fix-up.
pub fn output_config_schema(schema: &OutputSchema) -> Result<Value> {
    check_schema_name(schema, ProviderKind::Anthropic)?;
    let mut walk = Walk::new(schema, ProviderKind::Anthropic);
    if let Some(reference) = recursive_ref(&schema.schema) {
        return Err(walk.error(
            "#",
            format!(
                "$ref {reference:?} makes the schema recursive, which structured outputs do not support"
            ),
        ));
    }
    let translated = output_node(&mut walk, &schema.schema, "#")?;
    if translated.get("type").and_then(Value::as_str) != Some("object") {
        return Err(walk.error(
            "#",
            "structured outputs need `\"type\": \"object\"` at the top level",
        ));
    }
    let counts = PropertyCounts::of(&translated);
    for (count, limit, what) in [
        (counts.optional, MAX_OPTIONAL_PROPERTIES, "optional"),
        (counts.unions, MAX_UNION_PROPERTIES, "union-typed"),
    ] {
        if count > limit {
            return Err(walk.error(
                "#",
                format!("{count} {what} properties; structured outputs allow {limit}"),
            ));
        }
    }
    Ok(translated)
}

fn output_node(walk: &mut Walk<'_>, node: &Value, path: &str) -> Result<Value> {
    let map = walk.object(node, path)?.clone();
    if map.contains_key("$ref") && map.len() > 1 {
        return walk.inline_ref(map, path, output_node);
    }
    let mut out = Map::new();
    let mut moved = Vec::new();
    for (key, value) in &map {
        let child_path = format!("{path}/{key}");
        match key.as_str() {
            "$defs" | "definitions" => {
                let mut defs = Map::new();
                for (name, def) in walk.object(value, &child_path)? {
                    let def = output_node(walk, def, &format!("{child_path}/{name}"))?;
                    defs.insert(name.clone(), def);
                }
                out.insert(key.clone(), Value::Object(defs));
            }
            "$ref" => {
                let reference = value
                    .as_str()
                    .ok_or_else(|| walk.error(path, "$ref must be a string"))?;
                walk.resolve(reference, path)?;
                out.insert(key.clone(), value.clone());
            }
            // Rebuilt below, once the node is known to be an object.
            "properties" | "additionalProperties" => {}
            "items" => {
                if !value.is_object() {
                    return Err(walk.error(
                        &child_path,
                        "items must be a single schema (tuples and `items: true` are not supported)",
                    ));
                }
                let items = output_node(walk, value, &child_path)?;
                out.insert(key.clone(), items);
            }
            "anyOf" | "oneOf" | "allOf" => {
                let variants = walk.translate_list(value, &child_path, output_node)?;
                // Only anyOf and allOf are supported; oneOf's variants are kept as anyOf
                // (the user's schema still decides whether an answer matches exactly one).
                let keyword = if key == "allOf" { "allOf" } else { "anyOf" };
                out.insert(keyword.to_string(), variants);
            }
            "enum" | "const" => {
                let values = match (key.as_str(), value) {
                    ("enum", Value::Array(values)) => values.as_slice(),
                    ("enum", _) => return Err(walk.error(path, "enum must be an array")),
                    _ => std::slice::from_ref(value),
                };
                if values.iter().any(|v| v.is_array() || v.is_object()) {
                    return Err(walk.error(
                        path,
                        format!("{key} values must be strings, numbers, booleans or null"),
                    ));
                }
                out.insert(key.clone(), value.clone());
            }
            "format"
                if value
                    .as_str()
                    .is_some_and(|f| SUPPORTED_FORMATS.contains(&f)) =>
            {
                out.insert(key.clone(), value.clone());
            }
            "minItems" if matches!(value.as_u64(), Some(0 | 1)) => {
                out.insert(key.clone(), value.clone());
            }
            "format" | "minItems" => moved.push((key, value)),
            k if OUTPUT_CONFIG_KEPT.contains(&k) => {
                out.insert(key.clone(), value.clone());
            }
            k if MOVED_TO_DESCRIPTION.contains(&k) => moved.push((key, value)),
            k if DROPPED.contains(&k) => {}
            other => {
                return Err(walk.error(
                    path,
                    format!("keyword {other:?} is not supported by structured outputs"),
                ));
            }
        }
    }
    if !moved.is_empty() {
        append_to_description(&mut out, &moved);
    }
    let types = type_names(&map);
    let is_object =
        types.contains(&"object") || (types.is_empty() && map.contains_key("properties"));
    if is_object {
        let Some(properties) = map.get("properties") else {
            return Err(walk.error(
                path,
                "an object without properties is a free-form map, which structured outputs \
                 cannot express; list its properties",
            ));
        };
        let mut translated = Map::new();
        for (name, property) in walk.object(properties, &format!("{path}/properties"))? {
            let property = output_node(walk, property, &format!("{path}/properties/{name}"))?;
            translated.insert(name.clone(), property);
        }
        out.entry("type").or_insert_with(|| Value::from("object"));
        out.insert("properties".to_string(), Value::Object(translated));
        out.insert("additionalProperties".to_string(), Value::Bool(false));
    } else if map.contains_key("properties") {
        return Err(walk.error(path, "properties on a schema whose type is not object"));
    }
    Ok(Value::Object(out))
}

/// Appends `{key: value, …}` to the node's description, as the official SDKs do with the
/// constraints they strip.
fn append_to_description(out: &mut Map<String, Value>, moved: &[(&String, &Value)]) {
    let listed: Vec<String> = moved
        .iter()
        .map(|(key, value)| format!("{key}: {value}"))
        .collect();
    let constraints = format!("{{{}}}", listed.join(", "));
    let description = match out.get("description").and_then(Value::as_str) {
        Some(own) => format!("{own}\n\n{constraints}"),
        None => constraints,
    };
    out.insert("description".to_string(), Value::String(description));
}

/// A `$ref` that reaches itself, following references from the root (a recursive schema).
fn recursive_ref(root: &Value) -> Option<String> {
    fn visit(root: &Value, node: &Value, stack: &mut Vec<String>) -> Option<String> {
        match node {
            Value::Object(map) => {
                if let Some(Value::String(reference)) = map.get("$ref") {
                    if stack.contains(reference) {
                        return Some(reference.clone());
                    }
                    if let Some(target) = resolve_local(root, reference) {
                        stack.push(reference.clone());
                        let found = visit(root, target, stack);
                        stack.pop();
                        if found.is_some() {
                            return found;
                        }
                    }
                }
                // Definitions are reached through the references to them.
                map.iter()
                    .filter(|(key, _)| !matches!(key.as_str(), "$defs" | "definitions" | "$ref"))
                    .find_map(|(_, child)| visit(root, child, stack))
            }
            Value::Array(items) => items.iter().find_map(|item| visit(root, item, stack)),
            _ => None,
        }
    }
    visit(root, root, &mut Vec::new())
}

/// How many optional and union-typed properties a translated schema has (definitions
/// counted once, where they are defined).
#[derive(Debug, Default)]
struct PropertyCounts {
    optional: usize,
    unions: usize,
}

impl PropertyCounts {
    fn of(schema: &Value) -> Self {
        let mut counts = Self::default();
        counts.visit(schema);
        counts
    }

    fn visit(&mut self, node: &Value) {
        let Value::Object(map) = node else {
            return;
        };
        for (keyword, child) in map {
            match (keyword.as_str(), child) {
                ("properties", Value::Object(properties)) => {
                    let required = map.get("required").and_then(Value::as_array);
                    for (name, property) in properties {
                        let listed = required.is_some_and(|r| r.iter().any(|n| n == name));
                        self.optional += usize::from(!listed);
                        let union = property.get("anyOf").is_some()
                            || property.get("type").is_some_and(Value::is_array);
                        self.unions += usize::from(union);
                        self.visit(property);
                    }
                }
                ("$defs" | "definitions", Value::Object(defs)) => {
                    defs.values().for_each(|def| self.visit(def))
                }
                ("anyOf" | "allOf", Value::Array(variants)) => {
                    variants.iter().for_each(|variant| self.visit(variant))
                }
                ("items", item) => self.visit(item),
                _ => {}
            }
        }
    }
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

    #[test]
    fn which_models_take_output_config() {
        let cases = [
            ("claude-opus-4-5", true),
            ("claude-opus-4-5-20251101", true),
            ("claude-sonnet-4-5", true),
            ("claude-sonnet-4-5-20250929", true),
            ("claude-haiku-4-5-20251001", true),
            ("claude-opus-4-6", true),
            ("claude-sonnet-4-6", true),
            ("claude-opus-4-7", true),
            ("claude-sonnet-5", true),
            ("claude-opus-4-1", false),
            ("claude-opus-4-1-20250805", false),
            ("claude-sonnet-4-0", false),
            ("claude-sonnet-4-20250514", false),
            ("claude-opus-4-20250514", false),
            ("claude-3-7-sonnet-20250219", false),
            ("claude-3-5-haiku-20241022", false),
            ("claude-3-5-haiku-latest", false),
            ("claude-3-haiku-20240307", false),
            ("claude", false),
            ("claude-mythos-preview", false),
            ("gpt-4o", false),
            ("", false),
        ];
        for (model, expected) in cases {
            assert_eq!(supports_output_config(model), expected, "{model}");
        }
    }

    fn translated(input: Value) -> Value {
        output_config_schema(&schema("s", input)).unwrap()
    }

    #[test]
    fn output_config_closes_objects_and_moves_constraints_to_the_description() {
        let input = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {
                "name": {"type": "string", "minLength": 1, "description": "Full name"},
                "email": {"type": "string", "format": "email"},
                "code": {"type": "string", "format": "iso-4217"},
                "age": {"type": "integer", "minimum": 0, "maximum": 150, "default": 30},
                "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 5},
                "rows": {"type": "array", "items": {"type": "integer"}, "minItems": 2},
                "kind": {"oneOf": [{"const": "a"}, {"enum": ["b", null]}]},
                "nested": {"type": "object", "properties": {"x": {"type": "number"}}, "additionalProperties": true}
            },
            "required": ["name"]
        });
        assert_eq!(
            translated(input),
            json!({
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string", "description": "Full name\n\n{minLength: 1}"},
                    "email": {"type": "string", "format": "email"},
                    "code": {"type": "string", "description": "{format: \"iso-4217\"}"},
                    "age": {"type": "integer", "description": "{minimum: 0, maximum: 150}"},
                    "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "description": "{maxItems: 5}"},
                    "rows": {"type": "array", "items": {"type": "integer"}, "description": "{minItems: 2}"},
                    "kind": {"anyOf": [{"const": "a"}, {"enum": ["b", null]}]},
                    "nested": {"type": "object", "properties": {"x": {"type": "number"}}, "additionalProperties": false}
                },
                "additionalProperties": false
            })
        );
    }

    #[test]
    fn output_config_keeps_definitions_and_references() {
        let input = json!({
            "type": "object",
            "properties": {
                "home": {"$ref": "#/$defs/address"},
                "work": {"$ref": "#/$defs/address", "description": "Office"}
            },
            "$defs": {"address": {"type": "object", "properties": {"city": {"type": "string"}}}}
        });
        let closed_address = json!({
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "additionalProperties": false
        });
        let mut inlined = closed_address.clone();
        inlined["description"] = json!("Office");
        let out = translated(input);
        assert_eq!(
            out["properties"]["home"],
            json!({"$ref": "#/$defs/address"})
        );
        assert_eq!(out["properties"]["work"], inlined);
        assert_eq!(out["$defs"]["address"], closed_address);
    }

    #[test]
    fn output_config_refuses_what_its_subset_cannot_express() {
        let cases = [
            (
                json!({"type": "array", "items": {"type": "string"}}),
                "top level",
            ),
            (json!({"type": "object"}), "free-form"),
            (
                json!({"type": "object", "properties": {"m": {"type": "object", "additionalProperties": {"type": "string"}}}}),
                "free-form",
            ),
            (
                json!({"type": "object", "properties": {"next": {"$ref": "#"}}}),
                "recursive",
            ),
            (
                json!({"type": "object", "properties": {"t": {"$ref": "#/$defs/t"}},
                       "$defs": {"t": {"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/t"}}}}}}),
                "recursive",
            ),
            (
                json!({"type": "object", "properties": {"p": {"type": "array", "prefixItems": [{"type": "string"}]}}}),
                "prefixItems",
            ),
            (
                json!({"type": "object", "properties": {"e": {"enum": [{"a": 1}]}}}),
                "enum values",
            ),
            (
                json!({"type": "object", "properties": {"r": {"$ref": "https://example.com/s.json"}}}),
                "does not point inside",
            ),
        ];
        for (input, words) in cases {
            let reason = unsupported_reason(output_config_schema(&schema("s", input.clone())));
            assert!(reason.contains(words), "{input}: {reason}");
        }
    }

    #[test]
    fn output_config_limits_optional_and_union_properties() {
        let properties = |n: usize, property: Value| -> Value {
            (0..n)
                .map(|i| (format!("p{i}"), property.clone()))
                .collect::<Map<_, _>>()
                .into()
        };
        let optional =
            |n| json!({"type": "object", "properties": properties(n, json!({"type": "string"}))});
        assert!(output_config_schema(&schema("s", optional(MAX_OPTIONAL_PROPERTIES))).is_ok());
        let reason = unsupported_reason(output_config_schema(&schema("s", optional(25))));
        assert!(reason.contains("25 optional properties"), "{reason}");

        let unions = properties(17, json!({"type": ["string", "null"]}));
        let names: Vec<String> = (0..17).map(|i| format!("p{i}")).collect();
        let input = json!({"type": "object", "properties": unions, "required": names});
        let reason = unsupported_reason(output_config_schema(&schema("s", input)));
        assert!(reason.contains("17 union-typed properties"), "{reason}");
    }
}
