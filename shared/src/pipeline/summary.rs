//! Closing a job: the summary a user reads first, and the open-jobs index entry removed.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::Serialize;

use super::context::{Context, PipelineError};
use super::job::{self, InputRead, JobStatus, RerunOf, SourceObject, Versioned, keys};
use super::spec::ResultFormat;
use crate::results::Usage;

#[derive(Debug, Serialize)]
struct Summary<'a> {
    job_id: &'a str,
    status: JobStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    failure: Option<&'a str>,
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
    files: Files,
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
    /// Parts still waiting at the job's deadline, whose rows are `expired` errors.
    given_up: usize,
}

impl QuotaWaits {
    fn of(parts: &[super::job::PartRecord]) -> Option<Self> {
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
struct Files {
    successes: Vec<String>,
    errors: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    skipped: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Timings<'a> {
    created_at: &'a str,
    submitted_at: Option<&'a str>,
    completed_at: Option<&'a str>,
    duration_seconds: Option<i64>,
}

fn seconds_between(start: &str, end: &str) -> Option<i64> {
    let parse = |t: &str| {
        time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
    };
    Some((parse(end)? - parse(start)?).whole_seconds())
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
    if !matches!(record.status, JobStatus::Completed | JobStatus::Failed) {
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
/// The record's status must already be `Completed` or `Failed`.
pub(super) async fn close_job(
    ctx: &Context,
    versioned: &mut Versioned,
) -> Result<(), PipelineError> {
    let record = &mut versioned.record;
    record
        .completed_at
        .get_or_insert_with(|| ctx.clock.timestamp());
    let mut errors_by_type = BTreeMap::new();
    if record.input_errors > 0 {
        errors_by_type.insert(super::input::INVALID_INPUT.to_string(), record.input_errors);
    }
    let mut usage = Usage::default();
    let (mut succeeded, mut failed, mut retried) = (0, record.input_errors, 0);
    let mut outcomes_by_attempt = BTreeMap::new();
    if record.input_errors > 0 {
        outcomes_by_attempt.insert(1, record.input_errors);
    }
    let mut files = Files {
        successes: Vec::new(),
        errors: record.input_error_files(),
        skipped: record.skipped_files(),
    };
    for part in &record.parts {
        let Some(outcome) = &part.collected else {
            continue;
        };
        succeeded += outcome.succeeded;
        failed += outcome.failed;
        retried += outcome.retried;
        if outcome.succeeded + outcome.failed > 0 {
            *outcomes_by_attempt.entry(part.attempt).or_insert(0) +=
                outcome.succeeded + outcome.failed;
        }
        usage.add(&outcome.usage);
        for (kind, n) in &outcome.errors_by_type {
            *errors_by_type.entry(kind.clone()).or_insert(0) += n;
        }
        if outcome.succeeded > 0 {
            let jsonl = record
                .spec
                .as_ref()
                .is_none_or(|spec| spec.writes(ResultFormat::Jsonl));
            if jsonl {
                files
                    .successes
                    .push(keys::successes(&record.job_id, part.index));
            }
            if record.table.is_some() {
                files
                    .successes
                    .push(keys::successes_parquet(&record.job_id, part.index));
            }
        }
        if outcome.failed > 0 {
            files.errors.push(keys::errors(&record.job_id, part.index));
        }
    }
    let summary = Summary {
        job_id: &record.job_id,
        status: record.status,
        failure: record.failure.as_deref(),
        source: &record.source,
        input: record.input,
        model: record.spec.as_ref().map(|s| s.model.to_string()),
        requests: record.requests,
        llm_requests: record
            .parts
            .iter()
            .map(|p| p.llm_requests.unwrap_or(p.requests))
            .sum(),
        succeeded,
        failed,
        skipped: record.skipped,
        rerun_of: record.rerun_of.as_ref(),
        errors_by_type,
        retried,
        outcomes_by_attempt,
        cost_usd: record
            .spec
            .as_ref()
            .and_then(|spec| spec.prices)
            .map(|prices| prices.cost_usd(&usage)),
        usage,
        invariant_holds: succeeded + failed + record.skipped == record.requests,
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
        files,
        timings: Timings {
            created_at: &record.created_at,
            submitted_at: record.submitted_at.as_deref(),
            completed_at: record.completed_at.as_deref(),
            duration_seconds: record
                .completed_at
                .as_deref()
                .and_then(|end| seconds_between(&record.created_at, end)),
        },
    };
    if !summary.invariant_holds {
        tracing::error!(job = %record.job_id, requests = record.requests, succeeded, failed, skipped = record.skipped, "results do not account for every request");
    }
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
