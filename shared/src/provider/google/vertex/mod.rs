//! Vertex AI batch prediction client: the input goes to Cloud Storage, the job reads it
//! from there and writes `predictions*.jsonl` files next to it. OAuth bearer tokens come
//! from a service-account file, the metadata server, or a fixed token.

pub mod config;
pub mod decode;
pub mod encode;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::OnceCell;

use crate::error::{Error, Result};
use crate::model::ProviderKind;
use crate::provider::config::Variables;
use crate::provider::config::{Credential, GoogleCredentials, ProviderConfig};
use crate::provider::contract::ProviderDescriptor;
use crate::provider::contract::{BatchProvider, BatchTags, LineStream, id_path};
use crate::provider::decode::{Decoded, Malformed};
use crate::provider::encode::{PartLimits, RequestEncoder};
use crate::provider::google::wire::{PAGING, RpcStatus, TokenPage, int64, tagged_display_name};
use crate::provider::http::{AccessTokens, Auth, HttpClient, Paging, Resend};
use crate::request::{AnswerFormat, GenerationParams};
use crate::status::{BatchState, BatchStatus, RequestCounts};

const KIND: ProviderKind = ProviderKind::Vertex;
const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// Vertex label keys and values: at most 63 of `[a-z0-9_-]`.
const MAX_LABEL_LEN: usize = 63;
/// An object name as one URL path segment: everything but unreserved characters encoded.
const OBJECT_NAME: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Vertex AI batch prediction, model prefix `google/` (Gemini models on Google Cloud,
/// billed to a project). Its variables:
///
/// | Variable | Meaning |
/// |---|---|
/// | `GOOGLE_CLOUD_PROJECT` | project id (required) |
/// | `GOOGLE_CLOUD_LOCATION` | region, default `us-central1` |
/// | `GCS_BUCKET` | Cloud Storage bucket for batch input and output (required) |
/// | `VERTEX_BASE_URL` | API root, default `https://{location}-aiplatform.googleapis.com` (`https://aiplatform.googleapis.com` for `global`) |
/// | `GCS_BASE_URL` | Cloud Storage root, default `https://storage.googleapis.com` |
/// | `GOOGLE_CREDENTIALS` | a service account's JSON (from a secret store); wins over the two below |
/// | `GOOGLE_ACCESS_TOKEN` | a ready OAuth2 access token (local runs); wins over the one below |
/// | `GOOGLE_APPLICATION_CREDENTIALS` | service-account JSON file; unset means the metadata server |
#[derive(Debug)]
pub struct Vertex;

impl ProviderDescriptor for Vertex {
    fn kind(&self) -> ProviderKind {
        KIND
    }

    fn display_name(&self) -> &'static str {
        "Vertex AI"
    }

    fn temporary_error_types(&self) -> &'static [&'static str] {
        &super::TEMPORARY_STATUSES
    }

    fn prompt_too_long(&self) -> (&'static str, &'static str) {
        super::PROMPT_TOO_LONG
    }

    /// Vertex reports a line's failure as free text (a generic `provider_error`), so
    /// its server-side statuses are recognised in the message: quoted in an HTTP error
    /// body, or leading the text of an rpc status object (`INTERNAL: 13: …`).
    fn is_temporary_failure(&self, error_type: &str, message: &str) -> bool {
        const SERVER_SIDE_TEXT: [&str; 6] = [
            "Internal Server Error",
            "Service Unavailable",
            "Too Many Requests",
            "\"INTERNAL\"",
            "\"UNAVAILABLE\"",
            "\"RESOURCE_EXHAUSTED\"",
        ];
        self.temporary_error_types().contains(&error_type)
            || (error_type == crate::provider::decode::error_type::PROVIDER_ERROR
                && (SERVER_SIDE_TEXT.iter().any(|text| message.contains(text))
                    || message
                        .split(':')
                        .next()
                        .is_some_and(|head| self.temporary_error_types().contains(&head))))
    }

    fn limits(&self) -> PartLimits {
        encode::LIMITS
    }

    fn encoder(
        &self,
        _model: &str,
        format: &AnswerFormat,
        params: &GenerationParams,
    ) -> Result<Box<dyn RequestEncoder>> {
        Ok(Box::new(encode::VertexEncoder::new(format, params)?))
    }

    fn decode<'a>(&self, line: &'a [u8]) -> Result<Decoded<'a>, Malformed> {
        decode::decode(line)
    }

    fn secret_variables(&self) -> &'static [&'static str] {
        &[config::CREDENTIALS_JSON]
    }

    fn config(&self, vars: &Variables<'_>) -> Result<ProviderConfig> {
        config::from_variables(vars)
    }

    fn connect(&self, config: &ProviderConfig) -> Result<Arc<dyn BatchProvider>> {
        Ok(Arc::new(VertexClient::new(config)?))
    }
}

