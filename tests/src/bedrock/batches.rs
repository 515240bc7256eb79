//! Batch inference job lifecycle: the job, its states, and create, get, stop, list and
//! list-tags.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::{Json, response::IntoResponse, response::Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::common::{BatchFate, lock, ran_count};
use crate::google::steps;
use crate::quota::{Demand, Quota};

use super::results::{Counts, Input};
use super::validation::{InvocationType, JobSpec, STATUSES, is_job_name, job_id_of};
use super::{ACCOUNT, ApiError, ApiResult, Bedrock, SignedRegion, iso8601};

/// The lifecycle step a job is validated at (it is `Validating` the step before); it is
/// `Scheduled`, then `InProgress` for a step each, and ends at [`END_STEP`].
const SCHEDULED_STEP: u32 = 2;
const END_STEP: u32 = 4;
/// `ListModelInvocationJobs` pages: botocore's `maxResults` range, all of it by default.
const MAX_RESULTS: usize = 1000;

/// A job's status, as `status` and `statusEquals` spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Status {
    Submitted,
    Validating,
    Scheduled,
    InProgress,
    Completed,
    PartiallyCompleted,
    Failed,
    Stopping,
    Stopped,
    Expired,
}

impl Status {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Submitted => "Submitted",
            Self::Validating => "Validating",
            Self::Scheduled => "Scheduled",
            Self::InProgress => "InProgress",
            Self::Completed => "Completed",
            Self::PartiallyCompleted => "PartiallyCompleted",
            Self::Failed => "Failed",
            Self::Stopping => "Stopping",
            Self::Stopped => "Stopped",
            Self::Expired => "Expired",
        }
    }

    pub(super) fn is_ended(self) -> bool {
        matches!(
            self,
            Self::Completed
                | Self::PartiallyCompleted
                | Self::Failed
                | Self::Stopped
                | Self::Expired
        )
    }
}

/// What the job list holds of a job without locking it.
pub(super) struct JobEntry {
    id: String,
    arn: String,
    name: String,
    token: Option<String>,
    /// The create request, to tell a retry (same token, same request) from a conflict.
    request: Value,
    job: Arc<tokio::sync::Mutex<Job>>,
}

/// A stop asked for before the job ended.
struct Stop {
    requested: Instant,
    /// Records that ran before the stop took effect.
    ran: usize,
}

pub(super) struct Job {
    pub(super) id: String,
    pub(super) arn: String,
    pub(super) spec: JobSpec,
    created: Instant,
    submit_time: OffsetDateTime,
    pub(super) fate: BatchFate,
    partial: f64,
    status: Status,
    message: Option<String>,
    last_modified: OffsetDateTime,
    end_time: Option<OffsetDateTime>,
    stop: Option<Stop>,
    /// The checked input, once validation has read it.
    pub(super) input: Option<Arc<Input>>,
    counts: Option<Counts>,
}

impl Job {
    /// Moves the job's creation back, as if it had been created at `created` (tests).
    #[cfg(test)]
    pub(super) fn set_created(&mut self, created: Instant) {
        self.created = created;
    }

    fn observe(&mut self, status: Status) {
        if self.status != status {
            self.status = status;
            self.last_modified = OffsetDateTime::now_utc();
        }
    }

    fn end(&mut self, status: Status, message: Option<String>) {
        self.observe(status);
        self.message = message;
        self.end_time = Some(self.last_modified);
    }

    /// Lifecycle steps since `since`; `/_emulator/advance` takes the job id or ARN.
    fn steps_since(&self, bedrock: &Bedrock, since: Instant) -> u32 {
        steps(&bedrock.shared, &[&self.id, &self.arn], since)
    }

    /// Moves the job along its lifecycle: validates its input when validation ends, runs
    /// its records and writes the output when it ends.
    pub(super) async fn refresh(&mut self, bedrock: &Bedrock) {
        if self.status.is_ended() {
            return;
        }
        if let Some(stop) = &self.stop {
            if self.steps_since(bedrock, stop.requested) >= 1 {
                // A job stopped before it ran anything writes no output.
                let outcome = match stop.ran {
                    0 => Ok(None),
                    ran => self.write_output(bedrock, ran).await,
                };
                match outcome {
                    Ok(counts) => {
                        self.counts = counts;
                        self.end(Status::Stopped, None);
                    }
                    Err(message) => self.end(Status::Failed, Some(message)),
                }
            }
            return;
        }
        let steps = self.steps_since(bedrock, self.created);
        if steps >= SCHEDULED_STEP && self.input.is_none() {
            self.observe(Status::Validating);
            match self.validate(bedrock).await {
                Ok(input) => self.input = Some(Arc::new(input)),
                Err(message) => return self.end(Status::Failed, Some(message)),
            }
        }
        if steps >= END_STEP {
            return self.run(bedrock).await;
        }
        self.observe(
            [
                Status::Submitted,
                Status::Validating,
                Status::Scheduled,
                Status::InProgress,
            ][steps as usize],
        );
    }

