//! What the Vertex AI and Gemini API emulations share: Google's error body and status
//! codes, `generateContent` answers, label rules, list pages and timestamp formats.

use std::collections::HashMap;
use std::time::Instant;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::macros::format_description;

use crate::cache::CacheState;
use crate::common::{Shared, new_id};
use crate::model::{self, Failure, Finish};

/// Canonical Google API error codes (`google.rpc.Code`) the emulator answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Cancelled,
    InvalidArgument,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Internal,
    Unauthenticated,
}

impl Code {
    pub fn name(self) -> &'static str {
        match self {
            Self::Cancelled => "CANCELLED",
            Self::InvalidArgument => "INVALID_ARGUMENT",
            Self::NotFound => "NOT_FOUND",
            Self::AlreadyExists => "ALREADY_EXISTS",
            Self::PermissionDenied => "PERMISSION_DENIED",
            Self::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Self::FailedPrecondition => "FAILED_PRECONDITION",
            Self::Internal => "INTERNAL",
            Self::Unauthenticated => "UNAUTHENTICATED",
        }
    }

    /// The gRPC number, used in `google.rpc.Status` objects (job and operation errors,
    /// failed Gemini results lines).
    pub fn number(self) -> u16 {
        match self {
            Self::Cancelled => 1,
            Self::InvalidArgument => 3,
            Self::NotFound => 5,
            Self::AlreadyExists => 6,
            Self::PermissionDenied => 7,
            Self::ResourceExhausted => 8,
            Self::FailedPrecondition => 9,
            Self::Internal => 13,
            Self::Unauthenticated => 16,
        }
    }

    pub fn http(self) -> StatusCode {
        match self {
            // 499 "Client Closed Request" is what Google maps CANCELLED to.
            Self::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            Self::InvalidArgument | Self::FailedPrecondition => StatusCode::BAD_REQUEST,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::AlreadyExists => StatusCode::CONFLICT,
            Self::PermissionDenied => StatusCode::FORBIDDEN,
            Self::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
        }
    }
}

/// A Google API error: an HTTP answer `{"error":{"code","message","status"}}`, a failed
/// batch line, or a job's `google.rpc.Status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoogleError {
    pub code: Code,
    pub message: String,
}

impl GoogleError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, message)
    }

    pub fn failed_precondition(message: impl Into<String>) -> Self {
        Self::new(Code::FailedPrecondition, message)
    }

    /// The inner object of an HTTP error body: `{"code":400,"message","status"}`.
    pub fn http_error(&self) -> Value {
        json!({
            "code": self.code.http().as_u16(),
            "message": self.message,
            "status": self.code.name(),
        })
    }

    /// `google.rpc.Status`: `{"code":3,"message"}`.
    pub fn rpc_status(&self) -> Value {
        json!({"code": self.code.number(), "message": self.message})
    }

    /// How a failed line reads in Vertex batch output, after Google's own example:
    /// `Bad Request: {"error": {"code": 400, "message": "…", "status": "INVALID_ARGUMENT"}}`.
    pub fn vertex_line_status(&self) -> String {
        let http = self.code.http();
        format!(
            "{}: {{\"error\": {{\"code\": {}, \"message\": {}, \"status\": \"{}\"}}}}",
            http.canonical_reason().unwrap_or("Error"),
            http.as_u16(),
            Value::String(self.message.clone()),
            self.code.name(),
        )
    }
}

impl IntoResponse for GoogleError {
    fn into_response(self) -> Response {
        (self.code.http(), Json(json!({"error": self.http_error()}))).into_response()
    }
}

/// Parses a JSON request body; an empty body is `{}` (as for `:cancel`).
pub fn json_body(body: &[u8]) -> Result<Value, GoogleError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| GoogleError::invalid(format!("Invalid JSON payload received. {e}")))?;
    if value.is_object() {
        Ok(value)
    } else {
        Err(GoogleError::invalid(
            "Invalid JSON payload received. Expected an object.",
        ))
    }
}

/// A proto JSON field by its lowerCamel name or its snake_case name: Google accepts both.
pub fn field<'a>(object: &'a Value, camel: &str) -> Option<&'a Value> {
    object
        .get(camel)
        .or_else(|| object.get(snake_case(camel).as_str()))
}

