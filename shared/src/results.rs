//! Results as a Maybe: every line becomes a success or an error, never a panic.
//!
//! A provider's decoder reads the envelope of one results line (borrowing from it,
//! without building a JSON tree) into a [`Decoded`](crate::provider::decode::Decoded);
//! [`ResultParser`] then resolves its request through the part's manifest, parses the
//! answer, validates it against the job's schema (or checks that it is a JSON object
//! in JSON mode, or keeps it as text in text mode) and yields an [`Outcome`].

use std::borrow::{Borrow, Cow};
use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::io::BufRead;
use std::sync::Arc;

use serde::de::{DeserializeOwned, MapAccess, Visitor};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer as _, Serialize, Serializer};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::ProviderKind;
use crate::packing::{
    RowAnswer, packable_schema, packed_request_id, packed_request_index, split_answer,
};
use crate::provider::decode::{Answer, Decoded, Malformed, RowKey};
use crate::provider::{AnswerFixup, ProviderDescriptor, descriptor};
use crate::request::{AnswerFormat, OutputSchema};

pub use crate::provider::decode::{Usage, error_type};

/// A validated answer. Written as `{"custom_id","result","usage"}`, or for a text
/// answer `{"custom_id","text","usage"}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Success {
    /// The request's id.
    pub custom_id: String,
    /// The answer, valid against the job's schema (any JSON object in JSON mode);
    /// `null` for a text answer.
    #[serde(default)]
    pub result: Value,
    /// The answer of a job without a schema in text mode, as the model wrote it;
    /// `None` otherwise.
    #[serde(default)]
    pub text: Option<String>,
    /// Tokens billed for the request.
    #[serde(default)]
    pub usage: Usage,
}

impl Serialize for Success {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut success = serializer.serialize_struct("Success", 3)?;
        success.serialize_field("custom_id", &self.custom_id)?;
        match &self.text {
            Some(text) => success.serialize_field("text", text)?,
            None => success.serialize_field("result", &self.result)?,
        }
        success.serialize_field("usage", &self.usage)?;
        success.end()
    }
}

/// A request that did not produce a valid answer, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// The request's id (`line-N` for a results line that named none).
    pub custom_id: String,
    /// The provider's own code or type, or one of [`error_type`].
    pub error_type: String,
    /// What went wrong, in a sentence: the provider's message or the validation errors.
    pub error_message: String,
    /// The results line as received, where there was one (capped, see [`RAW_DATA_LIMIT`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_data: Option<String>,
    /// 1-based line number in the file this came from, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    /// Tokens billed although no valid answer came out (refusals, truncations, bad JSON).
    #[serde(default, skip_serializing_if = "Usage::is_zero")]
    pub usage: Usage,
}

impl Failure {
    /// A failure without a results line behind it (e.g. a request missing from the results).
    pub fn new(
        custom_id: impl Into<String>,
        error_type: impl Into<String>,
        error_message: impl Into<String>,
    ) -> Self {
        Self {
            custom_id: custom_id.into(),
            error_type: error_type.into(),
            error_message: error_message.into(),
            raw_data: None,
            line: None,
            usage: Usage::default(),
        }
    }
}

/// One request's result. Serialised untagged, so a results file line reads back as
/// whichever of the two it is: a failure is tried first, since its `error_type` and
/// `error_message` never occur in a success, whose answer fields are both optional.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Outcome {
    /// No valid answer, and why.
    Error(Failure),
    /// A valid answer.
    Success(Success),
}

impl Outcome {
    /// The request's id, whichever the outcome.
    pub fn custom_id(&self) -> &str {
        match self {
            Outcome::Success(s) => &s.custom_id,
            Outcome::Error(e) => &e.custom_id,
        }
    }

    /// Whether this is a [`Success`].
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Success(_))
    }

    /// Tokens billed for this request, whether it succeeded or not.
    pub fn usage(&self) -> Usage {
        match self {
            Outcome::Success(s) => s.usage,
            Outcome::Error(e) => e.usage,
        }
    }

    /// The success's object (a text answer: its string) as a `T`; a result that does
    /// not fit `T` becomes a `schema_mismatch` failure.
    pub fn typed<T: DeserializeOwned>(&self) -> TypedOutcome<T> {
        let success = match self {
            Outcome::Error(failure) => return TypedOutcome::Error(failure.clone()),
            Outcome::Success(success) => success,
        };
        let text = success
            .text
            .as_ref()
            .map(|text| Value::String(text.clone()));
        match T::deserialize(text.as_ref().unwrap_or(&success.result)) {
            Ok(result) => TypedOutcome::Success(TypedSuccess {
                custom_id: success.custom_id.clone(),
                result,
                usage: success.usage,
            }),
            Err(err) => TypedOutcome::Error(Failure {
                raw_data: Some(capped_text(success.result.to_string().as_bytes())),
                usage: success.usage,
                ..Failure::new(
                    success.custom_id.clone(),
                    error_type::SCHEMA_MISMATCH,
                    format!(
                        "the result does not fit {}: {err}",
                        std::any::type_name::<T>()
                    ),
                )
            }),
        }
    }

    /// Appends this outcome as one JSONL line (success or failure shape) to `out`.
    pub fn write_jsonl(&self, out: &mut Vec<u8>) {
        append_jsonl(self, out);
    }
}

impl Success {
    /// Appends this success as one JSONL line to `out`.
    pub fn write_jsonl(&self, out: &mut Vec<u8>) {
        append_jsonl(self, out);
    }
}

impl Failure {
    /// Appends this failure as one JSONL line to `out`.
    pub fn write_jsonl(&self, out: &mut Vec<u8>) {
        append_jsonl(self, out);
    }
}

fn append_jsonl<T: Serialize>(item: &T, out: &mut Vec<u8>) {
    // Writing to a Vec cannot fail and these types hold only string-keyed JSON.
    serde_json::to_writer(&mut *out, item).expect("results serialise to JSON");
    out.push(b'\n');
}

/// A success whose object was deserialised into the caller's type.
#[derive(Debug, Clone, PartialEq)]
pub struct TypedSuccess<T> {
    /// The request's id.
    pub custom_id: String,
    /// The answer as the caller's type.
    pub result: T,
    /// Tokens billed for the request.
    pub usage: Usage,
}

/// [`Outcome`] with the success's object as a `T` (see [`Outcome::typed`]).
#[derive(Debug, Clone, PartialEq)]
pub enum TypedOutcome<T> {
    /// A valid answer that deserialised into `T`.
    Success(TypedSuccess<T>),
    /// No valid answer, or one that does not fit `T`, and why.
    Error(Failure),
}

/// The output schema of a Rust type, named after it, ready for every provider's
/// translation: subschemas inlined (recursive types keep `$defs`), no `$schema`.
pub fn schema_for<T: schemars::JsonSchema>() -> OutputSchema {
    let generator = schemars::generate::SchemaSettings::draft2020_12()
        .with(|settings| {
            settings.meta_schema = None;
            settings.inline_subschemas = true;
        })
        .into_generator();
    OutputSchema {
        name: provider_schema_name(&T::schema_name()),
        schema: generator.into_root_schema_for::<T>().to_value(),
    }
}

