//! Local stand-ins for AWS and the providers, shared by the end-to-end tests and the
//! benchmark: a moto server process (real S3 and SQS protocols) on a free port, the
//! AWS SDK configuration that points at it, and a provider source that connects
//! every provider to the emulator.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use batchline::model::ProviderKind;
use batchline::pipeline::job::{self, keys};
use batchline::pipeline::spec::ResultFormat;
use batchline::pipeline::{PipelineError, ProviderSource};
use batchline::provider::config::{
    AwsCredentials, BedrockSettings, Credential, GoogleCredentials, ProviderConfig, VertexSettings,
};
use batchline::provider::{BatchProvider, connect};
use batchline::request::AnswerFormat;
use batchline::storage::{ObjectStore, PutMode, StoreError};
use batchline::table::TableLayout;
use bytes::Bytes;
use serde_json::json;

use crate::workload;

/// The API key the emulator is started with in tests and benchmarks.
pub const API_KEY: &str = "test-key";

/// A moto server process, stopped on drop.
pub struct Moto {
    child: Child,
    pub url: String,
}

impl Moto {
    /// Starts `$MOTO_SERVER`, or the test venv's `moto_server`, and waits until it listens.
    pub fn start() -> Self {
        Self::start_in(".venv")
    }

    /// Like [`Moto::start`] with the `moto_server` of the workspace's venv `venv`.
    pub fn start_in(venv: &str) -> Self {
        let port = free_port();
        let binary = std::env::var("MOTO_SERVER")
            .map(PathBuf::from)
            .unwrap_or_else(|_| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("..")
                    .join(venv)
                    .join("bin/moto_server")
            });
        assert!(
            binary.exists(),
            "{} not found: create the venv first (`make venv`, `make bench-venv`)",
            binary.display()
        );
        let child = Command::new(binary)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting moto_server");
        let moto = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        moto
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A plain reqwest client for test-side calls (control endpoints, direct API calls).
pub fn http_client() -> reqwest::Client {
    batchline::tls::reqwest_builder()
        .build()
        .expect("an HTTP client")
}

/// The AWS SDK configuration for a moto server at `endpoint` (fixed region, fake keys).
pub fn moto_sdk_config(endpoint: &str) -> aws_types::SdkConfig {
    let credentials = aws_sdk_s3::config::Credentials::new("test", "test", None, None, "test");
    batchline::aws::sdk_config(
        "us-east-1",
        aws_sdk_s3::config::SharedCredentialsProvider::new(credentials),
        Some(endpoint),
    )
}

/// Every provider pointed at the emulator at `base`.
#[derive(Debug, Clone)]
pub struct EmulatorProviders {
    base: String,
    /// Where Bedrock's input and output go: moto's URL and the bucket.
    bedrock_s3: Option<(String, String)>,
}

/// The service role Bedrock jobs run as in tests.
pub const BEDROCK_ROLE_ARN: &str = "arn:aws:iam::123456789012:role/batchline-bedrock";

/// Bedrock settings for jobs whose input and output go to `bucket` on the S3 server at
/// `s3_endpoint`, signed with moto's and the emulator's test keys.
pub fn bedrock_settings(s3_endpoint: &str, bucket: &str) -> BedrockSettings {
    BedrockSettings {
        region: "us-east-1".into(),
        role_arn: BEDROCK_ROLE_ARN.into(),
        bucket: bucket.into(),
        prefix: "bedrock/".into(),
        s3_endpoint: Some(s3_endpoint.into()),
        timeout_hours: 72,
        credentials: AwsCredentials::Static {
            access_key_id: "test".into(),
            secret_access_key: Credential::new("test").expect("key"),
        },
    }
}

impl EmulatorProviders {
    pub fn new(base: impl Into<String>) -> Self {
        Self {
            base: base.into(),
            bedrock_s3: None,
        }
    }

