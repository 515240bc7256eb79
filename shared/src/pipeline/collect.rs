//! `collect`: streams one ended part's results from the provider through parsing and
//! schema validation into S3, then records the part and closes the job after its
//! last part.
//!
//! Redelivery is safe: a part is collected under a lease taken with a conditional
//! write, result objects are rewritten with identical content, and a part already
//! recorded as collected is skipped.
//!
//! Requests that failed for a retryable reason go into a retry part (rebuilt from the
//! source object's lines) while attempts remain; that part is polled and collected
//! like any other, and its last attempt writes what still fails as errors.

use std::collections::{BTreeMap, HashMap, HashSet};

use futures::StreamExt;
use serde::Serialize;

use super::context::{Context, PipelineError};
use super::job::{self, JobRecord, JobStatus, PartOutcome, PartRecord, keys};
use super::parts::{Start, create_part, reread_rows};
pub use super::ready::ReadyMessage;
use super::row::{KeptValues, parse_kept_file, write_record};
use super::spec::{JobSpec, ResultFormat};
use super::summary;
use crate::build::{BatchBuilder, BatchPart, parse_manifest};
use crate::error::Error;
use crate::metrics;
use crate::provider::{BatchProvider, ProviderDescriptor, descriptor};
use crate::request::{AnswerFormat, Request};
use crate::results::{Failure, Outcome, ResultParser, Success, error_type};
use crate::status::BatchState;
use crate::storage::{ObjectStore, ObjectWriter};
use crate::table::ParquetSuccesses;

/// What one collect of a part did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CollectOutcome {
    /// The part's results are in S3 and the part is recorded as collected.
    Collected {
        /// Requests with a validated result.
        succeeded: u64,
        /// Requests written as errors (retried ones are not among them).
        failed: u64,
        /// It was the job's last part: the job is closed and its summary written.
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
    let unknown = || PipelineError::UnknownPart {
        job: message.job_id.clone(),
        part: message.part,
    };
    let part = snapshot
        .record
        .parts
        .iter()
        .find(|p| p.index == message.part)
        .ok_or_else(unknown)?
        .clone();
    if part.collected.is_some() {
        // A collect that died after recording its part may have left the job closed
        // without its summary: finish that.
        summary::finish_closing(ctx, snapshot).await?;
        return Ok(CollectOutcome::AlreadyCollected);
    }
    // A part given up at the job's deadline never had a batch.
    let batch_id = match &part.deadline_passed {
        Some(_) => Some(part.batch_id.clone().unwrap_or_default()),
        None => part.batch_id.clone(),
    };
    let (Some(spec), Some(batch_id)) = (snapshot.record.spec.clone(), batch_id) else {
        return Err(unknown());
    };
    if !take_lease(ctx, message).await? {
        return Ok(CollectOutcome::AlreadyCollected);
    }
    let run = CollectRun {
        ctx,
        record: &snapshot.record,
        spec: &spec,
        part: &part,
        batch_id: &batch_id,
    };
    match run.collect(final_attempt).await {
        Ok(outcome) => Ok(outcome),
        Err(e) => {
            release_lease(ctx, message).await;
            Err(e)
        }
    }
}

/// Takes the part for this invocation with a conditional write, so that two
/// deliveries of the same message never collect (and resubmit) it twice at once.
/// False when the part turned out to be collected already.
async fn take_lease(ctx: &Context, message: &ReadyMessage) -> Result<bool, PipelineError> {
    let mut busy_until = None;
    let mut collected = false;
    job::update(ctx.store.as_ref(), &message.job_id, |record| {
        busy_until = None;
        collected = false;
        let Some(part) = record.parts.iter_mut().find(|p| p.index == message.part) else {
            return false;
        };
        if part.collected.is_some() {
            collected = true;
            return false;
        }
        if let Some(until) = &part.collect_lease_until
            && !ctx.clock.has_passed(until)
        {
            busy_until = Some(until.clone());
            return false;
        }
        part.collect_lease_until = Some(ctx.clock.after(ctx.settings.collect_lease));
        true
    })
    .await?;
    if let Some(until) = busy_until {
        return Err(PipelineError::Busy {
            job: message.job_id.clone(),
            part: message.part,
            until,
        });
    }
    Ok(!collected)
}

