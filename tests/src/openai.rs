//! OpenAI Files and Batch API: upload, batch lifecycle, output and error files.
//!
//! The input file is checked when the batch is created, the way the real API does it in
//! its `validating` stage: file-level problems make the batch `failed` with `errors`,
//! an invalid request body becomes a 400 line in the error file.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{DefaultBodyLimit, Multipart, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};

use crate::common::{
    BatchFate, RequestFault, Shared, answer_for, download_response, first_half, is_identifier,
    lock, messages_text, new_id, ran_count, schema_breaking_answer, tokens, unix_now,
};

/// The only endpoint the emulator runs batches for.
const CHAT_COMPLETIONS: &str = "/v1/chat/completions";
/// The Files API accepts files up to 512 MB; the batch limit (200 MB) is checked later.
const MAX_UPLOAD_BYTES: usize = 512 * 1024 * 1024;
const INPUT_LIMITS: InputLimits = InputLimits {
    max_requests: 50_000,
    max_bytes: 200 * 1024 * 1024,
};
/// A batch reports at most this many validation errors.
const MAX_REPORTED_ERRORS: usize = 100;
const DAY_SECONDS: i64 = 24 * 60 * 60;
const FILE_RETENTION_SECONDS: i64 = 30 * DAY_SECONDS;
const MAX_METADATA_PAIRS: usize = 16;
const MAX_METADATA_KEY_CHARS: usize = 64;
const MAX_METADATA_VALUE_CHARS: usize = 512;
const MESSAGE_ROLES: [&str; 4] = ["system", "user", "assistant", "developer"];
/// Structured outputs in strict mode: levels of nesting and object properties in total.
const MAX_STRICT_NESTING: usize = 10;
const MAX_STRICT_PROPERTIES: usize = 5000;
const REASONING_MODEL_PREFIXES: [&str; 4] = ["o1", "o3", "o4", "gpt-5"];

pub fn router(shared: Arc<Shared>) -> Router {
    routes(Arc::new(OpenAi {
        shared,
        store: Mutex::new(Store::default()),
    }))
}

fn routes(state: Arc<OpenAi>) -> Router {
    Router::new()
        .route(
            "/v1/files",
            post(upload_file).layer(DefaultBodyLimit::max(MAX_UPLOAD_BYTES)),
        )
        .route("/v1/files/{id}", get(get_file).delete(delete_file))
        .route("/v1/files/{id}/content", get(file_content))
        .route("/v1/batches", post(create_batch).get(list_batches))
        .route("/v1/batches/{id}", get(get_batch))
        .route("/v1/batches/{id}/cancel", post(cancel_batch))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize))
        .route(
            "/_emulator/openai/batches",
            post(preload_finished_batch).layer(DefaultBodyLimit::disable()),
        )
        .with_state(state)
}

struct OpenAi {
    shared: Arc<Shared>,
    store: Mutex<Store>,
}

#[derive(Default)]
struct Store {
    files: HashMap<String, StoredFile>,
    /// In creation order; listed newest first.
    batches: Vec<BatchRecord>,
}

struct StoredFile {
    id: String,
    filename: String,
    purpose: String,
    created_at: i64,
    content: Bytes,
}

impl StoredFile {
    fn new(filename: String, purpose: &str, content: Bytes) -> Self {
        Self {
            id: new_id("file-"),
            filename,
            purpose: purpose.to_string(),
            created_at: unix_now(),
            content,
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "object": "file",
            "bytes": self.content.len(),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": self.created_at + FILE_RETENTION_SECONDS,
            "status_details": null,
        })
    }
}

/// An error answered with the OpenAI error body.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    param: Option<&'static str>,
    code: Option<&'static str>,
}

impl ApiError {
    fn invalid(message: impl Into<String>, param: Option<&'static str>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param,
            code: None,
        }
    }

    fn not_found(what: &str, id: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: format!("No such {what} object: {id}"),
            kind: "invalid_request_error",
            param: Some("id"),
            code: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }});
        (self.status, axum::Json(body)).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Every route needs `Authorization: Bearer <key>`; the answer never echoes the key sent.
async fn authorize(State(state): State<Arc<OpenAi>>, request: Request, next: Next) -> Response {
    let expected = format!("Bearer {}", state.shared.config.api_key);
    let sent = request.headers().get(header::AUTHORIZATION);
    if sent.is_some_and(|value| value.as_bytes() == expected.as_bytes()) {
        return next.run(request).await;
    }
    ApiError {
        status: StatusCode::UNAUTHORIZED,
        message: "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.".to_string(),
        kind: "invalid_request_error",
        param: None,
        code: Some("invalid_api_key"),
    }
    .into_response()
}

// ---------------------------------------------------------------------------------------
// Files

async fn upload_file(
    State(state): State<Arc<OpenAi>>,
    multipart: Result<Multipart, MultipartRejection>,
) -> ApiResult<axum::Json<Value>> {
    let mut multipart = multipart.map_err(|rejection| ApiError {
        status: rejection.status(),
        ..ApiError::invalid(rejection.body_text(), None)
    })?;
    let mut purpose = None;
    let mut file = None;
    while let Some(field) = multipart.next_field().await.map_err(multipart_error)? {
        match field.name() {
            Some("purpose") => purpose = Some(field.text().await.map_err(multipart_error)?),
            Some("file") => {
                let filename = field.file_name().unwrap_or_default().to_string();
                file = Some((filename, field.bytes().await.map_err(multipart_error)?));
            }
            _ => {}
        }
    }
    let purpose = purpose.ok_or_else(|| {
        ApiError::invalid("Missing required parameter: 'purpose'.", Some("purpose"))
    })?;
    let (filename, content) =
        file.ok_or_else(|| ApiError::invalid("Missing required parameter: 'file'.", Some("file")))?;
    if purpose != "batch" {
        return Err(ApiError::invalid(
            format!("Invalid value for 'purpose': '{purpose}'. The emulator only accepts 'batch'."),
            Some("purpose"),
        ));
    }
    if !filename.ends_with(".jsonl") {
        return Err(ApiError::invalid(
            "Invalid file format for Batch API. Must be .jsonl",
            Some("file"),
        ));
    }
    let stored = StoredFile::new(filename, "batch", content);
    let answer = stored.to_json();
    lock(&state.store).files.insert(stored.id.clone(), stored);
    Ok(axum::Json(answer))
}

fn multipart_error(error: axum::extract::multipart::MultipartError) -> ApiError {
    ApiError {
        status: error.status(),
        ..ApiError::invalid(error.body_text(), Some("file"))
    }
}

async fn get_file(
    State(state): State<Arc<OpenAi>>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    let store = lock(&state.store);
    let file = store
        .files
        .get(&id)
        .ok_or_else(|| ApiError::not_found("File", &id))?;
    Ok(axum::Json(file.to_json()))
}

async fn delete_file(
    State(state): State<Arc<OpenAi>>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    lock(&state.store)
        .files
        .remove(&id)
        .ok_or_else(|| ApiError::not_found("File", &id))?;
    Ok(axum::Json(
        json!({"id": id, "object": "file", "deleted": true}),
    ))
}

/// Raw file bytes; results downloads (output and error files) honour the planned drop.
async fn file_content(
    State(state): State<Arc<OpenAi>>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let (content, is_result) = {
        let store = lock(&state.store);
        let file = store
            .files
            .get(&id)
            .ok_or_else(|| ApiError::not_found("File", &id))?;
        (file.content.clone(), file.purpose == "batch_output")
    };
    let drop_after = if is_result {
        state.shared.drop_results_after()
    } else {
        None
    };
    Ok(download_response(
        content,
        "application/octet-stream",
        drop_after,
    ))
}

// ---------------------------------------------------------------------------------------
// Batches

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Validating,
    Failed,
    InProgress,
    Finalizing,
    Completed,
    Expired,
    Cancelling,
    Cancelled,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Self::Validating => "validating",
            Self::Failed => "failed",
            Self::InProgress => "in_progress",
            Self::Finalizing => "finalizing",
            Self::Completed => "completed",
            Self::Expired => "expired",
            Self::Cancelling => "cancelling",
            Self::Cancelled => "cancelled",
        }
    }

    fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Failed | Self::Completed | Self::Expired | Self::Cancelled
        )
    }
}

/// One entry of a failed batch's `errors.data`.
#[derive(Debug, Clone, PartialEq)]
struct LineError {
    code: &'static str,
    message: String,
    param: Option<&'static str>,
    line: Option<usize>,
}

impl LineError {
    fn at(line: usize, code: &'static str, param: Option<&'static str>, message: String) -> Self {
        Self {
            code,
            message,
            param,
            line: Some(line),
        }
    }

    fn whole_file(code: &'static str, message: String) -> Self {
        Self {
            code,
            message,
            param: None,
            line: None,
        }
    }
}

struct InputLimits {
    max_requests: usize,
    max_bytes: usize,
}

/// What each request of a valid input file will answer when it runs.
#[derive(Debug)]
struct Plan {
    model: String,
    requests: Vec<PlannedRequest>,
}

