//! Closing a job: the summary a user reads first, and the open-jobs index entry removed.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::Serialize;

use super::context::{Context, PipelineError};
use super::job::{
    self, ErrorGroup, InputRead, JobStatus, PartRecord, RerunOf, ResultFiles, SourceObject,
    Versioned, keys,
};
use crate::metrics;
use crate::results::Usage;

#[derive(Debug, Serialize)]
struct Summary<'a> {
    job_id: &'a str,
    status: JobStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    failure: Option<&'a str>,
    /// When the job's cancellation was requested (its status is then `cancelled`,
    /// unless a whole-file problem failed it).
    #[serde(skip_serializing_if = "Option::is_none")]
    cancel_requested_at: Option<&'a str>,
    source: &'a SourceObject,
    /// How much of the upload was read: every byte, or the job says why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    input: Option<InputRead>,
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<String>,
    requests: u64,
    /// Requests sent to the provider, retries included: fewer than `requests` when
    /// rows are packed (`rows_per_request`).
    llm_requests: u64,
    succeeded: u64,
    failed: u64,
    /// Rows not sent because an earlier job of the pipeline has their success
    /// (`skip_succeeded`; `files.skipped` names that job per row).
    skipped: u64,
    /// For a re-run of a finished job's failed rows: that job and the upload the rows
    /// were read from (which `input` describes).
    #[serde(skip_serializing_if = "Option::is_none")]
    rerun_of: Option<&'a RerunOf>,
    errors_by_type: BTreeMap<String, u64>,
    /// One line naming what failed most of the failed rows, when one error type with
    /// one message did ("50000 of 50000 rows failed: model_not_found: The model …"),
    /// so that a reader need not open the error files to see why a job failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    cause: Option<String>,
    /// The most common errors by type and message, most rows first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    top_errors: Vec<ErrorGroup>,
    /// Requests resubmitted after a retryable failure (each counted once per retry).
    retried: u64,
    /// Final outcomes by the attempt they came from ("1": first try, "2": one retry…).
    outcomes_by_attempt: BTreeMap<u32, u64>,
    usage: Usage,
    /// From the spec's `prices`, where given.
    #[serde(skip_serializing_if = "Option::is_none")]
    cost_usd: Option<f64>,
    /// succeeded + failed + skipped == requests: every request is accounted for
    /// exactly once.
    invariant_holds: bool,
    /// How the job's parts waited for the providers' quotas; absent when none did.
    #[serde(skip_serializing_if = "Option::is_none")]
    quota_waits: Option<QuotaWaits>,
    parts: Vec<PartSummary<'a>>,
    files: ResultFiles,
    timings: Timings<'a>,
}

#[derive(Debug, Serialize)]
struct PartSummary<'a> {
    index: u32,
    attempt: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_of: Option<u32>,
    batch_id: Option<&'a str>,
    provider_status: Option<&'a str>,
    requests: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    llm_requests: Option<u64>,
    succeeded: u64,
    failed: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    split_reason: Option<&'a str>,
    /// The provider's reason for failing the batch, or why poll gave it up.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    /// Seconds the part waited for quota before its batch was created (or given up).
    #[serde(skip_serializing_if = "is_zero")]
    waited_seconds: u64,
}

/// A part counts rows for at most this many distinct (type, message) pairs, so that
/// its record stays small when every row fails differently; later pairs are counted
/// in `errors_by_type` only.
const MAX_ERROR_GROUPS: usize = 20;
/// Messages are grouped (and kept) up to this many characters: the start of a long
/// message says what went wrong, its tail often names the row.
pub(super) const MAX_GROUP_MESSAGE_CHARS: usize = 300;
/// The summary lists this many groups in `top_errors`.
const TOP_ERRORS: usize = 5;

/// Counts one failed row in `groups` under its type and message.
pub(super) fn note_error(groups: &mut Vec<ErrorGroup>, error_type: &str, message: &str) {
    let message = match message.char_indices().nth(MAX_GROUP_MESSAGE_CHARS) {
        Some((cut, _)) => &message[..cut],
        None => message,
    };
    let found = groups
        .iter()
        .position(|g| g.error_type == error_type && g.message == message);
    match found {
        Some(index) => groups[index].rows += 1,
        None if groups.len() < MAX_ERROR_GROUPS => groups.push(ErrorGroup {
            error_type: error_type.to_string(),
            message: message.to_string(),
            rows: 1,
        }),
        None => {}
    }
}

/// The parts' error groups added up, most rows first (ties by type and message).
fn top_errors(parts: &[PartRecord]) -> Vec<ErrorGroup> {
    let mut rows: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    let groups = parts
        .iter()
        .filter_map(|p| p.collected.as_ref())
        .flat_map(|outcome| &outcome.error_groups);
    for group in groups {
        *rows.entry((&group.error_type, &group.message)).or_insert(0) += group.rows;
    }
    let mut top: Vec<ErrorGroup> = rows
        .into_iter()
        .map(|((error_type, message), rows)| ErrorGroup {
            error_type: error_type.to_string(),
            message: message.to_string(),
            rows,
        })
        .collect();
    // A stable sort keeps the map's order among equal counts.
    top.sort_by_key(|group| std::cmp::Reverse(group.rows));
    top.truncate(TOP_ERRORS);
    top
}

