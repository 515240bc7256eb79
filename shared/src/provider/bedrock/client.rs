//! The Bedrock client: the control plane through the official SDK (`aws-sdk-bedrock`,
//! which signs with SigV4 and retries throttling), input and output through S3.

use std::sync::Arc;

use async_trait::async_trait;
use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_sdk_bedrock::Client;
use aws_sdk_bedrock::config::http::HttpResponse;
use aws_sdk_bedrock::config::retry::RetryConfig;
use aws_sdk_bedrock::error::{BuildError, DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_bedrock::operation::get_model_invocation_job::GetModelInvocationJobOutput;
use aws_sdk_bedrock::primitives::{DateTime, DateTimeFormat};
use aws_sdk_bedrock::types::{
    ModelInvocationJobInputDataConfig, ModelInvocationJobOutputDataConfig,
    ModelInvocationJobS3InputDataConfig, ModelInvocationJobS3OutputDataConfig,
    ModelInvocationJobStatus, ModelInvocationType, S3InputFormat, Tag,
};
use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::model::ProviderKind;
use crate::provider::config::{AwsCredentials, BedrockSettings, ProviderConfig};
use crate::provider::contract::{BatchProvider, BatchTags, LineStream};
use crate::provider::lines::split_lines;
use crate::status::{BatchState, BatchStatus, RequestCounts};
use crate::storage::{ObjectStore, PutMode, S3Store, StoreError};

/// The [`JobView`] of a job or a job summary: the SDK's two types have the same
/// accessors but no trait in common.
macro_rules! job_view {
    ($job:expr) => {
        JobView {
            arn: $job.job_arn(),
            status: $job.status(),
            message: $job.message(),
            submit_time: $job.submit_time(),
            end_time: $job.end_time(),
            counts: [
                $job.total_record_count(),
                $job.success_record_count(),
                $job.error_record_count(),
                $job.processed_record_count(),
            ],
        }
    };
}

const KIND: ProviderKind = ProviderKind::Bedrock;

/// Bedrock batch inference over the SDK's control-plane client and an S3 store.
#[derive(Debug, Clone)]
pub struct BedrockClient {
    control: Client,
    store: Arc<S3Store>,
    settings: BedrockSettings,
    max_line_bytes: usize,
    /// Attempts the SDK makes at each call, the first included.
    attempts: u32,
}

impl BedrockClient {
    /// The client for `config`; fails without Bedrock settings.
    pub fn new(config: &ProviderConfig) -> Result<Self> {
        let settings = config
            .bedrock
            .clone()
            .ok_or_else(|| Error::Config("bedrock needs its settings (BEDROCK_*)".into()))?;
        let credentials = match &settings.credentials {
            AwsCredentials::Environment => crate::aws::environment_credentials(),
            AwsCredentials::Static {
                access_key_id,
                secret_access_key,
            } => SharedCredentialsProvider::new(Credentials::new(
                access_key_id,
                secret_access_key.expose(),
                None,
                None,
                "static",
            )),
        };
        let s3_config = crate::aws::sdk_config(
            &settings.region,
            credentials.clone(),
            settings.s3_endpoint.as_deref(),
        );
        let control_config = crate::aws::sdk_config(
            &settings.region,
            credentials,
            Some(config.base_url.as_str().trim_end_matches('/')),
        );
        let control = aws_sdk_bedrock::config::Builder::from(&control_config)
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(config.retry.max_attempts)
                    .with_initial_backoff(config.retry.base_delay)
                    .with_max_backoff(config.retry.max_delay),
            )
            .build();
        Ok(Self {
            control: Client::from_conf(control),
            store: Arc::new(S3Store::new(
                S3Store::client_from(&s3_config, settings.s3_endpoint.is_some()),
                settings.bucket.clone(),
            )),
            settings,
            max_line_bytes: config.max_line_bytes,
            attempts: config.retry.max_attempts,
        })
    }

    /// The S3 URI of `key` in the jobs' bucket.
    fn s3_uri(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.settings.bucket)
    }

    async fn get(&self, job: &str) -> Result<GetModelInvocationJobOutput> {
        self.control
            .get_model_invocation_job()
            .job_identifier(job)
            .send()
            .await
            .map_err(api_error(self.attempts))
    }
}