/// A schema name every provider takes (OpenAI: `[a-zA-Z0-9_-]{1,64}`) from any name:
/// schemars names generics like `Page_for_Item` but may use other characters, and a
/// file name has dots.
pub fn provider_schema_name(type_name: &str) -> String {
    let name: String = type_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if name.is_empty() {
        "output".to_string()
    } else {
        name
    }
}

// ---------------------------------------------------------------------------------
// Collection helpers, as in the Python reference library.

/// The successes among `outcomes`, in order.
pub fn filter_successes<'a>(
    outcomes: impl IntoIterator<Item = &'a Outcome>,
) -> impl Iterator<Item = &'a Success> {
    outcomes.into_iter().filter_map(|o| match o {
        Outcome::Success(s) => Some(s),
        Outcome::Error(_) => None,
    })
}

/// The failures among `outcomes`, in order.
pub fn filter_errors<'a>(
    outcomes: impl IntoIterator<Item = &'a Outcome>,
) -> impl Iterator<Item = &'a Failure> {
    outcomes.into_iter().filter_map(|o| match o {
        Outcome::Error(e) => Some(e),
        Outcome::Success(_) => None,
    })
}

/// The objects of the successes (a success whose result is not an object is skipped).
pub fn extract_results<'a>(
    outcomes: impl IntoIterator<Item = &'a Outcome>,
) -> impl Iterator<Item = &'a serde_json::Map<String, Value>> {
    filter_successes(outcomes).filter_map(|s| s.result.as_object())
}

/// Outcomes by `custom_id`; should an id occur twice, the later outcome wins.
pub fn results_by_custom_id<'a>(
    outcomes: impl IntoIterator<Item = &'a Outcome>,
) -> HashMap<&'a str, &'a Outcome> {
    outcomes.into_iter().map(|o| (o.custom_id(), o)).collect()
}

// ---------------------------------------------------------------------------------
// Parsing and validation.

/// Longest excerpt of a results line kept in [`Failure::raw_data`].
pub const RAW_DATA_LIMIT: usize = 64 * 1024;
/// How many validation errors a `schema_mismatch` message lists.
const SHOWN_VALIDATION_ERRORS: usize = 3;
/// Validation messages quote the offending value; keep each one readable.
const VALIDATION_MESSAGE_LIMIT: usize = 300;

/// Turns one part's results lines into outcomes. Compiles the schema once.
pub struct ResultParser {
    provider: &'static dyn ProviderDescriptor,
    check: AnswerCheck,
    /// The part's custom_ids by row (its manifest), for lines that carry only a row.
    row_ids: Arc<[String]>,
    /// For a part of packed requests: the row ids of each request, in order.
    packed: Option<Arc<[Vec<String>]>>,
}

/// How an answer is checked, by [`AnswerFormat`].
enum AnswerCheck {
    /// Parsed and validated against the schema.
    Schema {
        schema: OutputSchema,
        validator: Box<jsonschema::Validator>,
        /// How many properties the schema's top-level object names: an answer's object
        /// is made that large up front (see [`parse_answer`]).
        fields: usize,
        /// What the provider's schema translation makes the model write that the job's
        /// schema does not accept (OpenAI's strict-mode nulls), decided once per schema.
        fixup: Option<AnswerFixup>,
    },
    /// Parsed, and must be a JSON object.
    JsonObject,
    /// Kept as the model wrote it.
    Text,
}

impl fmt::Debug for ResultParser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let format = match &self.check {
            AnswerCheck::Schema { schema, .. } => schema.name.as_str(),
            AnswerCheck::JsonObject => "(json object)",
            AnswerCheck::Text => "(text)",
        };
        f.debug_struct("ResultParser")
            .field("provider", &self.provider.kind())
            .field("format", &format)
            .field("rows", &self.row_ids.len())
            .finish_non_exhaustive()
    }
}

impl ResultParser {
    /// A parser of answers to `schema`; `row_ids` is the part's manifest: its
    /// custom_ids in input order.
    pub fn new(
        provider: ProviderKind,
        schema: &OutputSchema,
        row_ids: Arc<[String]>,
    ) -> Result<Self> {
        Self::with_format(provider, &AnswerFormat::Schema(schema.clone()), row_ids)
    }

    /// A parser of answers in `format`; `row_ids` is the part's manifest: its
    /// custom_ids in input order.
    pub fn with_format(
        provider: ProviderKind,
        format: &AnswerFormat,
        row_ids: Arc<[String]>,
    ) -> Result<Self> {
        let descriptor = descriptor(provider);
        let check = match format {
            AnswerFormat::Schema(schema) => AnswerCheck::Schema {
                validator: Box::new(jsonschema::validator_for(&schema.schema).map_err(|err| {
                    Error::UnsupportedSchema {
                        name: schema.name.clone(),
                        provider,
                        reason: format!("not a usable JSON Schema: {err}"),
                    }
                })?),
                fixup: descriptor.answer_fixup(&schema.schema),
                fields: schema.schema["properties"]
                    .as_object()
                    .map_or(0, |p| p.len()),
                schema: schema.clone(),
            },
            AnswerFormat::JsonObject => AnswerCheck::JsonObject,
            AnswerFormat::Text => AnswerCheck::Text,
        };
        Ok(Self {
            provider: descriptor,
            check,
            row_ids,
            packed: None,
        })
    }

    /// A parser for a part of packed requests ([`crate::packing`]); `requests` holds
    /// the row ids of each request, in order (the part's manifest). Each row's answer
    /// is validated against the schema of `format` on its own; packing needs one.
    pub fn packed(
        provider: ProviderKind,
        format: &AnswerFormat,
        requests: Arc<[Vec<String>]>,
    ) -> Result<Self> {
        let schema = packable_schema(format)?;
        let request_ids: Arc<[String]> = (0..requests.len()).map(packed_request_id).collect();
        let mut parser = Self::new(provider, schema, request_ids)?;
        parser.packed = Some(requests);
        Ok(parser)
    }

    /// One results line to the outcomes of its rows, appended to `out`: one outcome,
    /// or for a packed request one per row of the request (a line that names no
    /// request gives one `malformed_line`).
    pub fn parse_line_into(&self, line_no: u64, line: &[u8], out: &mut Vec<Outcome>) {
        match &self.packed {
            Some(requests) => self.parse_packed_line(requests, line_no, line, out),
            None => out.push(self.parse_line(line_no, line)),
        }
    }

