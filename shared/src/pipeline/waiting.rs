//! Parts waiting for quota: the limits that hold for a job, what the open jobs'
//! batches hold at the providers, and poll's start of waiting parts as earlier batches
//! end (or giving them up at the job's deadline, or when its cancellation is
//! requested).
//!
//! A waiting part has its manifest and batch input in the bucket but no batch. Poll
//! starts waiting parts oldest job first, each job's in part order, and only while
//! they fit; a part is claimed with a conditional write before its batch is created,
//! so two polls never create it twice, and its batch is tagged with its wait count, so
//! a crash after the create is found again.

use std::collections::HashSet;

use futures::StreamExt;

use super::cancel::CANCELLED_WHILE_WAITING;
use super::context::{Context, PipelineError};
use super::job::{self, GiveUp, JobRecord, JobStatus, PartRecord, keys};
use super::parts::{PartBatch, start_batch};
use super::ready::send_ready;
use super::spec::JobSpec;
use crate::model::ProviderKind;
use crate::quota::{InFlight, QuotaLimits};
use crate::storage::StoreError;

/// The limits that hold for a job of `spec`: its `quota`, completed by the deployment's.
pub(super) fn job_limits(ctx: &Context, spec: &JobSpec) -> QuotaLimits {
    let deployed = ctx.settings.quotas.limits_for(&spec.model);
    spec.quota.unwrap_or_default().or(deployed)
}

/// Counts the job's parts whose batch exists and has not ended.
pub(super) fn add_job(in_flight: &mut InFlight, record: &JobRecord) {
    let Some(spec) = &record.spec else {
        return;
    };
    let ratio = record.token_ratio();
    for part in record.parts.iter().filter(|p| p.is_running()) {
        in_flight.add(&spec.model, part.load(ratio));
    }
}

/// What the batches of every open job but `except` hold, as their records last saw them.
pub(super) async fn in_flight_of_open_jobs(
    ctx: &Context,
    except: &str,
) -> Result<InFlight, PipelineError> {
    let mut in_flight = InFlight::default();
    for record in open_job_records(ctx, &[except]).await? {
        add_job(&mut in_flight, &record);
    }
    Ok(in_flight)
}

/// The records of every open job but those in `except`, as last written,
/// `Settings::poll_concurrency` reads at a time.
pub(super) async fn open_job_records(
    ctx: &Context,
    except: &[&str],
) -> Result<Vec<JobRecord>, PipelineError> {
    let listed = ctx.store.list(keys::OPEN).await?;
    let loads = listed
        .iter()
        .filter_map(|key| key.strip_prefix(keys::OPEN))
        .filter(|job_id| !except.contains(job_id))
        .map(|job_id| job::load(ctx.store.as_ref(), job_id));
    let mut loaded = futures::stream::iter(loads).buffered(ctx.settings.poll_concurrency.max(1));
    let mut records = Vec::new();
    while let Some(result) = loaded.next().await {
        match result {
            Ok(versioned) => records.push(versioned.record),
            // Closed between the list and the read.
            Err(PipelineError::Store(StoreError::NotFound { .. })) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(records)
}

/// What one pass over the waiting parts did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Started {
    /// Parts whose batch was created.
    pub started: usize,
    /// Parts that still wait.
    pub waiting: usize,
    /// Parts given up at their job's deadline (queued for collect).
    pub expired: usize,
}

/// Starts the waiting parts of `records` (every open job, as poll just saw them)
/// that fit next to what runs, oldest job first; gives up those past their job's
/// deadline or whose job's cancellation was requested. A job whose parts could not
/// be started is listed in `failed`.
pub(super) async fn start_waiting_parts(
    ctx: &Context,
    records: &[JobRecord],
    failed: &mut Vec<String>,
) -> Started {
    let mut in_flight = InFlight::default();
    for record in records {
        add_job(&mut in_flight, record);
    }
    let mut jobs: Vec<&JobRecord> = records.iter().filter(|r| has_waiting_parts(r)).collect();
    jobs.sort_by(|a, b| a.created_at.cmp(&b.created_at));
    let mut pass = Pass {
        ctx,
        in_flight,
        refused: HashSet::new(),
        done: Started::default(),
    };
    for record in jobs {
        if let Err(e) = pass.job(record).await {
            tracing::warn!(job = %record.job_id, error = %e, "starting waiting parts failed; next tick retries");
            failed.push(record.job_id.clone());
        }
    }
    pass.done
}

/// Whether the job is open and has parts waiting for quota (or for their expiry).
pub(super) fn has_waiting_parts(record: &JobRecord) -> bool {
    record.status == JobStatus::Open && record.parts.iter().any(is_waiting)
}

fn is_waiting(part: &PartRecord) -> bool {
    part.waiting_since.is_some() && part.deadline_passed.is_none()
}

/// One poll's pass over the waiting parts.
struct Pass<'a> {
    ctx: &'a Context,
    in_flight: InFlight,
    /// Providers that refused a create for quota in this pass: nothing more is tried
    /// there until the next tick.
    refused: HashSet<ProviderKind>,
    done: Started,
}

