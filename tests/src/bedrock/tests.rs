//! The Bedrock routes exercised in process, signed as an AWS SDK signs, with S3 in a
//! moto server where jobs get as far as reading their input.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};
use time::OffsetDateTime;
use tower::ServiceExt;

use crate::common::testing::{frozen_shared, jsonl, steps_ago};
use crate::common::{BatchFate, BedrockConfig, Shared, lock};
use crate::harness::{Moto, moto_sdk_config};
use crate::quota::Quotas;

use super::batches::all_jobs;
use super::sigv4::{Signable, sign};
use super::{Bedrock, routes};

const ROLE: &str = "arn:aws:iam::123456789012:role/BedrockBatch";
const CLAUDE: &str = "anthropic.claude-sonnet-4-5-20250929-v1:0";
const NOVA: &str = "us.amazon.nova-pro-v1:0";
const BUCKET: &str = "batch";

/// A reply: status, `x-amzn-ErrorType` (if any) and the JSON body.
struct Reply {
    status: StatusCode,
    error_type: Option<String>,
    body: Value,
}

struct Harness {
    state: Arc<Bedrock>,
    router: Router,
    /// Kept alive for the test's S3 calls; `None` for tests that never reach S3.
    moto: Option<(Moto, aws_sdk_s3::Client)>,
}

impl Harness {
    /// Routes on frozen lifecycle steps; jobs need at least `min_records` records.
    fn new(min_records: usize) -> Self {
        let shared = frozen_shared();
        lock(&shared.bedrock).min_records = min_records;
        let state = Arc::new(Bedrock::new(shared));
        Self {
            router: routes(state.clone()),
            state,
            moto: None,
        }
    }

    /// Like [`Harness::new`], with a moto server holding bucket [`BUCKET`].
    async fn with_s3(min_records: usize) -> Self {
        let mut harness = Self::new(min_records);
        let moto = Moto::start();
        *lock(&harness.shared().s3_endpoint) = Some(moto.url.clone());
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&moto_sdk_config(&moto.url))
                .force_path_style(true)
                .build(),
        );
        s3.create_bucket().bucket(BUCKET).send().await.unwrap();
        harness.moto = Some((moto, s3));
        harness
    }

    fn shared(&self) -> &Shared {
        &self.state.shared
    }

    fn s3(&self) -> &aws_sdk_s3::Client {
        &self.moto.as_ref().expect("a harness with S3").1
    }

    async fn put(&self, key: &str, lines: &[Value]) {
        let body: String = lines.iter().map(|line| format!("{line}\n")).collect();
        self.s3()
            .put_object()
            .bucket(BUCKET)
            .key(key)
            .body(body.into_bytes().into())
            .send()
            .await
            .unwrap();
    }

    async fn object(&self, key: &str) -> Vec<u8> {
        let object = self.s3().get_object().bucket(BUCKET).key(key).send().await;
        let object = object.unwrap_or_else(|e| panic!("s3://{BUCKET}/{key}: {e:?}"));
        object.body.collect().await.unwrap().to_vec()
    }

    /// Sends a request signed with `secret` (the right one is `test`).
    async fn send_signed(
        &self,
        method: &str,
        uri: &str,
        body: &Value,
        secret: Option<&str>,
    ) -> Reply {
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("127.0.0.1:9"));
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
        if let Some(secret) = secret {
            let signable = Signable {
                method,
                path,
                query,
                headers: &headers,
                body: body.as_bytes(),
            };
            let now = OffsetDateTime::now_utc();
            for (name, value) in sign(&signable, "test", secret, "us-west-2", "bedrock", now) {
                headers.insert(name, value.parse().unwrap());
            }
        }
        let mut request = Request::builder().method(method).uri(uri);
        *request.headers_mut().unwrap() = headers;
        let response = self
            .router
            .clone()
            .oneshot(request.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let error_type = response
            .headers()
            .get("x-amzn-errortype")
            .map(|v| v.to_str().unwrap().to_string());
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply {
            status,
            error_type,
            body,
        }
    }

    async fn send(&self, method: &str, uri: &str, body: Value) -> Reply {
        self.send_signed(method, uri, &body, Some("test")).await
    }

    async fn create_raw(&self, request: Value) -> Reply {
        self.send("POST", "/model-invocation-job", request).await
    }

    async fn create(&self, request: Value) -> String {
        let reply = self.create_raw(request).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        reply.body["jobArn"].as_str().unwrap().to_string()
    }

    async fn get(&self, arn: &str) -> Value {
        let encoded = utf8_percent_encode(arn, NON_ALPHANUMERIC);
        let reply = self
            .send(
                "GET",
                &format!("/model-invocation-job/{encoded}"),
                Value::Null,
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        reply.body
    }

    /// Moves the job's creation `steps` lifecycle steps back.
    async fn age(&self, steps: u32) {
        for (_, job) in all_jobs(&self.state) {
            job.lock().await.set_created(steps_ago(steps));
        }
    }

    fn force_end(&self, arn: &str) {
        lock(&self.shared().forced).insert(arn.to_string(), ());
    }

    fn set_fate(&self, fate: BatchFate, partial: f64) {
        let mut plan = lock(&self.shared().faults);
        plan.batch_fate = fate;
        plan.partial = partial;
    }

    /// The job's output lines by record id, and its manifest.
    async fn output(&self, arn: &str, file: &str) -> (Vec<Value>, Value) {
        let id = arn.rsplit('/').next().unwrap();
        let lines = jsonl(&self.object(&format!("out/{id}/{file}.out")).await);
        let manifest =
            serde_json::from_slice(&self.object(&format!("out/{id}/manifest.json.out")).await)
                .unwrap();
        (lines, manifest)
    }
}

fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {"vendor": {"type": "string"}, "total": {"type": "integer"}},
        "required": ["vendor", "total"]
    })
}

fn converse_record(id: &str, text: &str) -> Value {
    json!({"recordId": id, "modelInput": {
        "system": [{"text": "Extract the invoice."}],
        "messages": [{"role": "user", "content": [{"text": text}]}],
        "inferenceConfig": {"maxTokens": 512, "temperature": 0},
        "toolConfig": {
            "tools": [{"toolSpec": {"name": "invoice", "description": "The invoice", "inputSchema": {"json": schema()}}}],
            "toolChoice": {"tool": {"name": "invoice"}}
        }
    }})
}

fn claude_record(id: &str, text: &str) -> Value {
    json!({"recordId": id, "modelInput": {
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 512,
        "system": "Extract the invoice.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}],
        "tools": [{"name": "invoice", "description": "The invoice", "input_schema": schema()}],
        "tool_choice": {"type": "tool", "name": "invoice"}
    }})
}

fn job_request(name: &str, model: &str, invocation: &str, input_key: &str) -> Value {
    json!({
        "jobName": name,
        "roleArn": ROLE,
        "modelId": model,
        "modelInvocationType": invocation,
        "inputDataConfig": {"s3InputDataConfig": {"s3Uri": format!("s3://{BUCKET}/{input_key}")}},
        "outputDataConfig": {"s3OutputDataConfig": {"s3Uri": format!("s3://{BUCKET}/out/")}},
        "timeoutDurationInHours": 24,
        "tags": [{"key": "job", "value": name}],
    })
}

