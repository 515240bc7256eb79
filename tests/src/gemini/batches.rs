//! Gemini batch lifecycle: the batch operation, its states, and create, get, cancel, delete and list.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::{Extension, Json};
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::common::{BatchFate, lock};
use crate::google::{Code, GoogleError, field, json_body, page, steps, timestamp};
use crate::quota::{Demand, Quota};

use super::validation::{input_tokens, parse_input};
use super::{ApiVersion, Gemini};
use crate::catalogue::is_gemini_model;

/// Inline requests: the whole create call is limited to 20 MB.
pub(super) const INLINE_LIMIT_BYTES: usize = 20 * 1024 * 1024;
const DEFAULT_PAGE_SIZE: usize = 50;
const MAX_PAGE_SIZE: usize = 1000;

pub(super) const PENDING: &str = "BATCH_STATE_PENDING";

pub(super) const RUNNING: &str = "BATCH_STATE_RUNNING";

pub(super) const SUCCEEDED: &str = "BATCH_STATE_SUCCEEDED";

pub(super) const FAILED: &str = "BATCH_STATE_FAILED";

pub(super) const CANCELLED: &str = "BATCH_STATE_CANCELLED";

pub(super) const EXPIRED: &str = "BATCH_STATE_EXPIRED";

pub(super) const BATCH_TYPE: &str =
    "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch";

pub(super) const OUTPUT_TYPE: &str =
    "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput";

/// Lifecycle step after which a batch ends (PENDING at step 0, RUNNING at 1 and 2).
const LAST_RUNNING_STEP: u32 = 2;

/// The key (file input) or metadata (inline input) a request is reported under.
pub(super) enum Tag {
    Key(String),
    Metadata(Option<Value>),
}

pub(super) enum Input {
    /// `files/{id}`.
    File(String),
    /// Each inline request with its optional `metadata`.
    Inline(Vec<(Option<Value>, Value)>),
}

pub(super) struct Batch {
    pub(super) id: String,
    pub(super) sequence: u64,
    pub(super) model_id: String,
    pub(super) display_name: String,
    pub(super) input_config: Value,
    pub(super) input: Input,
    pub(super) request_count: usize,
    pub(super) created: Instant,
    pub(super) create_time: OffsetDateTime,
    pub(super) fate: BatchFate,
    pub(super) partial: f64,
    /// The lifecycle step at which cancellation was asked for.
    cancelled_at_step: Option<u32>,
    pub(super) state: &'static str,
    update_time: String,
    end_time: Option<String>,
    pub(super) end: Option<Ended>,
    /// Its prompt tokens, counted at create against the enqueued-token quota (0 when no
    /// limit was set then).
    pub(super) enqueued_tokens: u64,
}

/// How a batch ended.
pub(super) struct Ended {
    pub(super) error: Option<GoogleError>,
    pub(super) output: Option<Output>,
    pub(super) stats: Stats,
}

pub(super) enum Output {
    ResponsesFile(String),
    Inline(Vec<Value>),
}

#[derive(Default)]
pub(super) struct Stats {
    pub(super) successful: usize,
    pub(super) failed: usize,
    pub(super) pending: usize,
}

