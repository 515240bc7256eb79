//! The routes exercised in process, one test per behaviour of the real API.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::http::StatusCode;
use serde_json::{Map, Value, json};

use crate::answer::answer_for;
use crate::common::testing::{call, call_json, frozen_shared, jsonl, steps_ago};
use crate::common::{BatchFate, RequestFault, lock};
use crate::model::{Api, prompt_tokens};
use crate::quota::Quotas;

use super::batches::{DAY_SECONDS, INPUT_LIMITS, STEP_DONE, STEP_FINALIZING, STEP_IN_PROGRESS};
use super::endpoints::Endpoint;
use super::validation::{
    InputLimits, check_body, check_response_format, plan_batch, size_violation, strict_violation,
};
use super::{OpenAi, Store, routes};

const CHAT_COMPLETIONS: &str = "/v1/chat/completions";

const AUTH: (&str, &str) = ("authorization", "Bearer test-key");
const SCHEMA_NAME: &str = "person";

fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer", "minimum": 0, "maximum": 120}
        },
        "required": ["name", "age"],
        "additionalProperties": false
    })
}

/// A valid input line asking `text` of `model` with the strict test schema.
fn line_for(custom_id: &str, model: &str, text: &str) -> Value {
    json!({
        "custom_id": custom_id,
        "method": "POST",
        "url": CHAT_COMPLETIONS,
        "body": {
            "model": model,
            "messages": [{"role": "system", "content": "Extract."}, {"role": "user", "content": text}],
            "response_format": {"type": "json_schema", "json_schema": {
                "name": SCHEMA_NAME, "strict": true, "schema": schema()
            }}
        }
    })
}

fn line(custom_id: &str, text: &str) -> Value {
    line_for(custom_id, "gpt-4o-mini", text)
}

fn file_of(lines: &[Value]) -> Vec<u8> {
    lines
        .iter()
        .map(|l| format!("{l}\n"))
        .collect::<String>()
        .into_bytes()
}

struct Harness {
    state: Arc<OpenAi>,
    router: Router,
}

impl Harness {
    fn new() -> Self {
        let state = Arc::new(OpenAi {
            shared: frozen_shared(),
            store: Mutex::new(Store::default()),
        });
        Self {
            router: routes(state.clone()),
            state,
        }
    }