/// Gives the part back after a failure, so that the next delivery need not wait for
/// the lease (best effort: the lease runs out anyway).
async fn release_lease(ctx: &Context, message: &ReadyMessage) {
    let released = job::update(ctx.store.as_ref(), &message.job_id, |record| {
        match record.parts.iter_mut().find(|p| p.index == message.part) {
            Some(part) if part.collected.is_none() && part.collect_lease_until.is_some() => {
                part.collect_lease_until = None;
                true
            }
            _ => false,
        }
    })
    .await;
    if let Err(e) = released {
        tracing::warn!(job = %message.job_id, part = message.part, error = %e, "could not release the collect lease; it runs out by itself");
    }
}

/// One collect of one part, holding its lease.
struct CollectRun<'a> {
    ctx: &'a Context,
    record: &'a JobRecord,
    spec: &'a JobSpec,
    part: &'a PartRecord,
    batch_id: &'a str,
}

impl CollectRun<'_> {
    async fn collect(&self, final_attempt: bool) -> Result<CollectOutcome, PipelineError> {
        let (ctx, job_id, index) = (self.ctx, self.record.job_id.as_str(), self.part.index);
        let provider = ctx.providers.provider(self.spec.model.provider).await?;
        // A part poll gave up on is not asked again; a status that cannot be read on
        // the last delivery is recorded: either way every request gets an error that
        // says why, and nothing stays unknown.
        let (status, mut read_failure) = match (self.part.given_up(), &self.part.abandoned) {
            (Some((kind, reason)), _) => (
                self.part.last_seen_status(self.batch_id),
                Some((kind, reason.to_string())),
            ),
            (None, Some(reason)) => (
                self.part.last_seen_status(self.batch_id),
                Some((BATCH_UNREACHABLE, reason.clone())),
            ),
            (None, None) => match provider.status(self.batch_id).await {
                Ok(status) => (status, None),
                Err(e) if final_attempt => {
                    tracing::error!(job = %job_id, part = index, error = %e, "status unreadable on the last delivery; recording the part as errors");
                    let why = format!("the batch status could not be read: {e}");
                    (
                        self.part.last_seen_status(self.batch_id),
                        Some((error_type::READ_ERROR, why)),
                    )
                }
                Err(e) => return Err(e.into()),
            },
        };
        let (_, manifest) = ctx.store.get(&keys::part_manifest(job_id, index)).await?;
        let requests = parse_manifest(&String::from_utf8_lossy(&manifest));
        let ids: Vec<String> = requests.iter().flatten().cloned().collect();
        let kept = self.kept_values(ids.len()).await?;
        let (provider_kind, format) = (self.spec.model.provider, self.answer_format()?);
        let packed = self.spec.rows_per_request > 1;
        let request_sizes: Vec<u32> = requests.iter().map(|r| r.len() as u32).collect();
        let parser = match packed {
            true => ResultParser::packed(provider_kind, &format, requests.into())?,
            false => ResultParser::with_format(provider_kind, &format, ids.clone().into())?,
        };

        // Failures are held back for a retry part while attempts remain, and rows of a
        // packed request that was too long always (in smaller requests).
        let retry = RetryRule {
            provider: descriptor(provider_kind),
            // Past the deadline, or once the job's cancellation is requested, nothing
            // is submitted again.
            attempts_left: self.part.attempt < self.spec.max_attempts
                && self.part.deadline_passed.is_none()
                && self.record.cancel_requested_at.is_none(),
            request_sizes: packed.then_some(request_sizes),
        };
        let mut part_run = PartRun::new(ctx, self.record, self.part, &ids, &kept, retry)?;
        if self.spec.skip_succeeded {
            part_run.succeeded_ids = Some(Vec::new());
        }
        // The last delivery records what could not be read instead of failing again
        // (a refused results URL, a stream that always breaks): nothing stays unknown.
        if read_failure.is_none()
            && let Err(e) = part_run
                .stream_results(provider.results(self.batch_id).await, &parser, status.state)
                .await
        {
            if !final_attempt {
                part_run.abort().await;
                return Err(e);
            }
            tracing::error!(job = %job_id, part = index, error = %e, "results unreadable on the last delivery; recording the rest as errors");
            let why = format!("the results could not be read: {e}");
            read_failure = Some((error_type::READ_ERROR, why));
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
                job: job_id.to_string(),
                part: index,
                received,
                expected,
            });
        }
        part_run
            .record_missing(status.state, status.error.as_deref(), read_failure)
            .await?;
        let retry = match part_run.retryable.is_empty() {
            true => None,
            false => self.retry_part(&part_run.retryable).await?,
        };
        part_run
            .settle_retryable(retry.as_ref().map(|retry| &retry.part))
            .await?;
        let succeeded_ids = std::mem::take(&mut part_run.succeeded_ids);
        let outcome = part_run.finish().await?;
        let ended_at = status.ended_at.as_deref();
        let latency = metrics::results_written(ctx.clock.now(), &self.record.labels(), ended_at);
        // After the results are in S3, so that the ledger never names a job whose
        // answer is not there yet; a crash before the job record is updated redoes both.
        if let Some(ids) = succeeded_ids {
            self.record_successes(&ids).await?;
        }
        let (succeeded, failed) = (outcome.succeeded, outcome.failed);
        // Created last, just before the record names it: the shortest window in which
        // a crash leaves a batch that Anthropic (no tags) cannot find again.
        let retry_part = match retry {
            Some(retry) => Some(self.submit_retry(provider.as_ref(), &retry).await?),
            None => None,
        };

        let mut closed = false;
        let mut versioned = job::update(ctx.store.as_ref(), job_id, |record| {
            let Some(part) = record.parts.iter_mut().find(|p| p.index == index) else {
                return false;
            };
            if part.collected.is_some() {
                return false;
            }
            part.collected = Some(outcome.clone());
            part.collect_lease_until = None;
            part.state = Some(status.state);
            part.raw_status = Some(status.raw_status.clone());
            if let Some(retry) = &retry_part
                && !record.parts.iter().any(|p| p.index == retry.index)
            {
                record.parts.push(retry.clone());
            }
            closed = record.status == JobStatus::Open
                && record.parts.iter().all(|p| p.collected.is_some());
            if closed {
                // A failure noted while the job ran (an upload not read to its end)
                // makes it failed once its parts are in, a cancellation cancelled.
                record.status = record.closing_status();
            }
            true
        })
        .await?;
        ctx.metrics.emit(&latency);
        if closed {
            summary::close_job(ctx, &mut versioned).await?;
        }
        Ok(CollectOutcome::Collected {
            succeeded,
            failed,
            job_closed: closed,
        })
    }

    /// Tells the ledger that `ids` succeeded in this job, so that later uploads of the
    /// pipeline skip them (`skip_succeeded`).
    async fn record_successes(&self, ids: &[String]) -> Result<(), PipelineError> {
        let (Some(ledger), Some(pipeline)) = (&self.ctx.ledger, self.record.pipeline()) else {
            // Submit refuses such a job before anything is sent.
            return Ok(());
        };
        ledger.record(pipeline, &self.record.job_id, ids).await?;
        Ok(())
    }

    /// The job's answer format (its spec was checked at submit, so this fails only
    /// for a record changed by hand).
    fn answer_format(&self) -> Result<AnswerFormat, PipelineError> {
        Ok(self.spec.answer_format().map_err(Error::Config)?)
    }

    /// The kept values of the part's `rows` rows, in manifest order; empty when the
    /// job keeps nothing.
    async fn kept_values(&self, rows: usize) -> Result<Vec<KeptValues>, PipelineError> {
        if self.spec.keep.is_empty() {
            return Ok(Vec::new());
        }
        let key = keys::part_kept(&self.record.job_id, self.part.index);
        let (_, file) = self.ctx.store.get(&key).await?;
        parse_kept_file(&file, rows).map_err(|reason| PipelineError::CorruptRecord { key, reason })
    }

    /// Builds a new part from the original request lines of the held-back failures'
    /// rows: rows of a packed request that was too long go in two requests of half its
    /// rows each, the others are packed as usual. `None` when it cannot be built (the
    /// source object is gone): the failures stay final.
    async fn retry_part(&self, held: &[HeldBack]) -> Result<Option<RetryPart>, PipelineError> {
        let (job_id, index) = (self.record.job_id.as_str(), self.part.index);
        let wanted: HashSet<&str> = held.iter().map(|h| h.failure.custom_id.as_str()).collect();
        let Some(rows) =
            reread_rows(self.ctx, self.record.rows_source(), self.spec, &wanted).await?
        else {
            tracing::warn!(job = %job_id, part = index, "the source object is gone: retryable failures are final");
            return Ok(None);
        };
        let too_long: HashMap<&str, u32> = held
            .iter()
            .filter_map(|h| Some((h.failure.custom_id.as_str(), h.too_long_request?)))
            .collect();
        let mut halves: BTreeMap<u32, Vec<Request>> = BTreeMap::new();
        let mut builder = BatchBuilder::packed(
            &self.spec.model,
            &self.answer_format()?,
            &self.spec.params(),
            self.spec.rows_per_request,
        )?;
        let mut closed = Vec::new();
        let mut kept: HashMap<String, KeptValues> = HashMap::new();
        for row in rows {
            let request = row.request;
            if let Some(values) = row.kept {
                kept.insert(request.custom_id.clone(), values);
            }
            match too_long.get(request.custom_id.as_str()) {
                Some(&from) => halves.entry(from).or_default().push(request),
                None => closed.extend(builder.push(&request)?),
            }
        }
        for rows in halves.values() {
            let (first, second) = rows.split_at(rows.len().div_ceil(2));
            closed.extend(builder.push_together(first)?);
            closed.extend(builder.push_together(second)?);
        }
        closed.extend(builder.finish());
        // A subset of one part always fits in one part; if not, do not guess.
        let mut batch = match (closed.pop(), closed.is_empty()) {
            (Some(batch), true) => batch,
            (None, _) => return Ok(None),
            (Some(_), false) => {
                tracing::warn!(job = %job_id, part = index, "the retry part does not fit one batch: failures are final");
                return Ok(None);
            }
        };
        let min_requests = self.ctx.settings.min_requests(self.spec.model.provider);
        if batch.request_rows.len() < min_requests {
            tracing::warn!(job = %job_id, part = index, requests = batch.request_rows.len(), min_requests, "too few failures for a batch of their own: they are final");
            return Ok(None);
        }
        // Deterministic, so that a rerun finds the same part: after every first-attempt
        // part, at the same offset as the part it retries.
        let initial_parts = self
            .record
            .parts
            .iter()
            .filter(|p| p.retry_of.is_none())
            .count() as u32;
        batch.index = index + initial_parts;
        Ok(Some(RetryPart { part: batch, kept }))
    }

    /// Creates the retry part's batch (or finds the one a crashed collect created); a
    /// retry part the provider refuses for quota waits like any other part.
    async fn submit_retry(
        &self,
        provider: &dyn BatchProvider,
        retry: &RetryPart,
    ) -> Result<PartRecord, PipelineError> {
        let (job_id, index) = (self.record.job_id.as_str(), self.part.index);
        let batch = &retry.part;
        let keeps = !self.spec.keep.is_empty();
        let created = create_part(
            self.ctx,
            provider,
            &self.spec.model.model,
            job_id,
            batch,
            keeps.then_some(&retry.kept),
            Start::Create { find_first: true },
        )
        .await?;
        tracing::info!(job = %job_id, part = index, retry_part = batch.index, batch = ?created.batch_id, requests = batch.custom_ids.len(), "resubmitted retryable failures");
        Ok(PartRecord {
            attempt: self.part.attempt + 1,
            retry_of: Some(index),
            ..created
        })
    }
}

