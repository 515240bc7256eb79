//! What submit and collect share about a part: reading the uploaded object's
//! requests (again, for a retry part) and creating the part's provider batch.

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::Bytes;

use super::context::{Context, PipelineError};
use super::csv_input::is_csv_key;
use super::input::{InputError, InputLine, LineReader};
use super::job::{SourceObject, keys};
use super::row::{InputRow, KeptValues, kept_file};
use super::spec::{self, JobSpec};
use super::upload::{UploadRows, next_line};
use crate::build::BatchPart;
use crate::provider::{BatchProvider, BatchTags};
use crate::storage::{PutMode, StoreError};

/// The uploaded object's lines, capped in total size; the inner `Err` is a whole-file
/// problem (compressed without the suffix).
pub(super) async fn open_reader(
    ctx: &Context,
    key: &str,
    version: Option<&str>,
) -> Result<Result<LineReader, InputError>, PipelineError> {
    let stream = ctx.store.get_stream(key, version).await?;
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

/// Writes the part's manifest (its ids in row order) and, when the job keeps values,
/// its `.kept` file from `kept` (every row of the part by id), then creates its batch
/// tagged with the job and part, or with `find_first` finds the one a crashed run
/// created.
pub(super) async fn create_batch(
    ctx: &Context,
    provider: &dyn BatchProvider,
    model: &str,
    job_id: &str,
    part: &BatchPart,
    kept: Option<&HashMap<String, KeptValues>>,
    find_first: bool,
) -> Result<crate::status::BatchStatus, PipelineError> {
    let index = part.index;
    let manifest = part.manifest();
    ctx.store
        .put(
            &keys::part_manifest(job_id, index),
            Bytes::from(manifest),
            PutMode::Overwrite,
        )
        .await?;
    if let Some(kept) = kept {
        ctx.store
            .put(
                &keys::part_kept(job_id, index),
                Bytes::from(kept_file(&part.custom_ids, kept)),
                PutMode::Overwrite,
            )
            .await?;
    }
    let tags: BatchTags = BTreeMap::from([
        ("batchline_job".to_string(), job_id.to_string()),
        ("batchline_part".to_string(), index.to_string()),
    ]);
    if find_first && let Some(found) = provider.find(&tags).await? {
        tracing::info!(job = %job_id, part = index, batch = %found.batch_id, "found the batch a previous run created");
        return Ok(found);
    }
    Ok(provider.create(model, part.body.clone(), &tags).await?)
}
