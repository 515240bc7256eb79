//! Running a job: reading and checking its input from S3 when validation ends, answering
//! the records that get to run, and writing `<output>/<job id>/<file>.out` and
//! `manifest.json.out`.

use std::collections::HashSet;

use axum::body::Bytes;
use serde_json::{Map, Value, json};

use crate::anthropic::{ResultKind, plan_valid_result};
use crate::cache::CacheState;
use crate::common::{BatchFate, Shared};

use super::Bedrock;
use super::batches::Job;
use super::converse::to_converse_response;
use super::storage::{self, bucket_exists, object_under, read_input};
use super::validation::{InvocationType, JobSpec, record_params};

/// A job's checked input: its files in key order, each with its records in line order.
pub(super) struct Input {
    files: Vec<InputFile>,
}

struct InputFile {
    /// The object's file name (the output is `<name>.out`).
    name: String,
    records: Vec<Record>,
}

struct Record {
    record_id: String,
    model_input: Map<String, Value>,
}

impl Input {
    /// Records in all files.
    pub(super) fn len(&self) -> usize {
        self.files.iter().map(|file| file.records.len()).sum()
    }
}

/// What the records that ran came to (the manifest and the job's counts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Counts {
    pub(super) processed: usize,
    pub(super) success: usize,
    pub(super) error: usize,
    input_tokens: u64,
    output_tokens: u64,
}

impl Job {
    /// Reads the input objects and checks them as Bedrock's validation does; `Err` is the
    /// job's failure `message`.
    pub(super) async fn validate(&self, bedrock: &Bedrock) -> Result<Input, String> {
        if self.fate == BatchFate::FailValidation {
            return Err("The input was refused by validation (emulated fault).".to_string());
        }
        let client = bedrock.s3.client(&bedrock.shared)?;
        let objects = read_input(&client, &self.spec.input_uri).await?;
        if !bucket_exists(&client, &self.spec.output_uri).await {
            return Err(format!(
                "The output S3 location {} is not accessible: its bucket does not exist.",
                self.spec.output_uri
            ));
        }
        let input = parse_input(objects, &self.spec.input_uri)?;
        let settings = bedrock.settings();
        let count = input.len();
        if count < settings.min_records {
            return Err(format!(
                "The batch inference job input contains {count} records, fewer than the minimum of {} records per job.",
                settings.min_records
            ));
        }
        if count > settings.max_records {
            return Err(format!(
                "The batch inference job input contains {count} records, more than the maximum of {} records per job.",
                settings.max_records
            ));
        }
        Ok(input)
    }

    /// Answers the first `ran` records (in input order) and writes their output lines,
    /// shuffled per file, and the manifest. `None` when the job never got its input.
    pub(super) async fn write_output(
        &self,
        bedrock: &Bedrock,
        ran: usize,
    ) -> Result<Option<Counts>, String> {
        let Some(input) = self.input.clone() else {
            return Ok(None);
        };
        let (shared, spec, fate, id) = (
            bedrock.shared.clone(),
            self.spec.clone(),
            self.fate,
            self.id.clone(),
        );
        // Answering up to 50,000 records is CPU work: keep it off the async workers.
        let (files, counts) = tokio::task::spawn_blocking(move || {
            answer_records(&shared, &spec, fate, &id, &input, ran)
        })
        .await
        .map_err(|e| format!("The job could not be run: {e}"))?;
        let client = bedrock.s3.client(&bedrock.shared)?;
        let output = &self.spec.output_uri;
        for (name, lines) in files {
            let (bucket, key) = object_under(output, &format!("{}/{name}.out", self.id));
            storage::put(&client, &bucket, &key, lines).await?;
        }
        let manifest = json!({
            "totalRecordCount": self.input.as_ref().map_or(0, |input| input.len()),
            "processedRecordCount": counts.processed,
            "successRecordCount": counts.success,
            "errorRecordCount": counts.error,
            "inputTokenCount": counts.input_tokens,
            "outputTokenCount": counts.output_tokens,
        });
        let (bucket, key) = object_under(output, &format!("{}/manifest.json.out", self.id));
        storage::put(&client, &bucket, &key, manifest.to_string().into_bytes()).await?;
        Ok(Some(counts))
    }
}