/// A retry part, with the kept values of its rows by id.
struct RetryPart {
    part: BatchPart,
    kept: HashMap<String, KeptValues>,
}

/// Failures worth another attempt: throttling, overload and server errors (each
/// provider's own types for them, from its descriptor), and requests that never ran
/// because the batch expired. Failures of the request itself (invalid, refused,
/// schema) would fail again. A cancellation is a person's decision (in the provider's
/// console, or the job's cancellation request): it is final, never resubmitted.
fn is_retryable(provider: &dyn ProviderDescriptor, failure: &Failure) -> bool {
    matches!(
        failure.error_type.as_str(),
        error_type::RATE_LIMIT | error_type::EXPIRED
    ) || provider.is_temporary_failure(&failure.error_type, &failure.error_message)
}

/// A result line with the number of attempts its request took.
#[derive(Serialize)]
struct Attempted<'a, T: Serialize> {
    #[serde(flatten)]
    outcome: &'a T,
    attempts: u32,
}

/// Results of one part on their way to S3.
struct PartRun<'a> {
    store: &'a dyn ObjectStore,
    /// The successes' JSONL, unless the spec's `formats` leave it out.
    successes: Option<ObjectWriter<'a>>,
    /// The successes' Parquet, when the job has a table layout.
    table: Option<TableRun<'a>>,
    errors: ObjectWriter<'a>,
    /// custom_id → row, and whether that row has its outcome yet.
    rows: HashMap<&'a str, usize>,
    seen: Vec<bool>,
    ids: &'a [String],
    /// Each row's kept values, in row order; empty when the job keeps nothing.
    kept: &'a [KeptValues],
    outcome: PartOutcome,
    line: Vec<u8>,
    /// Provider lines read, whatever they held.
    received: u64,
    attempt: u32,
    /// Which failures go into a retry part.
    retry: RetryRule,
    /// For packed parts: the request each row was in (rows are in request order).
    request_of_row: Vec<u32>,
    /// Failures held back for a retry part (raw data dropped to bound memory).
    retryable: Vec<HeldBack>,
    /// Ids of the rows that succeeded, kept when the job records them in the success
    /// ledger (`skip_succeeded`).
    succeeded_ids: Option<Vec<String>>,
    /// Where the JSONL successes go, or are removed from when left out.
    successes_key: String,
}

