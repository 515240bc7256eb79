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

use bytes::Bytes;

use super::context::{Context, PipelineError};
use super::input::{INVALID_INPUT, InputError, InputLine};
use super::job::{
    self, InputRead, JobRecord, JobStatus, PartRecord, SourceObject, Versioned, keys,
};
use super::parts::{create_batch, next_line, open_reader, read_request};
use super::spec::{self, JobSpec, ResultFormat, SpecHeader};
use super::summary;
use crate::build::{BatchBuilder, BatchPart};
use crate::provider::{BatchProvider, PartLimits, descriptor};
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

    let first = next_line(&mut reader, key).await?;
    let (spec, pending) = match resolve_spec(ctx, key, first).await? {
        Ok(found) => found,
        Err(reason) => return fail(ctx, versioned, reason).await,
    };
    let format = match spec
        .check(descriptor(spec.model.provider).limits().max_requests)
        .and_then(|()| spec.answer_format())
    {
        Ok(format) => format,
        Err(reason) => return fail(ctx, versioned, format!("{key}: {reason}")).await,
    };
    // Decided once, so that every part's Parquet file has the same columns.
    let table = match spec.writes(ResultFormat::Parquet) {
        true => match TableLayout::for_answers(&format, &[]) {
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
            Ok(builder) => builder,
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
    reader.set_max_line_bytes(spec.max_line_bytes);
    let provider = ctx.providers.provider(spec.model.provider).await?;
    versioned.record.spec = Some(spec.clone());
    versioned.record.table = table;

    let mut run = SubmitRun {
        ctx,
        key,
        spec: &spec,
        provider,
        resuming,
        rejected: ObjectWriter::new(ctx.store.as_ref(), keys::input_errors(&job_id)),
        rejected_lines: 0,
        requests: 0,
        ids: HashSet::new(),
        waiting: HashMap::new(),
        unreadable: None,
    };
    // The first line was either the header (consumed) or a request (handed back).
    let mut line = match pending {
        Some(line) => Some(line),
        None => next_line(&mut reader, key).await?,
    };
    while let Some(current) = line {
        run.requests += 1;
        if let InputLine::Unreadable { reason, .. } = &current {
            run.unreadable = Some(reason.clone());
        }
        match read_request(&spec, current) {
            Err((custom_id, number, reason)) => run.reject(custom_id, number, reason).await?,
            Ok((number, request)) if !run.ids.insert(request.custom_id.clone()) => {
                let reason = format!(
                    "duplicate custom_id {:?}: an earlier line has it; ids must be unique within a job",
                    request.custom_id
                );
                run.reject(spec::line_id(number), number, reason).await?;
            }
            Ok((number, request)) => match builder.push(&request) {
                // The id is this line's (claimed above): report it under that id.
                Err(e) => {
                    run.write_rejection(request.custom_id, number, e.to_string())
                        .await?
                }
                Ok(closed) => {
                    if spec.rows_per_request > 1 {
                        run.waiting.insert(request.custom_id, number);
                    }
                    if let Some(part) = closed {
                        run.submit_part(&mut versioned, part).await?;
                    }
                }
            },
        }
        run.write_late_rejections(&mut builder).await?;
        line = next_line(&mut reader, key).await?;
    }
    for part in builder.finish() {
        run.submit_part(&mut versioned, part).await?;
    }
    run.write_late_rejections(&mut builder).await?;

    let (requests, rejected_lines) = (run.requests, run.rejected_lines);
    if rejected_lines > 0 {
        run.rejected.finish().await?;
    }
    let extent = reader.extent();
    let input = InputRead {
        object_bytes: meta.size,
        bytes_read: extent.bytes_read,
        complete: extent.reached_end && extent.bytes_read == meta.size,
    };
    versioned.record.input = Some(input);
    if !input.complete {
        let why = match run.unreadable.as_deref() {
            Some(reason) => reason.to_string(),
            None => "the download ended early".to_string(),
        };
        let reason = format!(
            "{key}: the file could not be read to its end ({why}): {} of its {} bytes \
             arrived; the rows after line {} are not in the results",
            input.bytes_read,
            input.object_bytes,
            reader.lines_read()
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
        return fail(
            ctx,
            versioned,
            format!("{key}: the file has no request lines"),
        )
        .await;
    }
    let parts = versioned.record.parts.len();
    versioned.record.requests = requests;
    versioned.record.input_errors = rejected_lines;
    versioned.record.submitted_at = Some(ctx.clock.timestamp());
    versioned.record.submit_lease_until = None;
    if parts == 0 {
        // Every line was rejected: the job is complete with only errors.
        versioned.record.status = JobStatus::Completed;
        summary::close_job(ctx, &mut versioned).await?;
    } else {
        versioned.record.status = JobStatus::Open;
        job::save(ctx.store.as_ref(), &mut versioned).await?;
    }
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
/// `inbox/<name>/…`. Returns the first line back when it was not a header.
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
    let rest = &key[keys::INBOX.len()..];
    let Some((name, _)) = rest.split_once('/') else {
        return Ok(Err(format!(
            "{key}: no job spec: {} and the file is not under {}<pipeline>/",
            first_line_problem(first.as_ref()),
            keys::INBOX
        )));
    };
    let spec_key = keys::pipeline_spec(name);
    let body = match ctx.store.get(&spec_key).await {
        Ok((_, body)) => body,
        Err(StoreError::NotFound { .. }) => {
            return Ok(Err(format!(
                "{key}: no job spec: the first line is not a {{\"spec\": …}} header and {spec_key} does not exist"
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
    rejected: ObjectWriter<'a>,
    rejected_lines: u64,
    requests: u64,
    /// Every id a line has taken so far, accepted or rejected: a later line with the
    /// same id is reported under its line number, so that each id appears once.
    ids: HashSet<String>,
    /// Line numbers of the rows the builder holds for a packed request that is not
    /// written yet, so that a row it refuses later is reported with its line.
    waiting: HashMap<String, u64>,
    /// Why the reader stopped before the end of the file, if it did.
    unreadable: Option<String>,
}

impl SubmitRun<'_> {
    async fn reject(
        &mut self,
        custom_id: String,
        line: u64,
        reason: String,
    ) -> Result<(), PipelineError> {
        let custom_id = if self.ids.insert(custom_id.clone()) {
            custom_id
        } else {
            spec::line_id(line)
        };
        self.write_rejection(custom_id, line, reason).await
    }

    /// Writes the rejection of `line` under `custom_id`, which the line has claimed.
    async fn write_rejection(
        &mut self,
        custom_id: String,
        line: u64,
        reason: String,
    ) -> Result<(), PipelineError> {
        self.rejected_lines += 1;
        let failure = Failure {
            line: Some(line),
            ..Failure::new(
                custom_id.as_str(),
                INVALID_INPUT,
                format!("{} line {line}: {reason}", self.key),
            )
        };
        let mut bytes = serde_json::to_vec(&failure)?;
        bytes.push(b'\n');
        self.rejected.write(&bytes).await?;
        Ok(())
    }

    /// Reports the rows the builder refused after accepting them (see
    /// [`BatchBuilder::take_rejected`]).
    async fn write_late_rejections(
        &mut self,
        builder: &mut BatchBuilder,
    ) -> Result<(), PipelineError> {
        for (custom_id, reason) in builder.take_rejected() {
            let line = self.waiting.get(&custom_id).copied().unwrap_or(0);
            self.write_rejection(custom_id, line, reason).await?;
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
        // Rows in a part are past the builder: their line numbers are no longer needed.
        for id in &part.custom_ids {
            self.waiting.remove(id);
        }
        if let Some(done) = versioned.record.parts.iter().find(|p| p.index == index)
            && done.batch_id.is_some()
        {
            return Ok(());
        }
        let status = create_batch(
            self.ctx,
            self.provider.as_ref(),
            &self.spec.model.model,
            &job_id,
            &part,
            self.resuming,
        )
        .await?;
        tracing::info!(job = %job_id, part = index, batch = %status.batch_id, requests = part.custom_ids.len(), "submitted part");
        versioned.record.parts.retain(|p| p.index != index);
        versioned.record.parts.push(PartRecord {
            split_reason: part.split.map(|s| s.to_string()),
            ..PartRecord::submitted(&part, status)
        });
        versioned.record.submit_lease_until =
            Some(self.ctx.clock.after(self.ctx.settings.submit_lease));
        job::save(self.ctx.store.as_ref(), versioned).await
    }
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
