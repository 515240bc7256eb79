//! The JSON Schema walk the providers' schema translations share: one translation
//! of one schema for one provider, with `$ref` resolution, `$ref`-with-siblings
//! inlining, single-`allOf` merging and errors that name the path where they occur.
//!
//! The translations themselves live with their providers (OpenAI's strict mode in
//! `provider/openai/schema.rs`, Anthropic's tool in `provider/anthropic/schema.rs`,
//! Google's `responseJsonSchema` subset in `provider/google/schema.rs`); each is done
//! once per batch into pre-serialized JSON that every request line reuses.
//!
//! Keywords a provider does not take but that only narrow values (`minLength`,
//! `pattern` for Google, …) are stripped rather than refused: the collector validates
//! every answer against the user's original schema, so they still hold. Keywords whose
//! loss would change the shape of an answer are refused with the path where they occur.

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::model::ProviderKind;
use crate::request::OutputSchema;

/// Resolves a local `$ref` (`#` or `#/json/pointer`).
pub(crate) fn resolve_local<'a>(root: &'a Value, reference: &str) -> Option<&'a Value> {
    reference
        .strip_prefix('#')
        .and_then(|pointer| root.pointer(pointer))
}

/// One translation of one schema for one provider.
pub(crate) struct Walk<'a> {
    name: &'a str,
    provider: ProviderKind,
    root: &'a Value,
    /// `$ref`s being inlined right now: inlining one inside itself would never end.
    inlining: Vec<String>,
}

impl<'a> Walk<'a> {
    /// A walk over `schema`, naming `provider` in its errors.
    pub(crate) fn new(schema: &'a OutputSchema, provider: ProviderKind) -> Self {
        Self {
            name: &schema.name,
            provider,
            root: &schema.schema,
            inlining: Vec::new(),
        }
    }

    /// The schema cannot be translated: `reason`, at `path`.
    pub(crate) fn error(&self, path: &str, reason: impl std::fmt::Display) -> Error {
        Error::UnsupportedSchema {
            name: self.name.to_string(),
            provider: self.provider,
            reason: format!("at {path}: {reason}"),
        }
    }

    /// `node` as a schema object; a boolean schema or another value is an error.
    pub(crate) fn object<'v>(&self, node: &'v Value, path: &str) -> Result<&'v Map<String, Value>> {
        match node {
            Value::Object(map) => Ok(map),
            Value::Bool(b) => Err(self.error(
                path,
                format!("the boolean schema `{b}` has no shape; give this value a type"),
            )),
            other => Err(self.error(path, format!("expected a schema object, found {other}"))),
        }
    }

    /// The target of the local `$ref` `reference`.
    pub(crate) fn resolve(&self, reference: &str, path: &str) -> Result<&'a Value> {
        resolve_local(self.root, reference).ok_or_else(|| {
            self.error(
                path,
                format!("$ref {reference:?} does not point inside this schema"),
            )
        })
    }

    /// Replaces `allOf: [one schema]` by that schema's keywords (the node's own win).
    pub(crate) fn merge_single_all_of(
        &self,
        mut map: Map<String, Value>,
        path: &str,
    ) -> Result<Map<String, Value>> {
        let Some(all_of) = map.remove("allOf") else {
            return Ok(map);
        };
        match all_of {
            Value::Array(mut items) if items.len() == 1 => {
                let only = items.remove(0);
                for (key, value) in self.object(&only, &format!("{path}/allOf/0"))? {
                    map.entry(key.clone()).or_insert_with(|| value.clone());
                }
                Ok(map)
            }
            Value::Array(items) => Err(self.error(
                path,
                format!(
                    "allOf with {} schemas cannot be translated; merge them into one schema",
                    items.len()
                ),
            )),
            _ => Err(self.error(path, "allOf must be an array of schemas")),
        }
    }

    /// When `map` is a `$ref` with siblings, translates its target merged with the
    /// siblings (siblings win, as the OpenAI SDK does) with `translate`.
    pub(crate) fn inline_ref(
        &mut self,
        map: Map<String, Value>,
        path: &str,
        translate: fn(&mut Self, &Value, &str) -> Result<Value>,
    ) -> Result<Value> {
        let reference = match map.get("$ref") {
            Some(Value::String(r)) => r.clone(),
            _ => return Err(self.error(path, "$ref must be a string")),
        };
        if self.inlining.contains(&reference) {
            return Err(self.error(
                path,
                format!(
                    "$ref {reference:?} refers to itself and has sibling keywords; \
                     move the siblings into the definition"
                ),
            ));
        }
        let target = self.resolve(&reference, path)?;
        let mut merged = self.object(target, path)?.clone();
        merged.extend(map.into_iter().filter(|(key, _)| key != "$ref"));
        self.inlining.push(reference);
        let result = translate(self, &Value::Object(merged), path);
        self.inlining.pop();
        result
    }

    /// Each schema of the array `list` translated with `translate`.
    pub(crate) fn translate_list(
        &mut self,
        list: &Value,
        path: &str,
        translate: fn(&mut Self, &Value, &str) -> Result<Value>,
    ) -> Result<Value> {
        let Value::Array(items) = list else {
            return Err(self.error(path, "expected an array of schemas"));
        };
        items
            .iter()
            .enumerate()
            .map(|(i, item)| translate(self, item, &format!("{path}/{i}")))
            .collect()
    }
}

/// The names in a schema's `type` (a string or an array of strings).
pub(crate) fn type_names(map: &Map<String, Value>) -> Vec<&str> {
    match map.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// What the providers' schema-translation tests share.
#[cfg(test)]
pub(crate) mod test_support {
    use serde_json::Value;

    use crate::error::{Error, Result};
    use crate::request::OutputSchema;

    /// An output schema named `name`.
    pub(crate) fn schema(name: &str, schema: Value) -> OutputSchema {
        OutputSchema {
            name: name.to_string(),
            schema,
        }
    }

    /// The reason of an `UnsupportedSchema` error; panics on anything else.
    pub(crate) fn unsupported_reason(result: Result<impl std::fmt::Debug>) -> String {
        match result {
            Err(Error::UnsupportedSchema { reason, .. }) => reason,
            other => panic!("expected UnsupportedSchema, got {other:?}"),
        }
    }
}
