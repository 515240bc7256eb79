//! What submit, poll and collect share about a part: reading the uploaded object's
//! requests (again, for a retry part), storing the part and creating its provider
//! batch (or recording it waiting for quota, or given up for the job's cancellation).

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::Bytes;

use super::cancel::CANCELLED_BEFORE_SENT;
use super::context::{Context, PipelineError};
use super::csv_input::is_csv_key;
use super::input::{InputError, InputLine, LineReader};
use super::job::{GiveUp, PartRecord, SourceObject, keys};
use super::row::{InputRow, KeptValues, kept_file};
use super::spec::{self, JobSpec};
use super::upload::{UploadRows, next_line};
use crate::build::BatchPart;
use crate::provider::{BatchProvider, BatchTags};
use crate::status::BatchStatus;
use crate::storage::{PutMode, StoreError};

/// The uploaded object's lines, capped in total size; the inner `Err` is a whole-file
/// problem (compressed without the suffix).
pub(super) async fn open_reader(
    ctx: &Context,
    key: &str,
    version: Option<&str>,
) -> Result<Result<LineReader, InputError>, PipelineError> {
    let stream = ctx.store.get_stream(key, version, 0).await?;
    // The header line may be as long as any line; the spec's limit applies after it.
    Ok(LineReader::open(key, stream, spec::bounds::MAX_LINE_BYTES)
        .await
        .map(|reader| reader.with_max_total_bytes(ctx.settings.max_object_bytes)))
}

/// The rows with `wanted` ids, read again from the job's source object (the version
/// it was submitted from), in file order, with their kept values: what a retry part
/// resubmits. `None` when the object is gone or no longer readable.
pub(super) async fn reread_rows(
    ctx: &Context,
    source: &SourceObject,
    spec: &JobSpec,
    wanted: &HashSet<&str>,
) -> Result<Option<Vec<InputRow>>, PipelineError> {
    let key = source.key.as_str();
    let mut reader = match open_reader(ctx, key, source.version_id.as_deref()).await {
        Ok(Ok(mut reader)) => {
            reader.set_max_line_bytes(spec.max_line_bytes);
            reader
        }
        Err(PipelineError::Store(StoreError::NotFound { .. })) | Ok(Err(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    // A JSONL header line is skipped; a CSV file's header is read by its rows.
    let mut pending = None;
    if !is_csv_key(key) {
        pending = next_line(&mut reader, key).await?;
        if let Some(InputLine::Line { bytes, .. }) = &pending
            && spec::is_header(bytes)
        {
            pending = None;
        }
    }
    let Ok(mut rows) = UploadRows::open(key, spec, reader, pending).await? else {
        return Ok(None);
    };
    let mut found: Vec<InputRow> = Vec::with_capacity(wanted.len());
    let mut taken: HashSet<String> = HashSet::with_capacity(wanted.len());
    while let Some(row) = rows.next_row().await? {
        // Only the first row with an id was accepted: later ones were duplicates.
        if let Ok(row) = row
            && wanted.contains(row.request.custom_id.as_str())
            && taken.insert(row.request.custom_id.clone())
        {
            found.push(row);
        }
    }
    Ok(Some(found))
}

/// How a part's batch is to be started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Start {
    /// Create it now; with `find_first`, look for the one a crashed run created
    /// before.
    Create {
        /// Search the provider's batches for the part's tags first.
        find_first: bool,
    },
    /// Creating it would pass a known quota: the part waits.
    Wait,
    /// The job's cancellation was requested: the part is given up, never sent, and
    /// its rows become `cancelled` errors.
    Cancelled,
}

/// Writes the part's manifest (its ids in row order), its `.kept` file from `kept`
/// (every row of the part by id) when the job keeps values, and its batch input; then
/// starts its batch as `start` says. A part the provider refuses for quota, or one
/// told to wait, is recorded waiting (see [`PartRecord::waiting`]); a cancelled one
/// is recorded given up, with its manifest for collect but no batch input.
pub(super) async fn create_part(
    ctx: &Context,
    provider: &dyn BatchProvider,
    model: &str,
    job_id: &str,
    part: &BatchPart,
    kept: Option<&HashMap<String, KeptValues>>,
    start: Start,
) -> Result<PartRecord, PipelineError> {
    let index = part.index;
    let files = [
        (keys::part_manifest(job_id, index), Some(part.manifest())),
        (
            keys::part_kept(job_id, index),
            kept.map(|kept| kept_file(&part.custom_ids, kept)),
        ),
    ];
    for (key, bytes) in files {
        if let Some(bytes) = bytes {
            ctx.store
                .put(&key, Bytes::from(bytes), PutMode::Overwrite)
                .await?;
        }
    }
    if start == Start::Cancelled {
        let mut record = PartRecord::unsubmitted(part);
        record.give_up(GiveUp::Cancel, CANCELLED_BEFORE_SENT.into());
        return Ok(record);
    }
    ctx.store
        .put(
            &keys::part_requests(job_id, index),
            part.body.clone(),
            PutMode::Overwrite,
        )
        .await?;
    let now = ctx.clock.timestamp();
    let Start::Create { find_first } = start else {
        let reason = "waiting for quota: creating the batch now would pass a known limit";
        return Ok(PartRecord::waiting(part, &now, reason.into()));
    };
    let batch = PartBatch {
        job_id,
        index,
        quota_waits: 0,
    };
    match start_batch(provider, model, &batch, part.body.clone(), find_first).await {
        Ok(status) => Ok(PartRecord::submitted(part, status)),
        Err(e @ crate::Error::QuotaExceeded { .. }) => {
            tracing::warn!(job = %job_id, part = index, error = %e, "the provider refused the batch for quota; the part waits");
            Ok(PartRecord::waiting(part, &now, e.to_string()))
        }
        Err(e) => Err(e.into()),
    }
}

/// Which part a batch is for: its tags.
#[derive(Debug, Clone, Copy)]
pub(super) struct PartBatch<'a> {
    /// The job's id.
    pub job_id: &'a str,
    /// The part's index.
    pub index: u32,
    /// Times the part waited for quota: a batch failed for quota has the tags of an
    /// earlier wait, so that it is never found as the new one.
    pub quota_waits: u32,
}

impl PartBatch<'_> {
    fn tags(&self) -> BatchTags {
        let mut tags = BTreeMap::from([
            ("batchline_job".to_string(), self.job_id.to_string()),
            ("batchline_part".to_string(), self.index.to_string()),
        ]);
        if self.quota_waits > 0 {
            tags.insert("batchline_wait".into(), self.quota_waits.to_string());
        }
        tags
    }
}

/// Creates the batch tagged with its job and part, or with `find_first` finds the one
/// a crashed run created.
pub(super) async fn start_batch(
    provider: &dyn BatchProvider,
    model: &str,
    batch: &PartBatch<'_>,
    body: Bytes,
    find_first: bool,
) -> crate::Result<BatchStatus> {
    let tags = batch.tags();
    if find_first && let Some(found) = provider.find(&tags).await? {
        tracing::info!(job = %batch.job_id, part = batch.index, batch = %found.batch_id, "found the batch a previous run created");
        return Ok(found);
    }
    provider.create(model, body, &tags).await
}
