//! The job spec (model, answer format, parameters, limits) and the input line format.

use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

use super::row::{InputRow, KeptValues, RowRejection};
use super::template::Template;
use crate::model::ModelRef;
use crate::quota::QuotaLimits;
use crate::request::{
    AnswerFormat, GenerationParams, Message, OutputSchema, PromptCache, Request, Role,
};

/// Everything a job needs besides its requests. Comes from a first header line
/// `{"spec": {…}}` in the uploaded file, or from `pipelines/<name>.json` for uploads
/// under `inbox/<name>/`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// `provider/model`, e.g. `openai/gpt-4o-mini`.
    pub model: ModelRef,
    /// Name of the answer schema (providers want one; `[a-zA-Z0-9_-]{1,64}`); given
    /// with `schema` and only then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_name: Option<String>,
    /// JSON Schema every answer must match; without one the answers are free text
    /// (or any JSON object with `output` `"json"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<serde_json::Value>,
    /// What the answers are: `"schema"` (the default with a schema), `"text"` (the
    /// default without) or `"json"` (any JSON object, without a schema).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<OutputMode>,
    /// System prompt sent with every request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
    /// Largest answer in tokens.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    /// Sampling temperature (None: the provider's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Largest accepted input line in bytes.
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: usize,
    /// Requests per provider batch, below the provider's own limit (None: the provider's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_part: Option<usize>,
    /// Attempts per request, the first included: requests that failed for a retryable
    /// reason (rate limit, overload, server error, expired batch) are resubmitted
    /// in a new part until they succeed, fail otherwise or reach this (default 2).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Input rows sent together in one LLM request (1 to 100, default 1). Above 1 the
    /// rows of a request share one copy of the system prompt and schema, and each row
    /// is answered and validated on its own; rows must then be single texts.
    #[serde(default = "default_rows_per_request")]
    pub rows_per_request: usize,
    /// Prompt caching of the shared prefix: `"1h"` (default), `"5m"` or `"off"`.
    #[serde(default)]
    pub prompt_cache: PromptCache,
    /// Your batch prices, so that the summary can state the job's cost (prices change
    /// and differ by account, so batchline ships none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prices: Option<TokenPrices>,
    /// CSV uploads: the column holding each row's `custom_id` (None: `line-N`, the
    /// line the row starts on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_column: Option<String>,
    /// CSV uploads: the column holding each row's text (None: the `template`, else a
    /// column named `text`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_column: Option<String>,
    /// CSV uploads: the user message built from the row's columns, as in
    /// `"Title: {title}\n\n{body}"` (`{{` and `}}` are literal braces); excludes
    /// `text_column`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Input fields (JSONL) or columns (CSV) carried into every result record of
    /// their row, as top-level fields after `custom_id`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keep: Vec<String>,
    /// Rows whose `custom_id` already has a success in an earlier job of the same
    /// named pipeline are not sent again (counted as `skipped`, each listed with the
    /// job that holds its answer). For uploads under `inbox/<pipeline>/` only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_succeeded: bool,
    /// How the successes are written: `["jsonl"]` (the default), `["jsonl",
    /// "parquet"]` or `["parquet"]` (errors are JSONL whatever this says).
    #[serde(
        default = "default_formats",
        skip_serializing_if = "is_default_formats"
    )]
    pub formats: Vec<ResultFormat>,
    /// The provider account's limits for this job's batches, each completing the
    /// deployment's `QUOTA_LIMITS`: parts that would pass one wait and are created as
    /// earlier batches end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaLimits>,
    /// Hours from the upload after which parts still waiting for quota are given up:
    /// their rows get `expired` errors (1 to 720, default 72).
    #[serde(default = "default_deadline_hours")]
    pub deadline_hours: u32,
}

/// A file format of the successes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResultFormat {
    /// One JSON line per success: `successes/part-NNNNN.jsonl`.
    Jsonl,
    /// One Parquet file per part, `successes/part-NNNNN.parquet`, with a column per
    /// answer property (see [`crate::table`]).
    Parquet,
}

impl ResultFormat {
    /// The format as the spec writes it: `"jsonl"` or `"parquet"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ResultFormat::Jsonl => "jsonl",
            ResultFormat::Parquet => "parquet",
        }
    }
}

fn default_formats() -> Vec<ResultFormat> {
    vec![ResultFormat::Jsonl]
}

