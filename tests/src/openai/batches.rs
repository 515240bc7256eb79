//! OpenAI batch lifecycle: the batch object, its states, and create, retrieve, cancel and list.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::common::{BatchFate, Shared, lock, new_id, page_limit, ran_count, unix_now};

use crate::model::{Api, Usage, prompt_tokens};
use crate::quota::{Demand, Quota};

use super::files::StoredFile;

use super::endpoints::{Endpoint, EndpointRefusal};
use super::results::{Plan, answered_line, not_run_line, store_result_file};
use super::validation::{InputLimits, InputLine, LineError, plan_batch};
use super::{ApiError, ApiResult, OpenAi, Store};

pub(super) const INPUT_LIMITS: InputLimits = InputLimits {
    max_requests: 50_000,
    max_bytes: 200 * 1024 * 1024,
};
pub(super) const DAY_SECONDS: i64 = 24 * 60 * 60;
const MAX_METADATA_PAIRS: usize = 16;
const MAX_METADATA_KEY_CHARS: usize = 64;
const MAX_METADATA_VALUE_CHARS: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Status {
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
    pub(super) fn as_str(self) -> &'static str {
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

/// Files and counts of a batch that reached its end.
pub(super) struct Outcome {
    pub(super) output_file_id: Option<String>,
    pub(super) error_file_id: Option<String>,
    pub(super) completed: usize,
    pub(super) failed: usize,
    /// Tokens used by the requests that ran.
    pub(super) usage: Usage,
}

/// Why requests that did not run are reported without a response.
#[derive(Debug, Clone, Copy)]
pub(super) enum NotRun {
    Expired,
    Cancelled,
}

pub(super) struct Cancel {
    requested: Instant,
    /// Requests that ran before the cancel took effect.
    ran: usize,
}

#[derive(Default)]
pub(super) struct Timestamps {
    pub(super) in_progress_at: Option<i64>,
    pub(super) finalizing_at: Option<i64>,
    pub(super) completed_at: Option<i64>,
    pub(super) failed_at: Option<i64>,
    pub(super) expired_at: Option<i64>,
    pub(super) cancelling_at: Option<i64>,
    pub(super) cancelled_at: Option<i64>,
}

pub(super) struct BatchRecord {
    pub(super) id: String,
    pub(super) endpoint: Endpoint,
    pub(super) input_file_id: String,
    pub(super) completion_window: String,
    pub(super) metadata: Option<Map<String, Value>>,
    pub(super) created: Instant,
    pub(super) created_at: i64,
    pub(super) fate: BatchFate,
    pub(super) partial: f64,
    pub(super) plan: Result<Plan, Vec<LineError>>,
    pub(super) status: Status,
    times: Timestamps,
    pub(super) cancel: Option<Cancel>,
    outcome: Option<Outcome>,
    /// Its input tokens, counted at create against the enqueued-token quota (0 when
    /// no limit was set then, or when it did not fit).
    pub(super) enqueued_tokens: u64,
}

/// Lifecycle steps: validating until step 1, in progress until 2, finalizing until 3.
pub(super) const STEP_IN_PROGRESS: u32 = 1;

pub(super) const STEP_FINALIZING: u32 = 2;

pub(super) const STEP_DONE: u32 = 3;

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
                self.finish(shared, ran, NotRun::Cancelled, files);
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
                self.finish(
                    shared,
                    ran_count(total, self.partial),
                    NotRun::Expired,
                    files,
                );
                self.status = Status::Expired;
                self.times.expired_at = Some(now);
            } else {
                self.finish(shared, total, NotRun::Expired, files);
                self.status = Status::Completed;
                self.times.completed_at = Some(now);
            }
        }
    }

    pub(super) fn total(&self) -> usize {
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

    /// Writes the output and error files, each line in the shuffled results order: the
    /// first `ran` requests answered, the rest are reported as never run.
    fn finish(
        &mut self,
        shared: &Shared,
        ran: usize,
        not_run: NotRun,
        files: &mut HashMap<String, StoredFile>,
    ) {
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
            usage: Usage::default(),
        };
        for index in shared.results_order(&self.id, plan.requests.len()) {
            let request = &plan.requests[index];
            let line = if index < ran {
                outcome.usage += request.usage;
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

    pub(super) fn request_counts(&self) -> Value {
        let (total, completed, failed) = match (&self.outcome, self.status) {
            (Some(outcome), _) => (self.total(), outcome.completed, outcome.failed),
            (None, Status::Validating | Status::Failed) => (0, 0, 0),
            (None, _) => (self.total(), 0, 0),
        };
        json!({"total": total, "completed": completed, "failed": failed})
    }

    pub(super) fn to_json(&self) -> Value {
        let usage = self.outcome.as_ref().map(|o| o.usage).unwrap_or_default();
        let (input_tokens, output_tokens) = (usage.prompt(), usage.output);
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
            "endpoint": self.endpoint.as_str(),
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
                "input_tokens_details": {"cached_tokens": usage.cache_read},
                "output_tokens": output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": input_tokens + output_tokens,
            },
            "metadata": self.metadata,
        })
    }
}

