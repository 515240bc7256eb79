//! Vertex AI batch prediction (`projects/{p}/locations/{l}/batchPredictionJobs`) for
//! Gemini models, reading input from and writing predictions to the emulated Cloud
//! Storage, behind OAuth bearer tokens. Served under `/v1` and `/v1beta1` (the
//! google-genai SDK's default).
//!
//! A job is QUEUED, PENDING and RUNNING for one lifecycle step each, then ends. The
//! input is read and the predictions written when the job ends; problems with the
//! input bucket, objects or lines fail the job then (as the real service does
//! asynchronously), while a bad request line only fails that line.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::middleware;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use crate::common::{BatchFate, Shared, lock, ran_count};
use crate::gcs::{self, Storage, parse_gs_uri};
use crate::google::{
    Api, Code, GoogleError, directory_timestamp, field, generate, json_body, page, processed_time,
    scrambled_order, steps, timestamp, validate_labels,
};
use crate::oauth::{self, Tokens};

const QUEUED: &str = "JOB_STATE_QUEUED";
const PENDING: &str = "JOB_STATE_PENDING";
const RUNNING: &str = "JOB_STATE_RUNNING";
const SUCCEEDED: &str = "JOB_STATE_SUCCEEDED";
const FAILED: &str = "JOB_STATE_FAILED";
const CANCELLING: &str = "JOB_STATE_CANCELLING";
const CANCELLED: &str = "JOB_STATE_CANCELLED";
const EXPIRED: &str = "JOB_STATE_EXPIRED";

/// Lifecycle step at which a job starts running; it ends one step later.
const RUNNING_STEP: u32 = 2;
const MAX_DISPLAY_NAME: usize = 128;
/// Job numbers look like Vertex's 19-digit ids.
const FIRST_JOB_NUMBER: u64 = 7_100_000_000_000_000_000;
const DEFAULT_PAGE_SIZE: usize = 100;
const MAX_PAGE_SIZE: usize = 1000;

/// Vertex batch prediction, Cloud Storage and the OAuth token endpoint, sharing one
/// token registry and one object store.
pub fn router(shared: Arc<Shared>) -> Router {
    let tokens = Arc::new(Tokens::new(shared.config.api_key.clone()));
    let storage = Arc::new(Storage::default());
    let vertex = Arc::new(Vertex {
        shared: shared.clone(),
        storage: storage.clone(),
        jobs: Mutex::new(BTreeMap::new()),
        next_number: AtomicU64::new(FIRST_JOB_NUMBER),
    });
    let mut jobs = Router::new();
    for version in ["v1", "v1beta1"] {
        let collection =
            format!("/{version}/projects/{{project}}/locations/{{location}}/batchPredictionJobs");
        jobs = jobs
            .route(&collection, get(list_jobs).post(create_job))
            .route(
                &format!("{collection}/{{job}}"),
                get(get_job).post(job_method).delete(delete_job),
            );
    }
    jobs.route_layer(middleware::from_fn_with_state(
        tokens.clone(),
        oauth::require_bearer,
    ))
    .with_state(vertex)
    .merge(gcs::router(storage, tokens.clone(), shared))
    .merge(oauth::router(tokens))
}

struct Vertex {
    shared: Arc<Shared>,
    storage: Arc<Storage>,
    jobs: Mutex<BTreeMap<u64, Job>>,
    next_number: AtomicU64,
}

/// What the create call asked for, validated.
struct JobSpec {
    display_name: String,
    /// `publishers/google/models/{model}` as sent.
    model: String,
    /// The `{model}` part.
    model_id: String,
    input_config: Value,
    input_uris: Vec<String>,
    output_config: Value,
    output_prefix: String,
    labels: Map<String, Value>,
}

struct Job {
    number: u64,
    name: String,
    spec: JobSpec,
    created: Instant,
    create_time: OffsetDateTime,
    fate: BatchFate,
    partial: f64,
    /// The lifecycle step at which cancellation was asked for.
    cancelled_at_step: Option<u32>,
    state: &'static str,
    start_time: Option<String>,
    update_time: String,
    end_time: Option<String>,
    end: Option<Ended>,
}

