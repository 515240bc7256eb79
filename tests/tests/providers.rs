//! The five provider clients against the emulator (Bedrock's S3 on moto), end to end: build a batch with
//! `BatchBuilder`, create it, poll it to its end, stream its results and parse every
//! line with `ResultParser`. Every test checks the invariant: each request appears in
//! the results at most once, under its own id, and the ones missing are accounted for.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use batchline::build::{BatchBuilder, BatchPart};
use batchline::provider::config::{
    AwsCredentials, Credential, GoogleCredentials, ProviderConfig, RetryPolicy, Timeouts,
    VertexSettings,
};
use batchline::provider::{BatchProvider, BatchTags, connect};
use batchline::results::{Failure, Outcome, ResultParser, error_type};
use batchline::status::{BatchState, BatchStatus};
use batchline::storage::S3Store;
use batchline::{Error, GenerationParams, ModelRef, OutputSchema, ProviderKind, Request};
use batchline_emulator::common::ran_count;
use batchline_emulator::harness::{Moto, bedrock_settings, moto_sdk_config};
use batchline_emulator::{BatchFate, BedrockConfig, Config, Emulator, FaultPlan, HttpFault};
use bytes::Bytes;
use futures::TryStreamExt;
use serde_json::json;

const KEY: &str = "test-key";
const PROJECT: &str = "test-project";
const BUCKET: &str = "batchline-test-bucket";
/// Lifecycle step of the emulator when a test wants batches to end on their own soon.
const FAST: Duration = Duration::from_millis(20);
/// Long enough that a batch is still running when the test acts on it.
const SLOW: Duration = Duration::from_secs(30);

/// A throwaway RSA key for the emulated service account (the emulator checks the JWT's
/// claims, not its signature). Not a credential anywhere.
const TEST_SERVICE_ACCOUNT_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQC4xvUapsu05loS
fqe0dDDN5/72KXTbRAj7Rf7vGB+GY9a1jU3UCDeKhD+djATQAL4wdzevQ5yNC+FM
pPqablnHPxEyCk+6Xuh9reSAhe14J5LZ4CHjdNcUUp2I0e6AaCVMQ/p2sOTLdjaw
dNX7MJoPQgzGhdIsgSlJBH8XbENpocAtw+01sDNEi0MvEPyAUS0zxk06J7WbnIS/
xlwzD+iISWYYUSRqxVxM6Mt1cw2vKK5Q188nKnm1TfSNnpZODjDozZFsfRDSxVat
3lWQPNtKON+NdV+qplr2bmYJWQPRZJFn3nnFqLtXMCOOszV7uULoLB46TWGiEKh5
wKmIJg1fAgMBAAECggEAHeKxZlKfnvjPjQSRi6/BQa8Uv0Fm8PHjlqnfDlJzWDFS
BazpmhzhctS/VJ7UG8UK/dwXvxAAmZWC0U/bvS+SSMDMFLEIl9Gy6Q+U5i6t1mG8
MDi+nRiFkvgRGmiDRUnS7S9k1V6jWr8aIFcn/DKDsGppQOYIX4IH0z4CxPSR61sO
HLAC20yLFbbbZo+BLN8dI3Md5ng8cueeYWHsSUCfHPwUHcMawLAYxiZK2ETuBHru
03yCc4fcMN8ETFdL7IG8CWyvlZFo8/rPddcwepVmP3+KoDHCaUUB1deNTczltpim
vHRVntz7Z4ewJe6X5SQFbYJY4G5QGnElEFbPE/YC8QKBgQDi0rCtB79COCKDTumZ
lKRPSO4l9T2ZSLVytti8I+Z08Zd1yPKAAtzZh6VbWIXv3e/mTQK+l3TCIh7kLfnk
T3vOKdjdtYFbaBvBWPvyIUXslfKc4+xb/epH8vHaFHwgm8rAd1NRK3I0QrWmMpr2
owrvyyjopUcL0bsWxVyMpmi/UQKBgQDQi7FfU8GrDkUuDUlzPvEpnC90vIt2rLAD
v9S4nORk4MAfA7XZJ0NHzJVtg+ad6wZQUaXVkh8YldC6lFfgKAgjcxM4lMf0tTYR
qbhkxGs+yM7jtauFIAj5PFhw4/TBu1WCGV6kUiGCcVFlW8VYomYbRU1osRJqAI72
8ogOVxe1rwKBgHy3gmOxpc1AVmHCyxkiLPJXVHLUlKkq3HIV7bgNOVNF35TpB8Wx
TUPinN5MH2ETtCv6Xi7z0kRIRJoMWaHavmVOhyro+RaMeO5oAihReUQr8rmnbTfr
tp0XDTpvFw1K/EG1mr8/10y6/WxD2QcSARp2p6i78AOkr21G2auQeHnxAoGAAepm
lLOWQdX9uLCSjiZz3Kf8n5vjxBFOBJrMf22hg3O1EBPepcIAkjZE4R6nDahNBIvb
dBzFgFpP8obOT9bOTFUQRiLHu222s27VrMdJHOiHTfwrOSvUKUXuogrWArmPzYQi
JGxEtogH8WBobaoAOhvm3CFUQ/kBVy9fJJKUOy0CgYAqN3FsSp4KTHvkzjUJU7nk
+OD3vvLfHZJV6iD+JT0xIkLo9DiAOVU/0Di5Aknxp7Qu3+fJRhcQrKi7+a66w9M+
d1+NBUujOq0ZIhCr8FYTiG8IIgJ8WoSZLcRd+gmrQwFRWguO44nmMG/h40fGn2XJ
ddyNd3jTeky4iqw6STKyPA==
-----END PRIVATE KEY-----
";