/// The summary's `cause`: the top group when it holds more than half of the failed
/// rows (else no one error explains the failures).
fn cause(top: &[ErrorGroup], failed: u64, requests: u64) -> Option<String> {
    let group = top.first()?;
    (group.rows * 2 > failed).then(|| {
        format!(
            "{} of {requests} rows failed: {}: {}",
            group.rows, group.error_type, group.message
        )
    })
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Waits for quota over a job's parts.
#[derive(Debug, Serialize)]
struct QuotaWaits {
    /// Parts that waited at least once.
    parts: usize,
    /// Times parts were held back or refused by the provider for quota.
    waits: u64,
    /// The longest wait of one part, in seconds (all its waits).
    longest_seconds: u64,
    /// All parts' waits added up, in seconds.
    total_seconds: u64,
    /// Parts given up while they waited: at the job's deadline (their rows are
    /// `expired` errors) or at its cancellation (`cancelled`).
    given_up: usize,
}

impl QuotaWaits {
    fn of(parts: &[PartRecord]) -> Option<Self> {
        let waited: Vec<_> = parts.iter().filter(|p| p.quota_waits > 0).collect();
        (!waited.is_empty()).then(|| Self {
            parts: waited.len(),
            waits: waited.iter().map(|p| u64::from(p.quota_waits)).sum(),
            longest_seconds: waited.iter().map(|p| p.waited_seconds).max().unwrap_or(0),
            total_seconds: waited.iter().map(|p| p.waited_seconds).sum(),
            given_up: waited
                .iter()
                .filter(|p| p.deadline_passed.is_some())
                .count(),
        })
    }
}

#[derive(Debug, Serialize)]
struct Timings<'a> {
    created_at: &'a str,
    submitted_at: Option<&'a str>,
    completed_at: Option<&'a str>,
    duration_seconds: Option<i64>,
}

/// Finishes closing a job whose record says closed but whose close did not complete
/// (a crash between the record write and the summary); otherwise only drops a
/// leftover open-index entry. `close_job` stamps `completed_at` last-but-one, so a
/// closed record without it has no summary yet.
pub(super) async fn finish_closing(
    ctx: &Context,
    mut versioned: Versioned,
) -> Result<(), PipelineError> {
    let record = &versioned.record;
    if !record.status.is_closed() {
        return Ok(());
    }
    if record.completed_at.is_none() {
        tracing::info!(job = %record.job_id, "finishing the close of a job whose closing step died");
        return close_job(ctx, &mut versioned).await;
    }
    ctx.store
        .delete(&keys::open_marker(&versioned.record.job_id))
        .await?;
    Ok(())
}

/// Writes the summary, saves the record as closed and removes it from the open index.
/// The record's status must already be closed ([`JobStatus::is_closed`]).
pub(super) async fn close_job(
    ctx: &Context,
    versioned: &mut Versioned,
) -> Result<(), PipelineError> {
    let record = &mut versioned.record;
    record
        .completed_at
        .get_or_insert_with(|| ctx.clock.timestamp());
    let tally = record.tally();
    let top_errors = top_errors(&record.parts);
    let summary = Summary {
        cause: cause(&top_errors, tally.failed, record.requests),
        top_errors,
        job_id: &record.job_id,
        status: record.status,
        failure: record.failure.as_deref(),
        cancel_requested_at: record.cancel_requested_at.as_deref(),
        source: &record.source,
        input: record.input,
        model: record.spec.as_ref().map(|s| s.model.to_string()),
        requests: record.requests,
        llm_requests: record
            .parts
            .iter()
            .map(|p| p.llm_requests.unwrap_or(p.requests))
            .sum(),
        succeeded: tally.succeeded,
        failed: tally.failed,
        skipped: record.skipped,
        rerun_of: record.rerun_of.as_ref(),
        errors_by_type: tally.errors_by_type,
        retried: tally.retried,
        outcomes_by_attempt: tally.outcomes_by_attempt,
        cost_usd: tally.cost_usd,
        usage: tally.usage,
        invariant_holds: tally.succeeded + tally.failed + record.skipped == record.requests,
        quota_waits: QuotaWaits::of(&record.parts),
        parts: record
            .parts
            .iter()
            .map(|p| PartSummary {
                index: p.index,
                attempt: p.attempt,
                retry_of: p.retry_of,
                batch_id: p.batch_id.as_deref(),
                provider_status: p.raw_status.as_deref(),
                requests: p.requests,
                llm_requests: p.llm_requests,
                succeeded: p.collected.as_ref().map_or(0, |c| c.succeeded),
                failed: p.collected.as_ref().map_or(0, |c| c.failed),
                split_reason: p.split_reason.as_deref(),
                error: p.deadline_passed.as_deref().or(p.batch_error.as_deref()),
                waited_seconds: p.waited_seconds,
            })
            .collect(),
        files: record.result_files(),
        timings: Timings {
            created_at: &record.created_at,
            submitted_at: record.submitted_at.as_deref(),
            completed_at: record.completed_at.as_deref(),
            duration_seconds: record
                .completed_at
                .as_deref()
                .and_then(|end| crate::clock::seconds_between(&record.created_at, end)),
        },
    };
    if !summary.invariant_holds {
        tracing::error!(job = %record.job_id, requests = record.requests, succeeded = summary.succeeded, failed = summary.failed, skipped = record.skipped, "results do not account for every request");
    }
    let signals = metrics::JobClosed {
        labels: &record.labels(),
        outcome: match summary.status {
            JobStatus::Failed => metrics::JOBS_FAILED,
            JobStatus::Cancelled => metrics::JOBS_CANCELLED,
            _ => metrics::JOBS_COMPLETED,
        },
        succeeded: summary.succeeded,
        errors_by_type: &summary.errors_by_type,
        usage: &summary.usage,
        cost_usd: summary.cost_usd,
    };
    let signals = signals.documents(ctx.clock.now());
    let body = Bytes::from(serde_json::to_vec_pretty(&summary)?);
    ctx.store
        .put(
            &keys::summary(&record.job_id),
            body,
            crate::storage::PutMode::Overwrite,
        )
        .await?;
    job::save(ctx.store.as_ref(), versioned).await?;
    ctx.store
        .delete(&keys::open_marker(&versioned.record.job_id))
        .await?;
    // Once the close is stored, so that a retried close counts the job once.
    ctx.metrics.emit(&signals);
    Ok(())
}

