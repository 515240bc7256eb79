//! End-to-end: jobs many times larger than a provider quota, over moto and the
//! emulator enforcing each provider's own quota the way that provider does (OpenAI
//! fails a batch past its enqueued-token limit, Anthropic refuses past its processing
//! queue, Vertex AI past its concurrent jobs, the Gemini API past its enqueued tokens).
//!
//! With the limit known (spec `quota`), no batch is ever created past it; without,
//! the provider's refusals make parts wait instead of failing. Either way every row
//! ends as a success, under its own id.

mod support;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use batchline::model::ProviderKind;
use batchline::pipeline::ProviderSource;
use batchline::pipeline::job::JobStatus;
use batchline::provider::{BatchProvider, connect};
use batchline_emulator::{QuotaFigures, Quotas};
use serde_json::{Value, json};
use support::{EmulatorProviders, Harness, job_file_with};

/// The emulator's providers with retries short enough for a refusal to be seen at
/// once (Anthropic asks for five seconds in `retry-after`).
#[derive(Debug)]
struct QuickRefusals(EmulatorProviders);

#[async_trait]
impl ProviderSource for QuickRefusals {
    async fn provider(&self, kind: ProviderKind) -> batchline::Result<Arc<dyn BatchProvider>> {
        let mut config = self.0.config(kind);
        config.retry.max_attempts = 2;
        config.retry.max_retry_after = Duration::from_millis(50);
        connect(kind, &config)
    }
}

/// A provider's quota in the emulator's terms and in the spec's.
struct Case {
    kind: ProviderKind,
    emulator: Quotas,
    spec: Value,
    limit: u64,
    rows: usize,
    rows_per_part: usize,
}

/// Each provider's quota kind, sized so that the job is ten times the quota: ten
/// times the limit's tokens, or twenty parts for a limit of two.
fn case(kind: ProviderKind) -> Case {
    // About 100 prompt tokens a row with the invoice schema and system prompt (the
    // pipeline estimates more): a few rows a part, one part in flight at a time.
    const TOKENS: u64 = 1_000;
    let (emulator, spec, limit, rows, rows_per_part) = match kind {
        ProviderKind::OpenAi => (
            Quotas {
                openai_enqueued_tokens: Some(TOKENS),
                ..Quotas::default()
            },
            json!({"enqueued_tokens": TOKENS}),
            TOKENS,
            120,
            3,
        ),
        ProviderKind::Gemini => (
            Quotas {
                gemini_enqueued_tokens: Some(TOKENS),
                ..Quotas::default()
            },
            json!({"enqueued_tokens": TOKENS}),
            TOKENS,
            120,
            3,
        ),
        ProviderKind::Anthropic => (
            Quotas {
                anthropic_queue_requests: Some(4),
                ..Quotas::default()
            },
            json!({"queued_requests": 4}),
            4,
            40,
            2,
        ),
        ProviderKind::Vertex => (
            Quotas {
                vertex_concurrent_jobs: Some(2),
                ..Quotas::default()
            },
            json!({"open_batches": 2}),
            2,
            40,
            2,
        ),
        // Bedrock's parts hold at least its 100-record minimum.
        ProviderKind::Bedrock => (
            Quotas {
                bedrock_concurrent_jobs: Some(2),
                ..Quotas::default()
            },
            json!({"open_batches": 2}),
            2,
            2_000,
            100,
        ),
    };
    Case {
        kind,
        emulator,
        spec,
        limit,
        rows,
        rows_per_part,
    }
}

fn figures(h: &Harness, kind: ProviderKind) -> QuotaFigures {
    let report = h.emulator.quota_report();
    match kind {
        ProviderKind::OpenAi => report.openai,
        ProviderKind::Anthropic => report.anthropic,
        ProviderKind::Vertex => report.vertex,
        ProviderKind::Gemini => report.gemini,
        ProviderKind::Bedrock => report.bedrock,
    }
}

/// Runs a job of `case` with the limit known to the pipeline (`known`) or not, and
/// checks that every row succeeded; answers the emulator's figures.
async fn run_case(case: &Case, known: bool) -> QuotaFigures {
    let mut h = Harness::start().await;
    h.ctx.providers = Arc::new(QuickRefusals(h.providers()));
    h.emulator.set_quotas(case.emulator.clone());
    let mut spec = json!({"max_requests_per_part": case.rows_per_part, "max_attempts": 1});
    if known {
        spec["quota"] = case.spec.clone();
    }
    let (body, ids) = job_file_with(case.kind, spec, case.rows, &[]);
    let name = if known { "known" } else { "unknown" };
    let job = h.submit(&format!("inbox/quota-{name}.jsonl"), body).await;
    let record = h.run_in_real_time(&job).await;
    assert_eq!(record.status, JobStatus::Completed, "{:?}", record.failure);
    let results = h.assert_invariant(&job, &ids).await;
    assert_eq!(
        results.successes.len(),
        case.rows,
        "{:?} {}: {:?}",
        case.kind,
        results.summary,
        results.error_types()
    );
    let parts = record.parts.len() as u64;
    let held = figures(&h, case.kind);
    // The job is ten times the quota: in tokens, or in parts for a count of batches.
    match case.kind {
        ProviderKind::OpenAi | ProviderKind::Gemini => {
            let input = results.summary["usage"]["input_tokens"].as_u64().unwrap();
            assert!(input >= 10 * case.limit, "{input} tokens");
        }
        ProviderKind::Anthropic => assert!(case.rows as u64 >= 10 * case.limit),
        ProviderKind::Vertex | ProviderKind::Bedrock => assert!(parts >= 10 * case.limit),
    }
    assert!(held.admitted >= parts, "{held:?}");
    held
}

async fn quota_holds(kind: ProviderKind) {
    let case = case(kind);
    let known = run_case(&case, true).await;
    assert_eq!(
        known.refused, 0,
        "{kind:?}: created past the limit: {known:?}"
    );
    assert!(known.peak <= case.limit, "{kind:?}: {known:?}");
    assert!(known.peak > 0, "{kind:?}: {known:?}");
    let unknown = run_case(&case, false).await;
    assert!(
        unknown.refused > 0,
        "{kind:?}: the quota never refused: {unknown:?}"
    );
    assert!(unknown.peak <= case.limit, "{kind:?}: {unknown:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_enqueued_token_limit() {
    quota_holds(ProviderKind::OpenAi).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_processing_queue_limit() {
    quota_holds(ProviderKind::Anthropic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vertex_concurrent_jobs_quota() {
    quota_holds(ProviderKind::Vertex).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_enqueued_token_limit() {
    quota_holds(ProviderKind::Gemini).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bedrock_concurrent_jobs_quota() {
    quota_holds(ProviderKind::Bedrock).await;
}