struct Setup {
    kind: ProviderKind,
    emulator: Emulator,
    /// Bedrock's input and output bucket; stopped when the test ends.
    moto: Option<Moto>,
    provider: Arc<dyn BatchProvider>,
    model: ModelRef,
    /// The service-account file Vertex reads; deleted when the test ends.
    _credentials: Option<tempfile::NamedTempFile>,
}

fn model_for(kind: ProviderKind) -> ModelRef {
    let name = match kind {
        ProviderKind::OpenAi => "openai/gpt-4o-mini",
        ProviderKind::Anthropic => "anthropic/claude-sonnet-4-5",
        ProviderKind::Vertex => "google/gemini-2.5-flash",
        ProviderKind::Gemini => "gemini/gemini-2.5-flash",
        ProviderKind::Bedrock => "bedrock/amazon.nova-lite-v1:0",
    };
    name.parse().expect("a valid model string")
}

/// Fast retries so that storms take milliseconds, except where the server asks for more.
fn test_retry_policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 5,
        base_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(40),
        max_retry_after: Duration::from_secs(2),
    }
}

async fn setup(kind: ProviderKind, step: Duration) -> Setup {
    let moto = match kind {
        ProviderKind::Bedrock => Some(moto_with_bucket().await),
        _ => None,
    };
    let emulator = Emulator::start(Config {
        step,
        api_key: KEY.to_string(),
        s3_endpoint: moto.as_ref().map(|m| m.url.clone()),
        // These tests send a few records; Bedrock's minimum is an adjustable quota,
        // and the part builder's own minimum is tested apart.
        bedrock: BedrockConfig {
            min_records: 1,
            ..BedrockConfig::default()
        },
        ..Config::default()
    })
    .await
    .expect("emulator starts");
    let base = emulator.base_url();
    let (mut config, credentials) = match kind {
        ProviderKind::Bedrock => {
            let moto = moto.as_ref().expect("moto");
            let settings = bedrock_settings(&moto.url, BUCKET);
            (
                ProviderConfig::bedrock(Some(&base), settings).expect("bedrock config"),
                None,
            )
        }
        ProviderKind::Vertex => {
            let file = service_account_file(&base);
            let settings = VertexSettings {
                project: PROJECT.to_string(),
                location: "us-central1".to_string(),
                bucket: BUCKET.to_string(),
                storage_base_url: base.parse().expect("emulator URL"),
                credentials: GoogleCredentials::ServiceAccountFile(file.path().to_path_buf()),
            };
            (
                ProviderConfig::vertex(Some(&base), settings).expect("vertex config"),
                Some(file),
            )
        }
        _ => (
            ProviderConfig::with_api_key(&base, Credential::new(KEY).expect("key"))
                .expect("config"),
            None,
        ),
    };
    config.retry = test_retry_policy();
    config.timeouts = Timeouts {
        connect: Duration::from_secs(2),
        read: Duration::from_secs(10),
    };
    let provider = connect(kind, &config).expect("client");
    Setup {
        kind,
        emulator,
        moto,
        provider,
        model: model_for(kind),
        _credentials: credentials,
    }
}

