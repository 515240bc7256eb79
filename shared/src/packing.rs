//! Several input rows in one LLM request (`rows_per_request` above 1), and their
//! answer split back into one answer per row.
//!
//! The rows of a request share one copy of the system prompt and schema, which is
//! what makes them cheaper than one request each. Each row is shown under a short
//! number, `### 1`, `### 2`, …, and the answer schema the provider sees is an object
//! with one required property per row number, each a `$ref` to the user's schema:
//! `{"1": {…}, "2": {…}}`. Row numbers rather than the rows' `custom_id`s because they
//! are written three times per row (prompt, schema, answer) and cost tokens each time,
//! while a number cannot be misread as another row's id. The answer costs a few tokens
//! per row more than the bare object (`"7":` and a comma), and a constrained decoder
//! (OpenAI strict mode) cannot leave a row out or invent one.
//!
//! Splitting back ([`split_answer`]) reads the answer's entries in order, keeping
//! repeated keys (a JSON map would keep only the last), so that a row the model
//! answered twice, left out, or a number it invented is never attributed to
//! another row.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use crate::error::{Error, Result};
use crate::model::ProviderKind;
use crate::request::{AnswerFormat, GenerationParams, Message, OutputSchema, Request, Role};

/// The instruction that tells the model how packed rows are laid out and answered.
/// Fixed text, so that every request's prefix stays identical for prompt caching.
pub const ROWS_INSTRUCTION: &str = "The user message holds several rows, each after a line \
\"### <number>\". Answer each row on its own: return one object whose keys are the row \
numbers and whose values are the answers for those rows.";

/// Prefix of the provider-side id of a packed request (`rows-0`, `rows-1`, … by its
/// position in the part): the rows' own ids never go to the provider.
const PACKED_ID_PREFIX: &str = "rows-";

/// The provider-side id of the `index`-th request of a part (0-based).
pub fn packed_request_id(index: usize) -> String {
    format!("{PACKED_ID_PREFIX}{index}")
}

/// The position a packed request id names, if it is one.
pub fn packed_request_index(id: &str) -> Option<usize> {
    let digits = id.strip_prefix(PACKED_ID_PREFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Why a row cannot share a request with others, if it cannot: only a single user
/// text can (a conversation has turns of its own).
pub fn check_packable(row: &Request) -> std::result::Result<(), String> {
    match row.messages.as_slice() {
        [
            Message {
                role: Role::User, ..
            },
        ] => Ok(()),
        _ => Err(
            "with rows_per_request above 1 each row must be one text (`text`, or `messages` \
             with a single user message), not a conversation"
                .to_string(),
        ),
    }
}

/// The generation parameters of packed requests: the system prompt followed by
/// [`ROWS_INSTRUCTION`].
pub fn packed_params(params: &GenerationParams) -> GenerationParams {
    let system_prompt = match &params.system_prompt {
        Some(prompt) => format!("{prompt}\n\n{ROWS_INSTRUCTION}"),
        None => ROWS_INSTRUCTION.to_string(),
    };
    GenerationParams {
        system_prompt: Some(system_prompt),
        ..params.clone()
    }
}

/// One request holding `rows` (each checked by [`check_packable`]) under `id`.
pub fn packed_request(id: String, rows: &[&Request]) -> Request {
    let capacity = rows
        .iter()
        .map(|row| row_text(row).len() + 12)
        .sum::<usize>();
    let mut text = String::with_capacity(capacity);
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            text.push_str("\n\n");
        }
        text.push_str("### ");
        text.push_str(&(i + 1).to_string());
        text.push('\n');
        text.push_str(row_text(row));
    }
    Request {
        custom_id: id,
        messages: vec![Message::new(Role::User, text)],
    }
}

fn row_text(row: &Request) -> &str {
    row.messages.first().map_or("", |m| m.content.as_str())
}

/// The schema packed answers are validated against: packing wraps one, so text and
/// JSON-object answers cannot be packed.
pub fn packable_schema(format: &AnswerFormat) -> Result<&OutputSchema> {
    format.schema().ok_or_else(|| {
        Error::Config(
            "several rows per request need a schema to wrap: text and JSON-object answers \
             are sent one row per request"
                .to_string(),
        )
    })
}

/// Name of the `$defs` entry that holds the user's schema in a packed schema.
const ROW_DEF: &str = "row";