/// `POST /v1beta/models/{model}:batchGenerateContent`. A model the API does not serve
/// ([`crate::catalogue::GEMINI_MODELS`]) is 404 `NOT_FOUND`, before the body is read.
pub(super) async fn model_method(
    State(gemini): State<Arc<Gemini>>,
    Path(model): Path<String>,
    version: Option<Extension<ApiVersion>>,
    body: Bytes,
) -> Result<Json<Value>, GoogleError> {
    let Some((model_id, "batchGenerateContent")) = model.split_once(':') else {
        return Err(GoogleError::not_found(format!(
            "Method not found: models/{model}"
        )));
    };
    if !is_gemini_model(model_id) {
        let version = ApiVersion::of(version);
        return Err(GoogleError::not_found(format!(
            "models/{model_id} is not found for API version {version}, or is not supported for batchGenerateContent. Call ListModels to see the list of available models and their supported methods."
        )));
    }
    if body.len() > INLINE_LIMIT_BYTES {
        return Err(GoogleError::invalid(format!(
            "Request payload size exceeds the limit: {INLINE_LIMIT_BYTES} bytes."
        )));
    }
    let request = json_body(&body)?;
    let batch = request
        .get("batch")
        .filter(|batch| batch.is_object())
        .ok_or_else(|| {
            GoogleError::invalid("* BatchGenerateContentRequest.batch: batch is required")
        })?;
    let display_name = field(batch, "displayName")
        .and_then(Value::as_str)
        .filter(|name| !name.trim().is_empty())
        .ok_or_else(|| {
            GoogleError::invalid("* GenerateContentBatch.display_name: display_name is required")
        })?;
    let input_config = field(batch, "inputConfig")
        .filter(|config| config.is_object())
        .ok_or_else(|| {
            GoogleError::invalid("* GenerateContentBatch.input_config: input_config is required")
        })?;
    let (input, request_count) = parse_input(&gemini, input_config)?;
    // The batches stay locked from counting the enqueued tokens to storing this batch.
    let mut batches = lock(&gemini.batches);
    let enqueued_tokens = admit(&gemini, &mut batches, model_id, &input)?;
    let (fate, partial) = gemini.shared.fate_for_new_batch();
    let create_time = OffsetDateTime::now_utc();
    let batch = Batch {
        id: uuid::Uuid::new_v4().simple().to_string(),
        sequence: gemini.sequence.fetch_add(1, Ordering::Relaxed),
        model_id: model_id.to_string(),
        display_name: display_name.to_string(),
        input_config: input_config.clone(),
        input,
        request_count,
        created: Instant::now(),
        create_time,
        fate,
        partial,
        cancelled_at_step: None,
        state: PENDING,
        update_time: timestamp(create_time),
        end_time: None,
        end: None,
        enqueued_tokens,
    };
    let answer = batch.operation();
    batches.insert(batch.id.clone(), batch);
    Ok(Json(answer))
}

/// The enqueued-token quota of `model_id` for a batch over `input`: the prompt tokens
/// of the batches of that model that have not ended plus its own must stay within the
/// limit, else 429. Answers its tokens.
fn admit(
    gemini: &Gemini,
    batches: &mut HashMap<String, Batch>,
    model_id: &str,
    input: &Input,
) -> Result<u64, GoogleError> {
    let measure = || {
        let mut in_use = 0;
        for batch in batches.values_mut().filter(|b| b.model_id == model_id) {
            batch.refresh(gemini);
            if !batch.is_over() {
                in_use += batch.enqueued_tokens;
            }
        }
        Demand {
            in_use,
            amount: input_tokens(gemini, input),
        }
    };
    gemini
        .shared
        .quotas
        .admit(Quota::GeminiEnqueuedTokens, measure)
        .map_err(|refusal| {
            GoogleError::new(
                Code::ResourceExhausted,
                format!(
                    "Enqueued token limit exceeded for models/{model_id}: the batch holds {} tokens, {} are enqueued, the limit is {}. Please try again once some running batches have ended.",
                    refusal.amount, refusal.in_use, refusal.limit
                ),
            )
        })
}

impl Batch {
    pub(super) fn name(&self) -> String {
        format!("batches/{}", self.id)
    }

    fn observe(&mut self, state: &'static str) {
        if self.state != state {
            self.state = state;
            self.update_time = timestamp(OffsetDateTime::now_utc());
        }
    }

    fn is_over(&self) -> bool {
        self.end.is_some()
    }

    pub(super) fn steps(&self, gemini: &Gemini) -> u32 {
        steps(&gemini.shared, &[&self.id, &self.name()], self.created)
    }

    /// Moves the batch along its lifecycle; runs it when it reaches its end.
    fn refresh(&mut self, gemini: &Gemini) {
        if self.is_over() {
            return;
        }
        let steps = self.steps(gemini);
        match self.cancelled_at_step {
            Some(at) => self.finish(gemini, Some(at)),
            None if steps > LAST_RUNNING_STEP => self.finish(gemini, None),
            None if steps == 0 => self.observe(PENDING),
            None => self.observe(RUNNING),
        }
    }

    fn finish(&mut self, gemini: &Gemini, cancelled_at: Option<u32>) {
        let (state, ended) = match self.run(gemini, cancelled_at) {
            Ok(run) => run,
            Err(error) => (
                FAILED,
                Ended {
                    error: Some(error),
                    output: None,
                    stats: Stats {
                        pending: self.request_count,
                        ..Stats::default()
                    },
                },
            ),
        };
        self.observe(state);
        self.end_time = Some(self.update_time.clone());
        self.end = Some(ended);
    }