/// A moto server with the bucket Bedrock's input and output go to.
async fn moto_with_bucket() -> Moto {
    let moto = Moto::start();
    let s3 = S3Store::client_from(&moto_sdk_config(&moto.url), true);
    s3.create_bucket()
        .bucket(BUCKET)
        .send()
        .await
        .expect("create bucket");
    moto
}

/// A service-account JSON whose `token_uri` is the emulator's OAuth endpoint.
fn service_account_file(base: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    let account = json!({
        "type": "service_account",
        "project_id": PROJECT,
        "private_key_id": "test-key-1",
        "private_key": TEST_SERVICE_ACCOUNT_KEY,
        "client_email": format!("batchline-test@{PROJECT}.iam.gserviceaccount.com"),
        "client_id": "100000000000000000001",
        "token_uri": format!("{base}/token"),
    });
    std::fs::write(file.path(), account.to_string()).expect("write service account");
    file
}

fn schema() -> OutputSchema {
    OutputSchema {
        name: "person".to_string(),
        schema: json!({
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "age": {"type": "integer", "minimum": 0, "maximum": 120}
            },
            "required": ["name", "age"],
            "additionalProperties": false
        }),
    }
}

fn params() -> GenerationParams {
    GenerationParams {
        system_prompt: Some("Extract the person mentioned in the text.".to_string()),
        ..GenerationParams::default()
    }
}

fn texts(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                "Person number {i} is called Ada and is {} years old.",
                20 + i
            )
        })
        .collect()
}

