//! `poll`: on a timer, asks the providers about every open job's parts and queues the
//! parts that ended for collect. With more open jobs than `Settings::poll_inline_jobs`
//! and a fan-out queue, the tick only sends one message per open job
//! (`pipeline/poll_jobs.rs`) and poll's workers poll them, each job as the tick would.
//!
//! Two polls at once are safe: a part is marked queued with a conditional write
//! before its message is sent, so only the poll whose write won sends it. A poll that
//! died between the write and the send is covered by re-queueing after
//! `Settings::requeue_after` (collect ignores parts already collected).

use futures::StreamExt;
use serde::Serialize;

use super::cancel::cancel_batches;
use super::context::{Context, PipelineError};
use super::job::{self, JobRecord, JobStatus, PartRecord, Versioned, keys};
use super::poll_jobs::fan_out;
use super::ready::{JobMessage, send_ready};
use super::submission::resume_submit;
use super::summary;
use super::waiting::{has_waiting_parts, open_job_records, start_waiting_parts};
use crate::metrics;
use crate::status::BatchStatus;

/// What one poll saw.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct PollReport {
    /// Jobs in the open-jobs index (for a worker: jobs its messages named).
    pub open_jobs: usize,
    /// Jobs handed to poll's workers, one fan-out message each (the tick then polls
    /// none itself).
    pub jobs_fanned_out: usize,
    /// Parts whose batch status was asked (not collected, not given up, not queued
    /// within `Settings::requeue_after`).
    pub parts_checked: usize,
    /// Parts sent to the ready queue for collect.
    pub parts_queued: usize,
    /// Parts that waited for quota and got their batch in this poll.
    pub parts_started: usize,
    /// Parts still waiting for quota after this poll.
    pub parts_waiting: usize,
    /// Parts given up because they still waited at their job's deadline.
    pub parts_expired: usize,
    /// Jobs whose polling failed, wholly or for some part's status (they are tried
    /// again on the next tick; the job record notes each failed status call).
    pub failed_jobs: Vec<String>,
}

/// The poll tick. Up to `Settings::poll_inline_jobs` open jobs (or without a fan-out
/// queue) it polls every open job, `Settings::poll_concurrency` at a time: queues the
/// parts that ended, resumes submits whose lease passed and finishes interrupted
/// closes; then starts the parts waiting for quota that fit now
/// (`pipeline/waiting.rs`). With more, it sends one fan-out message per open job and
/// polls none ([`poll_listed`] does, in the workers). A job that fails is listed in
/// [`PollReport::failed_jobs`]; only a failure to list the open jobs (or to send the
/// fan-out messages) is an error.
pub async fn poll(ctx: &Context) -> Result<PollReport, PipelineError> {
    let jobs: Vec<String> = ctx
        .store
        .list(keys::OPEN)
        .await?
        .into_iter()
        .filter_map(|k| k.strip_prefix(keys::OPEN).map(str::to_string))
        .collect();
    if let Some(queue) = &ctx.poll_jobs
        && jobs.len() > ctx.settings.poll_inline_jobs
    {
        fan_out(queue.as_ref(), &jobs).await?;
        return Ok(PollReport {
            open_jobs: jobs.len(),
            jobs_fanned_out: jobs.len(),
            ..PollReport::default()
        });
    }
    let mut round = poll_each(ctx, jobs).await;
    round.start_waiting(ctx, Vec::new()).await;
    Ok(round.report)
}

/// What a poll worker did with the jobs of its fan-out messages.
#[derive(Debug, Default)]
pub struct ListedPoll {
    /// What the worker saw, as a tick reports it.
    pub report: PollReport,
    /// Jobs that could not be polled at all: their messages are delivered again.
    /// (A failed status call is not among them: the record notes it and the next
    /// tick asks again.)
    pub unpolled: Vec<String>,
}

/// Poll's worker: polls each of `jobs` as the tick does inline. When one of them has
/// parts waiting for quota, it reads every other open job's record too (what runs at
/// the providers, and which job waits longest) and starts the waiting parts that fit,
/// oldest job first; jobs without waiting parts never pay that read. A job closed
/// meanwhile is skipped; the same job polled by two workers at once is safe.
pub async fn poll_listed(ctx: &Context, jobs: &[String]) -> ListedPoll {
    let mut jobs = jobs.to_vec();
    // Two ticks' messages for one job may share a delivery.
    jobs.sort();
    jobs.dedup();
    let mut round = poll_each(ctx, jobs).await;
    if round.records.iter().any(has_waiting_parts) {
        let polled: Vec<&str> = round.records.iter().map(|r| r.job_id.as_str()).collect();
        match open_job_records(ctx, &polled).await {
            Ok(others) => round.start_waiting(ctx, others).await,
            Err(e) => {
                tracing::warn!(error = %e, "reading the open jobs failed; the next tick starts the waiting parts");
                let waiting = round.records.iter().filter(|r| has_waiting_parts(r));
                round
                    .report
                    .failed_jobs
                    .extend(waiting.map(|r| r.job_id.clone()));
            }
        }
    }
    ListedPoll {
        report: round.report,
        unpolled: round.unpolled,
    }
}

