//! Anthropic Message Batches: create, retrieve, list, cancel, delete and results.
//!
//! Every request is checked when the batch is created; a bad one fails the whole call
//! with a 400. Results are planned at creation and written once the batch ends.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use crate::common::{
    BatchFate, RequestFault, Shared, answer_for, download_response, first_half, is_identifier,
    lock, messages_text, new_id, ran_count, rfc3339, schema_breaking_answer, tokens,
};

const MAX_REQUESTS: usize = 100_000;
const MAX_BODY_BYTES: usize = 256 * 1024 * 1024;
const DEFAULT_PAGE: usize = 20;
const MAX_PAGE: usize = 1000;
/// A batch ends this many lifecycle steps after creation (or one step after a cancel).
const STEPS_TO_END: u32 = 2;

pub fn router(shared: Arc<Shared>) -> Router {
    routes(Arc::new(Anthropic {
        shared,
        batches: Mutex::new(Vec::new()),
    }))
}

fn routes(state: Arc<Anthropic>) -> Router {
    Router::new()
        .route(
            "/v1/messages/batches",
            post(create_batch)
                .get(list_batches)
                // The 256 MB limit is checked by the handler, with the API's own 413 body.
                .layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/v1/messages/batches/{id}",
            get(get_batch).delete(delete_batch),
        )
        .route("/v1/messages/batches/{id}/cancel", post(cancel_batch))
        .route("/v1/messages/batches/{id}/results", get(batch_results))
        .route_layer(middleware::from_fn_with_state(state.clone(), check_headers))
        .with_state(state)
}

struct Anthropic {
    shared: Arc<Shared>,
    /// In creation order; listed newest first.
    batches: Mutex<Vec<MessageBatch>>,
}

/// An error answered with `{"type":"error","error":{"type","message"}}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl ApiError {
    fn invalid(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            message: message.into(),
        }
    }

    fn not_found(id: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            kind: "not_found_error",
            message: format!("No message batch found with id '{id}'."),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"type": "error", "error": {"type": self.kind, "message": self.message}});
        (self.status, axum::Json(body)).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// The configured key must come in `x-api-key` (or as `Authorization: Bearer`, which the
/// current official SDK sends), and `anthropic-version` must be present.
async fn check_headers(
    State(state): State<Arc<Anthropic>>,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    let key = state.shared.config.api_key.as_bytes();
    let bearer = format!("Bearer {}", state.shared.config.api_key);
    let key_ok = headers
        .get("x-api-key")
        .is_some_and(|sent| sent.as_bytes() == key)
        || headers
            .get(header::AUTHORIZATION)
            .is_some_and(|sent| sent.as_bytes() == bearer.as_bytes());
    if !key_ok {
        return ApiError {
            status: StatusCode::UNAUTHORIZED,
            kind: "authentication_error",
            message: "invalid x-api-key".to_string(),
        }
        .into_response();
    }
    if !headers.contains_key("anthropic-version") {
        return ApiError::invalid("anthropic-version: header is required").into_response();
    }
    next.run(request).await
}

/// How a request ended, as counted in `request_counts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResultKind {
    Succeeded,
    Errored,
    Canceled,
    Expired,
}

impl ResultKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Errored => "errored",
            Self::Canceled => "canceled",
            Self::Expired => "expired",
        }
    }
}

/// The `result` a request gets when it runs.
#[derive(Debug)]
struct PlannedResult {
    custom_id: String,
    kind: ResultKind,
    result: Value,
}

struct Cancel {
    requested: Instant,
    initiated_at: String,
    /// Requests that ran before the cancel took effect.
    ran: usize,
}

struct Ended {
    at: String,
    counts: HashMap<&'static str, usize>,
    results: Bytes,
}

struct MessageBatch {
    id: String,
    created: Instant,
    created_at: OffsetDateTime,
    fate: BatchFate,
    partial: f64,
    planned: Vec<PlannedResult>,
    cancel: Option<Cancel>,
    ended: Option<Ended>,
}

impl MessageBatch {
    /// Ends the batch once its time has come.
    fn refresh(&mut self, shared: &Shared) {
        if self.ended.is_some() {
            return;
        }
        let total = self.planned.len();
        if let Some(cancel) = &self.cancel {
            if shared.steps_since(&self.id, cancel.requested) >= 1 {
                let ran = cancel.ran;
                self.end(ran, ResultKind::Canceled);
            }
            return;
        }
        if shared.steps_since(&self.id, self.created) >= STEPS_TO_END {
            match self.fate {
                BatchFate::Expire => self.end(ran_count(total, self.partial), ResultKind::Expired),
                _ => self.end(total, ResultKind::Expired),
            }
        }
    }

