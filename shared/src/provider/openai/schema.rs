//! OpenAI strict structured outputs: every object gets `additionalProperties: false`,
//! `required` lists every property, and properties that were optional become nullable.
//! [`remove_introduced_nulls`] undoes the last step on answers so that they validate
//! against the user's schema.

use std::collections::HashSet;

use serde::Serialize;
use serde_json::value::{RawValue, to_raw_value};
use serde_json::{Map, Value};

use crate::error::Result;
use crate::model::ProviderKind;
use crate::provider::encode::check_schema_name;
use crate::request::OutputSchema;
use crate::schema::{Walk, resolve_local, type_names};

/// `response_format` for an OpenAI chat completion in strict structured-output mode.
pub fn openai_response_format(schema: &OutputSchema) -> Result<Box<RawValue>> {
    #[derive(Serialize)]
    struct ResponseFormat<'a> {
        r#type: &'static str,
        json_schema: JsonSchemaFormat<'a>,
    }
    #[derive(Serialize)]
    struct JsonSchemaFormat<'a> {
        name: &'a str,
        strict: bool,
        schema: &'a Value,
    }
    let strict = openai_strict_schema(schema)?;
    Ok(to_raw_value(&ResponseFormat {
        r#type: "json_schema",
        json_schema: JsonSchemaFormat {
            name: &schema.name,
            strict: true,
            schema: &strict,
        },
    })?)
}

/// The user's schema rewritten for OpenAI strict mode (the `schema` inside
/// `response_format.json_schema`).
pub fn openai_strict_schema(schema: &OutputSchema) -> Result<Value> {
    check_schema_name(schema, ProviderKind::OpenAi)?;
    let mut walk = Walk::new(schema, ProviderKind::OpenAi);
    let strict = openai_node(&mut walk, &schema.schema, "#")?;
    if strict.get("type").and_then(Value::as_str) != Some("object") {
        return Err(walk.error(
            "#",
            "the top-level schema must be `\"type\": \"object\"` (not a union or another type)",
        ));
    }
    let size = StrictSize::of(&strict);
    if size.nesting > MAX_STRICT_NESTING {
        let reason = format!(
            "{} levels of nesting (optional properties made nullable count as one more); \
             OpenAI strict mode allows {MAX_STRICT_NESTING}",
            size.nesting
        );
        return Err(walk.error("#", reason));
    }
    if size.properties > MAX_STRICT_PROPERTIES {
        let reason = format!(
            "{} object properties in all; OpenAI strict mode allows {MAX_STRICT_PROPERTIES}",
            size.properties
        );
        return Err(walk.error("#", reason));
    }
    Ok(strict)
}

/// OpenAI's limits on a strict schema ("Supported schemas": up to 10 levels of nesting
/// and 5,000 object properties in total), refused at submit rather than on every row.
const MAX_STRICT_NESTING: usize = 10;
const MAX_STRICT_PROPERTIES: usize = 5000;

/// How deep and how large a strict schema is. Each step into a subschema (a
/// property, a definition, `items`, a union branch) is one level; a `$ref` is not
/// followed, so a recursive schema has a finite depth.
#[derive(Debug, Default)]
struct StrictSize {
    nesting: usize,
    properties: usize,
}

impl StrictSize {
    fn of(schema: &Value) -> Self {
        let mut size = Self::default();
        size.visit(schema, 0);
        size
    }

    fn visit(&mut self, schema: &Value, level: usize) {
        let Value::Object(node) = schema else {
            return;
        };
        self.nesting = self.nesting.max(level);
        for (keyword, child) in node {
            match (keyword.as_str(), child) {
                ("properties" | "$defs" | "definitions", Value::Object(children)) => {
                    if keyword == "properties" {
                        self.properties += children.len();
                    }
                    children.values().for_each(|c| self.visit(c, level + 1));
                }
                ("items" | "anyOf" | "oneOf" | "allOf" | "prefixItems", Value::Array(list)) => {
                    list.iter().for_each(|c| self.visit(c, level + 1));
                }
                ("items", child) => self.visit(child, level + 1),
                _ => {}
            }
        }
    }
}

/// Keywords OpenAI strict mode accepts as they are.
const OPENAI_KEPT: &[&str] = &[
    "type",
    "enum",
    "const",
    "title",
    "description",
    "pattern",
    "format",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minItems",
    "maxItems",
];