/// A job name for `tags`, the same every time (`batchline-` and 40 hex digits of their
/// hash; Bedrock names allow 63 characters), or a fresh one without tags.
fn job_name(tags: &BatchTags) -> String {
    if tags.is_empty() {
        return format!("batchline-{}", uuid::Uuid::new_v4().simple());
    }
    let mut hash = Sha256::new();
    for (key, value) in tags {
        hash.update(key.as_bytes());
        hash.update([0]);
        hash.update(value.as_bytes());
        hash.update([0]);
    }
    format!("batchline-{}", &hex::encode(hash.finalize())[..40])
}

#[async_trait]
impl BatchProvider for BedrockClient {
    fn kind(&self) -> ProviderKind {
        KIND
    }

    async fn create(&self, model: &str, input: Bytes, tags: &BatchTags) -> Result<BatchStatus> {
        let name = job_name(tags);
        let input_key = format!("{}input/{name}.jsonl", self.settings.prefix);
        self.store
            .put(&input_key, input, PutMode::Overwrite)
            .await
            .map_err(store_error)?;
        let input_config = ModelInvocationJobS3InputDataConfig::builder()
            .s3_uri(self.s3_uri(&input_key))
            .s3_input_format(S3InputFormat::Jsonl)
            .build()
            .map_err(build_error)?;
        let output_config = ModelInvocationJobS3OutputDataConfig::builder()
            .s3_uri(self.s3_uri(&format!("{}output/", self.settings.prefix)))
            .build()
            .map_err(build_error)?;
        let aws_tags = tags
            .iter()
            .map(|(key, value)| Tag::builder().key(key).value(value).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(build_error)?;
        let created = self
            .control
            .create_model_invocation_job()
            .job_name(&name)
            // The same token for the same part: a create retried after a lost answer
            // returns the job the first one made.
            .client_request_token(&name)
            .role_arn(&self.settings.role_arn)
            .model_id(model)
            .model_invocation_type(ModelInvocationType::Converse)
            .input_data_config(ModelInvocationJobInputDataConfig::S3InputDataConfig(
                input_config,
            ))
            .output_data_config(ModelInvocationJobOutputDataConfig::S3OutputDataConfig(
                output_config,
            ))
            .timeout_duration_in_hours(self.settings.timeout_hours)
            .set_tags((!aws_tags.is_empty()).then_some(aws_tags))
            .send()
            .await
            .map_err(api_error(self.attempts))?;
        let mut status = self.status(created.job_arn()).await?;
        status.tags = tags.clone();
        Ok(status)
    }

    async fn status(&self, batch_id: &str) -> Result<BatchStatus> {
        let job = self.get(batch_id).await?;
        Ok(to_status(job_view!(job)))
    }

    async fn cancel(&self, batch_id: &str) -> Result<BatchStatus> {
        self.control
            .stop_model_invocation_job()
            .job_identifier(batch_id)
            .send()
            .await
            .map_err(api_error(self.attempts))?;
        self.status(batch_id).await
    }

    async fn list(&self) -> Result<Vec<BatchStatus>> {
        self.list_named(None).await
    }

    /// Bedrock returns no tags with a job, but the job name is derived from them.
    async fn find(&self, tags: &BatchTags) -> Result<Option<BatchStatus>> {
        let name = job_name(tags);
        let found = self.list_named(Some(&name)).await?;
        Ok(found.into_iter().next().map(|mut status| {
            status.tags = tags.clone();
            status
        }))
    }

    async fn results(&self, batch_id: &str) -> Result<LineStream> {
        let job = self.get(batch_id).await?;
        let input_uri = match job.input_data_config() {
            Some(ModelInvocationJobInputDataConfig::S3InputDataConfig(s3)) => s3.s3_uri(),
            _ => return Err(protocol(format!("job {batch_id} has no S3 input"))),
        };
        let output_uri = match job.output_data_config() {
            Some(ModelInvocationJobOutputDataConfig::S3OutputDataConfig(s3)) => s3.s3_uri(),
            _ => return Err(protocol(format!("job {batch_id} has no S3 output"))),
        };
        let input_name = input_uri.rsplit('/').next().unwrap_or_default();
        let job_id = job.job_arn().rsplit('/').next().unwrap_or_default();
        let output_prefix = self.key_of(output_uri)?.trim_end_matches('/');
        let output_key = format!("{output_prefix}/{job_id}/{input_name}.out");
        match self.store.get_stream(&output_key, None, 0).await {
            Ok(chunks) => Ok(split_lines(chunks, self.max_line_bytes, KIND)),
            // A job that failed before it ran wrote nothing: no result lines.
            Err(StoreError::NotFound { .. }) => Ok(futures::stream::empty().boxed()),
            Err(e) => Err(store_error(e)),
        }
    }
}

impl BedrockClient {
    /// Every job, or those whose name contains `name` (exactly that name is kept), all pages.
    async fn list_named(&self, name: Option<&str>) -> Result<Vec<BatchStatus>> {
        let mut pages = self
            .control
            .list_model_invocation_jobs()
            .set_name_contains(name.map(str::to_string))
            .into_paginator()
            .send();
        let mut jobs = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(api_error(self.attempts))?;
            jobs.extend(
                page.invocation_job_summaries()
                    .iter()
                    .filter(|job| name.is_none_or(|name| job.job_name() == name))
                    .map(|job| to_status(job_view!(job))),
            );
        }
        Ok(jobs)
    }