    /// Bedrock's jobs keep their input and output in `bucket` on moto at `moto_url`
    /// (the emulator must read the same S3).
    pub fn with_bedrock_s3(mut self, moto_url: &str, bucket: &str) -> Self {
        self.bedrock_s3 = Some((moto_url.to_string(), bucket.to_string()));
        self
    }

    pub fn config(&self, kind: ProviderKind) -> ProviderConfig {
        let key = || Credential::new(API_KEY).expect("key");
        let mut config = match kind {
            ProviderKind::Vertex => ProviderConfig::vertex(
                Some(&self.base),
                VertexSettings {
                    project: "test-project".into(),
                    location: "us-central1".into(),
                    bucket: "gcs-test".into(),
                    storage_base_url: self.base.parse().expect("url"),
                    credentials: GoogleCredentials::StaticToken(key()),
                },
            ),
            ProviderKind::Bedrock => {
                let (moto, bucket) = self
                    .bedrock_s3
                    .as_ref()
                    .expect("Bedrock needs S3: EmulatorProviders::with_bedrock_s3");
                ProviderConfig::bedrock(Some(&self.base), bedrock_settings(moto, bucket))
            }
            _ => ProviderConfig::with_api_key(&self.base, key()),
        }
        .expect("provider config");
        // Keep fault-injection tests quick: short backoff.
        config.retry.base_delay = Duration::from_millis(20);
        config.retry.max_delay = Duration::from_millis(200);
        config
    }
}

#[async_trait]
impl ProviderSource for EmulatorProviders {
    async fn provider(&self, kind: ProviderKind) -> batchline::Result<Arc<dyn BatchProvider>> {
        connect(kind, &self.config(kind))
    }
}

/// Stores what `collect` needs for a job whose only part ended at the provider as
/// `batch_id`: an open job record with the workload's spec for `model`, and the part's
/// manifest of `rows` ids (`request-0…`); the successes are written in `formats`
/// (with Parquet, the record holds the table layout as submit would make it). Lets
/// collect be measured or tested without running submit and poll first.
pub async fn store_ended_part(
    store: &dyn ObjectStore,
    bucket: &str,
    job_id: &str,
    model: &str,
    batch_id: &str,
    rows: usize,
    formats: &[ResultFormat],
) -> Result<(), PipelineError> {
    let mut manifest = String::with_capacity(rows * 16);
    for row in 0..rows {
        manifest.push_str(&workload::custom_id(row));
        manifest.push('\n');
    }
    store
        .put(
            &keys::part_manifest(job_id, 0),
            Bytes::from(manifest),
            PutMode::Overwrite,
        )
        .await?;
    let now = batchline::clock::Clock::timestamp(&batchline::clock::SystemClock);
    let params = workload::generation_params();
    let schema = workload::invoice_schema();
    let table = match formats.contains(&ResultFormat::Parquet) {
        true => Some(
            TableLayout::for_answers(&AnswerFormat::Schema(schema.clone()), &[])
                .map_err(batchline::Error::Config)?,
        ),
        false => None,
    };
    // Written as the record's JSON so that fields added later take their defaults.
    let record = serde_json::from_value(json!({
        "job_id": job_id,
        "source": {"bucket": bucket, "key": format!("inbox/{job_id}.jsonl"), "etag": "generated"},
        "status": "open",
        "spec": {
            "model": model,
            "schema_name": workload::SCHEMA_NAME,
            "schema": schema.schema,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "formats": formats
        },
        "table": table,
        "requests": rows,
        "input_errors": 0,
        "parts": [{
            "index": 0,
            "requests": rows,
            "batch_id": batch_id,
            "state": "completed",
            "raw_status": "completed",
            "enqueued_at": now
        }],
        "created_at": now,
        "submitted_at": now
    }))?;
    match job::create(store, record).await? {
        Some(_) => Ok(()),
        None => Err(StoreError::Conflict {
            key: keys::job_record(job_id),
        }
        .into()),
    }
}