fn is_default_formats(formats: &[ResultFormat]) -> bool {
    formats == [ResultFormat::Jsonl]
}

/// Fields of the result records, which a kept value would overwrite, and `messages`,
/// a request field of JSONL lines.
const RESERVED_KEEP_NAMES: [&str; 10] = [
    "custom_id",
    "result",
    "text",
    "usage",
    "attempts",
    "error_type",
    "error_message",
    "raw_data",
    "line",
    "messages",
];

/// The spec's `output` field: what form the answers take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputMode {
    /// A JSON value valid against the spec's `schema`.
    Schema,
    /// Any JSON object (no schema).
    Json,
    /// Free text (no schema).
    Text,
}

impl OutputMode {
    fn name(self) -> &'static str {
        match self {
            OutputMode::Schema => "schema",
            OutputMode::Json => "json",
            OutputMode::Text => "text",
        }
    }
}

/// US dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenPrices {
    /// Price of a million input tokens.
    pub input_per_million: f64,
    /// Price of a million output tokens.
    pub output_per_million: f64,
    /// Price of a million input tokens read from the prompt cache (absent: the input
    /// price, so that a cost is never understated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read_per_million: Option<f64>,
    /// Price of a million input tokens written to the prompt cache (Anthropic; absent:
    /// the input price).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_per_million: Option<f64>,
}

impl TokenPrices {
    /// What `usage` costs at these prices, in US dollars: uncached input, cache reads,
    /// cache writes and output each at their own price.
    pub fn cost_usd(&self, usage: &crate::results::Usage) -> f64 {
        let input = self.input_per_million;
        (usage.uncached_input_tokens() as f64 * input
            + usage.cached_input_tokens as f64 * self.cache_read_per_million.unwrap_or(input)
            + usage.cache_write_input_tokens as f64 * self.cache_write_per_million.unwrap_or(input)
            + usage.output_tokens as f64 * self.output_per_million)
            / 1_000_000.0
    }

    /// Every price with the name of its spec field.
    fn fields(&self) -> impl Iterator<Item = (&'static str, f64)> {
        [
            ("prices.input_per_million", Some(self.input_per_million)),
            ("prices.output_per_million", Some(self.output_per_million)),
            ("prices.cache_read_per_million", self.cache_read_per_million),
            (
                "prices.cache_write_per_million",
                self.cache_write_per_million,
            ),
        ]
        .into_iter()
        .filter_map(|(field, price)| price.map(|p| (field, p)))
    }
}

fn default_max_attempts() -> u32 {
    2
}

fn default_rows_per_request() -> usize {
    1
}

fn default_deadline_hours() -> u32 {
    72
}

/// The bounds [`JobSpec::check`] enforces, as the README's spec table documents them.
pub mod bounds {
    /// `max_line_bytes`: at most 64 MiB (a line is held in memory while it is read).
    pub const MAX_LINE_BYTES: usize = 64 * 1024 * 1024;
    /// `max_attempts`: 1 (no retry) to 10.
    pub const MAX_ATTEMPTS: u32 = 10;
    /// `max_tokens`: 1 to 200,000 (the model's own limit applies at the provider).
    pub const MAX_TOKENS: u32 = 200_000;
    /// `temperature`: 0 to 2.
    pub const MAX_TEMPERATURE: f64 = 2.0;
    /// `rows_per_request`: 1 to 100.
    pub const MAX_ROWS_PER_REQUEST: usize = 100;
    /// `deadline_hours`: 1 hour to 30 days.
    pub const MAX_DEADLINE_HOURS: u32 = 720;
    /// `prices`: 0 to 10,000 USD per million tokens.
    pub const MAX_PRICE_PER_MILLION: f64 = 10_000.0;
}

fn default_max_tokens() -> u32 {
    GenerationParams::default().max_tokens
}

fn default_max_line_bytes() -> usize {
    1024 * 1024
}

impl JobSpec {
    /// How long after its upload the job may stay open (`deadline_hours`).
    pub fn deadline(&self) -> std::time::Duration {
        std::time::Duration::from_secs(u64::from(self.deadline_hours) * 3600)
    }

    /// `output`, or its default: `"schema"` with a schema, `"text"` without.
    pub fn output_mode(&self) -> OutputMode {
        self.output.unwrap_or(match self.schema {
            Some(_) => OutputMode::Schema,
            None => OutputMode::Text,
        })
    }