/// Marks the job failed with `reason` and closes it (summary written, nothing more
/// submitted).
pub(super) async fn fail_job(
    ctx: &Context,
    mut versioned: Versioned,
    reason: String,
) -> Result<(), PipelineError> {
    tracing::warn!(job = %versioned.record.job_id, %reason, "job failed before submission");
    versioned.record.status = JobStatus::Failed;
    versioned.record.failure = Some(reason);
    versioned.record.submit_lease_until = None;
    close_job(ctx, &mut versioned).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::job::PartOutcome;

    fn collected(groups: Vec<ErrorGroup>) -> PartRecord {
        let mut part: PartRecord = serde_json::from_value(serde_json::json!({
            "index": 0, "requests": 0, "batch_id": null,
        }))
        .expect("a part record from its required fields");
        part.collected = Some(PartOutcome {
            failed: groups.iter().map(|g| g.rows).sum(),
            error_groups: groups,
            ..PartOutcome::default()
        });
        part
    }

    #[test]
    fn rows_are_grouped_by_type_and_message_up_to_a_bound() {
        let mut groups = Vec::new();
        for _ in 0..3 {
            note_error(
                &mut groups,
                "model_not_found",
                "The model `gpt-3` does not exist",
            );
        }
        note_error(
            &mut groups,
            "model_not_found",
            "The model `gpt-2` does not exist",
        );
        note_error(
            &mut groups,
            "parsing_error",
            "The model `gpt-3` does not exist",
        );
        let rows: Vec<u64> = groups.iter().map(|g| g.rows).collect();
        assert_eq!(rows, [3, 1, 1]);
        for i in 0..100 {
            note_error(&mut groups, "x", &format!("message {i}"));
        }
        assert_eq!(groups.len(), MAX_ERROR_GROUPS);
        note_error(&mut groups, "long", &"é".repeat(1000));
        note_error(
            &mut groups,
            "model_not_found",
            &format!("{}!", "é".repeat(400)),
        );
        assert!(
            groups
                .iter()
                .all(|g| g.message.chars().count() <= MAX_GROUP_MESSAGE_CHARS)
        );
    }

    #[test]
    fn one_error_behind_most_failures_is_the_cause() {
        let model = |rows| ErrorGroup {
            error_type: "model_not_found".into(),
            message: "The model `gpt-3` does not exist or you do not have access to it.".into(),
            rows,
        };
        let other = |rows| ErrorGroup {
            error_type: "rate_limit_error".into(),
            message: "slow down".into(),
            rows,
        };
        let parts = [
            collected(vec![model(30_000)]),
            collected(vec![model(20_000)]),
        ];
        let top = top_errors(&parts);
        assert_eq!(top, [model(50_000)]);
        assert_eq!(
            cause(&top, 50_000, 50_000).as_deref(),
            Some(
                "50000 of 50000 rows failed: model_not_found: The model `gpt-3` does not exist or you do not have access to it."
            )
        );
        // Neither error is behind more than half the failures: no single cause.
        let split = top_errors(&[
            collected(vec![model(4), other(3)]),
            collected(vec![other(2)]),
        ]);
        assert_eq!(split, [other(5), model(4)]);
        assert_eq!(cause(&split, 10, 100), None);
        assert_eq!(cause(&[], 0, 100), None);
    }
}
