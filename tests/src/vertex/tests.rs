//! The routes exercised in process, one test per behaviour of the real API.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{BatchFate, lock};
use crate::gcs::parse_gs_uri;
use crate::{Config, Emulator, FaultPlan, Quotas};

use super::batches::{CANCELLED, CANCELLING, EXPIRED, FAILED, PENDING, QUEUED, RUNNING, SUCCEEDED};

const BUCKET: &str = "batch-bucket";

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

    fn jobs_url(&self) -> String {
        format!(
            "{}/v1/projects/proj/locations/us-central1/batchPredictionJobs",
            self.emulator.base_url()
        )
    }

    async fn upload(&self, name: &str, body: String) {
        let response = self
            .client
            .post(format!(
                "{}/upload/storage/v1/b/{BUCKET}/o",
                self.emulator.base_url()
            ))
            .query(&[("uploadType", "media"), ("name", name)])
            .bearer_auth("test-key")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }

    async fn download(&self, uri: &str) -> reqwest::Response {
        let (bucket, object) = parse_gs_uri(uri).unwrap();
        self.client
            .get(format!(
                "{}/storage/v1/b/{bucket}/o/{}",
                self.emulator.base_url(),
                percent_encoding::utf8_percent_encode(object, percent_encoding::NON_ALPHANUMERIC)
            ))
            .query(&[("alt", "media")])
            .bearer_auth("test-key")
            .send()
            .await
            .unwrap()
    }

    async fn call(&self, method: reqwest::Method, url: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.client.request(method, url).bearer_auth("test-key");
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn create(&self, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, &self.jobs_url(), Some(body))
            .await
    }

    async fn get(&self, name: &str) -> Value {
        let (status, job) = self
            .call(
                reqwest::Method::GET,
                &format!("{}/v1/{name}", self.emulator.base_url()),
                None,
            )
            .await;
        assert_eq!(status, 200, "{job}");
        job
    }

    fn force_end(&self, name: &str) {
        lock(&self.emulator.shared.forced).insert(name.to_string(), ());
    }

    async fn predictions(&self, job: &Value) -> Vec<Value> {
        let directory = job["outputInfo"]["gcsOutputDirectory"].as_str().unwrap();
        let text = self
            .download(&format!("{directory}/predictions.jsonl"))
            .await
            .text()
            .await
            .unwrap();
        text.lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }
}

fn job_body(input: &str) -> Value {
    json!({
        "displayName": "extraction-1",
        "model": "publishers/google/models/gemini-2.5-flash",
        "labels": {"job": "extraction-1"},
        "inputConfig": {"instancesFormat": "jsonl", "gcsSource": {"uris": [format!("gs://{BUCKET}/{input}")]}},
        "outputConfig": {"predictionsFormat": "jsonl", "gcsDestination": {"outputUriPrefix": format!("gs://{BUCKET}/out")}},
    })
}

fn input_line(id: &str, text: &str) -> String {
    json!({
        "custom_id": id,
        "request": {
            "contents": [{"role": "user", "parts": [{"text": text}]}],
            "labels": {"custom_id": id},
            "generationConfig": {
                "responseMimeType": "application/json",
                "responseJsonSchema": {"type": "object", "properties": {"total": {"type": "integer"}}, "required": ["total"]}
            }
        }
    })
    .to_string()
}

fn input(lines: &[String]) -> String {
    lines.join("\n") + "\n"
}

#[tokio::test]
async fn a_job_moves_through_its_states_and_writes_predictions() {
    let harness = Harness::start(Duration::from_millis(150)).await;
    let bad_role = r#"{"request":{"contents":[{"role":"assistant","parts":[{"text":"x"}]}],"labels":{"custom_id":"r-bad"}}}"#;
    harness
        .upload(
            "in/requests.jsonl",
            input(&[
                input_line("r-0", "first invoice"),
                input_line("r-1", "second [[fault:provider_error]]"),
                input_line("r-2", "third [[fault:refusal]]"),
                bad_role.to_string(),
            ]),
        )
        .await;
    let (status, job) = harness.create(job_body("in/requests.jsonl")).await;
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["state"], QUEUED);
    assert_eq!(job["labels"], json!({"job": "extraction-1"}));
    let name = job["name"].as_str().unwrap();
    assert!(name.starts_with("projects/proj/locations/us-central1/batchPredictionJobs/"));

    let mut states = vec![job["state"].as_str().unwrap().to_string()];
    while states.last().unwrap() != SUCCEEDED {
        tokio::time::sleep(Duration::from_millis(40)).await;
        let state = harness.get(name).await["state"]
            .as_str()
            .unwrap()
            .to_string();
        if states.last() != Some(&state) {
            states.push(state);
        }
    }
    assert_eq!(states, [QUEUED, PENDING, RUNNING, SUCCEEDED]);

    let job = harness.get(name).await;
    assert_eq!(
        job["completionStats"],
        json!({"successfulCount": "2", "failedCount": "2"})
    );
    assert!(job["startTime"].is_string() && job["endTime"].is_string());
    let directory = job["outputInfo"]["gcsOutputDirectory"].as_str().unwrap();
    assert!(
        directory.starts_with(&format!("gs://{BUCKET}/out/prediction-model-")),
        "{directory}"
    );

    let lines = harness.predictions(&job).await;
    let by_id: HashMap<&str, &Value> = lines
        .iter()
        .map(|line| {
            (
                line["request"]["labels"]["custom_id"].as_str().unwrap(),
                line,
            )
        })
        .collect();
    assert_eq!(by_id.len(), 4);
    let ok = by_id["r-0"];
    assert_eq!(ok["status"], "");
    assert_eq!(ok["custom_id"], "r-0", "sibling keys are echoed");
    assert!(ok["processed_time"].as_str().unwrap().ends_with("+00:00"));
    let text = ok["response"]["candidates"][0]["content"]["parts"][0]["text"]
        .as_str()
        .unwrap();
    assert!(serde_json::from_str::<Value>(text).unwrap()["total"].is_i64());
    assert!(
        by_id["r-1"]["status"]
            .as_str()
            .unwrap()
            .starts_with("Bad Request: {\"error\": {\"code\": 400")
    );
    assert!(by_id["r-1"].get("response").is_none());
    assert_eq!(
        by_id["r-2"]["response"]["candidates"][0]["finishReason"],
        "SAFETY"
    );
    assert!(
        by_id["r-bad"]["status"]
            .as_str()
            .unwrap()
            .contains("Please use a valid role")
    );
}