    /// What form the answers take, from `output`, `schema` and `schema_name`; the
    /// error names the field that does not fit (a schema without its name, a name
    /// without a schema, `output` `"schema"` without a schema or another `output`
    /// with one).
    pub fn answer_format(&self) -> Result<AnswerFormat, String> {
        match (self.output_mode(), &self.schema, &self.schema_name) {
            (OutputMode::Schema, Some(schema), Some(name)) => {
                Ok(AnswerFormat::Schema(OutputSchema {
                    name: name.clone(),
                    schema: schema.clone(),
                }))
            }
            (OutputMode::Schema, Some(_), None) => {
                Err("spec field `schema_name` is missing: a `schema` needs a name".to_string())
            }
            (OutputMode::Schema, None, _) => Err(
                "spec field `output` is \"schema\" but the spec has no `schema`; give one, or \
                 use \"text\" or \"json\""
                    .to_string(),
            ),
            (mode, Some(_), _) => Err(format!(
                "spec field `output` is \"{}\", which takes no `schema`; remove the schema or \
                 use \"schema\"",
                mode.name()
            )),
            (_, None, Some(_)) => Err(
                "spec field `schema_name` is given without a `schema`; give both or neither"
                    .to_string(),
            ),
            (OutputMode::Json, None, None) => Ok(AnswerFormat::JsonObject),
            (OutputMode::Text, None, None) => Ok(AnswerFormat::Text),
        }
    }

    /// Checks the answer format ([`JobSpec::answer_format`]) and every number of the
    /// spec against its documented bound ([`bounds`]);
    /// `requests_per_batch` is what one provider batch may hold. The error says
    /// which field is wrong and what is allowed.
    pub fn check(&self, requests_per_batch: RangeInclusive<usize>) -> Result<(), String> {
        self.answer_format()?;
        self.check_columns()?;
        let out_of_bounds = |field: &str, value: String, allowed: String| {
            Err(format!(
                "spec field `{field}` is {value}; allowed: {allowed}"
            ))
        };
        if !(1..=bounds::MAX_LINE_BYTES).contains(&self.max_line_bytes) {
            return out_of_bounds(
                "max_line_bytes",
                self.max_line_bytes.to_string(),
                format!("1 to {} (64 MiB)", bounds::MAX_LINE_BYTES),
            );
        }
        if !(1..=bounds::MAX_DEADLINE_HOURS).contains(&self.deadline_hours) {
            return out_of_bounds(
                "deadline_hours",
                self.deadline_hours.to_string(),
                format!("1 to {}", bounds::MAX_DEADLINE_HOURS),
            );
        }
        if !(1..=bounds::MAX_ATTEMPTS).contains(&self.max_attempts) {
            return out_of_bounds(
                "max_attempts",
                self.max_attempts.to_string(),
                format!("1 to {}", bounds::MAX_ATTEMPTS),
            );
        }
        if !(1..=bounds::MAX_TOKENS).contains(&self.max_tokens) {
            return out_of_bounds(
                "max_tokens",
                self.max_tokens.to_string(),
                format!("1 to {}", bounds::MAX_TOKENS),
            );
        }
        if !(1..=bounds::MAX_ROWS_PER_REQUEST).contains(&self.rows_per_request) {
            return out_of_bounds(
                "rows_per_request",
                self.rows_per_request.to_string(),
                format!("1 to {}", bounds::MAX_ROWS_PER_REQUEST),
            );
        }
        let mode = self.output_mode();
        if self.rows_per_request > 1 && mode != OutputMode::Schema {
            return out_of_bounds(
                "rows_per_request",
                self.rows_per_request.to_string(),
                format!(
                    "1 with `output` \"{}\" (packed rows need a `schema` to wrap)",
                    mode.name()
                ),
            );
        }
        if let Some(max) = self.max_requests_per_part
            && !requests_per_batch.contains(&max)
        {
            return out_of_bounds(
                "max_requests_per_part",
                max.to_string(),
                format!(
                    "{} to {} ({}'s limits per batch)",
                    requests_per_batch.start(),
                    requests_per_batch.end(),
                    self.model.provider
                ),
            );
        }
        if let Some(t) = self.temperature
            && !(0.0..=bounds::MAX_TEMPERATURE).contains(&t)
        {
            return out_of_bounds(
                "temperature",
                t.to_string(),
                format!("0 to {}", bounds::MAX_TEMPERATURE),
            );
        }
        if self.formats.is_empty() {
            return out_of_bounds(
                "formats",
                "empty".to_string(),
                "\"jsonl\", \"parquet\" or both".to_string(),
            );
        }
        if let Some(repeated) =
            (1..self.formats.len()).find(|&i| self.formats[..i].contains(&self.formats[i]))
        {
            return out_of_bounds(
                "formats",
                format!("\"{}\" twice", self.formats[repeated].as_str()),
                "each format once".to_string(),
            );
        }
        if let Some(prices) = self.prices {
            for (field, price) in prices.fields() {
                if !(0.0..=bounds::MAX_PRICE_PER_MILLION).contains(&price) {
                    return out_of_bounds(
                        field,
                        price.to_string(),
                        format!("0 to {} USD", bounds::MAX_PRICE_PER_MILLION),
                    );
                }
            }
        }
        Ok(())
    }

