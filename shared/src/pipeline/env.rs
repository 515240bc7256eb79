//! The pipeline as the Lambda functions run it: configuration from the environment,
//! API keys from Secrets Manager or SSM, AWS clients from Lambda's environment
//! ([`crate::aws`]).
//!
//! | Variable | Used by | Meaning |
//! |---|---|---|
//! | `BUCKET_NAME` | all | the pipeline's bucket (required) |
//! | `READY_QUEUE_URL` | poll | the ready queue (required by poll) |
//! | `POLL_CONCURRENCY` | poll | jobs polled at once (default 8) |
//! | `POLL_JOBS_QUEUE_URL` | poll | the fan-out queue: a tick with more open jobs than `POLL_INLINE_JOBS` sends one message per job there, for poll's workers (unset: the tick polls every job) |
//! | `POLL_INLINE_JOBS` | poll | open jobs a tick still polls itself (default 20) |
//! | `QUOTA_LIMITS` | submit, poll, collect | the provider accounts' limits by model or provider, JSON (see `crate::quota::QuotaTable`) |
//! | `SUBMIT_QUEUE_URL` | submit, poll | where submit hands the rest of a long upload to its next invocation (unset: poll resumes it) |
//! | `SUBMIT_BUDGET_SECONDS` | submit | how long one invocation reads before it hands over (default 720) |
//! | `MAX_PART_BYTES` | submit, collect | the largest part built (default 100,000,000) |
//! | `COLLECT_MAX_RECEIVES` | collect | the queue's maxReceiveCount (default 5): the last delivery records missing results as errors |
//! | `<NAME>_SECRET_ARN` | all | read `<NAME>` (e.g. `OPENAI_API_KEY`) from this Secrets Manager secret |
//! | `<NAME>_PARAMETER` | all | read `<NAME>` from this SSM SecureString parameter |
//! | `GOOGLE_CREDENTIALS_SECRET_ARN` | all | service-account JSON for Vertex AI, from Secrets Manager |
//! | `LEDGER_TABLE` | submit, collect | the DynamoDB table of rows with a success, for `skip_succeeded` (without it such jobs fail and say so) |
//! | `S3_FORCE_PATH_STYLE` | all | `true` for path-style S3 addressing (local S3 servers) |
//! | `AWS_REGION`, `AWS_ACCESS_KEY_ID`, … | all | region and credentials, as Lambda sets them |
//! | `AWS_ENDPOINT_URL` | all | one endpoint for every AWS service (moto locally) |
//!
//! Provider variables (`OPENAI_API_KEY`, `OPENAI_BASE_URL`, …) are those of
//! [`crate::provider::config`]; a secret named by `_SECRET_ARN`/`_PARAMETER` wins over
//! a plain variable.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::Mutex;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use super::context::{Context, ProviderSource, Settings};
use super::secrets::{SecretError, SecretReader};
use crate::error::{Error, Result};
use crate::ledger::DynamoLedger;
use crate::model::ProviderKind;
use crate::provider::config::ProviderConfig;
use crate::provider::{BatchProvider, connect, descriptor};
use crate::queue::{Queue, QueueError, SqsQueue};
use crate::storage::S3Store;

/// JSON log lines for CloudWatch, levels from `RUST_LOG` (default `info`), which takes
/// `level` and `target=level` items, e.g. `info,batchline=debug`. (Not the span and
/// field filters of `EnvFilter`, whose regex engine is not worth its size here.)
pub fn init_tracing() {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|directives| directives.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .json()
                .with_current_span(false)
                .without_time(),
        )
        .with(filter)
        .init();
}