#[tokio::test]
async fn a_converse_job_goes_through_every_state_and_writes_its_output() {
    let h = Harness::with_s3(5).await;
    let records: Vec<Value> = (0..20)
        .map(|i| converse_record(&format!("r{i:03}"), &format!("Invoice {i} from ACME")))
        .collect();
    h.put("in/part-0001.jsonl", &records).await;
    let arn = h
        .create(job_request(
            "invoices-1",
            NOVA,
            "Converse",
            "in/part-0001.jsonl",
        ))
        .await;
    assert!(
        arn.starts_with("arn:aws:bedrock:us-west-2:123456789012:model-invocation-job/"),
        "{arn}"
    );
    let id = arn.rsplit('/').next().unwrap();
    assert!(
        id.len() == 12
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    );

    let job = h.get(&arn).await;
    assert_eq!(job["status"], "Submitted");
    assert_eq!(job["jobName"], "invoices-1");
    assert_eq!(job["timeoutDurationInHours"], 24);
    assert_eq!(
        job["inputDataConfig"]["s3InputDataConfig"]["s3InputFormat"],
        "JSONL"
    );
    assert!(job.get("endTime").is_none() && job.get("totalRecordCount").is_none());
    for (steps, status) in [(1, "Validating"), (2, "Scheduled"), (3, "InProgress")] {
        h.age(steps).await;
        assert_eq!(h.get(&arn).await["status"], status);
    }
    // The job id works as the identifier too.
    let by_id = h
        .send("GET", &format!("/model-invocation-job/{id}"), Value::Null)
        .await;
    assert_eq!(by_id.body["totalRecordCount"], 20);

    h.force_end(&arn);
    let done = h.get(&arn).await;
    assert_eq!(done["status"], "Completed", "{done}");
    assert!(done["endTime"].as_str().unwrap().ends_with('Z'));
    assert_eq!(done["successRecordCount"], 20);
    let (lines, manifest) = h.output(&arn, "part-0001.jsonl").await;
    let ids: Vec<&str> = lines
        .iter()
        .map(|l| l["recordId"].as_str().unwrap())
        .collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (0..20).map(|i| format!("r{i:03}")).collect::<Vec<_>>()
    );
    assert_ne!(ids, sorted, "results come in a shuffled order");
    let line = &lines[0];
    assert_eq!(
        line["modelInput"],
        records
            .iter()
            .find(|r| r["recordId"] == line["recordId"])
            .unwrap()["modelInput"]
    );
    let output = &line["modelOutput"];
    assert_eq!(output["stopReason"], "tool_use");
    let tool_use = &output["output"]["message"]["content"][0]["toolUse"];
    assert_eq!(tool_use["name"], "invoice");
    assert!(
        tool_use["input"]["vendor"].is_string() && tool_use["input"]["total"].is_i64(),
        "{tool_use}"
    );
    let usage = &output["usage"];
    assert_eq!(
        usage["totalTokens"],
        usage["inputTokens"].as_u64().unwrap() + usage["outputTokens"].as_u64().unwrap()
    );
    let input_tokens: u64 = lines
        .iter()
        .map(|l| l["modelOutput"]["usage"]["inputTokens"].as_u64().unwrap())
        .sum();
    assert_eq!(
        manifest,
        json!({
            "totalRecordCount": 20, "processedRecordCount": 20, "successRecordCount": 20,
            "errorRecordCount": 0, "inputTokenCount": input_tokens,
            "outputTokenCount": manifest["outputTokenCount"],
        })
    );
    assert!(manifest["outputTokenCount"].as_u64().unwrap() > 0);
    let tags = h
        .send("POST", "/listTagsForResource", json!({"resourceARN": arn}))
        .await;
    assert_eq!(
        tags.body,
        json!({"tags": [{"key": "job", "value": "invoices-1"}]})
    );
}

#[tokio::test]
async fn claude_records_answer_as_messages_and_bad_records_become_errors() {
    let h = Harness::with_s3(5).await;
    let mut records: Vec<Value> = (0..6)
        .map(|i| claude_record(&format!("ok{i}"), &format!("Invoice {i}")))
        .collect();
    let mut with_model = claude_record("with-model", "Invoice");
    with_model["modelInput"]["model"] = json!("claude-sonnet-4-5");
    let mut no_version = claude_record("no-version", "Invoice");
    no_version["modelInput"]
        .as_object_mut()
        .unwrap()
        .remove("anthropic_version");
    let mut no_max_tokens = claude_record("no-max-tokens", "Invoice");
    no_max_tokens["modelInput"]
        .as_object_mut()
        .unwrap()
        .remove("max_tokens");
    records.extend([
        with_model,
        no_version,
        no_max_tokens,
        claude_record("limited", "[[fault:rate_limit]]"),
    ]);
    h.put("in/claude.jsonl", &records).await;
    let arn = h
        .create(job_request(
            "claude-1",
            CLAUDE,
            "InvokeModel",
            "in/claude.jsonl",
        ))
        .await;
    h.force_end(&arn);
    let done = h.get(&arn).await;
    assert_eq!(done["status"], "PartiallyCompleted", "{done}");
    assert_eq!(
        (
            done["successRecordCount"].as_u64(),
            done["errorRecordCount"].as_u64()
        ),
        (Some(6), Some(4))
    );
    let (lines, manifest) = h.output(&arn, "claude.jsonl").await;
    assert_eq!(manifest["errorRecordCount"], 4);
    let by_id = |id: &str| lines.iter().find(|l| l["recordId"] == id).unwrap().clone();
    let message = by_id("ok0")["modelOutput"].clone();
    assert_eq!(message["type"], "message");
    assert_eq!(message["model"], "claude-sonnet-4-5-20250929");
    assert_eq!(message["stop_reason"], "tool_use");
    assert_eq!(message["content"][0]["type"], "tool_use");
    assert!(message["usage"]["input_tokens"].as_u64().unwrap() > 0);
    let error = |id: &str| by_id(id)["error"].clone();
    assert_eq!(error("with-model")["errorCode"], 400);
    assert!(
        error("with-model")["errorMessage"]
            .as_str()
            .unwrap()
            .contains("extraneous key [model]")
    );
    assert!(
        error("no-version")["errorMessage"]
            .as_str()
            .unwrap()
            .contains("anthropic_version")
    );
    assert!(
        error("no-max-tokens")["errorMessage"]
            .as_str()
            .unwrap()
            .contains("max_tokens")
    );
    assert_eq!(error("limited")["errorCode"], 429);
    assert!(by_id("limited").get("modelOutput").is_none());
}