fn snake_case(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 4);
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Which Google API a request came through: they differ in what a request may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// Vertex AI: `contents[].role` is required, `labels` are allowed.
    Vertex,
    /// Gemini Developer API: `role` defaults to user, `labels` are unknown.
    Gemini,
}

const JSON_MIME: &str = "application/json";
const ALLOWED_MIME_TYPES: [&str; 5] = [
    "text/plain",
    JSON_MIME,
    "application/xml",
    "application/yaml",
    "text/x.enum",
];

/// Checks a `GenerateContentRequest` the way the API does before running it.
pub fn validate_request(request: &Value, api: Api) -> Result<(), GoogleError> {
    if !request.is_object() {
        return Err(GoogleError::invalid(
            "Invalid JSON payload received. `request` must be a GenerateContentRequest object.",
        ));
    }
    let contents = field(request, "contents")
        .and_then(Value::as_array)
        .filter(|contents| !contents.is_empty())
        .ok_or_else(|| {
            GoogleError::invalid("* GenerateContentRequest.contents: contents is not specified")
        })?;
    for (i, content) in contents.iter().enumerate() {
        check_role(content, api)?;
        check_parts(content, &format!("contents[{i}]"))?;
    }
    if let Some(system) = field(request, "systemInstruction") {
        check_parts(system, "system_instruction")?;
    }
    if let Some(config) = field(request, "generationConfig") {
        check_generation_config(config)?;
    }
    match (api, field(request, "labels")) {
        (_, None) => Ok(()),
        (Api::Gemini, Some(_)) => Err(GoogleError::invalid(
            "Invalid JSON payload received. Unknown name \"labels\" at 'request': Cannot find field.",
        )),
        (Api::Vertex, Some(labels)) => validate_labels(labels),
    }
}

fn check_role(content: &Value, api: Api) -> Result<(), GoogleError> {
    match (field(content, "role").and_then(Value::as_str), api) {
        (Some("user" | "model"), _) | (None, Api::Gemini) => Ok(()),
        _ => Err(GoogleError::invalid(
            "Please use a valid role: user, model.",
        )),
    }
}

fn check_parts(content: &Value, at: &str) -> Result<(), GoogleError> {
    let parts = field(content, "parts")
        .and_then(Value::as_array)
        .filter(|parts| !parts.is_empty())
        .ok_or_else(|| {
            GoogleError::invalid(format!(
                "* GenerateContentRequest.{at}.parts: contents.parts must not be empty."
            ))
        })?;
    for (j, part) in parts.iter().enumerate() {
        if part.as_object().is_none_or(Map::is_empty) {
            return Err(GoogleError::invalid(format!(
                "* GenerateContentRequest.{at}.parts[{j}].data: required oneof field 'data' must have one initialized field"
            )));
        }
    }
    Ok(())
}

fn check_generation_config(config: &Value) -> Result<(), GoogleError> {
    if !config.is_object() {
        return Err(GoogleError::invalid(
            "Invalid JSON payload received. generationConfig must be an object.",
        ));
    }
    let mime = field(config, "responseMimeType").and_then(Value::as_str);
    if let Some(mime) = mime
        && !ALLOWED_MIME_TYPES.contains(&mime)
    {
        return Err(GoogleError::invalid(
            "* GenerateContentRequest.generation_config.response_mime_type: allowed mimetypes are `text/plain`, `application/json`, `application/xml`, `application/yaml` and `text/x.enum`.",
        ));
    }
    let schema = field(config, "responseSchema");
    let json_schema = field(config, "responseJsonSchema");
    if schema.is_some() && json_schema.is_some() {
        return Err(GoogleError::invalid(
            "* GenerateContentRequest.generation_config: response_schema and response_json_schema cannot both be set.",
        ));
    }
    match schema.or(json_schema) {
        Some(schema) if !schema.is_object() => Err(GoogleError::invalid(
            "* GenerateContentRequest.generation_config.response_schema: must be an object.",
        )),
        Some(_) if mime != Some(JSON_MIME) && mime != Some("text/x.enum") => {
            Err(GoogleError::invalid(
                "* GenerateContentRequest.generation_config.response_mime_type: must be application/json when a response schema is set.",
            ))
        }
        _ => Ok(()),
    }
}

const MAX_LABELS: usize = 64;
const MAX_LABEL_LENGTH: usize = 63;

