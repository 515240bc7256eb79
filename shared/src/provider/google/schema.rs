//! Google's `responseJsonSchema` (Vertex AI and the Gemini API): the JSON Schema subset
//! Google documents, with everything else stripped (see [`GOOGLE_KEYWORDS`]).

use serde_json::value::{RawValue, to_raw_value};
use serde_json::{Map, Value};

use crate::error::Result;
use crate::model::ProviderKind;
use crate::request::OutputSchema;
use crate::schema::Walk;

/// `generationConfig.responseJsonSchema` for Vertex AI and the Gemini API
/// (`provider` only names the API in errors).
pub fn google_response_json_schema(
    schema: &OutputSchema,
    provider: ProviderKind,
) -> Result<Box<RawValue>> {
    let mut walk = Walk::new(schema, provider);
    let translated = google_root(&mut walk, &schema.schema)?;
    Ok(to_raw_value(&translated)?)
}

/// Keywords Google documents for `responseJsonSchema` (Gemini API reference,
/// `GenerationConfig.responseJsonSchema`): `$id, $defs, $ref, $anchor, type, format,
/// title, description, enum, items, prefixItems, minItems, maxItems, minimum,
/// maximum, anyOf, oneOf, properties, additionalProperties, required` and the
/// non-standard `propertyOrdering`. Everything else is stripped (`$schema`,
/// `$comment`, `default`, `examples`, `pattern`, `minLength`, `maxLength`,
/// `exclusiveMinimum`, `exclusiveMaximum`, `multipleOf`, `uniqueItems`, `not`, …),
/// except that `const` becomes a one-value `enum`, a one-schema `allOf` is merged
/// into its parent, top-level `definitions` become `$defs`, and a `$ref` with
/// sibling keywords (Google allows only `$`-keywords beside it) is inlined.
pub const GOOGLE_KEYWORDS: &[&str] = &[
    "$id",
    "$defs",
    "$ref",
    "$anchor",
    "type",
    "format",
    "title",
    "description",
    "enum",
    "items",
    "prefixItems",
    "minItems",
    "maxItems",
    "minimum",
    "maximum",
    "anyOf",
    "oneOf",
    "properties",
    "additionalProperties",
    "required",
    "propertyOrdering",
];

fn google_root(walk: &mut Walk<'_>, node: &Value) -> Result<Value> {
    let Value::Object(root) = node else {
        return google_node(walk, node, "#");
    };
    let mut root = root.clone();
    // Draft-07 `definitions` become `$defs`, the only spelling Google documents.
    if let Some(definitions) = root.remove("definitions") {
        let Value::Object(definitions) = definitions else {
            return Err(walk.error("#/definitions", "definitions must be an object"));
        };
        let defs = root
            .entry("$defs")
            .or_insert_with(|| Value::Object(Map::new()));
        let Value::Object(defs) = defs else {
            return Err(walk.error("#/$defs", "$defs must be an object"));
        };
        for (name, def) in definitions {
            if defs.contains_key(&name) {
                return Err(walk.error("#", format!("both $defs and definitions define {name:?}")));
            }
            defs.insert(name, def);
        }
    }
    google_node(walk, &Value::Object(root), "#")
}

