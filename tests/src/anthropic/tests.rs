//! The routes exercised in process, one test per behaviour of the real API.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::http::StatusCode;
use serde_json::{Map, Value, json};
use tower::ServiceExt;

use crate::answer::answer_for;
use crate::common::testing::{BASE_URL, STEP, call, call_json, frozen_shared, jsonl, steps_ago};
use crate::common::{BatchFate, Config, RequestFault, Shared, lock};
use crate::quota::Quotas;

use super::batches::MAX_BODY_BYTES;
use super::results::ResultKind;
use super::validation::{MAX_REQUESTS, plan_batch};
use super::{Anthropic, routes};

const HEADERS: [(&str, &str); 3] = [
    ("x-api-key", "test-key"),
    ("anthropic-version", "2023-06-01"),
    ("content-type", "application/json"),
];

fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"]
    })
}

fn request(custom_id: &str, text: &str) -> Value {
    json!({"custom_id": custom_id, "params": {
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "system": "Extract the person.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}],
        "tools": [
            {"name": "other", "description": "not used", "input_schema": {"type": "object"}},
            {"name": "person", "description": "the person", "input_schema": schema()}
        ],
        "tool_choice": {"type": "tool", "name": "person"}
    }})
}

fn requests(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| request(&format!("r{i}"), &format!("text {i}")))
        .collect()
}

struct Harness {
    state: Arc<Anthropic>,
    router: Router,
}

impl Harness {
    fn new() -> Self {
        let state = Arc::new(Anthropic {
            shared: frozen_shared(),
            batches: Mutex::new(Vec::new()),
        });
        Self {
            router: routes(state.clone()),
            state,
        }
    }

    async fn send(&self, method: &str, uri: &str, body: Value) -> (StatusCode, Value) {
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        call_json(&self.router, method, uri, &HEADERS, body).await
    }

    async fn create_raw(&self, requests: Vec<Value>) -> (StatusCode, Value) {
        self.send(
            "POST",
            "/v1/messages/batches",
            json!({"requests": requests}),
        )
        .await
    }

    async fn create(&self, requests: Vec<Value>) -> String {
        let (status, batch) = self.create_raw(requests).await;
        assert_eq!(status, StatusCode::OK, "{batch}");
        assert_eq!(batch["processing_status"], "in_progress");
        batch["id"].as_str().unwrap().to_string()
    }

    async fn batch(&self, id: &str) -> Value {
        let (status, batch) = self
            .send("GET", &format!("/v1/messages/batches/{id}"), Value::Null)
            .await;
        assert_eq!(status, StatusCode::OK, "{batch}");
        batch
    }

    fn force_end(&self, id: &str) {
        lock(&self.state.shared.forced).insert(id.to_string(), ());
    }

    fn set_fate(&self, fate: BatchFate, partial: f64) {
        let mut plan = lock(&self.state.shared.faults);
        plan.batch_fate = fate;
        plan.partial = partial;
    }

    /// Ends the batch; answers it and its results by custom id.
    async fn finished(&self, id: &str) -> (Value, HashMap<String, Value>) {
        self.force_end(id);
        let batch = self.batch(id).await;
        let url = batch["results_url"].as_str().unwrap();
        let path = url.strip_prefix(BASE_URL).unwrap();
        let (status, body) = call(&self.router, "GET", path, &HEADERS, Body::empty()).await;
        assert_eq!(status, StatusCode::OK);
        let results = jsonl(&body)
            .into_iter()
            .map(|line| {
                (
                    line["custom_id"].as_str().unwrap().to_string(),
                    line["result"].clone(),
                )
            })
            .collect();
        (batch, results)
    }
}

#[tokio::test]
async fn needs_the_key_and_the_version_header() {
    let harness = Harness::new();
    let cases = [
        (
            vec![("anthropic-version", "2023-06-01")],
            StatusCode::UNAUTHORIZED,
            "authentication_error",
        ),
        (
            vec![
                ("x-api-key", "wrong-secret-9"),
                ("anthropic-version", "2023-06-01"),
            ],
            StatusCode::UNAUTHORIZED,
            "authentication_error",
        ),
        (
            vec![("x-api-key", "test-key")],
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
        ),
        (
            vec![
                ("authorization", "Bearer wrong-secret-9"),
                ("anthropic-version", "2023-06-01"),
            ],
            StatusCode::UNAUTHORIZED,
            "authentication_error",
        ),
        (
            vec![("authorization", "Bearer test-key")],
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
        ),
    ];
    for (headers, status, kind) in cases {
        let (got, body) = call_json(
            &harness.router,
            "GET",
            "/v1/messages/batches",
            &headers,
            Body::empty(),
        )
        .await;
        assert_eq!(got, status);
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["type"], kind);
        assert!(!body.to_string().contains("wrong-secret-9"));
    }
}