    /// Checks `id_column`, `text_column`, `template` and `keep` on their own (the
    /// columns are checked against a CSV file's header when it is read).
    fn check_columns(&self) -> Result<(), String> {
        for (field, column) in [
            ("id_column", &self.id_column),
            ("text_column", &self.text_column),
        ] {
            if column.as_deref().is_some_and(|name| name.trim().is_empty()) {
                return Err(format!("spec field `{field}` is empty; name a column"));
            }
        }
        if self.text_column.is_some() && self.template.is_some() {
            return Err(
                "spec fields `text_column` and `template` are both given; give one".to_string(),
            );
        }
        self.parsed_template()?;
        let mut seen = std::collections::HashSet::new();
        for name in &self.keep {
            if name.trim().is_empty() {
                return Err("spec field `keep` holds an empty name".to_string());
            }
            if RESERVED_KEEP_NAMES.contains(&name.as_str()) {
                return Err(format!(
                    "spec field `keep` holds {name:?}, a field of the result records; \
                     rename that input field or column"
                ));
            }
            if !seen.insert(name) {
                return Err(format!("spec field `keep` holds {name:?} twice"));
            }
        }
        Ok(())
    }

    /// The spec's `template`, parsed; the error names the field.
    pub fn parsed_template(&self) -> Result<Option<Template>, String> {
        self.template
            .as_deref()
            .map(Template::parse)
            .transpose()
            .map_err(|e| format!("spec field `template` is not usable: {e}"))
    }

    /// Whether the successes are written in `format`.
    pub fn writes(&self, format: ResultFormat) -> bool {
        self.formats.contains(&format)
    }

    /// The generation parameters every request of the job is sent with.
    pub fn params(&self) -> GenerationParams {
        GenerationParams {
            max_tokens: self.max_tokens,
            temperature: self.temperature,
            system_prompt: self.system_prompt.clone(),
            prompt_cache: self.prompt_cache,
        }
    }
}

/// The header line form: `{"spec": {…}}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecHeader {
    /// The job's spec.
    pub spec: JobSpec,
}

/// Looks like a header (has a `spec` key) whether or not it parses as one, so that a
/// broken header is reported as such instead of as a bad request line.
pub fn is_header(line: &[u8]) -> bool {
    // The key's presence decides, so that `{"spec": null}` counts as a (broken) header.
    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(line)
        .is_ok_and(|object| object.contains_key("spec"))
}

/// One line of an uploaded file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InputLine {
    #[serde(default)]
    custom_id: Option<String>,
    #[serde(default)]
    messages: Option<Vec<Message>>,
    #[serde(default)]
    text: Option<String>,
}

/// The id a line without `custom_id` gets: its 1-based line number in the file.
/// Also the id a rejected line is reported under when its own id cannot be used.
///
/// Ids of this form are reserved: a given `custom_id` `line-N` is accepted only on
/// line N (see [`check_given_id`]), so a generated id never meets a given one.
pub fn line_id(line_no: u64) -> String {
    format!("{LINE_ID_PREFIX}{line_no}")
}

const LINE_ID_PREFIX: &str = "line-";