/// The successes of one part on their way to S3 as Parquet.
struct TableRun<'a> {
    encoder: ParquetSuccesses,
    object: ObjectWriter<'a>,
}

impl TableRun<'_> {
    async fn push(
        &mut self,
        success: &Success,
        attempts: u32,
        kept: Option<&KeptValues>,
    ) -> Result<(), PipelineError> {
        self.encoder.push(success, attempts, kept)?;
        let ready = self.encoder.take_ready_bytes();
        if !ready.is_empty() {
            self.object.write(&ready).await?;
        }
        Ok(())
    }

    async fn finish(mut self) -> Result<(), PipelineError> {
        let mismatched = self.encoder.mismatched_values();
        if mismatched > 0 {
            tracing::warn!(key = %self.object.key(), mismatched, "values that do not fit their Parquet column (integers beyond 64 bits) are stored as null; the JSONL has them");
        }
        let rest = self.encoder.finish()?;
        self.object.write(&rest).await?;
        self.object.finish().await?;
        Ok(())
    }
}

/// Which failures of a part are held back for a retry part.
struct RetryRule {
    provider: &'static dyn ProviderDescriptor,
    /// Temporary failures are retried while the part's attempt is below `max_attempts`.
    attempts_left: bool,
    /// For packed parts, the rows of each request: a request of several rows that failed
    /// for its length is split however many attempts were made, since each split
    /// halves it.
    request_sizes: Option<Vec<u32>>,
}