#[tokio::test]
async fn create_rejects_invalid_jobs() {
    let harness = Harness::start(Duration::from_secs(3600)).await;
    let with = |pointer: &str, value: Value| {
        let mut body = job_body("in.jsonl");
        *body.pointer_mut(pointer).unwrap() = value;
        body
    };
    let cases = [
        (with("/displayName", json!("")), 400),
        (with("/model", json!("gemini-2.5-flash")), 400),
        (
            with("/model", json!("publishers/google/models/text-bison")),
            404,
        ),
        // Shut down, so no longer on the list.
        (
            with(
                "/model",
                json!("publishers/google/models/gemini-2.0-flash-001"),
            ),
            404,
        ),
        (with("/labels", json!({"Upper": "x"})), 400),
        (with("/labels", json!({"key": "has space"})), 400),
        (with("/inputConfig/instancesFormat", json!("bigquery")), 400),
        (with("/inputConfig/gcsSource/uris", json!([])), 400),
        (
            with(
                "/outputConfig/gcsDestination/outputUriPrefix",
                json!("/tmp/out"),
            ),
            400,
        ),
    ];
    for (body, expected) in cases {
        let (status, error) = harness.create(body.clone()).await;
        assert_eq!(status, expected, "{body} -> {error}");
        assert_eq!(error["error"]["code"], expected);
        if expected == 404 {
            let message = error["error"]["message"].as_str().unwrap();
            assert!(
                message.contains("was not found or your project does not have access to it"),
                "{message}"
            );
        }
    }
    let unauthenticated = harness
        .client
        .post(harness.jobs_url())
        .json(&job_body("in.jsonl"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);
}

#[tokio::test]
async fn bad_input_fails_the_job() {
    let harness = Harness::start(Duration::from_secs(3600)).await;
    harness
        .upload("bad.jsonl", "{\"request\": {}}\nnot json\n".to_string())
        .await;
    for input in ["bad.jsonl", "missing.jsonl"] {
        let (_, job) = harness.create(job_body(input)).await;
        let name = job["name"].as_str().unwrap();
        harness.force_end(name);
        let job = harness.get(name).await;
        assert_eq!(job["state"], FAILED, "{job}");
        assert_eq!(job["error"]["code"], 3);
        assert!(
            job["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("Failed to import data.")
        );
        assert!(job.get("outputInfo").is_none());
    }
}

#[tokio::test]
async fn cancelling_ends_in_cancelled_and_finished_jobs_cannot_be_cancelled() {
    let harness = Harness::start(Duration::from_millis(200)).await;
    harness
        .upload("in.jsonl", input(&[input_line("a", "x")]))
        .await;
    let (_, job) = harness.create(job_body("in.jsonl")).await;
    let name = job["name"].as_str().unwrap();
    let cancel_url = format!("{}/v1/{name}:cancel", harness.emulator.base_url());
    let (status, answer) = harness.call(reqwest::Method::POST, &cancel_url, None).await;
    assert_eq!((status, answer), (200, json!({})));
    assert_eq!(harness.get(name).await["state"], CANCELLING);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let job = harness.get(name).await;
    assert_eq!(job["state"], CANCELLED);
    assert_eq!(job["error"], json!({"code": 1, "message": "CANCELED"}));
    assert!(
        job.get("completionStats").is_none(),
        "nothing ran before the cancel"
    );

    let (status, error) = harness.call(reqwest::Method::POST, &cancel_url, None).await;
    assert_eq!(status, 400);
    assert_eq!(error["error"]["status"], "FAILED_PRECONDITION");
}

#[tokio::test]
async fn expired_jobs_keep_partial_output() {
    let harness = Harness::start(Duration::from_secs(3600)).await;
    harness.emulator.set_faults(FaultPlan {
        batch_fate: BatchFate::Expire,
        partial: 0.5,
        ..FaultPlan::default()
    });
    let lines: Vec<String> = (0..4).map(|i| input_line(&format!("r-{i}"), "x")).collect();
    harness.upload("in.jsonl", input(&lines)).await;
    let (_, job) = harness.create(job_body("in.jsonl")).await;
    let name = job["name"].as_str().unwrap();
    harness.force_end(name.rsplit('/').next().unwrap());
    let job = harness.get(name).await;
    assert_eq!(job["state"], EXPIRED);
    assert_eq!(
        job["completionStats"],
        json!({"successfulCount": "2", "incompleteCount": "2"})
    );
    assert_eq!(harness.predictions(&job).await.len(), 2);
}

#[tokio::test]
async fn result_downloads_can_be_cut_short() {
    let harness = Harness::start(Duration::from_secs(3600)).await;
    let lines: Vec<String> = (0..20)
        .map(|i| input_line(&format!("r-{i}"), "x"))
        .collect();
    harness.upload("in.jsonl", input(&lines)).await;
    let (_, job) = harness.create(job_body("in.jsonl")).await;
    let name = job["name"].as_str().unwrap();
    harness.force_end(name);
    let job = harness.get(name).await;
    harness.emulator.set_faults(FaultPlan {
        drop_results_after_bytes: Some(100),
        ..FaultPlan::default()
    });
    let directory = job["outputInfo"]["gcsOutputDirectory"].as_str().unwrap();
    let cut = harness
        .download(&format!("{directory}/predictions.jsonl"))
        .await;
    assert!(cut.bytes().await.is_err(), "the body must end early");
    assert!(
        harness
            .download(&format!("gs://{BUCKET}/in.jsonl"))
            .await
            .bytes()
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn lists_page_and_filter() {
    let harness = Harness::start(Duration::from_secs(3600)).await;
    let mut names = Vec::new();
    for i in 0..3 {
        let mut body = job_body("in.jsonl");
        body["displayName"] = json!(format!("job-{i}"));
        body["labels"] = json!({"run": format!("r{i}")});
        let (_, job) = harness.create(body).await;
        names.push(job["name"].as_str().unwrap().to_string());
    }
    let mut listed = Vec::new();
    let mut token = String::new();
    loop {
        let url = format!("{}?pageSize=2&pageToken={token}", harness.jobs_url());
        let (status, page) = harness.call(reqwest::Method::GET, &url, None).await;
        assert_eq!(status, 200, "{page}");
        for job in page["batchPredictionJobs"].as_array().unwrap() {
            listed.push(job["name"].as_str().unwrap().to_string());
        }
        match page["nextPageToken"].as_str() {
            Some(next) => token = next.to_string(),
            None => break,
        }
    }
    names.reverse();
    assert_eq!(listed, names, "newest first, each once");

    let url = format!("{}?filter=labels.run%3D%22r1%22", harness.jobs_url());
    let (_, filtered) = harness.call(reqwest::Method::GET, &url, None).await;
    let only = filtered["batchPredictionJobs"].as_array().unwrap();
    assert_eq!(only.len(), 1);
    assert_eq!(only[0]["displayName"], "job-1");

    let other_project = harness.jobs_url().replace("/proj/", "/other/");
    let (_, empty) = harness
        .call(reqwest::Method::GET, &other_project, None)
        .await;
    assert_eq!(empty, json!({}));
}

#[tokio::test]
async fn a_job_past_the_concurrent_jobs_quota_answers_429() {
    let harness = Harness::start(Duration::from_secs(60)).await;
    harness.emulator.set_quotas(Quotas {
        vertex_concurrent_jobs: Some(1),
        ..Quotas::default()
    });
    harness
        .upload("in.jsonl", input(&[input_line("r1", "2 + 2")]))
        .await;
    let (status, first) = harness.create(job_body("in.jsonl")).await;
    assert_eq!(status, 200, "{first}");
    let (status, refused) = harness.create(job_body("in.jsonl")).await;
    assert_eq!(status, 429);
    assert_eq!(refused["error"]["code"], 429);
    assert_eq!(refused["error"]["status"], "RESOURCE_EXHAUSTED");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("Quota exceeded for aiplatform.googleapis.com/batch_prediction_jobs")
            && message.contains("concurrent"),
        "{message}"
    );
    let (_, list) = harness
        .call(reqwest::Method::GET, &harness.jobs_url(), None)
        .await;
    assert_eq!(list["batchPredictionJobs"].as_array().unwrap().len(), 1);

    // Once the first job has ended (no one needs to have looked), another fits.
    harness.force_end(first["name"].as_str().unwrap());
    let (status, second) = harness.create(job_body("in.jsonl")).await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(
        harness.get(first["name"].as_str().unwrap()).await["state"],
        SUCCEEDED
    );
    let report = harness.emulator.quota_report().vertex;
    assert_eq!(
        (report.limit, report.peak, report.refused, report.admitted),
        (Some(1), 1, 1, 2)
    );
}