    fn parse_packed_line(
        &self,
        requests: &[Vec<String>],
        line_no: u64,
        line: &[u8],
        out: &mut Vec<Outcome>,
    ) {
        let failure = |custom_id: String, error_type: &str, message: String, usage: Usage| {
            Outcome::Error(Failure {
                raw_data: Some(capped_text(line)),
                line: Some(line_no),
                usage,
                ..Failure::new(custom_id, error_type, message)
            })
        };
        let request_of = |key: &RowKey<'_>| {
            match key {
                RowKey::CustomId(id) => packed_request_index(id),
                RowKey::Row(row) => Some(*row),
            }
            .filter(|&index| index < requests.len())
        };
        let decoded = match self.decode(line) {
            Ok(decoded) => decoded,
            Err(Malformed { key, reason }) => {
                match key.as_ref().and_then(request_of) {
                    Some(index) => out.extend(requests[index].iter().map(|id| {
                        failure(
                            id.clone(),
                            error_type::MALFORMED_LINE,
                            reason.clone(),
                            Usage::default(),
                        )
                    })),
                    None => out.push(failure(
                        format!("line-{line_no}"),
                        error_type::MALFORMED_LINE,
                        reason,
                        Usage::default(),
                    )),
                }
                return;
            }
        };
        let Some(index) = request_of(&decoded.key) else {
            let reason = format!(
                "the line names no request of this part's {}",
                requests.len()
            );
            out.push(failure(
                format!("line-{line_no}"),
                error_type::MALFORMED_LINE,
                reason,
                decoded.usage,
            ));
            return;
        };
        let rows = &requests[index];
        let usages = share_usage(decoded.usage, rows.len());
        let of_request = |message: &str| match rows.len() {
            1 => message.to_string(),
            n => format!("{message} (in a request of {n} rows)"),
        };
        let answer =
            match &decoded.answer {
                Answer::Failed {
                    error_type,
                    message,
                } => {
                    let message = of_request(message);
                    out.extend(rows.iter().zip(usages).map(|(id, usage)| {
                        failure(id.clone(), error_type, message.clone(), usage)
                    }));
                    return;
                }
                Answer::Text(text) => text.as_ref(),
                Answer::Embedded(raw) => raw.get(),
            };
        let split = match split_answer(answer, rows.len()) {
            Ok(split) => split,
            Err(err) => {
                let message = of_request(&format!(
                    "the answer is not a JSON object keyed by row number: {err}"
                ));
                out.extend(rows.iter().zip(usages).map(|(id, usage)| {
                    failure(id.clone(), error_type::INVALID_JSON, message.clone(), usage)
                }));
                return;
            }
        };
        if !split.unknown_keys.is_empty() {
            tracing::warn!(line = line_no, keys = ?split.unknown_keys, "a packed answer holds keys that name no row of its request; not attributed to any row");
        }
        for ((id, answer), usage) in rows.iter().zip(split.rows).zip(usages) {
            let outcome = match answer {
                RowAnswer::Answered(raw) => self.row_outcome(id, raw.get(), usage, line_no),
                RowAnswer::Missing => Outcome::Error(Failure {
                    line: Some(line_no),
                    usage,
                    ..Failure::new(
                        id.as_str(),
                        error_type::MISSING_ROW,
                        of_request("the model's answer left this row out"),
                    )
                }),
                RowAnswer::Repeated => failure(
                    id.clone(),
                    error_type::REPEATED_ROW,
                    of_request("the model answered this row more than once, so no answer is kept"),
                    usage,
                ),
            };
            out.push(outcome);
        }
    }

    /// Reads a line's envelope: a request sent without a schema is answered by the
    /// model's text (see [`ProviderDescriptor::decode_text`]).
    fn decode<'a>(&self, line: &'a [u8]) -> Result<Decoded<'a>, Malformed> {
        match self.check {
            AnswerCheck::Schema { .. } => self.provider.decode(line),
            AnswerCheck::JsonObject | AnswerCheck::Text => self.provider.decode_text(line),
        }
    }

    /// One row's answer of a packed request, validated against the schema.
    fn row_outcome(&self, custom_id: &str, answer: &str, usage: Usage, line_no: u64) -> Outcome {
        match self.success(custom_id, answer, usage) {
            Ok(success) => Outcome::Success(success),
            Err((error_type, message)) => Outcome::Error(Failure {
                raw_data: Some(capped_text(answer.as_bytes())),
                line: Some(line_no),
                usage,
                ..Failure::new(custom_id, error_type, message)
            }),
        }
    }

    /// The success `answer` makes in this parser's format, or the error type and
    /// message of why it makes none: in text mode the answer as it is, otherwise its
    /// JSON, which must be an object in JSON mode and match the schema in schema mode.
    fn success(
        &self,
        custom_id: &str,
        answer: &str,
        usage: Usage,
    ) -> Result<Success, (&'static str, String)> {
        let success = |result: Value, text: Option<String>| Success {
            custom_id: custom_id.to_string(),
            result,
            text,
            usage,
        };
        if let AnswerCheck::Text = self.check {
            return Ok(success(Value::Null, Some(answer.to_string())));
        }
        let fields = match &self.check {
            AnswerCheck::Schema { fields, .. } => *fields,
            AnswerCheck::JsonObject | AnswerCheck::Text => 0,
        };
        let mut result = parse_answer(answer, fields).map_err(|err| {
            (
                error_type::INVALID_JSON,
                format!("the answer is not valid JSON: {err}"),
            )
        })?;
        match &self.check {
            AnswerCheck::Schema {
                schema,
                validator,
                fixup,
                ..
            } => {
                if let Some(fixup) = fixup {
                    fixup(&schema.schema, &mut result);
                }
                if let Some(message) = schema_mismatch(validator, &result) {
                    return Err((error_type::SCHEMA_MISMATCH, message));
                }
            }
            AnswerCheck::JsonObject if !result.is_object() => {
                return Err((
                    error_type::INVALID_JSON,
                    format!(
                        "the answer is JSON but not an object (it is {})",
                        json_kind(&result)
                    ),
                ));
            }
            AnswerCheck::JsonObject | AnswerCheck::Text => {}
        }
        Ok(success(result, None))
    }

    /// One results line (without its newline) to an outcome. `line_no` is 1-based.
    pub fn parse_line(&self, line_no: u64, line: &[u8]) -> Outcome {
        let malformed = |custom_id: Option<&str>, reason: String| {
            Outcome::Error(Failure {
                raw_data: Some(capped_text(line)),
                line: Some(line_no),
                ..Failure::new(
                    custom_id.map_or_else(|| format!("line-{line_no}"), str::to_string),
                    error_type::MALFORMED_LINE,
                    reason,
                )
            })
        };
        let decoded = match self.decode(line) {
            Ok(decoded) => decoded,
            Err(Malformed { key, reason }) => {
                let custom_id = key.as_ref().and_then(|key| self.resolve(key).ok());
                return malformed(custom_id, reason);
            }
        };
        let custom_id = match self.resolve(&decoded.key) {
            Ok(custom_id) => custom_id,
            Err(reason) => return malformed(None, reason),
        };
        let fail = |error_type: &str, message: String| {
            Outcome::Error(Failure {
                raw_data: Some(capped_text(line)),
                line: Some(line_no),
                usage: decoded.usage,
                ..Failure::new(custom_id, error_type, message)
            })
        };
        let answer = match &decoded.answer {
            Answer::Failed {
                error_type,
                message,
            } => return fail(error_type, message.clone()),
            Answer::Text(text) => text.as_ref(),
            Answer::Embedded(raw) => raw.get(),
        };
        match self.success(custom_id, answer, decoded.usage) {
            Ok(success) => Outcome::Success(success),
            Err((error_type, message)) => fail(error_type, message),
        }
    }

    /// The custom_id a line's key names: as echoed, or the manifest's id of its row.
    fn resolve<'a>(&'a self, key: &'a RowKey<'_>) -> Result<&'a str, String> {
        match key {
            RowKey::CustomId(id) => Ok(id),
            RowKey::Row(row) => self.row_ids.get(*row).map(String::as_str).ok_or_else(|| {
                format!(
                    "row {row} is outside this part's {} requests",
                    self.row_ids.len()
                )
            }),
        }
    }

    /// Every line of `reader` as outcomes, one line in memory at a time. Blank lines
    /// are skipped; a read error ends the iteration with a `read_error` failure.
    pub fn parse_reader<R: BufRead>(&self, reader: R) -> OutcomeLines<&Self, R> {
        OutcomeLines::new(self, reader)
    }
}

