//! Harness variants: another API key, short AWS timeouts, other pipeline settings.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use batchline::model::ProviderKind;
use batchline::pipeline::{ProviderSource, Settings};
use batchline::provider::config::{Credential, GoogleCredentials};
use batchline::provider::{BatchProvider, connect};
use batchline::queue::SqsQueue;
use batchline::storage::S3Store;
use batchline_emulator::Emulator;
use batchline_emulator::harness::{API_KEY, EmulatorProviders, moto_sdk_config};

use super::{BUCKET, Harness, TEST_BEDROCK_MIN_RECORDS, emulator_config};

/// What a test may change about its harness.
#[derive(Debug, Clone, Default)]
pub struct HarnessOptions {
    /// The key the emulator expects and the clients send (default: the shared test key).
    pub api_key: Option<String>,
    /// Per-attempt timeout of the pipeline's S3 and SQS calls (two attempts), so that a
    /// paused moto makes a step fail quickly instead of hanging. The harness's own
    /// clients (`h.s3`, `h.sqs`) keep the defaults.
    pub aws_attempt_timeout: Option<Duration>,
    /// Longest wait for a provider's answer (default: the library's 60 s).
    pub provider_read_timeout: Option<Duration>,
    /// How long the emulator keeps a batch in each stage (default 50 ms); a long one
    /// keeps batches running until `finish_all`.
    pub emulator_step: Option<Duration>,
    pub settings: Settings,
}

/// Settings for tests that rerun a step right after a crash: leases and the requeue
/// delay short enough to pass within a test.
pub fn quick_settings() -> Settings {
    Settings {
        submit_lease: Duration::from_secs(1),
        collect_lease: Duration::from_secs(1),
        requeue_after: Duration::from_secs(1),
        ..Settings::default()
    }
}

/// Settings where every lease and delay has already passed: a rerun right after a
/// crash takes over at once (for tests that run one step at a time).
pub fn no_wait_settings() -> Settings {
    Settings {
        submit_lease: Duration::ZERO,
        collect_lease: Duration::ZERO,
        requeue_after: Duration::ZERO,
        ..Settings::default()
    }
}

/// How long to wait for a lease from [`quick_settings`] to pass.
pub const LEASE_PASSES: Duration = Duration::from_millis(1_100);

impl Harness {
    pub async fn start_with(options: HarnessOptions) -> Self {
        let mut h = Self::start().await;
        h.ctx.settings = Settings {
            bedrock_min_records: TEST_BEDROCK_MIN_RECORDS,
            ..options.settings
        };
        if let Some(attempt) = options.aws_attempt_timeout {
            let sdk = moto_sdk_config(&h.moto.url)
                .to_builder()
                .timeout_config(
                    aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                        .connect_timeout(attempt)
                        .operation_attempt_timeout(attempt)
                        .build(),
                )
                .retry_config(
                    aws_sdk_s3::config::retry::RetryConfig::standard().with_max_attempts(2),
                )
                .build();
            h.ctx.store = Arc::new(S3Store::new(S3Store::client_from(&sdk, true), BUCKET));
            h.ctx.queue = Arc::new(SqsQueue::new(
                aws_sdk_sqs::Client::new(&sdk),
                h.queue_url.clone(),
            ));
        }
        if options.api_key.is_some() || options.emulator_step.is_some() {
            let step = options.emulator_step.unwrap_or(Duration::from_millis(50));
            let key = options.api_key.as_deref().unwrap_or(API_KEY);
            h.emulator = Emulator::start(emulator_config(&h.moto, step, key))
                .await
                .expect("emulator");
        }
        h.ctx.providers = Arc::new(TunedProviders {
            inner: h.providers(),
            key: options
                .api_key
                .map(|key| Credential::new(key).expect("a test key")),
            read_timeout: options.provider_read_timeout,
        });
        h
    }

    /// Runs the job to its end, then until its close is complete: a step whose record
    /// write landed late (after a timeout) leaves the summary to the next poll.
    pub async fn run_to_close(&self, job: &str) -> batchline::pipeline::job::JobRecord {
        let mut record = self.run_to_end(job).await;
        for _ in 0..20 {
            if record.completed_at.is_some() {
                return record;
            }
            batchline::pipeline::poll(&self.ctx).await.expect("poll");
            self.collect_queued().await;
            record = self.record(job).await;
        }
        panic!("job {job} never finished closing: {record:?}");
    }

    /// Batches the provider lists, through the pipeline's own provider source (so it
    /// works whatever key the harness runs with).
    pub async fn provider_batches(&self, kind: ProviderKind) -> usize {
        let provider = self.ctx.providers.provider(kind).await.expect("provider");
        provider.list().await.expect("list batches").len()
    }
}

/// The emulator's providers with another API key or read timeout.
#[derive(Debug)]
pub struct TunedProviders {
    pub inner: EmulatorProviders,
    /// Held as an `Credential`, so that a context's `Debug` never shows it.
    pub key: Option<Credential>,
    pub read_timeout: Option<Duration>,
}

#[async_trait]
impl ProviderSource for TunedProviders {
    async fn provider(&self, kind: ProviderKind) -> batchline::Result<Arc<dyn BatchProvider>> {
        let mut config = self.inner.config(kind);
        if let Some(key) = self.key.clone() {
            match config.vertex.as_mut() {
                Some(vertex) => vertex.credentials = GoogleCredentials::StaticToken(key),
                None => config.api_key = Some(key),
            }
        }
        if let Some(read) = self.read_timeout {
            config.timeouts.read = read;
        }
        connect(kind, &config)
    }
}