    fn stats_json(&self) -> Value {
        let stats = match &self.end {
            Some(end) => &end.stats,
            None => &Stats {
                pending: self.request_count,
                ..Stats::default()
            },
        };
        let mut answer = json!({"requestCount": self.request_count.to_string()});
        for (name, count) in [
            ("successfulRequestCount", stats.successful),
            ("failedRequestCount", stats.failed),
            ("pendingRequestCount", stats.pending),
        ] {
            // Zero counts are left out, as proto3 JSON does.
            if count > 0 {
                answer[name] = json!(count.to_string());
            }
        }
        answer
    }

    /// The batch as a long-running operation.
    pub(super) fn operation(&self) -> Value {
        let name = self.name();
        let mut metadata = json!({
            "@type": BATCH_TYPE,
            "model": format!("models/{}", self.model_id),
            "displayName": self.display_name,
            "inputConfig": self.input_config,
            "createTime": timestamp(self.create_time),
            "updateTime": self.update_time,
            "batchStats": self.stats_json(),
            "state": self.state,
            "name": name,
        });
        let mut operation = json!({"name": name});
        if let Some(end_time) = &self.end_time {
            metadata["endTime"] = json!(end_time);
        }
        if let Some(end) = &self.end {
            operation["done"] = json!(true);
            if let Some(error) = &end.error {
                operation["error"] = error.rpc_status();
            }
            if let Some(output) = &end.output {
                let output = match output {
                    Output::ResponsesFile(file) => json!({"responsesFile": file}),
                    Output::Inline(responses) => {
                        json!({"inlinedResponses": {"inlinedResponses": responses}})
                    }
                };
                metadata["output"] = output.clone();
                let mut response = output;
                response["@type"] = json!(OUTPUT_TYPE);
                operation["response"] = response;
            }
        }
        operation["metadata"] = metadata;
        operation
    }
}

/// The batch `{id}`, moved along its lifecycle.
fn with_batch<T>(
    gemini: &Gemini,
    id: &str,
    action: impl FnOnce(&mut Batch) -> Result<T, GoogleError>,
) -> Result<T, GoogleError> {
    let mut batches = lock(&gemini.batches);
    let batch = batches
        .get_mut(id)
        .ok_or_else(|| GoogleError::not_found(format!("Batch batches/{id} not found.")))?;
    batch.refresh(gemini);
    action(batch)
}

pub(super) async fn get_batch(
    State(gemini): State<Arc<Gemini>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, GoogleError> {
    with_batch(&gemini, &id, |batch| Ok(Json(batch.operation())))
}

/// `POST /v1beta/batches/{id}:cancel`.
pub(super) async fn batch_method(
    State(gemini): State<Arc<Gemini>>,
    Path(batch): Path<String>,
) -> Result<Json<Value>, GoogleError> {
    let Some((id, "cancel")) = batch.split_once(':') else {
        return Err(GoogleError::not_found(format!(
            "Method not found: batches/{batch}"
        )));
    };
    with_batch(&gemini, id, |batch| {
        if batch.is_over() {
            return Err(GoogleError::failed_precondition(format!(
                "Batch {} is in state {} and cannot be cancelled.",
                batch.name(),
                batch.state
            )));
        }
        batch.cancelled_at_step = Some(batch.steps(&gemini));
        Ok(Json(json!({})))
    })
}

/// `DELETE /v1beta/batches/{id}`: forgets the batch (its results file stays).
pub(super) async fn delete_batch(
    State(gemini): State<Arc<Gemini>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, GoogleError> {
    lock(&gemini.batches)
        .remove(&id)
        .map(|_| Json(json!({})))
        .ok_or_else(|| GoogleError::not_found(format!("Batch batches/{id} not found.")))
}

/// `GET /v1beta/batches?pageSize=&pageToken=`, newest first.
pub(super) async fn list_batches(
    State(gemini): State<Arc<Gemini>>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, GoogleError> {
    let mut batches = lock(&gemini.batches);
    let mut all: Vec<&mut Batch> = batches.values_mut().collect();
    all.sort_by_key(|batch| std::cmp::Reverse(batch.sequence));
    let newest_first = all
        .into_iter()
        .map(|batch| {
            batch.refresh(&gemini);
            (batch.sequence, batch.operation())
        })
        .collect();
    let (operations, next) = page(newest_first, &query, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)?;
    let mut answer = json!({});
    if !operations.is_empty() {
        answer["operations"] = Value::Array(operations);
    }
    if let Some(next) = next {
        answer["nextPageToken"] = json!(next);
    }
    Ok(Json(answer))
}