    /// The key of `uri` (`s3://<bucket>/<key>`) in the jobs' bucket.
    fn key_of<'a>(&self, uri: &'a str) -> Result<&'a str> {
        uri.strip_prefix("s3://")
            .and_then(|rest| rest.strip_prefix(self.settings.bucket.as_str()))
            .and_then(|rest| rest.strip_prefix('/'))
            .ok_or_else(|| protocol(format!("{uri} is not in bucket {}", self.settings.bucket)))
    }
}

/// What both a job and a job summary say, borrowed.
struct JobView<'a> {
    arn: &'a str,
    status: Option<&'a ModelInvocationJobStatus>,
    message: Option<&'a str>,
    submit_time: &'a DateTime,
    end_time: Option<&'a DateTime>,
    /// Total, succeeded, errored and processed records, where Bedrock counts them.
    counts: [Option<i64>; 4],
}

fn to_status(job: JobView<'_>) -> BatchStatus {
    use ModelInvocationJobStatus as S;
    let raw = job.status.map_or("", |s| s.as_str());
    let state = match job.status {
        Some(S::Completed | S::PartiallyCompleted) => BatchState::Completed,
        Some(S::Failed) => BatchState::Failed,
        Some(S::Stopped) => BatchState::Cancelled,
        Some(S::Expired) => BatchState::Expired,
        // Stopping still writes the output of the records done so far.
        Some(S::InProgress | S::Stopping) => BatchState::Processing,
        _ => BatchState::Pending,
    };
    let count = |n: Option<i64>| n.map_or(0, |n| u64::try_from(n).unwrap_or(0));
    let [total, succeeded, failed, processed] = job.counts.map(count);
    BatchStatus {
        batch_id: job.arn.to_string(),
        state,
        raw_status: raw.to_string(),
        counts: RequestCounts {
            total,
            succeeded,
            failed,
            pending: total.saturating_sub(processed),
        },
        created_at: rfc3339(job.submit_time),
        ended_at: job.end_time.and_then(rfc3339),
        error: job.message.filter(|m| !m.is_empty()).map(str::to_string),
        quota_exceeded: false,
        tags: BatchTags::new(),
    }
}