/// Vertex AI batch prediction over [`HttpClient`] (OAuth auth), with its input and
/// output in Cloud Storage.
#[derive(Debug, Clone)]
pub struct VertexClient {
    /// The Vertex AI API.
    api: HttpClient,
    /// Cloud Storage, with the same tokens.
    storage: HttpClient,
    project: String,
    location: String,
    bucket: String,
}

/// Where bearer tokens come from. The metadata server is only asked on first use, so
/// building a client never blocks.
enum TokenSource {
    Fixed(Credential),
    ServiceAccount(Box<gcp_auth::CustomServiceAccount>),
    MetadataServer(Box<OnceCell<gcp_auth::MetadataServiceAccount>>),
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Fixed(_) => "TokenSource::Fixed(***)",
            Self::ServiceAccount(_) => "TokenSource::ServiceAccount",
            Self::MetadataServer(_) => "TokenSource::MetadataServer",
        })
    }
}

#[async_trait]
impl AccessTokens for TokenSource {
    async fn token(&self) -> Result<Credential> {
        use gcp_auth::TokenProvider;
        let token = match self {
            Self::Fixed(token) => return Ok(token.clone()),
            Self::ServiceAccount(account) => account.token(&[SCOPE]).await,
            Self::MetadataServer(cell) => {
                let account = cell
                    .get_or_try_init(gcp_auth::MetadataServiceAccount::new)
                    .await
                    .map_err(token_error)?;
                account.token(&[SCOPE]).await
            }
        }
        .map_err(token_error)?;
        Credential::new(token.as_str())
    }
}

