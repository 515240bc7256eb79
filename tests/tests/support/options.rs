//! Harness variants: another API key, short AWS timeouts, other pipeline settings.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use batchline::model::ProviderKind;
use batchline::pipeline::{ProviderSource, Settings};
use batchline::provider::config::{ApiKey, GoogleCredentials};
use batchline::provider::{BatchProvider, connect};
use batchline::queue::SqsQueue;
use batchline::storage::S3Store;
use batchline_emulator::harness::{EmulatorProviders, moto_sdk_config};
use batchline_emulator::{Config, Emulator};

use super::{BUCKET, Harness};

/// What a test may change about its harness.
#[derive(Debug, Clone, Default)]
pub struct HarnessOptions {
    /// The key the emulator expects and the clients send (default: the shared test key).
    pub api_key: Option<String>,
    /// Per-attempt timeout of the pipeline's S3 and SQS calls (two attempts), so that a
    /// paused moto makes a step fail quickly instead of hanging. The harness's own
    /// clients (`h.s3`, `h.sqs`) keep the defaults.
    pub aws_attempt_timeout: Option<Duration>,
    pub settings: Settings,
}

/// Settings for tests that rerun a step right after a crash: leases and the requeue
/// delay short enough to pass within a test.
pub fn quick_settings() -> Settings {
    Settings {
        submit_lease: Duration::from_millis(300),
        requeue_after: Duration::from_millis(300),
        ..Settings::default()
    }
}

/// How long to wait for a lease from [`quick_settings`] to pass.
pub const LEASE_PASSES: Duration = Duration::from_millis(400);

impl Harness {
    pub async fn start_with(options: HarnessOptions) -> Self {
        let mut h = Self::start().await;
        h.ctx.settings = options.settings;
        if let Some(attempt) = options.aws_attempt_timeout {
            let sdk = moto_sdk_config(&h.moto.url)
                .await
                .to_builder()
                .timeout_config(
                    aws_config::timeout::TimeoutConfig::builder()
                        .connect_timeout(attempt)
                        .operation_attempt_timeout(attempt)
                        .build(),
                )
                .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(2))
                .build();
            h.ctx.store = Arc::new(S3Store::new(S3Store::client_from(&sdk, true), BUCKET));
            h.ctx.queue = Arc::new(SqsQueue::new(
                aws_sdk_sqs::Client::new(&sdk),
                h.queue_url.clone(),
            ));
        }
        if let Some(key) = options.api_key {
            h.emulator = Emulator::start(Config {
                step: Duration::from_millis(50),
                api_key: key.clone(),
            })
            .await
            .expect("emulator");
            h.ctx.providers = Arc::new(KeyedProviders {
                inner: EmulatorProviders::new(h.emulator.base_url()),
                key,
            });
        }
        h
    }

    /// Batches the provider lists, through the pipeline's own provider source (so it
    /// works whatever key the harness runs with).
    pub async fn provider_batches(&self, kind: ProviderKind) -> usize {
        let provider = self.ctx.providers.provider(kind).await.expect("provider");
        provider.list().await.expect("list batches").len()
    }
}

/// The emulator's providers with another API key.
#[derive(Debug)]
pub struct KeyedProviders {
    pub inner: EmulatorProviders,
    pub key: String,
}

#[async_trait]
impl ProviderSource for KeyedProviders {
    async fn provider(&self, kind: ProviderKind) -> batchline::Result<Arc<dyn BatchProvider>> {
        let key = ApiKey::new(self.key.as_str())?;
        let mut config = self.inner.config(kind);
        match config.vertex.as_mut() {
            Some(vertex) => vertex.credentials = GoogleCredentials::StaticToken(key),
            None => config.api_key = Some(key),
        }
        connect(kind, &config)
    }
}
