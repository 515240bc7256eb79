//! The job spec (model, schema, parameters, limits) and the input line format.

use serde::{Deserialize, Serialize};

use crate::model::ModelRef;
use crate::request::{GenerationParams, Message, OutputSchema, Request, Role};

/// Everything a job needs besides its requests. Comes from a first header line
/// `{"spec": {…}}` in the uploaded file, or from `pipelines/<name>.json` for uploads
/// under `inbox/<name>/`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// `provider/model`, e.g. `openai/gpt-4o-mini`.
    pub model: ModelRef,
    /// Name of the answer schema (providers want one; `[a-zA-Z0-9_-]{1,64}`).
    pub schema_name: String,
    /// JSON Schema every answer must match.
    pub schema: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Largest accepted input line in bytes.
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: usize,
    /// Requests per provider batch, below the provider's own limit (None: the provider's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_part: Option<usize>,
    /// Attempts per request, the first included: requests that failed for a retryable
    /// reason (rate limit, overload, server error, expired, cancelled) are resubmitted
    /// in a new part until they succeed, fail otherwise or reach this (default 2).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Your batch prices, so that the summary can state the job's cost (prices change
    /// and differ by account, so batchline ships none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prices: Option<TokenPrices>,
}

/// US dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenPrices {
    pub input_per_million: f64,
    pub output_per_million: f64,
}

impl TokenPrices {
    pub fn cost_usd(&self, usage: &crate::results::Usage) -> f64 {
        (usage.input_tokens as f64 * self.input_per_million
            + usage.output_tokens as f64 * self.output_per_million)
            / 1_000_000.0
    }
}

fn default_max_attempts() -> u32 {
    2
}

fn default_max_tokens() -> u32 {
    GenerationParams::default().max_tokens
}

fn default_max_line_bytes() -> usize {
    1024 * 1024
}

impl JobSpec {
    pub fn output_schema(&self) -> OutputSchema {
        OutputSchema {
            name: self.schema_name.clone(),
            schema: self.schema.clone(),
        }
    }

    pub fn params(&self) -> GenerationParams {
        GenerationParams {
            max_tokens: self.max_tokens,
            temperature: self.temperature,
            system_prompt: self.system_prompt.clone(),
        }
    }
}

/// The header line form: `{"spec": {…}}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecHeader {
    pub spec: JobSpec,
}

/// Looks like a header (has a `spec` key) whether or not it parses as one, so that a
/// broken header is reported as such instead of as a bad request line.
pub fn is_header(line: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Probe<'a> {
        #[serde(borrow)]
        spec: Option<&'a serde_json::value::RawValue>,
    }
    serde_json::from_slice::<Probe>(line).is_ok_and(|p| p.spec.is_some())
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

/// Why an input line was not turned into a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineRejection {
    /// The line's `custom_id` where it could be read, else `line-N`.
    pub custom_id: String,
    pub reason: String,
}

/// The id a line without `custom_id` gets: its 1-based line number in the file.
pub fn line_id(line_no: u64) -> String {
    format!("line-{line_no}")
}

/// Longest `custom_id` accepted (OpenAI has no documented limit; ids land in result
/// files and logs, so keep them bounded).
const MAX_CUSTOM_ID_CHARS: usize = 256;

/// Parses one input line into a request. Provider-specific id rules (Anthropic's
/// regex) are enforced later by the batch builder.
pub fn parse_line(line_no: u64, line: &[u8]) -> Result<Request, LineRejection> {
    let reject = |custom_id: String, reason: String| LineRejection { custom_id, reason };
    let text = std::str::from_utf8(line)
        .map_err(|e| reject(line_id(line_no), format!("line is not UTF-8 ({e})")))?;
    let parsed: InputLine = serde_json::from_str(text).map_err(|e| {
        reject(
            recover_id(text).unwrap_or_else(|| line_id(line_no)),
            format!("line is not a valid request: {e}"),
        )
    })?;
    let custom_id = match parsed.custom_id {
        Some(id) => {
            check_custom_id(&id).map_err(|reason| reject(line_id(line_no), reason))?;
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
fn recover_id(text: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct IdOnly {
        custom_id: String,
    }
    let id = serde_json::from_str::<IdOnly>(text).ok()?.custom_id;
    check_custom_id(&id).ok().map(|_| id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_conversation_lines() {
        let r = parse_line(3, br#"{"text":"hello"}"#).unwrap();
        assert_eq!(r.custom_id, "line-3");
        assert_eq!(r.messages, vec![Message::new(Role::User, "hello")]);
        let r = parse_line(
            4,
            br#"{"custom_id":"a1","messages":[{"role":"user","content":"x"}]}"#,
        )
        .unwrap();
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
            let err = parse_line(1, line).unwrap_err();
            assert_eq!(err.custom_id, id, "{err:?}");
            assert!(err.reason.contains(reason), "{err:?}");
        }
    }

    #[test]
    fn headers_are_recognised_even_when_broken() {
        assert!(is_header(br#"{"spec":{"model":"x"}}"#));
        assert!(!is_header(br#"{"text":"spec"}"#));
        let header: SpecHeader = serde_json::from_slice(
            br#"{"spec":{"model":"openai/gpt-4o-mini","schema_name":"s","schema":{"type":"object"}}}"#,
        )
        .unwrap();
        assert_eq!(header.spec.max_tokens, 1024);
    }
}