/// Google Cloud label rules: at most 64 pairs; keys start with a lowercase letter; keys
/// and values hold at most 63 lowercase letters, digits, `_` or `-`.
pub fn validate_labels(labels: &Value) -> Result<(), GoogleError> {
    let labels = labels
        .as_object()
        .ok_or_else(|| GoogleError::invalid("labels must be a map of strings."))?;
    if labels.len() > MAX_LABELS {
        return Err(GoogleError::invalid(format!(
            "At most {MAX_LABELS} labels are allowed, got {}.",
            labels.len()
        )));
    }
    for (key, value) in labels {
        let starts_lowercase = key.chars().next().is_some_and(|c| c.is_ascii_lowercase());
        if !starts_lowercase || !is_label_text(key) {
            return Err(GoogleError::invalid(format!(
                "Label key {key:?} is invalid: keys start with a lowercase letter and hold at most 63 lowercase letters, digits, '_' or '-'."
            )));
        }
        if !value.as_str().is_some_and(is_label_text) {
            return Err(GoogleError::invalid(format!(
                "Label value {value} for key {key:?} is invalid: values hold at most 63 lowercase letters, digits, '_' or '-'."
            )));
        }
    }
    Ok(())
}

fn is_label_text(text: &str) -> bool {
    text.len() <= MAX_LABEL_LENGTH
        && text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// Runs one `GenerateContentRequest` with the prompt cache `cache`: its
/// `GenerateContentResponse`, or the error that the request's defects, its length or its
/// fault marker ask for.
pub fn generate(
    request: &Value,
    api: Api,
    model: &str,
    cache: &mut CacheState,
) -> Result<Value, GoogleError> {
    validate_request(request, api)?;
    let which = match api {
        Api::Vertex => model::Api::Vertex,
        Api::Gemini => model::Api::Gemini,
    };
    let reply = model::run_request(which, model, request, cache);
    let output = match reply.outcome {
        Err(Failure::ContextLength { tokens, limit }) => {
            return Err(GoogleError::invalid(format!(
                "The input token count ({tokens}) exceeds the maximum number of tokens allowed ({limit})."
            )));
        }
        Err(Failure::RateLimit) => {
            return Err(GoogleError::new(
                Code::ResourceExhausted,
                "Resource exhausted. Please try again later.",
            ));
        }
        Err(Failure::Server) => {
            return Err(GoogleError::new(
                Code::Internal,
                "Internal error encountered.",
            ));
        }
        Ok(output) => output,
    };
    let candidate = match output.finish {
        Finish::Refusal => json!({
            "content": {"role": "model"},
            "finishReason": "SAFETY",
            "index": 0,
            "safetyRatings": [{
                "category": "HARM_CATEGORY_DANGEROUS_CONTENT",
                "probability": "HIGH",
                "blocked": true,
            }],
        }),
        finish => json!({
            "content": {"role": "model", "parts": [{"text": output.text}]},
            "finishReason": if finish == Finish::Length { "MAX_TOKENS" } else { "STOP" },
            "index": 0,
        }),
    };
    let mut usage = reply.usage;
    if output.finish == Finish::Refusal {
        // A blocked candidate has no parts, and Google reports no candidate tokens.
        usage.output = 0;
    }
    Ok(json!({
        "candidates": [candidate],
        "usageMetadata": usage.to_provider_json(which),
        "modelVersion": model,
        "responseId": new_id(""),
    }))
}

/// The schema answers must follow: `responseJsonSchema` as is, or `responseSchema`
/// (OpenAPI subset, upper-case type names) turned into JSON Schema.
pub fn response_schema(config: &Value) -> Option<Value> {
    field(config, "responseJsonSchema")
        .cloned()
        .or_else(|| field(config, "responseSchema").map(lowercase_types))
}

fn lowercase_types(schema: &Value) -> Value {
    match schema {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, value)| {
                    let value = match (key.as_str(), value) {
                        ("type", Value::String(name)) => Value::String(name.to_ascii_lowercase()),
                        _ => lowercase_types(value),
                    };
                    (key.clone(), value)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(lowercase_types).collect()),
        other => other.clone(),
    }
}

