//! Anthropic Message Batch lifecycle: the batch object, create, retrieve, cancel, delete and list.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::common::{BatchFate, Shared, lock, new_id, page_limit, ran_count, rfc3339};
use crate::quota::{Demand, Quota};

use super::results::{PlannedResult, ResultKind, results_url};
use super::validation::plan_batch;
use super::{Anthropic, ApiError, ApiResult};

pub(super) const MAX_BODY_BYTES: usize = 256 * 1024 * 1024;
const DEFAULT_PAGE: usize = 20;
const MAX_PAGE: usize = 1000;
/// A batch ends this many lifecycle steps after creation (or one step after a cancel).
const STEPS_TO_END: u32 = 2;

pub(super) struct Cancel {
    requested: Instant,
    initiated_at: String,
    /// Requests that ran before the cancel took effect.
    ran: usize,
}

pub(super) struct Ended {
    pub(super) at: String,
    counts: HashMap<&'static str, usize>,
    pub(super) results: Bytes,
}

pub(super) struct MessageBatch {
    pub(super) id: String,
    pub(super) created: Instant,
    created_at: OffsetDateTime,
    pub(super) fate: BatchFate,
    pub(super) partial: f64,
    pub(super) planned: Vec<PlannedResult>,
    pub(super) cancel: Option<Cancel>,
    pub(super) ended: Option<Ended>,
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
                self.end(shared, ran, ResultKind::Canceled);
            }
            return;
        }
        if shared.steps_since(&self.id, self.created) >= STEPS_TO_END {
            match self.fate {
                BatchFate::Expire => {
                    self.end(shared, ran_count(total, self.partial), ResultKind::Expired)
                }
                _ => self.end(shared, total, ResultKind::Expired),
            }
        }
    }

    /// Writes the results in the shuffled results order: the first `ran` requests as
    /// planned, the rest as `not_run`.
    pub(super) fn end(&mut self, shared: &Shared, ran: usize, not_run: ResultKind) {
        let mut counts = HashMap::new();
        let mut results = Vec::new();
        for index in shared.results_order(&self.id, self.planned.len()) {
            let planned = &self.planned[index];
            let (kind, line) = if index < ran {
                (planned.kind, planned.ran_line())
            } else {
                let result = json!({"type": not_run.as_str()});
                let line = json!({"custom_id": planned.custom_id, "result": result});
                (not_run, line.to_string())
            };
            *counts.entry(kind.as_str()).or_insert(0) += 1;
            results.extend_from_slice(line.as_bytes());
            results.push(b'\n');
        }
        self.ended = Some(Ended {
            at: rfc3339(OffsetDateTime::now_utc()),
            counts,
            results: Bytes::from(results),
        });
    }

    pub(super) fn processing_status(&self) -> &'static str {
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

pub(super) async fn create_batch(
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
    let _gate = state
        .shared
        .quotas
        .gate(Quota::AnthropicQueueRequests)
        .await;
    // Checking up to 256 MB of requests is CPU work: keep it off the async workers.
    let id = new_id("msgbatch_");
    let (anthropic, batch_id) = (state.clone(), id.clone());
    let planned = tokio::task::spawn_blocking(move || {
        plan_batch(&body, fate, &anthropic.shared, &batch_id, |count| {
            admit(&anthropic, count)
        })
    })
    .await
    .map_err(|e| ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        kind: "api_error",
        message: format!("validation task failed: {e}"),
    })??;
    let mut batch = MessageBatch {
        id,
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

/// The processing-queue quota for a batch of `count` requests: the requests of the
/// batches still `in_progress` plus these must stay within the limit, else 429.
fn admit(state: &Anthropic, count: usize) -> ApiResult<()> {
    let measure = || {
        let mut batches = lock(&state.batches);
        let mut in_use = 0;
        for batch in batches.iter_mut() {
            batch.refresh(&state.shared);
            if batch.processing_status() == "in_progress" {
                in_use += batch.planned.len() as u64;
            }
        }
        Demand {
            in_use,
            amount: count as u64,
        }
    };
    match state
        .shared
        .quotas
        .admit(Quota::AnthropicQueueRequests, measure)
    {
        Ok(_) => Ok(()),
        Err(refusal) => Err(ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            kind: "rate_limit_error",
            message: format!(
                "Number of batch requests in the processing queue would exceed the rate limit of {} for your organization ({} queued, {} in this batch). Please try again once some batches have ended.",
                refusal.limit, refusal.in_use, refusal.amount
            ),
        }),
    }
}

/// Finds a batch, brings it up to date and answers with `f` of it.
pub(super) fn with_batch<T>(
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

pub(super) async fn get_batch(
    State(state): State<Arc<Anthropic>>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    with_batch(&state, &id, |batch| {
        Ok(axum::Json(batch.to_json(&state.shared.base_url)))
    })
}

pub(super) async fn cancel_batch(
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

pub(super) async fn delete_batch(
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

pub(super) async fn list_batches(
    State(state): State<Arc<Anthropic>>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<axum::Json<Value>> {
    let limit = page_limit(&query, DEFAULT_PAGE, MAX_PAGE).map_err(|_| {
        ApiError::invalid(format!("limit: Input should be between 1 and {MAX_PAGE}"))
    })?;
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