/// Checks a `custom_id` given on line `line_no`: the general rules of
/// [`check_custom_id`], and that it does not take the generated id of another line.
pub fn check_given_id(id: &str, line_no: u64) -> Result<(), String> {
    check_custom_id(id)?;
    let takes_a_line_id = id
        .strip_prefix(LINE_ID_PREFIX)
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    if takes_a_line_id && id != line_id(line_no) {
        return Err(format!(
            "custom_id {id:?} has the form line-<number>, which is reserved for the ids of \
             lines without a custom_id (it is accepted only on that line)"
        ));
    }
    Ok(())
}

/// Longest `custom_id` accepted (OpenAI has no documented limit; ids land in result
/// files and logs, so keep them bounded).
const MAX_CUSTOM_ID_CHARS: usize = 256;

/// Parses one input line into a request, with the line's values of the `keep`
/// fields (`null` where the line lacks one). A field that is neither a request field
/// nor kept is refused, so that a misspelt field is never silently dropped.
/// Provider-specific id rules (Anthropic's regex) are enforced later by the batch
/// builder.
pub fn parse_line(line_no: u64, line: &[u8], keep: &[String]) -> Result<InputRow, RowRejection> {
    let reject = |custom_id: String, reason: String| RowRejection::new(custom_id, line_no, reason);
    let text = std::str::from_utf8(line)
        .map_err(|e| reject(line_id(line_no), format!("line is not UTF-8 ({e})")))?;
    let not_a_request = |e: serde_json::Error| {
        reject(
            recover_id(text, line_no).unwrap_or_else(|| line_id(line_no)),
            format!("line is not a valid request: {e}"),
        )
    };
    let (parsed, kept) = match keep.is_empty() {
        // The common case reads the line in one pass.
        true => (serde_json::from_str(text).map_err(not_a_request)?, None),
        false => {
            let mut fields: KeptValues = serde_json::from_str(text).map_err(not_a_request)?;
            let kept: KeptValues = keep
                .iter()
                .map(|name| (name.clone(), fields.remove(name).unwrap_or_default()))
                .collect();
            let parsed = serde_json::from_value(fields.into()).map_err(|e| RowRejection {
                kept: Some(Box::new(kept.clone())),
                ..not_a_request(e)
            })?;
            (parsed, Some(kept))
        }
    };
    let with_kept = |rejection: RowRejection| RowRejection {
        kept: kept.clone().map(Box::new),
        ..rejection
    };
    let request = line_request(line_no, parsed).map_err(with_kept)?;
    Ok(InputRow {
        line: line_no,
        request,
        kept,
    })
}

/// The request of a parsed input line.
fn line_request(line_no: u64, parsed: InputLine) -> Result<Request, RowRejection> {
    let reject = |custom_id: String, reason: String| RowRejection::new(custom_id, line_no, reason);
    let custom_id = match parsed.custom_id {
        Some(id) => {
            check_given_id(&id, line_no).map_err(|reason| reject(line_id(line_no), reason))?;
            id
        }
        None => line_id(line_no),
    };
    let messages = match (parsed.messages, parsed.text) {
        (Some(_), Some(_)) => {
            return Err(reject(
                custom_id,
                "line has both `messages` and `text`; give one".into(),
            ));
        }
        (None, None) => {
            return Err(reject(
                custom_id,
                "line has neither `messages` nor `text`".into(),
            ));
        }
        (Some(messages), None) => messages,
        (None, Some(text)) => vec![Message::new(Role::User, text)],
    };
    if messages.is_empty() {
        return Err(reject(custom_id, "`messages` is empty".into()));
    }
    Ok(Request {
        custom_id,
        messages,
    })
}

/// Ids become part of result lines and must never be able to act as paths or
/// break a line: no `/`, no `..`, no control characters, bounded length.
pub fn check_custom_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("custom_id is empty".into());
    }
    if id.chars().count() > MAX_CUSTOM_ID_CHARS {
        return Err(format!(
            "custom_id is longer than {MAX_CUSTOM_ID_CHARS} characters"
        ));
    }
    if id.contains('/') || id.contains("..") {
        return Err(format!("custom_id {id:?} contains `/` or `..`"));
    }
    if id.chars().any(char::is_control) {
        return Err(format!(
            "custom_id {:?} contains control characters",
            id.escape_debug().to_string()
        ));
    }
    Ok(())
}