#[derive(Debug)]
struct PlannedRequest {
    custom_id: String,
    status_code: u16,
    /// A `chat.completion`, or `{"error": {...}}` for a non-200 answer.
    body: Value,
    input_tokens: u64,
    output_tokens: u64,
}

/// Files and counts of a batch that reached its end.
struct Outcome {
    output_file_id: Option<String>,
    error_file_id: Option<String>,
    completed: usize,
    failed: usize,
    input_tokens: u64,
    output_tokens: u64,
}

/// Why requests that did not run are reported without a response.
#[derive(Debug, Clone, Copy)]
enum NotRun {
    Expired,
    Cancelled,
}

struct Cancel {
    requested: Instant,
    /// Requests that ran before the cancel took effect.
    ran: usize,
}

#[derive(Default)]
struct Timestamps {
    in_progress_at: Option<i64>,
    finalizing_at: Option<i64>,
    completed_at: Option<i64>,
    failed_at: Option<i64>,
    expired_at: Option<i64>,
    cancelling_at: Option<i64>,
    cancelled_at: Option<i64>,
}

struct BatchRecord {
    id: String,
    input_file_id: String,
    completion_window: String,
    metadata: Option<Map<String, Value>>,
    created: Instant,
    created_at: i64,
    fate: BatchFate,
    partial: f64,
    plan: Result<Plan, Vec<LineError>>,
    status: Status,
    times: Timestamps,
    cancel: Option<Cancel>,
    outcome: Option<Outcome>,
}

/// Lifecycle steps: validating until step 1, in progress until 2, finalizing until 3.
const STEP_IN_PROGRESS: u32 = 1;
const STEP_FINALIZING: u32 = 2;
const STEP_DONE: u32 = 3;

impl BatchRecord {
    /// Moves the batch through every stage it has passed by now.
    fn refresh(&mut self, shared: &Shared, files: &mut HashMap<String, StoredFile>) {
        if self.status.is_terminal() {
            return;
        }
        let now = unix_now();
        if let Some(cancel) = &self.cancel {
            if shared.steps_since(&self.id, cancel.requested) >= 1 {
                let ran = cancel.ran;
                self.finish(ran, NotRun::Cancelled, files);
                self.status = Status::Cancelled;
                self.times.cancelled_at = Some(now);
            }
            return;
        }
        let steps = shared.steps_since(&self.id, self.created);
        if self.plan.is_err() {
            if steps >= STEP_IN_PROGRESS {
                self.status = Status::Failed;
                self.times.failed_at = Some(now);
            }
            return;
        }
        if steps >= STEP_IN_PROGRESS && self.times.in_progress_at.is_none() {
            self.status = Status::InProgress;
            self.times.in_progress_at = Some(now);
        }
        let expires = self.fate == BatchFate::Expire;
        if steps >= STEP_FINALIZING && !expires && self.times.finalizing_at.is_none() {
            self.status = Status::Finalizing;
            self.times.finalizing_at = Some(now);
        }
        if steps >= STEP_DONE {
            let total = self.total();
            if expires {
                self.finish(ran_count(total, self.partial), NotRun::Expired, files);
                self.status = Status::Expired;
                self.times.expired_at = Some(now);
            } else {
                self.finish(total, NotRun::Expired, files);
                self.status = Status::Completed;
                self.times.completed_at = Some(now);
            }
        }
    }

    fn total(&self) -> usize {
        // Every request ends in exactly one of the two files (preloaded batches have no plan).
        match &self.outcome {
            Some(outcome) => outcome.completed + outcome.failed,
            None => self.plan.as_ref().map_or(0, |plan| plan.requests.len()),
        }
    }

    /// How many requests have run if the batch is cancelled now.
    fn ran_so_far(&self) -> usize {
        match self.status {
            Status::InProgress => self.total() / 2,
            Status::Finalizing => self.total(),
            _ => 0,
        }
    }

    /// Writes the output and error files: the first `ran` requests answered, the rest
    /// are reported as never run.
    fn finish(&mut self, ran: usize, not_run: NotRun, files: &mut HashMap<String, StoredFile>) {
        let Ok(plan) = &self.plan else {
            return;
        };
        let mut output = Vec::new();
        let mut errors = Vec::new();
        let mut outcome = Outcome {
            output_file_id: None,
            error_file_id: None,
            completed: 0,
            failed: 0,
            input_tokens: 0,
            output_tokens: 0,
        };
        for (index, request) in plan.requests.iter().enumerate() {
            let line = if index < ran {
                outcome.input_tokens += request.input_tokens;
                outcome.output_tokens += request.output_tokens;
                answered_line(request)
            } else {
                not_run_line(&request.custom_id, not_run)
            };
            let target = if index < ran && request.status_code == 200 {
                outcome.completed += 1;
                &mut output
            } else {
                outcome.failed += 1;
                &mut errors
            };
            // Serializing a `Value` cannot fail.
            serde_json::to_writer(&mut *target, &line).expect("serializing a JSON value");
            target.push(b'\n');
        }
        outcome.output_file_id = store_result_file(files, &self.id, "output", output.into());
        outcome.error_file_id = store_result_file(files, &self.id, "error", errors.into());
        self.outcome = Some(outcome);
    }

    fn request_counts(&self) -> Value {
        let (total, completed, failed) = match (&self.outcome, self.status) {
            (Some(outcome), _) => (self.total(), outcome.completed, outcome.failed),
            (None, Status::Validating | Status::Failed) => (0, 0, 0),
            (None, _) => (self.total(), 0, 0),
        };
        json!({"total": total, "completed": completed, "failed": failed})
    }

    fn to_json(&self) -> Value {
        let (input_tokens, output_tokens) = self
            .outcome
            .as_ref()
            .map_or((0, 0), |o| (o.input_tokens, o.output_tokens));
        let errors = match &self.plan {
            Err(errors) if self.status == Status::Failed => json!({
                "object": "list",
                "data": errors.iter().map(|e| json!({
                    "code": e.code, "message": e.message, "param": e.param, "line": e.line,
                })).collect::<Vec<_>>(),
            }),
            _ => Value::Null,
        };
        let model = match (&self.plan, self.status) {
            (_, Status::Validating) | (Err(_), _) => None,
            (Ok(plan), _) => Some(plan.model.clone()),
        };
        json!({
            "id": self.id,
            "object": "batch",
            "endpoint": CHAT_COMPLETIONS,
            "model": model,
            "errors": errors,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status.as_str(),
            "output_file_id": self.outcome.as_ref().and_then(|o| o.output_file_id.clone()),
            "error_file_id": self.outcome.as_ref().and_then(|o| o.error_file_id.clone()),
            "created_at": self.created_at,
            "in_progress_at": self.times.in_progress_at,
            "expires_at": self.created_at + DAY_SECONDS,
            "finalizing_at": self.times.finalizing_at,
            "completed_at": self.times.completed_at,
            "failed_at": self.times.failed_at,
            "expired_at": self.times.expired_at,
            "cancelling_at": self.times.cancelling_at,
            "cancelled_at": self.times.cancelled_at,
            "request_counts": self.request_counts(),
            "usage": {
                "input_tokens": input_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": input_tokens + output_tokens,
            },
            "metadata": self.metadata,
        })
    }
}

fn answered_line(request: &PlannedRequest) -> Value {
    json!({
        "id": new_id("batch_req_"),
        "custom_id": request.custom_id,
        "response": {
            "status_code": request.status_code,
            "request_id": new_id("req_"),
            "body": request.body,
        },
        "error": null,
    })
}

fn not_run_line(custom_id: &str, not_run: NotRun) -> Value {
    let (code, message) = match not_run {
        NotRun::Expired => (
            "batch_expired",
            "This request could not be executed before the completion window expired.",
        ),
        NotRun::Cancelled => (
            "batch_cancelled",
            "This request could not be executed before the batch was cancelled.",
        ),
    };
    json!({
        "id": new_id("batch_req_"),
        "custom_id": custom_id,
        "response": null,
        "error": {"code": code, "message": message},
    })
}

/// Stores a non-empty results file and returns its id.
fn store_result_file(
    files: &mut HashMap<String, StoredFile>,
    batch_id: &str,
    kind: &str,
    content: Bytes,
) -> Option<String> {
    if content.is_empty() {
        return None;
    }
    let file = StoredFile::new(format!("{batch_id}_{kind}.jsonl"), "batch_output", content);
    let id = file.id.clone();
    files.insert(id.clone(), file);
    Some(id)
}

/// The create-call parameters, checked before the input file is looked at.
struct CreateParams {
    input_file_id: String,
    completion_window: String,
    metadata: Option<Map<String, Value>>,
}