/// Keywords stripped for OpenAI: annotations, and constraints strict mode refuses
/// that local validation still enforces.
const OPENAI_STRIPPED: &[&str] = &[
    "$schema",
    "$id",
    "$comment",
    "default",
    "examples",
    "readOnly",
    "writeOnly",
    "deprecated",
    "minLength",
    "maxLength",
    "uniqueItems",
    "contentEncoding",
    "contentMediaType",
];

/// Removes from `answer` the `null`s that [`openai_strict_schema`] made the model
/// write for properties that were optional in `original` (and did not accept null
/// there), so that the answer validates against `original`. Follows `$ref`, `allOf`,
/// and for `anyOf`/`oneOf` the variant whose properties match the answer's keys.
pub fn remove_introduced_nulls(original: &Value, answer: &mut Value) {
    NullRemoval { root: original }.walk(original, answer, 0);
}

/// Whether [`remove_introduced_nulls`] can ever change an answer to `original`: some
/// property it reaches is optional and does not accept null. When none is (every
/// property required, or nullable already), answers need no walk at all, so a
/// parser decides this once per schema instead of walking every line.
pub fn introduces_nulls(original: &Value) -> bool {
    NullRemoval { root: original }.has_removable(original, &mut Vec::new(), 0)
}

fn openai_node(walk: &mut Walk<'_>, node: &Value, path: &str) -> Result<Value> {
    let map = walk.merge_single_all_of(walk.object(node, path)?.clone(), path)?;
    if map.contains_key("$ref") && map.len() > 1 {
        return walk.inline_ref(map, path, openai_node);
    }
    let mut out = Map::new();
    for (key, value) in &map {
        let child_path = format!("{path}/{key}");
        match key.as_str() {
            "$defs" | "definitions" => {
                let defs = openai_defs(walk, value, &child_path)?;
                out.insert(key.clone(), defs);
            }
            // Rebuilt below, once the node is known to be an object.
            "properties" | "required" => {}
            "additionalProperties" => {
                if value != &Value::Bool(false) {
                    return Err(walk.error(
                        path,
                        "additionalProperties other than false makes a free-form map, \
                         which strict mode cannot express; list the properties instead",
                    ));
                }
            }
            "items" => {
                if !value.is_object() {
                    return Err(walk.error(
                        &child_path,
                        "items must be a single schema (tuples and `items: true` are not supported)",
                    ));
                }
                let items = openai_node(walk, value, &child_path)?;
                out.insert(key.clone(), items);
            }
            "anyOf" => {
                let variants = walk.translate_list(value, &child_path, openai_node)?;
                out.insert(key.clone(), variants);
            }
            "$ref" => {
                let reference = value
                    .as_str()
                    .ok_or_else(|| walk.error(path, "$ref must be a string"))?;
                walk.resolve(reference, path)?;
                out.insert(key.clone(), value.clone());
            }
            "oneOf" => {
                return Err(walk.error(
                    path,
                    "oneOf is not supported by OpenAI strict mode; use anyOf",
                ));
            }
            k if OPENAI_KEPT.contains(&k) => {
                out.insert(key.clone(), value.clone());
            }
            k if OPENAI_STRIPPED.contains(&k) => {}
            other => {
                return Err(walk.error(
                    path,
                    format!("keyword {other:?} is not supported by OpenAI strict mode"),
                ));
            }
        }
    }

    let types = type_names(&map);
    let is_object =
        types.contains(&"object") || (types.is_empty() && map.contains_key("properties"));
    if is_object {
        let properties = openai_properties(walk, &map, path)?;
        out.entry("type").or_insert_with(|| Value::from("object"));
        out.insert(
            "required".to_string(),
            properties.keys().cloned().map(Value::String).collect(),
        );
        out.insert("properties".to_string(), Value::Object(properties));
        out.insert("additionalProperties".to_string(), Value::Bool(false));
    } else if map.contains_key("properties") {
        return Err(walk.error(path, "properties on a schema whose type is not object"));
    }
    if types.contains(&"array") && !out.contains_key("items") {
        return Err(walk.error(
            path,
            "an array without items holds free-form values; give items a schema",
        ));
    }
    let constrained = ["type", "anyOf", "$ref", "enum", "const"]
        .iter()
        .any(|k| out.contains_key(*k));
    if !constrained {
        return Err(walk.error(
            path,
            "this schema accepts any JSON value, which strict mode cannot express; give it a type",
        ));
    }
    Ok(Value::Object(out))
}