/// The create-call parameters, checked before the input file is looked at.
pub(super) struct CreateParams {
    pub(super) input_file_id: String,
    pub(super) endpoint: Endpoint,
    pub(super) completion_window: String,
    pub(super) metadata: Option<Map<String, Value>>,
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
    let endpoint = Endpoint::parse(&endpoint).map_err(|refusal| {
        let message = match refusal {
            EndpointRefusal::Unknown => format!(
                "Invalid value: '{endpoint}'. Supported values are: {}.",
                Endpoint::supported_values()
            ),
            // The real API would take it: say plainly that only the emulator refuses.
            EndpointRefusal::NotEmulated => format!(
                "The emulator does not run batches for '{endpoint}' (the API does); it runs '/v1/responses', '/v1/chat/completions', '/v1/embeddings' and '/v1/completions'."
            ),
        };
        ApiError::invalid(message, Some("endpoint"))
    })?;
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
        endpoint,
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

pub(super) async fn create_batch(
    State(state): State<Arc<OpenAi>>,
    body: Bytes,
) -> ApiResult<Response> {
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
    let _gate = state.shared.quotas.gate(Quota::OpenAiEnqueuedTokens).await;
    // Parsing a file of up to 200 MB is CPU work: keep it off the async workers.
    let id = new_id("batch_");
    let (openai, batch_id, endpoint) = (state.clone(), id.clone(), params.endpoint);
    let (plan, enqueued_tokens) = tokio::task::spawn_blocking(move || {
        let mut enqueued_tokens = 0;
        let plan = plan_batch(
            &content,
            endpoint,
            &INPUT_LIMITS,
            fate,
            &openai.shared,
            &batch_id,
            |model, lines| {
                enqueued_tokens = admit(&openai, endpoint, model, lines)?;
                Ok(())
            },
        );
        (plan, enqueued_tokens)
    })
    .await
    .map_err(|e| ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        kind: "server_error",
        ..ApiError::invalid(format!("validation task failed: {e}"), None)
    })?;
    let mut batch = BatchRecord {
        id,
        endpoint: params.endpoint,
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
        enqueued_tokens,
    };
    let mut store = lock(&state.store);
    batch.refresh(&state.shared, &mut store.files);
    let answer = batch.to_json();
    store.batches.push(batch);
    Ok(axum::Json(answer).into_response())
}

/// The enqueued-token quota for a valid input file of `model`: its tokens, or the
/// error that fails the batch. A batch's tokens are what its requests would report as
/// `usage.prompt_tokens`; the enqueued ones are those of the batches of the same model
/// that have not ended (a batch that did not fit holds none).
fn admit(
    state: &OpenAi,
    endpoint: Endpoint,
    model: &str,
    lines: &[InputLine],
) -> Result<u64, LineError> {
    let measure = || {
        // A line that will fail its own checks still holds its tokens while queued.
        let amount = lines
            .iter()
            .map(|line| {
                let chat = endpoint.chat_body(&line.body).ok().flatten();
                prompt_tokens(
                    Api::OpenAi,
                    &chat.unwrap_or(Value::Object(line.body.clone())),
                )
            })
            .sum();
        let mut store = lock(&state.store);
        let Store { files, batches } = &mut *store;
        let mut in_use = 0;
        for batch in batches.iter_mut() {
            batch.refresh(&state.shared, files);
            let same_model = batch.plan.as_ref().is_ok_and(|plan| plan.model == model);
            if same_model && !batch.status.is_terminal() {
                in_use += batch.enqueued_tokens;
            }
        }
        Demand { in_use, amount }
    };
    state
        .shared
        .quotas
        .admit(Quota::OpenAiEnqueuedTokens, measure)
        .map_err(|refusal| {
            LineError::whole_file(
                "token_limit_exceeded",
                format!(
                    "Enqueued token limit reached for {model} in organization org-emulator. Limit: {} enqueued tokens. Please try again once some in_progress batches have been completed.",
                    refusal.limit
                ),
            )
        })
}

/// `POST /_emulator/openai/batches` (control endpoint, no key) with a results JSONL
/// body: adds a batch that has already completed with that body as its output file,
/// so that a benchmark can download a large file without running as many requests.
/// Answers the batch object.
pub(super) async fn preload_finished_batch(
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
        endpoint: Endpoint::ChatCompletions,
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
            usage: Usage::default(),
        }),
        enqueued_tokens: 0,
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

pub(super) async fn get_batch(
    State(state): State<Arc<OpenAi>>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    with_batch(&state, &id, |batch| Ok(axum::Json(batch.to_json())))
}

pub(super) async fn cancel_batch(
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

pub(super) async fn list_batches(
    State(state): State<Arc<OpenAi>>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<axum::Json<Value>> {
    let limit = page_limit(&query, DEFAULT_PAGE, MAX_PAGE).map_err(|text| {
        ApiError::invalid(
            format!("Invalid 'limit': {text}. Expected an integer between 1 and {MAX_PAGE}."),
            Some("limit"),
        )
    })?;
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
