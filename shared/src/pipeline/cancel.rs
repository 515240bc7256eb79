//! Cancelling a job: the request an operator makes ([`request_cancel`], which needs
//! only the bucket and a clock, no provider keys), and poll's part of it (asking the
//! provider to cancel the batches that run).
//!
//! The request is one field of the job record, `cancel_requested_at`. From then on
//! every step sends nothing more: submit records the parts it closes as given up
//! (`pipeline/parts.rs`), poll gives up the parts waiting for quota
//! (`pipeline/waiting.rs`) and cancels the running batches (here), collect makes no
//! retry parts. Each part still ends through collect, which keeps the results that
//! came back and records every other row as a `cancelled` error, so the invariant
//! holds; the job then closes as [`JobStatus::Cancelled`].

use super::context::{Context, PipelineError};
use super::job::{self, JobRecord, JobStatus};
use crate::clock::Clock;
use crate::provider::BatchProvider;
use crate::storage::{ObjectStore, StoreError};

/// What [`request_cancel`] found. A job that does not exist is the error
/// [`PipelineError::UnknownJob`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CancelRequest {
    /// Recorded now: poll's next tick cancels the job's batches and gives up its
    /// waiting parts; the job closes as [`JobStatus::Cancelled`] once its parts are in.
    Requested {
        /// When the request was recorded (RFC 3339).
        requested_at: String,
    },
    /// Requested before; nothing changed.
    AlreadyRequested {
        /// When the first request was recorded (RFC 3339).
        requested_at: String,
    },
    /// The job is closed already (completed, failed, or cancelled); nothing changed.
    AlreadyClosed {
        /// The status it closed with.
        status: JobStatus,
    },
}

/// Requests the cancellation of `job_id`: records when in its job record, with a
/// conditional write, unless the job is closed or the request was made before
/// (idempotent). Rows that already ran keep their results; every other row ends as a
/// `cancelled` error. Fails with [`PipelineError::UnknownJob`] when there is no such
/// job.
pub async fn request_cancel(
    store: &dyn ObjectStore,
    clock: &dyn Clock,
    job_id: &str,
) -> Result<CancelRequest, PipelineError> {
    let mut found = None;
    let updated = job::update(store, job_id, |record| {
        let (request, write) = match (record.status, &record.cancel_requested_at) {
            (status, _) if status.is_closed() => (CancelRequest::AlreadyClosed { status }, false),
            (_, Some(at)) => (
                CancelRequest::AlreadyRequested {
                    requested_at: at.clone(),
                },
                false,
            ),
            (_, None) => {
                let now = clock.timestamp();
                record.cancel_requested_at = Some(now.clone());
                (CancelRequest::Requested { requested_at: now }, true)
            }
        };
        found = Some(request);
        write
    })
    .await;
    match updated {
        Ok(_) => {}
        Err(PipelineError::Store(StoreError::NotFound { .. })) => {
            return Err(PipelineError::UnknownJob {
                job: job_id.to_string(),
            });
        }
        Err(e) => return Err(e),
    }
    let request = found.expect("update calls its change at least once");
    if let CancelRequest::Requested { requested_at } = &request {
        tracing::info!(job = %job_id, %requested_at, "cancellation requested");
    }
    Ok(request)
}

/// Why a part closed by submit after the job's cancellation was requested has no batch.
pub(super) const CANCELLED_BEFORE_SENT: &str =
    "the job's cancellation was requested before this part was sent; it never was";

/// Why a part still waiting for quota when the job's cancellation was requested has
/// no batch.
pub(super) const CANCELLED_WHILE_WAITING: &str =
    "the job's cancellation was requested while this part waited for quota; it was never sent";

/// Poll's part of a cancellation: asks the provider to cancel each batch of the job
/// that runs and was not asked yet, and records the answers in the job record. A
/// batch that ended already (the provider answers its end, or refuses the cancel) is
/// not asked again; a call that failed otherwise (network, server error, throttling)
/// is noted in the job's `last_error` and made again on the next tick, without
/// failing the others.
/// Poll's status calls then see the batches end and queue them for collect as usual.
/// Answers how many batches the provider took the cancel for.
pub(super) async fn cancel_batches(
    ctx: &Context,
    provider: &dyn BatchProvider,
    record: &JobRecord,
) -> Result<usize, PipelineError> {
    if record.cancel_requested_at.is_none() {
        return Ok(0);
    }
    let mut answers = Vec::new();
    for part in &record.parts {
        let due = part.is_running() && part.cancel_sent_at.is_none() && part.abandoned.is_none();
        if let (true, Some(batch_id)) = (due, part.batch_id.as_deref()) {
            answers.push((part.index, provider.cancel(batch_id).await));
        }
    }
    if answers.is_empty() {
        return Ok(0);
    }
    let now = ctx.clock.timestamp();
    job::update(ctx.store.as_ref(), &record.job_id, |record| {
        for (index, answer) in &answers {
            let Some(part) = record.parts.iter_mut().find(|p| p.index == *index) else {
                continue;
            };
            match answer {
                Ok(_) => part.cancel_sent_at = Some(now.clone()),
                Err(e) if ended_already(e) => part.cancel_sent_at = Some(now.clone()),
                // In the job, not the part: the status call that follows clears the
                // part's `poll_error`.
                Err(e) => {
                    record.last_error = Some(format!(
                        "{now}: part {index}: cancelling batch {} failed (tried again next \
                         tick): {e}",
                        part.batch_id.as_deref().unwrap_or_default()
                    ));
                }
            }
        }
        true
    })
    .await?;
    let sent = answers.iter().filter(|(_, answer)| answer.is_ok()).count();
    for (index, answer) in &answers {
        match answer {
            Ok(status) => {
                tracing::info!(job = %record.job_id, part = index, batch = %status.batch_id, state = ?status.state, "asked the provider to cancel the batch")
            }
            Err(e) => {
                tracing::warn!(job = %record.job_id, part = index, error = %e, "cancelling the batch failed")
            }
        }
    }
    Ok(sent)
}

/// A refusal that asking again will not change: the batch has ended (or is gone) and
/// can no longer be cancelled. Throttling and timeouts are worth another try.
fn ended_already(error: &crate::Error) -> bool {
    matches!(
        error,
        crate::Error::Api { status, .. } if (400..500).contains(status) && !matches!(status, 408 | 429)
    )
}
