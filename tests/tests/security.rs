//! Security, end to end: an API key never leaks (logs, S3 objects, error messages),
//! credentials only go to the configured provider host, ids and keys cannot escape
//! the job's prefixes, and size caps bound what one upload can make a function do.
//! (The SAM template's IAM, bucket and notification rules are checked by
//! `tests/infra/test_template.py`.)

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use batchline::model::ProviderKind;
use batchline::pipeline::collect::{ReadyMessage, collect};
use batchline::pipeline::job::{JobStatus, keys};
use batchline::pipeline::secrets::SecretReader;
use batchline::pipeline::{PipelineError, Settings, poll};
use batchline::provider::config::Credential;
use batchline_emulator::harness::{EmulatorProviders, Moto, http_client, moto_sdk_config};
use batchline_emulator::{FaultPlan, HttpFault};
use serde_json::{Value, json};
use support::options::{HarnessOptions, TunedProviders};
use support::report::{BatchCount, Category, Measured, record};
use support::{BUCKET, Harness, job_file};

const FAKE_KEY: &str = "sk-batchline-FAKE-7f3a9c1e5d2b4a60";
const WRONG_KEY: &str = "sk-batchline-WRONG-0d9e8c7b6a5f4e3d";

/// Everything every test of this binary logs, down to trace level, from every crate
/// (HTTP and TLS libraries included), captured once for the process.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || CaptureWriter(writer.clone()))
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_global_default(subscriber)
            .expect("one subscriber per test binary");
        buffer
    })
    .clone()
}

struct CaptureWriter(Arc<Mutex<Vec<u8>>>);