/// All properties, translated; those not in `required` made nullable.
fn openai_properties(
    walk: &mut Walk<'_>,
    map: &Map<String, Value>,
    path: &str,
) -> Result<Map<String, Value>> {
    let Some(properties) = map.get("properties") else {
        return Err(walk.error(
            path,
            "an object without properties is a free-form map, which strict mode cannot express; \
             list its properties",
        ));
    };
    let properties = walk.object(properties, &format!("{path}/properties"))?;
    let required = required_names(map);
    let mut out = Map::new();
    for (name, property) in properties {
        let translated = openai_node(walk, property, &format!("{path}/properties/{name}"))?;
        let translated = if required.contains(name.as_str()) {
            translated
        } else {
            nullable(translated)
        };
        out.insert(name.clone(), translated);
    }
    Ok(out)
}

fn openai_defs(walk: &mut Walk<'_>, defs: &Value, path: &str) -> Result<Value> {
    let mut out = Map::new();
    for (name, def) in walk.object(defs, path)? {
        out.insert(
            name.clone(),
            openai_node(walk, def, &format!("{path}/{name}"))?,
        );
    }
    Ok(Value::Object(out))
}

/// `schema` that also accepts null: `type: [T, "null"]` for a plain typed schema,
/// an extra `{"type":"null"}` variant for a union, a union with null otherwise.
/// The property names an object schema lists as `required`.
fn required_names(object: &Map<String, Value>) -> HashSet<&str> {
    object
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

fn nullable(schema: Value) -> Value {
    let null_variant = || serde_json::json!({ "type": "null" });
    let Value::Object(mut map) = schema else {
        return schema;
    };
    if type_names(&map).contains(&"null") {
        return Value::Object(map);
    }
    let has_const = map.contains_key("const");
    match map.get_mut("type") {
        Some(Value::String(t)) if !has_const => {
            let t = std::mem::take(t);
            map.insert("type".to_string(), serde_json::json!([t, "null"]));
            add_null_to_enum(&mut map);
            return Value::Object(map);
        }
        Some(Value::Array(ts)) if !has_const => {
            ts.push(Value::from("null"));
            add_null_to_enum(&mut map);
            return Value::Object(map);
        }
        _ => {}
    }
    if !map.contains_key("type")
        && let Some(Value::Array(variants)) = map.get_mut("anyOf")
    {
        if !variants.contains(&null_variant()) {
            variants.push(null_variant());
        }
        return Value::Object(map);
    }
    serde_json::json!({ "anyOf": [Value::Object(map), null_variant()] })
}

fn add_null_to_enum(map: &mut Map<String, Value>) {
    if let Some(Value::Array(values)) = map.get_mut("enum")
        && !values.contains(&Value::Null)
    {
        values.push(Value::Null);
    }
}

/// Walks an answer alongside the original schema (see [`remove_introduced_nulls`]).
struct NullRemoval<'a> {
    root: &'a Value,
}

/// Bounds `$ref` chains that never reach a value (`{"$ref":"#"}` at the root).
const MAX_SCHEMA_DEPTH: usize = 128;

