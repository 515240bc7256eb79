//! Test support for end-to-end pipeline tests: a moto server (real S3 and SQS
//! protocols) started on a free port, the provider emulator in-process, and the
//! pipeline context wired to both through the real AWS SDK.
#![allow(dead_code)] // each test binary uses a different subset

pub mod crash;
pub mod options;
pub mod report;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lambda_events::event::s3::S3Event;
use aws_lambda_events::event::sqs::SqsEvent;
use batchline::ledger::DynamoLedger;
use batchline::model::ProviderKind;
use batchline::pipeline::job::{self, JobRecord, keys};
use batchline::pipeline::{Context, ProviderSource, Settings, events};
use batchline::queue::SqsQueue;
use batchline::storage::S3Store;
use batchline_emulator::harness::moto_sdk_config;
use batchline_emulator::{BedrockConfig, Config, Emulator};
use bytes::Bytes;
use serde_json::{Value, json};

pub use batchline_emulator::harness::{API_KEY, EmulatorProviders, Moto};

pub const BUCKET: &str = "batchline-test";
/// Bedrock's record minimum in these tests, on both sides (the emulator and the
/// pipeline's settings), as for an account whose quota was lowered: the per-provider
/// tests send a few rows. Tests of the minimum itself restore Bedrock's default 100.
pub const TEST_BEDROCK_MIN_RECORDS: usize = 1;
/// The success ledger's table, as the template makes it.
pub const LEDGER_TABLE: &str = "batchline-ledger";

/// Creates the ledger table in moto, keyed as the template keys it, and returns a client.
async fn create_ledger_table(sdk: &aws_types::SdkConfig) -> aws_sdk_dynamodb::Client {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    };
    let client = aws_sdk_dynamodb::Client::new(sdk);
    client
        .create_table()
        .table_name(LEDGER_TABLE)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("row")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .expect("attribute"),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("row")
                .key_type(KeyType::Hash)
                .build()
                .expect("key"),
        )
        .send()
        .await
        .expect("create ledger table");
    client
}

/// The emulator's configuration in these tests: lifecycle `step`, `api_key`, and
/// Bedrock's S3 on `moto`.
pub fn emulator_config(moto: &Moto, step: Duration, api_key: &str) -> Config {
    Config {
        step,
        api_key: api_key.into(),
        s3_endpoint: Some(moto.url.clone()),
        bedrock: BedrockConfig {
            min_records: TEST_BEDROCK_MIN_RECORDS,
            ..BedrockConfig::default()
        },
        ..Config::default()
    }
}

/// moto + emulator + the pipeline context, for one test.
pub struct Harness {
    pub moto: Moto,
    pub emulator: Emulator,
    pub ctx: Context,
    pub s3: aws_sdk_s3::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub queue_url: String,
}

impl Harness {
    pub async fn start() -> Self {
        Self::start_with_step(Duration::from_millis(50)).await
    }

    /// [`Self::start`] with batches spending `step` in each lifecycle stage.
    pub async fn start_with_step(step: Duration) -> Self {
        let moto = Moto::start();
        let emulator = Emulator::start(emulator_config(&moto, step, API_KEY))
            .await
            .expect("emulator");
        let sdk = moto_sdk_config(&moto.url);
        let s3 = S3Store::client_from(&sdk, true);
        let sqs = aws_sdk_sqs::Client::new(&sdk);
        s3.create_bucket()
            .bucket(BUCKET)
            .send()
            .await
            .expect("create bucket");
        s3.put_bucket_versioning()
            .bucket(BUCKET)
            .versioning_configuration(
                aws_sdk_s3::types::VersioningConfiguration::builder()
                    .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                    .build(),
            )
            .send()
            .await
            .expect("versioning");
        let queue_url = sqs
            .create_queue()
            .queue_name("batchline-ready")
            .send()
            .await
            .expect("create queue")
            .queue_url()
            .expect("queue url")
            .to_string();
        let ctx = Context {
            store: Arc::new(S3Store::new(s3.clone(), BUCKET)),
            bucket: BUCKET.into(),
            queue: Arc::new(SqsQueue::new(sqs.clone(), queue_url.clone())),
            poll_jobs: None,
            providers: Arc::new(
                EmulatorProviders::new(emulator.base_url()).with_bedrock_s3(&moto.url, BUCKET),
            ),
            settings: Settings {
                bedrock_min_records: TEST_BEDROCK_MIN_RECORDS,
                ..Settings::default()
            },
            clock: Arc::new(batchline::clock::SystemClock),
            submit_queue: None,
            metrics: Arc::new(batchline::metrics::MemorySink::new()),
            ledger: Some(Arc::new(DynamoLedger::new(
                create_ledger_table(&sdk).await,
                LEDGER_TABLE,
            ))),
        };
        Self {
            moto,
            emulator,
            ctx,
            s3,
            sqs,
            queue_url,
        }
    }