fn rfc3339(time: &DateTime) -> Option<String> {
    time.fmt(DateTimeFormat::DateTime).ok()
}

/// An SDK failure, after the SDK's own retries (`attempts` of them for what it retries),
/// as the library's error: a quota or throttling answer is [`Error::QuotaExceeded`]
/// (the part waits and tries later), a server error or no answer at all
/// [`Error::Transport`], any other answer [`Error::Api`].
fn api_error<E>(attempts: u32) -> impl Fn(SdkError<E, HttpResponse>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    move |err| {
        let status = match &err {
            SdkError::ServiceError(service) => Some(service.raw().status().as_u16()),
            _ => None,
        };
        let code = err.code().unwrap_or("").to_string();
        let message = format!("{code}: {}", err.message().unwrap_or("no message"));
        match (status, code.as_str()) {
            (_, "ServiceQuotaExceededException" | "ThrottlingException") | (Some(429), _) => {
                Error::QuotaExceeded {
                    provider: KIND,
                    attempts,
                    message,
                }
            }
            (Some(status @ 500..), _) => Error::Transport {
                provider: KIND,
                attempts,
                message: format!("HTTP {status}: {message}"),
            },
            (Some(status), _) => Error::Api {
                provider: KIND,
                status,
                message,
            },
            (None, _) => Error::Transport {
                provider: KIND,
                attempts,
                message: DisplayErrorContext(&err).to_string(),
            },
        }
    }
}

fn build_error(err: BuildError) -> Error {
    Error::Config(format!("bedrock request: {err}"))
}

fn store_error(err: StoreError) -> Error {
    Error::Transport {
        provider: KIND,
        attempts: 1,
        message: format!("S3: {err}"),
    }
}

fn protocol(message: String) -> Error {
    Error::Protocol {
        provider: KIND,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_names_are_stable_per_tags_and_valid_for_bedrock() {
        let tags: BatchTags = [("batchline_job", "j-1"), ("batchline_part", "3")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let name = job_name(&tags);
        assert_eq!(name, job_name(&tags.clone()));
        assert_eq!(name.len(), 50);
        assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        let mut other = tags.clone();
        other.insert("batchline_wait".to_string(), "1".to_string());
        assert_ne!(job_name(&other), name);
        assert_ne!(job_name(&BatchTags::new()), job_name(&BatchTags::new()));
    }

    #[test]
    fn every_job_status_has_its_state() {
        use ModelInvocationJobStatus as S;
        let cases = [
            (S::Submitted, BatchState::Pending),
            (S::Validating, BatchState::Pending),
            (S::Scheduled, BatchState::Pending),
            (S::InProgress, BatchState::Processing),
            (S::Stopping, BatchState::Processing),
            (S::Completed, BatchState::Completed),
            (S::PartiallyCompleted, BatchState::Completed),
            (S::Failed, BatchState::Failed),
            (S::Stopped, BatchState::Cancelled),
            (S::Expired, BatchState::Expired),
        ];
        for (status, state) in cases {
            let view = JobView {
                arn: "arn:aws:bedrock:us-east-1:123456789012:model-invocation-job/abc",
                status: Some(&status),
                message: Some(""),
                submit_time: &DateTime::from_secs(0),
                end_time: None,
                counts: [Some(150), Some(100), Some(20), Some(120)],
            };
            let seen = to_status(view);
            assert_eq!(seen.state, state, "{status:?}");
            assert_eq!(seen.raw_status, status.as_str());
            assert_eq!(
                seen.counts,
                RequestCounts {
                    total: 150,
                    succeeded: 100,
                    failed: 20,
                    pending: 30
                }
            );
            assert_eq!(seen.error, None);
        }
    }
}