/// One round of polls over some jobs, before their waiting parts are started.
#[derive(Debug, Default)]
struct Round {
    report: PollReport,
    /// The polled jobs' records after their poll (closed ones left out).
    records: Vec<JobRecord>,
    /// Jobs whose poll failed as a whole.
    unpolled: Vec<String>,
}

/// Polls `jobs`, `Settings::poll_concurrency` at a time.
async fn poll_each(ctx: &Context, jobs: Vec<String>) -> Round {
    let mut round = Round {
        report: PollReport {
            open_jobs: jobs.len(),
            ..PollReport::default()
        },
        ..Round::default()
    };
    let mut results = futures::stream::iter(jobs)
        .map(|job| async move { (poll_job(ctx, &job).await, job) })
        .buffer_unordered(ctx.settings.poll_concurrency.max(1));
    while let Some((result, job)) = results.next().await {
        let report = &mut round.report;
        match result {
            Ok(polled) => {
                report.parts_checked += polled.checked;
                report.parts_queued += polled.queued;
                if polled.status_failures > 0 {
                    report.failed_jobs.push(job);
                }
                round.records.extend(polled.record);
            }
            Err(e) => {
                tracing::warn!(%job, error = %e, "polling the job failed; next tick retries");
                report.failed_jobs.push(job.clone());
                round.unpolled.push(job);
            }
        }
    }
    round
}

impl Round {
    /// Starts the waiting parts that fit, counting what runs for the polled jobs and
    /// for `others` (the records of the open jobs this round did not poll).
    async fn start_waiting(&mut self, ctx: &Context, others: Vec<JobRecord>) {
        let mut records = std::mem::take(&mut self.records);
        records.extend(others);
        let report = &mut self.report;
        let started = start_waiting_parts(ctx, &records, &mut report.failed_jobs).await;
        report.parts_started = started.started;
        report.parts_waiting = started.waiting;
        report.parts_expired = started.expired;
        ctx.metrics
            .emit(&metrics::parts_waiting(ctx.clock.now(), started.waiting));
    }
}

/// What one job's poll did.
#[derive(Debug, Default)]
struct Polled {
    checked: usize,
    queued: usize,
    /// Status calls that failed (noted in the job record, tried again next tick).
    status_failures: usize,
    /// The job's record after this poll, unless it is closed: what its batches hold
    /// at the provider, and its parts waiting for quota.
    record: Option<JobRecord>,
}