fn parse_create(body: &[u8]) -> ApiResult<CreateParams> {
    let body: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("Invalid JSON body: {e}"), None))?;
    let text_field = |name: &'static str| {
        body.get(name)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| {
                ApiError::invalid(format!("Missing required parameter: '{name}'."), Some(name))
            })
    };
    let input_file_id = text_field("input_file_id")?;
    let endpoint = text_field("endpoint")?;
    let completion_window = text_field("completion_window")?;
    if endpoint != CHAT_COMPLETIONS {
        return Err(ApiError::invalid(
            format!(
                "Invalid value: '{endpoint}'. The emulator supports only '{CHAT_COMPLETIONS}'."
            ),
            Some("endpoint"),
        ));
    }
    if completion_window != "24h" {
        return Err(ApiError::invalid(
            format!("Invalid value: '{completion_window}'. Supported values are: '24h'."),
            Some("completion_window"),
        ));
    }
    let metadata = match body.get("metadata") {
        None | Some(Value::Null) => None,
        Some(Value::Object(pairs)) => Some(check_metadata(pairs)?.clone()),
        Some(_) => {
            return Err(ApiError::invalid(
                "Invalid type for 'metadata': expected an object.",
                Some("metadata"),
            ));
        }
    };
    Ok(CreateParams {
        input_file_id,
        completion_window,
        metadata,
    })
}

fn check_metadata(pairs: &Map<String, Value>) -> ApiResult<&Map<String, Value>> {
    let invalid = |message: String| Err(ApiError::invalid(message, Some("metadata")));
    if pairs.len() > MAX_METADATA_PAIRS {
        return invalid(format!(
            "Invalid 'metadata': too many properties. Expected an object with at most {MAX_METADATA_PAIRS} properties, but got an object with {} properties instead.",
            pairs.len()
        ));
    }
    for (key, value) in pairs {
        if key.chars().count() > MAX_METADATA_KEY_CHARS {
            return invalid(format!(
                "Invalid 'metadata': key '{key}' is longer than {MAX_METADATA_KEY_CHARS} characters."
            ));
        }
        let Some(text) = value.as_str() else {
            return invalid(format!(
                "Invalid 'metadata.{key}': expected a string, but got {value} instead."
            ));
        };
        if text.chars().count() > MAX_METADATA_VALUE_CHARS {
            return invalid(format!(
                "Invalid 'metadata.{key}': string too long. Expected a string with maximum length {MAX_METADATA_VALUE_CHARS}."
            ));
        }
    }
    Ok(pairs)
}

async fn create_batch(State(state): State<Arc<OpenAi>>, body: Bytes) -> ApiResult<Response> {
    let params = parse_create(&body)?;
    let (content, purpose) = {
        let store = lock(&state.store);
        let file = store.files.get(&params.input_file_id).ok_or_else(|| {
            ApiError::invalid(
                format!(
                    "Invalid 'input_file_id': '{}'. File does not exist.",
                    params.input_file_id
                ),
                Some("input_file_id"),
            )
        })?;
        (file.content.clone(), file.purpose.clone())
    };
    if purpose != "batch" {
        return Err(ApiError::invalid(
            format!("The input file must have purpose 'batch', not '{purpose}'."),
            Some("input_file_id"),
        ));
    }
    let (fate, partial) = state.shared.fate_for_new_batch();
    // Parsing a file of up to 200 MB is CPU work: keep it off the async workers.
    let plan = tokio::task::spawn_blocking(move || plan_batch(&content, &INPUT_LIMITS, fate))
        .await
        .map_err(|e| ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "server_error",
            ..ApiError::invalid(format!("validation task failed: {e}"), None)
        })?;
    let mut batch = BatchRecord {
        id: new_id("batch_"),
        input_file_id: params.input_file_id,
        completion_window: params.completion_window,
        metadata: params.metadata,
        created: Instant::now(),
        created_at: unix_now(),
        fate,
        partial,
        plan,
        status: Status::Validating,
        times: Timestamps::default(),
        cancel: None,
        outcome: None,
    };
    let mut store = lock(&state.store);
    batch.refresh(&state.shared, &mut store.files);
    let answer = batch.to_json();
    store.batches.push(batch);
    Ok(axum::Json(answer).into_response())
}

/// `POST /_emulator/openai/batches` (control endpoint, no key) with a results JSONL
/// body: adds a batch that has already completed with that body as its output file,
/// so that a benchmark can download a large file without running as many requests.
/// Answers the batch object.
async fn preload_finished_batch(
    State(state): State<Arc<OpenAi>>,
    output: Bytes,
) -> axum::Json<Value> {
    let completed = output
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .count();
    let now = unix_now();
    let mut store = lock(&state.store);
    let input = StoredFile::new("preloaded_input.jsonl".to_string(), "batch", Bytes::new());
    let input_file_id = input.id.clone();
    store.files.insert(input_file_id.clone(), input);
    let id = new_id("batch_");
    let output_file_id = store_result_file(&mut store.files, &id, "output", output);
    let batch = BatchRecord {
        id,
        input_file_id,
        completion_window: "24h".to_string(),
        metadata: None,
        created: Instant::now(),
        created_at: now,
        fate: BatchFate::Complete,
        partial: 1.0,
        plan: Ok(Plan {
            model: "gpt-4o-mini".to_string(),
            requests: Vec::new(),
        }),
        status: Status::Completed,
        times: Timestamps {
            in_progress_at: Some(now),
            finalizing_at: Some(now),
            completed_at: Some(now),
            ..Timestamps::default()
        },
        cancel: None,
        outcome: Some(Outcome {
            output_file_id,
            error_file_id: None,
            completed,
            failed: 0,
            input_tokens: 0,
            output_tokens: 0,
        }),
    };
    let answer = batch.to_json();
    store.batches.push(batch);
    axum::Json(answer)
}

/// Finds a batch, brings it up to date and answers with `f` of it.
fn with_batch<T>(
    state: &OpenAi,
    id: &str,
    f: impl FnOnce(&mut BatchRecord) -> ApiResult<T>,
) -> ApiResult<T> {
    let mut store = lock(&state.store);
    let Store { files, batches } = &mut *store;
    let batch = batches
        .iter_mut()
        .find(|b| b.id == id)
        .ok_or_else(|| ApiError::not_found("Batch", id))?;
    batch.refresh(&state.shared, files);
    f(batch)
}

async fn get_batch(
    State(state): State<Arc<OpenAi>>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    with_batch(&state, &id, |batch| Ok(axum::Json(batch.to_json())))
}

async fn cancel_batch(
    State(state): State<Arc<OpenAi>>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    with_batch(&state, &id, |batch| {
        if batch.status == Status::Cancelling {
            return Ok(axum::Json(batch.to_json()));
        }
        if batch.status.is_terminal() {
            return Err(ApiError::invalid(
                format!(
                    "Cannot cancel a batch with status '{}'.",
                    batch.status.as_str()
                ),
                None,
            ));
        }
        batch.cancel = Some(Cancel {
            requested: Instant::now(),
            ran: batch.ran_so_far(),
        });
        batch.status = Status::Cancelling;
        batch.times.cancelling_at = Some(unix_now());
        Ok(axum::Json(batch.to_json()))
    })
}

const DEFAULT_PAGE: usize = 20;
const MAX_PAGE: usize = 100;

async fn list_batches(
    State(state): State<Arc<OpenAi>>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<axum::Json<Value>> {
    let limit = match query.get("limit") {
        None => DEFAULT_PAGE,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| {
                ApiError::invalid(
                    format!(
                        "Invalid 'limit': {text}. Expected an integer between 1 and {MAX_PAGE}."
                    ),
                    Some("limit"),
                )
            })?,
    };
    let mut store = lock(&state.store);
    let Store { files, batches } = &mut *store;
    let newest_first: Vec<&mut BatchRecord> = batches.iter_mut().rev().collect();
    let start = match query.get("after") {
        None => 0,
        Some(after) => {
            newest_first
                .iter()
                .position(|b| &b.id == after)
                .ok_or_else(|| ApiError::not_found("Batch", after))?
                + 1
        }
    };
    let has_more = newest_first.len() > start + limit;
    let mut data = Vec::new();
    for batch in newest_first.into_iter().skip(start).take(limit) {
        batch.refresh(&state.shared, files);
        data.push(batch.to_json());
    }
    let first_id = data.first().map(|b| b["id"].clone());
    let last_id = data.last().map(|b| b["id"].clone());
    Ok(axum::Json(json!({
        "object": "list",
        "data": data,
        "first_id": first_id,
        "last_id": last_id,
        "has_more": has_more,
    })))
}

// ---------------------------------------------------------------------------------------
// Input validation and planned answers