    /// Writes the results: the first `ran` requests as planned, the rest as `not_run`.
    fn end(&mut self, ran: usize, not_run: ResultKind) {
        let mut counts = HashMap::new();
        let mut results = Vec::new();
        for (index, planned) in self.planned.iter().enumerate() {
            let (kind, result) = if index < ran {
                (planned.kind, planned.result.clone())
            } else {
                (not_run, json!({"type": not_run.as_str()}))
            };
            *counts.entry(kind.as_str()).or_insert(0) += 1;
            let line = json!({"custom_id": planned.custom_id, "result": result});
            // Serializing a `Value` cannot fail.
            serde_json::to_writer(&mut results, &line).expect("serializing a JSON value");
            results.push(b'\n');
        }
        self.ended = Some(Ended {
            at: rfc3339(OffsetDateTime::now_utc()),
            counts,
            results: Bytes::from(results),
        });
    }

    fn processing_status(&self) -> &'static str {
        match (&self.ended, &self.cancel) {
            (Some(_), _) => "ended",
            (None, Some(_)) => "canceling",
            (None, None) => "in_progress",
        }
    }

    fn to_json(&self, base_url: &str) -> Value {
        let count = |kind: ResultKind| {
            self.ended
                .as_ref()
                .and_then(|ended| ended.counts.get(kind.as_str()).copied())
                .unwrap_or(0)
        };
        let processing = if self.ended.is_some() {
            0
        } else {
            self.planned.len()
        };
        json!({
            "id": self.id,
            "type": "message_batch",
            "processing_status": self.processing_status(),
            "request_counts": {
                "processing": processing,
                "succeeded": count(ResultKind::Succeeded),
                "errored": count(ResultKind::Errored),
                "canceled": count(ResultKind::Canceled),
                "expired": count(ResultKind::Expired),
            },
            "ended_at": self.ended.as_ref().map(|ended| ended.at.clone()),
            "created_at": rfc3339(self.created_at),
            "expires_at": rfc3339(self.created_at + time::Duration::days(1)),
            "archived_at": null,
            "cancel_initiated_at": self.cancel.as_ref().map(|c| c.initiated_at.clone()),
            "results_url": self.ended.as_ref().map(|_| results_url(base_url, &self.id)),
        })
    }
}

fn results_url(base_url: &str, id: &str) -> String {
    format!("{base_url}/v1/messages/batches/{id}/results")
}

async fn create_batch(
    State(state): State<Arc<Anthropic>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let too_large = || ApiError {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        kind: "request_too_large",
        message: format!("Request exceeds the maximum allowed number of bytes ({MAX_BODY_BYTES})."),
    };
    // A declared length over the limit is refused before reading any of the body.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|length| length > MAX_BODY_BYTES) {
        return Err(too_large());
    }
    let body = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| too_large())?;
    let (fate, partial) = state.shared.fate_for_new_batch();
    // Checking up to 256 MB of requests is CPU work: keep it off the async workers.
    let planned = tokio::task::spawn_blocking(move || plan_batch(&body, fate))
        .await
        .map_err(|e| ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "api_error",
            message: format!("validation task failed: {e}"),
        })??;
    let mut batch = MessageBatch {
        id: new_id("msgbatch_"),
        created: Instant::now(),
        created_at: OffsetDateTime::now_utc(),
        fate,
        partial,
        planned,
        cancel: None,
        ended: None,
    };
    batch.refresh(&state.shared);
    let answer = batch.to_json(&state.shared.base_url);
    lock(&state.batches).push(batch);
    Ok(axum::Json(answer).into_response())
}

/// Finds a batch, brings it up to date and answers with `f` of it.
fn with_batch<T>(
    state: &Anthropic,
    id: &str,
    f: impl FnOnce(&mut MessageBatch) -> ApiResult<T>,
) -> ApiResult<T> {
    let mut batches = lock(&state.batches);
    let batch = batches
        .iter_mut()
        .find(|b| b.id == id)
        .ok_or_else(|| ApiError::not_found(id))?;
    batch.refresh(&state.shared);
    f(batch)
}