fn tags(job: &str) -> BatchTags {
    [("batchline-job", job), ("batchline-part", "0")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// One part holding every request (the tests stay far below every provider's limits).
fn build_part(s: &Setup, requests: &[Request]) -> BatchPart {
    let mut builder = BatchBuilder::new(&s.model, &schema(), &params()).expect("builder");
    for request in requests {
        let closed = builder.push(request).expect("request encodes");
        assert!(closed.is_none(), "the test batch must fit in one part");
    }
    builder.finish().pop().expect("a part with requests")
}

async fn submit(s: &Setup, requests: &[Request], job: &str) -> (BatchPart, BatchStatus) {
    let part = build_part(s, requests);
    let created = s
        .provider
        .create(&s.model.model, part.body.clone(), &tags(job))
        .await
        .unwrap_or_else(|e| panic!("{} create: {e}", s.kind));
    assert!(!created.batch_id.is_empty());
    assert!(!created.state.is_terminal(), "{created:?}");
    (part, created)
}

/// `POST /_emulator/advance {}`: every batch moves past its lifecycle stages.
async fn advance_all(s: &Setup) {
    let response = batchline_emulator::harness::http_client()
        .post(format!("{}/_emulator/advance", s.emulator.base_url()))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .expect("advance");
    assert!(response.status().is_success(), "{}", response.status());
}

async fn wait_terminal(s: &Setup, batch_id: &str) -> BatchStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = s
            .provider
            .status(batch_id)
            .await
            .unwrap_or_else(|e| panic!("{} status: {e}", s.kind));
        assert_eq!(status.batch_id, batch_id);
        if status.state.is_terminal() {
            return status;
        }
        assert!(Instant::now() < deadline, "batch never ended: {status:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn collect(s: &Setup, part: &BatchPart, batch_id: &str) -> Vec<Outcome> {
    let ids: Arc<[String]> = Arc::from(part.custom_ids.clone());
    let parser = ResultParser::new(s.kind, &schema(), ids).expect("parser");
    let lines: Vec<Bytes> = s
        .provider
        .results(batch_id)
        .await
        .unwrap_or_else(|e| panic!("{} results: {e}", s.kind))
        .try_collect()
        .await
        .unwrap_or_else(|e| panic!("{} results stream: {e}", s.kind));
    lines
        .iter()
        .enumerate()
        .map(|(i, line)| parser.parse_line(i as u64 + 1, line))
        .collect()
}

/// Checks that no id appears twice and that every id is one of the requests'; answers
/// the ids that did not come back at all.
fn missing_ids(outcomes: &[Outcome], part: &BatchPart) -> BTreeSet<String> {
    let expected: BTreeSet<String> = part.custom_ids.iter().cloned().collect();
    let mut seen = BTreeSet::new();
    for outcome in outcomes {
        let id = outcome.custom_id().to_string();
        assert!(expected.contains(&id), "unknown id {id:?} in {outcome:?}");
        assert!(seen.insert(id.clone()), "{id:?} appears twice");
    }
    expected.difference(&seen).cloned().collect()
}

fn failures(outcomes: &[Outcome]) -> BTreeMap<String, Failure> {
    outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Error(f) => Some((f.custom_id.clone(), f.clone())),
            Outcome::Success(_) => None,
        })
        .collect()
}

fn successes(outcomes: &[Outcome]) -> BTreeSet<String> {
    outcomes
        .iter()
        .filter(|o| o.is_success())
        .map(|o| o.custom_id().to_string())
        .collect()
}

async fn run_to_end(
    s: &Setup,
    requests: &[Request],
    job: &str,
) -> (BatchPart, BatchStatus, Vec<Outcome>) {
    let (part, created) = submit(s, requests, job).await;
    advance_all(s).await;
    let status = wait_terminal(s, &created.batch_id).await;
    let outcomes = collect(s, &part, &created.batch_id).await;
    (part, status, outcomes)
}

// ---------------------------------------------------------------------------------
// Scenarios, run for every provider by `per_provider!` below.

async fn normal_job(kind: ProviderKind) {
    let s = setup(kind, FAST).await;
    let requests = Request::from_texts(texts(7));
    let (part, status, outcomes) = run_to_end(&s, &requests, "normal").await;

    assert_eq!(status.state, BatchState::Completed, "{status:?}");
    assert_eq!(status.counts.succeeded, 7, "{status:?}");
    assert_eq!(status.counts.failed, 0, "{status:?}");
    assert!(status.created_at.is_some(), "{status:?}");
    assert_eq!(outcomes.len(), 7);
    assert!(missing_ids(&outcomes, &part).is_empty());
    assert_eq!(failures(&outcomes), BTreeMap::new());
    for outcome in &outcomes {
        let Outcome::Success(success) = outcome else {
            unreachable!("no failures")
        };
        assert!(success.result["name"].is_string(), "{success:?}");
        assert!(success.result["age"].is_i64(), "{success:?}");
    }
    // Message batches carry no tags; a Bedrock job's are read apart from its state.
    if !matches!(kind, ProviderKind::Anthropic | ProviderKind::Bedrock) {
        assert_eq!(
            status.tags.get("batchline-job").map(String::as_str),
            Some("normal")
        );
    }
}