fn token_error(error: gcp_auth::Error) -> Error {
    Error::Transport {
        provider: KIND,
        attempts: 1,
        message: format!("getting an OAuth token: {error}"),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Job {
    name: String,
    state: String,
    error: Option<RpcStatus>,
    create_time: Option<String>,
    end_time: Option<String>,
    output_info: Option<OutputInfo>,
    completion_stats: Option<CompletionStats>,
    #[serde(default)]
    labels: BatchTags,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OutputInfo {
    gcs_output_directory: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CompletionStats {
    #[serde(default, deserialize_with = "int64")]
    successful_count: u64,
    #[serde(default, deserialize_with = "int64")]
    failed_count: u64,
    #[serde(default, deserialize_with = "int64")]
    incomplete_count: u64,
}

#[derive(Debug, Deserialize)]
struct Object {
    name: String,
}

impl VertexClient {
    /// The client for `config`; fails without Vertex settings, on a project, region or
    /// bucket that is not a plain name, or on an unreadable service account.
    pub fn new(config: &ProviderConfig) -> Result<Self> {
        let settings = config.vertex.as_ref().ok_or_else(|| {
            Error::Config("the google provider needs Vertex settings (project, bucket)".to_string())
        })?;
        for (what, value) in [
            ("GOOGLE_CLOUD_PROJECT", &settings.project),
            ("GOOGLE_CLOUD_LOCATION", &settings.location),
            ("GCS_BUCKET", &settings.bucket),
        ] {
            if value.contains('/') || id_path(KIND, value).is_err() {
                return Err(Error::Config(format!(
                    "{what} {value:?} is not a valid name"
                )));
            }
        }
        let tokens = match &settings.credentials {
            GoogleCredentials::StaticToken(token) => TokenSource::Fixed(token.clone()),
            GoogleCredentials::ServiceAccountFile(path) => {
                let account = gcp_auth::CustomServiceAccount::from_file(path).map_err(|e| {
                    Error::Config(format!("service account file {}: {e}", path.display()))
                })?;
                TokenSource::ServiceAccount(Box::new(account))
            }
            GoogleCredentials::ServiceAccountJson(json) => {
                let account =
                    gcp_auth::CustomServiceAccount::from_json(json.expose()).map_err(|e| {
                        Error::Config(format!("service account JSON from the secret store: {e}"))
                    })?;
                TokenSource::ServiceAccount(Box::new(account))
            }
            GoogleCredentials::MetadataServer => {
                TokenSource::MetadataServer(Box::new(OnceCell::new()))
            }
        };
        let api = HttpClient::new(KIND, config, Auth::OAuth(Arc::new(tokens)))?;
        Ok(Self {
            storage: api.clone().with_base(settings.storage_base_url.clone()),
            api,
            project: settings.project.clone(),
            location: settings.location.clone(),
            bucket: settings.bucket.clone(),
        })
    }

    fn jobs_path(&self) -> String {
        format!(
            "/v1/projects/{}/locations/{}/batchPredictionJobs",
            self.project, self.location
        )
    }

    /// The job's path from its resource name, or from a bare job id.
    fn job_path(&self, batch_id: &str, suffix: &str) -> Result<String> {
        let name = id_path(KIND, batch_id)?;
        Ok(if name.starts_with("projects/") {
            format!("/v1/{name}{suffix}")
        } else {
            format!("{}/{name}{suffix}", self.jobs_path())
        })
    }

    async fn get_job(&self, batch_id: &str) -> Result<Job> {
        self.api.get_json(&self.job_path(batch_id, "")?).await
    }

    async fn upload(&self, object: &str, input: Bytes) -> Result<()> {
        let url = self
            .storage
            .url(&format!("/upload/storage/v1/b/{}/o", self.bucket));
        self.storage
            .send_with_retry(Resend::Always, |http| {
                http.post(&url)
                    .query(&[("uploadType", "media"), ("name", object)])
                    .header("content-type", "application/jsonl")
                    .body(crate::provider::http::body(&input))
            })
            .await?;
        Ok(())
    }

    /// Names of the `predictions*.jsonl` objects under `gs://bucket/prefix`, in order.
    async fn prediction_objects(&self, bucket: &str, prefix: &str) -> Result<Vec<String>> {
        let path = format!("/storage/v1/b/{bucket}/o");
        let objects = Paging {
            query: &[("prefix", prefix)],
            cursor: "pageToken",
        };
        let mut names = self
            .storage
            .list::<TokenPage<Object>, _>(&path, objects, |o| Ok(o.name))
            .await?;
        names.retain(|name| {
            let file = name.rsplit('/').next().unwrap_or(name);
            file.starts_with("predictions") && file.ends_with(".jsonl")
        });
        names.sort();
        Ok(names)
    }

    /// Lines of one object, opened only when the stream reaches it.
    fn object_lines(
        &self,
        bucket: String,
        object: String,
    ) -> impl Future<Output = Result<LineStream>> + Send + use<> {
        let storage = self.storage.clone();
        async move {
            let url = storage.url(&format!(
                "/storage/v1/b/{bucket}/o/{}",
                utf8_percent_encode(&object, OBJECT_NAME)
            ));
            storage.lines(&url, &[("alt", "media")]).await
        }
    }
}

#[async_trait]
impl BatchProvider for VertexClient {
    fn kind(&self) -> ProviderKind {
        KIND
    }

    async fn create(&self, model: &str, input: Bytes, tags: &BatchTags) -> Result<BatchStatus> {
        let folder = object_folder(tags);
        let input_object = format!("{folder}/input.jsonl");
        self.upload(&input_object, input).await?;
        let model = if model.starts_with("publishers/") || model.starts_with("projects/") {
            model.to_string()
        } else {
            format!("publishers/google/models/{model}")
        };
        let body = json!({
            "displayName": tagged_display_name(tags),
            "model": model,
            "labels": labels(tags),
            "inputConfig": {
                "instancesFormat": "jsonl",
                "gcsSource": {"uris": [format!("gs://{}/{input_object}", self.bucket)]}
            },
            "outputConfig": {
                "predictionsFormat": "jsonl",
                "gcsDestination": {"outputUriPrefix": format!("gs://{}/{folder}/output", self.bucket)}
            }
        });
        let job = self
            .api
            .post_json(Resend::OnlyIfUnsent, &self.jobs_path(), Some(&body))
            .await?;
        to_status(job)
    }

    async fn status(&self, batch_id: &str) -> Result<BatchStatus> {
        to_status(self.get_job(batch_id).await?)
    }

    async fn cancel(&self, batch_id: &str) -> Result<BatchStatus> {
        let path = self.job_path(batch_id, ":cancel")?;
        self.api.post_ignoring_answer(&path, &json!({})).await?;
        self.status(batch_id).await
    }

    async fn list(&self) -> Result<Vec<BatchStatus>> {
        self.api
            .list::<TokenPage<Job>, _>(&self.jobs_path(), PAGING, to_status)
            .await
    }

    /// Labels only hold `[a-z0-9_-]`, so the wanted tags are compared in label form.
    async fn find(&self, tags: &BatchTags) -> Result<Option<BatchStatus>> {
        let wanted = labels(tags);
        Ok(self
            .list()
            .await?
            .into_iter()
            .find(|job| wanted.iter().all(|(k, v)| job.tags.get(k) == Some(v))))
    }

    async fn results(&self, batch_id: &str) -> Result<LineStream> {
        let job = self.get_job(batch_id).await?;
        let Some(directory) = job.output_info.and_then(|o| o.gcs_output_directory) else {
            // A job that failed before writing anything has no output directory.
            return Ok(futures::stream::empty().boxed());
        };
        let (bucket, prefix) = parse_gs_uri(&directory).ok_or_else(|| {
            self.api.protocol(format!(
                "output directory {directory:?} is not gs://bucket/path"
            ))
        })?;
        id_path(KIND, bucket)?;
        let objects = self
            .prediction_objects(bucket, &format!("{}/", prefix.trim_end_matches('/')))
            .await?;
        let this = self.clone();
        let bucket = bucket.to_string();
        Ok(futures::stream::iter(objects)
            .then(move |object| this.object_lines(bucket.clone(), object))
            .try_flatten()
            .boxed())
    }
}

fn to_status(job: Job) -> Result<BatchStatus> {
    let state = match job.state.as_str() {
        "JOB_STATE_QUEUED" | "JOB_STATE_PENDING" => BatchState::Pending,
        // Cancelling still finishes in-flight work and writes it out.
        "JOB_STATE_RUNNING"
        | "JOB_STATE_UPDATING"
        | "JOB_STATE_PAUSED"
        | "JOB_STATE_CANCELLING" => BatchState::Processing,
        "JOB_STATE_SUCCEEDED" | "JOB_STATE_PARTIALLY_SUCCEEDED" => BatchState::Completed,
        "JOB_STATE_FAILED" => BatchState::Failed,
        "JOB_STATE_CANCELLED" => BatchState::Cancelled,
        "JOB_STATE_EXPIRED" => BatchState::Expired,
        other => {
            return Err(Error::Protocol {
                provider: KIND,
                message: format!("unknown job state {other:?} for {}", job.name),
            });
        }
    };
    let counts = job
        .completion_stats
        .map_or_else(RequestCounts::default, |s| RequestCounts {
            total: s.successful_count + s.failed_count + s.incomplete_count,
            succeeded: s.successful_count,
            failed: s.failed_count,
            pending: s.incomplete_count,
        });
    Ok(BatchStatus {
        batch_id: job.name,
        state,
        raw_status: job.state,
        counts,
        created_at: job.create_time,
        ended_at: job.end_time,
        quota_exceeded: job.error.as_ref().is_some_and(|e| e.is_quota()),
        error: job.error.map(|e| e.describe()),
        tags: job.labels,
    })
}

/// `batchline/{tag values in key order…}` for tagged batches (so a resubmitted part overwrites its
/// own input), a fresh folder otherwise.
fn object_folder(tags: &BatchTags) -> String {
    if tags.is_empty() {
        return format!("batchline/{}", uuid::Uuid::new_v4().simple());
    }
    let segments: Vec<String> = tags.values().map(|v| object_segment(v)).collect();
    format!("batchline/{}", segments.join("/"))
}

fn object_segment(value: &str) -> String {
    let safe: String = value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '=') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if safe.is_empty() {
        "_".to_string()
    } else {
        safe
    }
}

/// Tags as Vertex labels: lowercase `[a-z0-9_-]`, at most 63 characters, keys starting
/// with a letter.
fn labels(tags: &BatchTags) -> BatchTags {
    tags.iter()
        .map(|(k, v)| {
            let mut key = label_safe(k);
            if !key.starts_with(|c: char| c.is_ascii_lowercase()) {
                key = format!("k{key}");
                key.truncate(MAX_LABEL_LEN);
            }
            (key, label_safe(v))
        })
        .collect()
}

fn label_safe(text: &str) -> String {
    text.chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .take(MAX_LABEL_LEN)
        .collect()
}

/// `gs://bucket/some/path` → (`bucket`, `some/path`).
fn parse_gs_uri(uri: &str) -> Option<(&str, &str)> {
    let rest = uri.strip_prefix("gs://")?;
    let (bucket, path) = rest.split_once('/').unwrap_or((rest, ""));
    (!bucket.is_empty()).then_some((bucket, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(state: &str) -> Job {
        serde_json::from_value(json!({
            "name": "projects/p/locations/us-central1/batchPredictionJobs/42",
            "displayName": "x", "model": "publishers/google/models/gemini-2.5-flash",
            "state": state, "createTime": "2026-01-01T00:00:00Z", "endTime": null,
            "completionStats": {"successfulCount": "5", "failedCount": "2", "incompleteCount": "1"},
            "labels": {"batchline-job": "j1"},
            "error": {"code": 9, "message": "quota"}
        }))
        .unwrap()
    }

    #[test]
    fn maps_job_states_and_stats() {
        let cases = [
            ("JOB_STATE_QUEUED", BatchState::Pending),
            ("JOB_STATE_PENDING", BatchState::Pending),
            ("JOB_STATE_RUNNING", BatchState::Processing),
            ("JOB_STATE_UPDATING", BatchState::Processing),
            ("JOB_STATE_PAUSED", BatchState::Processing),
            ("JOB_STATE_CANCELLING", BatchState::Processing),
            ("JOB_STATE_SUCCEEDED", BatchState::Completed),
            ("JOB_STATE_PARTIALLY_SUCCEEDED", BatchState::Completed),
            ("JOB_STATE_FAILED", BatchState::Failed),
            ("JOB_STATE_CANCELLED", BatchState::Cancelled),
            ("JOB_STATE_EXPIRED", BatchState::Expired),
        ];
        for (raw, state) in cases {
            assert_eq!(to_status(job(raw)).unwrap().state, state, "{raw}");
        }
        let status = to_status(job("JOB_STATE_FAILED")).unwrap();
        assert_eq!(
            status.counts,
            RequestCounts {
                total: 8,
                succeeded: 5,
                failed: 2,
                pending: 1
            }
        );
        assert_eq!(status.error.as_deref(), Some("quota (code 9)"));
        assert!(to_status(job("JOB_STATE_WEIRD")).is_err());
    }

    #[test]
    fn tags_become_label_safe() {
        let tags: BatchTags = [("Job ID", "ABC/def.ghi"), ("9part", "0")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let labels = labels(&tags);
        assert_eq!(
            labels.get("job_id").map(String::as_str),
            Some("abc_def_ghi")
        );
        assert_eq!(labels.get("k9part").map(String::as_str), Some("0"));
        let long: BatchTags = [("k".to_string(), "x".repeat(100))].into_iter().collect();
        assert_eq!(super::labels(&long)["k"].len(), MAX_LABEL_LEN);
        // Segments follow the tag keys in sorted order ("9part" < "Job ID").
        assert_eq!(object_folder(&tags), "batchline/0/ABC_def_ghi");
        assert!(object_folder(&BatchTags::new()).starts_with("batchline/"));
    }

    #[test]
    fn parses_gs_uris() {
        assert_eq!(parse_gs_uri("gs://b/x/y"), Some(("b", "x/y")));
        assert_eq!(parse_gs_uri("gs://b"), Some(("b", "")));
        assert_eq!(parse_gs_uri("https://b/x"), None);
        assert_eq!(parse_gs_uri("gs:///x"), None);
    }
}