fn google_node(walk: &mut Walk<'_>, node: &Value, path: &str) -> Result<Value> {
    let map = match node {
        Value::Bool(_) => return Ok(node.clone()),
        _ => walk.merge_single_all_of(walk.object(node, path)?.clone(), path)?,
    };
    if map.contains_key("$ref") && map.keys().any(|k| !k.starts_with('$')) {
        return walk.inline_ref(map, path, google_node);
    }
    let mut out = Map::new();
    for (key, value) in &map {
        let child_path = format!("{path}/{key}");
        match key.as_str() {
            "$defs" | "properties" => {
                let mut translated = Map::new();
                for (name, sub) in walk.object(value, &child_path)? {
                    translated.insert(
                        name.clone(),
                        google_node(walk, sub, &format!("{child_path}/{name}"))?,
                    );
                }
                out.insert(key.clone(), Value::Object(translated));
            }
            "definitions" => {
                return Err(walk.error(
                    path,
                    "definitions are only supported at the top level; move them to the top-level $defs",
                ));
            }
            "$ref" => {
                let reference = value
                    .as_str()
                    .ok_or_else(|| walk.error(path, "$ref must be a string"))?;
                walk.resolve(reference, path)?;
                let rewritten = match reference.strip_prefix("#/definitions/") {
                    Some(rest) => format!("#/$defs/{rest}"),
                    None => reference.to_string(),
                };
                out.insert(key.clone(), Value::String(rewritten));
            }
            "items" | "additionalProperties" if value.is_object() => {
                let sub = google_node(walk, value, &child_path)?;
                out.insert(key.clone(), sub);
            }
            "additionalProperties" => {
                out.insert(key.clone(), value.clone());
            }
            "prefixItems" | "anyOf" | "oneOf" => {
                let list = walk.translate_list(value, &child_path, google_node)?;
                out.insert(key.clone(), list);
            }
            "const" if !map.contains_key("enum") => {
                out.insert("enum".to_string(), Value::Array(vec![value.clone()]));
            }
            k if GOOGLE_KEYWORDS.contains(&k) && k != "items" => {
                out.insert(key.clone(), value.clone());
            }
            _ => {}
        }
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::test_support::{schema, unsupported_reason};
    use serde_json::json;

    fn google(value: Value) -> Value {
        let raw = google_response_json_schema(&schema("answer", value), ProviderKind::Vertex)
            .expect("translatable");
        serde_json::from_str(raw.get()).expect("valid JSON")
    }

    #[test]
    fn google_strips_what_it_does_not_document_and_keeps_defs_and_refs() {
        let out = google(json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "Person",
            "type": "object",
            "properties": {
                "name": {"type": "string", "minLength": 1, "pattern": "^A", "default": "A"},
                "kind": {"const": "human"},
                "home": {"$ref": "#/$defs/Address"},
                "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": true, "maxItems": 3}
            },
            "required": ["name"],
            "additionalProperties": false,
            "$defs": {"Address": {"type": "object", "properties": {"city": {"type": "string", "examples": ["Paris"]}}}}
        }));
        assert_eq!(
            out,
            json!({
                "title": "Person",
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "kind": {"enum": ["human"]},
                    "home": {"$ref": "#/$defs/Address"},
                    "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3}
                },
                "required": ["name"],
                "additionalProperties": false,
                "$defs": {"Address": {"type": "object", "properties": {"city": {"type": "string"}}}}
            })
        );
    }

    #[test]
    fn google_moves_definitions_and_inlines_refs_with_siblings() {
        let out = google(json!({
            "type": "object",
            "properties": {
                "a": {"$ref": "#/definitions/Id", "description": "first"},
                "b": {"$ref": "#/definitions/Id"}
            },
            "definitions": {"Id": {"type": "string"}}
        }));
        assert_eq!(
            out,
            json!({
                "type": "object",
                "properties": {
                    "a": {"type": "string", "description": "first"},
                    "b": {"$ref": "#/$defs/Id"}
                },
                "$defs": {"Id": {"type": "string"}}
            })
        );
    }

    #[test]
    fn google_refuses_what_it_cannot_express() {
        let reason = unsupported_reason(google_response_json_schema(
            &schema("s", json!({"allOf":[{"type":"object"},{"required":["a"]}]})),
            ProviderKind::Gemini,
        ));
        assert!(reason.contains("allOf with 2"), "{reason}");
        let reason = unsupported_reason(google_response_json_schema(
            &schema(
                "s",
                json!({"type":"object","properties":{"a":{"$ref":"#/nowhere","title":"t"}}}),
            ),
            ProviderKind::Vertex,
        ));
        assert!(
            reason.contains("#/properties/a") && reason.contains("#/nowhere"),
            "{reason}"
        );
    }
}