#[tokio::test]
async fn validation_fails_jobs_with_a_message_saying_why() {
    let h = Harness::with_s3(3).await;
    let good = |n: usize| {
        (0..n)
            .map(|i| converse_record(&format!("r{i}"), "Invoice"))
            .collect::<Vec<_>>()
    };
    h.put("few.jsonl", &good(2)).await;
    let mut not_json = good(4);
    not_json.insert(2, json!("not a record"));
    h.put("not-json.jsonl", &not_json).await;
    let mut no_id = good(4);
    no_id[1].as_object_mut().unwrap().remove("recordId");
    h.put("no-id.jsonl", &no_id).await;
    let mut twice = good(4);
    twice.push(converse_record("r1", "again"));
    h.put("twice.jsonl", &twice).await;
    h.put("many.jsonl", &good(6)).await;
    lock(&h.shared().bedrock).max_records = 5;
    let cases = [
        (
            "few.jsonl",
            "contains 2 records, fewer than the minimum of 3",
        ),
        ("missing.jsonl", "does not exist"),
        ("not-json.jsonl", "line 3 of not-json.jsonl"),
        ("no-id.jsonl", "has no recordId"),
        ("twice.jsonl", "The recordId r1 appears more than once"),
        (
            "many.jsonl",
            "contains 6 records, more than the maximum of 5",
        ),
    ];
    for (index, (key, expected)) in cases.iter().enumerate() {
        let arn = h
            .create(job_request(&format!("bad-{index}"), NOVA, "Converse", key))
            .await;
        h.force_end(&arn);
        let job = h.get(&arn).await;
        assert_eq!(job["status"], "Failed", "{key}: {job}");
        let message = job["message"].as_str().unwrap();
        assert!(message.contains(expected), "{key}: {message}");
        assert!(job["endTime"].is_string());
    }
    // The default minimum is Bedrock's 100.
    lock(&h.shared().bedrock).min_records = BedrockConfig::default().min_records;
    h.put("twelve.jsonl", &good(12)).await;
    let arn = h
        .create(job_request("twelve", NOVA, "Converse", "twelve.jsonl"))
        .await;
    h.force_end(&arn);
    let message = h.get(&arn).await["message"].as_str().unwrap().to_string();
    assert!(
        message.contains("contains 12 records, fewer than the minimum of 100"),
        "{message}"
    );
}