impl Write for CaptureWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every object in the bucket, every version.
async fn all_objects(h: &Harness) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let versions =
        h.s3.list_object_versions()
            .bucket(BUCKET)
            .send()
            .await
            .expect("list versions");
    for version in versions.versions() {
        let (Some(key), Some(id)) = (version.key(), version.version_id()) else {
            continue;
        };
        let object =
            h.s3.get_object()
                .bucket(BUCKET)
                .key(key)
                .version_id(id)
                .send()
                .await
                .expect("get object");
        let body = object
            .body
            .collect()
            .await
            .expect("body")
            .into_bytes()
            .to_vec();
        out.push((key.to_string(), body));
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fake_api_key_appears_in_no_log_no_object_and_no_error() {
    let logs = captured_logs();
    let h = Harness::start_with(HarnessOptions {
        api_key: Some(FAKE_KEY.into()),
        ..HarnessOptions::default()
    })
    .await;
    let mut errors: Vec<String> = Vec::new();
    for kind in ProviderKind::ALL {
        // Retries, refusals and rate limits on the way: error paths log the most.
        h.emulator.set_faults(FaultPlan {
            http: vec![HttpFault {
                method: Some("GET".into()),
                path_prefix: "/".into(),
                status: 500,
                retry_after_s: None,
                times: 2,
                delay_ms: 0,
            }],
            ..FaultPlan::default()
        });
        let extra = [
            json!({"custom_id": "rl", "text": "Invoice [[fault:rate_limit]]"}).to_string(),
            json!({"custom_id": "broken", "text": "Invoice [[fault:schema_break]]"}).to_string(),
            format!("not json {FAKE_KEY}"),
        ];
        let (body, mut ids) = job_file(kind, 3, &extra);
        ids.extend(["rl".to_string(), "broken".to_string(), "line-7".to_string()]);
        let job = h.submit(&format!("inbox/{kind}/secret.jsonl"), body).await;
        h.run_to_close(&job).await;
        let results = h
            .check_scenario(
                Category::Fault,
                &format!("{kind}: a whole job with a fake key"),
                &job,
                &ids,
                BatchCount::default(),
            )
            .await;
        for error in &results.errors {
            errors.push(error["error_message"].to_string());
        }
        // A wrong key: the provider's refusal must not echo either key. Bedrock has no
        // key: the functions' role signs its calls.
        if kind == ProviderKind::Bedrock {
            continue;
        }
        let mut wrong = h.ctx.clone();
        wrong.providers = Arc::new(TunedProviders {
            inner: h.providers(),
            key: Some(Credential::new(WRONG_KEY).expect("key")),
            read_timeout: None,
        });
        let (body, _) = job_file(kind, 1, &[]);
        let key = format!("inbox/{kind}/wrong-key.jsonl");
        let version = h.upload(&key, body).await;
        let err = batchline::pipeline::events::handle_s3_event(&wrong, h.s3_event(&key, &version))
            .await
            .expect_err("a wrong key cannot submit");
        errors.push(err.to_string());
        errors.push(format!("{err:?}"));
        errors.push(format!("{:?}", h.ctx));
    }
    h.emulator.set_faults(FaultPlan::default());
    // One line of the job carries the key as text: it must be refused without being
    // quoted back. Every other place is checked for both keys.
    for (key, body) in all_objects(&h).await {
        let uploaded = key.starts_with("inbox/");
        assert!(
            uploaded || !contains(&body, FAKE_KEY),
            "{key} holds the key"
        );
        assert!(!contains(&body, WRONG_KEY), "{key} holds the wrong key");
    }
    for error in &errors {
        assert!(
            !error.contains(FAKE_KEY) && !error.contains(WRONG_KEY),
            "{error}"
        );
    }
    let logs = String::from_utf8_lossy(&logs.lock().expect("logs")).to_string();
    assert!(logs.contains("submitted part"), "the capture works");
    assert!(
        logs.contains("retrying provider request"),
        "error paths were logged"
    );
    for secret in [FAKE_KEY, WRONG_KEY] {
        if let Some(at) = logs.find(secret) {
            panic!(
                "a key in the logs: …{}…",
                &logs[at.saturating_sub(200)..(at + 60).min(logs.len())]
            );
        }
    }
}

/// The provider is configured as `localhost`, but Anthropic's `results_url` names
/// `127.0.0.1`: another host, so the key is not sent there. Deliveries fail; the
/// last one records every request as unreadable rather than leaving the job open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_results_url_on_another_host_is_refused() {
    let _logs = captured_logs();
    let h = Harness::start().await;
    h.emulator.finish_all(true);
    let kind = ProviderKind::Anthropic;
    let (body, ids) = job_file(kind, 3, &[]);
    let job = h.submit("inbox/anthropic/foreign.jsonl", body).await;
    poll(&h.ctx).await.expect("poll");
    let mut foreign = h.ctx.clone();
    let base = h.emulator.base_url().replace("127.0.0.1", "localhost");
    foreign.providers = Arc::new(EmulatorProviders::new(base));
    let message = ReadyMessage {
        job_id: job.clone(),
        part: 0,
    };
    let err = collect(&foreign, &message, false)
        .await
        .expect_err("a foreign results_url");
    assert!(
        matches!(
            &err,
            PipelineError::Provider(batchline::Error::ForeignHost { .. })
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("refusing to follow"), "{err}");
    collect(&foreign, &message, true)
        .await
        .expect("the last delivery closes the part");
    let results = h
        .check_scenario(
            Category::Fault,
            "anthropic: results_url on another host",
            &job,
            &ids,
            BatchCount::default(),
        )
        .await;
    assert!(results.successes.is_empty());
    for error in &results.errors {
        assert_eq!(error["error_type"], "read_error", "{error}");
        assert!(
            error["error_message"]
                .as_str()
                .is_some_and(|m| m.contains("refusing to follow")),
            "{error}"
        );
    }
}

/// Keys that try to climb out of `inbox/` or smuggle characters become job ids of
/// `[a-z0-9-]` only, and everything a job writes stays under its own prefixes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_ids_and_s3_keys_cannot_escape_the_job_prefixes() {
    let _logs = captured_logs();
    let h = Harness::start().await;
    let kind = ProviderKind::OpenAi;
    let sneaky_keys = [
        "inbox/../jobs/x/job.jsonl",
        "inbox/../../etc/passwd.jsonl",
        "inbox/%2e%2e/results/y.jsonl",
        "inbox/\u{202e}lmth.jsonl",
        "inbox/....jsonl",
        "inbox/ /.jsonl",
    ];
    let extra = [
        json!({"custom_id": "../../jobs/other/job.json", "text": "x"}).to_string(),
        json!({"custom_id": "results/other/summary.json", "text": "x"}).to_string(),
        json!({"custom_id": "..", "text": "x"}).to_string(),
    ];
    let mut jobs = Vec::new();
    for key in sneaky_keys {
        let (body, mut ids) = job_file(kind, 2, &extra);
        ids.extend(["line-4", "line-5", "line-6"].map(String::from));
        let job = h.submit(key, body).await;
        assert!(
            !job.is_empty()
                && job
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "{key} → {job:?}"
        );
        h.run_to_close(&job).await;
        h.check_scenario(
            Category::Fault,
            &format!("a sneaky key {key:?}"),
            &job,
            &ids,
            BatchCount::default(),
        )
        .await;
        jobs.push((key, job));
    }
    let listed = h.ctx.store.list("").await.expect("list");
    for object in listed {
        let owned = object.starts_with("inbox/")
            || jobs.iter().any(|(_, job)| {
                object.starts_with(&format!("jobs/{job}/"))
                    || object.starts_with(&format!("results/{job}/"))
                    || object == keys::open_marker(job)
            });
        assert!(owned, "{object} is outside every job's prefixes");
        // What the system wrote (not the uploads themselves) never climbs.
        assert!(
            object.starts_with("inbox/") || !object.contains(".."),
            "{object}"
        );
    }
}