/// An answer's JSON, as `serde_json::from_str` reads it. An object answer's map is
/// made for `fields` members up front rather than grown and rehashed member by member;
/// an answer this way does not read (bad JSON, or the map key serde_json gives a
/// meaning of its own) is read again by `serde_json`, so that values and errors are
/// exactly its own.
fn parse_answer(answer: &str, fields: usize) -> serde_json::Result<Value> {
    if fields > 0 && answer.trim_ascii_start().starts_with('{') {
        let mut deserializer = serde_json::Deserializer::from_str(answer);
        if let Ok(object) = deserializer.deserialize_map(SizedObject(fields))
            && deserializer.end().is_ok()
        {
            return Ok(object);
        }
    }
    serde_json::from_str(answer)
}

/// Reads a JSON object into a [`Value`] whose map holds its first `.0` members without
/// growing; see [`parse_answer`].
struct SizedObject(usize);

/// The first map key `serde_json`'s own `Value` reads as an embedded raw value.
const RAW_VALUE_KEY: &str = "$serde_json::private::RawValue";

impl<'de> Visitor<'de> for SizedObject {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> std::result::Result<Value, A::Error> {
        let mut map = serde_json::Map::with_capacity(self.0);
        while let Some((key, value)) = access.next_entry::<String, Value>()? {
            if map.is_empty() && key == RAW_VALUE_KEY {
                return Err(serde::de::Error::custom("read by serde_json instead"));
            }
            map.insert(key, value);
        }
        Ok(Value::Object(map))
    }
}

/// The first few validation errors with their JSON pointers, or `None` if valid.
fn schema_mismatch(validator: &jsonschema::Validator, result: &Value) -> Option<String> {
    if validator.is_valid(result) {
        return None;
    }
    let mut message = String::from("the answer does not match the schema: ");
    let mut total = 0usize;
    for err in validator.iter_errors(result) {
        total += 1;
        if total > SHOWN_VALIDATION_ERRORS {
            continue;
        }
        if total > 1 {
            message.push_str("; ");
        }
        let pointer = err.instance_path().as_str();
        let pointer = if pointer.is_empty() {
            "(root)"
        } else {
            pointer
        };
        let text = err.to_string();
        let _ = write!(
            message,
            "at {pointer}: {}",
            capped_str(&text, VALIDATION_MESSAGE_LIMIT)
        );
    }
    if total > SHOWN_VALIDATION_ERRORS {
        let _ = write!(message, "; and {} more", total - SHOWN_VALIDATION_ERRORS);
    }
    Some(message)
}

/// What kind of JSON value `value` is, for messages.
fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `usage` shared out over `rows` rows: each gets an equal share, the first ones the
/// remainder, so that the shares add up to the request's usage exactly.
fn share_usage(usage: Usage, rows: usize) -> impl Iterator<Item = Usage> {
    let n = rows.max(1) as u64;
    let share = move |total: u64, row: u64| total / n + u64::from(row < total % n);
    (0..rows as u64).map(move |row| Usage {
        input_tokens: share(usage.input_tokens, row),
        output_tokens: share(usage.output_tokens, row),
        cached_input_tokens: share(usage.cached_input_tokens, row),
        cache_write_input_tokens: share(usage.cache_write_input_tokens, row),
    })
}

/// Parses a whole results file line by line with a parser of its own.
pub fn parse_reader<R: BufRead>(
    provider: ProviderKind,
    schema: &OutputSchema,
    row_ids: Arc<[String]>,
    reader: R,
) -> Result<OutcomeLines<ResultParser, R>> {
    Ok(OutcomeLines::new(
        ResultParser::new(provider, schema, row_ids)?,
        reader,
    ))
}

/// Iterator over the outcomes of a results file; see [`ResultParser::parse_reader`].
#[derive(Debug)]
pub struct OutcomeLines<P, R> {
    parser: P,
    reader: R,
    buffer: Vec<u8>,
    line_no: u64,
    finished: bool,
}

impl<P: Borrow<ResultParser>, R: BufRead> OutcomeLines<P, R> {
    fn new(parser: P, reader: R) -> Self {
        Self {
            parser,
            reader,
            buffer: Vec::new(),
            line_no: 0,
            finished: false,
        }
    }
}

impl<P: Borrow<ResultParser>, R: BufRead> Iterator for OutcomeLines<P, R> {
    type Item = Outcome;

    fn next(&mut self) -> Option<Outcome> {
        while !self.finished {
            match self.next_line() {
                Ok(Some(outcome)) => return Some(outcome),
                Ok(None) => {}
                Err(err) => {
                    self.finished = true;
                    let failed_line = self.line_no + 1;
                    return Some(Outcome::Error(Failure {
                        line: Some(failed_line),
                        ..Failure::new(
                            format!("line-{failed_line}"),
                            error_type::READ_ERROR,
                            format!("reading the results stopped at line {failed_line}: {err}"),
                        )
                    }));
                }
            }
        }
        None
    }
}

impl<P: Borrow<ResultParser>, R: BufRead> OutcomeLines<P, R> {
    /// Reads one line: its outcome, or `None` for a blank line or the end.
    fn next_line(&mut self) -> std::io::Result<Option<Outcome>> {
        let available = loop {
            match self.reader.fill_buf() {
                Ok(available) => break available,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        };
        if available.is_empty() {
            self.finished = true;
            return Ok(None);
        }
        // Usually the whole line is in the reader's buffer: parse it there, uncopied.
        if let Some(end) = memchr::memchr(b'\n', available) {
            self.line_no += 1;
            let outcome = line_outcome(self.parser.borrow(), self.line_no, &available[..end]);
            self.reader.consume(end + 1);
            return Ok(outcome);
        }
        // The line runs past the buffer's end: gather it.
        self.buffer.clear();
        self.reader.read_until(b'\n', &mut self.buffer)?;
        self.line_no += 1;
        Ok(line_outcome(
            self.parser.borrow(),
            self.line_no,
            &self.buffer,
        ))
    }
}

/// The outcome of one line as read (newline and surrounding blanks trimmed); `None`
/// for a blank line.
fn line_outcome(parser: &ResultParser, line_no: u64, line: &[u8]) -> Option<Outcome> {
    let line = line.trim_ascii();
    (!line.is_empty()).then(|| parser.parse_line(line_no, line))
}

/// The line as text for a failure record, cut at [`RAW_DATA_LIMIT`] with a note.
fn capped_text(line: &[u8]) -> String {
    if line.len() <= RAW_DATA_LIMIT {
        return String::from_utf8_lossy(line).into_owned();
    }
    let mut text = String::from_utf8_lossy(&line[..RAW_DATA_LIMIT]).into_owned();
    let _ = write!(
        text,
        " … [truncated: first {RAW_DATA_LIMIT} of {} bytes]",
        line.len()
    );
    text
}

/// `text` cut to at most `limit` bytes on a character boundary, with an ellipsis.
fn capped_str(text: &str, limit: usize) -> Cow<'_, str> {
    if text.len() <= limit {
        return Cow::Borrowed(text);
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…", &text[..end]))
}

#[cfg(test)]
mod tests {
    use std::io::{self, BufReader, Read};