/// The answer schema of a request of `rows` rows: an object with the required
/// properties `"1"` … `"rows"`, each a `$ref` to `schema`. The user's own `$defs`
/// move to the top so that their `#/$defs/…` references still resolve, and a
/// reference to the whole schema (`#`) is pointed at its new place.
pub fn packed_schema(
    schema: &OutputSchema,
    rows: usize,
    provider: ProviderKind,
) -> Result<OutputSchema> {
    let unsupported = |reason: String| Error::UnsupportedSchema {
        name: schema.name.clone(),
        provider,
        reason,
    };
    let Value::Object(mut row) = schema.schema.clone() else {
        return Err(unsupported(
            "with rows_per_request above 1 the schema must be a JSON object".to_string(),
        ));
    };
    let mut defs = match row.remove("$defs") {
        Some(Value::Object(defs)) => defs,
        None => Map::new(),
        Some(_) => return Err(unsupported("$defs must be an object".to_string())),
    };
    if defs.contains_key(ROW_DEF) {
        return Err(unsupported(format!(
            "with rows_per_request above 1 the name $defs/{ROW_DEF} is taken by batchline; \
             rename that definition"
        )));
    }
    let definitions = row.remove("definitions");
    // `$schema` and `$id` belong to the document, which is now the wrapper.
    row.remove("$schema");
    row.remove("$id");
    let mut row = Value::Object(row);
    let row_ref = format!("#/$defs/{ROW_DEF}");
    repoint_root_refs(&mut row, &row_ref);
    for def in defs.values_mut() {
        repoint_root_refs(def, &row_ref);
    }
    defs.insert(ROW_DEF.to_string(), row);
    let keys: Vec<String> = (1..=rows).map(|k| k.to_string()).collect();
    let properties: Map<String, Value> = keys
        .iter()
        .map(|k| (k.clone(), json!({ "$ref": row_ref })))
        .collect();
    let mut wrapper = json!({
        "type": "object",
        "properties": properties,
        "required": keys,
        "additionalProperties": false,
        "$defs": defs,
    });
    if let Some(mut definitions) = definitions {
        repoint_root_refs(&mut definitions, &row_ref);
        wrapper["definitions"] = definitions;
    }
    Ok(OutputSchema {
        name: schema.name.clone(),
        schema: wrapper,
    })
}

/// Rewrites `{"$ref": "#"}` (the user's whole schema) to `to`.
fn repoint_root_refs(node: &mut Value, to: &str) {
    match node {
        Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                if key == "$ref" && value.as_str() == Some("#") {
                    *value = Value::String(to.to_string());
                } else {
                    repoint_root_refs(value, to);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| repoint_root_refs(v, to)),
        _ => {}
    }
}

/// What the model said for one row of a packed request.
#[derive(Debug)]
pub enum RowAnswer<'a> {
    /// Its answer, not yet validated.
    Answered(&'a RawValue),
    /// The row's number is not in the answer.
    Missing,
    /// The row's number appears more than once: no answer can be trusted.
    Repeated,
}

/// A packed answer split by row number.
#[derive(Debug)]
pub struct SplitAnswer<'a> {
    /// One entry per row of the request, in row order.
    pub rows: Vec<RowAnswer<'a>>,
    /// Keys that name no row of the request (invented numbers, other text).
    pub unknown_keys: Vec<String>,
}

/// Splits a packed answer (JSON text) of a request of `rows` rows by row number.
/// Fails when the answer is not a JSON object.
pub fn split_answer(answer: &str, rows: usize) -> std::result::Result<SplitAnswer<'_>, String> {
    let entries = Entries::parse(answer).map_err(|e| e.to_string())?;
    let mut split = SplitAnswer {
        rows: (0..rows).map(|_| RowAnswer::Missing).collect(),
        unknown_keys: Vec::new(),
    };
    for (key, value) in entries.0 {
        let row = key
            .parse::<usize>()
            .ok()
            .filter(|k| (1..=rows).contains(k) && k.to_string() == key);
        let Some(row) = row else {
            split.unknown_keys.push(key);
            continue;
        };
        let slot = &mut split.rows[row - 1];
        *slot = match slot {
            RowAnswer::Missing => RowAnswer::Answered(value),
            _ => RowAnswer::Repeated,
        };
    }
    Ok(split)
}

/// A JSON object's entries in order, repeated keys kept.
struct Entries<'a>(Vec<(String, &'a RawValue)>);

impl<'a> Entries<'a> {
    fn parse(text: &'a str) -> serde_json::Result<Self> {
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let entries = deserializer.deserialize_map(EntriesVisitor)?;
        deserializer.end()?;
        Ok(entries)
    }
}

struct EntriesVisitor;

impl<'de> Visitor<'de> for EntriesVisitor {
    type Value = Entries<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object keyed by row number")
    }

    fn visit_map<A: MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            let value: &'de RawValue = map.next_value()?;
            entries.push((key, value));
        }
        Ok(Entries(entries))
    }
}