#[tokio::test]
async fn create_rejects_only_a_bad_envelope_as_a_whole() {
    let harness = Harness::new();
    let with_params = |edit: &dyn Fn(&mut Map<String, Value>)| {
        let mut r = request("a", "x");
        edit(r["params"].as_object_mut().unwrap());
        vec![r]
    };
    let cases: Vec<(&str, Vec<Value>)> = vec![
        ("no requests", vec![]),
        ("bad custom_id", vec![request("has space", "x")]),
        ("long custom_id", vec![request(&"a".repeat(65), "x")]),
        ("duplicate", vec![request("a", "x"), request("a", "y")]),
        ("no params", vec![json!({"custom_id": "a"})]),
        // The parameters the Message Batches guide lists as not supported in batches.
        (
            "stream",
            with_params(&|p| {
                p.insert("stream".into(), json!(true));
            }),
        ),
        (
            "zero max_tokens",
            with_params(&|p| {
                p.insert("max_tokens".into(), json!(0));
            }),
        ),
    ];
    for (case, requests) in cases {
        let (status, body) = harness.create_raw(requests).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{case}: {body}");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{case}");
    }
    let (status, body) = call_json(
        &harness.router,
        "POST",
        "/v1/messages/batches",
        &HEADERS,
        "{not json",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["type"], "error");
    assert!(lock(&harness.state.batches).is_empty());
    assert_eq!(
        plan_batch(
            json!({"requests": vec![json!({}); MAX_REQUESTS + 1]})
                .to_string()
                .as_bytes(),
            BatchFate::Complete,
            &frozen_shared(),
            "msgbatch_test",
            |_| Ok(()),
        )
        .unwrap_err()
        .status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn bodies_over_256_mb_are_refused_with_413() {
    let harness = Harness::new();
    let length = (MAX_BODY_BYTES + 1).to_string();
    let mut headers = HEADERS.to_vec();
    headers.push(("content-length", &length));
    let (status, body) = call_json(
        &harness.router,
        "POST",
        "/v1/messages/batches",
        &headers,
        Body::empty(),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["error"]["type"], "request_too_large");
}

#[tokio::test]
async fn a_batch_ends_with_one_tool_use_answer_per_request() {
    let harness = Harness::new();
    let id = harness.create(requests(3)).await;
    let batch = harness.batch(&id).await;
    assert!(batch["results_url"].is_null() && batch["ended_at"].is_null());
    assert_eq!(batch["request_counts"]["processing"], 3);
    let (status, early) = harness
        .send(
            "GET",
            &format!("/v1/messages/batches/{id}/results"),
            Value::Null,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{early}");

    let (batch, results) = harness.finished(&id).await;
    assert_eq!(batch["type"], "message_batch");
    assert_eq!(batch["processing_status"], "ended");
    assert!(batch["ended_at"].is_string());
    assert!(batch["archived_at"].is_null() && batch["cancel_initiated_at"].is_null());
    assert_eq!(
        batch["results_url"],
        format!("{BASE_URL}/v1/messages/batches/{id}/results")
    );
    assert_eq!(
        batch["request_counts"],
        json!({"processing": 0, "succeeded": 3, "errored": 0, "canceled": 0, "expired": 0})
    );
    assert_eq!(results.len(), 3);
    for i in 0..3 {
        let result = &results[&format!("r{i}")];
        assert_eq!(result["type"], "succeeded");
        let message = &result["message"];
        assert_eq!(message["type"], "message");
        assert_eq!(message["role"], "assistant");
        assert_eq!(message["stop_reason"], "tool_use");
        assert!(message["usage"]["input_tokens"].as_u64().unwrap() > 0);
        let block = &message["content"][0];
        assert_eq!(block["type"], "tool_use");
        assert_eq!(block["name"], "person");
        assert!(block["id"].as_str().unwrap().starts_with("toolu_"));
        assert_eq!(block["input"], answer_for(&schema(), &format!("text {i}")));
    }
}

#[tokio::test]
async fn request_fault_markers_shape_each_result() {
    let harness = Harness::new();
    // Row faults only act on several-rows requests (see the model tests).
    let kinds: Vec<&str> = RequestFault::ALL
        .iter()
        .filter(|(_, fault)| !fault.is_row_fault())
        .map(|(name, _)| *name)
        .collect();
    let batch: Vec<Value> = kinds
        .iter()
        .map(|kind| request(kind, &format!("Bob [[fault:{kind}]]")))
        .collect();
    let id = harness.create(batch).await;
    let (batch, results) = harness.finished(&id).await;
    assert_eq!(batch["request_counts"]["errored"], 3);
    assert_eq!(batch["request_counts"]["succeeded"], 4);
    for (kind, error) in [
        ("provider_error", "invalid_request_error"),
        ("rate_limit", "rate_limit_error"),
        ("server_error", "api_error"),
    ] {
        assert_eq!(results[kind]["type"], "errored");
        assert_eq!(results[kind]["error"]["type"], "error");
        assert_eq!(results[kind]["error"]["error"]["type"], error);
    }
    let message = |kind: &str| results[kind]["message"].clone();
    assert_eq!(message("non_json")["content"][0]["type"], "text");
    let broken = message("schema_break");
    assert_eq!(broken["content"][0]["type"], "tool_use");
    assert!(broken["content"][0]["input"].get("name").is_none());
    assert_eq!(message("refusal")["stop_reason"], "refusal");
    assert_eq!(message("refusal")["content"][0]["type"], "text");
    let truncated = message("truncate");
    assert_eq!(truncated["stop_reason"], "max_tokens");
    let text = truncated["content"][0]["text"].as_str().unwrap();
    assert!(serde_json::from_str::<Value>(text).is_err());
}

#[tokio::test]
async fn fates_expire_part_or_fail_every_request() {
    let harness = Harness::new();
    harness.set_fate(BatchFate::Expire, 0.25);
    let id = harness.create(requests(4)).await;
    let (batch, results) = harness.finished(&id).await;
    assert_eq!(
        batch["request_counts"],
        json!({"processing": 0, "succeeded": 1, "errored": 0, "canceled": 0, "expired": 3})
    );
    let expired = results
        .values()
        .filter(|r| **r == json!({"type": "expired"}))
        .count();
    assert_eq!(expired, 3);

    harness.set_fate(BatchFate::AllFail, 0.5);
    let id = harness.create(requests(4)).await;
    let (batch, results) = harness.finished(&id).await;
    assert_eq!(batch["request_counts"]["errored"], 4);
    assert!(
        results
            .values()
            .all(|r| r["error"]["error"]["type"] == "api_error")
    );
}

#[tokio::test]
async fn cancel_then_delete() {
    let harness = Harness::new();
    let id = harness.create(requests(4)).await;
    let uri = format!("/v1/messages/batches/{id}");
    let (status, body) = harness.send("DELETE", &uri, Value::Null).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    lock(&harness.state.batches)[0].created = steps_ago(1);
    let (status, batch) = harness
        .send("POST", &format!("{uri}/cancel"), Value::Null)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(batch["processing_status"], "canceling");
    assert!(batch["cancel_initiated_at"].is_string());
    assert_eq!(batch["request_counts"]["processing"], 4);

    let (batch, results) = harness.finished(&id).await;
    assert_eq!(
        batch["request_counts"],
        json!({"processing": 0, "succeeded": 2, "errored": 0, "canceled": 2, "expired": 0})
    );
    assert_eq!(
        results.values().filter(|r| r["type"] == "canceled").count(),
        2
    );

    let (status, deleted) = harness.send("DELETE", &uri, Value::Null).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(deleted, json!({"id": id, "type": "message_batch_deleted"}));
    let (status, body) = harness.send("GET", &uri, Value::Null).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["type"], "not_found_error");
}

#[tokio::test]
async fn lists_page_both_ways() {
    let harness = Harness::new();
    let mut created = Vec::new();
    for _ in 0..7 {
        created.push(harness.create(requests(1)).await);
    }
    created.reverse();
    let ids = |page: &Value| -> Vec<String> {
        page["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["id"].as_str().unwrap().to_string())
            .collect()
    };
    let mut listed = Vec::new();
    let mut uri = "/v1/messages/batches?limit=3".to_string();
    loop {
        let (status, page) = harness.send("GET", &uri, Value::Null).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        listed.extend(ids(&page));
        assert_eq!(page["last_id"].as_str(), listed.last().map(String::as_str));
        if page["has_more"] == false {
            break;
        }
        uri = format!(
            "/v1/messages/batches?limit=3&after_id={}",
            page["last_id"].as_str().unwrap()
        );
    }
    assert_eq!(listed, created);

    let uri = format!("/v1/messages/batches?limit=2&before_id={}", created[3]);
    let (_, page) = harness.send("GET", &uri, Value::Null).await;
    assert_eq!(ids(&page), created[1..3]);
    assert_eq!(page["has_more"], true);
    assert_eq!(page["first_id"], created[1]);
    let uri = format!("/v1/messages/batches?limit=5&before_id={}", created[1]);
    let (_, page) = harness.send("GET", &uri, Value::Null).await;
    assert_eq!(ids(&page), created[..1]);
    assert_eq!(page["has_more"], false);
    let (status, _) = harness
        .send("GET", "/v1/messages/batches?limit=0", Value::Null)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn results_downloads_honour_the_planned_drop() {
    let harness = Harness::new();
    let id = harness.create(requests(10)).await;
    harness.force_end(&id);
    lock(&harness.state.shared.faults).drop_results_after_bytes = Some(50);
    let request = axum::http::Request::get(format!("/v1/messages/batches/{id}/results"))
        .header("x-api-key", "test-key")
        .header("anthropic-version", "2023-06-01")
        .body(Body::empty())
        .unwrap();
    let response = tower::ServiceExt::oneshot(harness.router.clone(), request)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn results_come_shuffled_and_the_same_seed_gives_the_same_order() {
    let harness = Harness::new();
    let id = harness.create(requests(20)).await;
    harness.force_end(&id);
    harness.batch(&id).await;
    let path = format!("/v1/messages/batches/{id}/results");
    let (status, body) = call(&harness.router, "GET", &path, &HEADERS, Body::empty()).await;
    assert_eq!(status, StatusCode::OK);
    let lines = jsonl(&body);
    let ids: Vec<&str> = lines
        .iter()
        .map(|line| line["custom_id"].as_str().unwrap())
        .collect();
    let input: Vec<String> = (0..20).map(|i| format!("r{i}")).collect();
    assert_ne!(ids, input, "results are not in input order");
    // Exactly the lines of the input order, rearranged.
    let mut batches = lock(&harness.state.batches);
    let batch = batches.iter_mut().find(|b| b.id == id).unwrap();
    let in_input_order: Vec<Value> = batch
        .planned
        .iter()
        .map(|p| json!({"custom_id": p.custom_id, "result": p.result}))
        .collect();
    let mut sorted = lines.clone();
    sorted.sort_by_key(|line| {
        line["custom_id"].as_str().unwrap()[1..]
            .parse::<u32>()
            .unwrap()
    });
    assert_eq!(sorted, in_input_order);
    // The same seed writes the same bytes; another seed another order.
    let same = frozen_shared();
    batch.end(&same, 20, ResultKind::Expired);
    assert_eq!(batch.ended.as_ref().unwrap().results, body);
    let mut other = Config {
        step: STEP,
        ..Config::default()
    };
    other.seed = harness.state.shared.config.seed.wrapping_add(1);
    batch.end(
        &Shared::new(other, BASE_URL.to_string()),
        20,
        ResultKind::Expired,
    );
    assert_ne!(batch.ended.as_ref().unwrap().results, body);
}

#[tokio::test]
async fn every_answer_carries_a_request_id() {
    let router = super::router(frozen_shared());
    let request_id = |response: &axum::http::Response<Body>| {
        let value = response.headers()["request-id"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(value.starts_with("req_") && value.len() > 4, "{value}");
        value
    };
    let send = |headers: &'static [(&'static str, &'static str)]| {
        let mut request = axum::http::Request::get("/v1/messages/batches");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        tower::ServiceExt::oneshot(router.clone(), request.body(Body::empty()).unwrap())
    };
    let ok = send(&HEADERS).await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let first = request_id(&ok);
    let unauthorized = send(&[("anthropic-version", "2023-06-01")]).await.unwrap();
    assert_eq!(unauthorized.status(), StatusCode::UNAUTHORIZED);
    assert_ne!(request_id(&unauthorized), first);
}

#[test]
fn a_repeated_row_key_stays_repeated_in_the_results_line() {
    let row =
        json!({"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]});
    let schema = json!({"type": "object", "properties": {
        "1": {"$ref": "#/$defs/row"}, "2": {"$ref": "#/$defs/row"}
    }, "required": ["1", "2"], "$defs": {"row": row}});
    let params = json!({"model": "claude-sonnet-4-5", "max_tokens": 1024,
        "tools": [{"name": "rows", "input_schema": schema}],
        "tool_choice": {"type": "tool", "name": "rows"},
        "messages": [{"role": "user", "content": "### 1\nAda Lovelace\n\n### 2\nAlan Turing [[fault:repeat_row]]"}]});
    let mut cache = crate::cache::CacheState::new(crate::cache::CacheConfig::default());
    let planned = super::results::plan_result(
        "r1",
        params.as_object().unwrap(),
        BatchFate::Complete,
        &mut cache,
    );
    let line = planned.ran_line();
    assert_eq!(line.matches("\"2\":").count(), 2, "{line}");
    let parsed: Value = serde_json::from_str(&line).expect("still one JSON line");
    assert_eq!(parsed["result"]["message"]["stop_reason"], "tool_use");
}

#[tokio::test]
async fn a_create_past_the_processing_queue_quota_answers_429() {
    let harness = Harness::new();
    harness.state.shared.quotas.set(Quotas {
        anthropic_queue_requests: Some(3),
        ..Quotas::default()
    });
    let first = harness.create(requests(2)).await;
    let request = axum::http::Request::post("/v1/messages/batches")
        .header("x-api-key", "test-key")
        .header("anthropic-version", "2023-06-01")
        .header("content-type", "application/json")
        .body(Body::from(json!({"requests": requests(2)}).to_string()))
        .unwrap();
    // With the request-id layer `router` adds around `routes`.
    let router = harness
        .router
        .clone()
        .layer(axum::middleware::from_fn_with_state(
            axum::http::HeaderName::from_static("request-id"),
            crate::common::add_request_id,
        ));
    let response = router.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().contains_key("request-id"));
    assert!(
        response.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0
    );
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert!(body["error"]["message"].as_str().unwrap().contains("3"));
    assert_eq!(lock(&harness.state.batches).len(), 1, "nothing created");

    // Once the first batch has ended, a batch filling the queue exactly fits.
    harness.force_end(&first);
    let second = harness.create(requests(3)).await;
    // A batch being canceled is out of the processing queue.
    let (status, _) = harness
        .send(
            "POST",
            &format!("/v1/messages/batches/{second}/cancel"),
            Value::Null,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    harness.create(requests(1)).await;
    let report = harness.state.shared.quotas.report().anthropic;
    assert_eq!(
        (report.limit, report.peak, report.refused, report.admitted),
        (Some(3), 3, 1, 3)
    );
}

/// Params are validated while the batch runs: each bad request is its own errored
/// result, the good ones beside it succeed.
#[tokio::test]
async fn bad_params_become_errored_results_of_their_own() {
    let harness = Harness::new();
    let with_params = |id: &str, edit: &dyn Fn(&mut Map<String, Value>)| {
        let mut r = request(id, "x");
        edit(r["params"].as_object_mut().unwrap());
        r
    };
    let output_config = |model: &str, schema: Value| {
        let model = model.to_string();
        move |p: &mut Map<String, Value>| {
            p.remove("tools");
            p.remove("tool_choice");
            p.insert("model".into(), json!(model));
            p.insert(
                "output_config".into(),
                json!({"format": {"type": "json_schema", "schema": schema}}),
            );
        }
    };
    let closed = |properties: Value| json!({"type": "object", "properties": properties, "additionalProperties": false});
    let cases: Vec<(&str, Value, &str, &str)> = vec![
        (
            "no_model",
            with_params("no_model", &|p| {
                p.remove("model");
            }),
            "invalid_request_error",
            "model: Field required",
        ),
        (
            "unknown_model",
            with_params("unknown_model", &|p| {
                p.insert("model".into(), json!("claude-imaginary-9"));
            }),
            "not_found_error",
            "model: claude-imaginary-9",
        ),
        (
            "no_max_tokens",
            with_params("no_max_tokens", &|p| {
                p.remove("max_tokens");
            }),
            "invalid_request_error",
            "max_tokens: Field required",
        ),
        (
            "hot",
            with_params("hot", &|p| {
                p.insert("temperature".into(), json!(1.5));
            }),
            "invalid_request_error",
            "temperature",
        ),
        (
            "no_messages",
            with_params("no_messages", &|p| {
                p.insert("messages".into(), json!([]));
            }),
            "invalid_request_error",
            "messages",
        ),
        (
            "system_message",
            with_params("system_message", &|p| {
                p.insert(
                    "messages".into(),
                    json!([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]),
                );
            }),
            "invalid_request_error",
            "Unexpected role \"system\"",
        ),
        (
            "unknown_tool",
            with_params("unknown_tool", &|p| {
                p.insert(
                    "tool_choice".into(),
                    json!({"type": "tool", "name": "missing"}),
                );
            }),
            "invalid_request_error",
            "tool_choice",
        ),
        (
            "old_model_output_config",
            with_params(
                "old_model_output_config",
                &output_config(
                    "claude-3-5-haiku-20241022",
                    closed(json!({"n": {"type": "string"}})),
                ),
            ),
            "invalid_request_error",
            "output_config.format: Extra inputs are not permitted",
        ),
        (
            "open_object",
            with_params(
                "open_object",
                &output_config(
                    "claude-sonnet-4-5",
                    json!({"type": "object", "properties": {"n": {"type": "string"}}}),
                ),
            ),
            "invalid_request_error",
            "output_config.format.schema: For 'object' type, 'additionalProperties' must be explicitly set to false",
        ),
        (
            "minimum",
            with_params(
                "minimum",
                &output_config(
                    "claude-sonnet-4-5",
                    closed(json!({"n": {"type": "integer", "minimum": 1}})),
                ),
            ),
            "invalid_request_error",
            "For 'integer' type, property 'minimum' is not supported",
        ),
        (
            "recursive",
            with_params(
                "recursive",
                &output_config("claude-sonnet-4-5", closed(json!({"next": {"$ref": "#"}}))),
            ),
            "invalid_request_error",
            "recursive schemas are not supported",
        ),
    ];
    let mut batch = vec![request("good", "text 0")];
    batch.extend(cases.iter().map(|(_, r, _, _)| r.clone()));
    let id = harness.create(batch).await;
    let (ended, results) = harness.finished(&id).await;
    assert_eq!(ended["request_counts"]["succeeded"], 1);
    assert_eq!(ended["request_counts"]["errored"], cases.len());
    assert_eq!(results["good"]["type"], "succeeded");
    for (custom_id, _, kind, words) in &cases {
        let result = &results[*custom_id];
        assert_eq!(result["type"], "errored", "{custom_id}: {result}");
        assert_eq!(result["error"]["type"], "error", "{custom_id}");
        assert_eq!(result["error"]["error"]["type"], *kind, "{custom_id}");
        let message = result["error"]["error"]["message"].as_str().unwrap();
        assert!(message.contains(words), "{custom_id}: {message}");
    }
}

/// A model with structured outputs answers `output_config` with its JSON as the text
/// block, `stop_reason` `end_turn`; an older model answers the forced tool.
#[tokio::test]
async fn output_config_is_answered_by_a_json_text_block() {
    let harness = Harness::new();
    let closed = json!({
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": false
    });
    let mut structured = request("structured", "text 0");
    let params = structured["params"].as_object_mut().unwrap();
    params.remove("tools");
    params.remove("tool_choice");
    params.insert(
        "output_config".into(),
        json!({"format": {"type": "json_schema", "schema": closed.clone()}}),
    );
    let mut tool = request("tool", "text 1");
    tool["params"]["model"] = json!("claude-3-5-haiku-20241022");
    let id = harness.create(vec![structured, tool]).await;
    let (_, results) = harness.finished(&id).await;

    let message = &results["structured"]["message"];
    assert_eq!(message["stop_reason"], "end_turn");
    assert_eq!(message["content"].as_array().unwrap().len(), 1);
    let block = &message["content"][0];
    assert_eq!(block["type"], "text");
    let answer: Value = serde_json::from_str(block["text"].as_str().unwrap()).unwrap();
    assert_eq!(answer, answer_for(&closed, "text 0"));

    let message = &results["tool"]["message"];
    assert_eq!(message["stop_reason"], "tool_use");
    assert_eq!(message["content"][0]["type"], "tool_use");
    assert_eq!(
        message["content"][0]["input"],
        answer_for(&schema(), "text 1")
    );
}