/// One page of a list served newest first. Items carry a creation sequence number; the
/// page token is the sequence number of the last item already served.
pub fn page<T>(
    newest_first: Vec<(u64, T)>,
    query: &HashMap<String, String>,
    default_size: usize,
    max_size: usize,
) -> Result<(Vec<T>, Option<String>), GoogleError> {
    let size = match query.get("pageSize").map(|s| s.parse::<i64>()) {
        None | Some(Ok(0)) => default_size,
        Some(Ok(n)) if n > 0 => (n as usize).min(max_size),
        _ => {
            return Err(GoogleError::invalid(
                "Invalid page size: must be a positive integer.",
            ));
        }
    };
    let after = match query.get("pageToken").filter(|t| !t.is_empty()) {
        None => None,
        Some(token) => Some(
            token
                .parse::<u64>()
                .map_err(|_| GoogleError::invalid("Invalid page token."))?,
        ),
    };
    let mut rest = newest_first
        .into_iter()
        .filter(|(seq, _)| after.is_none_or(|after| *seq < after))
        .peekable();
    let mut items = Vec::with_capacity(size);
    let mut last = None;
    while items.len() < size {
        let Some((seq, item)) = rest.next() else {
            break;
        };
        last = Some(seq);
        items.push(item);
    }
    let next = rest.peek().and(last).map(|seq| seq.to_string());
    Ok((items, next))
}

/// Lifecycle steps of a batch known under several names (short id, resource name):
/// `/_emulator/advance` may force it under either.
pub fn steps(shared: &Shared, names: &[&str], created: Instant) -> u32 {
    names
        .iter()
        .map(|name| shared.steps_since(name, created))
        .max()
        .unwrap_or(0)
}

/// RFC 3339 in UTC with `Z`, as Google APIs write timestamps.
pub fn timestamp(t: OffsetDateTime) -> String {
    crate::common::rfc3339(t)
}

/// `processed_time` in Vertex output lines: `2025-07-09T19:57:43.558+00:00`.
pub fn processed_time(t: OffsetDateTime) -> String {
    t.format(format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]+00:00"
    ))
    .expect("formatting a UTC time with a fixed description")
}