/// A failure held back for a retry part.
struct HeldBack {
    failure: Failure,
    /// The packed request it was in, when that request was too long and is split.
    too_long_request: Option<u32>,
}

impl<'a> PartRun<'a> {
    fn new(
        ctx: &'a Context,
        record: &JobRecord,
        part: &PartRecord,
        ids: &'a [String],
        kept: &'a [KeptValues],
        retry: RetryRule,
    ) -> Result<Self, PipelineError> {
        let (store, job) = (ctx.store.as_ref(), record.job_id.as_str());
        let jsonl = record
            .spec
            .as_ref()
            .is_none_or(|spec| spec.writes(ResultFormat::Jsonl));
        let table = match &record.table {
            Some(layout) => Some(TableRun {
                encoder: ParquetSuccesses::new(layout)?,
                object: ObjectWriter::new(store, keys::successes_parquet(job, part.index)),
            }),
            None => None,
        };
        let request_of_row = retry
            .request_sizes
            .iter()
            .flatten()
            .enumerate()
            .flat_map(|(request, &rows)| std::iter::repeat_n(request as u32, rows as usize))
            .collect();
        Ok(Self {
            store,
            successes: jsonl.then(|| ObjectWriter::new(store, keys::successes(job, part.index))),
            table,
            errors: ObjectWriter::new(store, keys::errors(job, part.index)),
            rows: ids
                .iter()
                .enumerate()
                .map(|(i, id)| (id.as_str(), i))
                .collect(),
            seen: vec![false; ids.len()],
            ids,
            kept,
            outcome: PartOutcome::default(),
            line: Vec::with_capacity(4096),
            received: 0,
            attempt: part.attempt,
            retry,
            request_of_row,
            retryable: Vec::new(),
            succeeded_ids: None,
            successes_key: keys::successes(job, part.index),
        })
    }