#[tokio::test]
async fn stops_fates_and_the_concurrent_jobs_quota() {
    let h = Harness::with_s3(2).await;
    let records: Vec<Value> = (0..10)
        .map(|i| converse_record(&format!("r{i}"), "Invoice"))
        .collect();
    h.put("in.jsonl", &records).await;

    // Stopped while in progress: half the records ran and are in the output.
    let arn = h
        .create(job_request("stopped", NOVA, "Converse", "in.jsonl"))
        .await;
    h.age(3).await;
    assert_eq!(h.get(&arn).await["status"], "InProgress");
    let stop = h
        .send(
            "POST",
            &format!(
                "/model-invocation-job/{}/stop",
                arn.rsplit('/').next().unwrap()
            ),
            Value::Null,
        )
        .await;
    assert_eq!(
        (stop.status, stop.body.clone()),
        (StatusCode::OK, json!({}))
    );
    assert_eq!(h.get(&arn).await["status"], "Stopping");
    h.force_end(&arn);
    let stopped = h.get(&arn).await;
    assert_eq!(stopped["status"], "Stopped");
    assert_eq!(stopped["processedRecordCount"], 5);
    assert_eq!(h.output(&arn, "in.jsonl").await.0.len(), 5);
    let again = h
        .send(
            "POST",
            &format!(
                "/model-invocation-job/{}/stop",
                arn.rsplit('/').next().unwrap()
            ),
            Value::Null,
        )
        .await;
    assert_eq!(
        (again.status, again.error_type.as_deref()),
        (StatusCode::BAD_REQUEST, Some("ValidationException"))
    );

    h.set_fate(BatchFate::Expire, 0.3);
    let arn = h
        .create(job_request("expired", NOVA, "Converse", "in.jsonl"))
        .await;
    h.force_end(&arn);
    let expired = h.get(&arn).await;
    assert_eq!(
        (
            expired["status"].as_str(),
            expired["processedRecordCount"].as_u64()
        ),
        (Some("Expired"), Some(3))
    );
    assert_eq!(
        h.output(&arn, "in.jsonl").await.1["processedRecordCount"],
        3
    );

    h.set_fate(BatchFate::AllFail, 0.5);
    let arn = h
        .create(job_request("all-fail", NOVA, "Converse", "in.jsonl"))
        .await;
    h.force_end(&arn);
    let failed = h.get(&arn).await;
    assert_eq!(
        (
            failed["status"].as_str(),
            failed["errorRecordCount"].as_u64()
        ),
        (Some("Failed"), Some(10))
    );

    h.set_fate(BatchFate::Complete, 0.5);
    h.shared().quotas.set(Quotas {
        bedrock_concurrent_jobs: Some(1),
        ..Quotas::default()
    });
    h.create(job_request("running", NOVA, "Converse", "in.jsonl"))
        .await;
    let refused = h
        .create_raw(job_request("one-too-many", NOVA, "Converse", "in.jsonl"))
        .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        refused.error_type.as_deref(),
        Some("ServiceQuotaExceededException")
    );
    let report = h.shared().quotas.report().bedrock;
    assert_eq!((report.admitted, report.refused, report.peak), (1, 1, 1));
}

#[tokio::test]
async fn create_checks_the_request_as_botocore_models_it() {
    let h = Harness::new(1);
    let good = job_request("job-1", CLAUDE, "InvokeModel", "in.jsonl");
    let with = |field: &str, value: Value| {
        let mut request = good.clone();
        request[field] = value;
        request
    };
    let cases = [
        (
            with("jobName", json!("-starts-with-dash")),
            "at 'jobName' failed to satisfy constraint: Member must satisfy regular expression pattern",
        ),
        (
            with("roleArn", json!("arn:aws:iam::123:user/x")),
            "at 'roleArn'",
        ),
        (
            with("roleArn", Value::Null),
            "Value null at 'roleArn' failed to satisfy constraint: Member must not be null",
        ),
        (
            with("timeoutDurationInHours", json!(12)),
            "Member must have value greater than or equal to 24",
        ),
        (
            with("modelInvocationType", json!("Chat")),
            "enum value set: [InvokeModel, Converse]",
        ),
        (
            with(
                "outputDataConfig",
                json!({"s3OutputDataConfig": {"s3Uri": "https://x"}}),
            ),
            "at 'outputDataConfig.s3OutputDataConfig.s3Uri'",
        ),
        (
            with("tags", json!([{"key": "k"}])),
            "at 'tags.1.member.value'",
        ),
        (
            with("modelId", json!("anthropic.claude-9-v1:0")),
            "The provided model identifier is invalid.",
        ),
    ];
    for (request, expected) in cases {
        let reply = h.create_raw(request).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{expected}");
        assert_eq!(reply.error_type.as_deref(), Some("ValidationException"));
        let message = reply.body["message"].as_str().unwrap();
        assert!(message.contains(expected), "{message}");
    }
    let two = h
        .create_raw(
            with("jobName", json!(""))
                .as_object()
                .cloned()
                .map(|mut r| {
                    r.insert("roleArn".into(), json!("x"));
                    Value::Object(r)
                })
                .unwrap(),
        )
        .await;
    assert!(
        two.body["message"]
            .as_str()
            .unwrap()
            .starts_with("2 validation errors detected: ")
    );
    // Inference profiles and foundation-model ARNs name served models.
    for model in [
        "eu.anthropic.claude-haiku-4-5-20251001-v1:0",
        "arn:aws:bedrock:us-east-1::foundation-model/amazon.nova-micro-v1:0",
    ] {
        let mut request = with("modelId", json!(model));
        request["jobName"] = json!(format!("j{}", model.len()));
        assert_eq!(
            h.create_raw(request).await.status,
            StatusCode::OK,
            "{model}"
        );
    }
}