    use serde_json::json;

    use super::*;

    #[test]
    fn answers_read_as_serde_json_reads_them() {
        let answers = [
            r#"{"name":"Ada","age":36,"tags":["a","b"],"x":{"y":[1,2.5,null]}}"#,
            r#" {"name":"Ada","name":"Bob"} "#,
            r#"{}"#,
            r#"{"$serde_json::private::RawValue":"[1,2]"}"#,
            r#"{"a":1,"$serde_json::private::RawValue":"[1,2]"}"#,
            r#"{"name":"Ada"} trailing"#,
            r#"{"name":"Ada""#,
            r#"[1,2]"#,
            "",
        ];
        for answer in answers {
            for fields in [0, 1, 3, 8] {
                assert_eq!(
                    format!("{:?}", parse_answer(answer, fields)),
                    format!("{:?}", serde_json::from_str::<Value>(answer)),
                    "{answer} with {fields} fields"
                );
            }
        }
    }

    fn person_schema() -> OutputSchema {
        OutputSchema {
            name: "person".into(),
            schema: json!({
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "age": {"type": "integer", "minimum": 0},
                    "tags": {"type": "array", "items": {"type": "string"}}
                },
                "required": ["name"],
                "additionalProperties": false
            }),
        }
    }

    /// Vertex rows 0..=2 map to these ids.
    fn row_ids() -> Arc<[String]> {
        Arc::from(vec!["row-a".to_string(), "r-1".into(), "row-c".into()])
    }

    fn parser(provider: ProviderKind) -> ResultParser {
        ResultParser::new(provider, &person_schema(), row_ids()).unwrap()
    }

    /// A successful results line of `provider` for request `r-1` (Vertex row 1) whose
    /// answer is `answer`: JSON text for most, the embedded tool input for Anthropic.
    /// Usage is 10 in, 4 out.
    fn answer_line(provider: ProviderKind, answer: &str) -> Vec<u8> {
        let text = serde_json::to_string(answer).unwrap();
        match provider {
            ProviderKind::OpenAi => format!(
                r#"{{"id":"batch_req_1","custom_id":"r-1","response":{{"status_code":200,"request_id":"req_1","body":{{"choices":[{{"index":0,"message":{{"role":"assistant","content":{text},"refusal":null}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":10,"completion_tokens":4,"total_tokens":14}}}}}},"error":null}}"#
            ),
            ProviderKind::Anthropic => format!(
                r#"{{"custom_id":"r-1","result":{{"type":"succeeded","message":{{"content":[{{"type":"tool_use","id":"toolu_1","name":"person","input":{answer}}}],"stop_reason":"tool_use","usage":{{"input_tokens":10,"output_tokens":4}}}}}}}}"#
            ),
            ProviderKind::Vertex => format!(
                r#"{{"status":"","processed_time":"2026-01-01T00:00:00Z","request":{{"contents":[],"labels":{{"batchline_row":"1"}}}},"response":{{"candidates":[{{"content":{{"role":"model","parts":[{{"text":{text}}}]}},"finishReason":"STOP"}}],"usageMetadata":{{"promptTokenCount":10,"candidatesTokenCount":4}}}}}}"#
            ),
            ProviderKind::Gemini => format!(
                r#"{{"key":"r-1","response":{{"candidates":[{{"content":{{"role":"model","parts":[{{"text":{text}}}]}},"finishReason":"STOP"}}],"usageMetadata":{{"promptTokenCount":10,"candidatesTokenCount":4}}}}}}"#
            ),
            ProviderKind::Bedrock => format!(
                r#"{{"recordId":"r-1","modelInput":{{"messages":[]}},"modelOutput":{{"output":{{"message":{{"role":"assistant","content":[{{"toolUse":{{"toolUseId":"t1","name":"person","input":{answer}}}}}]}}}},"stopReason":"tool_use","usage":{{"inputTokens":10,"outputTokens":4,"totalTokens":14}}}}}}"#
            ),
        }
        .into_bytes()
    }

    fn expect_failure(outcome: Outcome) -> Failure {
        match outcome {
            Outcome::Error(failure) => failure,
            Outcome::Success(success) => panic!("expected a failure, got {success:?}"),
        }
    }

    const USAGE: Usage = Usage {
        input_tokens: 10,
        output_tokens: 4,
        cached_input_tokens: 0,
        cache_write_input_tokens: 0,
    };