/// Checks the whole input file and plans every request's answer.
fn plan_batch(
    content: &[u8],
    limits: &InputLimits,
    fate: BatchFate,
) -> Result<Plan, Vec<LineError>> {
    if content.len() > limits.max_bytes {
        return Err(vec![LineError::whole_file(
            "file_too_large",
            format!(
                "The input file is larger than the {} byte limit for a batch.",
                limits.max_bytes
            ),
        )]);
    }
    let lines: Vec<(usize, &[u8])> = content
        .split(|b| *b == b'\n')
        .enumerate()
        .map(|(index, line)| (index + 1, line))
        .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
        .collect();
    if lines.is_empty() {
        return Err(vec![LineError::whole_file(
            "empty_file",
            "The batch input file is empty.".to_string(),
        )]);
    }
    if lines.len() > limits.max_requests {
        return Err(vec![LineError::whole_file(
            "too_many_tasks",
            format!(
                "The batch input file contains {} requests, more than the maximum of {}.",
                lines.len(),
                limits.max_requests
            ),
        )]);
    }
    let mut errors = Vec::new();
    let mut seen = HashSet::new();
    let mut valid = Vec::with_capacity(lines.len());
    for (number, raw) in lines {
        match parse_line(raw, number)
            .and_then(|line| check_across_lines(line, number, &mut seen, valid.first()))
        {
            Ok(line) => valid.push(line),
            Err(error) if errors.len() < MAX_REPORTED_ERRORS => errors.push(error),
            Err(_) => {}
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let model = valid
        .first()
        .map(|line| line.model.clone())
        .unwrap_or_default();
    if fate == BatchFate::FailValidation {
        return Err(vec![LineError::whole_file(
            "token_limit_exceeded",
            format!(
                "Enqueued token limit reached for {model} in organization org-emulator. Please try again once some in_progress batches have been completed."
            ),
        )]);
    }
    let requests = valid.iter().map(|line| plan_request(line, fate)).collect();
    Ok(Plan { model, requests })
}

/// Rules that span lines: unique custom ids and one model for the whole file.
fn check_across_lines(
    line: InputLine,
    number: usize,
    seen: &mut HashSet<String>,
    first: Option<&InputLine>,
) -> Result<InputLine, LineError> {
    if !seen.insert(line.custom_id.clone()) {
        return Err(LineError::at(
            number,
            "duplicate_custom_id",
            Some("custom_id"),
            format!(
                "The custom_id '{}' is used more than once in the input file.",
                line.custom_id
            ),
        ));
    }
    match first {
        Some(first) if first.model != line.model => Err(LineError::at(
            number,
            "model_mismatch",
            Some("body.model"),
            format!(
                "Model '{}' differs from '{}' used earlier in the file. Every request in a batch must use the same model.",
                line.model, first.model
            ),
        )),
        _ => Ok(line),
    }
}

/// A line that passed the file-level checks.
struct InputLine {
    custom_id: String,
    model: String,
    body: Map<String, Value>,
}

fn parse_line(raw: &[u8], number: usize) -> Result<InputLine, LineError> {
    let invalid_json = || {
        LineError::at(
            number,
            "invalid_json_line",
            None,
            format!("This line is not parseable as valid JSON (line {number})."),
        )
    };
    let Value::Object(mut line) = serde_json::from_slice(raw).map_err(|_| invalid_json())? else {
        return Err(invalid_json());
    };
    let missing = |param: &'static str| {
        LineError::at(
            number,
            "missing_required_parameter",
            Some(param),
            format!("Missing required parameter: '{param}'."),
        )
    };
    let custom_id = match line.remove("custom_id") {
        Some(Value::String(id)) => id,
        _ => return Err(missing("custom_id")),
    };
    if line.get("method").and_then(Value::as_str) != Some("POST") {
        return Err(LineError::at(
            number,
            "invalid_method",
            Some("method"),
            "The method of every request must be 'POST'.".to_string(),
        ));
    }
    if line.get("url").and_then(Value::as_str) != Some(CHAT_COMPLETIONS) {
        return Err(LineError::at(
            number,
            "url_mismatch",
            Some("url"),
            format!(
                "The url of this request does not match the batch endpoint '{CHAT_COMPLETIONS}'."
            ),
        ));
    }
    let Some(Value::Object(body)) = line.remove("body") else {
        return Err(missing("body"));
    };
    let Some(model) = body
        .get("model")
        .and_then(Value::as_str)
        .map(str::to_string)
    else {
        return Err(missing("body.model"));
    };
    Ok(InputLine {
        custom_id,
        model,
        body,
    })
}

/// A request body the API would answer with a 400.
#[derive(Debug, PartialEq)]
struct BodyError {
    message: String,
    param: String,
    code: &'static str,
}

impl BodyError {
    fn new(code: &'static str, param: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            param: param.into(),
            code,
        }
    }
}

fn check_body(body: &Map<String, Value>, model: &str) -> Result<(), BodyError> {
    let Some(messages) = body.get("messages").and_then(Value::as_array) else {
        return Err(BodyError::new(
            "missing_required_parameter",
            "messages",
            "Missing required parameter: 'messages'.",
        ));
    };
    if messages.is_empty() {
        return Err(BodyError::new(
            "empty_array",
            "messages",
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
        ));
    }
    for (index, message) in messages.iter().enumerate() {
        let role = message.get("role").and_then(Value::as_str).unwrap_or("");
        if !MESSAGE_ROLES.contains(&role) {
            return Err(BodyError::new(
                "invalid_value",
                format!("messages[{index}].role"),
                format!(
                    "Invalid value: '{role}'. Supported values are: 'system', 'assistant', 'user' and 'developer'."
                ),
            ));
        }
    }
    if let Some(format) = body.get("response_format") {
        check_response_format(format)?;
    }
    if REASONING_MODEL_PREFIXES
        .iter()
        .any(|p| model.starts_with(p))
    {
        if let Some(temperature) = body.get("temperature").and_then(Value::as_f64)
            && temperature != 1.0
        {
            return Err(BodyError::new(
                "unsupported_value",
                "temperature",
                format!(
                    "Unsupported value: 'temperature' does not support {temperature} with this model. Only the default (1) value is supported."
                ),
            ));
        }
        if body.get("max_tokens").is_some_and(|v| !v.is_null()) {
            return Err(BodyError::new(
                "unsupported_parameter",
                "max_tokens",
                "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.",
            ));
        }
    }
    Ok(())
}

fn check_response_format(format: &Value) -> Result<(), BodyError> {
    if format.get("type").and_then(Value::as_str) != Some("json_schema") {
        return Ok(());
    }
    let Some(spec) = format.get("json_schema") else {
        return Err(BodyError::new(
            "missing_required_parameter",
            "response_format.json_schema",
            "Missing required parameter: 'response_format.json_schema'.",
        ));
    };
    let name = spec.get("name").and_then(Value::as_str).unwrap_or("");
    if !is_identifier(name) {
        return Err(BodyError::new(
            "invalid_value",
            "response_format.json_schema.name",
            "Invalid 'response_format.json_schema.name': string does not match pattern. Expected a string that matches the pattern '^[a-zA-Z0-9_-]{1,64}$'.",
        ));
    }
    if spec.get("strict").and_then(Value::as_bool) == Some(true) {
        let schema = spec.get("schema").unwrap_or(&Value::Null);
        if let Some(problem) =
            strict_violation(schema, &mut Vec::new()).or_else(|| size_violation(schema))
        {
            return Err(BodyError::new(
                "invalid_json_schema",
                "response_format",
                format!("Invalid schema for response_format '{name}': {problem}"),
            ));
        }
    }
    Ok(())
}