    /// Runs the records that get to run (all, or the fate's part before expiry) and
    /// ends the job by how they went.
    async fn run(&mut self, bedrock: &Bedrock) {
        let total = self.input.as_ref().map_or(0, |input| input.len());
        let ran = match self.fate {
            BatchFate::Expire => ran_count(total, self.partial),
            _ => total,
        };
        let counts = match self.write_output(bedrock, ran).await {
            Ok(counts) => counts.expect("a job that ran has its input"),
            Err(message) => return self.end(Status::Failed, Some(message)),
        };
        let (status, message) = match self.fate {
            BatchFate::Expire => (
                Status::Expired,
                Some(format!(
                    "The job reached its timeout of {} hours with {} of its {total} records processed.",
                    self.spec.timeout_hours, counts.processed
                )),
            ),
            _ if counts.success == 0 && counts.error > 0 => (
                Status::Failed,
                Some(
                    "Every record of the job failed; the output holds each record's error."
                        .to_string(),
                ),
            ),
            _ if counts.error > 0 => (Status::PartiallyCompleted, None),
            _ => (Status::Completed, None),
        };
        self.counts = Some(counts);
        self.end(status, message);
    }

    /// The `GetModelInvocationJob` answer (and a `ListModelInvocationJobs` summary).
    fn to_json(&self) -> Value {
        let expiration = self.submit_time + time::Duration::hours(self.spec.timeout_hours as i64);
        let mut job = json!({
            "jobArn": self.arn,
            "jobName": self.spec.job_name,
            "modelId": self.spec.model_id,
            "roleArn": self.spec.role_arn,
            "status": self.status.as_str(),
            "submitTime": iso8601(self.submit_time),
            "lastModifiedTime": iso8601(self.last_modified),
            "inputDataConfig": self.spec.input_data_config,
            "outputDataConfig": self.spec.output_data_config,
            "timeoutDurationInHours": self.spec.timeout_hours,
            "jobExpirationTime": iso8601(expiration),
            "modelInvocationType": match self.spec.invocation_type {
                InvocationType::InvokeModel => "InvokeModel",
                InvocationType::Converse => "Converse",
            },
        });
        if let Some(token) = &self.spec.client_request_token {
            job["clientRequestToken"] = json!(token);
        }
        if let Some(message) = &self.message {
            job["message"] = json!(message);
        }
        if let Some(end) = self.end_time {
            job["endTime"] = json!(iso8601(end));
        }
        if let Some(vpc) = &self.spec.vpc_config {
            job["vpcConfig"] = vpc.clone();
        }
        if let Some(input) = &self.input {
            job["totalRecordCount"] = json!(input.len());
        }
        if let Some(counts) = &self.counts {
            job["processedRecordCount"] = json!(counts.processed);
            job["successRecordCount"] = json!(counts.success);
            job["errorRecordCount"] = json!(counts.error);
        }
        job
    }
}

/// `POST /model-invocation-job`.
pub(super) async fn create_job(
    State(state): State<Arc<Bedrock>>,
    Extension(SignedRegion(region)): Extension<SignedRegion>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let request: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::validation(format!("The request body is not valid JSON: {e}")))?;
    let spec = JobSpec::parse(&request)?;
    let _creating = state.creating.lock().await;
    if let Some(token) = &spec.client_request_token {
        let earlier = lock(&state.jobs)
            .iter()
            .find(|entry| entry.token.as_ref() == Some(token))
            .map(|entry| (entry.request == request, entry.arn.clone()));
        match earlier {
            // A retry of a create that went through: the same job.
            Some((true, arn)) => return Ok(Json(json!({"jobArn": arn}))),
            Some((false, _)) => {
                return Err(ApiError::conflict(format!(
                    "The clientRequestToken {token} was already used with a different request."
                )));
            }
            None => {}
        }
    }
    if lock(&state.jobs)
        .iter()
        .any(|entry| entry.name == spec.job_name)
    {
        return Err(ApiError::conflict(format!(
            "A model invocation job named {} already exists.",
            spec.job_name
        )));
    }
    admit(&state).await?;
    let (fate, partial) = state.shared.fate_for_new_batch();
    // Job ids are 12 lowercase alphanumerics.
    let id: String = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    let arn = format!("arn:aws:bedrock:{region}:{ACCOUNT}:model-invocation-job/{id}");
    let now = OffsetDateTime::now_utc();
    let entry = JobEntry {
        id: id.clone(),
        arn: arn.clone(),
        name: spec.job_name.clone(),
        token: spec.client_request_token.clone(),
        request,
        job: Arc::new(tokio::sync::Mutex::new(Job {
            id,
            arn: arn.clone(),
            spec,
            created: Instant::now(),
            submit_time: now,
            fate,
            partial,
            status: Status::Submitted,
            message: None,
            last_modified: now,
            end_time: None,
            stop: None,
            input: None,
            counts: None,
        })),
    };
    lock(&state.jobs).push(entry);
    Ok(Json(json!({"jobArn": arn})))
}

