//! `poll`: on a timer, asks the providers about every open job's parts and queues the
//! parts that ended for collect.
//!
//! Two polls at once are safe: a part is marked queued with a conditional write
//! before its message is sent, so only the poll whose write won sends it. A poll that
//! died between the write and the send is covered by re-queueing after
//! `Settings::requeue_after` (collect ignores parts already collected).

use futures::StreamExt;
use serde::Serialize;

use super::collect::ReadyMessage;
use super::job::{self, JobStatus, keys};
use super::{Context, PipelineError};
use crate::status::BatchStatus;

/// What one poll saw.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct PollReport {
    pub open_jobs: usize,
    pub parts_checked: usize,
    pub parts_queued: usize,
    /// Jobs whose polling failed (they are retried on the next tick).
    pub failed_jobs: Vec<String>,
}

pub async fn poll(ctx: &Context) -> Result<PollReport, PipelineError> {
    let jobs: Vec<String> = ctx
        .store
        .list(keys::OPEN)
        .await?
        .into_iter()
        .filter_map(|k| k.strip_prefix(keys::OPEN).map(str::to_string))
        .collect();
    let mut report = PollReport {
        open_jobs: jobs.len(),
        ..PollReport::default()
    };
    let mut results = futures::stream::iter(jobs)
        .map(|job| async move { (poll_job(ctx, &job).await, job) })
        .buffer_unordered(ctx.settings.poll_concurrency.max(1));
    while let Some((result, job)) = results.next().await {
        match result {
            Ok((checked, queued)) => {
                report.parts_checked += checked;
                report.parts_queued += queued;
            }
            Err(e) => {
                tracing::warn!(%job, error = %e, "polling the job failed; next tick retries");
                report.failed_jobs.push(job);
            }
        }
    }
    Ok(report)
}

/// Returns (parts checked, parts queued).
async fn poll_job(ctx: &Context, job_id: &str) -> Result<(usize, usize), PipelineError> {
    let snapshot = job::load(ctx.store.as_ref(), job_id).await?;
    match snapshot.record.status {
        JobStatus::Open => {}
        // Still submitting: submit puts the index entry before opening the record.
        JobStatus::Submitting => return Ok((0, 0)),
        // Closed, but the index entry outlived it (a crash after the summary).
        JobStatus::Completed | JobStatus::Failed => {
            ctx.store.delete(&keys::open_marker(job_id)).await?;
            return Ok((0, 0));
        }
    }
    let Some(spec) = snapshot.record.spec.as_ref() else {
        return Err(PipelineError::CorruptRecord {
            key: keys::job_record(job_id),
            reason: "open job without a spec".into(),
        });
    };
    let provider = ctx.providers.provider(spec.model.provider).await?;
    let mut seen: Vec<(u32, BatchStatus)> = Vec::new();
    for part in &snapshot.record.parts {
        let due = part.collected.is_none()
            && part
                .enqueued_at
                .as_deref()
                .is_none_or(|at| requeue_due(at, ctx.settings.requeue_after));
        if let (true, Some(batch_id)) = (due, part.batch_id.as_deref()) {
            seen.push((part.index, provider.status(batch_id).await?));
        }
    }
    let checked = seen.len();
    let mut to_queue = Vec::new();
    job::update(ctx.store.as_ref(), job_id, |record| {
        to_queue.clear();
        let mut changed = false;
        for (index, status) in &seen {
            let Some(part) = record.parts.iter_mut().find(|p| p.index == *index) else {
                continue;
            };
            if part.collected.is_some() {
                continue;
            }
            changed |= part.state != Some(status.state)
                || part.raw_status.as_deref() != Some(&status.raw_status);
            part.state = Some(status.state);
            part.raw_status = Some(status.raw_status.clone());
            part.batch_error = status.error.clone();
            let still_queued = part
                .enqueued_at
                .as_deref()
                .is_some_and(|at| !requeue_due(at, ctx.settings.requeue_after));
            if status.state.is_terminal() && !still_queued {
                part.enqueued_at = Some(job::now());
                to_queue.push(*index);
                changed = true;
            }
        }
        changed
    })
    .await?;
    for part in &to_queue {
        let message = ReadyMessage {
            job_id: job_id.to_string(),
            part: *part,
        };
        ctx.queue.send(serde_json::to_string(&message)?).await?;
    }
    Ok((checked, to_queue.len()))
}

fn requeue_due(enqueued_at: &str, after: std::time::Duration) -> bool {
    time::OffsetDateTime::parse(enqueued_at, &time::format_description::well_known::Rfc3339)
        .map(|t| t + after <= time::OffsetDateTime::now_utc())
        .unwrap_or(true)
}