    #[test]
    fn every_provider_success_is_validated_with_usage() {
        for provider in ProviderKind::ALL {
            let line = answer_line(provider, r#"{"name":"Ada","age":36}"#);
            let outcome = parser(provider).parse_line(1, &line);
            assert_eq!(
                outcome,
                Outcome::Success(Success {
                    custom_id: "r-1".into(),
                    result: json!({"name": "Ada", "age": 36}),
                    text: None,
                    usage: USAGE,
                }),
                "{provider}"
            );
        }
    }

    #[test]
    fn answers_that_are_not_json_are_invalid_json() {
        for provider in [
            ProviderKind::OpenAi,
            ProviderKind::Vertex,
            ProviderKind::Gemini,
        ] {
            let line = answer_line(provider, r#"{"name": "Ada", "#);
            let failure = expect_failure(parser(provider).parse_line(4, &line));
            assert_eq!(failure.error_type, "invalid_json", "{provider}");
            assert!(
                failure.error_message.contains("not valid JSON"),
                "{provider}"
            );
            assert_eq!(failure.custom_id, "r-1");
            assert_eq!(failure.usage, USAGE, "tokens were billed anyway");
            assert_eq!(failure.line, Some(4));
            assert_eq!(
                failure.raw_data.as_deref().map(str::as_bytes),
                Some(&line[..])
            );
        }
    }

    #[test]
    fn schema_breaking_answers_list_the_first_errors_with_pointers() {
        let answer = r#"{"name":7,"age":-1,"tags":[1,2]}"#;
        for provider in ProviderKind::ALL {
            let failure =
                expect_failure(parser(provider).parse_line(1, &answer_line(provider, answer)));
            assert_eq!(failure.error_type, "schema_mismatch", "{provider}");
            let message = &failure.error_message;
            assert_eq!(message.matches("at /").count(), 3, "{message}");
            assert!(message.ends_with("; and 1 more"), "{message}");
            assert!(
                message.contains("at /name: 7 is not of type \"string\""),
                "{message}"
            );
        }
        let extra = answer_line(ProviderKind::Gemini, r#"{"name":"Ada","nick":"A"}"#);
        let failure = expect_failure(parser(ProviderKind::Gemini).parse_line(1, &extra));
        assert!(
            failure.error_message.contains("at (root): "),
            "{}",
            failure.error_message
        );
        assert!(
            failure.error_message.contains("nick"),
            "{}",
            failure.error_message
        );
    }

    #[test]
    fn provider_failures_become_failures_with_the_line() {
        let line = br#"{"custom_id":"r-2","result":{"type":"expired"}}"#;
        let failure = expect_failure(parser(ProviderKind::Anthropic).parse_line(9, line));
        assert_eq!(
            failure,
            Failure {
                raw_data: Some(String::from_utf8_lossy(line).into_owned()),
                line: Some(9),
                ..Failure::new(
                    "r-2",
                    "expired",
                    "the batch expired before this request ran"
                )
            }
        );
    }

    #[test]
    fn malformed_lines_never_panic() {
        let lines: [&[u8]; 7] = [
            b"",
            b"   ",
            b"not json",
            b"\xff\xfe\x00\x01\x80garbage",
            b"[1,2]",
            b"null",
            // Cut inside the id itself: nothing to recover.
            br#"{"custom_id":"r-1"#,
        ];
        for provider in ProviderKind::ALL {
            let parser = parser(provider);
            for line in lines {
                let failure = expect_failure(parser.parse_line(7, line));
                assert_eq!(failure.error_type, "malformed_line", "{provider} {line:?}");
                assert_eq!(failure.custom_id, "line-7", "{provider} {line:?}");
                assert_eq!(failure.line, Some(7));
                assert_eq!(
                    failure.raw_data,
                    Some(String::from_utf8_lossy(line).into_owned())
                );
            }
        }
    }

    #[test]
    fn malformed_lines_keep_a_recoverable_custom_id() {
        let cases = [
            (
                ProviderKind::OpenAi,
                &br#"{"custom_id":"r-9","response":{"status_code":[]}}"#[..],
                "r-9",
            ),
            (
                ProviderKind::Anthropic,
                br#"{"custom_id":"r-9","result":[]}"#,
                "r-9",
            ),
            (
                ProviderKind::Gemini,
                br#"{"key":"r-9","response":[]}"#,
                "r-9",
            ),
            (
                ProviderKind::Vertex,
                br#"{"status":"","request":{"labels":{"batchline_row":"2"}},"response":[]}"#,
                "row-c",
            ),
        ];
        for (provider, line, id) in cases {
            let failure = expect_failure(parser(provider).parse_line(3, line));
            assert_eq!(failure.error_type, "malformed_line", "{provider}");
            assert_eq!(failure.custom_id, id, "{provider}");
        }
    }

    #[test]
    fn cut_off_lines_are_reported_under_the_id_they_still_name() {
        for provider in ProviderKind::ALL {
            let line = answer_line(provider, r#"{"name":"Ada","age":36}"#);
            let id_field: &[u8] = match provider {
                ProviderKind::Vertex => br#""batchline_row":"1""#,
                ProviderKind::Gemini => br#""key":"r-1""#,
                ProviderKind::Bedrock => br#""recordId":"r-1""#,
                _ => br#""custom_id":"r-1""#,
            };
            let id_end = line
                .windows(id_field.len())
                .position(|w| w == id_field)
                .unwrap()
                + id_field.len();
            for cut in 1..line.len() {
                let failure = expect_failure(parser(provider).parse_line(3, &line[..cut]));
                let expected = if cut >= id_end { "r-1" } else { "line-3" };
                assert_eq!(failure.error_type, "malformed_line", "{provider} {cut}");
                assert_eq!(failure.custom_id, expected, "{provider} cut at {cut}");
                assert_eq!(failure.line, Some(3));
                assert_eq!(
                    failure.raw_data.as_deref(),
                    Some(String::from_utf8_lossy(&line[..cut]).as_ref())
                );
            }
        }
        let cut = br#"{"custom_id":"doc-3","response":{"status_code":200,"bo"#;
        let failure = expect_failure(parser(ProviderKind::OpenAi).parse_line(4, cut));
        assert_eq!(
            (failure.custom_id.as_str(), failure.error_type.as_str()),
            ("doc-3", "malformed_line")
        );
        assert!(
            failure
                .error_message
                .contains("not a readable results line")
        );
    }

    #[test]
    fn ids_inside_answers_or_nested_objects_are_not_taken_for_the_line_id() {
        let cases: [(ProviderKind, &[u8]); 4] = [
            // The answer text names an id: escaped, so not a key of the line.
            (
                ProviderKind::OpenAi,
                br#"{"response":{"body":{"choices":[{"message":{"content":"{\"custom_id\":\"evil\"}"}}]}},"custom_id":"r-"#,
            ),
            // An embedded tool input has a custom_id key, one level down.
            (
                ProviderKind::Anthropic,
                br#"{"result":{"message":{"content":[{"type":"tool_use","input":{"custom_id":"evil"}}]}},"custom_"#,
            ),
            (ProviderKind::Gemini, br#"{"response":{"key":"evil"},"ke"#),
            // A row label outside the echoed request's labels.
            (
                ProviderKind::Vertex,
                br#"{"response":{"labels":{"batchline_row":"2"}},"request":{"labels":{"batch"#,
            ),
        ];
        for (provider, line) in cases {
            let failure = expect_failure(parser(provider).parse_line(9, line));
            assert_eq!(failure.custom_id, "line-9", "{provider}");
        }
        // Inline Gemini results name the request in their metadata.
        let inline = br#"{"metadata":{"key":"r-1"},"response":{"candidates":[{"con"#;
        let failure = expect_failure(parser(ProviderKind::Gemini).parse_line(2, inline));
        assert_eq!(failure.custom_id, "r-1");
    }

    #[test]
    fn vertex_rows_outside_the_part_or_missing_are_malformed_lines() {
        let parser = parser(ProviderKind::Vertex);
        let out_of_range = String::from_utf8(answer_line(ProviderKind::Vertex, "{}"))
            .unwrap()
            .replace(r#""batchline_row":"1""#, r#""batchline_row":"3""#);
        let failure = expect_failure(parser.parse_line(5, out_of_range.as_bytes()));
        assert_eq!(failure.error_type, "malformed_line");
        assert_eq!(failure.custom_id, "line-5");
        assert!(
            failure
                .error_message
                .contains("outside this part's 3 requests")
        );

        let missing = String::from_utf8(answer_line(ProviderKind::Vertex, "{}"))
            .unwrap()
            .replace(r#","labels":{"batchline_row":"1"}"#, "");
        let failure = expect_failure(parser.parse_line(6, missing.as_bytes()));
        assert_eq!(failure.custom_id, "line-6");
        assert!(failure.error_message.contains("no labels.batchline_row"));
    }

    #[test]
    fn bad_schemas_are_refused() {
        // Vertex lines carry only a row: the parser always holds the part's manifest.
        assert!(ResultParser::new(ProviderKind::Vertex, &person_schema(), row_ids()).is_ok());

        let broken = OutputSchema {
            name: "broken".into(),
            schema: json!({"type": 12}),
        };
        let err = ResultParser::new(ProviderKind::OpenAi, &broken, row_ids()).unwrap_err();
        assert!(matches!(err, Error::UnsupportedSchema { .. }), "{err}");
    }

    #[test]
    fn raw_data_is_capped_with_a_note() {
        let line = vec![b'x'; RAW_DATA_LIMIT * 2];
        let failure = expect_failure(parser(ProviderKind::OpenAi).parse_line(1, &line));
        let raw = failure.raw_data.unwrap();
        assert!(raw.starts_with(&"x".repeat(RAW_DATA_LIMIT)));
        assert!(raw.len() < RAW_DATA_LIMIT + 100);
        assert!(
            raw.ends_with(&format!("of {} bytes]", RAW_DATA_LIMIT * 2)),
            "{}",
            &raw[RAW_DATA_LIMIT..]
        );
    }

    /// Yields `data`, then fails.
    struct BrokenAfter<'a>(&'a [u8]);

    impl Read for BrokenAfter<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Err(io::Error::other("connection reset"));
            }
            let n = self.0.read(buf)?;
            Ok(n)
        }
    }

    #[test]
    fn parse_reader_numbers_lines_skips_blank_ones_and_reports_read_errors() {
        let mut file = answer_line(ProviderKind::Gemini, r#"{"name":"Ada"}"#);
        file.extend_from_slice(b"\r\n\n");
        file.extend_from_slice(br#"{"key":"r-2","error":{"code":429,"message":"slow down","status":"RESOURCE_EXHAUSTED"}}"#);
        file.extend_from_slice(b"\nnot json");
        let outcomes: Vec<Outcome> =
            parse_reader(ProviderKind::Gemini, &person_schema(), row_ids(), &file[..])
                .unwrap()
                .collect();
        assert_eq!(outcomes.len(), 3);
        assert!(outcomes[0].is_success());
        let throttled = expect_failure(outcomes[1].clone());
        assert_eq!(
            (throttled.custom_id.as_str(), throttled.line),
            ("r-2", Some(3))
        );
        assert_eq!(throttled.error_type, "RESOURCE_EXHAUSTED");
        assert_eq!(outcomes[2].custom_id(), "line-4");

        // Lines longer than the reader's buffer give the same outcomes as lines inside it.
        let small_buffer: Vec<Outcome> = parse_reader(
            ProviderKind::Gemini,
            &person_schema(),
            row_ids(),
            BufReader::with_capacity(8, &file[..]),
        )
        .unwrap()
        .collect();
        assert_eq!(small_buffer, outcomes);

        let parser = parser(ProviderKind::Gemini);
        let first = answer_line(ProviderKind::Gemini, r#"{"name":"Ada"}"#);
        let mut broken = first.clone();
        broken.push(b'\n');
        let outcomes: Vec<Outcome> = parser
            .parse_reader(BufReader::new(BrokenAfter(&broken)))
            .collect();
        assert_eq!(outcomes.len(), 2);
        assert!(outcomes[0].is_success());
        let failure = expect_failure(outcomes[1].clone());
        assert_eq!(failure.error_type, "read_error");
        assert_eq!(failure.line, Some(2));
        assert!(failure.error_message.contains("connection reset"));
    }

    fn mixed_outcomes() -> Vec<Outcome> {
        vec![
            Outcome::Success(Success {
                custom_id: "a".into(),
                result: json!({"n": 1}),
                text: None,
                usage: USAGE,
            }),
            Outcome::Error(Failure::new("b", "refusal", "no")),
            Outcome::Success(Success {
                custom_id: "c".into(),
                result: json!([1]),
                text: None,
                usage: Usage::default(),
            }),
        ]
    }

    #[test]
    fn helpers_split_and_index_outcomes() {
        let outcomes = mixed_outcomes();
        let ids: Vec<&str> = filter_successes(&outcomes)
            .map(|s| s.custom_id.as_str())
            .collect();
        assert_eq!(ids, ["a", "c"]);
        let errors: Vec<&str> = filter_errors(&outcomes)
            .map(|e| e.error_type.as_str())
            .collect();
        assert_eq!(errors, ["refusal"]);
        let objects: Vec<&serde_json::Map<String, Value>> = extract_results(&outcomes).collect();
        assert_eq!(objects.len(), 1);
        assert_eq!(objects[0]["n"], 1);
        let by_id = results_by_custom_id(&outcomes);
        assert_eq!(by_id.len(), 3);
        assert!(!by_id["b"].is_success());
        assert_eq!(by_id["a"].usage(), USAGE);
    }

    #[test]
    fn jsonl_lines_read_back_as_the_same_outcomes() {
        let mut outcomes = mixed_outcomes();
        outcomes.push(Outcome::Error(Failure {
            raw_data: Some("{\"x\":1}".into()),
            line: Some(4),
            usage: USAGE,
            ..Failure::new("d", "invalid_json", "cut off")
        }));
        let mut out = Vec::new();
        for outcome in &outcomes {
            outcome.write_jsonl(&mut out);
        }
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(
            lines[1],
            r#"{"custom_id":"b","error_type":"refusal","error_message":"no"}"#
        );
        let read_back: Vec<Outcome> = lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(read_back, outcomes);

        let mut single = Vec::new();
        if let Outcome::Success(s) = &outcomes[0] {
            s.write_jsonl(&mut single);
        }
        assert_eq!(
            single,
            b"{\"custom_id\":\"a\",\"result\":{\"n\":1},\"usage\":{\"input_tokens\":10,\"output_tokens\":4}}\n"
        );
    }

    #[derive(Debug, PartialEq, Deserialize, schemars::JsonSchema)]
    struct Address {
        city: String,
    }

    #[derive(Debug, PartialEq, Deserialize, schemars::JsonSchema)]
    struct Invoice {
        number: String,
        total_cents: u64,
        note: Option<String>,
        billing: Address,
    }

    #[test]
    fn typed_entry_point_derives_the_schema_and_reads_the_struct() {
        let schema = schema_for::<Invoice>();
        assert_eq!(schema.name, "Invoice");
        let text = schema.schema.to_string();
        assert!(
            !text.contains("$schema") && !text.contains("$ref"),
            "{text}"
        );
        assert_eq!(
            schema.schema["properties"]["billing"]["properties"]["city"]["type"],
            "string"
        );

        let parser = ResultParser::new(ProviderKind::Anthropic, &schema, row_ids()).unwrap();
        let good = answer_line(
            ProviderKind::Anthropic,
            r#"{"number":"INV-1","total_cents":1250,"billing":{"city":"Lyon"}}"#,
        );
        let outcome = parser.parse_line(1, &good);
        assert_eq!(
            outcome.typed::<Invoice>(),
            TypedOutcome::Success(TypedSuccess {
                custom_id: "r-1".into(),
                result: Invoice {
                    number: "INV-1".into(),
                    total_cents: 1250,
                    note: None,
                    billing: Address {
                        city: "Lyon".into()
                    },
                },
                usage: USAGE,
            })
        );
        let missing_city = answer_line(
            ProviderKind::Anthropic,
            r#"{"number":"INV-1","total_cents":1250,"billing":{}}"#,
        );
        let failure = expect_failure(parser.parse_line(2, &missing_city));
        assert_eq!(failure.error_type, "schema_mismatch");
        assert!(
            failure.error_message.contains("at /billing"),
            "{}",
            failure.error_message
        );

        // A success that does not fit the requested type becomes a schema_mismatch.
        match outcome.typed::<Address>() {
            TypedOutcome::Error(failure) => {
                assert_eq!(failure.error_type, "schema_mismatch");
                assert!(
                    failure.error_message.contains("city"),
                    "{}",
                    failure.error_message
                );
                assert_eq!(failure.usage, USAGE);
            }
            other => panic!("{other:?}"),
        }
        let refused = Outcome::Error(Failure::new("x", "refusal", "no"));
        assert_eq!(
            refused.typed::<Invoice>(),
            TypedOutcome::Error(Failure::new("x", "refusal", "no"))
        );
    }

    #[test]
    fn schema_names_are_made_provider_safe() {
        assert_eq!(provider_schema_name("Page_for_Item"), "Page_for_Item");
        assert_eq!(
            provider_schema_name("Tuple_of_(u8, u8)"),
            "Tuple_of__u8__u8_"
        );
        assert_eq!(provider_schema_name(""), "output");
        assert_eq!(provider_schema_name(&"n".repeat(80)).len(), 64);
    }

    #[test]
    fn openai_strict_mode_nulls_are_dropped_before_validation() {
        let answer = r#"{"name":"Ada","age":null,"tags":null}"#;
        let outcome =
            parser(ProviderKind::OpenAi).parse_line(1, &answer_line(ProviderKind::OpenAi, answer));
        assert_eq!(
            outcome,
            Outcome::Success(Success {
                custom_id: "r-1".into(),
                result: json!({"name": "Ada"}),
                text: None,
                usage: USAGE,
            })
        );
        // Other providers never had their schema made nullable: a null is an error there.
        let other =
            parser(ProviderKind::Gemini).parse_line(1, &answer_line(ProviderKind::Gemini, answer));
        assert_eq!(expect_failure(other).error_type, "schema_mismatch");
    }

    /// A successful results line of `provider` for request `r-1` (Vertex row 1) whose
    /// answer is the text `answer` (an Anthropic text block, not a tool call).
    fn text_answer_line(provider: ProviderKind, answer: &str) -> Vec<u8> {
        match provider {
            ProviderKind::Anthropic => {
                let text = serde_json::to_string(answer).unwrap();
                format!(
                    r#"{{"custom_id":"r-1","result":{{"type":"succeeded","message":{{"content":[{{"type":"text","text":{text}}}],"stop_reason":"end_turn","usage":{{"input_tokens":10,"output_tokens":4}}}}}}}}"#
                )
                .into_bytes()
            }
            ProviderKind::Bedrock => {
                let text = serde_json::to_string(answer).unwrap();
                format!(
                    r#"{{"recordId":"r-1","modelInput":{{}},"modelOutput":{{"output":{{"message":{{"role":"assistant","content":[{{"text":{text}}}]}}}},"stopReason":"end_turn","usage":{{"inputTokens":10,"outputTokens":4}}}}}}"#
                )
                .into_bytes()
            }
            _ => answer_line(provider, answer),
        }
    }

    fn format_parser(provider: ProviderKind, format: AnswerFormat) -> ResultParser {
        ResultParser::with_format(provider, &format, row_ids()).unwrap()
    }

    #[test]
    fn text_answers_are_kept_as_written_without_a_result() {
        for provider in ProviderKind::ALL {
            let answer = "Ada Lovelace, 36, \"analyst\".\nNot JSON at all.";
            let line = text_answer_line(provider, answer);
            let outcome = format_parser(provider, AnswerFormat::Text).parse_line(1, &line);
            let Outcome::Success(success) = &outcome else {
                panic!("{provider}: {outcome:?}");
            };
            assert_eq!(success.text.as_deref(), Some(answer), "{provider}");
            assert_eq!(success.result, Value::Null, "{provider}");
            let mut out = Vec::new();
            outcome.write_jsonl(&mut out);
            let expected = format!(
                "{{\"custom_id\":\"r-1\",\"text\":{},\"usage\":{{\"input_tokens\":10,\"output_tokens\":4}}}}\n",
                serde_json::to_string(answer).unwrap()
            );
            assert_eq!(
                String::from_utf8(out.clone()).unwrap(),
                expected,
                "{provider}"
            );
            let read_back: Outcome = serde_json::from_slice(&out).unwrap();
            assert_eq!(read_back, outcome, "{provider}");
            match read_back.typed::<String>() {
                TypedOutcome::Success(typed) => assert_eq!(typed.result, answer),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn json_mode_takes_any_object_and_nothing_else() {
        for provider in ProviderKind::ALL {
            let parser = format_parser(provider, AnswerFormat::JsonObject);
            let line = text_answer_line(provider, r#"{"anything":[1,2],"goes":null}"#);
            let outcome = parser.parse_line(1, &line);
            let Outcome::Success(success) = &outcome else {
                panic!("{provider}: {outcome:?}");
            };
            assert_eq!(success.result, json!({"anything": [1, 2], "goes": null}));
            assert_eq!(success.text, None);
            let mut out = Vec::new();
            outcome.write_jsonl(&mut out);
            assert!(
                out.starts_with(br#"{"custom_id":"r-1","result":{"anything""#),
                "{provider}: {}",
                String::from_utf8_lossy(&out)
            );
            for (answer, says) in [
                ("[1,2]", "an array"),
                ("[{\"a\":1}]", "an array"),
                ("\"text\"", "a string"),
                ("3", "a number"),
                ("null", "null"),
                ("{\"cut\":", "not valid JSON"),
                ("Sure! Here it is.", "not valid JSON"),
            ] {
                let failure =
                    expect_failure(parser.parse_line(1, &text_answer_line(provider, answer)));
                assert_eq!(failure.error_type, "invalid_json", "{provider} {answer}");
                assert!(failure.error_message.contains(says), "{failure:?}");
                assert_eq!(failure.usage, USAGE);
            }
        }
    }

    #[test]
    fn schema_jobs_read_the_anthropic_tool_or_the_output_config_text() {
        // Claude 4.5 and later answer a schema (`output_config`) in the text block.
        let line = text_answer_line(ProviderKind::Anthropic, r#"{"name":"Ada","age":36}"#);
        match parser(ProviderKind::Anthropic).parse_line(1, &line) {
            Outcome::Success(success) => assert_eq!(success.result["age"], 36),
            other => panic!("{other:?}"),
        }
        // A tool call in a text-mode answer is not the answer: its text is.
        let tool = answer_line(ProviderKind::Anthropic, r#"{"name":"Ada","age":36}"#);
        let failure = expect_failure(
            format_parser(ProviderKind::Anthropic, AnswerFormat::Text).parse_line(1, &tool),
        );
        assert_eq!(failure.error_type, "no_structured_output");
    }

    #[test]
    fn packed_parsers_need_a_schema() {
        for format in [AnswerFormat::Text, AnswerFormat::JsonObject] {
            let err =
                ResultParser::packed(ProviderKind::OpenAi, &format, Arc::from(vec![])).unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{err}");
            assert!(err.to_string().contains("need a schema"), "{err}");
        }
    }
}
