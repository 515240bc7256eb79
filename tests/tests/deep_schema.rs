//! Deep and recursive answer schemas end to end, through moto and the emulator: the
//! emulator answers to the full depth of the schema, every success validates against
//! the user's schema, and a depth the provider refuses fails the job at submit with a
//! clear reason instead of a lost or silently cut answer.
//!
//! OpenAI strict structured outputs allow at most 10 levels of nesting (OpenAI,
//! "Structured Outputs", Supported schemas); Anthropic documents no nesting limit for a
//! tool's `input_schema`.

mod support;

use batchline::model::ProviderKind;
use batchline::pipeline::job::JobStatus;
use serde_json::{Value, json};
use support::{Harness, JobResults, header};

/// Objects nested `levels` deep: each holds a `name` and the next level under `child`,
/// the deepest a numeric `leaf`, at nesting level `levels` as OpenAI counts it.
fn nested(levels: usize) -> Value {
    (1..levels).fold(
        json!({"type": "object", "properties": {"leaf": {"type": "integer"}}, "required": ["leaf"]}),
        |inner, _| {
            json!({
                "type": "object",
                "properties": {"name": {"type": "string"}, "child": inner},
                "required": ["name", "child"]
            })
        },
    )
}

/// A tree: every node has a name and its children, which are nodes.
fn tree() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "children": {"type": "array", "items": {"$ref": "#"}}
        },
        "required": ["name", "children"]
    })
}

/// A job with `schema` and `n` requests; answers the body and the ids.
fn job_with_schema(kind: ProviderKind, schema: &Value, n: usize) -> (String, Vec<String>) {
    let mut lines = vec![header(
        kind,
        json!({"schema_name": "deep", "schema": schema}),
    )];
    let ids: Vec<String> = (0..n).map(|i| format!("deep-{i}")).collect();
    lines.extend(
        ids.iter()
            .map(|id| json!({"custom_id": id, "text": format!("Document {id}")}).to_string()),
    );
    (lines.join("\n") + "\n", ids)
}

/// Runs the job to its end and checks the invariant.
async fn run(h: &Harness, kind: ProviderKind, name: &str, schema: &Value) -> JobResults {
    let (body, ids) = job_with_schema(kind, schema, 4);
    let job = h.submit(&format!("inbox/{kind}/{name}.jsonl"), body).await;
    let record = h.run_to_end(&job).await;
    assert_eq!(
        record.status,
        JobStatus::Completed,
        "{kind} {name}: {:?}",
        record.failure
    );
    h.assert_invariant(&job, &ids).await
}

/// Every result validates against `schema`, and there is one per request.
fn assert_all_valid(kind: ProviderKind, schema: &Value, results: &JobResults) {
    assert_eq!(results.successes.len(), 4, "{kind}: {:?}", results.errors);
    let validator = jsonschema::validator_for(schema).expect("a valid schema");
    for success in &results.successes {
        let errors: Vec<String> = validator
            .iter_errors(&success["result"])
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{kind}: {errors:?} in {success}");
    }
}

/// How many objects deep the `child` chain of an answer goes.
fn child_depth(answer: &Value) -> usize {
    std::iter::successors(Some(answer), |node| node.get("child")).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_schemas_are_answered_in_full_where_the_provider_accepts_them() {
    let h = Harness::start().await;
    for (kind, levels) in [(ProviderKind::Anthropic, 12), (ProviderKind::OpenAi, 10)] {
        let schema = nested(levels);
        let results = run(&h, kind, &format!("deep-{levels}"), &schema).await;
        assert_all_valid(kind, &schema, &results);
        for success in &results.successes {
            assert_eq!(child_depth(&success["result"]), levels, "{kind}: {success}");
        }
    }
}

/// A schema deeper than OpenAI strict mode allows fails the job at submit with the
/// reason, before a batch is paid for. (The emulator refuses such a schema on every
/// row, as the API does; see `tests/src/openai/validation.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_deeper_than_openai_allows_fails_the_job_at_submit() {
    let h = Harness::start().await;
    let (body, _) = job_with_schema(ProviderKind::OpenAi, &nested(12), 4);
    let before = h.batches_created(ProviderKind::OpenAi).await;
    let job = h.submit("inbox/openai/too-deep.jsonl", body).await;
    let record = h.record(&job).await;
    assert_eq!(record.status, JobStatus::Failed);
    let failure = record.failure.unwrap_or_default();
    assert!(
        failure.contains("12 levels of nesting") && failure.contains("allows 10"),
        "{failure}"
    );
    assert_eq!(
        h.batches_created(ProviderKind::OpenAi).await,
        before,
        "nothing paid for"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recursive_schemas_get_finite_valid_answers() {
    let h = Harness::start().await;
    let schema = tree();
    for kind in [ProviderKind::Anthropic, ProviderKind::OpenAi] {
        let results = run(&h, kind, "tree", &schema).await;
        assert_all_valid(kind, &schema, &results);
        for success in &results.successes {
            let children = success["result"]["children"].as_array();
            assert!(
                children.is_some_and(|c| !c.is_empty()),
                "{kind}: the root's children are answered: {success}"
            );
        }
    }
}