async fn get_batch(
    State(state): State<Arc<Anthropic>>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    with_batch(&state, &id, |batch| {
        Ok(axum::Json(batch.to_json(&state.shared.base_url)))
    })
}

async fn cancel_batch(
    State(state): State<Arc<Anthropic>>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    let steps = |batch: &MessageBatch| state.shared.steps_since(&batch.id, batch.created);
    with_batch(&state, &id, |batch| {
        if batch.ended.is_some() {
            return Err(ApiError::invalid(format!(
                "Message batch {id} has already ended and cannot be canceled."
            )));
        }
        if batch.cancel.is_none() {
            // Half of the requests have run once the batch is past its first step.
            let ran = if steps(batch) == 0 {
                0
            } else {
                batch.planned.len() / 2
            };
            batch.cancel = Some(Cancel {
                requested: Instant::now(),
                initiated_at: rfc3339(OffsetDateTime::now_utc()),
                ran,
            });
        }
        Ok(axum::Json(batch.to_json(&state.shared.base_url)))
    })
}

async fn delete_batch(
    State(state): State<Arc<Anthropic>>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    let mut batches = lock(&state.batches);
    let index = batches
        .iter()
        .position(|b| b.id == id)
        .ok_or_else(|| ApiError::not_found(&id))?;
    batches[index].refresh(&state.shared);
    if batches[index].ended.is_none() {
        return Err(ApiError::invalid(format!(
            "Message batch {id} cannot be deleted while it is still processing; cancel it first."
        )));
    }
    batches.remove(index);
    Ok(axum::Json(
        json!({"id": id, "type": "message_batch_deleted"}),
    ))
}

async fn batch_results(
    State(state): State<Arc<Anthropic>>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let results = with_batch(&state, &id, |batch| {
        batch
            .ended
            .as_ref()
            .map(|ended| ended.results.clone())
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "Message batch {id} has not finished processing; results are not available yet."
                ))
            })
    })?;
    Ok(download_response(
        results,
        "application/binary",
        state.shared.drop_results_after(),
    ))
}

async fn list_batches(
    State(state): State<Arc<Anthropic>>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<axum::Json<Value>> {
    let limit = match query.get("limit") {
        None => DEFAULT_PAGE,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| {
                ApiError::invalid(format!("limit: Input should be between 1 and {MAX_PAGE}"))
            })?,
    };
    let mut batches = lock(&state.batches);
    let mut newest_first: Vec<&mut MessageBatch> = batches.iter_mut().rev().collect();
    let position = |id: &String, list: &[&mut MessageBatch]| {
        list.iter()
            .position(|b| &b.id == id)
            .ok_or_else(|| ApiError::not_found(id))
    };
    // `after_id` pages towards older batches, `before_id` towards newer ones.
    let (start, end) = match (query.get("after_id"), query.get("before_id")) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "Only one of after_id and before_id may be given.",
            ));
        }
        (Some(after), None) => {
            let start = position(after, &newest_first)? + 1;
            (start, (start + limit).min(newest_first.len()))
        }
        (None, Some(before)) => {
            let end = position(before, &newest_first)?;
            (end.saturating_sub(limit), end)
        }
        (None, None) => (0, limit.min(newest_first.len())),
    };
    let has_more = if query.contains_key("before_id") {
        start > 0
    } else {
        end < newest_first.len()
    };
    let data: Vec<Value> = newest_first[start..end]
        .iter_mut()
        .map(|batch| {
            batch.refresh(&state.shared);
            batch.to_json(&state.shared.base_url)
        })
        .collect();
    Ok(axum::Json(json!({
        "data": data,
        "has_more": has_more,
        "first_id": data.first().map(|b| b["id"].clone()),
        "last_id": data.last().map(|b| b["id"].clone()),
    })))
}

// ---------------------------------------------------------------------------------------
// Request checks and planned results

/// Checks every request of a create call and plans its result.
fn plan_batch(body: &[u8], fate: BatchFate) -> ApiResult<Vec<PlannedResult>> {
    let body: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("The request body is not valid JSON: {e}")))?;
    let requests = body
        .get("requests")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::invalid("requests: Field required"))?;
    if requests.is_empty() || requests.len() > MAX_REQUESTS {
        return Err(ApiError::invalid(format!(
            "requests: a batch must contain between 1 and {MAX_REQUESTS} requests, got {}.",
            requests.len()
        )));
    }
    let mut seen = HashSet::new();
    let mut checked = Vec::with_capacity(requests.len());
    for (index, request) in requests.iter().enumerate() {
        let (custom_id, params) = check_request(request, index)?;
        if !seen.insert(custom_id) {
            return Err(ApiError::invalid(format!(
                "requests.{index}.custom_id: duplicate custom_id '{custom_id}'; every custom_id must be unique within a batch."
            )));
        }
        checked.push((custom_id, params));
    }
    Ok(checked
        .into_iter()
        .map(|(custom_id, params)| plan_result(custom_id, params, fate))
        .collect())
}