async fn poll_job(ctx: &Context, job_id: &str) -> Result<Polled, PipelineError> {
    let snapshot = job::load(ctx.store.as_ref(), job_id).await?;
    match snapshot.record.status {
        JobStatus::Open => {}
        JobStatus::Submitting => {
            let record = snapshot.record.clone();
            resume_dead_submit(ctx, snapshot).await?;
            return Ok(Polled {
                record: Some(record),
                ..Polled::default()
            });
        }
        // Closed, but the close did not finish (summary or index entry left).
        JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled => {
            summary::finish_closing(ctx, snapshot).await?;
            return Ok(Polled::default());
        }
    }
    let Some(spec) = snapshot.record.spec.as_ref() else {
        return Err(PipelineError::CorruptRecord {
            key: keys::job_record(job_id),
            reason: "open job without a spec".into(),
        });
    };
    if ctx
        .clock
        .has_passed_by(&snapshot.record.created_at, spec.deadline())
    {
        // On every tick that finds it still open, so that the alarm on it stays on for
        // as long as the job is late.
        let labels = snapshot.record.labels();
        ctx.metrics
            .emit(&metrics::job_past_deadline(ctx.clock.now(), &labels));
    }
    let provider = ctx.providers.provider(spec.model.provider).await?;
    // Before the status calls, which then see the cancelled batches end.
    cancel_batches(ctx, provider.as_ref(), &snapshot.record).await?;
    let mut seen: Vec<(u32, Result<BatchStatus, crate::Error>)> = Vec::new();
    // Given-up parts whose ready message may have been lost: queued again, unasked.
    let mut abandoned = Vec::new();
    for part in &snapshot.record.parts {
        let due = part.collected.is_none()
            && part
                .enqueued_at
                .as_deref()
                .is_none_or(|at| ctx.clock.has_passed_by(at, ctx.settings.requeue_after));
        match (due, part.batch_id.as_deref()) {
            (true, _) if part.abandoned.is_some() || part.deadline_passed.is_some() => {
                abandoned.push(part.index)
            }
            (true, Some(batch_id)) => seen.push((part.index, provider.status(batch_id).await)),
            _ => {}
        }
    }
    let checked = seen.len();
    let mut to_queue = Vec::new();
    let versioned = job::update(ctx.store.as_ref(), job_id, |record| {
        to_queue.clear();
        let mut changed = false;
        for index in &abandoned {
            if let Some(part) = record.parts.iter_mut().find(|p| p.index == *index)
                && part.collected.is_none()
            {
                part.enqueued_at = Some(ctx.clock.timestamp());
                to_queue.push(*index);
                changed = true;
            }
        }
        for (index, status) in &seen {
            let Some(part) = record.parts.iter_mut().find(|p| p.index == *index) else {
                continue;
            };
            if part.collected.is_some() || part.abandoned.is_some() {
                continue;
            }
            let status = match status {
                Ok(status) => status,
                Err(e) => {
                    note_failed_status(
                        part,
                        e,
                        &ctx.clock.timestamp(),
                        ctx.settings.max_refused_polls,
                    );
                    if part.abandoned.is_some() {
                        part.enqueued_at = Some(ctx.clock.timestamp());
                        to_queue.push(*index);
                    }
                    changed = true;
                    continue;
                }
            };
            changed |= part.poll_error.take().is_some() || part.refused_polls != 0;
            part.refused_polls = 0;
            changed |= part.state != Some(status.state)
                || part.raw_status.as_deref() != Some(&status.raw_status)
                || part.counts != Some(status.counts);
            part.state = Some(status.state);
            part.counts = Some(status.counts);
            part.raw_status = Some(status.raw_status.clone());
            part.batch_error = status.error.clone();
            if status.quota_exceeded {
                // Not a failure of its requests: the part waits and is created again.
                tracing::warn!(job = %job_id, part = *index, error = ?status.error, "the provider failed the batch for quota; the part waits");
                let reason = format!(
                    "the provider failed batch {} for quota: {}",
                    status.batch_id,
                    status.error.as_deref().unwrap_or("no reason given")
                );
                part.wait_for_quota(&ctx.clock.timestamp(), reason);
                changed = true;
                continue;
            }
            let still_queued = part
                .enqueued_at
                .as_deref()
                .is_some_and(|at| !ctx.clock.has_passed_by(at, ctx.settings.requeue_after));
            if status.state.is_terminal() && !still_queued {
                part.enqueued_at = Some(ctx.clock.timestamp());
                to_queue.push(*index);
                changed = true;
            }
        }
        changed
    })
    .await?;
    send_ready(ctx, job_id, &to_queue).await?;
    Ok(Polled {
        checked,
        queued: to_queue.len(),
        status_failures: seen.iter().filter(|(_, status)| status.is_err()).count(),
        record: Some(versioned.record),
    })
}

/// A submit whose lease has passed died (its Lambda retries may all have come while
/// it still held the lease) or handed the rest of its upload over: the submit function
/// resumes it from the submit queue's message, or without a queue this poll does.
async fn resume_dead_submit(ctx: &Context, snapshot: Versioned) -> Result<(), PipelineError> {
    let record = &snapshot.record;
    if record
        .submit_lease_until
        .as_deref()
        .is_some_and(|until| !ctx.clock.has_passed(until))
    {
        return Ok(());
    }
    match &ctx.submit_queue {
        Some(queue) => {
            queue.send(JobMessage::body(&record.job_id)).await?;
        }
        None => {
            resume_submit(ctx, snapshot).await?;
        }
    }
    Ok(())
}

/// Records a failed status call in the part, where the job record shows it. A
/// refusal (HTTP 401 or 403, or 400 from the Gemini API: a revoked key; 404: a batch
/// deleted at the provider) is counted, and after `max_refused` in a row the part is
/// given up: collect turns its requests into errors that quote the provider. Other
/// failures (network, 5xx) leave the job waiting, visibly: the provider may come back.
fn note_failed_status(part: &mut PartRecord, error: &crate::Error, now: &str, max_refused: u32) {
    tracing::warn!(part = part.index, %error, "status call failed");
    part.poll_error = Some(format!("{now}: {error}"));
    if !is_refusal(error) {
        return;
    }
    part.refused_polls += 1;
    if part.refused_polls >= max_refused {
        let reason = format!(
            "the provider refused {} status calls in a row for batch {}; last answer: {error}",
            part.refused_polls,
            part.batch_id.as_deref().unwrap_or_default()
        );
        part.batch_error = Some(reason.clone());
        part.abandoned = Some(reason);
    }
}

/// An answer that will not change by asking again: the key is refused or the batch
/// is gone.
fn is_refusal(error: &crate::Error) -> bool {
    matches!(
        error,
        crate::Error::Api {
            status: 400 | 401 | 403 | 404,
            ..
        }
    )
}