#[tokio::test]
async fn client_request_tokens_make_creates_idempotent() {
    let h = Harness::new(1);
    let mut request = job_request("idem", CLAUDE, "InvokeModel", "in.jsonl");
    request["clientRequestToken"] = json!("b1946ac9-2c80-4e4f-8c85-6b5e8a0f0a11");
    let first = h.create(request.clone()).await;
    assert_eq!(h.create(request.clone()).await, first);
    assert_eq!(
        h.get(&first).await["clientRequestToken"],
        request["clientRequestToken"]
    );
    let mut changed = request.clone();
    changed["timeoutDurationInHours"] = json!(48);
    let conflict = h.create_raw(changed).await;
    assert_eq!(
        (conflict.status, conflict.error_type.as_deref()),
        (StatusCode::BAD_REQUEST, Some("ConflictException"))
    );
    // Another token, the same name.
    request["clientRequestToken"] = json!("another1");
    assert_eq!(
        h.create_raw(request).await.error_type.as_deref(),
        Some("ConflictException")
    );
    assert_eq!(all_jobs(&h.state).len(), 1);
}

#[tokio::test]
async fn requests_must_be_signed_with_the_test_credentials() {
    let h = Harness::new(1);
    let request = job_request("signed", CLAUDE, "InvokeModel", "in.jsonl");
    let cases = [
        (None, "MissingAuthenticationTokenException"),
        (Some("wrong-secret"), "InvalidSignatureException"),
    ];
    for (secret, kind) in cases {
        let reply = h
            .send_signed("POST", "/model-invocation-job", &request, secret)
            .await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN);
        assert_eq!(reply.error_type.as_deref(), Some(kind));
        assert!(reply.body["message"].is_string());
    }
    lock(&h.shared().bedrock).access_key_id = "AKIAOTHER".into();
    let reply = h.send("GET", "/model-invocation-jobs", Value::Null).await;
    assert_eq!(
        (reply.status, reply.error_type.as_deref()),
        (StatusCode::FORBIDDEN, Some("UnrecognizedClientException"))
    );
    assert!(all_jobs(&h.state).is_empty());
}