async fn fault_markers(kind: ProviderKind) {
    let s = setup(kind, FAST).await;
    let mut all = texts(3);
    let faults = [
        "refusal",
        "non_json",
        "provider_error",
        "schema_break",
        "truncate",
    ];
    all.extend(
        faults
            .iter()
            .map(|f| format!("Person Bob, 40. [[fault:{f}]]")),
    );
    let requests = Request::from_texts(all);
    let (part, status, outcomes) = run_to_end(&s, &requests, "faults").await;

    assert!(matches!(status.state, BatchState::Completed), "{status:?}");
    assert!(missing_ids(&outcomes, &part).is_empty());
    let expected_ok: BTreeSet<String> = ["request-0", "request-1", "request-2"]
        .map(String::from)
        .into_iter()
        .collect();
    assert_eq!(successes(&outcomes), expected_ok);
    let failed = failures(&outcomes);
    assert_eq!(failed.len(), faults.len(), "{failed:#?}");
    let type_of = |i: usize| failed[&format!("request-{i}")].error_type.clone();
    assert_eq!(type_of(3), error_type::REFUSAL, "{:?}", failed["request-3"]);
    // Bedrock answers through a tool call, which is always JSON: an answer that is not
    // JSON arrives as plain text without the tool call. The others (Anthropic through
    // `output_config` on Claude 4.5) answer in text, and such an answer is invalid JSON.
    let not_json = match kind {
        ProviderKind::Bedrock => error_type::NO_STRUCTURED_OUTPUT,
        _ => error_type::INVALID_JSON,
    };
    assert_eq!(type_of(4), not_json, "{:?}", failed["request-4"]);
    let ours = [
        error_type::REFUSAL,
        error_type::INVALID_JSON,
        error_type::SCHEMA_MISMATCH,
        error_type::MALFORMED_LINE,
        error_type::NO_STRUCTURED_OUTPUT,
    ];
    // A provider error keeps the provider's own code.
    assert!(
        !ours.contains(&type_of(5).as_str()),
        "{:?}",
        failed["request-5"]
    );
    assert_eq!(
        type_of(6),
        error_type::SCHEMA_MISMATCH,
        "{:?}",
        failed["request-6"]
    );
    assert_eq!(
        type_of(7),
        error_type::INVALID_JSON,
        "{:?}",
        failed["request-7"]
    );
}