    /// Whether `failure` of row `row` goes into a retry part, and whether as part of
    /// a too-long packed request (`Some(request)`) to be split.
    fn holds_back(&self, row: usize, failure: &Failure) -> Option<Option<u32>> {
        let RetryRule {
            provider,
            attempts_left,
            request_sizes,
        } = &self.retry;
        if let Some(sizes) = request_sizes {
            let request = self.request_of_row[row];
            if sizes[request as usize] > 1
                && provider.is_length_failure(&failure.error_type, &failure.error_message)
            {
                return Some(Some(request));
            }
        }
        let worth_retrying = is_retryable(*provider, failure)
            || (request_sizes.is_some()
                && matches!(
                    failure.error_type.as_str(),
                    error_type::MISSING_ROW | error_type::REPEATED_ROW
                ));
        (*attempts_left && worth_retrying).then_some(None)
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
        let mut outcomes = Vec::new();
        while let Some(line) = lines.next().await {
            let line = line?;
            self.received += 1;
            parser.parse_line_into(self.received, &line, &mut outcomes);
            for outcome in outcomes.drain(..) {
                self.record(outcome).await?;
            }
        }
        Ok(())
    }

    /// Writes an outcome for a row that has none yet (or holds a retryable failure
    /// back); anything else is counted and dropped so that every id appears once.
    async fn record(&mut self, mut outcome: Outcome) -> Result<(), PipelineError> {
        // `line` in result files means the line of the uploaded file; the provider's
        // results-file line only matters for a line that was not readable at all.
        if let Outcome::Error(failure) = &mut outcome
            && failure.error_type != error_type::MALFORMED_LINE
        {
            failure.line = None;
        }
        let row = match self.rows.get(outcome.custom_id()) {
            Some(&row) if !self.seen[row] => {
                self.seen[row] = true;
                row
            }
            _ => {
                tracing::warn!(custom_id = %outcome.custom_id(), "result line for an unknown or repeated id, ignored");
                self.outcome.unexpected_lines += 1;
                return Ok(());
            }
        };
        self.outcome.usage.add(&outcome.usage());
        match outcome {
            Outcome::Success(success) => {
                self.outcome.succeeded += 1;
                if let Some(ids) = &mut self.succeeded_ids {
                    ids.push(success.custom_id.clone());
                }
                let kept = self.kept.get(row);
                if let Some(successes) = &mut self.successes {
                    self.line.clear();
                    let attempted = Attempted {
                        outcome: &success,
                        attempts: self.attempt,
                    };
                    write_record(&attempted, &success.custom_id, kept, &mut self.line);
                    successes.write(&self.line).await?;
                }
                if let Some(table) = &mut self.table {
                    table.push(&success, self.attempt, kept).await?;
                }
            }
            Outcome::Error(mut failure) => match self.holds_back(row, &failure) {
                Some(too_long_request) => {
                    failure.raw_data = None;
                    self.retryable.push(HeldBack {
                        failure,
                        too_long_request,
                    });
                }
                None => self.write_error(&failure).await?,
            },
        }
        Ok(())
    }