#[tokio::test]
async fn lists_page_filter_and_sort_by_submit_time() {
    let h = Harness::new(1);
    let mut arns = Vec::new();
    for i in 0..5 {
        let name = if i % 2 == 0 {
            format!("even-{i}")
        } else {
            format!("odd-{i}")
        };
        arns.push(
            h.create(job_request(&name, CLAUDE, "InvokeModel", "in.jsonl"))
                .await,
        );
    }
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let uri = match &token {
            Some(t) => format!("/model-invocation-jobs?maxResults=2&nextToken={t}"),
            None => "/model-invocation-jobs?maxResults=2".to_string(),
        };
        let page = h.send("GET", &uri, Value::Null).await.body;
        let summaries = page["invocationJobSummaries"].as_array().unwrap();
        assert!(summaries.len() <= 2);
        seen.extend(
            summaries
                .iter()
                .map(|s| s["jobArn"].as_str().unwrap().to_string()),
        );
        match page["nextToken"].as_str() {
            Some(next) => token = Some(next.to_string()),
            None => break,
        }
    }
    let newest_first: Vec<String> = arns.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first);
    let ascending = h
        .send(
            "GET",
            "/model-invocation-jobs?sortBy=CreationTime&sortOrder=Ascending",
            Value::Null,
        )
        .await
        .body;
    let names: Vec<&str> = ascending["invocationJobSummaries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["jobName"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["even-0", "odd-1", "even-2", "odd-3", "even-4"]);
    let odd = h
        .send(
            "GET",
            "/model-invocation-jobs?nameContains=odd&statusEquals=Submitted",
            Value::Null,
        )
        .await
        .body;
    assert_eq!(odd["invocationJobSummaries"].as_array().unwrap().len(), 2);
    let none = h
        .send(
            "GET",
            "/model-invocation-jobs?statusEquals=Completed",
            Value::Null,
        )
        .await
        .body;
    assert_eq!(none, json!({"invocationJobSummaries": []}));
    let future = h
        .send(
            "GET",
            "/model-invocation-jobs?submitTimeAfter=2099-01-01T00%3A00%3A00Z",
            Value::Null,
        )
        .await
        .body;
    assert_eq!(future["invocationJobSummaries"], json!([]));
    for bad in [
        "maxResults=0",
        "maxResults=1001",
        "statusEquals=Done",
        "sortOrder=Up",
        "nextToken=bogus",
    ] {
        let reply = h
            .send("GET", &format!("/model-invocation-jobs?{bad}"), Value::Null)
            .await;
        assert_eq!(
            (reply.status, reply.error_type.as_deref()),
            (StatusCode::BAD_REQUEST, Some("ValidationException")),
            "{bad}"
        );
    }
    let missing = h
        .send("GET", "/model-invocation-job/abcdefabcdef", Value::Null)
        .await;
    assert_eq!(
        (missing.status, missing.error_type.as_deref()),
        (StatusCode::NOT_FOUND, Some("ResourceNotFoundException"))
    );
    let malformed = h
        .send("GET", "/model-invocation-job/NOT-AN-ID", Value::Null)
        .await;
    assert_eq!(malformed.error_type.as_deref(), Some("ValidationException"));
}

#[tokio::test]
async fn http_faults_answer_as_aws_errors() {
    let shared = frozen_shared();
    let router = super::router(shared.clone());
    lock(&shared.faults).http.push(crate::HttpFault {
        method: None,
        path_prefix: "/model-invocation-jobs".into(),
        status: 429,
        retry_after_s: None,
        times: 1,
        delay_ms: 0,
    });
    let h = Harness {
        state: Arc::new(Bedrock::new(shared)),
        router,
        moto: None,
    };
    let throttled = h.send("GET", "/model-invocation-jobs", Value::Null).await;
    assert_eq!(throttled.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(throttled.error_type.as_deref(), Some("ThrottlingException"));
    assert!(
        throttled.body["message"]
            .as_str()
            .unwrap()
            .starts_with("emulated fault")
    );
    let next = h.send("GET", "/model-invocation-jobs", Value::Null).await;
    assert_eq!(next.status, StatusCode::OK);
}

#[tokio::test]
async fn the_control_endpoint_changes_the_settings_given() {
    use crate::common::testing::call;

    let shared = frozen_shared();
    let router = crate::app(shared.clone());
    let json = [("content-type", "application/json")];
    let body = r#"{"s3_endpoint": "http://127.0.0.1:5000", "min_records": 10}"#;
    let (status, _) = call(&router, "POST", "/_emulator/bedrock", &json, body).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        lock(&shared.s3_endpoint).as_deref(),
        Some("http://127.0.0.1:5000")
    );
    let settings = lock(&shared.bedrock).clone();
    assert_eq!(
        settings,
        BedrockConfig {
            min_records: 10,
            ..BedrockConfig::default()
        }
    );
    let (status, _) = call(
        &router,
        "POST",
        "/_emulator/bedrock",
        &json,
        r#"{"typo": 1}"#,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = call(
        &router,
        "POST",
        "/_emulator/bedrock",
        &json,
        r#"{"s3_endpoint": null}"#,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(lock(&shared.s3_endpoint).is_none());
}