    async fn upload_raw(
        &self,
        purpose: Option<&str>,
        filename: &str,
        content: &[u8],
    ) -> (StatusCode, Value) {
        let boundary = "emulator-test-boundary";
        let mut body = Vec::new();
        if let Some(purpose) = purpose {
            body.extend_from_slice(
                format!("--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n{purpose}\r\n")
                    .as_bytes(),
            );
        }
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\nContent-Type: application/jsonl\r\n\r\n")
                .as_bytes(),
        );
        body.extend_from_slice(content);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let content_type = format!("multipart/form-data; boundary={boundary}");
        call_json(
            &self.router,
            "POST",
            "/v1/files",
            &[AUTH, ("content-type", &content_type)],
            body,
        )
        .await
    }

    async fn upload(&self, content: &[u8]) -> String {
        let (status, file) = self.upload_raw(Some("batch"), "input.jsonl", content).await;
        assert_eq!(status, StatusCode::OK, "{file}");
        file["id"].as_str().unwrap().to_string()
    }

    async fn create_raw(&self, body: Value) -> (StatusCode, Value) {
        call_json(
            &self.router,
            "POST",
            "/v1/batches",
            &[AUTH, ("content-type", "application/json")],
            body.to_string(),
        )
        .await
    }

    /// Uploads `lines` and creates a chat completions batch over them.
    async fn batch_of(&self, lines: &[Value]) -> String {
        self.batch_at(CHAT_COMPLETIONS, lines).await
    }

    /// Uploads `lines` and creates a batch for `endpoint` over them.
    async fn batch_at(&self, endpoint: &str, lines: &[Value]) -> String {
        let file_id = self.upload(&file_of(lines)).await;
        let (status, batch) = self
            .create_raw(
                json!({"input_file_id": file_id, "endpoint": endpoint, "completion_window": "24h"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{batch}");
        assert_eq!(batch["status"], "validating");
        batch["id"].as_str().unwrap().to_string()
    }

    async fn get(&self, uri: &str) -> (StatusCode, Value) {
        call_json(&self.router, "GET", uri, &[AUTH], Body::empty()).await
    }

    async fn batch(&self, id: &str) -> Value {
        let (status, batch) = self.get(&format!("/v1/batches/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{batch}");
        batch
    }

    async fn cancel(&self, id: &str) -> (StatusCode, Value) {
        let uri = format!("/v1/batches/{id}/cancel");
        call_json(&self.router, "POST", &uri, &[AUTH], Body::empty()).await
    }

    /// Pretends the batch was created `steps` lifecycle steps ago.
    fn age(&self, id: &str, steps: u32) {
        let mut store = lock(&self.state.store);
        let batch = store.batches.iter_mut().find(|b| b.id == id).unwrap();
        batch.created = steps_ago(steps);
    }

    fn force_end(&self, id: &str) {
        lock(&self.state.shared.forced).insert(id.to_string(), ());
    }

    fn set_fate(&self, fate: BatchFate, partial: f64) {
        let mut plan = lock(&self.state.shared.faults);
        plan.batch_fate = fate;
        plan.partial = partial;
    }

    /// The lines of a results file, or none when the id is null.
    async fn lines_of(&self, file_id: &Value) -> Vec<Value> {
        let Some(id) = file_id.as_str() else {
            return Vec::new();
        };
        let uri = format!("/v1/files/{id}/content");
        let (status, body) = call(&self.router, "GET", &uri, &[AUTH], Body::empty()).await;
        assert_eq!(status, StatusCode::OK);
        jsonl(&body)
    }

    /// Ends the batch; answers it with its output and error lines.
    async fn finished(&self, id: &str) -> (Value, Vec<Value>, Vec<Value>) {
        self.force_end(id);
        let batch = self.batch(id).await;
        let output = self.lines_of(&batch["output_file_id"]).await;
        let errors = self.lines_of(&batch["error_file_id"]).await;
        (batch, output, errors)
    }
}

fn by_custom_id(lines: &[Value]) -> HashMap<String, Value> {
    lines
        .iter()
        .map(|l| (l["custom_id"].as_str().unwrap().to_string(), l.clone()))
        .collect()
}

fn content_of(line: &Value) -> &Value {
    &line["response"]["body"]["choices"][0]["message"]["content"]
}

#[tokio::test]
async fn every_route_needs_the_bearer_key_and_never_echoes_it() {
    let harness = Harness::new();
    for headers in [vec![], vec![("authorization", "Bearer wrong-key-123")]] {
        let (status, body) = call_json(
            &harness.router,
            "GET",
            "/v1/batches",
            &headers,
            Body::empty(),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["error"]["code"], "invalid_api_key");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert!(!body.to_string().contains("wrong-key-123"));
    }
}

#[tokio::test]
async fn uploads_are_checked_and_served_back_byte_for_byte() {
    let harness = Harness::new();
    let content = file_of(&[line("a", "Ann is 31")]);
    let (status, file) = harness
        .upload_raw(Some("batch"), "input.jsonl", &content)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(file["object"], "file");
    assert_eq!(file["purpose"], "batch");
    assert_eq!(file["status"], "processed");
    assert_eq!(file["bytes"], content.len());
    assert_eq!(file["filename"], "input.jsonl");
    assert!(file.get("status_details").is_some_and(Value::is_null));
    let id = file["id"].as_str().unwrap();
    assert_eq!(harness.get(&format!("/v1/files/{id}")).await.1, file);
    let uri = format!("/v1/files/{id}/content");
    let (_, served) = call(&harness.router, "GET", &uri, &[AUTH], Body::empty()).await;
    assert_eq!(&served[..], &content[..]);

    for (purpose, filename, param) in [
        (None, "input.jsonl", "purpose"),
        (Some("fine-tune"), "input.jsonl", "purpose"),
        (Some("batch"), "input.csv", "file"),
    ] {
        let (status, body) = harness.upload_raw(purpose, filename, &content).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{purpose:?} {filename}");
        assert_eq!(body["error"]["param"], param);
    }
    let (status, _) = harness.get("/v1/files/file-missing").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn create_rejects_bad_parameters_with_openai_errors() {
    let harness = Harness::new();
    let file_id = harness.upload(&file_of(&[line("a", "x")])).await;
    let base =
        json!({"input_file_id": file_id, "endpoint": CHAT_COMPLETIONS, "completion_window": "24h"});
    let with = |key: &str, value: Value| {
        let mut body = base.clone();
        body[key] = value;
        body
    };
    let many: Map<String, Value> = (0..17).map(|i| (format!("k{i}"), json!("v"))).collect();
    let sixteen: Map<String, Value> = (0..16).map(|i| (format!("k{i}"), json!("v"))).collect();
    let cases = [
        (with("input_file_id", json!("file-nope")), "input_file_id"),
        (with("completion_window", json!("48h")), "completion_window"),
        (with("endpoint", json!("/v1/chat")), "endpoint"),
        (with("endpoint", json!("/v1/moderations")), "endpoint"),
        (with("metadata", Value::Object(many)), "metadata"),
        (with("metadata", json!({"k".repeat(65): "v"})), "metadata"),
        (with("metadata", json!({"k": "v".repeat(513)})), "metadata"),
        (with("metadata", json!({"k": 5})), "metadata"),
    ];
    for (body, param) in cases {
        let (status, error) = harness.create_raw(body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
        assert_eq!(error["error"]["param"], param, "{error}");
    }
    let limits = json!({"k".repeat(64): "v".repeat(512)});
    for metadata in [Value::Object(sixteen), limits] {
        let (status, batch) = harness.create_raw(with("metadata", metadata.clone())).await;
        assert_eq!(status, StatusCode::OK, "{batch}");
        assert_eq!(batch["metadata"], metadata);
    }
}

#[tokio::test]
async fn the_batch_object_carries_every_field() {
    let harness = Harness::new();
    let id = harness.batch_of(&[line("a", "x")]).await;
    let batch = harness.batch(&id).await;
    let fields = [
        "id",
        "object",
        "endpoint",
        "model",
        "errors",
        "input_file_id",
        "completion_window",
        "status",
        "output_file_id",
        "error_file_id",
        "created_at",
        "in_progress_at",
        "expires_at",
        "finalizing_at",
        "completed_at",
        "failed_at",
        "expired_at",
        "cancelling_at",
        "cancelled_at",
        "request_counts",
        "usage",
        "metadata",
    ];
    let object = batch.as_object().unwrap();
    for field in fields {
        assert!(object.contains_key(field), "{field} missing");
    }
    assert_eq!(object.len(), fields.len());
    assert_eq!(batch["object"], "batch");
    assert_eq!(
        batch["expires_at"],
        batch["created_at"].as_i64().unwrap() + DAY_SECONDS
    );
}

#[tokio::test]
async fn a_batch_walks_through_its_stages_and_answers_every_request() {
    let harness = Harness::new();
    let lines: Vec<Value> = (0..4)
        .map(|i| line(&format!("r{i}"), &format!("text {i}")))
        .collect();
    let id = harness.batch_of(&lines).await;
    assert_eq!(harness.batch(&id).await["request_counts"]["total"], 0);

    harness.age(&id, STEP_IN_PROGRESS);
    let batch = harness.batch(&id).await;
    assert_eq!(batch["status"], "in_progress");
    assert!(batch["in_progress_at"].is_i64());
    assert_eq!(batch["model"], "gpt-4o-mini");
    assert_eq!(
        batch["request_counts"],
        json!({"total": 4, "completed": 0, "failed": 0})
    );

    harness.age(&id, STEP_FINALIZING);
    let batch = harness.batch(&id).await;
    assert_eq!(batch["status"], "finalizing");
    assert!(batch["finalizing_at"].is_i64());
    assert!(batch["output_file_id"].is_null());

    harness.age(&id, STEP_DONE);
    let batch = harness.batch(&id).await;
    assert_eq!(batch["status"], "completed");
    assert!(batch["completed_at"].is_i64());
    assert!(batch["error_file_id"].is_null());
    assert_eq!(
        batch["request_counts"],
        json!({"total": 4, "completed": 4, "failed": 0})
    );
    let usage = &batch["usage"];
    assert!(usage["input_tokens"].as_u64().unwrap() > 0);
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(usage["input_tokens"].as_u64().unwrap() + usage["output_tokens"].as_u64().unwrap())
    );

    let output = harness.lines_of(&batch["output_file_id"]).await;
    let output = by_custom_id(&output);
    assert_eq!(output.len(), 4);
    for i in 0..4 {
        let custom_id = format!("r{i}");
        let answer = &output[&custom_id];
        assert!(answer["id"].as_str().unwrap().starts_with("batch_req_"));
        assert!(answer["error"].is_null());
        assert_eq!(answer["response"]["status_code"], 200);
        assert!(answer["response"]["request_id"].is_string());
        let body = &answer["response"]["body"];
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(body["model"], "gpt-4o-mini");
        assert_eq!(body["choices"][0]["finish_reason"], "stop");
        assert!(body["choices"][0]["message"]["refusal"].is_null());
        assert!(body["usage"]["total_tokens"].as_u64().unwrap() > 0);
        let parsed: Value = serde_json::from_str(content_of(answer).as_str().unwrap()).unwrap();
        assert_eq!(parsed, answer_for(&schema(), &format!("text {i}")));
    }
}

#[tokio::test]
async fn request_fault_markers_shape_each_answer() {
    let harness = Harness::new();
    // Row faults only act on several-rows requests (see the model tests).
    let kinds: Vec<&str> = RequestFault::ALL
        .iter()
        .filter(|(_, fault)| !fault.is_row_fault())
        .map(|(name, _)| *name)
        .collect();
    let lines: Vec<Value> = kinds
        .iter()
        .map(|kind| line(kind, &format!("Bob [[fault:{kind}]]")))
        .collect();
    let id = harness.batch_of(&lines).await;
    let (batch, output, errors) = harness.finished(&id).await;
    assert_eq!(
        batch["request_counts"],
        json!({"total": 7, "completed": 4, "failed": 3})
    );
    let errors = by_custom_id(&errors);
    for (kind, status, code) in [
        ("provider_error", 400, "context_length_exceeded"),
        ("rate_limit", 429, "rate_limit_exceeded"),
        ("server_error", 500, Value::Null.to_string().as_str()),
    ] {
        let line = &errors[kind];
        assert_eq!(line["response"]["status_code"], status);
        assert!(line["error"].is_null());
        let error = &line["response"]["body"]["error"];
        assert_eq!(error["code"].to_string().trim_matches('"'), code, "{line}");
    }
    let output = by_custom_id(&output);
    let non_json = content_of(&output["non_json"]).as_str().unwrap();
    assert!(serde_json::from_str::<Value>(non_json).is_err());
    let broken: Value =
        serde_json::from_str(content_of(&output["schema_break"]).as_str().unwrap()).unwrap();
    assert!(broken.get("name").is_none());
    let refusal = &output["refusal"]["response"]["body"]["choices"][0];
    assert!(refusal["message"]["content"].is_null());
    assert!(refusal["message"]["refusal"].is_string());
    let truncated = &output["truncate"]["response"]["body"]["choices"][0];
    assert_eq!(truncated["finish_reason"], "length");
    let text = truncated["message"]["content"].as_str().unwrap();
    assert!(serde_json::from_str::<Value>(text).is_err());
}

#[tokio::test]
async fn invalid_bodies_become_400_lines_while_the_batch_completes() {
    let harness = Harness::new();
    let mut empty = line("empty", "x");
    empty["body"]["messages"] = json!([]);
    let mut reasoning = line_for("hot", "o3", "x");
    reasoning["body"]["temperature"] = json!(0.2);
    let id = harness.batch_of(&[line("good", "x"), empty]).await;
    let (batch, output, errors) = harness.finished(&id).await;
    assert_eq!(batch["status"], "completed");
    assert_eq!(output.len(), 1);
    assert_eq!(errors[0]["custom_id"], "empty");
    assert_eq!(errors[0]["response"]["status_code"], 400);
    assert_eq!(
        errors[0]["response"]["body"]["error"]["code"],
        "empty_array"
    );
    let id = harness.batch_of(&[reasoning]).await;
    let (batch, output, errors) = harness.finished(&id).await;
    assert!(batch["output_file_id"].is_null());
    assert!(output.is_empty());
    assert_eq!(
        errors[0]["response"]["body"]["error"]["param"],
        "temperature"
    );
}

fn body_error(body: Value, model: &str) -> Option<(Option<&'static str>, Option<String>)> {
    let Value::Object(body) = body else {
        panic!("a body is an object")
    };
    check_body(&body, model).err().map(|e| (e.code, e.param))
}

#[test]
fn request_bodies_follow_the_api_rules() {
    let user = json!([{"role": "user", "content": "hi"}]);
    let format = |name: &str, schema: Value| json!({"type": "json_schema", "json_schema": {"name": name, "strict": true, "schema": schema}});
    let ok = json!({"messages": user, "response_format": format("ok-name_1", schema())});
    assert_eq!(body_error(ok.clone(), "gpt-4o"), None);
    assert_eq!(body_error(ok, "gpt-5-mini"), None);

    let cases = [
        (json!({}), "gpt-4o", "messages"),
        (json!({"messages": []}), "gpt-4o", "messages"),
        (
            json!({"messages": [{"role": "tool", "content": "x"}]}),
            "gpt-4o",
            "messages[0].role",
        ),
        (
            json!({"messages": user, "response_format": format("bad name", schema())}),
            "gpt-4o",
            "response_format.json_schema.name",
        ),
        (
            json!({"messages": user, "response_format": format(&"a".repeat(65), schema())}),
            "gpt-4o",
            "response_format.json_schema.name",
        ),
        (
            json!({"messages": user, "temperature": 0.5}),
            "o3",
            "temperature",
        ),
        (
            json!({"messages": user, "temperature": 0.5}),
            "gpt-5",
            "temperature",
        ),
        (
            json!({"messages": user, "max_tokens": 10}),
            "gpt-5-mini",
            "max_tokens",
        ),
    ];
    for (body, model, param) in cases {
        let found = body_error(body.clone(), model);
        assert_eq!(
            found.and_then(|(_, p)| p),
            Some(param.to_string()),
            "{body} {model}"
        );
    }
    let allowed = json!({"messages": user, "temperature": 0.5, "max_tokens": 10});
    assert_eq!(body_error(allowed, "gpt-4o"), None);
    let default_temperature =
        json!({"messages": user, "temperature": 1, "max_completion_tokens": 10});
    assert_eq!(body_error(default_temperature, "o3"), None);
}

#[test]
fn strict_schemas_need_closed_objects_with_every_property_required() {
    let violation = |schema: Value| strict_violation(&schema, &mut Vec::new());
    assert_eq!(violation(schema()), None);
    let open =
        json!({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]});
    assert!(violation(open).unwrap().contains("additionalProperties"));
    let partial = json!({"type": "object", "properties": {"a": {}, "b": {}}, "required": ["a"], "additionalProperties": false});
    assert!(violation(partial).unwrap().contains("Missing 'b'"));
    let map = json!({"type": "object", "additionalProperties": {"type": "string"}});
    assert!(violation(map).is_some());
    let nested = json!({
        "type": "object", "required": ["people"], "additionalProperties": false,
        "properties": {"people": {"type": "array", "items": {"$ref": "#/$defs/p"}}},
        "$defs": {"p": {"type": "object", "properties": {"n": {"type": "string"}}, "required": ["n"]}}
    });
    let found = violation(nested).unwrap();
    assert!(found.contains("In context=('$defs', 'p')"), "{found}");
    let nullable = json!({
        "type": "object", "required": ["a"], "additionalProperties": false,
        "properties": {"a": {"anyOf": [{"type": "null"}, {"type": "object", "properties": {}}]}}
    });
    assert!(violation(nullable).unwrap().contains("'anyOf', '1'"));
}

/// A strict object nested `levels` deep: each level holds the next under `child`,
/// the deepest a string `leaf` (at nesting level `levels`).
fn nested_strict(levels: usize) -> Value {
    (1..levels).fold(
        json!({"type": "object", "properties": {"leaf": {"type": "string"}}, "required": ["leaf"], "additionalProperties": false}),
        |inner, _| json!({"type": "object", "properties": {"child": inner}, "required": ["child"], "additionalProperties": false}),
    )
}

#[test]
fn strict_schemas_nest_ten_levels_and_hold_five_thousand_properties_at_most() {
    let format = |schema: Value| json!({"type": "json_schema", "json_schema": {"name": "deep", "strict": true, "schema": schema}});
    assert_eq!(check_response_format(&format(nested_strict(10))), Ok(()));
    let refused = check_response_format(&format(nested_strict(11))).unwrap_err();
    assert_eq!(refused.code, Some("invalid_json_schema"));
    assert_eq!(
        refused.message,
        "Invalid schema for response_format 'deep': 11 levels of nesting exceeds limit of 10."
    );
    // Without strict mode the limits do not apply.
    let loose = json!({"type": "json_schema", "json_schema": {"name": "deep", "schema": nested_strict(11)}});
    assert_eq!(check_response_format(&loose), Ok(()));
    // Items and union branches are levels too; a `$ref` is not followed.
    let through_items = json!({"type": "object", "required": ["a"], "additionalProperties": false,
        "properties": {"a": {"type": "array", "items": nested_strict(10)}}});
    assert!(
        size_violation(&through_items)
            .unwrap()
            .starts_with("12 levels")
    );
    let recursive = json!({"type": "object", "required": ["next"], "additionalProperties": false,
        "properties": {"next": {"anyOf": [{"$ref": "#"}, {"type": "null"}]}}});
    assert_eq!(size_violation(&recursive), None);

    let wide = |n: usize| {
        let properties: Map<String, Value> = (0..n)
            .map(|i| (format!("p{i}"), json!({"type": "string"})))
            .collect();
        let required: Vec<String> = properties.keys().cloned().collect();
        json!({"type": "object", "properties": properties, "required": required, "additionalProperties": false})
    };
    assert_eq!(check_response_format(&format(wide(5000))), Ok(()));
    assert_eq!(
        size_violation(&wide(5001)).as_deref(),
        Some("5001 object properties in total exceeds limit of 5000.")
    );
}

fn plan_errors(content: &[u8], limits: &InputLimits) -> Vec<(&'static str, Option<usize>)> {
    plan_batch(
        content,
        Endpoint::ChatCompletions,
        limits,
        BatchFate::Complete,
        &frozen_shared(),
        "batch_test",
        |_, _| Ok(()),
    )
    .err()
    .unwrap_or_default()
    .into_iter()
    .map(|e| (e.code, e.line))
    .collect()
}

#[test]
fn input_files_are_validated_line_by_line() {
    let good = line("a", "x");
    let mut wrong_url = line("b", "x");
    wrong_url["url"] = json!("/v1/embeddings");
    let mut no_model = line("c", "x");
    no_model["body"].as_object_mut().unwrap().remove("model");
    let mut get = line("d", "x");
    get["method"] = json!("GET");
    let other_model = line_for("e", "gpt-4o", "x");
    let mut content = file_of(&[
        good.clone(),
        good.clone(),
        wrong_url,
        no_model,
        get,
        other_model,
    ]);
    content.extend_from_slice(b"{not json\n\n");
    content.extend_from_slice(b"[1, 2]\n");
    let errors = plan_errors(&content, &INPUT_LIMITS);
    assert_eq!(
        errors,
        vec![
            ("duplicate_custom_id", Some(2)),
            ("url_mismatch", Some(3)),
            ("missing_required_parameter", Some(4)),
            ("invalid_method", Some(5)),
            ("model_mismatch", Some(6)),
            ("invalid_json_line", Some(7)),
            ("invalid_json_line", Some(9)),
        ]
    );
    assert_eq!(plan_errors(b"", &INPUT_LIMITS), vec![("empty_file", None)]);
    assert_eq!(
        plan_errors(b"\n \n", &INPUT_LIMITS),
        vec![("empty_file", None)]
    );
    let three = file_of(&[line("a", "x"), line("b", "x"), line("c", "x")]);
    let small = InputLimits {
        max_requests: 2,
        max_bytes: 1 << 20,
    };
    assert_eq!(plan_errors(&three, &small), vec![("too_many_tasks", None)]);
    let tiny = InputLimits {
        max_requests: 10,
        max_bytes: 100,
    };
    assert_eq!(plan_errors(&three, &tiny), vec![("file_too_large", None)]);
    let plan = plan_batch(
        &three,
        Endpoint::ChatCompletions,
        &INPUT_LIMITS,
        BatchFate::Complete,
        &frozen_shared(),
        "batch_test",
        |_, _| Ok(()),
    )
    .unwrap();
    assert_eq!(plan.requests.len(), 3);
}

#[tokio::test]
async fn an_invalid_file_fails_the_batch_with_its_errors() {
    let harness = Harness::new();
    let id = harness.batch_of(&[line("a", "x"), line("a", "y")]).await;
    harness.age(&id, STEP_IN_PROGRESS);
    let batch = harness.batch(&id).await;
    assert_eq!(batch["status"], "failed");
    assert!(batch["failed_at"].is_i64());
    assert!(batch["output_file_id"].is_null() && batch["error_file_id"].is_null());
    assert_eq!(
        batch["errors"],
        json!({"object": "list", "data": [{
            "code": "duplicate_custom_id",
            "message": "The custom_id 'a' is used more than once in the input file.",
            "param": "custom_id",
            "line": 2,
        }]})
    );
}

#[tokio::test]
async fn fates_expire_fail_or_fail_every_request() {
    let harness = Harness::new();
    let lines: Vec<Value> = (0..4).map(|i| line(&format!("r{i}"), "x")).collect();

    harness.set_fate(BatchFate::Expire, 0.5);
    let id = harness.batch_of(&lines).await;
    let (batch, output, errors) = harness.finished(&id).await;
    assert_eq!(batch["status"], "expired");
    assert!(batch["expired_at"].is_i64());
    assert_eq!(
        batch["request_counts"],
        json!({"total": 4, "completed": 2, "failed": 2})
    );
    assert_eq!(output.len(), 2);
    for line in &errors {
        assert!(line["response"].is_null());
        assert_eq!(line["error"]["code"], "batch_expired");
    }
    let mut seen: Vec<Value> = output
        .iter()
        .chain(&errors)
        .map(|l| l["custom_id"].clone())
        .collect();
    seen.sort_by_key(Value::to_string);
    assert_eq!(seen, vec!["r0", "r1", "r2", "r3"]);

    harness.set_fate(BatchFate::FailValidation, 0.5);
    let id = harness.batch_of(&lines).await;
    let (batch, _, _) = harness.finished(&id).await;
    assert_eq!(batch["status"], "failed");
    assert_eq!(batch["errors"]["data"][0]["code"], "invalid_request");

    harness.set_fate(BatchFate::AllFail, 0.5);
    let id = harness.batch_of(&lines).await;
    let (batch, output, errors) = harness.finished(&id).await;
    assert_eq!(batch["status"], "completed");
    assert!(batch["output_file_id"].is_null());
    assert!(output.is_empty());
    assert_eq!(errors.len(), 4);
    assert!(errors.iter().all(|l| l["response"]["status_code"] == 500));
}

#[tokio::test]
async fn cancel_keeps_what_ran_and_reports_the_rest() {
    let harness = Harness::new();
    let lines: Vec<Value> = (0..4).map(|i| line(&format!("r{i}"), "x")).collect();
    let id = harness.batch_of(&lines).await;
    harness.age(&id, STEP_IN_PROGRESS);
    let (status, batch) = harness.cancel(&id).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(batch["status"], "cancelling");
    assert!(batch["cancelling_at"].is_i64());
    let (batch, output, errors) = harness.finished(&id).await;
    assert_eq!(batch["status"], "cancelled");
    assert!(batch["cancelled_at"].is_i64());
    assert_eq!(output.len(), 2);
    assert_eq!(errors.len(), 2);
    assert!(
        errors
            .iter()
            .all(|l| l["error"]["code"] == "batch_cancelled")
    );
    let (status, error) = harness.cancel(&id).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error["error"]["type"], "invalid_request_error");
    assert_eq!(harness.cancel("batch_nope").await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn lists_page_newest_first() {
    let harness = Harness::new();
    let file_id = harness.upload(&file_of(&[line("a", "x")])).await;
    let mut created = Vec::new();
    for _ in 0..25 {
        let (_, batch) = harness
            .create_raw(json!({"input_file_id": file_id, "endpoint": CHAT_COMPLETIONS, "completion_window": "24h"}))
            .await;
        created.push(batch["id"].clone());
    }
    created.reverse();
    let (_, first) = harness.get("/v1/batches").await;
    assert_eq!(first["object"], "list");
    assert_eq!(first["data"].as_array().unwrap().len(), 20);
    assert_eq!(first["has_more"], true);
    let mut listed = Vec::new();
    let mut uri = "/v1/batches?limit=10".to_string();
    loop {
        let (status, page) = harness.get(&uri).await;
        assert_eq!(status, StatusCode::OK);
        let data = page["data"].as_array().unwrap();
        assert_eq!(page["first_id"], data[0]["id"]);
        assert_eq!(page["last_id"], data[data.len() - 1]["id"]);
        listed.extend(data.iter().map(|b| b["id"].clone()));
        if page["has_more"] == false {
            break;
        }
        uri = format!(
            "/v1/batches?limit=10&after={}",
            page["last_id"].as_str().unwrap()
        );
    }
    assert_eq!(listed, created);
    for limit in ["0", "101", "x"] {
        let (status, _) = harness.get(&format!("/v1/batches?limit={limit}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "limit {limit}");
    }
}

#[tokio::test]
async fn results_downloads_honour_the_planned_drop() {
    let harness = Harness::new();
    let lines: Vec<Value> = (0..20).map(|i| line(&format!("r{i}"), "x")).collect();
    let id = harness.batch_of(&lines).await;
    let (batch, output, _) = harness.finished(&id).await;
    assert_eq!(output.len(), 20);
    lock(&harness.state.shared.faults).drop_results_after_bytes = Some(100);
    let uri = format!(
        "/v1/files/{}/content",
        batch["output_file_id"].as_str().unwrap()
    );
    let request = axum::http::Request::get(uri)
        .header(AUTH.0, AUTH.1)
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
async fn a_preloaded_batch_is_completed_with_the_given_output() {
    let harness = Harness::new();
    let output = b"{\"custom_id\":\"a\"}\n\n{\"custom_id\":\"b\"}\n";
    let (status, created) = call_json(
        &harness.router,
        "POST",
        "/_emulator/openai/batches",
        &[],
        &output[..],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let batch = harness.batch(created["id"].as_str().unwrap()).await;
    assert_eq!(batch["status"], "completed");
    assert_eq!(
        batch["request_counts"],
        json!({"total": 2, "completed": 2, "failed": 0})
    );
    assert!(batch["error_file_id"].is_null());
    let uri = format!(
        "/v1/files/{}/content",
        batch["output_file_id"].as_str().unwrap()
    );
    let (status, served) = call(&harness.router, "GET", &uri, &[AUTH], Body::empty()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&served[..], &output[..]);
}

#[tokio::test]
async fn every_answer_carries_an_x_request_id() {
    let router = super::router(frozen_shared());
    let request_id = |response: &axum::http::Response<Body>| {
        let value = response.headers()["x-request-id"].to_str().unwrap();
        let hex = value
            .strip_prefix("req_")
            .unwrap_or_else(|| panic!("{value}"));
        assert!(
            !hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit()),
            "{value}"
        );
        value.to_string()
    };
    let send = |uri: &str, auth: bool| {
        let mut request = axum::http::Request::get(uri);
        if auth {
            request = request.header(AUTH.0, AUTH.1);
        }
        tower::ServiceExt::oneshot(router.clone(), request.body(Body::empty()).unwrap())
    };
    let ok = send("/v1/batches", true).await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let first = request_id(&ok);
    let not_found = send("/v1/batches/batch_missing", true).await.unwrap();
    assert_eq!(not_found.status(), StatusCode::NOT_FOUND);
    assert_ne!(request_id(&not_found), first);
    let unauthorized = send("/v1/batches", false).await.unwrap();
    assert_eq!(unauthorized.status(), StatusCode::UNAUTHORIZED);
    request_id(&unauthorized);
}

#[tokio::test]
async fn a_batch_past_the_enqueued_token_quota_is_accepted_then_fails() {
    let harness = Harness::new();
    let lines = [line("a", "Ada Lovelace, 36"), line("b", "Alan Turing, 41")];
    let tokens: u64 = lines
        .iter()
        .map(|l| prompt_tokens(Api::OpenAi, &l["body"]))
        .sum();
    let limit = tokens * 3 / 2;
    harness.state.shared.quotas.set(Quotas {
        openai_enqueued_tokens: Some(limit),
        ..Quotas::default()
    });
    let first = harness.batch_of(&lines).await;
    // Accepted (`validating`), then failed after its validating step.
    let second = harness.batch_of(&lines).await;
    harness.age(&second, STEP_IN_PROGRESS);
    let refused = harness.batch(&second).await;
    assert_eq!(refused["status"], "failed");
    assert!(refused["output_file_id"].is_null() && refused["error_file_id"].is_null());
    assert_eq!(
        refused["errors"],
        json!({"object": "list", "data": [{
            "code": "token_limit_exceeded",
            "message": format!("Enqueued token limit reached for gpt-4o-mini in organization org-emulator. Limit: {limit} enqueued tokens. Please try again once some in_progress batches have been completed."),
            "param": null,
            "line": null,
        }]})
    );
    // A batch of another model has room of its own.
    let other = harness
        .batch_of(&[line_for("c", "gpt-4o", "Grace Hopper, 85")])
        .await;
    harness.age(&other, STEP_IN_PROGRESS);
    assert_eq!(harness.batch(&other).await["status"], "in_progress");

    // The count is what the requests report as prompt tokens.
    let (done, _, _) = harness.finished(&first).await;
    assert_eq!(done["status"], "completed");
    assert_eq!(done["usage"]["input_tokens"], tokens);
    let third = harness.batch_of(&lines).await;
    harness.age(&third, STEP_IN_PROGRESS);
    assert_eq!(harness.batch(&third).await["status"], "in_progress");
    let report = harness.state.shared.quotas.report().openai;
    assert_eq!(
        (report.limit, report.peak, report.refused, report.admitted),
        (Some(limit), tokens, 1, 3)
    );

    // A batch larger than the limit on its own fails too.
    harness.state.shared.quotas.set(Quotas {
        openai_enqueued_tokens: Some(tokens - 1),
        ..Quotas::default()
    });
    let (_, _, _) = harness.finished(&third).await;
    let alone = harness.batch_of(&lines).await;
    harness.force_end(&alone);
    let failed = harness.batch(&alone).await;
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["errors"]["data"][0]["code"], "token_limit_exceeded");
    assert_eq!(harness.state.shared.quotas.report().openai.refused, 1);
}

/// A line for `endpoint` with `body`.
fn line_at(custom_id: &str, endpoint: &str, body: Value) -> Value {
    json!({"custom_id": custom_id, "method": "POST", "url": endpoint, "body": body})
}

#[tokio::test]
async fn unknown_models_fail_each_line_with_model_not_found() {
    let harness = Harness::new();
    let lines = [line_for("a", "gpt-3", "x"), line_for("b", "gpt-3", "y")];
    let (batch, output, errors) = harness.finished(&harness.batch_of(&lines).await).await;
    assert_eq!(batch["status"], "completed");
    assert_eq!(batch["request_counts"]["failed"], 2);
    assert!(output.is_empty() && batch["output_file_id"].is_null());
    for line in &errors {
        assert_eq!(line["response"]["status_code"], 404);
        assert_eq!(
            line["response"]["body"]["error"],
            json!({
                "message": "The model `gpt-3` does not exist or you do not have access to it.",
                "type": "invalid_request_error", "param": null, "code": "model_not_found",
            })
        );
    }
}

#[tokio::test]
async fn responses_embeddings_and_completions_batches_answer_their_own_objects() {
    let harness = Harness::new();
    let format =
        json!({"type": "json_schema", "name": SCHEMA_NAME, "strict": true, "schema": schema()});
    let responses = harness
        .batch_at(
            "/v1/responses",
            &[
                line_at(
                    "r",
                    "/v1/responses",
                    json!({"model": "gpt-5-pro", "input": "Ann, 31", "text": {"format": format}}),
                ),
                line_at("no-input", "/v1/responses", json!({"model": "gpt-5-pro"})),
            ],
        )
        .await;
    let (batch, output, errors) = harness.finished(&responses).await;
    assert_eq!(batch["endpoint"], "/v1/responses");
    assert!(!output.is_empty(), "{batch} {errors:?}");
    let answer = &output[0]["response"]["body"];
    assert_eq!(answer["object"], "response");
    let text = answer["output"][0]["content"][0]["text"].as_str().unwrap();
    assert!(serde_json::from_str::<Value>(text).unwrap()["age"].is_i64());
    assert_eq!(errors[0]["response"]["body"]["error"]["param"], "input");

    let embeddings = harness
        .batch_at(
            "/v1/embeddings",
            &[line_at(
                "e",
                "/v1/embeddings",
                json!({"model": "text-embedding-3-large", "input": ["a", "b"]}),
            )],
        )
        .await;
    let (_, output, _) = harness.finished(&embeddings).await;
    let data = output[0]["response"]["body"]["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data[1]["embedding"].as_array().unwrap().len(), 3072);
    let chat_model = [line_at(
        "chat-model",
        "/v1/embeddings",
        json!({"model": "gpt-4o", "input": "a"}),
    )];
    let (_, _, errors) = harness
        .finished(&harness.batch_at("/v1/embeddings", &chat_model).await)
        .await;
    assert_eq!(errors[0]["response"]["status_code"], 404);

    let completions = harness
        .batch_at(
            "/v1/completions",
            &[line_at(
                "c",
                "/v1/completions",
                json!({"model": "gpt-3.5-turbo-instruct", "prompt": "Say hi"}),
            )],
        )
        .await;
    let (_, output, _) = harness.finished(&completions).await;
    let completion = &output[0]["response"]["body"];
    assert_eq!(completion["object"], "text_completion");
    assert!(completion["usage"]["completion_tokens"].as_u64().unwrap() <= 16);
}

#[tokio::test]
async fn a_line_for_another_endpoint_fails_the_batch() {
    let harness = Harness::new();
    let id = harness
        .batch_at("/v1/embeddings", &[line("chat", "x")])
        .await;
    let (batch, _, _) = harness.finished(&id).await;
    assert_eq!(batch["status"], "failed");
    assert_eq!(batch["errors"]["data"][0]["code"], "url_mismatch");
}

#[tokio::test]
async fn files_are_listed_by_purpose_in_pages() {
    let harness = Harness::new();
    let ids: Vec<String> = futures::future::join_all((0..3).map(|_| harness.upload(b"{}\n"))).await;
    let id = harness.batch_of(&[line("a", "x")]).await;
    harness.finished(&id).await;
    let (status, page) = harness.get("/v1/files?purpose=batch&limit=2").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["object"], "list");
    assert_eq!(page["data"].as_array().unwrap().len(), 2);
    assert_eq!(page["has_more"], true);
    let after = page["last_id"].as_str().unwrap();
    let (_, rest) = harness
        .get(&format!("/v1/files?purpose=batch&after={after}"))
        .await;
    let mut listed: Vec<String> = [&page, &rest]
        .iter()
        .flat_map(|p| p["data"].as_array().unwrap().iter())
        .map(|f| f["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(rest["has_more"], false);
    assert_eq!(listed.len(), 4, "three uploads and the batch input");
    listed.sort();
    assert!(ids.iter().all(|id| listed.contains(id)));
    let (_, outputs) = harness.get("/v1/files?purpose=batch_output").await;
    assert_eq!(outputs["data"][0]["purpose"], "batch_output");
    let (status, _) = harness.get("/v1/files?order=sideways").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}