    async fn write_error(&mut self, failure: &Failure) -> Result<(), PipelineError> {
        self.outcome.failed += 1;
        *self
            .outcome
            .errors_by_type
            .entry(failure.error_type.clone())
            .or_insert(0) += 1;
        summary::note_error(
            &mut self.outcome.error_groups,
            &failure.error_type,
            &failure.error_message,
        );
        self.line.clear();
        let attempted = Attempted {
            outcome: failure,
            attempts: self.attempt,
        };
        let kept = self.rows.get(failure.custom_id.as_str());
        let kept = kept.and_then(|&row| self.kept.get(row));
        write_record(&attempted, &failure.custom_id, kept, &mut self.line);
        self.errors.write(&self.line).await?;
        Ok(())
    }

    /// Ids the provider sent nothing for get an outcome that says why.
    /// `read_failure` (error type, reason) applies to every request when the
    /// results could not be read at all.
    async fn record_missing(
        &mut self,
        state: BatchState,
        batch_error: Option<&str>,
        read_failure: Option<(&'static str, String)>,
    ) -> Result<(), PipelineError> {
        let (kind, why) = match state {
            _ if let Some(failure) = read_failure => failure,
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
        Ok(())
    }

    /// Held-back failures are either in the retry part (counted as retried) or, when
    /// none could be made for them, written as errors now.
    async fn settle_retryable(&mut self, retry: Option<&BatchPart>) -> Result<(), PipelineError> {
        let resubmitted: HashSet<&str> = retry
            .iter()
            .flat_map(|part| part.custom_ids.iter().map(String::as_str))
            .collect();
        for held in std::mem::take(&mut self.retryable) {
            match resubmitted.contains(held.failure.custom_id.as_str()) {
                true => self.outcome.retried += 1,
                false => self.write_error(&held.failure).await?,
            }
        }
        Ok(())
    }

    /// Completes the files; a file with nothing in it (or the JSONL successes the
    /// spec leaves out) is removed instead, so that one an earlier attempt wrote
    /// cannot linger next to the others.
    async fn finish(self) -> Result<PartOutcome, PipelineError> {
        let (succeeded, failed) = (self.outcome.succeeded, self.outcome.failed);
        match self.successes {
            Some(writer) if succeeded > 0 => _ = writer.finish().await?,
            _ => self.store.delete(&self.successes_key).await?,
        }
        if let Some(table) = self.table {
            match succeeded > 0 {
                true => table.finish().await?,
                false => self.store.delete(table.object.key()).await?,
            }
        }
        match failed > 0 {
            true => _ = self.errors.finish().await?,
            false => self.store.delete(self.errors.key()).await?,
        }
        Ok(self.outcome)
    }

    async fn abort(self) {
        if let Some(successes) = self.successes {
            successes.abort().await;
        }
        if let Some(table) = self.table {
            table.object.abort().await;
        }
        self.errors.abort().await;
    }
}

/// The provider failed the batch as a whole (validation, quota).
pub const BATCH_FAILED: &str = "batch_failed";
/// The batch ended but sent nothing for the request.
pub const MISSING_RESULT: &str = "missing_result";
/// The provider kept refusing status calls for the batch (a revoked key, a batch
/// deleted at the provider) until poll gave it up.
pub const BATCH_UNREACHABLE: &str = "batch_unreachable";