    pub fn providers(&self) -> EmulatorProviders {
        EmulatorProviders::new(self.emulator.base_url()).with_bedrock_s3(&self.moto.url, BUCKET)
    }

    /// Uploads and returns the new version id.
    pub async fn upload(&self, key: &str, body: impl Into<Bytes>) -> String {
        let out = self
            .s3
            .put_object()
            .bucket(BUCKET)
            .key(key)
            .body(aws_sdk_s3::primitives::ByteStream::from(body.into()))
            .send()
            .await
            .expect("upload");
        out.version_id().expect("versioned bucket").to_string()
    }

    /// The S3 notification for `key`, URL-encoded as S3 sends it.
    pub fn s3_event(&self, key: &str, version: &str) -> S3Event {
        let encoded: String = url_encode_key(key);
        serde_json::from_value(json!({"Records": [{
            "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
            "eventTime": "2026-11-21T00:00:00.000Z", "eventName": "ObjectCreated:Put",
            "userIdentity": {"principalId": "test"}, "requestParameters": {"sourceIPAddress": "127.0.0.1"},
            "responseElements": {},
            "s3": {"s3SchemaVersion": "1.0", "configurationId": "inbox",
                   "bucket": {"name": BUCKET, "ownerIdentity": {"principalId": "test"}, "arn": format!("arn:aws:s3:::{BUCKET}")},
                   "object": {"key": encoded, "size": 1, "eTag": "x", "versionId": version, "sequencer": "0"}}
        }]}))
        .expect("S3 event")
    }

    /// Uploads and plays the S3 notification; returns the job id.
    pub async fn submit(&self, key: &str, body: impl Into<Bytes>) -> String {
        let version = self.upload(key, body).await;
        self.submit_version(key, &version).await
    }

