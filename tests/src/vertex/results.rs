//! Running a finished Vertex job: reading its input from Cloud Storage and writing its predictions.

use axum::body::Bytes;
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::common::{BatchFate, ran_count};
use crate::gcs::{Storage, parse_gs_uri};
use crate::google::{Api, Code, GoogleError, directory_timestamp, generate, processed_time};

use super::batches::{CANCELLED, CompletionStats, EXPIRED, Ended, Job, SUCCEEDED};
use super::{RUNNING_STEP, Vertex};

impl Job {
    /// Reads the input, answers the requests that got to run, and writes predictions.
    pub(super) fn run(
        &self,
        vertex: &Vertex,
        cancelled_at: Option<u32>,
    ) -> Result<(&'static str, Ended), GoogleError> {
        let cancelled = || GoogleError::new(Code::Cancelled, "CANCELED");
        if cancelled_at.is_some_and(|at| at < RUNNING_STEP) {
            let ended = Ended {
                error: Some(cancelled()),
                output_directory: None,
                stats: None,
            };
            return Ok((CANCELLED, ended));
        }
        let lines = self.read_input(&vertex.storage)?;
        if self.fate == BatchFate::FailValidation {
            return Err(import_error(
                "the input was refused by validation (emulated).",
            ));
        }
        let (output_bucket, output_path) = parse_gs_uri(&self.spec.output_prefix)
            .expect("the output prefix was validated at create");
        if !vertex.storage.bucket_exists(output_bucket) {
            return Err(GoogleError::failed_precondition(format!(
                "Failed to get GCS bucket location for {output_bucket}. Please check that the bucket exists and permissions are set correctly."
            )));
        }
        let ran = match (cancelled_at, self.fate) {
            (Some(_), _) | (None, BatchFate::Expire) => ran_count(lines.len(), self.partial),
            (None, _) => lines.len(),
        };
        let mut stats = CompletionStats {
            successful: 0,
            failed: 0,
            incomplete: lines.len() - ran,
        };
        let mut predictions = Vec::new();
        let mut outcomes: Vec<Option<_>> = vertex
            .shared
            .run_in_results_order(&self.name, ran, |index, cache| match self.fate {
                BatchFate::AllFail => Err(GoogleError::new(
                    Code::Internal,
                    "Internal error encountered.",
                )),
                _ => generate(
                    &lines[index]["request"],
                    Api::Vertex,
                    &self.spec.model_id,
                    cache,
                ),
            })
            .into_iter()
            .map(Some)
            .collect();
        for index in vertex.shared.results_order(&self.name, ran) {
            let mut line = lines[index].clone();
            let outcome = outcomes[index].take().expect("each request runs once");
            let status = match outcome {
                Ok(response) => {
                    stats.successful += 1;
                    line.insert("response".into(), response);
                    String::new()
                }
                Err(error) => {
                    stats.failed += 1;
                    error.vertex_line_status()
                }
            };
            line.insert("status".into(), Value::String(status));
            line.insert(
                "processed_time".into(),
                Value::String(processed_time(OffsetDateTime::now_utc())),
            );
            serde_json::to_writer(&mut predictions, &line).expect("serializing JSON to memory");
            predictions.push(b'\n');
        }
        let directory_path = format!(
            "{}prediction-model-{}",
            if output_path.is_empty() {
                String::new()
            } else {
                format!("{output_path}/")
            },
            directory_timestamp(self.create_time),
        );
        vertex.storage.put(
            output_bucket,
            &format!("{directory_path}/predictions.jsonl"),
            Bytes::from(predictions),
            "application/jsonl",
            true,
        );
        let (state, error) = match (cancelled_at, self.fate) {
            (Some(_), _) => (CANCELLED, Some(cancelled())),
            (None, BatchFate::Expire) => (EXPIRED, None),
            (None, _) => (SUCCEEDED, None),
        };
        let ended = Ended {
            error,
            output_directory: Some(format!("gs://{output_bucket}/{directory_path}")),
            stats: Some(stats),
        };
        Ok((state, ended))
    }

    /// Every input line, in order, as a JSON object holding a `request` object. Missing
    /// objects and malformed lines fail the whole job, as the real importer does.
    fn read_input(&self, storage: &Storage) -> Result<Vec<Map<String, Value>>, GoogleError> {
        let mut lines = Vec::new();
        for uri in &self.spec.input_uris {
            let (bucket, object) = parse_gs_uri(uri).expect("input URIs were validated at create");
            if !storage.bucket_exists(bucket) {
                return Err(GoogleError::failed_precondition(format!(
                    "Failed to get GCS bucket location for {bucket}. Please check that the bucket exists and permissions are set correctly."
                )));
            }
            let data = storage
                .get(bucket, object)
                .ok_or_else(|| import_error(&format!("Not found: {uri}.")))?
                .data;
            for (number, raw) in data.split(|b| *b == b'\n').enumerate() {
                if raw.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let line: Map<String, Value> = serde_json::from_slice(raw).map_err(|e| {
                    import_error(&format!(
                        "line {} of {uri} is not a JSON object: {e}",
                        number + 1
                    ))
                })?;
                if !line.get("request").is_some_and(Value::is_object) {
                    return Err(import_error(&format!(
                        "line {} of {uri} has no \"request\" object.",
                        number + 1
                    )));
                }
                lines.push(line);
            }
        }
        if lines.is_empty() {
            return Err(import_error("the input holds no instances."));
        }
        Ok(lines)
    }
}

fn import_error(why: &str) -> GoogleError {
    GoogleError::invalid(format!(
        "Failed to import data. Please check 'Prepare input' section of the batch predictions documentation: {why}"
    ))
}