/// The custom id and params of a request that passes the create-call checks.
fn check_request(request: &Value, index: usize) -> ApiResult<(&str, &Map<String, Value>)> {
    let invalid = |field: &str, problem: &str| {
        Err(ApiError::invalid(format!(
            "requests.{index}.{field}: {problem}"
        )))
    };
    let Some(custom_id) = request.get("custom_id").and_then(Value::as_str) else {
        return invalid("custom_id", "Field required");
    };
    if !is_identifier(custom_id) {
        return invalid(
            "custom_id",
            "String should match pattern '^[a-zA-Z0-9_-]{1,64}$'",
        );
    }
    let Some(params) = request.get("params").and_then(Value::as_object) else {
        return invalid("params", "Field required");
    };
    let model = params.get("model").and_then(Value::as_str).unwrap_or("");
    if model.is_empty() {
        return invalid("params.model", "Field required");
    }
    let max_tokens = params.get("max_tokens").and_then(Value::as_u64);
    if max_tokens.unwrap_or(0) == 0 {
        return invalid(
            "params.max_tokens",
            "Field required (an integer of at least 1)",
        );
    }
    let messages = match params.get("messages").and_then(Value::as_array) {
        Some(messages) if !messages.is_empty() => messages,
        _ => return invalid("params.messages", "at least one message is required"),
    };
    for message in messages {
        match message.get("role").and_then(Value::as_str) {
            Some("user" | "assistant") => {}
            Some("system") => {
                return invalid(
                    "params.messages",
                    "Unexpected role \"system\". The Messages API accepts a top-level `system` parameter, not \"system\" as an input message role.",
                );
            }
            other => {
                return invalid(
                    "params.messages",
                    &format!(
                        "Unexpected role {}; messages must be \"user\" or \"assistant\".",
                        other.unwrap_or("(missing)")
                    ),
                );
            }
        }
    }
    if let Some(name) = chosen_tool_name(params)
        && tool_named(params, name).is_none()
    {
        return invalid(
            "params.tool_choice",
            &format!("tool_choice names tool '{name}', which is not in tools."),
        );
    }
    Ok((custom_id, params))
}

/// The tool a `{"type":"tool","name"}` choice forces.
fn chosen_tool_name(params: &Map<String, Value>) -> Option<&str> {
    let choice = params.get("tool_choice")?;
    if choice.get("type").and_then(Value::as_str) != Some("tool") {
        return None;
    }
    Some(choice.get("name").and_then(Value::as_str).unwrap_or(""))
}

fn tool_named<'p>(params: &'p Map<String, Value>, name: &str) -> Option<&'p Value> {
    params
        .get("tools")
        .and_then(Value::as_array)?
        .iter()
        .find(|tool| tool.get("name").and_then(Value::as_str) == Some(name))
}

/// The tool the model answers with: the forced one, else the first.
fn answering_tool(params: &Map<String, Value>) -> Option<&Value> {
    match chosen_tool_name(params) {
        Some(name) => tool_named(params, name),
        None => params.get("tools").and_then(Value::as_array)?.first(),
    }
}

fn errored(kind: &str, message: &str) -> (ResultKind, Value) {
    (
        ResultKind::Errored,
        json!({"type": "errored", "error": {"type": "error", "error": {"type": kind, "message": message}}}),
    )
}