/// The timestamp in a Vertex output directory name: `2026-09-02T20:06:30.166279Z`.
pub fn directory_timestamp(t: OffsetDateTime) -> String {
    t.format(format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    ))
    .expect("formatting a UTC time with a fixed description")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache() -> CacheState {
        CacheState::new(crate::cache::CacheConfig::default())
    }

    fn request(role: &str, config: Value) -> Value {
        json!({
            "contents": [{"role": role, "parts": [{"text": "extract the invoice"}]}],
            "generationConfig": config,
        })
    }

    #[test]
    fn answers_follow_either_kind_of_schema() {
        let json_schema = json!({
            "type": "object",
            "properties": {"total": {"type": "integer"}, "vendor": {"type": "string"}},
            "required": ["total", "vendor"]
        });
        let openapi_schema = json!({
            "type": "OBJECT",
            "properties": {"total": {"type": "INTEGER"}, "vendor": {"type": "STRING"}}
        });
        for config in [
            json!({"responseMimeType": "application/json", "responseJsonSchema": json_schema}),
            json!({"response_mime_type": "application/json", "response_schema": openapi_schema}),
        ] {
            let answer = generate(
                &request("user", config),
                Api::Vertex,
                "gemini-2.5-flash",
                &mut cache(),
            )
            .expect("a valid request gets an answer");
            let candidate = &answer["candidates"][0];
            assert_eq!(candidate["finishReason"], "STOP");
            let text = candidate["content"]["parts"][0]["text"].as_str().unwrap();
            let parsed: Value = serde_json::from_str(text).unwrap();
            assert!(parsed["total"].is_i64(), "{parsed}");
            assert!(parsed["vendor"].is_string(), "{parsed}");
            let usage = &answer["usageMetadata"];
            assert_eq!(
                usage["totalTokenCount"].as_u64().unwrap(),
                usage["promptTokenCount"].as_u64().unwrap()
                    + usage["candidatesTokenCount"].as_u64().unwrap()
            );
        }
    }

    #[test]
    fn invalid_requests_are_rejected_like_the_api() {
        let both = json!({
            "responseMimeType": "application/json",
            "responseSchema": {"type": "OBJECT"},
            "responseJsonSchema": {"type": "object"}
        });
        let cases = [
            (request("user", both), Api::Gemini),
            (request("assistant", json!({})), Api::Gemini),
            (
                request("user", json!({"responseJsonSchema": {"type": "object"}})),
                Api::Gemini,
            ),
            (json!({"contents": []}), Api::Gemini),
            (
                json!({"contents": [{"parts": [{"text": "no role"}]}]}),
                Api::Vertex,
            ),
            (
                json!({"contents": [{"role": "user", "parts": []}]}),
                Api::Vertex,
            ),
            (
                json!({"contents": [{"role": "user", "parts": [{"text": "x"}]}], "labels": {"Id": "1"}}),
                Api::Vertex,
            ),
            (
                json!({"contents": [{"role": "user", "parts": [{"text": "x"}]}], "labels": {"id": "1"}}),
                Api::Gemini,
            ),
        ];
        for (request, api) in cases {
            let error = generate(&request, api, "gemini-2.5-flash", &mut cache()).unwrap_err();
            assert_eq!(error.code, Code::InvalidArgument, "{request}");
        }
        let role_error = generate(
            &request("assistant", json!({})),
            Api::Vertex,
            "m",
            &mut cache(),
        )
        .unwrap_err();
        assert_eq!(
            role_error.vertex_line_status(),
            r#"Bad Request: {"error": {"code": 400, "message": "Please use a valid role: user, model.", "status": "INVALID_ARGUMENT"}}"#
        );
    }

    #[test]
    fn fault_markers_shape_the_answer() {
        let config = json!({
            "responseMimeType": "application/json",
            "responseJsonSchema": {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "string"}}}
        });
        let with_marker = |kind: &str| {
            json!({
                "contents": [{"role": "user", "parts": [{"text": format!("text [[fault:{kind}]]")}]}],
                "generationConfig": config,
            })
        };
        let run = |kind: &str| {
            generate(
                &with_marker(kind),
                Api::Vertex,
                "gemini-2.5-flash",
                &mut cache(),
            )
        };
        assert_eq!(
            run("provider_error").unwrap_err().code,
            Code::InvalidArgument
        );
        assert_eq!(run("rate_limit").unwrap_err().code, Code::ResourceExhausted);
        assert_eq!(run("server_error").unwrap_err().code, Code::Internal);

        let refusal = run("refusal").unwrap();
        assert_eq!(refusal["candidates"][0]["finishReason"], "SAFETY");
        assert!(refusal["candidates"][0]["content"].get("parts").is_none());

        let text_of = |answer: &Value| {
            answer["candidates"][0]["content"]["parts"][0]["text"]
                .as_str()
                .unwrap()
                .to_string()
        };
        let truncated = run("truncate").unwrap();
        assert_eq!(truncated["candidates"][0]["finishReason"], "MAX_TOKENS");
        assert!(serde_json::from_str::<Value>(&text_of(&truncated)).is_err());
        assert!(serde_json::from_str::<Value>(&text_of(&run("non_json").unwrap())).is_err());
        let broken: Value = serde_json::from_str(&text_of(&run("schema_break").unwrap())).unwrap();
        assert!(
            broken.get("a").is_none() && broken.get("b").is_none(),
            "{broken}"
        );
    }

    #[test]
    fn pages_walk_the_whole_list_once() {
        let items: Vec<(u64, u64)> = (1..=5).rev().map(|n| (n, n)).collect();
        let mut query = HashMap::from([("pageSize".to_string(), "2".to_string())]);
        let mut seen = Vec::new();
        loop {
            let (page, next) = page(items.clone(), &query, 10, 100).unwrap();
            seen.extend(page);
            match next {
                Some(token) => query.insert("pageToken".to_string(), token),
                None => break,
            };
        }
        assert_eq!(seen, vec![5, 4, 3, 2, 1]);
        query.insert("pageToken".to_string(), "not-a-token".to_string());
        assert!(page(items, &query, 10, 100).is_err());
    }

    #[test]
    fn timestamps_have_the_documented_shapes() {
        let t = time::macros::datetime!(2025-07-09 19:57:43.558123 UTC);
        assert_eq!(processed_time(t), "2025-07-09T19:57:43.558+00:00");
        assert_eq!(directory_timestamp(t), "2025-07-09T19:57:43.558123Z");
    }
}
