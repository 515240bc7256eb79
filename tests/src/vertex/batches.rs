//! Vertex AI batch prediction job lifecycle: the job, its states, and create, get, cancel, delete and list.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::common::{BatchFate, lock};
use crate::google::{Code, GoogleError, json_body, page, steps, timestamp};
use crate::quota::{Demand, Quota};

use super::validation::{JobSpec, check_model_exists};
use super::{RUNNING_STEP, Vertex};

const DEFAULT_PAGE_SIZE: usize = 100;
const MAX_PAGE_SIZE: usize = 1000;

pub(super) const QUEUED: &str = "JOB_STATE_QUEUED";

pub(super) const PENDING: &str = "JOB_STATE_PENDING";

pub(super) const RUNNING: &str = "JOB_STATE_RUNNING";

pub(super) const SUCCEEDED: &str = "JOB_STATE_SUCCEEDED";

pub(super) const FAILED: &str = "JOB_STATE_FAILED";

pub(super) const CANCELLING: &str = "JOB_STATE_CANCELLING";

pub(super) const CANCELLED: &str = "JOB_STATE_CANCELLED";

pub(super) const EXPIRED: &str = "JOB_STATE_EXPIRED";

pub(super) struct Job {
    pub(super) number: u64,
    pub(super) name: String,
    pub(super) spec: JobSpec,
    created: Instant,
    pub(super) create_time: OffsetDateTime,
    pub(super) fate: BatchFate,
    pub(super) partial: f64,
    /// The lifecycle step at which cancellation was asked for.
    cancelled_at_step: Option<u32>,
    pub(super) state: &'static str,
    start_time: Option<String>,
    update_time: String,
    end_time: Option<String>,
    pub(super) end: Option<Ended>,
}

/// How a job ended.
pub(super) struct Ended {
    pub(super) error: Option<GoogleError>,
    pub(super) output_directory: Option<String>,
    pub(super) stats: Option<CompletionStats>,
}

pub(super) struct CompletionStats {
    pub(super) successful: usize,
    pub(super) failed: usize,
    pub(super) incomplete: usize,
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

fn parent(project: &str, location: &str) -> String {
    format!("projects/{project}/locations/{location}")
}

pub(super) async fn create_job(
    State(vertex): State<Arc<Vertex>>,
    Path((project, location)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>, GoogleError> {
    let spec = JobSpec::parse(&json_body(&body)?)?;
    let parent = parent(&project, &location);
    check_model_exists(&spec.model_id, &parent)?;
    // The jobs stay locked from counting the running ones to storing this one.
    let mut jobs = lock(&vertex.jobs);
    admit(&vertex, &mut jobs, &parent)?;
    let (fate, partial) = vertex.shared.fate_for_new_batch();
    let number = vertex.next_number.fetch_add(1, Ordering::Relaxed);
    let create_time = OffsetDateTime::now_utc();
    let job = Job {
        number,
        name: format!("{parent}/batchPredictionJobs/{number}"),
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
    jobs.insert(number, job);
    Ok(Json(answer))
}

/// The concurrent-jobs quota of `parent` (a project's location) for one more job:
/// jobs not in a terminal state count, one past the limit answers 429.
fn admit(vertex: &Vertex, jobs: &mut BTreeMap<u64, Job>, parent: &str) -> Result<(), GoogleError> {
    let prefix = format!("{parent}/");
    let measure = || {
        let mut in_use = 0;
        for job in jobs
            .values_mut()
            .filter(|job| job.name.starts_with(&prefix))
        {
            job.refresh(vertex);
            in_use += u64::from(!job.is_over());
        }
        Demand { in_use, amount: 1 }
    };
    match vertex
        .shared
        .quotas
        .admit(Quota::VertexConcurrentJobs, measure)
    {
        Ok(_) => Ok(()),
        Err(refusal) => Err(GoogleError::new(
            Code::ResourceExhausted,
            format!(
                "Quota exceeded for aiplatform.googleapis.com/batch_prediction_jobs: the limit of {} concurrent batch prediction jobs in {parent} is reached ({} running). Please wait for a job to end or request a quota increase.",
                refusal.limit, refusal.in_use
            ),
        )),
    }
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

pub(super) async fn get_job(
    State(vertex): State<Arc<Vertex>>,
    Path((project, location, job)): Path<(String, String, String)>,
) -> Result<Json<Value>, GoogleError> {
    with_job(&vertex, &project, &location, &job, |job| {
        Ok(Json(job.to_json()))
    })
}

/// `POST …/batchPredictionJobs/{id}:cancel`.
pub(super) async fn job_method(
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
pub(super) async fn delete_job(
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
pub(super) async fn list_jobs(
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
pub(super) struct Filter(Vec<(String, String)>);

impl Filter {
    pub(super) fn parse(text: &str) -> Result<Self, GoogleError> {
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