/// How a job ended.
struct Ended {
    error: Option<GoogleError>,
    output_directory: Option<String>,
    stats: Option<CompletionStats>,
}

struct CompletionStats {
    successful: usize,
    failed: usize,
    incomplete: usize,
}

impl JobSpec {
    fn parse(body: &Value) -> Result<Self, GoogleError> {
        let display_name = field(body, "displayName")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .ok_or_else(|| GoogleError::invalid("BatchPredictionJob.display_name must be set."))?;
        if display_name.chars().count() > MAX_DISPLAY_NAME {
            return Err(GoogleError::invalid(format!(
                "BatchPredictionJob.display_name must be at most {MAX_DISPLAY_NAME} characters."
            )));
        }
        let model = field(body, "model").and_then(Value::as_str).unwrap_or("");
        let model_id = publisher_model(model)?;

        let input_config = field(body, "inputConfig")
            .filter(|c| c.is_object())
            .ok_or_else(|| GoogleError::invalid("BatchPredictionJob.input_config must be set."))?;
        let instances_format = field(input_config, "instancesFormat").and_then(Value::as_str);
        if instances_format != Some("jsonl") {
            return Err(GoogleError::invalid(format!(
                "Unsupported instances_format {instances_format:?}: the emulator reads \"jsonl\" from Cloud Storage."
            )));
        }
        let input_uris: Vec<String> = field(input_config, "gcsSource")
            .and_then(|source| field(source, "uris"))
            .and_then(Value::as_array)
            .map(|uris| {
                uris.iter()
                    .filter_map(Value::as_str)
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        if input_uris.is_empty() {
            return Err(GoogleError::invalid(
                "BatchPredictionJob.input_config.gcs_source.uris must name at least one object.",
            ));
        }
        if let Some(bad) = input_uris
            .iter()
            .find(|uri| parse_gs_uri(uri).is_none_or(|(_, object)| object.is_empty()))
        {
            return Err(GoogleError::invalid(format!(
                "Invalid Cloud Storage URI: {bad}"
            )));
        }

        let output_config = field(body, "outputConfig")
            .filter(|c| c.is_object())
            .ok_or_else(|| GoogleError::invalid("BatchPredictionJob.output_config must be set."))?;
        let predictions_format = field(output_config, "predictionsFormat").and_then(Value::as_str);
        if predictions_format != Some("jsonl") {
            return Err(GoogleError::invalid(format!(
                "Unsupported predictions_format {predictions_format:?}: the emulator writes \"jsonl\" to Cloud Storage."
            )));
        }
        let output_prefix = field(output_config, "gcsDestination")
            .and_then(|destination| field(destination, "outputUriPrefix"))
            .and_then(Value::as_str)
            .filter(|prefix| parse_gs_uri(prefix).is_some())
            .ok_or_else(|| {
                GoogleError::invalid(
                    "BatchPredictionJob.output_config.gcs_destination.output_uri_prefix must be a gs:// URI.",
                )
            })?;

        let labels = match field(body, "labels") {
            None => Map::new(),
            Some(labels) => {
                validate_labels(labels)?;
                labels.as_object().cloned().unwrap_or_default()
            }
        };
        Ok(Self {
            display_name: display_name.to_string(),
            model: model.to_string(),
            model_id,
            input_config: input_config.clone(),
            input_uris,
            output_config: output_config.clone(),
            output_prefix: output_prefix.trim_end_matches('/').to_string(),
            labels,
        })
    }
}

/// The `{model}` of `publishers/google/models/{model}` (optionally under
/// `projects/{p}/locations/{l}/`); only Gemini models exist here.
fn publisher_model(model: &str) -> Result<String, GoogleError> {
    let unqualified = match model.strip_prefix("projects/") {
        Some(rest) => rest.splitn(4, '/').nth(3).unwrap_or(""),
        None => model,
    };
    let id = unqualified
        .strip_prefix("publishers/google/models/")
        .filter(|id| {
            !id.is_empty()
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-._@".contains(c))
        })
        .ok_or_else(|| {
            GoogleError::invalid(format!(
                "Invalid model {model:?}: expected publishers/google/models/{{model}}."
            ))
        })?;
    if !id.starts_with("gemini-") {
        return Err(GoogleError::not_found(format!(
            "The PublisherModel {id} does not exist."
        )));
    }
    Ok(id.to_string())
}

impl Job {
    fn observe(&mut self, state: &'static str) {
        if self.state == state {
            return;
        }
        let now = timestamp(OffsetDateTime::now_utc());
        if state == RUNNING && self.start_time.is_none() {
            self.start_time = Some(now.clone());
        }
        self.state = state;
        self.update_time = now;
    }

    fn is_over(&self) -> bool {
        self.end.is_some()
    }

    /// Moves the job along its lifecycle; runs it when it reaches its end.
    fn refresh(&mut self, vertex: &Vertex) {
        if self.is_over() {
            return;
        }
        let number = self.number.to_string();
        let steps = steps(&vertex.shared, &[&number, &self.name], self.created);
        match self.cancelled_at_step {
            Some(at) if steps > at || steps == u32::MAX => self.finish(vertex, Some(at)),
            Some(_) => self.observe(CANCELLING),
            None if steps > RUNNING_STEP => self.finish(vertex, None),
            None => self.observe([QUEUED, PENDING, RUNNING][steps as usize]),
        }
    }

    fn finish(&mut self, vertex: &Vertex, cancelled_at: Option<u32>) {
        let (state, ended) = match self.run(vertex, cancelled_at) {
            Ok(run) => run,
            Err(error) => (
                FAILED,
                Ended {
                    error: Some(error),
                    output_directory: None,
                    stats: None,
                },
            ),
        };
        if ended.stats.is_some() {
            self.observe(RUNNING);
        }
        self.observe(state);
        self.end_time = Some(self.update_time.clone());
        self.end = Some(ended);
    }

    /// Reads the input, answers the requests that got to run, and writes predictions.
    fn run(
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
        for index in scrambled_order(ran) {
            let mut line = lines[index].clone();
            let outcome = match self.fate {
                BatchFate::AllFail => Err(GoogleError::new(
                    Code::Internal,
                    "Internal error encountered.",
                )),
                _ => generate(&line["request"], Api::Vertex, &self.spec.model_id),
            };
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

    fn to_json(&self) -> Value {
        let mut job = json!({
            "name": self.name,
            "displayName": self.spec.display_name,
            "model": self.spec.model,
            "inputConfig": self.spec.input_config,
            "outputConfig": self.spec.output_config,
            "state": self.state,
            "createTime": timestamp(self.create_time),
            "updateTime": self.update_time,
        });
        if !self.spec.labels.is_empty() {
            job["labels"] = Value::Object(self.spec.labels.clone());
        }
        if let Some(start_time) = &self.start_time {
            job["startTime"] = json!(start_time);
        }
        if let Some(end_time) = &self.end_time {
            job["endTime"] = json!(end_time);
        }
        if let Some(end) = &self.end {
            if let Some(error) = &end.error {
                job["error"] = error.rpc_status();
            }
            if let Some(directory) = &end.output_directory {
                job["outputInfo"] = json!({"gcsOutputDirectory": directory});
            }
            if let Some(stats) = &end.stats {
                job["completionStats"] = stats.to_json();
            }
        }
        job
    }
}

impl CompletionStats {
    /// int64 counts as strings; zero counts are left out, as proto3 JSON does.
    fn to_json(&self) -> Value {
        let counts = [
            ("successfulCount", self.successful),
            ("failedCount", self.failed),
            ("incompleteCount", self.incomplete),
        ];
        Value::Object(
            counts
                .into_iter()
                .filter(|(_, count)| *count > 0)
                .map(|(name, count)| (name.to_string(), Value::String(count.to_string())))
                .collect(),
        )
    }
}

fn import_error(why: &str) -> GoogleError {
    GoogleError::invalid(format!(
        "Failed to import data. Please check 'Prepare input' section of the batch predictions documentation: {why}"
    ))
}

fn parent(project: &str, location: &str) -> String {
    format!("projects/{project}/locations/{location}")
}

async fn create_job(
    State(vertex): State<Arc<Vertex>>,
    Path((project, location)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>, GoogleError> {
    let spec = JobSpec::parse(&json_body(&body)?)?;
    let (fate, partial) = vertex.shared.fate_for_new_batch();
    let number = vertex.next_number.fetch_add(1, Ordering::Relaxed);
    let create_time = OffsetDateTime::now_utc();
    let job = Job {
        number,
        name: format!(
            "{}/batchPredictionJobs/{number}",
            parent(&project, &location)
        ),
        spec,
        created: Instant::now(),
        create_time,
        fate,
        partial,
        cancelled_at_step: None,
        state: QUEUED,
        start_time: None,
        update_time: timestamp(create_time),
        end_time: None,
        end: None,
    };
    let answer = job.to_json();
    lock(&vertex.jobs).insert(number, job);
    Ok(Json(answer))
}

/// The job `{job}` under `projects/{p}/locations/{l}`, moved along its lifecycle.
fn with_job<T>(
    vertex: &Vertex,
    project: &str,
    location: &str,
    job_id: &str,
    action: impl FnOnce(&mut Job) -> Result<T, GoogleError>,
) -> Result<T, GoogleError> {
    let name = format!("{}/batchPredictionJobs/{job_id}", parent(project, location));
    let not_found = || GoogleError::not_found(format!("BatchPredictionJob {name} not found."));
    let number: u64 = job_id.parse().map_err(|_| not_found())?;
    let mut jobs = lock(&vertex.jobs);
    let job = jobs
        .get_mut(&number)
        .filter(|job| job.name == name)
        .ok_or_else(not_found)?;
    job.refresh(vertex);
    action(job)
}

async fn get_job(
    State(vertex): State<Arc<Vertex>>,
    Path((project, location, job)): Path<(String, String, String)>,
) -> Result<Json<Value>, GoogleError> {
    with_job(&vertex, &project, &location, &job, |job| {
        Ok(Json(job.to_json()))
    })
}

/// `POST …/batchPredictionJobs/{id}:cancel`.
async fn job_method(
    State(vertex): State<Arc<Vertex>>,
    Path((project, location, job)): Path<(String, String, String)>,
) -> Result<Json<Value>, GoogleError> {
    let Some((job_id, "cancel")) = job.split_once(':') else {
        return Err(GoogleError::not_found(format!("Method not found: {job}")));
    };
    with_job(&vertex, &project, &location, job_id, |job| {
        if job.is_over() {
            return Err(GoogleError::failed_precondition(format!(
                "Cannot cancel BatchPredictionJob {} in state {}.",
                job.name, job.state
            )));
        }
        if job.cancelled_at_step.is_none() {
            let number = job.number.to_string();
            job.cancelled_at_step = Some(steps(&vertex.shared, &[&number, &job.name], job.created));
            job.observe(CANCELLING);
        }
        Ok(Json(json!({})))
    })
}

/// `DELETE …/batchPredictionJobs/{id}`: a finished job only; answers a done operation.
async fn delete_job(
    State(vertex): State<Arc<Vertex>>,
    Path((project, location, job_id)): Path<(String, String, String)>,
) -> Result<Json<Value>, GoogleError> {
    let number = with_job(&vertex, &project, &location, &job_id, |job| {
        if job.is_over() {
            Ok(job.number)
        } else {
            Err(GoogleError::failed_precondition(format!(
                "BatchPredictionJob {} is in state {}; cancel it before deleting it.",
                job.name, job.state
            )))
        }
    })?;
    lock(&vertex.jobs).remove(&number);
    let now = timestamp(OffsetDateTime::now_utc());
    Ok(Json(json!({
        "name": format!("{}/operations/{number}", parent(&project, &location)),
        "metadata": {
            "@type": "type.googleapis.com/google.cloud.aiplatform.v1.DeleteOperationMetadata",
            "genericMetadata": {"createTime": now, "updateTime": now},
        },
        "done": true,
        "response": {"@type": "type.googleapis.com/google.protobuf.Empty"},
    })))
}

/// `GET …/batchPredictionJobs?pageSize=&pageToken=&filter=`, newest first.
async fn list_jobs(
    State(vertex): State<Arc<Vertex>>,
    Path((project, location)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, GoogleError> {
    let filter = Filter::parse(query.get("filter").map(String::as_str).unwrap_or(""))?;
    let prefix = format!("{}/", parent(&project, &location));
    let mut jobs = lock(&vertex.jobs);
    let mut matching = Vec::new();
    for job in jobs.values_mut().rev() {
        if !job.name.starts_with(&prefix) {
            continue;
        }
        job.refresh(&vertex);
        if filter.matches(job) {
            matching.push((job.number, job.to_json()));
        }
    }
    let (items, next) = page(matching, &query, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)?;
    let mut answer = json!({});
    if !items.is_empty() {
        answer["batchPredictionJobs"] = Value::Array(items);
    }
    if let Some(next) = next {
        answer["nextPageToken"] = json!(next);
    }
    Ok(Json(answer))
}

/// The list filter subset served: `field=value` terms joined by `AND`, on `state`,
/// `display_name` and `labels.KEY`.
struct Filter(Vec<(String, String)>);

impl Filter {
    fn parse(text: &str) -> Result<Self, GoogleError> {
        let mut terms = Vec::new();
        for term in text.split(" AND ").map(str::trim).filter(|t| !t.is_empty()) {
            let (key, value) = term
                .split_once('=')
                .map(|(k, v)| (k.trim(), v.trim().trim_matches('"')))
                .filter(|(k, _)| matches!(*k, "state" | "display_name") || k.starts_with("labels."))
                .ok_or_else(|| GoogleError::invalid(format!("Unsupported filter term: {term}")))?;
            terms.push((key.to_string(), value.to_string()));
        }
        Ok(Self(terms))
    }

    fn matches(&self, job: &Job) -> bool {
        self.0.iter().all(|(key, value)| match key.as_str() {
            "state" => job.state == value,
            "display_name" => job.spec.display_name == *value,
            label => {
                label
                    .strip_prefix("labels.")
                    .and_then(|label| job.spec.labels.get(label))
                    .and_then(Value::as_str)
                    == Some(value.as_str())
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Config, Emulator, FaultPlan};
    use std::time::Duration;

    const BUCKET: &str = "batch-bucket";

    struct Harness {
        emulator: Emulator,
        client: reqwest::Client,
    }

    impl Harness {
        async fn start(step: Duration) -> Self {
            let config = Config {
                step,
                ..Config::default()
            };
            Self {
                emulator: Emulator::start(config).await.unwrap(),
                client: crate::harness::http_client(),
            }
        }

        fn jobs_url(&self) -> String {
            format!(
                "{}/v1/projects/proj/locations/us-central1/batchPredictionJobs",
                self.emulator.base_url()
            )
        }

        async fn upload(&self, name: &str, body: String) {
            let response = self
                .client
                .post(format!(
                    "{}/upload/storage/v1/b/{BUCKET}/o",
                    self.emulator.base_url()
                ))
                .query(&[("uploadType", "media"), ("name", name)])
                .bearer_auth("test-key")
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
        }

        async fn download(&self, uri: &str) -> reqwest::Response {
            let (bucket, object) = parse_gs_uri(uri).unwrap();
            self.client
                .get(format!(
                    "{}/storage/v1/b/{bucket}/o/{}",
                    self.emulator.base_url(),
                    percent_encoding::utf8_percent_encode(
                        object,
                        percent_encoding::NON_ALPHANUMERIC
                    )
                ))
                .query(&[("alt", "media")])
                .bearer_auth("test-key")
                .send()
                .await
                .unwrap()
        }

        async fn call(
            &self,
            method: reqwest::Method,
            url: &str,
            body: Option<Value>,
        ) -> (u16, Value) {
            let mut request = self.client.request(method, url).bearer_auth("test-key");
            if let Some(body) = body {
                request = request.json(&body);
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json().await.unwrap_or(Value::Null))
        }

        async fn create(&self, body: Value) -> (u16, Value) {
            self.call(reqwest::Method::POST, &self.jobs_url(), Some(body))
                .await
        }

        async fn get(&self, name: &str) -> Value {
            let (status, job) = self
                .call(
                    reqwest::Method::GET,
                    &format!("{}/v1/{name}", self.emulator.base_url()),
                    None,
                )
                .await;
            assert_eq!(status, 200, "{job}");
            job
        }

        fn force_end(&self, name: &str) {
            lock(&self.emulator.shared.forced).insert(name.to_string(), ());
        }

        async fn predictions(&self, job: &Value) -> Vec<Value> {
            let directory = job["outputInfo"]["gcsOutputDirectory"].as_str().unwrap();
            let text = self
                .download(&format!("{directory}/predictions.jsonl"))
                .await
                .text()
                .await
                .unwrap();
            text.lines()
                .map(|line| serde_json::from_str(line).unwrap())
                .collect()
        }
    }

    fn job_body(input: &str) -> Value {
        json!({
            "displayName": "extraction-1",
            "model": "publishers/google/models/gemini-2.5-flash",
            "labels": {"job": "extraction-1"},
            "inputConfig": {"instancesFormat": "jsonl", "gcsSource": {"uris": [format!("gs://{BUCKET}/{input}")]}},
            "outputConfig": {"predictionsFormat": "jsonl", "gcsDestination": {"outputUriPrefix": format!("gs://{BUCKET}/out")}},
        })
    }

    fn input_line(id: &str, text: &str) -> String {
        json!({
            "custom_id": id,
            "request": {
                "contents": [{"role": "user", "parts": [{"text": text}]}],
                "labels": {"custom_id": id},
                "generationConfig": {
                    "responseMimeType": "application/json",
                    "responseJsonSchema": {"type": "object", "properties": {"total": {"type": "integer"}}, "required": ["total"]}
                }
            }
        })
        .to_string()
    }

    fn input(lines: &[String]) -> String {
        lines.join("\n") + "\n"
    }

    #[tokio::test]
    async fn a_job_moves_through_its_states_and_writes_predictions() {
        let harness = Harness::start(Duration::from_millis(150)).await;
        let bad_role = r#"{"request":{"contents":[{"role":"assistant","parts":[{"text":"x"}]}],"labels":{"custom_id":"r-bad"}}}"#;
        harness
            .upload(
                "in/requests.jsonl",
                input(&[
                    input_line("r-0", "first invoice"),
                    input_line("r-1", "second [[fault:provider_error]]"),
                    input_line("r-2", "third [[fault:refusal]]"),
                    bad_role.to_string(),
                ]),
            )
            .await;
        let (status, job) = harness.create(job_body("in/requests.jsonl")).await;
        assert_eq!(status, 200, "{job}");
        assert_eq!(job["state"], QUEUED);
        assert_eq!(job["labels"], json!({"job": "extraction-1"}));
        let name = job["name"].as_str().unwrap();
        assert!(name.starts_with("projects/proj/locations/us-central1/batchPredictionJobs/"));

        let mut states = vec![job["state"].as_str().unwrap().to_string()];
        while states.last().unwrap() != SUCCEEDED {
            tokio::time::sleep(Duration::from_millis(40)).await;
            let state = harness.get(name).await["state"]
                .as_str()
                .unwrap()
                .to_string();
            if states.last() != Some(&state) {
                states.push(state);
            }
        }
        assert_eq!(states, [QUEUED, PENDING, RUNNING, SUCCEEDED]);

        let job = harness.get(name).await;
        assert_eq!(
            job["completionStats"],
            json!({"successfulCount": "2", "failedCount": "2"})
        );
        assert!(job["startTime"].is_string() && job["endTime"].is_string());
        let directory = job["outputInfo"]["gcsOutputDirectory"].as_str().unwrap();
        assert!(
            directory.starts_with(&format!("gs://{BUCKET}/out/prediction-model-")),
            "{directory}"
        );

        let lines = harness.predictions(&job).await;
        let by_id: HashMap<&str, &Value> = lines
            .iter()
            .map(|line| {
                (
                    line["request"]["labels"]["custom_id"].as_str().unwrap(),
                    line,
                )
            })
            .collect();
        assert_eq!(by_id.len(), 4);
        let ok = by_id["r-0"];
        assert_eq!(ok["status"], "");
        assert_eq!(ok["custom_id"], "r-0", "sibling keys are echoed");
        assert!(ok["processed_time"].as_str().unwrap().ends_with("+00:00"));
        let text = ok["response"]["candidates"][0]["content"]["parts"][0]["text"]
            .as_str()
            .unwrap();
        assert!(serde_json::from_str::<Value>(text).unwrap()["total"].is_i64());
        assert!(
            by_id["r-1"]["status"]
                .as_str()
                .unwrap()
                .starts_with("Bad Request: {\"error\": {\"code\": 400")
        );
        assert!(by_id["r-1"].get("response").is_none());
        assert_eq!(
            by_id["r-2"]["response"]["candidates"][0]["finishReason"],
            "SAFETY"
        );
        assert!(
            by_id["r-bad"]["status"]
                .as_str()
                .unwrap()
                .contains("Please use a valid role")
        );
    }

    #[tokio::test]
    async fn create_rejects_invalid_jobs() {
        let harness = Harness::start(Duration::from_secs(3600)).await;
        let with = |pointer: &str, value: Value| {
            let mut body = job_body("in.jsonl");
            *body.pointer_mut(pointer).unwrap() = value;
            body
        };
        let cases = [
            (with("/displayName", json!("")), 400),
            (with("/model", json!("gemini-2.5-flash")), 400),
            (
                with("/model", json!("publishers/google/models/text-bison")),
                404,
            ),
            (with("/labels", json!({"Upper": "x"})), 400),
            (with("/labels", json!({"key": "has space"})), 400),
            (with("/inputConfig/instancesFormat", json!("bigquery")), 400),
            (with("/inputConfig/gcsSource/uris", json!([])), 400),
            (
                with(
                    "/outputConfig/gcsDestination/outputUriPrefix",
                    json!("/tmp/out"),
                ),
                400,
            ),
        ];
        for (body, expected) in cases {
            let (status, error) = harness.create(body.clone()).await;
            assert_eq!(status, expected, "{body} -> {error}");
            assert_eq!(error["error"]["code"], expected);
        }
        let unauthenticated = harness
            .client
            .post(harness.jobs_url())
            .json(&job_body("in.jsonl"))
            .send()
            .await
            .unwrap();
        assert_eq!(unauthenticated.status(), 401);
    }

    #[tokio::test]
    async fn bad_input_fails_the_job() {
        let harness = Harness::start(Duration::from_secs(3600)).await;
        harness
            .upload("bad.jsonl", "{\"request\": {}}\nnot json\n".to_string())
            .await;
        for input in ["bad.jsonl", "missing.jsonl"] {
            let (_, job) = harness.create(job_body(input)).await;
            let name = job["name"].as_str().unwrap();
            harness.force_end(name);
            let job = harness.get(name).await;
            assert_eq!(job["state"], FAILED, "{job}");
            assert_eq!(job["error"]["code"], 3);
            assert!(
                job["error"]["message"]
                    .as_str()
                    .unwrap()
                    .starts_with("Failed to import data.")
            );
            assert!(job.get("outputInfo").is_none());
        }
    }

    #[tokio::test]
    async fn cancelling_ends_in_cancelled_and_finished_jobs_cannot_be_cancelled() {
        let harness = Harness::start(Duration::from_millis(200)).await;
        harness
            .upload("in.jsonl", input(&[input_line("a", "x")]))
            .await;
        let (_, job) = harness.create(job_body("in.jsonl")).await;
        let name = job["name"].as_str().unwrap();
        let cancel_url = format!("{}/v1/{name}:cancel", harness.emulator.base_url());
        let (status, answer) = harness.call(reqwest::Method::POST, &cancel_url, None).await;
        assert_eq!((status, answer), (200, json!({})));
        assert_eq!(harness.get(name).await["state"], CANCELLING);
        tokio::time::sleep(Duration::from_millis(250)).await;
        let job = harness.get(name).await;
        assert_eq!(job["state"], CANCELLED);
        assert_eq!(job["error"], json!({"code": 1, "message": "CANCELED"}));
        assert!(
            job.get("completionStats").is_none(),
            "nothing ran before the cancel"
        );

        let (status, error) = harness.call(reqwest::Method::POST, &cancel_url, None).await;
        assert_eq!(status, 400);
        assert_eq!(error["error"]["status"], "FAILED_PRECONDITION");
    }

    #[tokio::test]
    async fn expired_jobs_keep_partial_output() {
        let harness = Harness::start(Duration::from_secs(3600)).await;
        harness.emulator.set_faults(FaultPlan {
            batch_fate: BatchFate::Expire,
            partial: 0.5,
            ..FaultPlan::default()
        });
        let lines: Vec<String> = (0..4).map(|i| input_line(&format!("r-{i}"), "x")).collect();
        harness.upload("in.jsonl", input(&lines)).await;
        let (_, job) = harness.create(job_body("in.jsonl")).await;
        let name = job["name"].as_str().unwrap();
        harness.force_end(name.rsplit('/').next().unwrap());
        let job = harness.get(name).await;
        assert_eq!(job["state"], EXPIRED);
        assert_eq!(
            job["completionStats"],
            json!({"successfulCount": "2", "incompleteCount": "2"})
        );
        assert_eq!(harness.predictions(&job).await.len(), 2);
    }

    #[tokio::test]
    async fn result_downloads_can_be_cut_short() {
        let harness = Harness::start(Duration::from_secs(3600)).await;
        let lines: Vec<String> = (0..20)
            .map(|i| input_line(&format!("r-{i}"), "x"))
            .collect();
        harness.upload("in.jsonl", input(&lines)).await;
        let (_, job) = harness.create(job_body("in.jsonl")).await;
        let name = job["name"].as_str().unwrap();
        harness.force_end(name);
        let job = harness.get(name).await;
        harness.emulator.set_faults(FaultPlan {
            drop_results_after_bytes: Some(100),
            ..FaultPlan::default()
        });
        let directory = job["outputInfo"]["gcsOutputDirectory"].as_str().unwrap();
        let cut = harness
            .download(&format!("{directory}/predictions.jsonl"))
            .await;
        assert!(cut.bytes().await.is_err(), "the body must end early");
        assert!(
            harness
                .download(&format!("gs://{BUCKET}/in.jsonl"))
                .await
                .bytes()
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn lists_page_and_filter() {
        let harness = Harness::start(Duration::from_secs(3600)).await;
        let mut names = Vec::new();
        for i in 0..3 {
            let mut body = job_body("in.jsonl");
            body["displayName"] = json!(format!("job-{i}"));
            body["labels"] = json!({"run": format!("r{i}")});
            let (_, job) = harness.create(body).await;
            names.push(job["name"].as_str().unwrap().to_string());
        }
        let mut listed = Vec::new();
        let mut token = String::new();
        loop {
            let url = format!("{}?pageSize=2&pageToken={token}", harness.jobs_url());
            let (status, page) = harness.call(reqwest::Method::GET, &url, None).await;
            assert_eq!(status, 200, "{page}");
            for job in page["batchPredictionJobs"].as_array().unwrap() {
                listed.push(job["name"].as_str().unwrap().to_string());
            }
            match page["nextPageToken"].as_str() {
                Some(next) => token = next.to_string(),
                None => break,
            }
        }
        names.reverse();
        assert_eq!(listed, names, "newest first, each once");

        let url = format!("{}?filter=labels.run%3D%22r1%22", harness.jobs_url());
        let (_, filtered) = harness.call(reqwest::Method::GET, &url, None).await;
        let only = filtered["batchPredictionJobs"].as_array().unwrap();
        assert_eq!(only.len(), 1);
        assert_eq!(only[0]["displayName"], "job-1");

        let other_project = harness.jobs_url().replace("/proj/", "/other/");
        let (_, empty) = harness
            .call(reqwest::Method::GET, &other_project, None)
            .await;
        assert_eq!(empty, json!({}));
    }
}