/// The records of the input objects; a line that is not a record, or a repeated
/// `recordId`, fails the job.
fn parse_input(objects: Vec<(String, Bytes)>, uri: &str) -> Result<Input, String> {
    let mut seen = HashSet::new();
    let mut files = Vec::new();
    for (name, data) in objects {
        let mut records = Vec::new();
        for (number, raw) in data.split(|b| *b == b'\n').enumerate() {
            if raw.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let at = format!("line {} of {name} ({uri})", number + 1);
            let mut line: Map<String, Value> = serde_json::from_slice(raw)
                .map_err(|e| format!("The input {at} is not a JSON object: {e}"))?;
            let Some(Value::String(record_id)) = line.remove("recordId") else {
                return Err(format!("The input {at} has no recordId string."));
            };
            let Some(Value::Object(model_input)) = line.remove("modelInput") else {
                return Err(format!("The input {at} has no modelInput object."));
            };
            if !seen.insert(record_id.clone()) {
                return Err(format!(
                    "The recordId {record_id} appears more than once (again at {at}); every recordId must be unique within a job."
                ));
            }
            records.push(Record {
                record_id,
                model_input,
            });
        }
        files.push(InputFile { name, records });
    }
    Ok(Input { files })
}

/// Each file's output lines (shuffled, seeded by job and file) and the counts, for the
/// first `ran` records in input order.
fn answer_records(
    shared: &Shared,
    spec: &JobSpec,
    fate: BatchFate,
    job_id: &str,
    input: &Input,
    ran: usize,
) -> (Vec<(String, Vec<u8>)>, Counts) {
    let mut counts = Counts {
        processed: ran,
        ..Counts::default()
    };
    let mut files = Vec::new();
    let mut left = ran;
    for file in &input.files {
        let count = left.min(file.records.len());
        left -= count;
        let order_key = format!("{job_id}/{}", file.name);
        let answers = shared.run_in_results_order(&order_key, count, |index, cache| {
            answer(spec, fate, &file.records[index], cache)
        });
        let mut lines = Vec::new();
        for index in shared.results_order(&order_key, count) {
            let (line, tally) = &answers[index];
            match tally {
                Some((input_tokens, output_tokens)) => {
                    counts.success += 1;
                    counts.input_tokens += input_tokens;
                    counts.output_tokens += output_tokens;
                }
                None => counts.error += 1,
            }
            lines.extend_from_slice(line.as_bytes());
            lines.push(b'\n');
        }
        files.push((file.name.clone(), lines));
    }
    (files, counts)
}

/// One record's output line, and its input and output tokens when it succeeded.
fn answer(
    spec: &JobSpec,
    fate: BatchFate,
    record: &Record,
    cache: &mut CacheState,
) -> (String, Option<(u64, u64)>) {
    let error = |code: u16, message: &str| {
        let line = json!({
            "recordId": record.record_id,
            "modelInput": record.model_input,
            "error": {"errorCode": code, "errorMessage": message},
        });
        (line.to_string(), None)
    };
    if fate == BatchFate::AllFail {
        return error(500, "Internal server error");
    }
    let params = match record_params(spec.invocation_type, &spec.model, &record.model_input) {
        Ok(params) => params,
        Err(message) => return error(400, &message),
    };
    let planned = plan_valid_result(&record.record_id, &params, BatchFate::Complete, cache);
    if planned.kind != ResultKind::Succeeded {
        let detail = planned
            .result
            .pointer("/error/error")
            .unwrap_or(&Value::Null);
        let code = match detail["type"].as_str() {
            Some("rate_limit_error") => 429,
            Some("invalid_request_error") => 400,
            Some("overloaded_error") => 503,
            _ => 500,
        };
        return error(
            code,
            detail["message"]
                .as_str()
                .unwrap_or("Internal server error"),
        );
    }
    let message = &planned.result["message"];
    let usage = &message["usage"];
    let tokens = |field: &str| usage[field].as_u64().unwrap_or(0);
    let input_tokens = tokens("input_tokens")
        + tokens("cache_read_input_tokens")
        + tokens("cache_creation_input_tokens");
    let output = match spec.invocation_type {
        InvocationType::InvokeModel => message.clone(),
        InvocationType::Converse => to_converse_response(message),
    };
    let line = json!({
        "recordId": record.record_id,
        "modelInput": record.model_input,
        "modelOutput": output,
    });
    (
        planned.with_raw_input(line.to_string()),
        Some((input_tokens, tokens("output_tokens"))),
    )
}