/// The result a checked request gets when it runs.
fn plan_result(custom_id: &str, params: &Map<String, Value>, fate: BatchFate) -> PlannedResult {
    let planned = |(kind, result): (ResultKind, Value)| PlannedResult {
        custom_id: custom_id.to_string(),
        kind,
        result,
    };
    match fate {
        BatchFate::AllFail => {
            return planned(errored("api_error", "Internal server error"));
        }
        // Message Batches validate params while processing: a batch that fails
        // validation reports every request as an invalid request.
        BatchFate::FailValidation => {
            return planned(errored(
                "invalid_request_error",
                "The request could not be validated.",
            ));
        }
        BatchFate::Complete | BatchFate::Expire => {}
    }
    let messages = params
        .get("messages")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let text = messages_text(messages);
    let seed = format!("{custom_id}{text}");
    let tool = answering_tool(params);
    let schema = tool
        .and_then(|tool| tool.get("input_schema"))
        .cloned()
        .unwrap_or_else(|| json!({"type": "object"}));
    let tool_use = |input: Value| {
        json!({
            "type": "tool_use",
            "id": new_id("toolu_"),
            "name": tool.and_then(|t| t.get("name")).cloned().unwrap_or(Value::Null),
            "input": input,
        })
    };
    let text_block = |text: String| json!({"type": "text", "text": text});
    let answer = || answer_for(&schema, &seed);
    let (content, stop_reason) = match RequestFault::find_in(&text) {
        Some(RequestFault::ProviderError) => {
            return planned(errored(
                "invalid_request_error",
                "prompt is too long: 210000 tokens > 200000 maximum",
            ));
        }
        Some(RequestFault::RateLimit) => {
            return planned(errored(
                "rate_limit_error",
                "Number of request tokens has exceeded your per-minute rate limit.",
            ));
        }
        Some(RequestFault::ServerError) => {
            return planned(errored("api_error", "Internal server error"));
        }
        Some(RequestFault::SchemaBreak) if tool.is_some() => {
            (tool_use(schema_breaking_answer(&schema, &seed)), "tool_use")
        }
        Some(RequestFault::SchemaBreak | RequestFault::NonJson) => (
            text_block(format!(
                "I could not produce structured output, but here is a summary: {}",
                answer()
            )),
            "end_turn",
        ),
        Some(RequestFault::Refusal) => (
            text_block("I'm sorry, but I can't help with that request.".to_string()),
            "refusal",
        ),
        Some(RequestFault::Truncate) => (
            text_block(first_half(&answer().to_string()).to_string()),
            "max_tokens",
        ),
        None if tool.is_some() => (tool_use(answer()), "tool_use"),
        None => (text_block(answer().to_string()), "end_turn"),
    };
    let input_tokens = tokens(&text);
    let output_tokens = tokens(&content.to_string());
    planned((
        ResultKind::Succeeded,
        json!({"type": "succeeded", "message": {
            "id": new_id("msg_"),
            "type": "message",
            "role": "assistant",
            "model": params.get("model").cloned().unwrap_or(Value::Null),
            "content": [content],
            "stop_reason": stop_reason,
            "stop_sequence": null,
            "usage": {
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "service_tier": "batch",
            },
        }}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::testing::{BASE_URL, call, call_json, frozen_shared, jsonl, steps_ago};

    const HEADERS: [(&str, &str); 3] = [
        ("x-api-key", "test-key"),
        ("anthropic-version", "2023-06-01"),
        ("content-type", "application/json"),
    ];

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
            "required": ["name", "age"]
        })
    }

    fn request(custom_id: &str, text: &str) -> Value {
        json!({"custom_id": custom_id, "params": {
            "model": "claude-sonnet-4-5",
            "max_tokens": 1024,
            "system": "Extract the person.",
            "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}],
            "tools": [
                {"name": "other", "description": "not used", "input_schema": {"type": "object"}},
                {"name": "person", "description": "the person", "input_schema": schema()}
            ],
            "tool_choice": {"type": "tool", "name": "person"}
        }})
    }

    fn requests(n: usize) -> Vec<Value> {
        (0..n)
            .map(|i| request(&format!("r{i}"), &format!("text {i}")))
            .collect()
    }

    struct Harness {
        state: Arc<Anthropic>,
        router: Router,
    }

    impl Harness {
        fn new() -> Self {
            let state = Arc::new(Anthropic {
                shared: frozen_shared(),
                batches: Mutex::new(Vec::new()),
            });
            Self {
                router: routes(state.clone()),
                state,
            }
        }

        async fn send(&self, method: &str, uri: &str, body: Value) -> (StatusCode, Value) {
            let body = if body.is_null() {
                String::new()
            } else {
                body.to_string()
            };
            call_json(&self.router, method, uri, &HEADERS, body).await
        }

        async fn create_raw(&self, requests: Vec<Value>) -> (StatusCode, Value) {
            self.send(
                "POST",
                "/v1/messages/batches",
                json!({"requests": requests}),
            )
            .await
        }

        async fn create(&self, requests: Vec<Value>) -> String {
            let (status, batch) = self.create_raw(requests).await;
            assert_eq!(status, StatusCode::OK, "{batch}");
            assert_eq!(batch["processing_status"], "in_progress");
            batch["id"].as_str().unwrap().to_string()
        }

        async fn batch(&self, id: &str) -> Value {
            let (status, batch) = self
                .send("GET", &format!("/v1/messages/batches/{id}"), Value::Null)
                .await;
            assert_eq!(status, StatusCode::OK, "{batch}");
            batch
        }

        fn force_end(&self, id: &str) {
            lock(&self.state.shared.forced).insert(id.to_string(), ());
        }

        fn set_fate(&self, fate: BatchFate, partial: f64) {
            let mut plan = lock(&self.state.shared.faults);
            plan.batch_fate = fate;
            plan.partial = partial;
        }

        /// Ends the batch; answers it and its results by custom id.
        async fn finished(&self, id: &str) -> (Value, HashMap<String, Value>) {
            self.force_end(id);
            let batch = self.batch(id).await;
            let url = batch["results_url"].as_str().unwrap();
            let path = url.strip_prefix(BASE_URL).unwrap();
            let (status, body) = call(&self.router, "GET", path, &HEADERS, Body::empty()).await;
            assert_eq!(status, StatusCode::OK);
            let results = jsonl(&body)
                .into_iter()
                .map(|line| {
                    (
                        line["custom_id"].as_str().unwrap().to_string(),
                        line["result"].clone(),
                    )
                })
                .collect();
            (batch, results)
        }
    }

    #[tokio::test]
    async fn needs_the_key_and_the_version_header() {
        let harness = Harness::new();
        let cases = [
            (
                vec![("anthropic-version", "2023-06-01")],
                StatusCode::UNAUTHORIZED,
                "authentication_error",
            ),
            (
                vec![
                    ("x-api-key", "wrong-secret-9"),
                    ("anthropic-version", "2023-06-01"),
                ],
                StatusCode::UNAUTHORIZED,
                "authentication_error",
            ),
            (
                vec![("x-api-key", "test-key")],
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
            ),
            (
                vec![
                    ("authorization", "Bearer wrong-secret-9"),
                    ("anthropic-version", "2023-06-01"),
                ],
                StatusCode::UNAUTHORIZED,
                "authentication_error",
            ),
            (
                vec![("authorization", "Bearer test-key")],
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
            ),
        ];
        for (headers, status, kind) in cases {
            let (got, body) = call_json(
                &harness.router,
                "GET",
                "/v1/messages/batches",
                &headers,
                Body::empty(),
            )
            .await;
            assert_eq!(got, status);
            assert_eq!(body["type"], "error");
            assert_eq!(body["error"]["type"], kind);
            assert!(!body.to_string().contains("wrong-secret-9"));
        }
    }

    #[tokio::test]
    async fn create_rejects_invalid_requests_as_a_whole() {
        let harness = Harness::new();
        let with_params = |edit: &dyn Fn(&mut Map<String, Value>)| {
            let mut r = request("a", "x");
            edit(r["params"].as_object_mut().unwrap());
            vec![r]
        };
        let cases: Vec<(&str, Vec<Value>)> = vec![
            ("no requests", vec![]),
            ("bad custom_id", vec![request("has space", "x")]),
            ("long custom_id", vec![request(&"a".repeat(65), "x")]),
            ("duplicate", vec![request("a", "x"), request("a", "y")]),
            (
                "no model",
                with_params(&|p| {
                    p.remove("model");
                }),
            ),
            (
                "no max_tokens",
                with_params(&|p| {
                    p.remove("max_tokens");
                }),
            ),
            (
                "zero max_tokens",
                with_params(&|p| {
                    p.insert("max_tokens".into(), json!(0));
                }),
            ),
            (
                "no messages",
                with_params(&|p| {
                    p.insert("messages".into(), json!([]));
                }),
            ),
            (
                "system message",
                with_params(&|p| {
                    p.insert("messages".into(), json!([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]));
                }),
            ),
            (
                "unknown tool",
                with_params(&|p| {
                    p.insert(
                        "tool_choice".into(),
                        json!({"type": "tool", "name": "missing"}),
                    );
                }),
            ),
        ];
        for (case, requests) in cases {
            let (status, body) = harness.create_raw(requests).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{case}: {body}");
            assert_eq!(body["error"]["type"], "invalid_request_error", "{case}");
        }
        let (status, body) = call_json(
            &harness.router,
            "POST",
            "/v1/messages/batches",
            &HEADERS,
            "{not json",
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["type"], "error");
        assert!(lock(&harness.state.batches).is_empty());
        assert_eq!(
            plan_batch(
                json!({"requests": vec![json!({}); MAX_REQUESTS + 1]})
                    .to_string()
                    .as_bytes(),
                BatchFate::Complete
            )
            .unwrap_err()
            .status,
            StatusCode::BAD_REQUEST
        );
    }

    #[tokio::test]
    async fn bodies_over_256_mb_are_refused_with_413() {
        let harness = Harness::new();
        let length = (MAX_BODY_BYTES + 1).to_string();
        let mut headers = HEADERS.to_vec();
        headers.push(("content-length", &length));
        let (status, body) = call_json(
            &harness.router,
            "POST",
            "/v1/messages/batches",
            &headers,
            Body::empty(),
        )
        .await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body["error"]["type"], "request_too_large");
    }

    #[tokio::test]
    async fn a_batch_ends_with_one_tool_use_answer_per_request() {
        let harness = Harness::new();
        let id = harness.create(requests(3)).await;
        let batch = harness.batch(&id).await;
        assert!(batch["results_url"].is_null() && batch["ended_at"].is_null());
        assert_eq!(batch["request_counts"]["processing"], 3);
        let (status, early) = harness
            .send(
                "GET",
                &format!("/v1/messages/batches/{id}/results"),
                Value::Null,
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{early}");

        let (batch, results) = harness.finished(&id).await;
        assert_eq!(batch["type"], "message_batch");
        assert_eq!(batch["processing_status"], "ended");
        assert!(batch["ended_at"].is_string());
        assert!(batch["archived_at"].is_null() && batch["cancel_initiated_at"].is_null());
        assert_eq!(
            batch["results_url"],
            format!("{BASE_URL}/v1/messages/batches/{id}/results")
        );
        assert_eq!(
            batch["request_counts"],
            json!({"processing": 0, "succeeded": 3, "errored": 0, "canceled": 0, "expired": 0})
        );
        assert_eq!(results.len(), 3);
        for i in 0..3 {
            let result = &results[&format!("r{i}")];
            assert_eq!(result["type"], "succeeded");
            let message = &result["message"];
            assert_eq!(message["type"], "message");
            assert_eq!(message["role"], "assistant");
            assert_eq!(message["stop_reason"], "tool_use");
            assert!(message["usage"]["input_tokens"].as_u64().unwrap() > 0);
            let block = &message["content"][0];
            assert_eq!(block["type"], "tool_use");
            assert_eq!(block["name"], "person");
            assert!(block["id"].as_str().unwrap().starts_with("toolu_"));
            assert_eq!(
                block["input"],
                answer_for(&schema(), &format!("r{i}text {i}"))
            );
        }
    }

    #[tokio::test]
    async fn request_fault_markers_shape_each_result() {
        let harness = Harness::new();
        let kinds = RequestFault::ALL.map(|(name, _)| name);
        let batch: Vec<Value> = kinds
            .iter()
            .map(|kind| request(kind, &format!("Bob [[fault:{kind}]]")))
            .collect();
        let id = harness.create(batch).await;
        let (batch, results) = harness.finished(&id).await;
        assert_eq!(batch["request_counts"]["errored"], 3);
        assert_eq!(batch["request_counts"]["succeeded"], 4);
        for (kind, error) in [
            ("provider_error", "invalid_request_error"),
            ("rate_limit", "rate_limit_error"),
            ("server_error", "api_error"),
        ] {
            assert_eq!(results[kind]["type"], "errored");
            assert_eq!(results[kind]["error"]["type"], "error");
            assert_eq!(results[kind]["error"]["error"]["type"], error);
        }
        let message = |kind: &str| results[kind]["message"].clone();
        assert_eq!(message("non_json")["content"][0]["type"], "text");
        let broken = message("schema_break");
        assert_eq!(broken["content"][0]["type"], "tool_use");
        assert!(broken["content"][0]["input"].get("name").is_none());
        assert_eq!(message("refusal")["stop_reason"], "refusal");
        assert_eq!(message("refusal")["content"][0]["type"], "text");
        let truncated = message("truncate");
        assert_eq!(truncated["stop_reason"], "max_tokens");
        let text = truncated["content"][0]["text"].as_str().unwrap();
        assert!(serde_json::from_str::<Value>(text).is_err());
    }

    #[tokio::test]
    async fn fates_expire_part_or_fail_every_request() {
        let harness = Harness::new();
        harness.set_fate(BatchFate::Expire, 0.25);
        let id = harness.create(requests(4)).await;
        let (batch, results) = harness.finished(&id).await;
        assert_eq!(
            batch["request_counts"],
            json!({"processing": 0, "succeeded": 1, "errored": 0, "canceled": 0, "expired": 3})
        );
        let expired = results
            .values()
            .filter(|r| **r == json!({"type": "expired"}))
            .count();
        assert_eq!(expired, 3);

        harness.set_fate(BatchFate::AllFail, 0.5);
        let id = harness.create(requests(4)).await;
        let (batch, results) = harness.finished(&id).await;
        assert_eq!(batch["request_counts"]["errored"], 4);
        assert!(
            results
                .values()
                .all(|r| r["error"]["error"]["type"] == "api_error")
        );
    }

    #[tokio::test]
    async fn cancel_then_delete() {
        let harness = Harness::new();
        let id = harness.create(requests(4)).await;
        let uri = format!("/v1/messages/batches/{id}");
        let (status, body) = harness.send("DELETE", &uri, Value::Null).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

        lock(&harness.state.batches)[0].created = steps_ago(1);
        let (status, batch) = harness
            .send("POST", &format!("{uri}/cancel"), Value::Null)
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(batch["processing_status"], "canceling");
        assert!(batch["cancel_initiated_at"].is_string());
        assert_eq!(batch["request_counts"]["processing"], 4);

        let (batch, results) = harness.finished(&id).await;
        assert_eq!(
            batch["request_counts"],
            json!({"processing": 0, "succeeded": 2, "errored": 0, "canceled": 2, "expired": 0})
        );
        assert_eq!(
            results.values().filter(|r| r["type"] == "canceled").count(),
            2
        );

        let (status, deleted) = harness.send("DELETE", &uri, Value::Null).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(deleted, json!({"id": id, "type": "message_batch_deleted"}));
        let (status, body) = harness.send("GET", &uri, Value::Null).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error"]["type"], "not_found_error");
    }

    #[tokio::test]
    async fn lists_page_both_ways() {
        let harness = Harness::new();
        let mut created = Vec::new();
        for _ in 0..7 {
            created.push(harness.create(requests(1)).await);
        }
        created.reverse();
        let ids = |page: &Value| -> Vec<String> {
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b["id"].as_str().unwrap().to_string())
                .collect()
        };
        let mut listed = Vec::new();
        let mut uri = "/v1/messages/batches?limit=3".to_string();
        loop {
            let (status, page) = harness.send("GET", &uri, Value::Null).await;
            assert_eq!(status, StatusCode::OK, "{page}");
            listed.extend(ids(&page));
            assert_eq!(page["last_id"].as_str(), listed.last().map(String::as_str));
            if page["has_more"] == false {
                break;
            }
            uri = format!(
                "/v1/messages/batches?limit=3&after_id={}",
                page["last_id"].as_str().unwrap()
            );
        }
        assert_eq!(listed, created);

        let uri = format!("/v1/messages/batches?limit=2&before_id={}", created[3]);
        let (_, page) = harness.send("GET", &uri, Value::Null).await;
        assert_eq!(ids(&page), created[1..3]);
        assert_eq!(page["has_more"], true);
        assert_eq!(page["first_id"], created[1]);
        let uri = format!("/v1/messages/batches?limit=5&before_id={}", created[1]);
        let (_, page) = harness.send("GET", &uri, Value::Null).await;
        assert_eq!(ids(&page), created[..1]);
        assert_eq!(page["has_more"], false);
        let (status, _) = harness
            .send("GET", "/v1/messages/batches?limit=0", Value::Null)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn results_downloads_honour_the_planned_drop() {
        let harness = Harness::new();
        let id = harness.create(requests(10)).await;
        harness.force_end(&id);
        lock(&harness.state.shared.faults).drop_results_after_bytes = Some(50);
        let request = axum::http::Request::get(format!("/v1/messages/batches/{id}/results"))
            .header("x-api-key", "test-key")
            .header("anthropic-version", "2023-06-01")
            .body(Body::empty())
            .unwrap();
        let response = tower::ServiceExt::oneshot(harness.router.clone(), request)
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .is_err()
        );
    }
}