/// Per-object, per-line and per-job (uncompressed) size caps, each a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_caps_bound_an_upload_with_clear_errors() {
    let _logs = captured_logs();
    let h = Harness::start_with(HarnessOptions {
        settings: Settings {
            max_object_bytes: 100_000,
            ..Settings::default()
        },
        ..HarnessOptions::default()
    })
    .await;
    let kind = ProviderKind::OpenAi;

    // Per object: refused before reading.
    let (body, _) = job_file(kind, 2_000, &[]);
    assert!(body.len() > 100_000);
    let job = h.submit("inbox/too-big.jsonl", body).await;
    let record_now = h.record(&job).await;
    assert_eq!(record_now.status, JobStatus::Failed);
    let failure = record_now.failure.unwrap_or_default();
    assert!(
        failure.contains("too-big.jsonl") && failure.contains("more than the 100000 bytes"),
        "{failure}"
    );
    assert_eq!(h.provider_batches(kind).await, 0);
    record(
        Category::BadInput,
        "an object over the per-object cap",
        Measured::default(),
    );

    // Per line: the spec's max_line_bytes.
    let long = json!({"custom_id": "long", "text": "z".repeat(20_000)}).to_string();
    let (body, mut ids) = job_file(kind, 2, &[long]);
    let body = body.replacen(
        "\"max_tokens\":256",
        "\"max_tokens\":256,\"max_line_bytes\":10000",
        1,
    );
    ids.push("line-4".into());
    let job = h.submit("inbox/long-line.jsonl", body).await;
    h.run_to_close(&job).await;
    let results = h
        .check_scenario(
            Category::BadInput,
            "a line over the per-line cap",
            &job,
            &ids,
            BatchCount::default(),
        )
        .await;
    let error = results
        .errors
        .iter()
        .find(|e| e["custom_id"] == "line-4")
        .expect("the long line");
    assert!(
        error["error_message"]
            .as_str()
            .is_some_and(|m| m.contains("more than the 10000 allowed")),
        "{error}"
    );

    // Per job: a small gzip that inflates past the cap is read up to the cap only.
    let (body, ids) = job_file(kind, 3_000, &[]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(body.as_bytes()).expect("gzip");
    let packed = gz.finish().expect("gzip");
    assert!(packed.len() < 100_000 && body.len() > 100_000);
    let job = h.submit("inbox/bomb.jsonl.gz", packed).await;
    let record_now = h.run_to_close(&job).await;
    let read = record_now.requests as usize;
    assert!(read < 3_000, "stopped at the cap after {read} lines");
    let mut expected: Vec<String> = ids[..read - 1].to_vec();
    let cap_line = format!("line-{}", read + 1);
    expected.push(cap_line.clone());
    let results = h
        .check_scenario(
            Category::BadInput,
            "a gzip inflating past the per-job cap",
            &job,
            &expected,
            BatchCount::default(),
        )
        .await;
    let error = results
        .errors
        .iter()
        .find(|e| e["custom_id"] == cap_line.as_str())
        .expect("the cap is reported");
    assert!(
        error["error_message"]
            .as_str()
            .is_some_and(|m| m.contains("more than 100000 bytes (uncompressed)")),
        "{error}"
    );
}

