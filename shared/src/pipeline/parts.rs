//! What submit and collect share about a part: reading the uploaded object's
//! requests (again, for a retry part) and creating the part's provider batch.

use std::collections::{BTreeMap, HashSet};

use bytes::Bytes;

use super::context::{Context, PipelineError};
use super::input::{InputError, InputLine, LineReader};
use super::job::{SourceObject, keys};
use super::spec::{self, JobSpec};
use crate::build::BatchPart;
use crate::provider::{BatchProvider, BatchTags};
use crate::request::Request;
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

/// A line turned into a request, or (id to report it under, line number, reason).
pub(super) fn read_request(
    spec: &JobSpec,
    line: InputLine,
) -> Result<(u64, Request), (String, u64, String)> {
    let too_long = |number: u64, length: u64| {
        let reason = format!(
            "line is {length} bytes, more than the {} allowed",
            spec.max_line_bytes
        );
        Err((spec::line_id(number), number, reason))
    };
    match line {
        InputLine::TooLong { number, length } => too_long(number, length),
        InputLine::Unreadable { number, reason } => Err((spec::line_id(number), number, reason)),
        InputLine::Line { number, bytes } if bytes.len() > spec.max_line_bytes => {
            too_long(number, bytes.len() as u64)
        }
        InputLine::Line { number, bytes } => spec::parse_line(number, &bytes)
            .map(|request| (number, request))
            .map_err(|rejection| (rejection.custom_id, number, rejection.reason)),
    }
}

/// The reader's next line; a failure to fetch the object's bytes is a store error
/// for `key` (worth retrying).
pub(super) async fn next_line(
    reader: &mut LineReader,
    key: &str,
) -> Result<Option<InputLine>, PipelineError> {
    reader.next_line().await.map_err(|e| {
        StoreError::Backend {
            operation: "read",
            key: key.to_string(),
            message: e.to_string(),
        }
        .into()
    })
}

/// The requests with `wanted` ids, read again from the job's source object (the
/// version it was submitted from), in file order: what a retry part resubmits.
/// `None` when the object is gone.
pub(super) async fn reread_requests(
    ctx: &Context,
    source: &SourceObject,
    spec: &JobSpec,
    wanted: &HashSet<&str>,
) -> Result<Option<Vec<Request>>, PipelineError> {
    let key = source.key.as_str();
    let mut reader = match open_reader(ctx, key, source.version_id.as_deref()).await {
        Ok(Ok(mut reader)) => {
            reader.set_max_line_bytes(spec.max_line_bytes);
            reader
        }
        Err(PipelineError::Store(StoreError::NotFound { .. })) | Ok(Err(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut found: Vec<Request> = Vec::with_capacity(wanted.len());
    let mut taken: HashSet<String> = HashSet::with_capacity(wanted.len());
    while let Some(line) = next_line(&mut reader, key).await? {
        if let InputLine::Line { number: 1, bytes } = &line
            && spec::is_header(bytes)
        {
            continue;
        }
        // Only the first line with an id was accepted: later ones were duplicates.
        if let Ok((_, request)) = read_request(spec, line)
            && wanted.contains(request.custom_id.as_str())
            && taken.insert(request.custom_id.clone())
        {
            found.push(request);
        }
    }
    Ok(Some(found))
}

/// Writes the part's manifest (its ids in row order), then creates its batch tagged
/// with the job and part, or with `find_first` finds the one a crashed run created.
pub(super) async fn create_batch(
    ctx: &Context,
    provider: &dyn BatchProvider,
    model: &str,
    job_id: &str,
    part: &BatchPart,
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
