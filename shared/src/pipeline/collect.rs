//! `collect`: streams one ended part's results from the provider through parsing and
//! schema validation into S3, then records the part and closes the job after its
//! last part.
//!
//! Redelivery is safe: result objects are rewritten with identical content, and a
//! part already recorded as collected is skipped.

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::job::{self, JobStatus, PartOutcome, keys};
use super::{Context, PipelineError, summary};
use crate::results::{Failure, Outcome, ResultParser, error_type};
use crate::status::BatchState;
use crate::storage::ObjectWriter;

/// The ready-queue message: one part of one job has ended at the provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadyMessage {
    pub job_id: String,
    pub part: u32,
}

impl ReadyMessage {
    pub fn parse(body: &str) -> Result<Self, PipelineError> {
        serde_json::from_str(body).map_err(|e| PipelineError::InvalidMessage {
            body: body.chars().take(200).collect(),
            reason: e.to_string(),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CollectOutcome {
    Collected {
        succeeded: u64,
        failed: u64,
        job_closed: bool,
    },
    /// Redelivery of a part that is already in.
    AlreadyCollected,
}

/// `final_attempt`: this is the last delivery the queue will make, so results the
/// provider did not send are recorded as errors instead of retried.
pub async fn collect(
    ctx: &Context,
    message: &ReadyMessage,
    final_attempt: bool,
) -> Result<CollectOutcome, PipelineError> {
    let snapshot = job::load(ctx.store.as_ref(), &message.job_id).await?;
    let record = &snapshot.record;
    let unknown = || PipelineError::UnknownPart {
        job: message.job_id.clone(),
        part: message.part,
    };
    let part = record
        .parts
        .iter()
        .find(|p| p.index == message.part)
        .ok_or_else(unknown)?;
    if part.collected.is_some() {
        return Ok(CollectOutcome::AlreadyCollected);
    }
    let (Some(spec), Some(batch_id)) = (record.spec.as_ref(), part.batch_id.as_deref()) else {
        return Err(unknown());
    };
    let provider = ctx.providers.provider(spec.model.provider).await?;
    let status = provider.status(batch_id).await?;
    let (_, manifest) = ctx
        .store
        .get(&keys::part_manifest(&message.job_id, message.part))
        .await?;
    let ids: Arc<[String]> = String::from_utf8_lossy(&manifest)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    let parser = ResultParser::new(
        spec.model.provider,
        &spec.output_schema(),
        Some(ids.clone()),
    )?;

    let mut part_run = PartRun::new(ctx, &message.job_id, message.part, &ids);
    if let Err(e) = part_run
        .stream_results(provider.results(batch_id).await, &parser, status.state)
        .await
    {
        part_run.abort().await;
        return Err(e);
    }
    let received = part_run.received;
    let expected = status.counts.succeeded + status.counts.failed;
    if status.state == BatchState::Completed
        && received < expected.min(ids.len() as u64)
        && !final_attempt
    {
        // The provider says it has more results than arrived: a cut download, retried.
        part_run.abort().await;
        return Err(PipelineError::IncompleteResults {
            job: message.job_id.clone(),
            part: message.part,
            received,
            expected,
        });
    }
    let outcome = part_run
        .finish(status.state, status.error.as_deref())
        .await?;
    let (succeeded, failed) = (outcome.succeeded, outcome.failed);

    let mut closed = false;
    let mut versioned = job::update(ctx.store.as_ref(), &message.job_id, |record| {
        let Some(part) = record.parts.iter_mut().find(|p| p.index == message.part) else {
            return false;
        };
        if part.collected.is_some() {
            return false;
        }
        part.collected = Some(outcome.clone());
        part.state = Some(status.state);
        part.raw_status = Some(status.raw_status.clone());
        closed =
            record.status == JobStatus::Open && record.parts.iter().all(|p| p.collected.is_some());
        if closed {
            record.status = JobStatus::Completed;
        }
        true
    })
    .await?;
    if closed {
        summary::close_job(ctx, &mut versioned).await?;
    }
    Ok(CollectOutcome::Collected {
        succeeded,
        failed,
        job_closed: closed,
    })
}

/// Results of one part on their way to S3.
struct PartRun<'a> {
    successes: ObjectWriter<'a>,
    errors: ObjectWriter<'a>,
    /// custom_id → row, and whether that row has its outcome yet.
    rows: HashMap<&'a str, usize>,
    seen: Vec<bool>,
    ids: &'a [String],
    outcome: PartOutcome,
    line: Vec<u8>,
    /// Provider lines read, whatever they held.
    received: u64,
}

impl<'a> PartRun<'a> {
    fn new(ctx: &'a Context, job: &str, part: u32, ids: &'a [String]) -> Self {
        Self {
            successes: ObjectWriter::new(ctx.store.as_ref(), keys::successes(job, part)),
            errors: ObjectWriter::new(ctx.store.as_ref(), keys::errors(job, part)),
            rows: ids
                .iter()
                .enumerate()
                .map(|(i, id)| (id.as_str(), i))
                .collect(),
            seen: vec![false; ids.len()],
            ids,
            outcome: PartOutcome::default(),
            line: Vec::with_capacity(4096),
            received: 0,
        }
    }

    async fn stream_results(
        &mut self,
        results: crate::Result<crate::provider::LineStream>,
        parser: &ResultParser,
        state: BatchState,
    ) -> Result<(), PipelineError> {
        let mut lines = match results {
            Ok(lines) => lines,
            // A batch that failed validation has no results to read.
            Err(_) if state == BatchState::Failed => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        while let Some(line) = lines.next().await {
            let line = line?;
            self.received += 1;
            let outcome = parser.parse_line(self.received, &line);
            self.record(outcome).await?;
        }
        Ok(())
    }

    /// Writes an outcome for a row that has none yet; anything else is counted and
    /// dropped so that every id appears exactly once.
    async fn record(&mut self, outcome: Outcome) -> Result<(), PipelineError> {
        match self.rows.get(outcome.custom_id()) {
            Some(&row) if !self.seen[row] => self.seen[row] = true,
            _ => {
                tracing::warn!(custom_id = %outcome.custom_id(), "result line for an unknown or repeated id, ignored");
                self.outcome.unexpected_lines += 1;
                return Ok(());
            }
        }
        self.line.clear();
        let usage = outcome.usage();
        self.outcome.usage.input_tokens += usage.input_tokens;
        self.outcome.usage.output_tokens += usage.output_tokens;
        match &outcome {
            Outcome::Success(success) => {
                self.outcome.succeeded += 1;
                success.write_jsonl(&mut self.line);
                self.successes.write(&self.line).await?;
            }
            Outcome::Error(failure) => {
                self.outcome.failed += 1;
                *self
                    .outcome
                    .errors_by_type
                    .entry(failure.error_type.clone())
                    .or_insert(0) += 1;
                failure.write_jsonl(&mut self.line);
                self.errors.write(&self.line).await?;
            }
        }
        Ok(())
    }

    /// Ids the provider sent nothing for become errors that say why, then both files
    /// are completed.
    async fn finish(
        mut self,
        state: BatchState,
        batch_error: Option<&str>,
    ) -> Result<PartOutcome, PipelineError> {
        let (kind, why) = match state {
            BatchState::Expired => (
                error_type::EXPIRED,
                "the batch expired before this request ran".to_string(),
            ),
            BatchState::Cancelled => (
                error_type::CANCELLED,
                "the batch was cancelled before this request ran".to_string(),
            ),
            BatchState::Failed => (
                BATCH_FAILED,
                format!(
                    "the provider failed the whole batch: {}",
                    batch_error.unwrap_or("no reason given")
                ),
            ),
            _ => (
                MISSING_RESULT,
                "the provider returned no result for this request".to_string(),
            ),
        };
        let missing: Vec<&String> = self
            .ids
            .iter()
            .zip(&self.seen)
            .filter(|(_, seen)| !**seen)
            .map(|(id, _)| id)
            .collect();
        for id in missing {
            self.record(Outcome::Error(Failure::new(id.clone(), kind, why.clone())))
                .await?;
        }
        if self.outcome.succeeded > 0 {
            self.successes.finish().await?;
        }
        if self.outcome.failed > 0 {
            self.errors.finish().await?;
        }
        Ok(self.outcome)
    }

    async fn abort(self) {
        self.successes.abort().await;
        self.errors.abort().await;
    }
}

/// The provider failed the batch as a whole (validation, quota).
pub const BATCH_FAILED: &str = "batch_failed";
/// The batch ended but sent nothing for the request.
pub const MISSING_RESULT: &str = "missing_result";