impl Pass<'_> {
    async fn job(&mut self, record: &JobRecord) -> Result<(), PipelineError> {
        let ctx = self.ctx;
        let Some(spec) = &record.spec else {
            return Ok(());
        };
        if record.cancel_requested_at.is_some() {
            let reason = CANCELLED_WHILE_WAITING.to_string();
            give_up_waiting(ctx, &record.job_id, GiveUp::Cancel, reason).await?;
            return Ok(());
        }
        if ctx.clock.has_passed_by(&record.created_at, spec.deadline()) {
            return self.expire(record, spec).await;
        }
        let limits = job_limits(ctx, spec);
        let provider = ctx.providers.provider(spec.model.provider).await?;
        let waiting: Vec<&PartRecord> = record.parts.iter().filter(|p| is_waiting(p)).collect();
        let ratio = record.token_ratio();
        self.done.waiting += waiting.len();
        for part in waiting {
            // In part order: a later part never overtakes an earlier one.
            if self.refused.contains(&spec.model.provider)
                || !self.in_flight.admit(&spec.model, &limits, part.load(ratio))
            {
                return Ok(());
            }
            if !self.claim(&record.job_id, part.index).await? {
                continue;
            }
            let batch = PartBatch {
                job_id: &record.job_id,
                index: part.index,
                quota_waits: part.quota_waits,
            };
            let body = ctx
                .store
                .get(&keys::part_requests(&record.job_id, part.index))
                .await;
            let created = match body {
                Ok((_, body)) => {
                    start_batch(provider.as_ref(), &spec.model.model, &batch, body, true).await
                }
                Err(e) => {
                    self.release(&record.job_id, part.index, &e.to_string())
                        .await;
                    return Err(e.into());
                }
            };
            match created {
                Ok(status) => {
                    self.record_started(&record.job_id, part.index, status)
                        .await?;
                    self.done.started += 1;
                    self.done.waiting -= 1;
                }
                Err(e) => {
                    self.release(&record.job_id, part.index, &e.to_string())
                        .await;
                    if !matches!(e, crate::Error::QuotaExceeded { .. }) {
                        return Err(e.into());
                    }
                    tracing::info!(job = %record.job_id, part = part.index, error = %e, "the provider refused the waiting part for quota");
                    self.refused.insert(spec.model.provider);
                }
            }
        }
        Ok(())
    }

    /// Takes the part for this poll; false when it no longer waits or another poll
    /// is creating it.
    async fn claim(&self, job_id: &str, index: u32) -> Result<bool, PipelineError> {
        let ctx = self.ctx;
        let mut claimed = false;
        job::update(ctx.store.as_ref(), job_id, |record| {
            claimed = false;
            let Some(part) = record.parts.iter_mut().find(|p| p.index == index) else {
                return false;
            };
            let free = part
                .create_lease_until
                .as_deref()
                .is_none_or(|until| ctx.clock.has_passed(until));
            // A job cancelled since poll read it creates nothing more.
            if !is_waiting(part) || !free || record.cancel_requested_at.is_some() {
                return false;
            }
            part.create_lease_until = Some(ctx.clock.after(ctx.settings.submit_lease));
            claimed = true;
            true
        })
        .await?;
        Ok(claimed)
    }

    /// Gives the claim back after a failed create, noting why in the part.
    async fn release(&self, job_id: &str, index: u32, why: &str) {
        let ctx = self.ctx;
        let noted = format!(
            "{}: creating the waiting part's batch failed: {why}",
            ctx.clock.timestamp()
        );
        let released = job::update(ctx.store.as_ref(), job_id, |record| {
            match record.parts.iter_mut().find(|p| p.index == index) {
                Some(part) if part.create_lease_until.is_some() => {
                    part.create_lease_until = None;
                    part.poll_error = Some(noted.clone());
                    true
                }
                _ => false,
            }
        })
        .await;
        if let Err(e) = released {
            tracing::warn!(job = %job_id, part = index, error = %e, "could not release the create lease; it runs out by itself");
        }
    }

    /// Records the batch the waiting part now has, and how long it waited.
    async fn record_started(
        &self,
        job_id: &str,
        index: u32,
        status: crate::status::BatchStatus,
    ) -> Result<(), PipelineError> {
        let ctx = self.ctx;
        tracing::info!(job = %job_id, part = index, batch = %status.batch_id, "started a part that waited for quota");
        job::update(ctx.store.as_ref(), job_id, |record| {
            let Some(part) = record.parts.iter_mut().find(|p| p.index == index) else {
                return false;
            };
            if let Some(since) = part.waiting_since.take() {
                part.waited_seconds += ctx.clock.seconds_since(&since);
            }
            part.batch_id = Some(status.batch_id.clone());
            part.state = Some(status.state);
            part.raw_status = Some(status.raw_status.clone());
            part.batch_error = status.error.clone();
            part.create_lease_until = None;
            part.poll_error = None;
            true
        })
        .await?;
        Ok(())
    }

    /// The job's deadline passed: its waiting parts are given up and queued, and
    /// collect records their rows as `expired`.
    async fn expire(&mut self, record: &JobRecord, spec: &JobSpec) -> Result<(), PipelineError> {
        let reason = format!(
            "the part waited for the provider's quota until the job's deadline ({} hours \
             after the upload, spec field `deadline_hours`) and was never submitted",
            spec.deadline_hours
        );
        self.done.expired +=
            give_up_waiting(self.ctx, &record.job_id, GiveUp::Deadline, reason).await?;
        Ok(())
    }
}

/// Gives up the job's waiting parts (but one a poll is creating now) for `why` with
/// `reason`, and queues them: collect records their rows as errors of `why`'s type.
/// Answers how many were given up.
async fn give_up_waiting(
    ctx: &Context,
    job_id: &str,
    why: GiveUp,
    reason: String,
) -> Result<usize, PipelineError> {
    let mut given_up = Vec::new();
    job::update(ctx.store.as_ref(), job_id, |record| {
        given_up.clear();
        let now = ctx.clock.timestamp();
        for part in record.parts.iter_mut().filter(|p| is_waiting(p)) {
            let creating = part
                .create_lease_until
                .as_deref()
                .is_some_and(|until| !ctx.clock.has_passed(until));
            if creating {
                continue;
            }
            if let Some(since) = part.waiting_since.as_deref() {
                part.waited_seconds += ctx.clock.seconds_since(since);
            }
            part.give_up(why, reason.clone());
            part.enqueued_at = Some(now.clone());
            given_up.push(part.index);
        }
        !given_up.is_empty()
    })
    .await?;
    send_ready(ctx, job_id, &given_up).await?;
    tracing::warn!(job = %job_id, parts = given_up.len(), ?why, "parts still waiting for quota were given up");
    Ok(given_up.len())
}