impl<'a> NullRemoval<'a> {
    fn walk(&self, schema: &'a Value, value: &mut Value, depth: usize) {
        if depth > MAX_SCHEMA_DEPTH {
            return;
        }
        let Value::Object(node) = schema else {
            return;
        };
        if let Some(target) = self.ref_target(node) {
            self.walk(target, value, depth + 1);
        }
        for part in node
            .get("allOf")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            self.walk(part, value, depth + 1);
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(variant) = node
                .get(key)
                .and_then(Value::as_array)
                .and_then(|variants| self.matching_variant(variants, value))
            {
                self.walk(variant, value, depth + 1);
            }
        }
        match value {
            Value::Object(fields) => {
                let Some(properties) = node.get("properties").and_then(Value::as_object) else {
                    return;
                };
                let required = required_names(node);
                for (name, property) in properties {
                    match fields.get_mut(name) {
                        Some(Value::Null)
                            if !required.contains(name.as_str())
                                && !self.accepts_null(property, 0) =>
                        {
                            fields.remove(name);
                        }
                        Some(field) => self.walk(property, field, depth + 1),
                        None => {}
                    }
                }
            }
            Value::Array(items) => {
                if let Some(item_schema) = node.get("items") {
                    for item in items {
                        self.walk(item_schema, item, depth + 1);
                    }
                }
            }
            _ => {}
        }
    }

    /// Whether a property that [`Self::walk`] could remove is reachable from `schema`
    /// (through the same keywords, every `anyOf`/`oneOf` variant included).
    fn has_removable(&self, schema: &'a Value, seen: &mut Vec<*const Value>, depth: usize) -> bool {
        let Value::Object(node) = schema else {
            return false;
        };
        let address: *const Value = schema;
        if depth > MAX_SCHEMA_DEPTH || seen.contains(&address) {
            return false;
        }
        seen.push(address);
        let required = required_names(node);
        let properties = node
            .get("properties")
            .and_then(Value::as_object)
            .into_iter()
            .flatten();
        for (name, property) in properties {
            if !required.contains(name.as_str()) && !self.accepts_null(property, 0) {
                return true;
            }
            if self.has_removable(property, seen, depth + 1) {
                return true;
            }
        }
        let variants = ["allOf", "anyOf", "oneOf"]
            .into_iter()
            .filter_map(|key| node.get(key).and_then(Value::as_array))
            .flatten();
        let children = self
            .ref_target(node)
            .into_iter()
            .chain(node.get("items"))
            .chain(variants);
        for child in children {
            if self.has_removable(child, seen, depth + 1) {
                return true;
            }
        }
        false
    }

    fn ref_target(&self, node: &Map<String, Value>) -> Option<&'a Value> {
        let reference = node.get("$ref")?.as_str()?;
        resolve_local(self.root, reference)
    }

    /// `schema` with its `$ref` chain followed.
    fn resolved(&self, mut schema: &'a Value) -> &'a Value {
        for _ in 0..MAX_SCHEMA_DEPTH {
            match schema.as_object().and_then(|node| self.ref_target(node)) {
                Some(target) => schema = target,
                None => break,
            }
        }
        schema
    }

    /// The variant an answer took: for an object, the one whose properties are
    /// exactly its keys (strict mode makes every property present), else the first
    /// whose properties include them; for an array, the first with `items`.
    fn matching_variant(&self, variants: &'a [Value], value: &Value) -> Option<&'a Value> {
        let resolved = || variants.iter().map(|v| self.resolved(v));
        match value {
            Value::Object(fields) => {
                let names_of = |v: &'a Value| v.get("properties").and_then(Value::as_object);
                resolved()
                    .find(|v| {
                        names_of(v).is_some_and(|p| {
                            p.len() == fields.len() && fields.keys().all(|k| p.contains_key(k))
                        })
                    })
                    .or_else(|| {
                        resolved().find(|v| {
                            names_of(v).is_some_and(|p| fields.keys().all(|k| p.contains_key(k)))
                        })
                    })
            }
            Value::Array(_) => resolved().find(|v| v.get("items").is_some()),
            _ => None,
        }
    }

    /// Whether the original schema itself accepts `null` (then a null is the
    /// model's answer, not something the translation introduced).
    fn accepts_null(&self, schema: &'a Value, depth: usize) -> bool {
        if depth > MAX_SCHEMA_DEPTH {
            return false;
        }
        let node = match schema {
            Value::Bool(b) => return *b,
            Value::Object(node) => node,
            _ => return false,
        };
        if let Some(target) = self.ref_target(node)
            && !self.accepts_null(target, depth + 1)
        {
            return false;
        }
        let any_variant = |key: &str| {
            node.get(key)
                .and_then(Value::as_array)
                .map(|vs| vs.iter().any(|v| self.accepts_null(v, depth + 1)))
        };
        let checks = [
            node.get("type").map(|t| match t {
                Value::String(t) => t == "null",
                Value::Array(ts) => ts.iter().any(|t| t == "null"),
                _ => false,
            }),
            node.get("enum")
                .map(|e| e.as_array().is_some_and(|e| e.contains(&Value::Null))),
            node.get("const").map(Value::is_null),
            any_variant("anyOf"),
            any_variant("oneOf"),
            node.get("allOf")
                .and_then(Value::as_array)
                .map(|parts| parts.iter().all(|p| self.accepts_null(p, depth + 1))),
        ];
        // Every keyword present must let null through; a schema with none of them
        // (only annotations, or only a `$ref` that accepts null) accepts anything.
        checks.iter().flatten().all(|ok| *ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::anthropic::schema::anthropic_tool;
    use crate::schema::test_support::{schema, unsupported_reason};
    use serde_json::json;

    fn strict(value: Value) -> Result<Value> {
        openai_strict_schema(&schema("answer", value))
    }

    fn is_valid(schema: &Value, instance: &Value) -> bool {
        jsonschema::validator_for(schema)
            .expect("schema compiles")
            .is_valid(instance)
    }

    #[test]
    fn openai_response_format_wraps_the_strict_schema() {
        let raw = openai_response_format(&schema(
            "person",
            json!({"type":"object","properties":{"name":{"type":"string"}},"required":["name"]}),
        ))
        .unwrap();
        let parsed: Value = serde_json::from_str(raw.get()).unwrap();
        assert_eq!(
            parsed,
            json!({"type":"json_schema","json_schema":{"name":"person","strict":true,"schema":{
                "type":"object",
                "properties":{"name":{"type":"string"}},
                "required":["name"],
                "additionalProperties":false
            }}})
        );
    }

    #[test]
    fn openai_closes_every_object_requires_all_and_makes_optional_nullable() {
        let out = strict(json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "description": "full name"},
                "age": {"type": "integer"},
                "tags": {"type": "array", "items": {
                    "type": "object",
                    "properties": {"label": {"type": "string"}, "score": {"type": "number"}},
                    "required": ["label"]
                }},
                "kind": {"type": "string", "enum": ["a", "b"]},
                "maybe": {"type": ["string", "null"]}
            },
            "required": ["name", "tags"]
        }))
        .unwrap();
        assert_eq!(
            out,
            json!({
                "type": "object",
                "properties": {
                    "name": {"type": "string", "description": "full name"},
                    "age": {"type": ["integer", "null"]},
                    "tags": {"type": "array", "items": {
                        "type": "object",
                        "properties": {"label": {"type": "string"}, "score": {"type": ["number", "null"]}},
                        "required": ["label", "score"],
                        "additionalProperties": false
                    }},
                    "kind": {"type": ["string", "null"], "enum": ["a", "b", null]},
                    "maybe": {"type": ["string", "null"]}
                },
                "required": ["name", "age", "tags", "kind", "maybe"],
                "additionalProperties": false
            })
        );
    }

    #[test]
    fn openai_translates_inside_defs_and_keeps_refs() {
        let out = strict(json!({
            "type": "object",
            "properties": {
                "home": {"$ref": "#/$defs/Address"},
                "work": {"$ref": "#/$defs/Address"}
            },
            "required": ["home"],
            "$defs": {
                "Address": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
                    "required": ["city"]
                }
            }
        }))
        .unwrap();
        assert_eq!(
            out["properties"]["home"],
            json!({"$ref": "#/$defs/Address"})
        );
        assert_eq!(
            out["properties"]["work"],
            json!({"anyOf": [{"$ref": "#/$defs/Address"}, {"type": "null"}]})
        );
        assert_eq!(
            out["$defs"]["Address"],
            json!({
                "type": "object",
                "properties": {"city": {"type": "string"}, "zip": {"type": ["string", "null"]}},
                "required": ["city", "zip"],
                "additionalProperties": false
            })
        );
    }

    #[test]
    fn openai_inlines_a_ref_with_siblings_and_a_single_all_of() {
        let out = strict(json!({
            "type": "object",
            "properties": {
                "a": {"$ref": "#/$defs/Id", "description": "the id"},
                "b": {"allOf": [{"$ref": "#/$defs/Id"}]}
            },
            "required": ["a", "b"],
            "$defs": {"Id": {"type": "string", "description": "an id"}}
        }))
        .unwrap();
        assert_eq!(
            out["properties"]["a"],
            json!({"type": "string", "description": "the id"})
        );
        assert_eq!(out["properties"]["b"], json!({"$ref": "#/$defs/Id"}));
    }

    #[test]
    fn openai_accepts_a_top_level_ref_to_an_object() {
        let out = strict(json!({
            "$ref": "#/$defs/Root",
            "$defs": {"Root": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}}
        }))
        .unwrap();
        assert_eq!(out["type"], "object");
        assert_eq!(out["additionalProperties"], false);
        assert_eq!(out["$defs"]["Root"]["additionalProperties"], false);
    }

    #[test]
    fn openai_refuses_schemas_past_its_nesting_and_size_limits() {
        let nested = |levels: usize| {
            (1..levels).fold(
                json!({"type": "object", "properties": {"leaf": {"type": "integer"}}, "required": ["leaf"]}),
                |inner, _| json!({"type": "object", "properties": {"child": inner}, "required": ["child"]}),
            )
        };
        assert!(strict(nested(10)).is_ok());
        let reason = unsupported_reason(strict(nested(11)));
        assert!(
            reason.contains("11 levels of nesting") && reason.contains("allows 10"),
            "{reason}"
        );
        let wide: Map<String, Value> = (0..5001)
            .map(|i| (format!("p{i}"), json!({"type": "integer"})))
            .collect();
        let names: Vec<&String> = wide.keys().collect();
        let reason = unsupported_reason(strict(
            json!({"type": "object", "properties": wide, "required": names}),
        ));
        assert!(reason.contains("5001 object properties"), "{reason}");
    }

    #[test]
    fn openai_rejects_free_form_maps_naming_the_path() {
        let cases = [
            (
                json!({"type":"object","properties":{"meta":{"type":"object"}}}),
                "#/properties/meta",
            ),
            (
                json!({"type":"object","properties":{"m":{"type":"object","additionalProperties":{"type":"string"}}}}),
                "#/properties/m",
            ),
            (
                json!({"type":"object","properties":{"x":{"type":"string"}},"additionalProperties":true}),
                "#:",
            ),
            (
                json!({"type":"object","properties":{"any":{"description":"whatever"}}}),
                "#/properties/any",
            ),
            (
                json!({"type":"object","properties":{"list":{"type":"array"}}}),
                "#/properties/list",
            ),
        ];
        for (input, path) in cases {
            let reason = unsupported_reason(strict(input.clone()));
            assert!(reason.contains(path), "{input}: {reason}");
        }
    }

    #[test]
    fn openai_rejects_unsupported_keywords_and_non_object_roots() {
        let reason = unsupported_reason(strict(json!({
            "type":"object",
            "properties":{"m":{"type":"object","properties":{},"patternProperties":{"^x":{"type":"string"}}}}
        })));
        assert!(
            reason.contains("patternProperties") && reason.contains("#/properties/m"),
            "{reason}"
        );

        let reason = unsupported_reason(strict(json!({
            "type":"object","properties":{"v":{"oneOf":[{"type":"string"},{"type":"integer"}]}}
        })));
        assert!(reason.contains("use anyOf"), "{reason}");

        let reason =
            unsupported_reason(strict(json!({"anyOf":[{"type":"object","properties":{}}]})));
        assert!(reason.contains("top-level"), "{reason}");

        let reason = unsupported_reason(strict(json!({"type":"array","items":{"type":"string"}})));
        assert!(reason.contains("top-level"), "{reason}");

        let reason = unsupported_reason(strict(json!({
            "type":"object","properties":{"a":{"$ref":"#/$defs/Missing"}}
        })));
        assert!(reason.contains("#/$defs/Missing"), "{reason}");
    }

    #[test]
    fn openai_strips_annotations_and_unenforced_constraints() {
        let out = strict(json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {"code": {"type": "string", "minLength": 2, "default": "xx", "pattern": "^[A-Z]+$"}},
            "required": ["code"]
        }))
        .unwrap();
        assert_eq!(
            out,
            json!({
                "type": "object",
                "properties": {"code": {"type": "string", "pattern": "^[A-Z]+$"}},
                "required": ["code"],
                "additionalProperties": false
            })
        );
    }

    #[test]
    fn bad_names_are_rejected_for_openai_and_anthropic() {
        let body = json!({"type":"object","properties":{}});
        for name in ["", "has space", "dot.ted", &"x".repeat(65)] {
            for result in [
                openai_strict_schema(&schema(name, body.clone())).map(|_| ()),
                anthropic_tool(&schema(name, body.clone())).map(|_| ()),
            ] {
                assert!(
                    unsupported_reason(result).contains("^[a-zA-Z0-9_-]{1,64}$"),
                    "{name:?}"
                );
            }
        }
        assert!(openai_strict_schema(&schema(&"x".repeat(64), body)).is_ok());
    }

    #[test]
    fn introduced_nulls_are_found_wherever_the_walk_reaches() {
        let closed = |properties: Value, required: Value| json!({"type": "object", "properties": properties, "required": required});
        let all_required = closed(
            json!({"a": {"type": "string"}, "b": {"type": "array", "items": {"type": "number"}}}),
            json!(["a", "b"]),
        );
        assert!(!introduces_nulls(&all_required));
        let nullable_optional = closed(json!({"a": {"type": ["string", "null"]}}), json!([]));
        assert!(!introduces_nulls(&nullable_optional));
        assert!(introduces_nulls(&closed(
            json!({"a": {"type": "string"}}),
            json!([])
        )));
        // Deep inside: through items, a $ref, and one anyOf variant.
        let deep = json!({
            "type": "object",
            "properties": {"list": {"type": "array", "items": {"$ref": "#/$defs/Item"}}},
            "required": ["list"],
            "$defs": {"Item": {"anyOf": [
                {"type": "string"},
                {"type": "object", "properties": {"x": {"type": "integer"}}}
            ]}}
        });
        assert!(introduces_nulls(&deep));
        // A recursive schema with nothing optional ends.
        let recursive = json!({
            "type": "object",
            "properties": {"child": {"anyOf": [{"$ref": "#"}, {"type": "null"}]}},
            "required": ["child"]
        });
        assert!(!introduces_nulls(&recursive));
    }

    #[test]
    fn removing_introduced_nulls_restores_validity_against_the_original() {
        let original = json!({
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "nick": {"type": "string"},
                "note": {"type": ["string", "null"]},
                "home": {"$ref": "#/$defs/Address"},
                "pets": {"type": "array", "items": {"$ref": "#/$defs/Pet"}},
                "contact": {"anyOf": [
                    {"type": "object", "properties": {"email": {"type": "string"}, "verified": {"type": "boolean"}}, "required": ["email"]},
                    {"type": "object", "properties": {"phone": {"type": "string"}, "ext": {"type": "string"}}, "required": ["phone"]}
                ]}
            },
            "required": ["name", "home", "pets", "contact"],
            "additionalProperties": false,
            "$defs": {
                "Address": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "string"}}, "required": ["city"], "additionalProperties": false},
                "Pet": {"type": "object", "properties": {"kind": {"type": "string"}, "age": {"type": "integer"}}, "required": ["kind"], "additionalProperties": false}
            }
        });
        let translated = strict(original.clone()).unwrap();
        let mut answer = json!({
            "name": "Ada", "nick": null, "note": null,
            "home": {"city": "London", "zip": null},
            "pets": [{"kind": "cat", "age": null}, {"kind": "dog", "age": 3}],
            "contact": {"phone": "123", "ext": null}
        });
        assert!(
            is_valid(&translated, &answer),
            "the model's answer fits the strict schema"
        );
        assert!(!is_valid(&original, &answer));

        remove_introduced_nulls(&original, &mut answer);
        assert_eq!(
            answer,
            json!({
                "name": "Ada", "note": null,
                "home": {"city": "London"},
                "pets": [{"kind": "cat"}, {"kind": "dog", "age": 3}],
                "contact": {"phone": "123"}
            })
        );
        assert!(is_valid(&original, &answer));
    }

    #[test]
    fn removing_nulls_leaves_required_nulls_for_validation_to_report() {
        let original =
            json!({"type":"object","properties":{"a":{"type":"string"}},"required":["a"]});
        let mut answer = json!({"a": null});
        remove_introduced_nulls(&original, &mut answer);
        assert_eq!(answer, json!({"a": null}));
    }

    #[test]
    fn recursive_ref_with_siblings_is_an_error_not_a_loop() {
        let reason = unsupported_reason(strict(json!({
            "type": "object",
            "properties": {"node": {"$ref": "#/$defs/Node"}},
            "required": ["node"],
            "$defs": {"Node": {"type": "object", "properties": {
                "child": {"$ref": "#/$defs/Node", "description": "again"}
            }}}
        })));
        assert!(reason.contains("refers to itself"), "{reason}");
    }
}
