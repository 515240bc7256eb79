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
use axum::http::StatusCode;
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

/// `x-api-key` must be the configured key and `anthropic-version` must be present.
async fn check_headers(
    State(state): State<Arc<Anthropic>>,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    let key_ok = headers
        .get("x-api-key")
        .is_some_and(|key| key.as_bytes() == state.shared.config.api_key.as_bytes());
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

async fn create_batch(State(state): State<Arc<Anthropic>>, body: Body) -> ApiResult<Response> {
    let body = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            kind: "request_too_large",
            message: format!(
                "Request exceeds the maximum allowed number of bytes ({MAX_BODY_BYTES})."
            ),
        })?;
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
    if !params
        .get("model")
        .and_then(Value::as_str)
        .is_some_and(|model| !model.is_empty())
    {
        return invalid("params.model", "Field required");
    }
    if !params
        .get("max_tokens")
        .and_then(Value::as_u64)
        .is_some_and(|n| n >= 1)
    {
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