    pub async fn submit_version(&self, key: &str, version: &str) -> String {
        let outcomes = events::handle_s3_event(&self.ctx, self.s3_event(key, version))
            .await
            .expect("submit");
        let value = serde_json::to_value(&outcomes).expect("outcome json");
        value[0]["job_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no job in {value}"))
            .to_string()
    }

    /// Receives what is on the ready queue as one SQS event (at most 10 messages).
    pub async fn receive(&self) -> Option<(SqsEvent, Vec<String>)> {
        let out = self
            .sqs
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(10)
            .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
            .visibility_timeout(0)
            .send()
            .await
            .expect("receive");
        let messages = out.messages();
        if messages.is_empty() {
            return None;
        }
        let records: Vec<Value> = messages
            .iter()
            .map(|m| {
                let attributes: HashMap<String, String> = m
                    .attributes()
                    .map(|a| a.iter().map(|(k, v)| (k.as_str().to_string(), v.clone())).collect())
                    .unwrap_or_default();
                json!({
                    "messageId": m.message_id(), "receiptHandle": m.receipt_handle(), "body": m.body(),
                    "attributes": attributes, "messageAttributes": {}, "md5OfBody": m.md5_of_body(),
                    "eventSource": "aws:sqs", "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:batchline-ready",
                    "awsRegion": "us-east-1"
                })
            })
            .collect();
        let handles = messages
            .iter()
            .filter_map(|m| m.receipt_handle().map(str::to_string))
            .collect();
        Some((
            serde_json::from_value(json!({ "Records": records })).expect("SQS event"),
            handles,
        ))
    }

    /// Delivers queued messages to collect, deleting those it did not report failed.
    pub async fn collect_queued(&self) -> usize {
        let mut delivered = 0;
        while let Some((batch, _)) = self.deliver_with(&self.ctx).await {
            delivered += batch;
        }
        delivered
    }

    /// Polls and collects until the job is closed, ending batches early through the
    /// emulator's control endpoint after the first poll.
    pub async fn run_to_end(&self, job: &str) -> JobRecord {
        self.poll_until_closed(job, true, Duration::from_secs(60))
            .await
    }

    /// Polls and collects until the job is closed, batches moving through their
    /// lifecycles in real time (ending them early would free a provider's quota).
    pub async fn run_in_real_time(&self, job: &str) -> JobRecord {
        self.poll_until_closed(job, false, Duration::from_secs(120))
            .await
    }

    async fn poll_until_closed(&self, job: &str, end_early: bool, limit: Duration) -> JobRecord {
        let deadline = Instant::now() + limit;
        loop {
            let record = self.record(job).await;
            if record.status.is_closed() {
                return record;
            }
            assert!(
                Instant::now() < deadline,
                "job {job} did not finish: {record:?}"
            );
            batchline::pipeline::poll(&self.ctx).await.expect("poll");
            self.emulator.finish_all(end_early);
            self.collect_queued().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn record(&self, job: &str) -> JobRecord {
        job::load(self.ctx.store.as_ref(), job)
            .await
            .expect("job record")
            .record
    }

    pub async fn get_json_lines(&self, key: &str) -> Vec<Value> {
        let (_, body) = self.ctx.store.get(key).await.expect(key);
        body.split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).expect("result line is JSON"))
            .collect()
    }

    /// Reads every result file of the job and checks the invariant: each expected id
    /// exactly once, as a success, an error or a skipped row; nothing else; summary
    /// agrees.
    pub async fn assert_invariant(&self, job: &str, expected_ids: &[String]) -> JobResults {
        let summary: Value = serde_json::from_slice(
            &self
                .ctx
                .store
                .get(&keys::summary(job))
                .await
                .expect("summary")
                .1,
        )
        .expect("summary JSON");
        let mut results = JobResults {
            summary,
            ..JobResults::default()
        };
        for key in self
            .ctx
            .store
            .list(&format!("results/{job}/"))
            .await
            .expect("list")
        {
            if key.ends_with(".jsonl") {
                let lines = self.get_json_lines(&key).await;
                if key.starts_with(&format!("results/{job}/skipped")) {
                    results.skipped.extend(lines);
                } else if key.contains("/successes/") {
                    results.successes.extend(lines);
                } else {
                    results.errors.extend(lines);
                }
            }
        }
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for line in results
            .successes
            .iter()
            .chain(&results.errors)
            .chain(&results.skipped)
        {
            let id = line["custom_id"].as_str().expect("custom_id").to_string();
            *seen.entry(id).or_default() += 1;
        }
        let expected: BTreeMap<String, usize> =
            expected_ids.iter().map(|id| (id.clone(), 1)).collect();
        assert_eq!(seen, expected, "every request exactly once (job {job})");
        let summary = &results.summary;
        assert_eq!(
            summary["succeeded"].as_u64(),
            Some(results.successes.len() as u64),
            "{summary}"
        );
        assert_eq!(
            summary["failed"].as_u64(),
            Some(results.errors.len() as u64),
            "{summary}"
        );
        assert_eq!(
            summary["skipped"].as_u64(),
            Some(results.skipped.len() as u64),
            "{summary}"
        );
        assert_eq!(
            summary["requests"].as_u64(),
            Some(expected_ids.len() as u64),
            "{summary}"
        );
        assert_eq!(summary["invariant_holds"], json!(true), "{summary}");
        // Independently of the submit path: a completed job read every byte of the
        // object as S3 stores it.
        if summary["status"] == "completed" {
            // A re-run job reads its rows from the earlier job's upload.
            let source = match &summary["rerun_of"] {
                Value::Null => &summary["source"],
                rerun => &rerun["source"],
            };
            let head = self
                .s3
                .head_object()
                .bucket(BUCKET)
                .key(source["key"].as_str().expect("source key"))
                .set_version_id(source["version_id"].as_str().map(str::to_string))
                .send()
                .await
                .expect("head the upload");
            let size = head.content_length().expect("size") as u64;
            assert_eq!(
                summary["input"],
                json!({"object_bytes": size, "bytes_read": size, "complete": true}),
                "{summary}"
            );
        }
        results
    }

    pub async fn batches_created(&self, kind: ProviderKind) -> usize {
        let provider = self.providers().provider(kind).await.expect("provider");
        provider.list().await.expect("list").len()
    }
}