impl<'de> de::Deserialize<'de> for Entries<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        deserializer.deserialize_map(EntriesVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_row(id: &str, text: &str) -> Request {
        Request {
            custom_id: id.to_string(),
            messages: vec![Message::new(Role::User, text)],
        }
    }

    #[test]
    fn rows_are_numbered_in_one_user_message() {
        let (a, b) = (text_row("a", "first text"), text_row("b", "second"));
        let request = packed_request(packed_request_id(3), &[&a, &b]);
        assert_eq!(request.custom_id, "rows-3");
        assert_eq!(packed_request_index(&request.custom_id), Some(3));
        assert_eq!(packed_request_index("rows-x"), None);
        assert_eq!(packed_request_index("row-1"), None);
        assert_eq!(request.messages.len(), 1);
        assert_eq!(
            request.messages[0].content,
            "### 1\nfirst text\n\n### 2\nsecond"
        );
    }

    #[test]
    fn only_single_texts_can_be_packed() {
        assert!(check_packable(&text_row("a", "x")).is_ok());
        let conversation = Request {
            custom_id: "c".into(),
            messages: vec![
                Message::new(Role::User, "hi"),
                Message::new(Role::Assistant, "hello"),
                Message::new(Role::User, "and?"),
            ],
        };
        assert!(check_packable(&conversation).is_err());
    }

    #[test]
    fn the_system_prompt_is_followed_by_the_instruction() {
        let params = GenerationParams {
            system_prompt: Some("Extract invoices.".into()),
            ..GenerationParams::default()
        };
        let packed = packed_params(&params);
        assert_eq!(
            packed.system_prompt.as_deref(),
            Some(format!("Extract invoices.\n\n{ROWS_INSTRUCTION}").as_str())
        );
        assert_eq!(
            packed_params(&GenerationParams::default())
                .system_prompt
                .as_deref(),
            Some(ROWS_INSTRUCTION)
        );
    }

    #[test]
    fn the_packed_schema_refers_to_the_user_schema_once() {
        let schema = OutputSchema {
            name: "Invoice".into(),
            schema: json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "properties": {"vendor": {"$ref": "#/$defs/Name"}, "parent": {"$ref": "#"}},
                "required": ["vendor"],
                "$defs": {"Name": {"type": "string"}}
            }),
        };
        let packed = packed_schema(&schema, 2, ProviderKind::OpenAi).unwrap();
        assert_eq!(
            packed.schema,
            json!({
                "type": "object",
                "properties": {"1": {"$ref": "#/$defs/row"}, "2": {"$ref": "#/$defs/row"}},
                "required": ["1", "2"],
                "additionalProperties": false,
                "$defs": {
                    "Name": {"type": "string"},
                    "row": {
                        "type": "object",
                        "properties": {"vendor": {"$ref": "#/$defs/Name"}, "parent": {"$ref": "#/$defs/row"}},
                        "required": ["vendor"]
                    }
                }
            })
        );
        // Answers valid for the packed schema are valid rows for the user's.
        let validator = jsonschema::validator_for(&packed.schema).unwrap();
        assert!(validator.is_valid(&json!({"1": {"vendor": "A"}, "2": {"vendor": "B"}})));
        assert!(!validator.is_valid(&json!({"1": {"vendor": "A"}})));
        assert!(!validator.is_valid(&json!({"1": {"vendor": "A"}, "2": {}, "3": {"vendor": "C"}})));
    }

    #[test]
    fn schemas_that_cannot_be_packed_are_refused() {
        let not_object = OutputSchema {
            name: "S".into(),
            schema: json!(true),
        };
        assert!(packed_schema(&not_object, 2, ProviderKind::Vertex).is_err());
        let taken = OutputSchema {
            name: "S".into(),
            schema: json!({"type": "object", "$defs": {"row": {"type": "string"}}}),
        };
        let err = packed_schema(&taken, 2, ProviderKind::Vertex).unwrap_err();
        assert!(err.to_string().contains("$defs/row"), "{err}");
    }

    #[test]
    fn answers_split_by_row_and_nothing_is_misattributed() {
        let answer =
            r#"{"1": {"v": 1}, "3": {"v": 3}, "3": {"v": 33}, "9": {"v": 9}, "01": {}, "x": 0}"#;
        let split = split_answer(answer, 4).unwrap();
        assert!(matches!(&split.rows[0], RowAnswer::Answered(v) if v.get() == r#"{"v": 1}"#));
        assert!(matches!(split.rows[1], RowAnswer::Missing));
        assert!(matches!(split.rows[2], RowAnswer::Repeated));
        assert!(matches!(split.rows[3], RowAnswer::Missing));
        assert_eq!(split.unknown_keys, ["9", "01", "x"]);
    }

    #[test]
    fn answers_that_are_not_objects_do_not_split() {
        assert!(split_answer("[1, 2]", 2).is_err());
        assert!(split_answer(r#"{"1": {}"#, 2).is_err());
        assert!(split_answer(r#"{"1": {}} trailing"#, 2).is_err());
    }
}