/// Every job, in creation order, with its sequence number.
pub(super) fn all_jobs(state: &Bedrock) -> Vec<(usize, Arc<tokio::sync::Mutex<Job>>)> {
    lock(&state.jobs)
        .iter()
        .enumerate()
        .map(|(seq, entry)| (seq, entry.job.clone()))
        .collect()
}

/// The concurrent-jobs quota for one more job: the jobs not ended count; past the limit
/// the create answers `ServiceQuotaExceededException`.
async fn admit(state: &Bedrock) -> ApiResult<()> {
    if state
        .shared
        .quotas
        .limit(Quota::BedrockConcurrentJobs)
        .is_none()
    {
        return Ok(());
    }
    let mut in_use = 0;
    for (_, job) in all_jobs(state) {
        let mut job = job.lock().await;
        job.refresh(state).await;
        in_use += u64::from(!job.status.is_ended());
    }
    let measure = || Demand { in_use, amount: 1 };
    match state
        .shared
        .quotas
        .admit(Quota::BedrockConcurrentJobs, measure)
    {
        Ok(_) => Ok(()),
        Err(refusal) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "ServiceQuotaExceededException",
            format!(
                "You have reached the quota of {} concurrent batch inference jobs ({} not yet ended). Wait for a job to end or request a quota increase.",
                refusal.limit, refusal.in_use
            ),
        )),
    }
}

/// The job a `jobIdentifier` (id or ARN) names.
fn find(state: &Bedrock, identifier: &str) -> ApiResult<Arc<tokio::sync::Mutex<Job>>> {
    let id = job_id_of(identifier)?;
    lock(&state.jobs)
        .iter()
        .find(|entry| entry.id == id)
        .map(|entry| entry.job.clone())
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "The model invocation job {identifier} could not be found."
            ))
        })
}

/// `GET /model-invocation-job/{jobIdentifier}`.
pub(super) async fn get_job(
    State(state): State<Arc<Bedrock>>,
    Path(identifier): Path<String>,
) -> ApiResult<Json<Value>> {
    let job = find(&state, &identifier)?;
    let mut job = job.lock().await;
    job.refresh(&state).await;
    Ok(Json(job.to_json()))
}

/// `POST /model-invocation-job/{jobIdentifier}/stop`: the job is `Stopping`, and
/// `Stopped` a step later. Half the records have run if it was `InProgress`.
pub(super) async fn stop_job(
    State(state): State<Arc<Bedrock>>,
    Path(identifier): Path<String>,
) -> ApiResult<Json<Value>> {
    let job = find(&state, &identifier)?;
    let mut job = job.lock().await;
    job.refresh(&state).await;
    if job.status.is_ended() {
        return Err(ApiError::validation(format!(
            "The model invocation job {} is {} and can no longer be stopped.",
            job.arn,
            job.status.as_str()
        )));
    }
    if job.stop.is_none() {
        let ran = match (job.status, &job.input) {
            (Status::InProgress, Some(input)) => ran_count(input.len(), 0.5),
            _ => 0,
        };
        job.stop = Some(Stop {
            requested: Instant::now(),
            ran,
        });
        job.observe(Status::Stopping);
    }
    Ok(Json(json!({})))
}

/// The query of a list call, checked.
struct ListQuery {
    max_results: usize,
    status: Option<String>,
    name_contains: Option<String>,
    after: Option<OffsetDateTime>,
    before: Option<OffsetDateTime>,
    ascending: bool,
    /// The sequence number the page starts at.
    start: Option<usize>,
}