#[derive(Debug, Default)]
pub struct JobResults {
    pub summary: Value,
    pub successes: Vec<Value>,
    pub errors: Vec<Value>,
    /// Rows not sent (`skip_succeeded`), each with the job that has its success.
    pub skipped: Vec<Value>,
}

impl JobResults {
    pub fn error_types(&self) -> BTreeMap<String, String> {
        self.errors
            .iter()
            .map(|e| {
                (
                    e["custom_id"].as_str().unwrap_or_default().to_string(),
                    e["error_type"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }
}

/// S3's notification encoding: `+` for spaces, percent-encoding for the rest.
pub fn url_encode_key(key: &str) -> String {
    key.split(' ')
        .map(|part| percent_encoding::utf8_percent_encode(part, KEY_SET).to_string())
        .collect::<Vec<_>>()
        .join("+")
}

const KEY_SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'_')
    .remove(b'.');

pub fn model_for(kind: ProviderKind) -> &'static str {
    match kind {
        ProviderKind::OpenAi => "openai/gpt-4o-mini",
        ProviderKind::Anthropic => "anthropic/claude-3-5-haiku-latest",
        ProviderKind::Vertex => "google/gemini-2.5-flash-lite",
        ProviderKind::Gemini => "gemini/gemini-2.5-flash-lite",
        ProviderKind::Bedrock => "bedrock/amazon.nova-lite-v1:0",
    }
}

/// The workload's invoice schema as it goes into a job spec.
pub fn invoice_schema() -> Value {
    batchline_emulator::workload::invoice_schema().schema
}

pub fn header(kind: ProviderKind, extra: Value) -> String {
    let mut spec = json!({
        "model": model_for(kind),
        "schema_name": "invoice",
        "schema": invoice_schema(),
        "system_prompt": "Extract the invoice.",
        "max_tokens": 256
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    json!({ "spec": spec }).to_string()
}

/// A job file: header + `n` text requests `doc-0..n`, with `extra_lines` appended.
pub fn job_file(kind: ProviderKind, n: usize, extra_lines: &[String]) -> (String, Vec<String>) {
    job_file_with(kind, json!({}), n, extra_lines)
}

/// [`job_file`] with `spec` merged into the header's spec.
pub fn job_file_with(
    kind: ProviderKind,
    spec: Value,
    n: usize,
    extra_lines: &[String],
) -> (String, Vec<String>) {
    let mut lines = vec![header(kind, spec)];
    let mut ids = Vec::new();
    for i in 0..n {
        let id = format!("doc-{i}");
        lines.push(
            json!({"custom_id": id, "text": format!("Invoice {i} from ACME, total {i}.50 EUR")})
                .to_string(),
        );
        ids.push(id);
    }
    lines.extend(extra_lines.iter().cloned());
    (lines.join("\n") + "\n", ids)
}