/// What moto answers to one AWS JSON 1.1 call. Only for setting up: moto routes on
/// the credential scope and does not check signatures, so a dummy one is enough.
async fn moto_json_call(moto: &Moto, service: &str, target: &str, input: Value) -> Value {
    let scope = format!("test/20260101/us-east-1/{service}/aws4_request");
    let response = http_client()
        .post(format!("{}/", moto.url))
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amz-target", target)
        .header(
            "authorization",
            format!("AWS4-HMAC-SHA256 Credential={scope}, SignedHeaders=host, Signature=0"),
        )
        .body(input.to_string())
        .send()
        .await
        .expect("moto answers");
    assert!(response.status().is_success(), "{target}: {response:?}");
    response.json().await.expect("moto answers JSON")
}

/// The functions' own path for keys: a Secrets Manager secret by ARN and an SSM
/// SecureString parameter, each read through its SDK client. A missing one fails
/// with AWS's reason and its name; neither value reaches a log line or an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_read_from_secrets_manager_and_ssm_without_being_logged() {
    let logs = captured_logs();
    let moto = Moto::start();
    let secret_value = format!("{FAKE_KEY}-from-secrets-manager");
    let parameter_value = format!("{FAKE_KEY}-from-ssm");
    let created = moto_json_call(
        &moto,
        "secretsmanager",
        "secretsmanager.CreateSecret",
        json!({"Name": "batchline/openai", "SecretString": secret_value}),
    )
    .await;
    let arn = created["ARN"].as_str().expect("an ARN").to_string();
    moto_json_call(
        &moto,
        "ssm",
        "AmazonSSM.PutParameter",
        json!({"Name": "/batchline/anthropic", "Value": parameter_value, "Type": "SecureString"}),
    )
    .await;

    let reader = SecretReader::new(&moto_sdk_config(&moto.url));
    assert_eq!(
        reader.secret_string(&arn).await.expect("the secret"),
        secret_value
    );
    assert_eq!(
        reader
            .parameter("/batchline/anthropic")
            .await
            .expect("the parameter"),
        parameter_value
    );

    let missing_secret = reader
        .secret_string("batchline/missing")
        .await
        .expect_err("no such secret")
        .to_string();
    assert!(
        missing_secret.starts_with("GetSecretValue failed with HTTP 4")
            && missing_secret.contains("ResourceNotFoundException"),
        "{missing_secret}"
    );
    let missing_parameter = reader
        .parameter("/batchline/missing")
        .await
        .expect_err("no such parameter")
        .to_string();
    assert!(
        missing_parameter.contains("ParameterNotFound"),
        "{missing_parameter}"
    );

    let logs = String::from_utf8_lossy(&logs.lock().expect("logs")).to_string();
    for value in [&secret_value, &parameter_value] {
        assert!(!logs.contains(value.as_str()), "a secret value was logged");
        assert!(
            !missing_secret.contains(value.as_str()) && !missing_parameter.contains(value.as_str())
        );
    }
}
