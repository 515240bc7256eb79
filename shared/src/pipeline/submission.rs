//! Submission: an uploaded object becomes a job with one provider batch per part.
//! Shared by the `submit` step (a new upload) and `poll` (a submit that died).
//!
//! The job record is created with a conditional write before anything is paid for,
//! so a repeated S3 event finds it and stops. A submit that died halfway is resumed
//! by the next event (or by poll) once its lease has passed: parts that already have
//! a batch are skipped, and a batch created just before the crash is found again by
//! its tags.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;

use super::context::{Context, PipelineError};
use super::csv_input::is_csv_key;
use super::id_set::IdSet;
use super::input::{INVALID_INPUT, InputError, InputLine};
use super::job::{
    self, InputRead, JobRecord, JobStatus, PartRecord, SourceObject, SubmitCheckpoint, Versioned,
    keys,
};
use super::parts::{Start, create_part, open_reader};
use super::ready::JobMessage;
use super::rerun;
use super::row::{InputRow, KeptValues, RowRejection, write_record};
use super::skip::{Replay, SkipCheck, Skipped};
use super::spec::{self, JobSpec, ResultFormat, SpecHeader};
use super::summary;
use super::upload::{UploadRows, next_line};
use super::waiting::{add_job, in_flight_of_open_jobs, job_limits};
use crate::build::{BatchBuilder, BatchPart, parse_manifest};
use crate::metrics;
use crate::provider::{BatchProvider, PartLimits, descriptor};
use crate::quota::{InFlight, Load, QuotaLimits, estimated_tokens, max_bytes_for_tokens};
use crate::results::{Failure, ResultParser};
use crate::storage::{ObjectMeta, ObjectWriter, PutMode, StoreError};
use crate::table::TableLayout;

/// What one submission did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum SubmitOutcome {
    /// Every part has its provider batch (with every line rejected, none: the job is
    /// then closed with only errors).
    Submitted {
        /// The job's id.
        job_id: String,
        /// Parts created, one provider batch each.
        parts: usize,
        /// Request lines read (header excluded).
        requests: u64,
        /// Lines rejected before submission (in `errors/input.jsonl`).
        rejected_lines: u64,
    },
    /// The job exists and is past submission: a repeated event.
    Duplicate {
        /// The job's id.
        job_id: String,
    },
    /// Another invocation is submitting this job right now.
    InProgress {
        /// The job's id.
        job_id: String,
    },
    /// A whole-file problem: the job record says why; nothing was submitted.
    Failed {
        /// The job's id.
        job_id: String,
        /// The problem (also the job record's `failure`).
        reason: String,
    },
    /// The invocation's time ran out: every row read so far is in a part, and the
    /// rest of the upload is handed to the next invocation (see
    /// [`JobRecord::checkpoint`]).
    HandedOver {
        /// The job's id.
        job_id: String,
        /// Parts created so far.
        parts: usize,
        /// Lines of the upload read so far.
        lines_read: u64,
    },
    /// Not a job: outside `inbox/`, or gone.
    Ignored {
        /// The object's key.
        key: String,
        /// Why it is not a job.
        reason: String,
    },
}

/// Starts (or resumes) the job of the object at `key` as `meta` describes it: claims
/// the job record, reads the object and creates a provider batch per part. A failed
/// run gives its lease back so that a retry can resume at once.
pub async fn submit_object(
    ctx: &Context,
    key: &str,
    meta: &ObjectMeta,
) -> Result<SubmitOutcome, PipelineError> {
    let source = SourceObject {
        bucket: ctx.bucket.clone(),
        key: key.to_string(),
        etag: meta.etag.clone(),
        version_id: meta.version_id.clone(),
    };
    let job_id = source.job_id();
    let Some((versioned, resuming)) = claim(ctx, &job_id, source).await? else {
        return existing_outcome(ctx, &job_id).await;
    };
    let outcome = submit_claimed(ctx, meta, versioned, resuming).await;
    if let Err(e) = &outcome {
        release_lease(ctx, &job_id, e).await;
    }
    outcome
}