/// Every call that creates or reads the batch first meets 429s with `Retry-After: 1`,
/// and the result download meets 503s; the job still completes.
async fn rate_limit_storm(kind: ProviderKind) {
    let s = setup(kind, FAST).await;
    let (limited, unavailable) = match kind {
        ProviderKind::OpenAi => (("POST", "/v1/batches"), ("GET", "/v1/files/")),
        ProviderKind::Anthropic => (
            ("POST", "/v1/messages/batches"),
            ("GET", "/v1/messages/batches/"),
        ),
        ProviderKind::Vertex => (("POST", "/upload/storage/"), ("GET", "/v1/projects/")),
        ProviderKind::Gemini => (
            ("POST", "/upload/v1beta/files"),
            ("GET", "/v1beta/batches/"),
        ),
        ProviderKind::Bedrock => (
            ("POST", "/model-invocation-job"),
            ("GET", "/model-invocation-job/"),
        ),
    };
    let fault =
        |(method, prefix): (&str, &str), status: u16, retry_after_s: Option<u64>| HttpFault {
            method: Some(method.to_string()),
            path_prefix: prefix.to_string(),
            status,
            retry_after_s,
            times: 2,
            delay_ms: 0,
        };
    s.emulator.set_faults(FaultPlan {
        http: vec![fault(limited, 429, Some(1)), fault(unavailable, 503, None)],
        ..FaultPlan::default()
    });
    let started = Instant::now();
    let requests = Request::from_texts(texts(4));
    let (part, status, outcomes) = run_to_end(&s, &requests, "storm").await;

    assert_eq!(status.state, BatchState::Completed, "{status:?}");
    assert!(missing_ids(&outcomes, &part).is_empty());
    assert_eq!(successes(&outcomes).len(), 4);
    // Two waits of the one second the server asked for (the AWS SDK's retries back off
    // on their own schedule instead).
    if kind != ProviderKind::Bedrock {
        assert!(
            started.elapsed() >= Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
    let left: Vec<u32> = s
        .emulator
        .shared
        .faults
        .lock()
        .unwrap()
        .http
        .iter()
        .map(|f| f.times)
        .collect();
    assert_eq!(left, [0, 0], "every planned fault was met");
}

/// A provider that keeps failing: the client gives up after its attempts, with the
/// count and the provider's message, and without the key.
async fn retries_exhausted(kind: ProviderKind) {
    let s = setup(kind, SLOW).await;
    let requests = Request::from_texts(texts(2));
    let (_, created) = submit(&s, &requests, "exhausted").await;
    let prefix = match kind {
        ProviderKind::OpenAi => "/v1/batches",
        ProviderKind::Anthropic => "/v1/messages/batches",
        ProviderKind::Vertex => "/v1/projects",
        ProviderKind::Gemini => "/v1beta/batches",
        ProviderKind::Bedrock => "/model-invocation-job/",
    };
    s.emulator.set_faults(FaultPlan {
        http: vec![HttpFault {
            method: Some("GET".to_string()),
            path_prefix: prefix.to_string(),
            status: 503,
            retry_after_s: None,
            times: 100,
            delay_ms: 0,
        }],
        ..FaultPlan::default()
    });
    let err = s.provider.status(&created.batch_id).await.unwrap_err();
    match &err {
        Error::Transport {
            attempts, message, ..
        } => {
            assert_eq!(*attempts, test_retry_policy().max_attempts);
            assert!(
                message.contains("503") && message.contains("emulated fault"),
                "{message}"
            );
        }
        other => panic!("expected Transport, got {other:?}"),
    }
    assert!(!format!("{err} {err:?}").contains(KEY));
    let left = s.emulator.shared.faults.lock().unwrap().http[0].times;
    assert_eq!(left, 100 - test_retry_policy().max_attempts);
}

/// An expired batch: half the requests ran; the others come back as `expired` or not
/// at all, and together they are every request exactly once.
async fn expired_with_partial_results(kind: ProviderKind) {
    let s = setup(kind, FAST).await;
    s.emulator.set_faults(FaultPlan {
        batch_fate: BatchFate::Expire,
        partial: 0.5,
        ..FaultPlan::default()
    });
    let requests = Request::from_texts(texts(10));
    let (part, status, outcomes) = run_to_end(&s, &requests, "expired").await;

    assert_eq!(status.state, BatchState::Expired, "{status:?}");
    let ran = ran_count(10, 0.5);
    let missing = missing_ids(&outcomes, &part);
    assert_eq!(successes(&outcomes).len(), ran, "{outcomes:#?}");
    let failed = failures(&outcomes);
    for failure in failed.values() {
        assert_eq!(failure.error_type, error_type::EXPIRED, "{failure:?}");
    }
    assert_eq!(ran + failed.len() + missing.len(), 10);
}

/// Every request fails; OpenAI then has no output file, only an error file.
async fn all_requests_fail(kind: ProviderKind) {
    let s = setup(kind, FAST).await;
    s.emulator.set_faults(FaultPlan {
        batch_fate: BatchFate::AllFail,
        ..FaultPlan::default()
    });
    let requests = Request::from_texts(texts(5));
    let (part, status, outcomes) = run_to_end(&s, &requests, "allfail").await;

    assert!(
        matches!(status.state, BatchState::Completed | BatchState::Failed),
        "{status:?}"
    );
    let missing = missing_ids(&outcomes, &part);
    assert!(successes(&outcomes).is_empty(), "{outcomes:#?}");
    assert_eq!(failures(&outcomes).len() + missing.len(), 5);
    if kind == ProviderKind::OpenAi {
        assert_eq!(status.state, BatchState::Completed);
        assert_eq!(status.counts.failed, 5, "{status:?}");
        assert!(missing.is_empty(), "every failure is in the error file");
    }
}

/// A batch the provider rejects as a whole.
async fn validation_failure(kind: ProviderKind) {
    let s = setup(kind, FAST).await;
    s.emulator.set_faults(FaultPlan {
        batch_fate: BatchFate::FailValidation,
        ..FaultPlan::default()
    });
    let requests = Request::from_texts(texts(3));
    let (part, status, outcomes) = run_to_end(&s, &requests, "invalid").await;

    let missing = missing_ids(&outcomes, &part);
    assert!(successes(&outcomes).is_empty(), "{outcomes:#?}");
    assert_eq!(failures(&outcomes).len() + missing.len(), 3);
    if kind == ProviderKind::Anthropic {
        // Message Batches validate while processing: the batch ends, each request errored.
        assert_eq!(status.state, BatchState::Completed, "{status:?}");
        assert!(missing.is_empty());
    } else {
        assert_eq!(status.state, BatchState::Failed, "{status:?}");
        assert!(status.error.is_some(), "{status:?}");
    }
}

async fn cancel(kind: ProviderKind) {
    let s = setup(kind, SLOW).await;
    let requests = Request::from_texts(texts(4));
    let (part, created) = submit(&s, &requests, "cancel").await;
    let cancelling = s.provider.cancel(&created.batch_id).await.expect("cancel");
    assert_eq!(cancelling.batch_id, created.batch_id);
    assert!(
        matches!(
            cancelling.state,
            BatchState::Processing | BatchState::Cancelled
        ),
        "{cancelling:?}"
    );
    advance_all(&s).await;
    let status = wait_terminal(&s, &created.batch_id).await;
    assert_eq!(status.state, BatchState::Cancelled, "{status:?}");
    let outcomes = collect(&s, &part, &created.batch_id).await;
    let missing = missing_ids(&outcomes, &part);
    let failed = failures(&outcomes);
    for failure in failed.values() {
        assert_eq!(failure.error_type, error_type::CANCELLED, "{failure:?}");
    }
    assert_eq!(successes(&outcomes).len() + failed.len() + missing.len(), 4);
}

/// More batches than one page holds: `list` follows the pages, `find` uses the tags.
async fn list_and_find(kind: ProviderKind) {
    let s = setup(kind, SLOW).await;
    let part = build_part(&s, &Request::from_texts(texts(1)));
    let mut created = Vec::new();
    for i in 0..105 {
        let status = s
            .provider
            .create(
                &s.model.model,
                part.body.clone(),
                &tags(&format!("job-{i}")),
            )
            .await
            .unwrap_or_else(|e| panic!("{kind} create {i}: {e}"));
        created.push(status.batch_id);
    }
    let listed: BTreeSet<String> = s
        .provider
        .list()
        .await
        .expect("list")
        .into_iter()
        .map(|b| b.batch_id)
        .collect();
    assert_eq!(listed.len(), 105);
    assert_eq!(listed, created.iter().cloned().collect::<BTreeSet<_>>());

    let found = s.provider.find(&tags("job-42")).await.expect("find");
    if kind == ProviderKind::Anthropic {
        assert_eq!(found, None, "message batches carry no tags");
    } else {
        let found = found.expect("the tagged batch is found");
        assert_eq!(found.batch_id, created[42]);
        assert_eq!(s.provider.find(&tags("job-999")).await.expect("find"), None);
    }
}

/// A key the provider does not accept: a clear API error, never the key.
async fn wrong_key_is_reported_without_the_key(kind: ProviderKind) {
    let s = setup(kind, FAST).await;
    let base = s.emulator.base_url();
    const WRONG: &str = "sk-wrong-and-secret-0123456789";
    let config = match kind {
        ProviderKind::Vertex => {
            let settings = VertexSettings {
                project: PROJECT.to_string(),
                location: "us-central1".to_string(),
                bucket: BUCKET.to_string(),
                storage_base_url: base.parse().expect("emulator URL"),
                credentials: GoogleCredentials::StaticToken(Credential::new(WRONG).expect("key")),
            };
            ProviderConfig::vertex(Some(&base), settings).expect("config")
        }
        ProviderKind::Bedrock => {
            let mut settings = bedrock_settings(&s.moto.as_ref().expect("moto").url, BUCKET);
            settings.credentials = AwsCredentials::Static {
                access_key_id: "test".to_string(),
                secret_access_key: Credential::new(WRONG).expect("key"),
            };
            ProviderConfig::bedrock(Some(&base), settings).expect("config")
        }
        _ => ProviderConfig::with_api_key(&base, Credential::new(WRONG).expect("key"))
            .expect("config"),
    };
    let provider = connect(kind, &config).expect("client");
    let err = provider.list().await.unwrap_err();
    // Gemini answers a bad key with 400 INVALID_ARGUMENT, AWS a bad signature with 403,
    // the others with 401.
    let expected_status = match kind {
        ProviderKind::Gemini => 400,
        ProviderKind::Bedrock => 403,
        _ => 401,
    };
    assert!(
        matches!(&err, Error::Api { status, .. } if *status == expected_status),
        "{err:?}"
    );
    assert!(
        !format!("{err} {err:?} {provider:?}").contains(WRONG),
        "{err}"
    );
}

macro_rules! per_provider {
    ($($module:ident => $kind:expr),* $(,)?) => {$(
        mod $module {
            use super::*;

            #[tokio::test]
            async fn normal_job() {
                super::normal_job($kind).await
            }

            #[tokio::test]
            async fn fault_markers() {
                super::fault_markers($kind).await
            }

            #[tokio::test]
            async fn rate_limit_storm() {
                super::rate_limit_storm($kind).await
            }

            #[tokio::test]
            async fn retries_exhausted() {
                super::retries_exhausted($kind).await
            }

            #[tokio::test]
            async fn expired_with_partial_results() {
                super::expired_with_partial_results($kind).await
            }

            #[tokio::test]
            async fn all_requests_fail() {
                super::all_requests_fail($kind).await
            }

            #[tokio::test]
            async fn validation_failure() {
                super::validation_failure($kind).await
            }

            #[tokio::test]
            async fn cancel() {
                super::cancel($kind).await
            }

            #[tokio::test]
            async fn list_and_find() {
                super::list_and_find($kind).await
            }

            #[tokio::test]
            async fn wrong_key_is_reported_without_the_key() {
                super::wrong_key_is_reported_without_the_key($kind).await
            }
        }
    )*};
}

per_provider! {
    openai => ProviderKind::OpenAi,
    anthropic => ProviderKind::Anthropic,
    vertex => ProviderKind::Vertex,
    gemini => ProviderKind::Gemini,
    bedrock => ProviderKind::Bedrock,
}

/// Anthropic's `results_url` pointing elsewhere is refused before anything is sent.
/// (Also unit-tested in the client; here against a real batch id shape.)
#[tokio::test]
async fn anthropic_results_url_must_be_on_the_api_host() {
    let s = setup(ProviderKind::Anthropic, FAST).await;
    // The client is configured for `localhost` while the emulator hands out
    // `127.0.0.1` URLs: same server, different host, so the URL must be refused.
    let port = s.emulator.addr.port();
    let config = ProviderConfig::with_api_key(
        &format!("http://localhost:{port}"),
        Credential::new(KEY).expect("key"),
    )
    .expect("config");
    let provider = connect(ProviderKind::Anthropic, &config).expect("client");
    let part = build_part(&s, &Request::from_texts(texts(2)));
    let created = provider
        .create(&s.model.model, part.body.clone(), &BatchTags::new())
        .await
        .expect("create");
    advance_all(&s).await;
    let status = wait_terminal(&s, &created.batch_id).await;
    assert_eq!(status.state, BatchState::Completed);
    let err = match provider.results(&created.batch_id).await {
        Ok(_) => panic!("a results_url on another host was followed"),
        Err(err) => err,
    };
    assert!(matches!(err, Error::ForeignHost { .. }), "{err:?}");
}