/// Builds the pipeline context. Cheap: no network call happens before first use, so
/// cold starts stay short.
pub async fn context_from_env() -> Result<Context> {
    let sdk = crate::aws::sdk_config_from_env()?;
    let bucket = required("BUCKET_NAME")?;
    let path_style = std::env::var("S3_FORCE_PATH_STYLE").is_ok_and(|v| v == "true" || v == "1");
    let store = S3Store::new(S3Store::client_from(&sdk, path_style), bucket.clone());
    let queue: Arc<dyn Queue> = match std::env::var("READY_QUEUE_URL") {
        Ok(url) if !url.is_empty() => Arc::new(SqsQueue::new(aws_sdk_sqs::Client::new(&sdk), url)),
        _ => Arc::new(NoQueue),
    };
    let mut settings = Settings::default();
    if let Some(n) = std::env::var("POLL_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        settings.poll_concurrency = n;
    }
    if let Some(bytes) = std::env::var("MAX_PART_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        settings.max_part_bytes = bytes;
    }
    if let Some(n) = std::env::var("BEDROCK_MIN_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        settings.bedrock_min_records = n;
    }
    if let Some(seconds) = std::env::var("SUBMIT_BUDGET_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        settings.submit_budget = std::time::Duration::from_secs(seconds);
    }
    if let Some(n) = std::env::var("POLL_INLINE_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        settings.poll_inline_jobs = n;
    }
    if let Ok(text) = std::env::var("QUOTA_LIMITS")
        && !text.trim().is_empty()
    {
        settings.quotas = crate::quota::QuotaTable::parse(&text)
            .map_err(|reason| Error::Config(format!("QUOTA_LIMITS: {reason}")))?;
    }
    Ok(Context {
        store: Arc::new(store),
        bucket,
        queue,
        poll_jobs: std::env::var("POLL_JOBS_QUEUE_URL")
            .ok()
            .filter(|url| !url.is_empty())
            .map(|url| Arc::new(SqsQueue::new(aws_sdk_sqs::Client::new(&sdk), url)) as _),
        providers: Arc::new(EnvProviders::new(SecretReader::new(&sdk))),
        settings,
        submit_queue: std::env::var("SUBMIT_QUEUE_URL")
            .ok()
            .filter(|url| !url.is_empty())
            .map(|url| Arc::new(SqsQueue::new(aws_sdk_sqs::Client::new(&sdk), url)) as _),
        clock: Arc::new(crate::clock::SystemClock),
        metrics: Arc::new(crate::metrics::StdoutSink),
        ledger: std::env::var("LEDGER_TABLE")
            .ok()
            .filter(|table| !table.is_empty())
            .map(|table| {
                Arc::new(DynamoLedger::new(
                    aws_sdk_dynamodb::Client::new(&sdk),
                    table,
                )) as _
            }),
    })
}

/// `COLLECT_MAX_RECEIVES`, default 5 (the template's maxReceiveCount).
pub fn collect_max_receives() -> u32 {
    std::env::var("COLLECT_MAX_RECEIVES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}

fn required(name: &str) -> Result<String> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| Error::Config(format!("{name} is not set")))
}

/// For functions that send nothing (submit, collect).
#[derive(Debug)]
struct NoQueue;

#[async_trait]
impl Queue for NoQueue {
    async fn send(&self, _body: String) -> std::result::Result<(), QueueError> {
        Err(QueueError("READY_QUEUE_URL is not set".into()))
    }
}

/// Clients built on first use from the environment and secrets, then reused for
/// the life of the Lambda instance.
#[derive(Debug)]
pub struct EnvProviders {
    secrets: SecretReader,
    clients: Mutex<HashMap<ProviderKind, Arc<dyn BatchProvider>>>,
}

impl EnvProviders {
    /// Providers configured from the environment, their keys read through `secrets`.
    pub fn new(secrets: SecretReader) -> Self {
        Self {
            secrets,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// `name` from its secret or parameter if one is named, else the plain variable.
    async fn lookup(&self, name: &str) -> Result<Option<String>> {
        if let Ok(arn) = std::env::var(format!("{name}_SECRET_ARN"))
            && !arn.is_empty()
        {
            return self.secret(name, &arn).await.map(Some);
        }
        if let Ok(parameter) = std::env::var(format!("{name}_PARAMETER"))
            && !parameter.is_empty()
        {
            return self
                .secrets
                .parameter(&parameter)
                .await
                .map(Some)
                .map_err(|e| secret_error(name, &e));
        }
        Ok(std::env::var(name).ok())
    }

    async fn secret(&self, name: &str, arn: &str) -> Result<String> {
        self.secrets
            .secret_string(arn)
            .await
            .map_err(|e| secret_error(name, &e))
    }

    async fn config(&self, kind: ProviderKind) -> Result<ProviderConfig> {
        let mut values = HashMap::new();
        for name in descriptor(kind).secret_variables() {
            if let Some(v) = self.lookup(name).await? {
                values.insert(name.to_string(), v);
            }
        }
        ProviderConfig::from_lookup(kind, |name| {
            values
                .get(name)
                .cloned()
                .or_else(|| std::env::var(name).ok())
        })
    }
}

/// Names the secret, never its value or the underlying error's echo of it.
fn secret_error(name: &str, reason: &SecretError) -> Error {
    Error::Config(format!("reading the secret for {name} failed: {reason}"))
}

#[async_trait]
impl ProviderSource for EnvProviders {
    async fn provider(&self, kind: ProviderKind) -> Result<Arc<dyn BatchProvider>> {
        let mut clients = self.clients.lock().await;
        if let Some(client) = clients.get(&kind) {
            return Ok(client.clone());
        }
        let client = connect(kind, &self.config(kind).await?)?;
        clients.insert(kind, client.clone());
        Ok(client)
    }
}