/// Resumes the submit of `snapshot`'s job, whose lease has passed (it died, or handed
/// the rest of its upload over): runs it again from its source, which skips the parts
/// it created and goes on from its checkpoint. If the object changed under an
/// unversioned key the job can never finish, so it fails with that reason. `None`
/// for a job past submission.
pub async fn resume_submit(
    ctx: &Context,
    snapshot: Versioned,
) -> Result<Option<SubmitOutcome>, PipelineError> {
    let record = &snapshot.record;
    if record.status != JobStatus::Submitting {
        return Ok(None);
    }
    tracing::info!(job = %record.job_id, key = %record.source.key, checkpoint = ?record.checkpoint, "resuming a submit");
    let source = &record.source;
    let unchanged = match ctx
        .store
        .head(&source.key, source.version_id.as_deref())
        .await
    {
        Ok(meta) => {
            let now = SourceObject {
                etag: meta.etag.clone(),
                version_id: meta.version_id.clone(),
                ..source.clone()
            };
            (now.job_id() == record.job_id).then_some(meta)
        }
        Err(StoreError::NotFound { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    match unchanged {
        Some(meta) => Ok(Some(submit_object(ctx, &source.key.clone(), &meta).await?)),
        None => {
            let reason = format!(
                "{}: the object changed or disappeared before its submission finished; upload it again",
                source.key
            );
            Ok(Some(fail(ctx, snapshot, reason).await?))
        }
    }
}

/// Gives a failed submit's lease back, so that Lambda's own retry of the event (a
/// minute or two later) can resume the job instead of finding it still owned, and
/// notes the error in the record, where the job can be seen waiting.
async fn release_lease(ctx: &Context, job_id: &str, error: &PipelineError) {
    let noted = format!(
        "{}: submit failed and will be retried: {error}",
        ctx.clock.timestamp()
    );
    let released = job::update(ctx.store.as_ref(), job_id, |record| {
        if record.status != JobStatus::Submitting {
            return false;
        }
        record.submit_lease_until = None;
        record.last_error = Some(noted.clone());
        true
    })
    .await;
    if let Err(e) = released {
        tracing::warn!(job = %job_id, error = %e, "could not release the submit lease; it runs out by itself");
    }
}

/// Reads the claimed upload and submits its parts.
async fn submit_claimed(
    ctx: &Context,
    meta: &ObjectMeta,
    mut versioned: Versioned,
    resuming: bool,
) -> Result<SubmitOutcome, PipelineError> {
    let job_id = versioned.record.job_id.clone();
    let key = versioned.record.source.key.clone();
    let key = key.as_str();
    // Indexed from the start, so that poll can resume this submit if it dies.
    put_open_marker(ctx, &job_id).await?;

    if meta.size == 0 {
        return fail(
            ctx,
            versioned,
            format!("{key}: the file is empty (0 bytes)"),
        )
        .await;
    }
    if meta.size > ctx.settings.max_object_bytes {
        let reason = format!(
            "{key}: the file has {} bytes, more than the {} bytes one job accepts; split it",
            meta.size, ctx.settings.max_object_bytes
        );
        return fail(ctx, versioned, reason).await;
    }
    let mut reader = match open_reader(ctx, key, meta.version_id.as_deref()).await? {
        Ok(reader) => reader,
        Err(e @ (InputError::CompressedWithoutSuffix { .. } | InputError::Unusable(_))) => {
            return fail(ctx, versioned, format!("{key}: {e}")).await;
        }
        Err(InputError::Read { message, .. }) => {
            return Err(StoreError::Backend {
                operation: "read",
                key: key.into(),
                message,
            }
            .into());
        }
    };

    // A CSV file's first line is its header row: its spec comes from its pipeline.
    let first = match is_csv_key(key) {
        true => None,
        false => next_line(&mut reader, key).await?,
    };
    // A re-run request names a finished job: its failed rows are read again from the
    // upload that job read, with that job's spec.
    let (mut rows_meta, mut rows_key, mut only) = (meta.clone(), key.to_string(), None);
    let (spec, pending) = match first.as_ref().and_then(rerun::requested_job) {
        Some(requested) => {
            let loaded = match requested {
                Ok(job) => rerun::load(ctx, &job).await?,
                Err(reason) => Err(reason),
            };
            let rerun = match loaded {
                Ok(rerun) => rerun,
                Err(reason) => {
                    return fail(ctx, versioned, format!("{key} line 1: {reason}")).await;
                }
            };
            let (meta, rows, first) = match rerun::open_rows(ctx, &rerun.of).await? {
                Ok(opened) => opened,
                Err(reason) => return fail(ctx, versioned, format!("{key}: {reason}")).await,
            };
            (rows_meta, reader, rows_key) = (meta, rows, rerun.of.source.key.clone());
            only = Some(rerun.failed);
            versioned.record.rerun_of = Some(rerun.of);
            (rerun.spec, first)
        }
        None => match resolve_spec(ctx, key, first).await? {
            Ok(found) => found,
            Err(reason) => return fail(ctx, versioned, reason).await,
        },
    };
    // From here on, errors name the file the rows are read from.
    let key = rows_key.as_str();
    let format = match spec
        .check(
            ctx.settings.min_requests(spec.model.provider)
                ..=descriptor(spec.model.provider).limits().max_requests,
        )
        .and_then(|()| spec.answer_format())
    {
        Ok(format) => format,
        Err(reason) => return fail(ctx, versioned, format!("{key}: {reason}")).await,
    };
    // Decided once, so that every part's Parquet file has the same columns.
    let table = match spec.writes(ResultFormat::Parquet) {
        true => match TableLayout::for_answers(&format, &spec.keep) {
            Ok(layout) => Some(layout),
            Err(reason) => {
                let reason = format!("{key}: spec field `formats` asks for parquet, but {reason}");
                return fail(ctx, versioned, reason).await;
            }
        },
        false => None,
    };
    let mut builder =
        match BatchBuilder::packed(&spec.model, &format, &spec.params(), spec.rows_per_request) {
            // Every id is checked here, against the whole upload, before its row is pushed.
            Ok(builder) => builder.trusting_ids(),
            Err(e) => return fail(ctx, versioned, format!("{key}: {e}")).await,
        };
    // Collect validates answers with this schema: refuse now one it could not compile,
    // rather than submit batches whose results can never be read.
    let no_rows = std::sync::Arc::from(Vec::new());
    if let Err(e) = ResultParser::with_format(spec.model.provider, &format, no_rows) {
        return fail(ctx, versioned, format!("{key}: {e}")).await;
    }
    if let Some(max_requests) = spec.max_requests_per_part {
        let limits = builder.limits();
        builder = builder.with_limits(PartLimits {
            max_requests,
            ..limits
        });
    }
    // A part is held in memory while it is built and sent: at most `max_part_bytes`.
    // It must also fit the enqueued-token quota on its own, or it would wait forever.
    let limits = job_limits(ctx, &spec);
    let part_limits = builder.limits();
    let max_bytes = limits
        .enqueued_tokens
        .map_or(usize::MAX, max_bytes_for_tokens)
        .min(ctx.settings.max_part_bytes)
        .min(part_limits.max_bytes);
    builder = builder
        .with_limits(PartLimits {
            max_bytes,
            ..part_limits
        })
        .with_min_requests(ctx.settings.min_requests(spec.model.provider));
    let skip = match (
        spec.skip_succeeded,
        &ctx.ledger,
        versioned.record.pipeline(),
    ) {
        (false, _, _) => None,
        (true, Some(ledger), Some(pipeline)) => {
            let replay = match resuming {
                true => replay(ctx, &versioned.record).await?,
                false => Replay::default(),
            };
            Some(SkipCheck::new(ledger.clone(), pipeline, replay))
        }
        (true, None, _) => {
            let reason = format!(
                "{key}: spec field `skip_succeeded` needs the success ledger, and this \
                 deployment has none (set LEDGER_TABLE)"
            );
            return fail(ctx, versioned, reason).await;
        }
        (true, _, None) => {
            let reason = format!(
                "{key}: spec field `skip_succeeded` works for uploads under {}<pipeline>/ only",
                keys::INBOX
            );
            return fail(ctx, versioned, reason).await;
        }
    };
    reader.set_max_line_bytes(spec.max_line_bytes);
    let provider = ctx.providers.provider(spec.model.provider).await?;
    versioned.record.spec = Some(spec.clone());
    versioned.record.table = table;
    let mut rows = match UploadRows::open(key, &spec, reader, pending).await? {
        Ok(rows) => rows,
        Err(reason) => return fail(ctx, versioned, reason).await,
    };
    // An earlier invocation handed the rest of the upload over: go on from there.
    let checkpoint = versioned.record.checkpoint;
    if let Some(at) = checkpoint {
        let (version, size) = (rows_meta.version_id.clone(), rows_meta.size);
        let reopen = async move {
            // S3 refuses a range that starts at the end (416): nothing is left to read.
            if at.offset >= size {
                return Ok(futures::stream::empty().boxed());
            }
            Ok(ctx
                .store
                .get_stream(key, version.as_deref(), at.offset)
                .await?)
        };
        rows.resume(at.offset, at.line, reopen).await?;
        builder = builder.starting_at(at.next_part);
    }
    let invocation = versioned.record.handovers;

    let mut run = SubmitRun {
        ctx,
        key,
        spec: &spec,
        provider,
        resuming,
        rejected: ObjectWriter::new(
            ctx.store.as_ref(),
            keys::input_errors_of(&job_id, invocation),
        ),
        rejected_lines: 0,
        rejected_here: 0,
        skip,
        skipped: ObjectWriter::new(ctx.store.as_ref(), keys::skipped_of(&job_id, invocation)),
        skipped_rows: 0,
        skipped_here: 0,
        started: Instant::now(),
        rows_here: 0,
        skipped_since_part: Vec::new(),
        only,
        requests: 0,
        ids: IdSet::default(),
        waiting: HashMap::new(),
        kept: HashMap::new(),
        limits,
        min_requests: ctx.settings.min_requests(spec.model.provider),
        in_flight: None,
        quota_refused: false,
    };
    if let Some(at) = checkpoint {
        run.requests = at.requests;
        run.rejected_lines = at.rejected;
        run.skipped_rows = at.skipped;
        run.ids = ids_before(ctx, &versioned.record, at.next_part).await?;
    }
    while let Some(row) = rows.next_row().await? {
        run.requests += 1;
        match row {
            Err(rejection) => run.reject(rejection).await?,
            Ok(row) if !run.ids.insert(&row.request.custom_id) => {
                let reason = format!(
                    "duplicate custom_id {:?}: an earlier line has it; ids must be unique within a job",
                    row.request.custom_id
                );
                let rejection = RowRejection {
                    kept: row.kept.map(Box::new),
                    ..RowRejection::new(spec::line_id(row.line), row.line, reason)
                };
                run.reject(rejection).await?;
            }
            Ok(row) => {
                if !run.leaves_out(&row.request.custom_id) {
                    run.admit(&mut builder, &mut versioned, row).await?;
                }
            }
        }
        run.write_late_rejections(&mut builder).await?;
        run.rows_here += 1;
        if run.out_of_time() {
            return hand_over(run, &mut builder, &mut versioned, &rows).await;
        }
    }
    run.release_held(&mut builder, &mut versioned).await?;
    let last_parts = builder.finish();
    // The builder leaves no part under the provider's minimum but a lone first one.
    let min_requests = ctx.settings.min_requests(spec.model.provider);
    let too_few = match last_parts.as_slice() {
        [only] if versioned.record.parts.is_empty() && only.request_rows.len() < min_requests => {
            Some(format!(
                "{} runs a batch of at least {min_requests} requests, and this job has {}; \
                 nothing was submitted",
                descriptor(spec.model.provider).display_name(),
                only.request_rows.len()
            ))
        }
        _ => None,
    };
    match &too_few {
        // Every row still gets its record: an error that says why.
        Some(reason) => run.reject_part(&last_parts[0], reason).await?,
        None => {
            for part in last_parts {
                run.submit_part(&mut versioned, part).await?;
            }
        }
    }
    run.write_late_rejections(&mut builder).await?;

    let (requests, rejected_lines) = (run.requests, run.rejected_lines);
    versioned.record.skipped = run.skipped_rows;
    run.close_files(&mut versioned.record).await?;
    versioned.record.checkpoint = None;
    let extent = rows.lines().extent();
    let input = InputRead {
        object_bytes: rows_meta.size,
        bytes_read: extent.bytes_read,
        complete: extent.reached_end && extent.bytes_read == rows_meta.size,
    };
    versioned.record.input = Some(input);
    if !input.complete {
        let why = match rows.stopped_early() {
            Some(reason) => reason.to_string(),
            None => "the download ended early".to_string(),
        };
        let reason = format!(
            "{key}: the file could not be read to its end ({why}): {} of its {} bytes \
             arrived; the rows after line {} are not in the results",
            input.bytes_read,
            input.object_bytes,
            rows.lines().lines_read()
        );
        if versioned.record.parts.is_empty() {
            versioned.record.input_errors = rejected_lines;
            versioned.record.requests = requests;
            return fail(ctx, versioned, reason).await;
        }
        // The parts already created run to the end, so that what was paid for is
        // delivered; the job then closes as failed with this reason.
        tracing::error!(job = %job_id, %reason, "the upload was not read to its end");
        versioned.record.failure = Some(reason);
    }
    if requests == 0 {
        let reason = format!("{key}: {}", rows.no_rows_reason());
        return fail(ctx, versioned, reason).await;
    }
    if let Some(reason) = too_few {
        versioned.record.input_errors = rejected_lines;
        versioned.record.requests = requests;
        return fail(ctx, versioned, format!("{key}: {reason}")).await;
    }
    let parts = versioned.record.parts.len();
    let held = versioned.record.submit_lease_until.take();
    versioned.record.requests = requests;
    versioned.record.input_errors = rejected_lines;
    versioned.record.submitted_at = Some(ctx.clock.timestamp());
    if parts == 0 {
        // Every line was rejected or skipped: the job is closed without a batch.
        versioned.record.status = versioned.record.closing_status();
        summary::close_job(ctx, &mut versioned).await?;
    } else {
        versioned.record.status = JobStatus::Open;
        job::save_leased(ctx.store.as_ref(), &mut versioned, held.as_deref()).await?;
    }
    let labels = versioned.record.labels();
    ctx.metrics
        .emit(&metrics::job_submitted(ctx.clock.now(), &labels));
    Ok(SubmitOutcome::Submitted {
        job_id,
        parts,
        requests,
        rejected_lines,
    })
}

/// Creates the job record, or takes over one whose submit died (lease passed).
/// `None` when the job belongs to someone else or is past submission; the flag says
/// whether this run resumes a dead one.
async fn claim(
    ctx: &Context,
    job_id: &str,
    source: SourceObject,
) -> Result<Option<(Versioned, bool)>, PipelineError> {
    let lease_until = ctx.clock.after(ctx.settings.submit_lease);
    let record = JobRecord {
        job_id: job_id.to_string(),
        source,
        status: JobStatus::Submitting,
        failure: None,
        spec: None,
        table: None,
        requests: 0,
        input_errors: 0,
        parts: Vec::new(),
        created_at: ctx.clock.timestamp(),
        submitted_at: None,
        completed_at: None,
        submit_lease_until: Some(lease_until.clone()),
        input: None,
        last_error: None,
        skipped: 0,
        rerun_of: None,
        checkpoint: None,
        handovers: 0,
        rejected_by: Vec::new(),
        skipped_by: Vec::new(),
        cancel_requested_at: None,
    };
    if let Some(created) = job::create(ctx.store.as_ref(), record).await? {
        return Ok(Some((created, false)));
    }
    let mut existing = job::load(ctx.store.as_ref(), job_id).await?;
    let expired = existing
        .record
        .submit_lease_until
        .as_deref()
        .is_none_or(|until| ctx.clock.has_passed(until));
    if existing.record.status != JobStatus::Submitting || !expired {
        return Ok(None);
    }
    existing.record.submit_lease_until = Some(lease_until);
    match job::save(ctx.store.as_ref(), &mut existing).await {
        Ok(()) => Ok(Some((existing, true))),
        Err(PipelineError::Store(StoreError::Conflict { .. })) => Ok(None),
        Err(e) => Err(e),
    }
}

async fn existing_outcome(ctx: &Context, job_id: &str) -> Result<SubmitOutcome, PipelineError> {
    let existing = job::load(ctx.store.as_ref(), job_id).await?;
    Ok(match existing.record.status {
        JobStatus::Submitting => {
            // The owner may have died before it indexed the job: index it again so
            // that poll resumes the submit once the lease has passed.
            put_open_marker(ctx, job_id).await?;
            SubmitOutcome::InProgress {
                job_id: job_id.to_string(),
            }
        }
        _ => SubmitOutcome::Duplicate {
            job_id: job_id.to_string(),
        },
    })
}

/// The open-jobs index entry poll works from (idempotent).
async fn put_open_marker(ctx: &Context, job_id: &str) -> Result<(), PipelineError> {
    ctx.store
        .put(&keys::open_marker(job_id), Bytes::new(), PutMode::Overwrite)
        .await?;
    Ok(())
}

/// The spec from a header line, else from `pipelines/<name>.json` for
/// `inbox/<name>/…` (always for a CSV file, whose `first` line is not looked at).
/// Returns the first line back when it was not a header.
/// The inner `Err` is a whole-file problem, described for the user.
async fn resolve_spec(
    ctx: &Context,
    key: &str,
    first: Option<InputLine>,
) -> Result<Result<(JobSpec, Option<InputLine>), String>, PipelineError> {
    match &first {
        Some(InputLine::Line { bytes, number }) if spec::is_header(bytes) => {
            return Ok(match serde_json::from_slice::<SpecHeader>(bytes) {
                Ok(header) => Ok((header.spec, None)),
                Err(e) => Err(format!(
                    "{key} line {number}: the header is not a valid job spec: {e}"
                )),
            });
        }
        Some(InputLine::Unreadable { number, reason }) => {
            return Ok(Err(format!("{key} line {number}: {reason}")));
        }
        _ => {}
    }
    let no_header = match is_csv_key(key) {
        true => "a CSV file has no spec header".to_string(),
        false => first_line_problem(first.as_ref()),
    };
    let rest = &key[keys::INBOX.len()..];
    let Some((name, _)) = rest.split_once('/') else {
        return Ok(Err(format!(
            "{key}: no job spec: {no_header} and the file is not under {}<pipeline>/",
            keys::INBOX
        )));
    };
    let spec_key = keys::pipeline_spec(name);
    let body = match ctx.store.get(&spec_key).await {
        Ok((_, body)) => body,
        Err(StoreError::NotFound { .. }) => {
            return Ok(Err(format!(
                "{key}: no job spec: {no_header} and {spec_key} does not exist"
            )));
        }
        Err(e) => return Err(e.into()),
    };
    Ok(match serde_json::from_slice::<JobSpec>(&body) {
        Ok(spec) => Ok((spec, first)),
        Err(e) => Err(format!("{key}: {spec_key}: not a valid job spec: {e}")),
    })
}

/// Why the first line is not a header, in words.
fn first_line_problem(first: Option<&InputLine>) -> String {
    const NOT_HEADER: &str = "the first line is not a {\"spec\": …} header";
    match first {
        Some(InputLine::Line { number, bytes }) => match std::str::from_utf8(bytes) {
            Err(_) => format!("{NOT_HEADER}: line {number} is not UTF-8 text"),
            Ok(text) => match serde_json::from_str::<serde_json::Value>(text) {
                Err(e) => format!("{NOT_HEADER}: line {number} is not JSON ({e})"),
                Ok(serde_json::Value::Object(_)) => {
                    format!("{NOT_HEADER}: line {number} is a request")
                }
                Ok(other) => {
                    let shown: String = other.to_string().chars().take(40).collect();
                    format!("{NOT_HEADER}: line {number} is `{shown}`, not a JSON object")
                }
            },
        },
        Some(InputLine::TooLong { number, length }) => {
            format!("{NOT_HEADER}: line {number} is {length} bytes long")
        }
        _ => NOT_HEADER.to_string(),
    }
}

/// The state of one pass over the input file.
struct SubmitRun<'a> {
    ctx: &'a Context,
    key: &'a str,
    spec: &'a JobSpec,
    provider: Arc<dyn BatchProvider>,
    /// A previous run died: batches it created may exist without being recorded.
    resuming: bool,
    /// This invocation's input errors.
    rejected: ObjectWriter<'a>,
    /// Lines rejected, over every invocation of the job's submit.
    rejected_lines: u64,
    /// Lines rejected by this invocation (in `rejected`).
    rejected_here: u64,
    /// Rows waiting for their ledger lookup (`skip_succeeded`).
    skip: Option<SkipCheck<InputRow>>,
    /// This invocation's skipped rows.
    skipped: ObjectWriter<'a>,
    /// Rows skipped, over every invocation of the job's submit.
    skipped_rows: u64,
    /// Rows skipped by this invocation (in `skipped`).
    skipped_here: u64,
    /// When this invocation began, for its time budget.
    started: Instant,
    /// Rows this invocation read: it hands over only after some, so it always
    /// gets somewhere.
    rows_here: u64,
    /// Rows skipped since the last part was written: they go with the next part.
    skipped_since_part: Vec<Skipped>,
    /// For a re-run: the ids of the rows the job has (the earlier job's failed ones).
    only: Option<HashSet<String>>,
    requests: u64,
    /// Every id a line has taken so far, accepted or rejected: a later line with the
    /// same id is reported under its line number, so that each id appears once.
    ids: IdSet,
    /// Line numbers of the rows the builder holds for a packed request that is not
    /// written yet, so that a row it refuses later is reported with its line.
    waiting: HashMap<String, u64>,
    /// Kept values of the rows the builder holds, until their part's `.kept` file is
    /// written: memory stays bounded by one part.
    kept: HashMap<String, KeptValues>,
    /// The quota limits of the job's batches.
    limits: QuotaLimits,
    /// The fewest requests a batch of the job's provider holds.
    min_requests: usize,
    /// What runs at the providers, counted on the first part when a limit is known.
    in_flight: Option<InFlight>,
    /// The provider refused a part for quota: the parts after it wait.
    quota_refused: bool,
}

impl SubmitRun<'_> {
    /// True once the invocation used its time budget (and read at least one row).
    fn out_of_time(&self) -> bool {
        self.rows_here > 0 && self.started.elapsed() >= self.ctx.settings.submit_budget
    }

    /// Completes this invocation's input error and skipped files, and lists them in
    /// the record; an invocation without such rows writes none.
    async fn close_files(self, record: &mut JobRecord) -> Result<(), PipelineError> {
        let invocation = record.handovers;
        if self.rejected_here > 0 {
            self.rejected.finish().await?;
            record.rejected_by.push(invocation);
        }
        if self.skipped_here > 0 {
            self.skipped.finish().await?;
            record.skipped_by.push(invocation);
        }
        Ok(())
    }

    /// Reports a rejected row under its id, or under its line's id when an earlier
    /// row took that id; a re-run job drops the rows it does not have.
    async fn reject(&mut self, mut rejection: RowRejection) -> Result<(), PipelineError> {
        if !self.ids.insert(&rejection.custom_id) {
            rejection.custom_id = spec::line_id(rejection.line);
        }
        if self.leaves_out(&rejection.custom_id) {
            return Ok(());
        }
        self.write_rejection(rejection).await
    }

    /// True for a row a re-run job does not have (it did not fail in the earlier
    /// job); it is then not counted.
    fn leaves_out(&mut self, custom_id: &str) -> bool {
        let out = self
            .only
            .as_ref()
            .is_some_and(|only| !only.contains(custom_id));
        if out {
            self.requests -= 1;
        }
        out
    }

    /// Sends an accepted row on, or holds it for its ledger lookup (`skip_succeeded`).
    async fn admit(
        &mut self,
        builder: &mut BatchBuilder,
        versioned: &mut Versioned,
        row: InputRow,
    ) -> Result<(), PipelineError> {
        let Some(skip) = &mut self.skip else {
            return self.send(builder, versioned, row).await;
        };
        if skip.hold(row.request.custom_id.clone(), row) {
            self.release_held(builder, versioned).await?;
        }
        Ok(())
    }

    /// Looks the held rows up in the ledger: the skipped ones are listed with the job
    /// that has their success, the others sent on in input order.
    async fn release_held(
        &mut self,
        builder: &mut BatchBuilder,
        versioned: &mut Versioned,
    ) -> Result<(), PipelineError> {
        let Some(skip) = &mut self.skip else {
            return Ok(());
        };
        let (send, skipped) = skip.release().await?;
        for row in skipped {
            self.skipped_rows += 1;
            self.skipped_here += 1;
            let mut bytes = serde_json::to_vec(&row)?;
            bytes.push(b'\n');
            self.skipped.write(&bytes).await?;
            self.skipped_since_part.push(row);
        }
        for row in send {
            self.send(builder, versioned, row).await?;
        }
        Ok(())
    }

    /// Adds a row to the open part, submitting the part when it is full.
    async fn send(
        &mut self,
        builder: &mut BatchBuilder,
        versioned: &mut Versioned,
        row: InputRow,
    ) -> Result<(), PipelineError> {
        match builder.push(&row.request) {
            // The id is this row's (claimed by the caller): report it under that id.
            Err(e) => {
                let rejection = RowRejection {
                    kept: row.kept.map(Box::new),
                    ..RowRejection::new(row.request.custom_id, row.line, e.to_string())
                };
                self.write_rejection(rejection).await
            }
            Ok(closed) => {
                self.hold(row);
                match closed {
                    Some(part) => self.submit_part(versioned, part).await,
                    None => Ok(()),
                }
            }
        }
    }

    /// Writes the rejection under its `custom_id`, which the row has claimed.
    async fn write_rejection(&mut self, rejection: RowRejection) -> Result<(), PipelineError> {
        self.rejected_lines += 1;
        self.rejected_here += 1;
        let RowRejection {
            custom_id,
            line,
            reason,
            kept,
        } = rejection;
        let failure = Failure {
            line: Some(line),
            ..Failure::new(
                custom_id,
                INVALID_INPUT,
                format!("{} line {line}: {reason}", self.key),
            )
        };
        let mut bytes = Vec::new();
        write_record(&failure, &failure.custom_id, kept.as_deref(), &mut bytes);
        self.rejected.write(&bytes).await?;
        Ok(())
    }

    /// Records every row of `part`, which is not submitted, as an input error for `reason`.
    async fn reject_part(&mut self, part: &BatchPart, reason: &str) -> Result<(), PipelineError> {
        for id in &part.custom_ids {
            let line = self.waiting.remove(id).unwrap_or(0);
            let rejection = RowRejection {
                kept: self.kept.remove(id).map(Box::new),
                ..RowRejection::new(id.clone(), line, reason.to_string())
            };
            self.write_rejection(rejection).await?;
        }
        Ok(())
    }

    /// Keeps what a row accepted by the builder needs until its part is written: its
    /// line (packed rows, or rows of a provider with a batch minimum, which the builder
    /// may still refuse or leave unsent) and its kept values.
    fn hold(&mut self, row: InputRow) {
        if self.spec.rows_per_request > 1 || self.min_requests > 1 {
            self.waiting.insert(row.request.custom_id.clone(), row.line);
        }
        if let Some(kept) = row.kept {
            self.kept.insert(row.request.custom_id, kept);
        }
    }

    /// Reports the rows the builder refused after accepting them (see
    /// [`BatchBuilder::take_rejected`]).
    async fn write_late_rejections(
        &mut self,
        builder: &mut BatchBuilder,
    ) -> Result<(), PipelineError> {
        for (custom_id, reason) in builder.take_rejected() {
            let line = self.waiting.remove(&custom_id).unwrap_or(0);
            let rejection = RowRejection {
                kept: self.kept.remove(&custom_id).map(Box::new),
                ..RowRejection::new(custom_id, line, reason)
            };
            self.write_rejection(rejection).await?;
        }
        Ok(())
    }

    /// Records the part's ids, then creates its batch (or finds the one a crashed
    /// run created), then records the batch id. Parts with a batch are skipped.
    async fn submit_part(
        &mut self,
        versioned: &mut Versioned,
        part: BatchPart,
    ) -> Result<(), PipelineError> {
        let index = part.index;
        let job_id = versioned.record.job_id.clone();
        let skipped = std::mem::take(&mut self.skipped_since_part);
        let done = versioned
            .record
            .parts
            .iter()
            .any(|p| p.index == index && p.is_submitted());
        if !done {
            self.create_part(versioned, &job_id, &part, &skipped)
                .await?;
        }
        // Rows in a part are past the builder: their lines and kept values are no
        // longer needed.
        for id in &part.custom_ids {
            self.waiting.remove(id);
            self.kept.remove(id);
        }
        Ok(())
    }

    /// Whether the part's batch fits the job's quota limits next to the batches that
    /// run now (every open job's, counted on first use); if it does, it is counted.
    async fn admits(
        &mut self,
        record: &JobRecord,
        part: &BatchPart,
    ) -> Result<bool, PipelineError> {
        if self.quota_refused {
            return Ok(false);
        }
        if self.limits.is_empty() {
            return Ok(true);
        }
        let in_flight = match &mut self.in_flight {
            Some(in_flight) => in_flight,
            None => {
                let mut in_flight = in_flight_of_open_jobs(self.ctx, &record.job_id).await?;
                // A resumed submit's own batches hold quota too.
                add_job(&mut in_flight, record);
                self.in_flight.insert(in_flight)
            }
        };
        let load = Load {
            tokens: estimated_tokens(part.body.len()),
            requests: part.request_rows.len() as u64,
        };
        Ok(in_flight.admit(&self.spec.model, &self.limits, load))
    }

    /// Creates the part's batch, or lets it wait for quota, and records it in the job;
    /// once the job's cancellation is requested, records it given up instead. With
    /// `skip_succeeded`, the rows `skipped` while it filled are stored first, for a
    /// resumed submit to replay.
    async fn create_part(
        &mut self,
        versioned: &mut Versioned,
        job_id: &str,
        part: &BatchPart,
        skipped: &[Skipped],
    ) -> Result<(), PipelineError> {
        let index = part.index;
        let keeps = !self.spec.keep.is_empty();
        if self.skip.is_some() {
            let mut lines = Vec::new();
            for row in skipped {
                serde_json::to_writer(&mut lines, row)?;
                lines.push(b'\n');
            }
            let key = keys::part_skipped(job_id, index);
            self.ctx
                .store
                .put(&key, Bytes::from(lines), PutMode::Overwrite)
                .await?;
        }
        // The lease this run last wrote: a cancellation requested since is taken in.
        let held = versioned.record.submit_lease_until.clone();
        if versioned.record.cancel_requested_at.is_none() {
            job::adopt_cancel(self.ctx.store.as_ref(), versioned, held.as_deref()).await?;
        }
        let start = match versioned.record.cancel_requested_at {
            Some(_) => Start::Cancelled,
            None if self.admits(&versioned.record, part).await? => Start::Create {
                find_first: self.resuming,
            },
            None => Start::Wait,
        };
        let created = create_part(
            self.ctx,
            self.provider.as_ref(),
            &self.spec.model.model,
            job_id,
            part,
            keeps.then_some(&self.kept),
            start,
        )
        .await?;
        match &created.batch_id {
            Some(batch) => {
                tracing::info!(job = %job_id, part = index, %batch, requests = part.custom_ids.len(), "submitted part");
            }
            None if start == Start::Cancelled => {
                tracing::info!(job = %job_id, part = index, requests = part.custom_ids.len(), "the job is cancelled: the part is given up");
            }
            None => {
                // Refused by the provider: the parts after it wait without asking.
                self.quota_refused |= start != Start::Wait;
                tracing::info!(job = %job_id, part = index, requests = part.custom_ids.len(), "the part waits for quota");
            }
        }
        versioned.record.parts.retain(|p| p.index != index);
        versioned.record.parts.push(PartRecord {
            split_reason: part.split.map(|s| s.to_string()),
            ..created
        });
        versioned.record.submit_lease_until =
            Some(self.ctx.clock.after(self.ctx.settings.submit_lease));
        job::save_leased(self.ctx.store.as_ref(), versioned, held.as_deref()).await
    }
}

/// The invocation's time is up: closes the open part, so that every row read so far
/// is in a part, in the input errors or skipped, records where reading stopped and
/// hands the rest of the upload to the next invocation (through the submit queue, or
/// poll's next tick).
async fn hand_over(
    mut run: SubmitRun<'_>,
    builder: &mut BatchBuilder,
    versioned: &mut Versioned,
    rows: &UploadRows<'_>,
) -> Result<SubmitOutcome, PipelineError> {
    let ctx = run.ctx;
    run.release_held(builder, versioned).await?;
    for part in builder.finish() {
        run.submit_part(versioned, part).await?;
    }
    run.write_late_rejections(builder).await?;
    let checkpoint = SubmitCheckpoint {
        offset: rows.lines().consumed(),
        line: rows.lines().lines_read(),
        next_part: builder.next_part(),
        requests: run.requests,
        rejected: run.rejected_lines,
        skipped: run.skipped_rows,
    };
    run.close_files(&mut versioned.record).await?;
    let record = &mut versioned.record;
    record.checkpoint = Some(checkpoint);
    record.handovers += 1;
    // Released, so that the next invocation can take the job at once.
    let held = record.submit_lease_until.take();
    let (job_id, parts) = (record.job_id.clone(), record.parts.len());
    job::save_leased(ctx.store.as_ref(), versioned, held.as_deref()).await?;
    tracing::info!(job = %job_id, line = checkpoint.line, parts, "time budget used: the rest of the upload goes to the next invocation");
    if let Some(queue) = &ctx.submit_queue {
        queue.send(JobMessage::body(&job_id)).await?;
    }
    Ok(SubmitOutcome::HandedOver {
        job_id,
        parts,
        lines_read: checkpoint.line,
    })
}

/// The ids the rows before a checkpoint took (every one of them, so that a repeated id
/// after it is still caught): the manifests of the parts before `next_part`, and the
/// earlier invocations' input errors and skipped rows.
async fn ids_before(
    ctx: &Context,
    record: &JobRecord,
    next_part: u32,
) -> Result<IdSet, PipelineError> {
    let mut ids = IdSet::default();
    for part in record.parts.iter().filter(|p| p.index < next_part) {
        let (_, manifest) = ctx
            .store
            .get(&keys::part_manifest(&record.job_id, part.index))
            .await?;
        ids.extend(
            parse_manifest(&String::from_utf8_lossy(&manifest))
                .into_iter()
                .flatten(),
        );
    }
    for key in record
        .input_error_files()
        .iter()
        .chain(&record.skipped_files())
    {
        rerun::read_ids(ctx, key, &mut ids).await?;
    }
    Ok(ids)
}

/// The skip decisions of the run that died, for the parts it created a batch for:
/// their rows (from their manifests) and the rows skipped while they filled.
async fn replay(ctx: &Context, record: &JobRecord) -> Result<Replay, PipelineError> {
    let mut replay = Replay::default();
    for part in record.parts.iter().filter(|p| p.is_submitted()) {
        let job = &record.job_id;
        let (_, manifest) = ctx.store.get(&keys::part_manifest(job, part.index)).await?;
        replay.sent.extend(
            parse_manifest(&String::from_utf8_lossy(&manifest))
                .into_iter()
                .flatten(),
        );
        let (_, skipped) = ctx.store.get(&keys::part_skipped(job, part.index)).await?;
        for line in skipped.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let row: Skipped = serde_json::from_slice(line)?;
            replay.skipped.insert(row.custom_id, row.answer_job);
        }
    }
    Ok(replay)
}

/// Fails the job with `reason` before (more) submission, and says so.
async fn fail(
    ctx: &Context,
    versioned: Versioned,
    reason: String,
) -> Result<SubmitOutcome, PipelineError> {
    let job_id = versioned.record.job_id.clone();
    summary::fail_job(ctx, versioned, reason.clone()).await?;
    Ok(SubmitOutcome::Failed { job_id, reason })
}