impl ListQuery {
    fn parse(query: &HashMap<String, String>) -> ApiResult<Self> {
        let fail = |value: &str, at: &str, constraint: &str| {
            Err(ApiError::validation(format!(
                "1 validation error detected: Value '{value}' at '{at}' failed to satisfy constraint: Member must {constraint}"
            )))
        };
        let max_results = match query.get("maxResults") {
            None => MAX_RESULTS,
            Some(text) => match text.parse::<i64>() {
                Ok(n) if (1..=MAX_RESULTS as i64).contains(&n) => n as usize,
                Ok(n) if n > MAX_RESULTS as i64 => {
                    return fail(text, "maxResults", "have value less than or equal to 1000");
                }
                _ => return fail(text, "maxResults", "have value greater than or equal to 1"),
            },
        };
        let status = query.get("statusEquals").cloned();
        if let Some(status) = &status
            && !STATUSES.contains(&status.as_str())
        {
            return fail(
                status,
                "statusEquals",
                &format!("satisfy enum value set: [{}]", STATUSES.join(", ")),
            );
        }
        let name_contains = query.get("nameContains").cloned();
        if let Some(name) = &name_contains
            && !is_job_name(name)
        {
            return fail(
                name,
                "nameContains",
                r"satisfy regular expression pattern: [a-zA-Z0-9]{1,63}(-*[a-zA-Z0-9\+\-\.]){0,63}",
            );
        }
        let time = |name: &str| -> ApiResult<Option<OffsetDateTime>> {
            match query.get(name) {
                None => Ok(None),
                Some(text) => {
                    OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                        .map(Some)
                        .map_err(|_| {
                            ApiError::validation(format!(
                                "{name}: '{text}' is not an ISO 8601 timestamp."
                            ))
                        })
                }
            }
        };
        if let Some(sort_by) = query.get("sortBy")
            && sort_by != "CreationTime"
        {
            return fail(sort_by, "sortBy", "satisfy enum value set: [CreationTime]");
        }
        let ascending = match query.get("sortOrder").map(String::as_str) {
            None | Some("Descending") => false,
            Some("Ascending") => true,
            Some(other) => {
                return fail(
                    other,
                    "sortOrder",
                    "satisfy enum value set: [Ascending, Descending]",
                );
            }
        };
        let start = match query.get("nextToken") {
            None => None,
            Some(token) => Some(
                URL_SAFE_NO_PAD
                    .decode(token)
                    .ok()
                    .and_then(|bytes| String::from_utf8(bytes).ok())
                    .and_then(|text| text.strip_prefix("seq:")?.parse().ok())
                    .ok_or_else(|| ApiError::validation("The provided nextToken is not valid."))?,
            ),
        };
        Ok(Self {
            max_results,
            status,
            name_contains,
            after: time("submitTimeAfter")?,
            before: time("submitTimeBefore")?,
            ascending,
            start,
        })
    }

    fn matches(&self, job: &Job) -> bool {
        self.status
            .as_deref()
            .is_none_or(|s| s == job.status.as_str())
            && self
                .name_contains
                .as_deref()
                .is_none_or(|part| job.spec.job_name.contains(part))
            && self.after.is_none_or(|after| job.submit_time > after)
            && self.before.is_none_or(|before| job.submit_time < before)
    }
}

/// `GET /model-invocation-jobs`: summaries by submit time (newest first unless
/// `sortOrder=Ascending`), filtered, `maxResults` a page.
pub(super) async fn list_jobs(
    State(state): State<Arc<Bedrock>>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let query = ListQuery::parse(&query)?;
    let mut jobs = all_jobs(&state);
    if !query.ascending {
        jobs.reverse();
    }
    // A page starts at the job the token names, wherever newer jobs were added since.
    let past_start = |seq: usize| match (query.start, query.ascending) {
        (None, _) => true,
        (Some(start), true) => seq >= start,
        (Some(start), false) => seq <= start,
    };
    let mut summaries = Vec::new();
    let mut next = None;
    for (seq, job) in jobs.into_iter().filter(|(seq, _)| past_start(*seq)) {
        let mut job = job.lock().await;
        job.refresh(&state).await;
        if !query.matches(&job) {
            continue;
        }
        if summaries.len() == query.max_results {
            next = Some(URL_SAFE_NO_PAD.encode(format!("seq:{seq}")));
            break;
        }
        summaries.push(job.to_json());
    }
    let mut answer = json!({"invocationJobSummaries": summaries});
    if let Some(next) = next {
        answer["nextToken"] = json!(next);
    }
    Ok(Json(answer))
}

/// `POST /listTagsForResource` for a job ARN.
pub(super) async fn list_tags(
    State(state): State<Arc<Bedrock>>,
    body: Bytes,
) -> ApiResult<Response> {
    let request: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::validation(format!("The request body is not valid JSON: {e}")))?;
    let Some(arn) = request.get("resourceARN").and_then(Value::as_str) else {
        return Err(ApiError::validation(
            "1 validation error detected: Value null at 'resourceARN' failed to satisfy constraint: Member must not be null",
        ));
    };
    let job = lock(&state.jobs)
        .iter()
        .find(|entry| entry.arn == arn)
        .map(|entry| entry.job.clone())
        .ok_or_else(|| ApiError::not_found(format!("The resource {arn} could not be found.")))?;
    let tags = job.lock().await.spec.tags.clone();
    Ok(Json(json!({"tags": tags})).into_response())
}
