//! Running a finished Gemini batch: a response or an error for every request.

use axum::body::Bytes;
use serde_json::json;
use time::OffsetDateTime;

use crate::common::{BatchFate, ran_count};
use crate::google::{Api, Code, GoogleError, generate};

use super::Gemini;
use super::batches::{Batch, CANCELLED, EXPIRED, Ended, Input, Output, SUCCEEDED, Stats, Tag};
use super::files::StoredFile;

impl Batch {
    pub(super) fn run(
        &self,
        gemini: &Gemini,
        cancelled_at: Option<u32>,
    ) -> Result<(&'static str, Ended), GoogleError> {
        if cancelled_at.is_some_and(|at| at == 0) {
            let stats = Stats {
                pending: self.request_count,
                ..Stats::default()
            };
            return Ok((
                CANCELLED,
                Ended {
                    error: None,
                    output: None,
                    stats,
                },
            ));
        }
        let requests = self.requests(gemini)?;
        if self.fate == BatchFate::FailValidation {
            return Err(GoogleError::invalid(
                "The batch input failed validation (emulated).",
            ));
        }
        let ran = match (cancelled_at, self.fate) {
            (Some(_), _) | (None, BatchFate::Expire) => ran_count(requests.len(), self.partial),
            (None, _) => requests.len(),
        };
        let mut stats = Stats {
            pending: requests.len() - ran,
            ..Stats::default()
        };
        let mut outcomes: Vec<Option<_>> = gemini
            .shared
            .run_in_results_order(&self.id, ran, |index, cache| match self.fate {
                BatchFate::AllFail => Err(GoogleError::new(
                    Code::Internal,
                    "Internal error encountered.",
                )),
                _ => generate(&requests[index].1, Api::Gemini, &self.model_id, cache),
            })
            .into_iter()
            .map(Some)
            .collect();
        let mut answer = |index: usize| {
            let (tag, _) = &requests[index];
            let outcome = outcomes[index].take().expect("each request runs once");
            let mut line = match tag {
                Tag::Key(key) => json!({"key": key}),
                Tag::Metadata(Some(metadata)) => json!({"metadata": metadata}),
                Tag::Metadata(None) => json!({}),
            };
            match outcome {
                Ok(response) => {
                    stats.successful += 1;
                    line["response"] = response;
                }
                Err(error) => {
                    stats.failed += 1;
                    // A google.rpc.Status, as the responses file holds it.
                    line["error"] = error.rpc_status();
                }
            }
            line
        };
        let output = match &self.input {
            Input::File(_) => {
                let mut results = Vec::new();
                for index in gemini.shared.results_order(&self.id, ran) {
                    serde_json::to_writer(&mut results, &answer(index))
                        .expect("serializing JSON to memory");
                    results.push(b'\n');
                }
                let id = format!("batch-{}", self.id);
                gemini.store(StoredFile {
                    id: id.clone(),
                    display_name: None,
                    mime_type: "application/jsonl".to_string(),
                    data: Bytes::from(results),
                    create_time: OffsetDateTime::now_utc(),
                    generated: true,
                });
                Output::ResponsesFile(format!("files/{id}"))
            }
            // Inline responses stay in request order: a request without metadata
            // can only be matched to its response by position.
            Input::Inline(_) => Output::Inline((0..ran).map(answer).collect()),
        };
        let state = match (cancelled_at, self.fate) {
            (Some(_), _) => CANCELLED,
            (None, BatchFate::Expire) => EXPIRED,
            (None, _) => SUCCEEDED,
        };
        Ok((
            state,
            Ended {
                error: None,
                output: Some(output),
                stats,
            },
        ))
    }
}