/// The `custom_id` of a line that failed to parse as a whole, if it has a usable one.
fn recover_id(text: &str, line_no: u64) -> Option<String> {
    #[derive(Deserialize)]
    struct IdOnly {
        custom_id: String,
    }
    let id = serde_json::from_str::<IdOnly>(text).ok()?.custom_id;
    check_given_id(&id, line_no).ok().map(|_| id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_conversation_lines() {
        let r = parse_line(3, br#"{"text":"hello"}"#, &[]).unwrap().request;
        assert_eq!(r.custom_id, "line-3");
        assert_eq!(r.messages, vec![Message::new(Role::User, "hello")]);
        let r = parse_line(
            4,
            br#"{"custom_id":"a1","messages":[{"role":"user","content":"x"}]}"#,
            &[],
        )
        .unwrap()
        .request;
        assert_eq!(r.custom_id, "a1");
    }

    #[test]
    fn rejections_name_the_reason_and_keep_the_id_where_possible() {
        let cases: [(&[u8], &str, &str); 7] = [
            (b"not json", "line-1", "not a valid request"),
            (br#"{"custom_id":"k"}"#, "k", "neither"),
            (br#"{"custom_id":"k","messages":[]}"#, "k", "empty"),
            (
                br#"{"custom_id":"k","messages":[{"role":"tool","content":"x"}]}"#,
                "k",
                "unknown variant",
            ),
            (br#"{"custom_id":"a/b","text":"x"}"#, "line-1", "`/`"),
            (
                br#"{"custom_id":"a\u0001","text":"x"}"#,
                "line-1",
                "control",
            ),
            (b"\xff\xfe", "line-1", "UTF-8"),
        ];
        for (line, id, reason) in cases {
            let err = parse_line(1, line, &[]).unwrap_err();
            assert_eq!(err.custom_id, id, "{err:?}");
            assert!(err.reason.contains(reason), "{err:?}");
        }
    }

    #[test]
    fn given_ids_of_the_generated_form_are_taken_only_on_their_own_line() {
        assert_eq!(
            parse_line(7, br#"{"custom_id":"line-7","text":"x"}"#, &[])
                .unwrap()
                .request
                .custom_id,
            "line-7"
        );
        for (id, line) in [("line-3", 7), ("line-07", 7), ("line-8", 7)] {
            let text = format!(r#"{{"custom_id":"{id}","text":"x"}}"#);
            let err = parse_line(line, text.as_bytes(), &[]).unwrap_err();
            assert_eq!(err.custom_id, "line-7", "{err:?}");
            assert!(err.reason.contains("reserved"), "{err:?}");
            // A line broken elsewhere does not keep a reserved id either.
            let broken = format!(r#"{{"custom_id":"{id}","text":1}}"#);
            assert_eq!(
                parse_line(line, broken.as_bytes(), &[])
                    .unwrap_err()
                    .custom_id,
                "line-7"
            );
        }
        assert!(parse_line(1, br#"{"custom_id":"line-x","text":"x"}"#, &[]).is_ok());
        assert!(parse_line(1, br#"{"custom_id":"line-","text":"x"}"#, &[]).is_ok());
    }

    #[test]
    fn spec_numbers_are_checked_against_their_documented_bounds() {
        let spec: JobSpec = serde_json::from_value(serde_json::json!({
            "model": "openai/gpt-4o-mini", "schema_name": "s", "schema": {"type": "object"}
        }))
        .unwrap();
        assert_eq!(spec.check(1..=50_000), Ok(()));
        let cases: [(serde_json::Value, &str); 8] = [
            (serde_json::json!({"max_line_bytes": 0}), "max_line_bytes"),
            (
                serde_json::json!({"max_line_bytes": 65 * 1024 * 1024}),
                "max_line_bytes",
            ),
            (serde_json::json!({"max_attempts": 0}), "max_attempts"),
            (serde_json::json!({"max_attempts": 11}), "max_attempts"),
            (serde_json::json!({"max_tokens": 0}), "max_tokens"),
            (
                serde_json::json!({"max_requests_per_part": 50_001}),
                "max_requests_per_part",
            ),
            (serde_json::json!({"temperature": 2.5}), "temperature"),
            (
                serde_json::json!({"prices": {"input_per_million": -1.0, "output_per_million": 1.0}}),
                "prices.input_per_million",
            ),
        ];
        for (change, field) in cases {
            let mut value = serde_json::to_value(&spec).unwrap();
            value
                .as_object_mut()
                .unwrap()
                .extend(change.as_object().unwrap().clone());
            let changed: JobSpec = serde_json::from_value(value).unwrap();
            let err = changed.check(1..=50_000).unwrap_err();
            assert!(
                err.contains(&format!("`{field}`")) && err.contains("allowed"),
                "{err}"
            );
        }
    }

    #[test]
    fn formats_default_to_jsonl_and_are_each_given_once() {
        let default = spec(serde_json::json!({}));
        assert_eq!(default.formats, [ResultFormat::Jsonl]);
        assert!(default.writes(ResultFormat::Jsonl) && !default.writes(ResultFormat::Parquet));
        // Records of jobs without the field are written as they always were.
        assert_eq!(serde_json::to_value(&default).unwrap().get("formats"), None);
        for formats in [
            serde_json::json!(["jsonl", "parquet"]),
            serde_json::json!(["parquet"]),
        ] {
            let spec = spec(serde_json::json!({"formats": formats.clone()}));
            assert_eq!(spec.check(1..=50_000), Ok(()));
            assert!(spec.writes(ResultFormat::Parquet));
            assert_eq!(serde_json::to_value(&spec).unwrap()["formats"], formats);
        }
        for formats in [
            serde_json::json!([]),
            serde_json::json!(["parquet", "parquet"]),
        ] {
            let err = spec(serde_json::json!({"formats": formats}))
                .check(1..=50_000)
                .unwrap_err();
            assert!(
                err.contains("`formats`") && err.contains("allowed"),
                "{err}"
            );
        }
        assert!(
            serde_json::from_value::<JobSpec>(serde_json::json!({
                "model": "openai/gpt-4o-mini", "formats": ["csv"]
            }))
            .is_err()
        );
    }

    #[test]
    fn headers_are_recognised_even_when_broken() {
        assert!(is_header(br#"{"spec":null}"#));
        assert!(!is_header(b"null"));
        assert!(is_header(br#"{"spec":{"model":"x"}}"#));
        assert!(!is_header(br#"{"text":"spec"}"#));
        let header: SpecHeader = serde_json::from_slice(
            br#"{"spec":{"model":"openai/gpt-4o-mini","schema_name":"s","schema":{"type":"object"}}}"#,
        )
        .unwrap();
        assert_eq!(header.spec.max_tokens, 1024);
    }

    fn spec(fields: serde_json::Value) -> JobSpec {
        let mut value = serde_json::json!({"model": "openai/gpt-4o-mini"});
        value
            .as_object_mut()
            .unwrap()
            .extend(fields.as_object().unwrap().clone());
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn output_defaults_to_schema_with_one_and_text_without() {
        let schema = serde_json::json!({"schema_name": "s", "schema": {"type": "object"}});
        let with_schema = spec(schema.clone());
        assert_eq!(with_schema.output_mode(), OutputMode::Schema);
        assert_eq!(
            with_schema.answer_format(),
            Ok(AnswerFormat::Schema(OutputSchema {
                name: "s".into(),
                schema: serde_json::json!({"type": "object"}),
            }))
        );
        let explicit = spec(serde_json::json!({
            "schema_name": "s", "schema": {"type": "object"}, "output": "schema"
        }));
        assert_eq!(explicit.answer_format(), with_schema.answer_format());
        let text = spec(serde_json::json!({}));
        assert_eq!(text.output_mode(), OutputMode::Text);
        assert_eq!(text.answer_format(), Ok(AnswerFormat::Text));
        assert_eq!(text.check(1..=50_000), Ok(()));
        let json = spec(serde_json::json!({"output": "json"}));
        assert_eq!(json.answer_format(), Ok(AnswerFormat::JsonObject));
        assert_eq!(
            spec(serde_json::json!({"output": "text"})).answer_format(),
            Ok(AnswerFormat::Text)
        );
        // A schema job's record is written as it always was: no `output` field.
        assert_eq!(
            serde_json::to_value(&with_schema).unwrap()["schema_name"],
            "s"
        );
        assert_eq!(
            serde_json::to_value(&with_schema).unwrap().get("output"),
            None
        );
        assert_eq!(serde_json::to_value(&text).unwrap().get("schema"), None);
    }

    #[test]
    fn output_and_schema_that_do_not_fit_are_refused_by_field() {
        let cases: [(serde_json::Value, &str); 6] = [
            (serde_json::json!({"output": "schema"}), "`output`"),
            (
                serde_json::json!({"output": "json", "schema_name": "s", "schema": {"type": "object"}}),
                "`output`",
            ),
            (
                serde_json::json!({"output": "text", "schema_name": "s", "schema": {"type": "object"}}),
                "`output`",
            ),
            (
                serde_json::json!({"schema": {"type": "object"}}),
                "`schema_name`",
            ),
            (serde_json::json!({"schema_name": "s"}), "`schema_name`"),
            (
                serde_json::json!({"output": "json", "schema_name": "s"}),
                "`schema_name`",
            ),
        ];
        for (fields, field) in cases {
            let spec = spec(fields.clone());
            let err = spec.check(1..=50_000).unwrap_err();
            assert!(err.contains(field), "{fields}: {err}");
            assert_eq!(spec.answer_format(), Err(err));
        }
        assert!(
            serde_json::from_value::<JobSpec>(serde_json::json!({
                "model": "openai/gpt-4o-mini", "output": "yaml"
            }))
            .is_err()
        );
    }

    #[test]
    fn text_and_json_output_cannot_be_packed() {
        for output in ["text", "json"] {
            let spec = spec(serde_json::json!({"output": output, "rows_per_request": 4}));
            let err = spec.check(1..=50_000).unwrap_err();
            assert!(
                err.contains("`rows_per_request`")
                    && err.contains(&format!("`output` \"{output}\"")),
                "{err}"
            );
        }
        let packed_schema = spec(serde_json::json!({
            "schema_name": "s", "schema": {"type": "object"}, "rows_per_request": 4
        }));
        assert_eq!(packed_schema.check(1..=50_000), Ok(()));
    }

    #[test]
    fn kept_fields_are_carried_and_other_extra_fields_still_refused() {
        let keep = ["sku".to_string(), "region".to_string()];
        let row = parse_line(2, br#"{"custom_id":"a","text":"x","sku":7}"#, &keep).unwrap();
        assert_eq!(row.request.custom_id, "a");
        assert_eq!(
            serde_json::Value::from(row.kept.unwrap()),
            serde_json::json!({"sku": 7, "region": null})
        );
        let typo = parse_line(2, br#"{"custom_id":"a","text":"x","skus":7}"#, &keep);
        let err = typo.unwrap_err();
        assert!(err.reason.contains("skus"), "{err:?}");
        assert_eq!(err.custom_id, "a");
        // A rejected line keeps what it carried.
        let err = parse_line(2, br#"{"custom_id":"a","sku":1}"#, &keep).unwrap_err();
        assert_eq!(err.kept.unwrap()["sku"], 1);
        assert!(parse_line(2, br#"{"text":"x","sku":7}"#, &[]).is_err());
    }

    #[test]
    fn column_fields_are_checked_by_name() {
        let cases: [(serde_json::Value, &str); 8] = [
            (serde_json::json!({"id_column": ""}), "`id_column`"),
            (serde_json::json!({"text_column": " "}), "`text_column`"),
            (
                serde_json::json!({"text_column": "body", "template": "{title}"}),
                "`text_column` and `template`",
            ),
            (
                serde_json::json!({"template": "Title: {title"}),
                "`template`",
            ),
            (
                serde_json::json!({"template": "no placeholder"}),
                "`template`",
            ),
            (serde_json::json!({"keep": ["sku", "sku"]}), "twice"),
            (serde_json::json!({"keep": ["usage"]}), "`keep`"),
            (serde_json::json!({"keep": [""]}), "`keep`"),
        ];
        for (fields, expected) in cases {
            let err = spec(fields.clone()).check(1..=50_000).unwrap_err();
            assert!(err.contains(expected), "{fields}: {err}");
        }
        let csv = spec(serde_json::json!({
            "id_column": "id", "template": "Title: {title}\n\n{body}", "keep": ["sku"]
        }));
        assert_eq!(csv.check(1..=50_000), Ok(()));
        assert!(csv.parsed_template().unwrap().is_some());
        // Old job records read and write as before: no empty `keep`.
        let plain = spec(serde_json::json!({}));
        assert_eq!(serde_json::to_value(&plain).unwrap().get("keep"), None);
    }
}
