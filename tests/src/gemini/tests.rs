//! The routes exercised in process, one test per behaviour of the real API.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{BatchFate, lock};
use crate::model::{Api, prompt_tokens};
use crate::{Config, Emulator, FaultPlan, Quotas};

use super::batches::{
    BATCH_TYPE, CANCELLED, EXPIRED, FAILED, INLINE_LIMIT_BYTES, OUTPUT_TYPE, PENDING, RUNNING,
    SUCCEEDED,
};

struct Harness {
    emulator: Emulator,
    client: reqwest::Client,
}

impl Harness {
    async fn start(step: Duration) -> Self {
        let config = Config {
            step,
            ..Config::default()
        };
        Self {
            emulator: Emulator::start(config).await.unwrap(),
            client: crate::harness::http_client(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.emulator.base_url())
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self
            .client
            .request(method, self.url(path))
            .header("x-goog-api-key", "test-key");
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn start_upload(&self, length: usize) -> String {
        let response = self
            .client
            .post(self.url("/upload/v1beta/files"))
            .header("x-goog-api-key", "test-key")
            .header("x-goog-upload-protocol", "resumable")
            .header("x-goog-upload-command", "start")
            .header("x-goog-upload-header-content-length", length.to_string())
            .header("x-goog-upload-header-content-type", "application/jsonl")
            .json(&json!({"file": {"displayName": "requests"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-goog-upload-status"], "active");
        response.headers()["x-goog-upload-url"]
            .to_str()
            .unwrap()
            .to_string()
    }

    async fn send_chunk(
        &self,
        url: &str,
        offset: usize,
        command: &str,
        chunk: &[u8],
    ) -> reqwest::Response {
        self.client
            .post(url)
            .header("x-goog-upload-command", command)
            .header("x-goog-upload-offset", offset.to_string())
            .body(chunk.to_vec())
            .send()
            .await
            .unwrap()
    }

    /// Uploads in two chunks, as the SDK does for large files; answers the file name.
    async fn upload(&self, content: &str) -> String {
        let url = self.start_upload(content.len()).await;
        let (first, second) = content.as_bytes().split_at(content.len() / 2);
        let active = self.send_chunk(&url, 0, "upload", first).await;
        assert_eq!(active.headers()["x-goog-upload-status"], "active");
        let last = self
            .send_chunk(&url, first.len(), "upload, finalize", second)
            .await;
        assert_eq!(last.status(), 200);
        assert_eq!(last.headers()["x-goog-upload-status"], "final");
        let file: Value = last.json().await.unwrap();
        assert_eq!(file["file"]["state"], "ACTIVE");
        assert_eq!(file["file"]["source"], "UPLOADED");
        assert_eq!(file["file"]["sizeBytes"], content.len().to_string());
        file["file"]["name"].as_str().unwrap().to_string()
    }

    async fn create(&self, input_config: Value) -> Value {
        let body = json!({"batch": {"displayName": "extraction", "inputConfig": input_config}});
        let (status, operation) = self
            .call(
                reqwest::Method::POST,
                "/v1beta/models/gemini-2.5-flash:batchGenerateContent",
                Some(body),
            )
            .await;
        assert_eq!(status, 200, "{operation}");
        operation
    }

    async fn get(&self, name: &str) -> Value {
        let (status, operation) = self
            .call(reqwest::Method::GET, &format!("/v1beta/{name}"), None)
            .await;
        assert_eq!(status, 200, "{operation}");
        operation
    }

    fn force_end(&self, name: &str) {
        lock(&self.emulator.shared.forced).insert(name.to_string(), ());
    }

    async fn results(&self, operation: &Value) -> Vec<Value> {
        let file = operation["response"]["responsesFile"].as_str().unwrap();
        let text = self
            .client
            .get(self.url(&format!("/download/v1beta/{file}:download?alt=media")))
            .header("x-goog-api-key", "test-key")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }
}

fn request(text: &str) -> Value {
    json!({
        "contents": [{"parts": [{"text": text}], "role": "user"}],
        "generationConfig": {
            "responseMimeType": "application/json",
            "responseJsonSchema": {"type": "object", "properties": {"total": {"type": "integer"}}, "required": ["total"]}
        }
    })
}

fn file_line(key: &str, text: &str) -> String {
    json!({"key": key, "request": request(text)}).to_string()
}

fn answer_text(response: &Value) -> &str {
    response["candidates"][0]["content"]["parts"][0]["text"]
        .as_str()
        .unwrap()
}

#[tokio::test]
async fn api_keys_are_checked() {
    let harness = Harness::start(Duration::from_secs(3600)).await;
    let missing = harness
        .client
        .get(harness.url("/v1beta/batches"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 403);
    let wrong = harness
        .client
        .get(harness.url("/v1beta/batches"))
        .header("x-goog-api-key", "wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 400);
    let body: Value = wrong.json().await.unwrap();
    assert_eq!(body["error"]["status"], "INVALID_ARGUMENT");
    let by_query = harness
        .client
        .get(harness.url("/v1beta/batches?key=test-key"))
        .send()
        .await
        .unwrap();
    assert_eq!(by_query.status(), 200);
}

#[tokio::test]
async fn uploads_check_offsets_and_sizes() {
    let harness = Harness::start(Duration::from_secs(3600)).await;
    let url = harness.start_upload(10).await;
    let wrong_offset = harness.send_chunk(&url, 3, "upload", b"abc").await;
    assert_eq!(wrong_offset.status(), 400);
    let short = harness
        .send_chunk(&url, 0, "upload, finalize", b"abc")
        .await;
    assert_eq!(short.status(), 400);
    let gone = harness
        .send_chunk(&url, 0, "upload, finalize", b"0123456789")
        .await;
    assert_eq!(gone.status(), 404, "a failed finalize ends the session");

    let name = harness.upload("{\"x\":1}\n").await;
    let (status, file) = harness
        .call(reqwest::Method::GET, &format!("/v1beta/{name}"), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(file["displayName"], "requests");
    assert_eq!(file["mimeType"], "application/jsonl");
    let (status, _) = harness
        .call(
            reqwest::Method::GET,
            &format!("/v1beta/{name}:download?alt=media"),
            None,
        )
        .await;
    assert_eq!(status, 400, "uploaded files cannot be downloaded");
}

#[tokio::test]
async fn a_file_batch_runs_every_request_once() {
    let harness = Harness::start(Duration::from_millis(150)).await;
    let lines = [
        file_line("a", "first invoice"),
        file_line("b", "second [[fault:provider_error]]"),
        file_line("c", "third [[fault:truncate]]"),
        file_line("d", "fourth [[fault:rate_limit]]"),
        json!({"key": "e", "request": {"contents": []}}).to_string(),
    ];
    let file = harness.upload(&(lines.join("\n") + "\n")).await;
    let operation = harness.create(json!({"fileName": file})).await;
    assert_eq!(operation["metadata"]["state"], PENDING);
    assert_eq!(operation["metadata"]["@type"], BATCH_TYPE);
    assert_eq!(operation["metadata"]["model"], "models/gemini-2.5-flash");
    assert_eq!(
        operation["metadata"]["batchStats"],
        json!({"requestCount": "5", "pendingRequestCount": "5"})
    );
    assert!(operation.get("done").is_none());
    let name = operation["name"].as_str().unwrap();

    let mut states = vec![PENDING.to_string()];
    while states.last().unwrap() != SUCCEEDED {
        tokio::time::sleep(Duration::from_millis(40)).await;
        let state = harness.get(name).await["metadata"]["state"]
            .as_str()
            .unwrap()
            .to_string();
        if states.last() != Some(&state) {
            states.push(state);
        }
    }
    assert_eq!(states, [PENDING, RUNNING, SUCCEEDED]);

    let operation = harness.get(name).await;
    assert_eq!(operation["done"], true);
    assert_eq!(operation["response"]["@type"], OUTPUT_TYPE);
    assert_eq!(
        operation["metadata"]["output"]["responsesFile"],
        operation["response"]["responsesFile"]
    );
    assert_eq!(
        operation["metadata"]["batchStats"],
        json!({"requestCount": "5", "successfulRequestCount": "2", "failedRequestCount": "3"})
    );
    let results = harness.results(&operation).await;
    let by_key: HashMap<&str, &Value> = results
        .iter()
        .map(|r| (r["key"].as_str().unwrap(), r))
        .collect();
    assert_eq!(by_key.len(), 5);
    let parsed: Value = serde_json::from_str(answer_text(&by_key["a"]["response"])).unwrap();
    assert!(parsed["total"].is_i64());
    // Failed lines carry a google.rpc.Status: the code's number and a message only.
    assert_eq!(
        by_key["b"]["error"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["code", "message"]
    );
    assert_eq!(by_key["b"]["error"]["code"], 3, "INVALID_ARGUMENT");
    assert_eq!(
        by_key["c"]["response"]["candidates"][0]["finishReason"],
        "MAX_TOKENS"
    );
    assert_eq!(by_key["d"]["error"]["code"], 8, "RESOURCE_EXHAUSTED");
    assert_eq!(by_key["e"]["error"]["code"], 3, "INVALID_ARGUMENT");
}

#[tokio::test]
async fn inline_batches_answer_in_request_order() {
    let harness = Harness::start(Duration::from_secs(3600)).await;
    let requests: Vec<Value> = (0..3)
        .map(|i| json!({"request": request(&format!("item {i}")), "metadata": {"key": format!("k{i}")}}))
        .collect();
    let operation = harness
        .create(json!({"requests": {"requests": requests}}))
        .await;
    let name = operation["name"].as_str().unwrap();
    harness.force_end(name);
    let operation = harness.get(name).await;
    assert_eq!(operation["metadata"]["state"], SUCCEEDED);
    let responses = operation["metadata"]["output"]["inlinedResponses"]["inlinedResponses"]
        .as_array()
        .unwrap();
    let keys: Vec<&str> = responses
        .iter()
        .map(|r| r["metadata"]["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["k0", "k1", "k2"]);
    assert!(
        responses
            .iter()
            .all(|r| r["response"]["candidates"][0]["finishReason"] == "STOP")
    );
}

#[tokio::test]
async fn malformed_files_fail_the_batch() {
    let harness = Harness::start(Duration::from_secs(3600)).await;
    for content in [
        format!("{}\n{}\n", file_line("a", "x"), file_line("a", "y")),
        format!("{}\n", json!({"request": request("no key")})),
        "not json\n".to_string(),
    ] {
        let file = harness.upload(&content).await;
        let operation = harness.create(json!({"fileName": file})).await;
        let name = operation["name"].as_str().unwrap();
        harness.force_end(name.trim_start_matches("batches/"));
        let operation = harness.get(name).await;
        assert_eq!(operation["metadata"]["state"], FAILED, "{content}");
        assert_eq!(operation["done"], true);
        assert_eq!(operation["error"]["code"], 3);
        assert!(operation.get("response").is_none());
    }
}

#[tokio::test]
async fn create_rejects_bad_calls() {
    let harness = &Harness::start(Duration::from_secs(3600)).await;
    let create = |path: &'static str, body: Value| async move {
        harness
            .call(reqwest::Method::POST, path, Some(body))
            .await
            .0
    };
    let valid = "/v1beta/models/gemini-2.5-flash:batchGenerateContent";
    let inline = json!({"requests": {"requests": [{"request": request("x")}]}});
    assert_eq!(
        create(
            "/v1beta/models/palm-2:batchGenerateContent",
            json!({"batch": {"displayName": "x", "inputConfig": inline}})
        )
        .await,
        404
    );
    assert_eq!(
        create(valid, json!({"batch": {"inputConfig": inline}})).await,
        400
    );
    assert_eq!(
        create(
            valid,
            json!({"batch": {"displayName": "x", "inputConfig": {}}})
        )
        .await,
        400
    );
    assert_eq!(
        create(
            valid,
            json!({"batch": {"displayName": "x", "inputConfig": {"fileName": "files/nope"}}})
        )
        .await,
        403
    );
    let huge = "x".repeat(INLINE_LIMIT_BYTES);
    let too_big = json!({"batch": {"displayName": "x", "inputConfig": {"requests": {"requests": [{"request": request(&huge)}]}}}});
    assert_eq!(create(valid, too_big).await, 400);
}

#[tokio::test]
async fn cancel_list_and_delete() {
    let harness = Harness::start(Duration::from_secs(3600)).await;
    let inline = json!({"requests": {"requests": [{"request": request("x")}]}});
    let mut names = Vec::new();
    for _ in 0..3 {
        names.push(
            harness.create(inline.clone()).await["name"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let cancel = format!("/v1beta/{}:cancel", names[0]);
    assert_eq!(
        harness.call(reqwest::Method::POST, &cancel, None).await,
        (200, json!({}))
    );
    let cancelled = harness.get(&names[0]).await;
    assert_eq!(cancelled["metadata"]["state"], CANCELLED);
    assert_eq!(
        cancelled["metadata"]["batchStats"],
        json!({"requestCount": "1", "pendingRequestCount": "1"})
    );
    assert_eq!(
        harness.call(reqwest::Method::POST, &cancel, None).await.0,
        400
    );

    let mut listed = Vec::new();
    let mut token = String::new();
    loop {
        let (status, page) = harness
            .call(
                reqwest::Method::GET,
                &format!("/v1beta/batches?pageSize=2&pageToken={token}"),
                None,
            )
            .await;
        assert_eq!(status, 200);
        listed.extend(
            page["operations"]
                .as_array()
                .unwrap()
                .iter()
                .map(|op| op["name"].as_str().unwrap().to_string()),
        );
        match page["nextPageToken"].as_str() {
            Some(next) => token = next.to_string(),
            None => break,
        }
    }
    let mut newest_first = names.clone();
    newest_first.reverse();
    assert_eq!(listed, newest_first);

    let delete = format!("/v1beta/{}", names[1]);
    assert_eq!(
        harness.call(reqwest::Method::DELETE, &delete, None).await,
        (200, json!({}))
    );
    assert_eq!(
        harness.call(reqwest::Method::GET, &delete, None).await.0,
        404
    );
}

#[tokio::test]
async fn expired_batches_keep_partial_results_and_downloads_can_drop() {
    let harness = Harness::start(Duration::from_secs(3600)).await;
    harness.emulator.set_faults(FaultPlan {
        batch_fate: BatchFate::Expire,
        partial: 0.5,
        ..FaultPlan::default()
    });
    let lines: Vec<String> = (0..6).map(|i| file_line(&format!("k{i}"), "x")).collect();
    let file = harness.upload(&lines.join("\n")).await;
    let operation = harness.create(json!({"fileName": file})).await;
    let name = operation["name"].as_str().unwrap();
    harness.force_end(name);
    let operation = harness.get(name).await;
    assert_eq!(operation["metadata"]["state"], EXPIRED);
    assert_eq!(
        operation["metadata"]["batchStats"],
        json!({"requestCount": "6", "successfulRequestCount": "3", "pendingRequestCount": "3"})
    );
    assert_eq!(harness.results(&operation).await.len(), 3);

    harness.emulator.set_faults(FaultPlan {
        drop_results_after_bytes: Some(50),
        ..FaultPlan::default()
    });
    let file = operation["response"]["responsesFile"].as_str().unwrap();
    let cut = harness
        .client
        .get(harness.url(&format!("/v1beta/{file}:download?alt=media")))
        .header("x-goog-api-key", "test-key")
        .send()
        .await
        .unwrap();
    assert!(cut.bytes().await.is_err(), "the body must end early");
}

#[tokio::test]
async fn a_batch_past_the_enqueued_token_quota_answers_429() {
    let harness = Harness::start(Duration::from_secs(60)).await;
    let requests: Vec<Value> = ["Ada Lovelace, 36", "Alan Turing, 41"]
        .iter()
        .map(|text| json!({"contents": [{"role": "user", "parts": [{"text": text}]}]}))
        .collect();
    let tokens: u64 = requests
        .iter()
        .map(|request| prompt_tokens(Api::Gemini, request))
        .sum();
    let limit = tokens * 3 / 2;
    harness.emulator.set_quotas(Quotas {
        gemini_enqueued_tokens: Some(limit),
        ..Quotas::default()
    });
    let inline = json!({"requests": {"requests": requests
        .iter()
        .map(|request| json!({"request": request}))
        .collect::<Vec<_>>()}});
    let first = harness.create(inline.clone()).await;
    let body = json!({"batch": {"displayName": "extraction", "inputConfig": inline}});
    let path = "/v1beta/models/gemini-2.5-flash:batchGenerateContent";
    let (status, refused) = harness
        .call(reqwest::Method::POST, path, Some(body.clone()))
        .await;
    assert_eq!(status, 429);
    assert_eq!(refused["error"]["code"], 429);
    assert_eq!(refused["error"]["status"], "RESOURCE_EXHAUSTED");
    let (_, list) = harness
        .call(reqwest::Method::GET, "/v1beta/batches", None)
        .await;
    assert_eq!(list["operations"].as_array().unwrap().len(), 1);

    // Once the first batch has ended, another fits; the count is its prompt tokens.
    let name = first["name"].as_str().unwrap();
    harness.force_end(name);
    let ended = harness.get(name).await;
    assert_eq!(ended["metadata"]["state"], SUCCEEDED);
    let reported: u64 = ended["response"]["inlinedResponses"]["inlinedResponses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r["response"]["usageMetadata"]["promptTokenCount"]
                .as_u64()
                .unwrap()
        })
        .sum();
    assert_eq!(reported, tokens);
    let (status, _) = harness.call(reqwest::Method::POST, path, Some(body)).await;
    assert_eq!(status, 200);
    let report = harness.emulator.quota_report().gemini;
    assert_eq!(
        (report.limit, report.peak, report.refused, report.admitted),
        (Some(limit), tokens, 1, 2)
    );
}

/// `/v1/files` and `/v1/batches` are both APIs' on the emulator's host: a Google API
/// key makes the call Gemini's, a bearer token OpenAI's; `/v1/models/…` is Gemini's.
#[tokio::test]
async fn v1_calls_go_to_the_api_whose_credential_they_carry() {
    use crate::common::testing::{call_json, frozen_shared};
    let app = crate::app(frozen_shared());
    let body = || axum::body::Body::empty();
    let google = [("x-goog-api-key", "test-key")];
    let (status, listed) = call_json(&app, "GET", "/v1/batches", &google, body()).await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed, json!({}), "Gemini's empty list");
    let (_, listed) = call_json(&app, "GET", "/v1/files?key=test-key", &[], body()).await;
    assert_eq!(listed, json!({}));
    let openai = [("authorization", "Bearer test-key")];
    let (status, listed) = call_json(&app, "GET", "/v1/batches", &openai, body()).await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["object"], "list", "OpenAI's list");
    let create = json!({"batch": {"displayName": "x", "inputConfig": {"fileName": "files/x"}}});
    let (status, refused) = call_json(
        &app,
        "POST",
        "/v1/models/gemini-1.5-pro:batchGenerateContent",
        &[
            ("x-goog-api-key", "test-key"),
            ("content-type", "application/json"),
        ],
        create.to_string(),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(refused["error"]["status"], "NOT_FOUND");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("models/gemini-1.5-pro is not found for API version v1,"));
}