/// The first strict-mode rule `schema` breaks: every object needs
/// `additionalProperties: false` and `required` listing every property.
fn strict_violation(schema: &Value, context: &mut Vec<String>) -> Option<String> {
    let Value::Object(node) = schema else {
        return None;
    };
    let describe = |context: &[String], rule: String| {
        let path = context
            .iter()
            .map(|part| format!("'{part}'"))
            .collect::<Vec<_>>()
            .join(", ");
        format!("In context=({path}), {rule}")
    };
    let is_object = match node.get("type") {
        Some(Value::String(ty)) => ty == "object",
        Some(Value::Array(types)) => types.iter().any(|t| t == "object"),
        _ => node.contains_key("properties"),
    };
    if is_object {
        if node.get("additionalProperties") != Some(&Value::Bool(false)) {
            return Some(describe(
                context,
                "'additionalProperties' is required to be supplied and to be false.".to_string(),
            ));
        }
        let required: HashSet<&str> = node
            .get("required")
            .and_then(Value::as_array)
            .map(|names| names.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if let Some(properties) = node.get("properties").and_then(Value::as_object)
            && let Some(missing) = properties.keys().find(|k| !required.contains(k.as_str()))
        {
            return Some(describe(
                context,
                format!(
                    "'required' is required to be supplied and to be an array including every key in properties. Missing '{missing}'."
                ),
            ));
        }
    }
    for keyword in ["properties", "$defs", "definitions"] {
        if let Some(children) = node.get(keyword).and_then(Value::as_object) {
            for (name, child) in children {
                context.extend([keyword.to_string(), name.clone()]);
                let found = strict_violation(child, context);
                context.truncate(context.len() - 2);
                if found.is_some() {
                    return found;
                }
            }
        }
    }
    for keyword in ["items", "anyOf", "oneOf", "allOf", "prefixItems"] {
        let children: Vec<&Value> = match node.get(keyword) {
            Some(Value::Array(list)) => list.iter().collect(),
            Some(child @ Value::Object(_)) => vec![child],
            _ => continue,
        };
        for (index, child) in children.into_iter().enumerate() {
            context.extend([keyword.to_string(), index.to_string()]);
            let found = strict_violation(child, context);
            context.truncate(context.len() - 2);
            if found.is_some() {
                return found;
            }
        }
    }
    None
}

/// How deep and how large a strict schema is.
#[derive(Debug, Default)]
struct SchemaSize {
    /// The deepest subschema's nesting level (the root is at 0).
    depth: usize,
    /// Object properties, summed over the whole schema.
    properties: usize,
}

impl SchemaSize {
    /// Measures `schema` at `depth`. Every step into a subschema (a property, `items`,
    /// a union branch, a definition) is one level of nesting, as OpenAI's SDKs count it;
    /// a `$ref` is not followed, so recursive schemas have a finite depth.
    fn measure(&mut self, schema: &Value, depth: usize) {
        let Value::Object(node) = schema else {
            return;
        };
        self.depth = self.depth.max(depth);
        for keyword in ["properties", "$defs", "definitions"] {
            if let Some(children) = node.get(keyword).and_then(Value::as_object) {
                if keyword == "properties" {
                    self.properties += children.len();
                }
                for child in children.values() {
                    self.measure(child, depth + 1);
                }
            }
        }
        for keyword in ["items", "anyOf", "oneOf", "allOf", "prefixItems"] {
            match node.get(keyword) {
                Some(Value::Array(list)) => list.iter().for_each(|c| self.measure(c, depth + 1)),
                Some(child) => self.measure(child, depth + 1),
                None => {}
            }
        }
    }
}

/// The size limits of structured outputs a strict schema breaks (OpenAI, "Supported
/// schemas": up to 5000 object properties in total, up to 10 levels of nesting).
fn size_violation(schema: &Value) -> Option<String> {
    let mut size = SchemaSize::default();
    size.measure(schema, 0);
    if size.depth > MAX_STRICT_NESTING {
        return Some(format!(
            "{} levels of nesting exceeds limit of {MAX_STRICT_NESTING}.",
            size.depth
        ));
    }
    (size.properties > MAX_STRICT_PROPERTIES).then(|| {
        format!(
            "{} object properties in total exceeds limit of {MAX_STRICT_PROPERTIES}.",
            size.properties
        )
    })
}

/// The answer a valid line gets when it runs (or the error it gets).
fn plan_request(line: &InputLine, fate: BatchFate) -> PlannedRequest {
    let error = |status_code: u16,
                 message: &str,
                 kind: &str,
                 param: Option<&str>,
                 code: Option<&str>| {
        PlannedRequest {
            custom_id: line.custom_id.clone(),
            status_code,
            body: json!({"error": {"message": message, "type": kind, "param": param, "code": code}}),
            input_tokens: 0,
            output_tokens: 0,
        }
    };
    let server_error = || {
        error(
            500,
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
            None,
            None,
        )
    };
    if fate == BatchFate::AllFail {
        return server_error();
    }
    if let Err(problem) = check_body(&line.body, &line.model) {
        return error(
            400,
            &problem.message,
            "invalid_request_error",
            Some(&problem.param),
            Some(problem.code),
        );
    }
    let messages = line
        .body
        .get("messages")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let text = messages_text(messages);
    let fault = RequestFault::find_in(&text);
    let schema = line
        .body
        .get("response_format")
        .and_then(|format| format.pointer("/json_schema/schema"))
        .cloned()
        .unwrap_or_else(|| json!({"type": "string"}));
    let seed = format!("{}{text}", line.custom_id);
    let serialized = |answer: Value| match answer {
        Value::String(text) => text,
        other => other.to_string(),
    };
    let (content, refusal, finish_reason) = match fault {
        Some(RequestFault::ProviderError) => {
            return error(
                400,
                "This model's maximum context length is 128000 tokens. However, your messages resulted in 131072 tokens. Please reduce the length of the messages.",
                "invalid_request_error",
                Some("messages"),
                Some("context_length_exceeded"),
            );
        }
        Some(RequestFault::RateLimit) => {
            return error(
                429,
                "Rate limit reached for requests. Please try again later.",
                "requests",
                None,
                Some("rate_limit_exceeded"),
            );
        }
        Some(RequestFault::ServerError) => return server_error(),
        Some(RequestFault::NonJson) => (
            Some(format!(
                "Sure! Here is what I found: {}",
                serialized(answer_for(&schema, &seed))
            )),
            None,
            "stop",
        ),
        Some(RequestFault::SchemaBreak) => (
            Some(serialized(schema_breaking_answer(&schema, &seed))),
            None,
            "stop",
        ),
        Some(RequestFault::Refusal) => (
            None,
            Some("I'm sorry, but I can't help with that request.".to_string()),
            "stop",
        ),
        Some(RequestFault::Truncate) => {
            let full = serialized(answer_for(&schema, &seed));
            (Some(first_half(&full).to_string()), None, "length")
        }
        None => (Some(serialized(answer_for(&schema, &seed))), None, "stop"),
    };
    let input_tokens = tokens(&text);
    let output_tokens = tokens(content.as_deref().or(refusal.as_deref()).unwrap_or(""));
    PlannedRequest {
        custom_id: line.custom_id.clone(),
        status_code: 200,
        body: json!({
            "id": new_id("chatcmpl-"),
            "object": "chat.completion",
            "created": unix_now(),
            "model": line.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": refusal},
                "logprobs": null,
                "finish_reason": finish_reason,
            }],
            "usage": {
                "prompt_tokens": input_tokens,
                "completion_tokens": output_tokens,
                "total_tokens": input_tokens + output_tokens,
            },
        }),
        input_tokens,
        output_tokens,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    use crate::common::testing::{call, call_json, frozen_shared, jsonl, steps_ago};

    const AUTH: (&str, &str) = ("authorization", "Bearer test-key");
    const SCHEMA_NAME: &str = "person";

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "age": {"type": "integer", "minimum": 0, "maximum": 120}
            },
            "required": ["name", "age"],
            "additionalProperties": false
        })
    }

    /// A valid input line asking `text` of `model` with the strict test schema.
    fn line_for(custom_id: &str, model: &str, text: &str) -> Value {
        json!({
            "custom_id": custom_id,
            "method": "POST",
            "url": CHAT_COMPLETIONS,
            "body": {
                "model": model,
                "messages": [{"role": "system", "content": "Extract."}, {"role": "user", "content": text}],
                "response_format": {"type": "json_schema", "json_schema": {
                    "name": SCHEMA_NAME, "strict": true, "schema": schema()
                }}
            }
        })
    }

    fn line(custom_id: &str, text: &str) -> Value {
        line_for(custom_id, "gpt-4o-mini", text)
    }

    fn file_of(lines: &[Value]) -> Vec<u8> {
        lines
            .iter()
            .map(|l| format!("{l}\n"))
            .collect::<String>()
            .into_bytes()
    }

    struct Harness {
        state: Arc<OpenAi>,
        router: Router,
    }

    impl Harness {
        fn new() -> Self {
            let state = Arc::new(OpenAi {
                shared: frozen_shared(),
                store: Mutex::new(Store::default()),
            });
            Self {
                router: routes(state.clone()),
                state,
            }
        }

        async fn upload_raw(
            &self,
            purpose: Option<&str>,
            filename: &str,
            content: &[u8],
        ) -> (StatusCode, Value) {
            let boundary = "emulator-test-boundary";
            let mut body = Vec::new();
            if let Some(purpose) = purpose {
                body.extend_from_slice(
                    format!("--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n{purpose}\r\n")
                        .as_bytes(),
                );
            }
            body.extend_from_slice(
                format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\nContent-Type: application/jsonl\r\n\r\n")
                    .as_bytes(),
            );
            body.extend_from_slice(content);
            body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
            let content_type = format!("multipart/form-data; boundary={boundary}");
            call_json(
                &self.router,
                "POST",
                "/v1/files",
                &[AUTH, ("content-type", &content_type)],
                body,
            )
            .await
        }

        async fn upload(&self, content: &[u8]) -> String {
            let (status, file) = self.upload_raw(Some("batch"), "input.jsonl", content).await;
            assert_eq!(status, StatusCode::OK, "{file}");
            file["id"].as_str().unwrap().to_string()
        }

        async fn create_raw(&self, body: Value) -> (StatusCode, Value) {
            call_json(
                &self.router,
                "POST",
                "/v1/batches",
                &[AUTH, ("content-type", "application/json")],
                body.to_string(),
            )
            .await
        }

        /// Uploads `lines` and creates a batch over them.
        async fn batch_of(&self, lines: &[Value]) -> String {
            let file_id = self.upload(&file_of(lines)).await;
            let (status, batch) = self
                .create_raw(json!({"input_file_id": file_id, "endpoint": CHAT_COMPLETIONS, "completion_window": "24h"}))
                .await;
            assert_eq!(status, StatusCode::OK, "{batch}");
            assert_eq!(batch["status"], "validating");
            batch["id"].as_str().unwrap().to_string()
        }

        async fn get(&self, uri: &str) -> (StatusCode, Value) {
            call_json(&self.router, "GET", uri, &[AUTH], Body::empty()).await
        }

        async fn batch(&self, id: &str) -> Value {
            let (status, batch) = self.get(&format!("/v1/batches/{id}")).await;
            assert_eq!(status, StatusCode::OK, "{batch}");
            batch
        }

        async fn cancel(&self, id: &str) -> (StatusCode, Value) {
            let uri = format!("/v1/batches/{id}/cancel");
            call_json(&self.router, "POST", &uri, &[AUTH], Body::empty()).await
        }

        /// Pretends the batch was created `steps` lifecycle steps ago.
        fn age(&self, id: &str, steps: u32) {
            let mut store = lock(&self.state.store);
            let batch = store.batches.iter_mut().find(|b| b.id == id).unwrap();
            batch.created = steps_ago(steps);
        }

        fn force_end(&self, id: &str) {
            lock(&self.state.shared.forced).insert(id.to_string(), ());
        }

        fn set_fate(&self, fate: BatchFate, partial: f64) {
            let mut plan = lock(&self.state.shared.faults);
            plan.batch_fate = fate;
            plan.partial = partial;
        }

        /// The lines of a results file, or none when the id is null.
        async fn lines_of(&self, file_id: &Value) -> Vec<Value> {
            let Some(id) = file_id.as_str() else {
                return Vec::new();
            };
            let uri = format!("/v1/files/{id}/content");
            let (status, body) = call(&self.router, "GET", &uri, &[AUTH], Body::empty()).await;
            assert_eq!(status, StatusCode::OK);
            jsonl(&body)
        }

        /// Ends the batch; answers it with its output and error lines.
        async fn finished(&self, id: &str) -> (Value, Vec<Value>, Vec<Value>) {
            self.force_end(id);
            let batch = self.batch(id).await;
            let output = self.lines_of(&batch["output_file_id"]).await;
            let errors = self.lines_of(&batch["error_file_id"]).await;
            (batch, output, errors)
        }
    }

    fn by_custom_id(lines: &[Value]) -> HashMap<String, Value> {
        lines
            .iter()
            .map(|l| (l["custom_id"].as_str().unwrap().to_string(), l.clone()))
            .collect()
    }

    fn content_of(line: &Value) -> &Value {
        &line["response"]["body"]["choices"][0]["message"]["content"]
    }

    #[tokio::test]
    async fn every_route_needs_the_bearer_key_and_never_echoes_it() {
        let harness = Harness::new();
        for headers in [vec![], vec![("authorization", "Bearer wrong-key-123")]] {
            let (status, body) = call_json(
                &harness.router,
                "GET",
                "/v1/batches",
                &headers,
                Body::empty(),
            )
            .await;
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            assert_eq!(body["error"]["code"], "invalid_api_key");
            assert_eq!(body["error"]["type"], "invalid_request_error");
            assert!(!body.to_string().contains("wrong-key-123"));
        }
    }

    #[tokio::test]
    async fn uploads_are_checked_and_served_back_byte_for_byte() {
        let harness = Harness::new();
        let content = file_of(&[line("a", "Ann is 31")]);
        let (status, file) = harness
            .upload_raw(Some("batch"), "input.jsonl", &content)
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(file["object"], "file");
        assert_eq!(file["purpose"], "batch");
        assert_eq!(file["status"], "processed");
        assert_eq!(file["bytes"], content.len());
        assert_eq!(file["filename"], "input.jsonl");
        assert!(file.get("status_details").is_some_and(Value::is_null));
        let id = file["id"].as_str().unwrap();
        assert_eq!(harness.get(&format!("/v1/files/{id}")).await.1, file);
        let uri = format!("/v1/files/{id}/content");
        let (_, served) = call(&harness.router, "GET", &uri, &[AUTH], Body::empty()).await;
        assert_eq!(&served[..], &content[..]);

        for (purpose, filename, param) in [
            (None, "input.jsonl", "purpose"),
            (Some("fine-tune"), "input.jsonl", "purpose"),
            (Some("batch"), "input.csv", "file"),
        ] {
            let (status, body) = harness.upload_raw(purpose, filename, &content).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{purpose:?} {filename}");
            assert_eq!(body["error"]["param"], param);
        }
        let (status, _) = harness.get("/v1/files/file-missing").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn create_rejects_bad_parameters_with_openai_errors() {
        let harness = Harness::new();
        let file_id = harness.upload(&file_of(&[line("a", "x")])).await;
        let base = json!({"input_file_id": file_id, "endpoint": CHAT_COMPLETIONS, "completion_window": "24h"});
        let with = |key: &str, value: Value| {
            let mut body = base.clone();
            body[key] = value;
            body
        };
        let many: Map<String, Value> = (0..17).map(|i| (format!("k{i}"), json!("v"))).collect();
        let sixteen: Map<String, Value> = (0..16).map(|i| (format!("k{i}"), json!("v"))).collect();
        let cases = [
            (with("input_file_id", json!("file-nope")), "input_file_id"),
            (with("completion_window", json!("48h")), "completion_window"),
            (with("endpoint", json!("/v1/embeddings")), "endpoint"),
            (with("metadata", Value::Object(many)), "metadata"),
            (with("metadata", json!({"k".repeat(65): "v"})), "metadata"),
            (with("metadata", json!({"k": "v".repeat(513)})), "metadata"),
            (with("metadata", json!({"k": 5})), "metadata"),
        ];
        for (body, param) in cases {
            let (status, error) = harness.create_raw(body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
            assert_eq!(error["error"]["param"], param, "{error}");
        }
        let limits = json!({"k".repeat(64): "v".repeat(512)});
        for metadata in [Value::Object(sixteen), limits] {
            let (status, batch) = harness.create_raw(with("metadata", metadata.clone())).await;
            assert_eq!(status, StatusCode::OK, "{batch}");
            assert_eq!(batch["metadata"], metadata);
        }
    }

    #[tokio::test]
    async fn the_batch_object_carries_every_field() {
        let harness = Harness::new();
        let id = harness.batch_of(&[line("a", "x")]).await;
        let batch = harness.batch(&id).await;
        let fields = [
            "id",
            "object",
            "endpoint",
            "model",
            "errors",
            "input_file_id",
            "completion_window",
            "status",
            "output_file_id",
            "error_file_id",
            "created_at",
            "in_progress_at",
            "expires_at",
            "finalizing_at",
            "completed_at",
            "failed_at",
            "expired_at",
            "cancelling_at",
            "cancelled_at",
            "request_counts",
            "usage",
            "metadata",
        ];
        let object = batch.as_object().unwrap();
        for field in fields {
            assert!(object.contains_key(field), "{field} missing");
        }
        assert_eq!(object.len(), fields.len());
        assert_eq!(batch["object"], "batch");
        assert_eq!(
            batch["expires_at"],
            batch["created_at"].as_i64().unwrap() + DAY_SECONDS
        );
    }

    #[tokio::test]
    async fn a_batch_walks_through_its_stages_and_answers_every_request() {
        let harness = Harness::new();
        let lines: Vec<Value> = (0..4)
            .map(|i| line(&format!("r{i}"), &format!("text {i}")))
            .collect();
        let id = harness.batch_of(&lines).await;
        assert_eq!(harness.batch(&id).await["request_counts"]["total"], 0);

        harness.age(&id, STEP_IN_PROGRESS);
        let batch = harness.batch(&id).await;
        assert_eq!(batch["status"], "in_progress");
        assert!(batch["in_progress_at"].is_i64());
        assert_eq!(batch["model"], "gpt-4o-mini");
        assert_eq!(
            batch["request_counts"],
            json!({"total": 4, "completed": 0, "failed": 0})
        );

        harness.age(&id, STEP_FINALIZING);
        let batch = harness.batch(&id).await;
        assert_eq!(batch["status"], "finalizing");
        assert!(batch["finalizing_at"].is_i64());
        assert!(batch["output_file_id"].is_null());

        harness.age(&id, STEP_DONE);
        let batch = harness.batch(&id).await;
        assert_eq!(batch["status"], "completed");
        assert!(batch["completed_at"].is_i64());
        assert!(batch["error_file_id"].is_null());
        assert_eq!(
            batch["request_counts"],
            json!({"total": 4, "completed": 4, "failed": 0})
        );
        let usage = &batch["usage"];
        assert!(usage["input_tokens"].as_u64().unwrap() > 0);
        assert_eq!(
            usage["total_tokens"].as_u64(),
            Some(
                usage["input_tokens"].as_u64().unwrap() + usage["output_tokens"].as_u64().unwrap()
            )
        );

        let output = harness.lines_of(&batch["output_file_id"]).await;
        let output = by_custom_id(&output);
        assert_eq!(output.len(), 4);
        for i in 0..4 {
            let custom_id = format!("r{i}");
            let answer = &output[&custom_id];
            assert!(answer["id"].as_str().unwrap().starts_with("batch_req_"));
            assert!(answer["error"].is_null());
            assert_eq!(answer["response"]["status_code"], 200);
            assert!(answer["response"]["request_id"].is_string());
            let body = &answer["response"]["body"];
            assert_eq!(body["object"], "chat.completion");
            assert_eq!(body["model"], "gpt-4o-mini");
            assert_eq!(body["choices"][0]["finish_reason"], "stop");
            assert!(body["choices"][0]["message"]["refusal"].is_null());
            assert!(body["usage"]["total_tokens"].as_u64().unwrap() > 0);
            let parsed: Value = serde_json::from_str(content_of(answer).as_str().unwrap()).unwrap();
            let seed = format!("{custom_id}Extract.\ntext {i}");
            assert_eq!(parsed, answer_for(&schema(), &seed));
        }
    }

    #[tokio::test]
    async fn request_fault_markers_shape_each_answer() {
        let harness = Harness::new();
        let kinds = RequestFault::ALL.map(|(name, _)| name);
        let lines: Vec<Value> = kinds
            .iter()
            .map(|kind| line(kind, &format!("Bob [[fault:{kind}]]")))
            .collect();
        let id = harness.batch_of(&lines).await;
        let (batch, output, errors) = harness.finished(&id).await;
        assert_eq!(
            batch["request_counts"],
            json!({"total": 7, "completed": 4, "failed": 3})
        );
        let errors = by_custom_id(&errors);
        for (kind, status, code) in [
            ("provider_error", 400, "context_length_exceeded"),
            ("rate_limit", 429, "rate_limit_exceeded"),
            ("server_error", 500, Value::Null.to_string().as_str()),
        ] {
            let line = &errors[kind];
            assert_eq!(line["response"]["status_code"], status);
            assert!(line["error"].is_null());
            let error = &line["response"]["body"]["error"];
            assert_eq!(error["code"].to_string().trim_matches('"'), code, "{line}");
        }
        let output = by_custom_id(&output);
        let non_json = content_of(&output["non_json"]).as_str().unwrap();
        assert!(serde_json::from_str::<Value>(non_json).is_err());
        let broken: Value =
            serde_json::from_str(content_of(&output["schema_break"]).as_str().unwrap()).unwrap();
        assert!(broken.get("name").is_none());
        let refusal = &output["refusal"]["response"]["body"]["choices"][0];
        assert!(refusal["message"]["content"].is_null());
        assert!(refusal["message"]["refusal"].is_string());
        let truncated = &output["truncate"]["response"]["body"]["choices"][0];
        assert_eq!(truncated["finish_reason"], "length");
        let text = truncated["message"]["content"].as_str().unwrap();
        assert!(serde_json::from_str::<Value>(text).is_err());
    }

    #[tokio::test]
    async fn invalid_bodies_become_400_lines_while_the_batch_completes() {
        let harness = Harness::new();
        let mut empty = line("empty", "x");
        empty["body"]["messages"] = json!([]);
        let mut reasoning = line_for("hot", "o3-mini", "x");
        reasoning["body"]["temperature"] = json!(0.2);
        let id = harness.batch_of(&[line("good", "x"), empty]).await;
        let (batch, output, errors) = harness.finished(&id).await;
        assert_eq!(batch["status"], "completed");
        assert_eq!(output.len(), 1);
        assert_eq!(errors[0]["custom_id"], "empty");
        assert_eq!(errors[0]["response"]["status_code"], 400);
        assert_eq!(
            errors[0]["response"]["body"]["error"]["code"],
            "empty_array"
        );
        let id = harness.batch_of(&[reasoning]).await;
        let (batch, output, errors) = harness.finished(&id).await;
        assert!(batch["output_file_id"].is_null());
        assert!(output.is_empty());
        assert_eq!(
            errors[0]["response"]["body"]["error"]["param"],
            "temperature"
        );
    }

    fn body_error(body: Value, model: &str) -> Option<(&'static str, String)> {
        let Value::Object(body) = body else {
            panic!("a body is an object")
        };
        check_body(&body, model).err().map(|e| (e.code, e.param))
    }

    #[test]
    fn request_bodies_follow_the_api_rules() {
        let user = json!([{"role": "user", "content": "hi"}]);
        let format = |name: &str, schema: Value| json!({"type": "json_schema", "json_schema": {"name": name, "strict": true, "schema": schema}});
        let ok = json!({"messages": user, "response_format": format("ok-name_1", schema())});
        assert_eq!(body_error(ok.clone(), "gpt-4o"), None);
        assert_eq!(body_error(ok, "gpt-5-mini"), None);

        let cases = [
            (json!({}), "gpt-4o", "messages"),
            (json!({"messages": []}), "gpt-4o", "messages"),
            (
                json!({"messages": [{"role": "tool", "content": "x"}]}),
                "gpt-4o",
                "messages[0].role",
            ),
            (
                json!({"messages": user, "response_format": format("bad name", schema())}),
                "gpt-4o",
                "response_format.json_schema.name",
            ),
            (
                json!({"messages": user, "response_format": format(&"a".repeat(65), schema())}),
                "gpt-4o",
                "response_format.json_schema.name",
            ),
            (
                json!({"messages": user, "temperature": 0.5}),
                "o1",
                "temperature",
            ),
            (
                json!({"messages": user, "temperature": 0.5}),
                "gpt-5",
                "temperature",
            ),
            (
                json!({"messages": user, "max_tokens": 10}),
                "o4-mini",
                "max_tokens",
            ),
        ];
        for (body, model, param) in cases {
            let found = body_error(body.clone(), model);
            assert_eq!(
                found.map(|(_, p)| p),
                Some(param.to_string()),
                "{body} {model}"
            );
        }
        let allowed = json!({"messages": user, "temperature": 0.5, "max_tokens": 10});
        assert_eq!(body_error(allowed, "gpt-4o"), None);
        let default_temperature =
            json!({"messages": user, "temperature": 1, "max_completion_tokens": 10});
        assert_eq!(body_error(default_temperature, "o3"), None);
    }

    #[test]
    fn strict_schemas_need_closed_objects_with_every_property_required() {
        let violation = |schema: Value| strict_violation(&schema, &mut Vec::new());
        assert_eq!(violation(schema()), None);
        let open =
            json!({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]});
        assert!(violation(open).unwrap().contains("additionalProperties"));
        let partial = json!({"type": "object", "properties": {"a": {}, "b": {}}, "required": ["a"], "additionalProperties": false});
        assert!(violation(partial).unwrap().contains("Missing 'b'"));
        let map = json!({"type": "object", "additionalProperties": {"type": "string"}});
        assert!(violation(map).is_some());
        let nested = json!({
            "type": "object", "required": ["people"], "additionalProperties": false,
            "properties": {"people": {"type": "array", "items": {"$ref": "#/$defs/p"}}},
            "$defs": {"p": {"type": "object", "properties": {"n": {"type": "string"}}, "required": ["n"]}}
        });
        let found = violation(nested).unwrap();
        assert!(found.contains("In context=('$defs', 'p')"), "{found}");
        let nullable = json!({
            "type": "object", "required": ["a"], "additionalProperties": false,
            "properties": {"a": {"anyOf": [{"type": "null"}, {"type": "object", "properties": {}}]}}
        });
        assert!(violation(nullable).unwrap().contains("'anyOf', '1'"));
    }

    /// A strict object nested `levels` deep: each level holds the next under `child`,
    /// the deepest a string `leaf` (at nesting level `levels`).
    fn nested_strict(levels: usize) -> Value {
        (1..levels).fold(
            json!({"type": "object", "properties": {"leaf": {"type": "string"}}, "required": ["leaf"], "additionalProperties": false}),
            |inner, _| json!({"type": "object", "properties": {"child": inner}, "required": ["child"], "additionalProperties": false}),
        )
    }

    #[test]
    fn strict_schemas_nest_ten_levels_and_hold_five_thousand_properties_at_most() {
        let format = |schema: Value| json!({"type": "json_schema", "json_schema": {"name": "deep", "strict": true, "schema": schema}});
        assert_eq!(check_response_format(&format(nested_strict(10))), Ok(()));
        let refused = check_response_format(&format(nested_strict(11))).unwrap_err();
        assert_eq!(refused.code, "invalid_json_schema");
        assert_eq!(
            refused.message,
            "Invalid schema for response_format 'deep': 11 levels of nesting exceeds limit of 10."
        );
        // Without strict mode the limits do not apply.
        let loose = json!({"type": "json_schema", "json_schema": {"name": "deep", "schema": nested_strict(11)}});
        assert_eq!(check_response_format(&loose), Ok(()));
        // Items and union branches are levels too; a `$ref` is not followed.
        let through_items = json!({"type": "object", "required": ["a"], "additionalProperties": false,
            "properties": {"a": {"type": "array", "items": nested_strict(10)}}});
        assert!(
            size_violation(&through_items)
                .unwrap()
                .starts_with("12 levels")
        );
        let recursive = json!({"type": "object", "required": ["next"], "additionalProperties": false,
            "properties": {"next": {"anyOf": [{"$ref": "#"}, {"type": "null"}]}}});
        assert_eq!(size_violation(&recursive), None);

        let wide = |n: usize| {
            let properties: Map<String, Value> = (0..n)
                .map(|i| (format!("p{i}"), json!({"type": "string"})))
                .collect();
            let required: Vec<String> = properties.keys().cloned().collect();
            json!({"type": "object", "properties": properties, "required": required, "additionalProperties": false})
        };
        assert_eq!(check_response_format(&format(wide(5000))), Ok(()));
        assert_eq!(
            size_violation(&wide(5001)).as_deref(),
            Some("5001 object properties in total exceeds limit of 5000.")
        );
    }

    fn plan_errors(content: &[u8], limits: &InputLimits) -> Vec<(&'static str, Option<usize>)> {
        plan_batch(content, limits, BatchFate::Complete)
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|e| (e.code, e.line))
            .collect()
    }

    #[test]
    fn input_files_are_validated_line_by_line() {
        let good = line("a", "x");
        let mut wrong_url = line("b", "x");
        wrong_url["url"] = json!("/v1/embeddings");
        let mut no_model = line("c", "x");
        no_model["body"].as_object_mut().unwrap().remove("model");
        let mut get = line("d", "x");
        get["method"] = json!("GET");
        let other_model = line_for("e", "gpt-4o", "x");
        let mut content = file_of(&[
            good.clone(),
            good.clone(),
            wrong_url,
            no_model,
            get,
            other_model,
        ]);
        content.extend_from_slice(b"{not json\n\n");
        content.extend_from_slice(b"[1, 2]\n");
        let errors = plan_errors(&content, &INPUT_LIMITS);
        assert_eq!(
            errors,
            vec![
                ("duplicate_custom_id", Some(2)),
                ("url_mismatch", Some(3)),
                ("missing_required_parameter", Some(4)),
                ("invalid_method", Some(5)),
                ("model_mismatch", Some(6)),
                ("invalid_json_line", Some(7)),
                ("invalid_json_line", Some(9)),
            ]
        );
        assert_eq!(plan_errors(b"", &INPUT_LIMITS), vec![("empty_file", None)]);
        assert_eq!(
            plan_errors(b"\n \n", &INPUT_LIMITS),
            vec![("empty_file", None)]
        );
        let three = file_of(&[line("a", "x"), line("b", "x"), line("c", "x")]);
        let small = InputLimits {
            max_requests: 2,
            max_bytes: 1 << 20,
        };
        assert_eq!(plan_errors(&three, &small), vec![("too_many_tasks", None)]);
        let tiny = InputLimits {
            max_requests: 10,
            max_bytes: 100,
        };
        assert_eq!(plan_errors(&three, &tiny), vec![("file_too_large", None)]);
        let plan = plan_batch(&three, &INPUT_LIMITS, BatchFate::Complete).unwrap();
        assert_eq!(plan.requests.len(), 3);
    }

    #[tokio::test]
    async fn an_invalid_file_fails_the_batch_with_its_errors() {
        let harness = Harness::new();
        let id = harness.batch_of(&[line("a", "x"), line("a", "y")]).await;
        harness.age(&id, STEP_IN_PROGRESS);
        let batch = harness.batch(&id).await;
        assert_eq!(batch["status"], "failed");
        assert!(batch["failed_at"].is_i64());
        assert!(batch["output_file_id"].is_null() && batch["error_file_id"].is_null());
        assert_eq!(
            batch["errors"],
            json!({"object": "list", "data": [{
                "code": "duplicate_custom_id",
                "message": "The custom_id 'a' is used more than once in the input file.",
                "param": "custom_id",
                "line": 2,
            }]})
        );
    }

    #[tokio::test]
    async fn fates_expire_fail_or_fail_every_request() {
        let harness = Harness::new();
        let lines: Vec<Value> = (0..4).map(|i| line(&format!("r{i}"), "x")).collect();

        harness.set_fate(BatchFate::Expire, 0.5);
        let id = harness.batch_of(&lines).await;
        let (batch, output, errors) = harness.finished(&id).await;
        assert_eq!(batch["status"], "expired");
        assert!(batch["expired_at"].is_i64());
        assert_eq!(
            batch["request_counts"],
            json!({"total": 4, "completed": 2, "failed": 2})
        );
        assert_eq!(output.len(), 2);
        for line in &errors {
            assert!(line["response"].is_null());
            assert_eq!(line["error"]["code"], "batch_expired");
        }
        let mut seen: Vec<Value> = output
            .iter()
            .chain(&errors)
            .map(|l| l["custom_id"].clone())
            .collect();
        seen.sort_by_key(Value::to_string);
        assert_eq!(seen, vec!["r0", "r1", "r2", "r3"]);

        harness.set_fate(BatchFate::FailValidation, 0.5);
        let id = harness.batch_of(&lines).await;
        let (batch, _, _) = harness.finished(&id).await;
        assert_eq!(batch["status"], "failed");
        assert_eq!(batch["errors"]["data"][0]["code"], "token_limit_exceeded");

        harness.set_fate(BatchFate::AllFail, 0.5);
        let id = harness.batch_of(&lines).await;
        let (batch, output, errors) = harness.finished(&id).await;
        assert_eq!(batch["status"], "completed");
        assert!(batch["output_file_id"].is_null());
        assert!(output.is_empty());
        assert_eq!(errors.len(), 4);
        assert!(errors.iter().all(|l| l["response"]["status_code"] == 500));
    }

    #[tokio::test]
    async fn cancel_keeps_what_ran_and_reports_the_rest() {
        let harness = Harness::new();
        let lines: Vec<Value> = (0..4).map(|i| line(&format!("r{i}"), "x")).collect();
        let id = harness.batch_of(&lines).await;
        harness.age(&id, STEP_IN_PROGRESS);
        let (status, batch) = harness.cancel(&id).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(batch["status"], "cancelling");
        assert!(batch["cancelling_at"].is_i64());
        let (batch, output, errors) = harness.finished(&id).await;
        assert_eq!(batch["status"], "cancelled");
        assert!(batch["cancelled_at"].is_i64());
        assert_eq!(output.len(), 2);
        assert_eq!(errors.len(), 2);
        assert!(
            errors
                .iter()
                .all(|l| l["error"]["code"] == "batch_cancelled")
        );
        let (status, error) = harness.cancel(&id).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(error["error"]["type"], "invalid_request_error");
        assert_eq!(harness.cancel("batch_nope").await.0, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn lists_page_newest_first() {
        let harness = Harness::new();
        let file_id = harness.upload(&file_of(&[line("a", "x")])).await;
        let mut created = Vec::new();
        for _ in 0..25 {
            let (_, batch) = harness
                .create_raw(json!({"input_file_id": file_id, "endpoint": CHAT_COMPLETIONS, "completion_window": "24h"}))
                .await;
            created.push(batch["id"].clone());
        }
        created.reverse();
        let (_, first) = harness.get("/v1/batches").await;
        assert_eq!(first["object"], "list");
        assert_eq!(first["data"].as_array().unwrap().len(), 20);
        assert_eq!(first["has_more"], true);
        let mut listed = Vec::new();
        let mut uri = "/v1/batches?limit=10".to_string();
        loop {
            let (status, page) = harness.get(&uri).await;
            assert_eq!(status, StatusCode::OK);
            let data = page["data"].as_array().unwrap();
            assert_eq!(page["first_id"], data[0]["id"]);
            assert_eq!(page["last_id"], data[data.len() - 1]["id"]);
            listed.extend(data.iter().map(|b| b["id"].clone()));
            if page["has_more"] == false {
                break;
            }
            uri = format!(
                "/v1/batches?limit=10&after={}",
                page["last_id"].as_str().unwrap()
            );
        }
        assert_eq!(listed, created);
        for limit in ["0", "101", "x"] {
            let (status, _) = harness.get(&format!("/v1/batches?limit={limit}")).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "limit {limit}");
        }
    }

    #[tokio::test]
    async fn results_downloads_honour_the_planned_drop() {
        let harness = Harness::new();
        let lines: Vec<Value> = (0..20).map(|i| line(&format!("r{i}"), "x")).collect();
        let id = harness.batch_of(&lines).await;
        let (batch, output, _) = harness.finished(&id).await;
        assert_eq!(output.len(), 20);
        lock(&harness.state.shared.faults).drop_results_after_bytes = Some(100);
        let uri = format!(
            "/v1/files/{}/content",
            batch["output_file_id"].as_str().unwrap()
        );
        let request = axum::http::Request::get(uri)
            .header(AUTH.0, AUTH.1)
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

    #[tokio::test]
    async fn a_preloaded_batch_is_completed_with_the_given_output() {
        let harness = Harness::new();
        let output = b"{\"custom_id\":\"a\"}\n\n{\"custom_id\":\"b\"}\n";
        let (status, created) = call_json(
            &harness.router,
            "POST",
            "/_emulator/openai/batches",
            &[],
            &output[..],
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{created}");
        let batch = harness.batch(created["id"].as_str().unwrap()).await;
        assert_eq!(batch["status"], "completed");
        assert_eq!(
            batch["request_counts"],
            json!({"total": 2, "completed": 2, "failed": 0})
        );
        assert!(batch["error_file_id"].is_null());
        let uri = format!(
            "/v1/files/{}/content",
            batch["output_file_id"].as_str().unwrap()
        );
        let (status, served) = call(&harness.router, "GET", &uri, &[AUTH], Body::empty()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(&served[..], &output[..]);
    }
}
