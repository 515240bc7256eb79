//! Re-running the failed rows of a finished job. An upload whose first line is
//! `{"rerun_failed": "<job id>"}` becomes a new job with exactly the rows that job
//! failed (input errors included), read again from the upload that job read, with
//! that job's spec and under the same `custom_id`s.

use std::collections::HashSet;

use serde::Deserialize;

use super::context::{Context, PipelineError};
use super::csv_input::is_csv_key;
use super::input::{InputLine, LineReader};
use super::job::{self, RerunOf, keys};
use super::parts::open_reader;
use super::spec::{JobSpec, bounds, is_header};
use super::upload::next_line;
use crate::storage::{ObjectMeta, StoreError};

/// The first line of a re-run request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RerunRequest {
    rerun_failed: String,
}

/// The job a re-run request names, if `line` is one (an object with the key
/// `rerun_failed`; one that does not parse as a request is still one, so that the
/// error says what is wrong with it).
pub(super) fn requested_job(line: &InputLine) -> Option<Result<String, String>> {
    let InputLine::Line { bytes, .. } = line else {
        return None;
    };
    let object =
        serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(bytes).ok()?;
    if !object.contains_key("rerun_failed") {
        return None;
    }
    Some(
        serde_json::from_slice::<RerunRequest>(bytes)
            .map(|request| request.rerun_failed)
            .map_err(|e| {
                format!("not a valid re-run request ({{\"rerun_failed\": \"<job id>\"}}): {e}")
            }),
    )
}

/// What a re-run job takes from the finished job it names.
#[derive(Debug)]
pub(super) struct Rerun {
    /// The finished job and the upload its rows are read from.
    pub of: RerunOf,
    /// Its spec.
    pub spec: JobSpec,
    /// The ids of its failed rows: the rows the new job has.
    pub failed: HashSet<String>,
}

/// Loads the finished job `job_id` and the ids of its failed rows. The inner `Err`
/// says why it cannot be re-run (unknown, still running, failed before submission,
/// nothing failed).
pub(super) async fn load(
    ctx: &Context,
    job_id: &str,
) -> Result<Result<Rerun, String>, PipelineError> {
    if job_id.is_empty() || job_id.contains('/') {
        return Ok(Err(format!("{job_id:?} is not a job id")));
    }
    let earlier = match job::load(ctx.store.as_ref(), job_id).await {
        Ok(versioned) => versioned.record,
        Err(PipelineError::Store(StoreError::NotFound { .. })) => {
            return Ok(Err(format!("there is no job {job_id}")));
        }
        Err(e) => return Err(e),
    };
    if !earlier.status.is_closed() || earlier.completed_at.is_none() {
        return Ok(Err(format!(
            "job {job_id} has not finished; re-run its failed rows once it has"
        )));
    }
    let Some(spec) = earlier.spec.clone() else {
        return Ok(Err(format!(
            "job {job_id} failed before it read any row ({}); upload the file again instead",
            earlier.failure.as_deref().unwrap_or("no reason recorded")
        )));
    };
    let mut error_files = earlier.input_error_files();
    for part in &earlier.parts {
        if part.collected.as_ref().is_some_and(|c| c.failed > 0) {
            error_files.push(keys::errors(job_id, part.index));
        }
    }
    let mut failed = HashSet::new();
    for key in &error_files {
        read_ids(ctx, key, &mut failed).await?;
    }
    if failed.is_empty() {
        return Ok(Err(format!("job {job_id} has no failed rows")));
    }
    Ok(Ok(Rerun {
        of: RerunOf {
            job_id: job_id.to_string(),
            source: earlier.rows_source().clone(),
        },
        spec,
        failed,
    }))
}

/// The earlier upload's metadata, a reader over its rows and, for JSONL, its first
/// row (its spec header, if it has one, skipped). The inner `Err` says why it cannot
/// be read.
pub(super) async fn open_rows(
    ctx: &Context,
    of: &RerunOf,
) -> Result<Result<(ObjectMeta, LineReader, Option<InputLine>), String>, PipelineError> {
    let (key, version) = (of.source.key.as_str(), of.source.version_id.as_deref());
    let meta = match ctx.store.head(key, version).await {
        Ok(meta) => meta,
        Err(StoreError::NotFound { .. }) => {
            return Ok(Err(format!(
                "the upload of job {} ({key}) is gone, so its rows cannot be read again",
                of.job_id
            )));
        }
        Err(e) => return Err(e.into()),
    };
    let mut reader = match open_reader(ctx, key, version).await? {
        Ok(reader) => reader,
        Err(e) => return Ok(Err(format!("{key}: {e}"))),
    };
    // A CSV file's first line is its header row, which the row reader reads itself.
    if is_csv_key(key) {
        return Ok(Ok((meta, reader, None)));
    }
    let mut first = next_line(&mut reader, key).await?;
    if let Some(InputLine::Line { bytes, .. }) = &first
        && is_header(bytes)
    {
        first = next_line(&mut reader, key).await?;
    }
    Ok(Ok((meta, reader, first)))
}

/// Adds the `custom_id` of every record in the error file `key` to `ids`, streaming it.
/// Adds the `custom_id` of every line of the result file `key` (errors, skipped rows).
pub(super) async fn read_ids(
    ctx: &Context,
    key: &str,
    ids: &mut impl Extend<String>,
) -> Result<(), PipelineError> {
    #[derive(Deserialize)]
    struct Id {
        custom_id: String,
    }
    let stream = ctx.store.get_stream(key, None, 0).await?;
    let mut reader = LineReader::open(key, stream, bounds::MAX_LINE_BYTES)
        .await
        .map_err(|e| corrupt(key, e.to_string()))?;
    while let Some(line) = next_line(&mut reader, key).await? {
        let InputLine::Line { bytes, .. } = line else {
            return Err(corrupt(key, "a line is unreadable or too long".into()));
        };
        let id: Id = serde_json::from_slice(&bytes).map_err(|e| corrupt(key, e.to_string()))?;
        ids.extend([id.custom_id]);
    }
    Ok(())
}

fn corrupt(key: &str, reason: String) -> PipelineError {
    PipelineError::CorruptRecord {
        key: key.to_string(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str) -> InputLine {
        InputLine::Line {
            number: 1,
            bytes: text.as_bytes().to_vec(),
        }
    }

    #[test]
    fn rerun_requests_are_told_from_rows_and_headers() {
        assert_eq!(
            requested_job(&line(r#"{"rerun_failed": "invoices-ab12"}"#)),
            Some(Ok("invoices-ab12".to_string()))
        );
        assert!(
            requested_job(&line(r#"{"rerun_failed": 3}"#))
                .unwrap()
                .is_err()
        );
        assert!(
            requested_job(&line(r#"{"rerun_failed": "a", "text": "x"}"#))
                .unwrap()
                .is_err()
        );
        assert_eq!(requested_job(&line(r#"{"text": "rerun_failed"}"#)), None);
        assert_eq!(requested_job(&line(r#"{"spec": {}}"#)), None);
        assert_eq!(requested_job(&line("not json")), None);
    }
}
