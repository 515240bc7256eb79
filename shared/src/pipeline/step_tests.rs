//! The pipeline steps run in process: submit, poll and collect over the memory store,
//! the memory queue, the memory provider and a clock moved by hand. Each test drives a
//! job through the fate it scripts and checks the invariant on the files written:
//! every request exactly once, as a success or an error, and the summary agrees.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::{Value, json};

use super::cancel::{CancelRequest, request_cancel};
use super::collect::{CollectOutcome, collect};
use super::context::{Context, PipelineError, ProviderSource, Settings};
use super::job::{self, JobRecord, JobStatus, keys};
use super::poll::{ListedPoll, poll, poll_listed};
use super::ready::JobMessage;
use super::ready::ReadyMessage;
use super::submit::{SubmitOutcome, UploadedObject, submit};
use crate::clock::{Clock, ManualClock};
use crate::ledger::MemoryLedger;
use crate::metrics::MemorySink;
use crate::model::ProviderKind;
use crate::provider::BatchProvider;
use crate::provider::memory::{Fate, MemoryProvider};
use crate::queue::MemoryQueue;
use crate::storage::{LocalStore, MemoryStore, PutMode};

/// Every kind of provider is the one memory provider (it speaks OpenAI's formats).
#[derive(Debug)]
struct Only(Arc<MemoryProvider>);

#[async_trait]
impl ProviderSource for Only {
    async fn provider(&self, _kind: ProviderKind) -> crate::Result<Arc<dyn BatchProvider>> {
        Ok(self.0.clone())
    }
}

/// One in-process pipeline.
struct Steps {
    ctx: Context,
    queue: Arc<MemoryQueue>,
    /// Uploads handed over by a submit whose time ran out.
    submit_queue: Arc<MemoryQueue>,
    /// The fan-out queue, counting its calls; the context uses it after [`Steps::fanned_out`].
    poll_jobs: Arc<CountingQueue>,
    provider: Arc<MemoryProvider>,
    clock: Arc<ManualClock>,
    metrics: Arc<MemorySink>,
}

/// What one job left in the store.
struct Results {
    summary: Value,
    successes: Vec<Value>,
    errors: Vec<Value>,
    /// Rows not sent (`skip_succeeded`), each with the job that has its success.
    skipped: Vec<Value>,
}

impl Results {
    /// The success or error record of `id`.
    fn by_id(&self, id: &str) -> &Value {
        self.successes
            .iter()
            .chain(&self.errors)
            .find(|r| r["custom_id"] == id)
            .unwrap()
    }

    fn error_types(&self) -> BTreeMap<String, String> {
        self.errors
            .iter()
            .map(|e| {
                let field = |name: &str| e[name].as_str().unwrap_or_default().to_string();
                (field("custom_id"), field("error_type"))
            })
            .collect()
    }
}

impl Steps {
    fn new(settings: Settings) -> Self {
        let queue = Arc::new(MemoryQueue::new());
        let submit_queue = Arc::new(MemoryQueue::new());
        let provider = Arc::new(MemoryProvider::new(json!({"total": 12.5})));
        let clock = Arc::new(ManualClock::new(
            time::macros::datetime!(2026-12-02 12:00 UTC),
        ));
        let metrics = Arc::new(MemorySink::new());
        let ctx = Context {
            store: Arc::new(MemoryStore::new()),
            bucket: "bucket".into(),
            queue: queue.clone(),
            providers: Arc::new(Only(provider.clone())),
            settings,
            clock: clock.clone(),
            ledger: Some(Arc::new(MemoryLedger::new())),
            // Poll resumes handed-over submits itself unless a test sets the queue.
            submit_queue: None,
            poll_jobs: None,
            metrics: metrics.clone(),
        };
        Self {
            ctx,
            queue,
            submit_queue,
            poll_jobs: Arc::new(CountingQueue::default()),
            provider,
            clock,
            metrics,
        }
    }

    /// Polls through the fan-out queue once more than `poll_inline_jobs` jobs are open.
    fn fanned_out(mut self) -> Self {
        self.ctx.poll_jobs = Some(self.poll_jobs.clone());
        self
    }

    /// Uploads a job of `n` requests `doc-0…` (and a line that is not JSON when
    /// `bad_line`) under `name`, submits it and returns the job id and every id the
    /// results must hold.
    async fn start(
        &self,
        name: &str,
        n: usize,
        spec: Value,
        bad_line: bool,
    ) -> (String, Vec<String>) {
        let (key, ids) = self.upload(name, n, spec, bad_line).await;
        let outcome = self.submit(&key).await.unwrap();
        let job = match outcome {
            SubmitOutcome::Submitted { job_id, .. } => job_id,
            other => panic!("{other:?}"),
        };
        (job, ids)
    }

    /// Uploads what [`Steps::start`] submits; returns its key and its ids.
    async fn upload(
        &self,
        name: &str,
        n: usize,
        spec: Value,
        bad_line: bool,
    ) -> (String, Vec<String>) {
        let mut lines = vec![json!({ "spec": invoice_spec(spec) }).to_string()];
        let mut ids: Vec<String> = (0..n).map(|i| format!("doc-{i}")).collect();
        lines.extend(
            ids.iter()
                .map(|id| json!({"custom_id": id, "text": format!("Invoice {id}")}).to_string()),
        );
        if bad_line {
            lines.push("not json".into());
            ids.push(format!("line-{}", lines.len()));
        }
        let key = format!("inbox/{name}.jsonl");
        self.put(&key, lines.join("\n") + "\n").await;
        (key, ids)
    }

    /// Uploads `body` at `key`.
    async fn put(&self, key: &str, body: impl Into<Bytes>) {
        self.ctx
            .store
            .put(key, body.into(), PutMode::Overwrite)
            .await
            .unwrap();
    }

    /// Uploads `body` at `key`, submits it and returns why the job failed at submit.
    async fn failed_submit(&self, key: &str, body: impl Into<Bytes>) -> String {
        self.put(key, body).await;
        match self.submit(key).await.unwrap() {
            SubmitOutcome::Failed { reason, .. } => reason,
            other => panic!("{key} did not fail: {other:?}"),
        }
    }

    /// Uploads a job of one text line under `key` with the header's `spec`, submits
    /// it and answers why the job failed; no batch was created.
    async fn submit_refused(&self, key: &str, spec: Value) -> String {
        let body = format!("{}\n{}\n", json!({ "spec": spec }), json!({"text": "a"}));
        let reason = self.failed_submit(key, body).await;
        assert_eq!(self.provider.created(), 0);
        reason
    }

    async fn submit(&self, key: &str) -> Result<SubmitOutcome, PipelineError> {
        let object = UploadedObject {
            key: key.into(),
            version_id: None,
        };
        submit(&self.ctx, &object).await
    }

    /// Collects every queued message; `final_attempt` as the queue's last delivery.
    async fn collect_queued(
        &self,
        final_attempt: bool,
    ) -> Vec<Result<CollectOutcome, PipelineError>> {
        let mut outcomes = Vec::new();
        for body in self.queue.drain() {
            let message = ReadyMessage::parse(&body).unwrap();
            outcomes.push(collect(&self.ctx, &message, final_attempt).await);
        }
        outcomes
    }

    /// Polls, ends the provider's batches and collects until the job is closed.
    async fn run_to_end(&self, job: &str) -> JobRecord {
        for _ in 0..10 {
            let record = self.record(job).await;
            if record.status.is_closed() {
                return record;
            }
            poll(&self.ctx).await.unwrap();
            self.provider.finish_all();
            poll(&self.ctx).await.unwrap();
            for outcome in self.collect_queued(false).await {
                outcome.unwrap();
            }
        }
        panic!("job {job} did not end: {:?}", self.record(job).await);
    }

    /// The id of the job the object at `key` makes.
    async fn job_of(&self, key: &str) -> String {
        let meta = self.ctx.store.head(key, None).await.unwrap();
        job::SourceObject {
            bucket: self.ctx.bucket.clone(),
            key: key.into(),
            etag: meta.etag,
            version_id: None,
        }
        .job_id()
    }

    async fn record(&self, job: &str) -> JobRecord {
        job::load(self.ctx.store.as_ref(), job)
            .await
            .unwrap()
            .record
    }

    async fn json_lines(&self, key: &str) -> Vec<Value> {
        let (_, body) = self.ctx.store.get(key).await.unwrap();
        body.split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect()
    }

    /// The job's result files, checked: each of `ids` exactly once (as a success, an
    /// error or a skipped row) and nothing else, and the summary's counts agree.
    async fn results(&self, job: &str, ids: &[String]) -> Results {
        let summary: Value =
            serde_json::from_slice(&self.ctx.store.get(&keys::summary(job)).await.unwrap().1)
                .unwrap();
        let (mut successes, mut errors) = (Vec::new(), Vec::new());
        let is_skipped = |key: &str| key.starts_with(&format!("results/{job}/skipped"));
        let mut skipped = Vec::new();
        for key in self
            .ctx
            .store
            .list(&format!("results/{job}/"))
            .await
            .unwrap()
        {
            if key.ends_with(".jsonl") && is_skipped(&key) {
                skipped.extend(self.json_lines(&key).await);
            } else if key.ends_with(".jsonl") {
                let lines = self.json_lines(&key).await;
                match key.contains("/successes/") {
                    true => successes.extend(lines),
                    false => errors.extend(lines),
                }
            }
        }
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for line in successes.iter().chain(&errors).chain(&skipped) {
            *seen
                .entry(line["custom_id"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
        let expected: BTreeMap<String, usize> = ids.iter().map(|id| (id.clone(), 1)).collect();
        assert_eq!(seen, expected, "every request exactly once");
        assert_eq!(summary["requests"], ids.len());
        assert_eq!(summary["succeeded"], successes.len());
        assert_eq!(summary["failed"], errors.len());
        assert_eq!(summary["skipped"], skipped.len());
        assert_eq!(summary["invariant_holds"], true);
        Results {
            summary,
            successes,
            errors,
            skipped,
        }
    }
}

#[tokio::test]
async fn a_job_runs_to_its_end_with_every_request_once() {
    runs_to_its_end(Steps::new(Settings::default())).await;
}

/// The operator CLI's bucket: the same job over a directory.
#[tokio::test]
async fn a_job_runs_to_its_end_over_a_local_directory() {
    let dir = tempfile::TempDir::new().unwrap();
    let mut s = Steps::new(Settings::default());
    s.ctx.store = Arc::new(LocalStore::new(dir.path()));
    runs_to_its_end(s).await;
}

async fn runs_to_its_end(s: Steps) {
    let (job, ids) = s.start("all-good", 5, json!({}), true).await;
    let record = s.run_to_end(&job).await;
    assert_eq!(record.status, JobStatus::Completed);
    let results = s.results(&job, &ids).await;
    assert_eq!(results.successes.len(), 5);
    assert!(
        results
            .successes
            .iter()
            .all(|r| r["result"] == json!({"total": 12.5}))
    );
    assert_eq!(results.error_types()["line-7"], "invalid_input");
    assert_eq!(
        results.summary["input"]["complete"], true,
        "{}",
        results.summary
    );
}

#[tokio::test]
async fn a_job_emits_its_metrics_as_emf_documents_as_it_goes() {
    let s = Steps::new(Settings::default());
    s.provider.script(Fate::RateLimited(vec!["doc-1".into()]));
    let spec = json!({"max_attempts": 1,
                      "prices": {"input_per_million": 2.5, "output_per_million": 10.0}});
    let (job, ids) = s.start("invoices/march", 2, spec, false).await;
    let dims = [("Pipeline", "invoices"), ("Provider", "openai")];
    assert_eq!(s.metrics.total("JobsSubmitted", &dims), 1.0);
    assert_eq!(s.metrics.total("JobsCompleted", &[]), 0.0);

    poll(&s.ctx).await.unwrap();
    s.provider.finish_all_at(Some("2026-12-02T12:00:00Z"));
    s.clock.advance(Duration::from_secs(90));
    poll(&s.ctx).await.unwrap();
    for outcome in s.collect_queued(false).await {
        outcome.unwrap();
    }
    assert_eq!(s.record(&job).await.status, JobStatus::Completed);
    let results = s.results(&job, &ids).await;
    assert_eq!(results.error_types()["doc-1"], "rate_limit_exceeded");

    let total = |name: &str| s.metrics.total(name, &dims);
    assert_eq!(total("JobsSubmitted"), 1.0);
    assert_eq!(total("JobsCompleted"), 1.0);
    assert_eq!(total("JobsFailed"), 0.0);
    assert_eq!(total("RowsSucceeded"), 1.0);
    let limited = [dims[0], dims[1], ("ErrorType", "rate_limit_exceeded")];
    assert_eq!(s.metrics.total("RowsFailed", &limited), 1.0);
    assert_eq!(total("RowsFailed"), 1.0, "no other error type");
    assert_eq!(total("InputTokens"), 10.0, "the one answered request's");
    assert_eq!(total("OutputTokens"), 5.0);
    assert!(total("CostUSD") > 0.0);
    assert_eq!(
        total("ResultsLatency"),
        90.0,
        "from the provider's end to S3"
    );
    assert_eq!(s.metrics.total("PartsWaitingForQuota", &[]), 0.0);
    let now = s.clock.now().unix_timestamp() * 1000;
    for document in s.metrics.documents() {
        let directive = &document["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], "batchline");
        assert!(document["_aws"]["Timestamp"].as_i64().unwrap() <= now);
    }
}

#[tokio::test]
async fn a_repeated_event_creates_no_second_batch() {
    let s = Steps::new(Settings::default());
    let (job, _) = s.start("repeated", 3, json!({}), false).await;
    let again = s.submit("inbox/repeated.jsonl").await.unwrap();
    assert_eq!(again, SubmitOutcome::Duplicate { job_id: job });
    assert_eq!(s.provider.created(), 1);
}

#[tokio::test]
async fn a_submit_that_failed_at_the_provider_is_resumed_by_the_next_event_or_poll() {
    let s = Steps::new(Settings::default());
    let key = "inbox/flaky.jsonl";
    let body = format!(
        "{}\n{}\n",
        json!({"spec": {"model": "openai/gpt-4o-mini", "schema_name": "s",
                        "schema": {"type": "object", "properties": {"total": {"type": "number"}},
                                   "required": ["total"], "additionalProperties": false}}}),
        json!({"custom_id": "a", "text": "Invoice"})
    );
    s.ctx
        .store
        .put(key, Bytes::from(body), PutMode::Overwrite)
        .await
        .unwrap();
    for resume_by_poll in [false, true] {
        s.provider.fail_creates(1);
        let key = if resume_by_poll {
            "inbox/flaky-poll.jsonl"
        } else {
            key
        };
        if resume_by_poll {
            let (_, body) = s.ctx.store.get("inbox/flaky.jsonl").await.unwrap();
            s.ctx
                .store
                .put(key, body, PutMode::Overwrite)
                .await
                .unwrap();
        }
        let err = s.submit(key).await.unwrap_err();
        assert!(err.to_string().contains("500"), "{err}");
        let job = s.job_of(key).await;
        let record = s.record(&job).await;
        assert_eq!(record.status, JobStatus::Submitting);
        assert_eq!(record.submit_lease_until, None, "the lease is given back");
        assert!(record.last_error.unwrap().contains("500"));
        if resume_by_poll {
            poll(&s.ctx).await.unwrap();
            assert_eq!(s.record(&job).await.status, JobStatus::Open);
        } else {
            let outcome = s.submit(key).await.unwrap();
            assert!(
                matches!(outcome, SubmitOutcome::Submitted { .. }),
                "{outcome:?}"
            );
        }
        s.run_to_end(&job).await;
        s.results(&job, &["a".to_string()]).await;
    }
    assert_eq!(s.provider.created(), 2);
}

#[tokio::test]
async fn a_collect_lease_held_by_a_dead_collect_passes_with_the_clock() {
    let s = Steps::new(Settings::default());
    let (job, ids) = s.start("lease", 3, json!({}), false).await;
    s.provider.finish_all();
    poll(&s.ctx).await.unwrap();
    let messages = s.queue.drain();
    assert_eq!(messages.len(), 1);
    let message = ReadyMessage::parse(&messages[0]).unwrap();
    // A collect took the part and died.
    let held = s.clock.after(s.ctx.settings.collect_lease);
    job::update(s.ctx.store.as_ref(), &job, |record| {
        record.parts[0].collect_lease_until = Some(held.clone());
        true
    })
    .await
    .unwrap();
    let busy = collect(&s.ctx, &message, false).await.unwrap_err();
    assert!(matches!(busy, PipelineError::Busy { .. }), "{busy}");
    s.clock
        .advance(s.ctx.settings.collect_lease + Duration::from_secs(1));
    let outcome = collect(&s.ctx, &message, false).await.unwrap();
    assert!(
        matches!(
            outcome,
            CollectOutcome::Collected {
                succeeded: 3,
                job_closed: true,
                ..
            }
        ),
        "{outcome:?}"
    );
    assert_eq!(
        collect(&s.ctx, &message, false).await.unwrap(),
        CollectOutcome::AlreadyCollected
    );
    s.results(&job, &ids).await;
}

#[tokio::test]
async fn a_lost_ready_message_is_queued_again_after_the_requeue_delay() {
    let s = Steps::new(Settings::default());
    let (job, ids) = s.start("requeue", 2, json!({}), false).await;
    s.provider.finish_all();
    poll(&s.ctx).await.unwrap();
    assert_eq!(s.queue.drain().len(), 1, "queued, then lost");
    poll(&s.ctx).await.unwrap();
    assert!(s.queue.drain().is_empty(), "not yet due again");
    s.clock.advance(s.ctx.settings.requeue_after);
    poll(&s.ctx).await.unwrap();
    let collected = s.collect_queued(false).await;
    assert_eq!(collected.len(), 1, "queued again");
    assert!(matches!(
        collected[0],
        Ok(CollectOutcome::Collected {
            job_closed: true,
            ..
        })
    ));
    s.results(&job, &ids).await;
}

#[tokio::test]
async fn retryable_failures_are_resubmitted_up_to_max_attempts() {
    for max_attempts in [1u32, 2] {
        let s = Steps::new(Settings::default());
        s.provider.script(Fate::RateLimited(vec!["doc-1".into()]));
        let (job, ids) = s
            .start("retry", 3, json!({"max_attempts": max_attempts}), false)
            .await;
        let record = s.run_to_end(&job).await;
        let results = s.results(&job, &ids).await;
        assert_eq!(record.parts.len(), max_attempts as usize);
        if max_attempts == 1 {
            assert_eq!(results.error_types()["doc-1"], "rate_limit_exceeded");
        } else {
            let retried = results
                .successes
                .iter()
                .find(|r| r["custom_id"] == "doc-1")
                .unwrap();
            assert_eq!(retried["attempts"], 2);
            assert_eq!(results.summary["retried"], 1);
        }
    }
}

#[tokio::test]
async fn batch_fates_end_every_request_with_the_reason() {
    let cases: [(Fate, usize, &str, usize); 4] = [
        (Fate::Expire { ran: 2 }, 2, "expired", 0),
        (Fate::Cancel { ran: 1 }, 1, "cancelled", 0),
        (Fate::FailValidation, 0, "batch_failed", 0),
        (Fate::Complete, 4, "", 0),
    ];
    for (fate, succeeded, error_type, retry_parts) in cases {
        let s = Steps::new(Settings::default());
        s.provider.script(fate.clone());
        // One attempt: what ends is final (a cancellation is final whatever the attempts).
        let attempts = if fate == (Fate::Cancel { ran: 1 }) {
            3
        } else {
            1
        };
        let (job, ids) = s
            .start("fate", 4, json!({"max_attempts": attempts}), false)
            .await;
        let record = s.run_to_end(&job).await;
        assert_eq!(record.parts.len(), 1 + retry_parts, "{fate:?}");
        let results = s.results(&job, &ids).await;
        assert_eq!(results.successes.len(), succeeded, "{fate:?}");
        assert!(
            results.error_types().values().all(|t| t == error_type),
            "{fate:?}: {:?}",
            results.error_types()
        );
    }
}

#[tokio::test]
async fn results_that_cannot_be_read_are_retried_then_recorded_on_the_last_delivery() {
    for (fate, error_type) in [
        (Fate::LoseResults, "read_error"),
        (Fate::DropLines { sent: 1 }, "missing_result"),
    ] {
        let s = Steps::new(Settings::default());
        s.provider.script(fate.clone());
        let (job, ids) = s.start("lost", 3, json!({"max_attempts": 1}), false).await;
        s.provider.finish_all();
        poll(&s.ctx).await.unwrap();
        let bodies = s.queue.drain();
        let message = ReadyMessage::parse(&bodies[0]).unwrap();
        assert!(
            collect(&s.ctx, &message, false).await.is_err(),
            "{fate:?}: retried first"
        );
        let outcome = collect(&s.ctx, &message, true).await.unwrap();
        assert!(
            matches!(
                outcome,
                CollectOutcome::Collected {
                    job_closed: true,
                    ..
                }
            ),
            "{outcome:?}"
        );
        let results = s.results(&job, &ids).await;
        let errors = results.error_types();
        assert_eq!(errors.len(), 3 - results.successes.len(), "{fate:?}");
        assert!(
            errors.values().all(|t| t == error_type),
            "{fate:?}: {errors:?}"
        );
    }
}

#[tokio::test]
async fn a_cut_off_results_line_is_reported_under_its_id_not_as_missing() {
    let s = Steps::new(Settings::default());
    s.provider.script(Fate::CutLine("doc-1".into()));
    let (job, ids) = s.start("cut", 3, json!({"max_attempts": 1}), false).await;
    let record = s.run_to_end(&job).await;
    assert_eq!(record.status, JobStatus::Completed);
    // Each id exactly once (checked by `results`), nothing under `line-N`.
    let results = s.results(&job, &ids).await;
    assert_eq!(results.successes.len(), 2);
    assert_eq!(
        results.error_types(),
        BTreeMap::from([("doc-1".to_string(), "malformed_line".to_string())])
    );
    let error = &results.errors[0];
    let raw = error["raw_data"].as_str().unwrap();
    assert!(raw.contains(r#""custom_id":"doc-1""#), "{raw}");
    assert!(error["line"].is_u64(), "{error}");
    assert_eq!(
        results.summary["errors_by_type"],
        json!({"malformed_line": 1}),
        "{}",
        results.summary
    );
}

#[tokio::test]
async fn status_calls_refused_for_good_end_the_part_after_a_bounded_number_of_ticks() {
    let s = Steps::new(Settings {
        max_refused_polls: 3,
        ..Settings::default()
    });
    let (job, ids) = s.start("revoked", 2, json!({}), false).await;
    s.provider.refuse_status(Some(401));
    for tick in 1..=2 {
        poll(&s.ctx).await.unwrap();
        let part = &s.record(&job).await.parts[0];
        assert_eq!(part.refused_polls, tick);
        assert!(part.poll_error.as_deref().unwrap().contains("401"));
        assert!(s.queue.drain().is_empty());
    }
    poll(&s.ctx).await.unwrap();
    assert_eq!(
        s.queue.drain().len(),
        1,
        "given up and queued, then the message is lost"
    );
    s.clock.advance(s.ctx.settings.requeue_after);
    poll(&s.ctx).await.unwrap();
    for outcome in s.collect_queued(false).await {
        outcome.unwrap();
    }
    let record = s.record(&job).await;
    assert_eq!(record.status, JobStatus::Completed);
    let results = s.results(&job, &ids).await;
    assert!(
        results
            .error_types()
            .values()
            .all(|t| t == "batch_unreachable")
    );
    assert!(
        results.summary["parts"][0]["error"]
            .as_str()
            .unwrap()
            .contains("refused 3 status calls")
    );
}

#[tokio::test]
async fn a_transient_status_failure_is_noted_and_cleared() {
    let s = Steps::new(Settings::default());
    let (job, ids) = s.start("transient", 2, json!({}), false).await;
    s.provider.refuse_status(Some(503));
    poll(&s.ctx).await.unwrap();
    let part = &s.record(&job).await.parts[0];
    assert!(part.poll_error.as_deref().unwrap().contains("503"));
    assert_eq!(part.refused_polls, 0, "a 503 is not a refusal");
    s.provider.refuse_status(None);
    s.run_to_end(&job).await;
    assert_eq!(s.record(&job).await.parts[0].poll_error, None);
    s.results(&job, &ids).await;
}

#[tokio::test]
async fn packed_rows_come_back_one_result_per_row_with_shared_usage() {
    let s = Steps::new(Settings::default());
    let (job, ids) = s
        .start("packed", 12, json!({"rows_per_request": 5}), true)
        .await;
    let record = s.run_to_end(&job).await;
    assert_eq!(record.status, JobStatus::Completed);
    let results = s.results(&job, &ids).await;
    assert_eq!(results.successes.len(), 12);
    // 12 rows in requests of 5, 5 and 2; each request's usage (10 in, 5 out) is shared.
    assert_eq!(results.summary["llm_requests"], 3, "{}", results.summary);
    assert_eq!(results.summary["usage"]["input_tokens"], 30);
    assert_eq!(results.summary["usage"]["output_tokens"], 15);
    let (_, manifest) = s
        .ctx
        .store
        .get(&keys::part_manifest(&job, 0))
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8(manifest.to_vec()).unwrap().lines().next(),
        Some("doc-0\tdoc-1\tdoc-2\tdoc-3\tdoc-4")
    );
}

#[tokio::test]
async fn rows_left_out_invented_or_repeated_are_never_given_another_rows_answer() {
    let s = Steps::new(Settings::default());
    // rows-0 holds doc-0…doc-3: row 2 is left out, row 3 answered twice, row 9 invented.
    let answer = r#"{"1": {"total": 1}, "3": {"total": 3}, "3": {"total": 33}, "4": {"total": "four"}, "9": {"total": 9}}"#;
    s.provider
        .script(Fate::Answers(vec![("rows-0".into(), answer.into())]));
    let (job, ids) = s
        .start(
            "split-back",
            4,
            json!({"rows_per_request": 4, "max_attempts": 1}),
            false,
        )
        .await;
    s.run_to_end(&job).await;
    let results = s.results(&job, &ids).await;
    assert_eq!(results.successes.len(), 1);
    assert_eq!(results.successes[0]["custom_id"], "doc-0");
    assert_eq!(results.successes[0]["result"], json!({"total": 1}));
    let types = results.error_types();
    assert_eq!(types["doc-1"], "missing_row");
    assert_eq!(types["doc-2"], "repeated_row");
    assert_eq!(
        types["doc-3"], "schema_mismatch",
        "each row is validated on its own"
    );
}

#[tokio::test]
async fn a_packed_request_cut_off_for_length_is_split_until_its_rows_fit() {
    let s = Steps::new(Settings::default());
    // Answers of more than 2 rows do not fit the token limit: 8 rows → 4 → 2 fit.
    s.provider.script(Fate::TruncateAbove { rows: 2 });
    s.provider.script(Fate::TruncateAbove { rows: 2 });
    s.provider.script(Fate::TruncateAbove { rows: 2 });
    let (job, ids) = s
        .start(
            "too-long",
            8,
            json!({"rows_per_request": 8, "max_attempts": 1}),
            false,
        )
        .await;
    let record = s.run_to_end(&job).await;
    let results = s.results(&job, &ids).await;
    assert_eq!(
        results.successes.len(),
        8,
        "rows that fit alone never fail for their request's length: {:?}",
        results.errors
    );
    // 1 request of 8, then 2 of 4, then 4 of 2: three parts, whatever max_attempts says.
    assert_eq!(record.parts.len(), 3);
    assert_eq!(results.summary["llm_requests"], 7);
    assert_eq!(results.summary["retried"], 16);
}

#[tokio::test]
async fn rows_of_a_failed_packed_request_each_get_its_error() {
    let s = Steps::new(Settings::default());
    s.provider.script(Fate::RateLimited(vec!["rows-1".into()]));
    let (job, ids) = s
        .start(
            "packed-failure",
            6,
            json!({"rows_per_request": 3, "max_attempts": 1}),
            false,
        )
        .await;
    s.run_to_end(&job).await;
    let results = s.results(&job, &ids).await;
    let types = results.error_types();
    assert_eq!(types.len(), 3);
    for id in ["doc-3", "doc-4", "doc-5"] {
        assert_eq!(types[id], "rate_limit_exceeded");
    }
    assert!(
        results.errors[0]["error_message"]
            .as_str()
            .unwrap()
            .ends_with("(in a request of 3 rows)")
    );
}

#[tokio::test]
async fn conversations_cannot_be_packed_and_are_reported_by_line() {
    let s = Steps::new(Settings::default());
    let spec = json!({"spec": {"model": "openai/gpt-4o-mini", "schema_name": "s", "rows_per_request": 2,
        "schema": {"type": "object", "properties": {"total": {"type": "number"}},
                   "required": ["total"], "additionalProperties": false}}});
    let lines = [
        spec.to_string(),
        json!({"custom_id": "a", "text": "one"}).to_string(),
        json!({"custom_id": "b", "messages": [{"role": "user", "content": "hi"},
            {"role": "assistant", "content": "yes"}, {"role": "user", "content": "more"}]})
        .to_string(),
        json!({"custom_id": "c", "text": "three"}).to_string(),
    ];
    let key = "inbox/conversations.jsonl";
    s.ctx
        .store
        .put(key, Bytes::from(lines.join("\n")), PutMode::Overwrite)
        .await
        .unwrap();
    s.submit(key).await.unwrap();
    let job = s.job_of(key).await;
    s.run_to_end(&job).await;
    let ids: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
    let results = s.results(&job, &ids).await;
    assert_eq!(results.successes.len(), 2);
    let error = &results.errors[0];
    assert_eq!(error["custom_id"], "b");
    assert_eq!(error["line"], 3);
    assert!(
        error["error_message"]
            .as_str()
            .unwrap()
            .contains("rows_per_request")
    );
}

#[tokio::test]
async fn a_job_without_a_schema_gets_text_answers() {
    let s = Steps::new(Settings::default());
    let (job, ids) = s
        .start(
            "text",
            3,
            json!({"schema_name": null, "schema": null}),
            true,
        )
        .await;
    let record = s.run_to_end(&job).await;
    assert_eq!(record.status, JobStatus::Completed);
    assert_eq!(record.spec.as_ref().unwrap().schema, None);
    let results = s.results(&job, &ids).await;
    assert_eq!(results.successes.len(), 3);
    for success in &results.successes {
        let fields: Vec<&str> = success
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            fields,
            ["custom_id", "text", "usage", "attempts"],
            "{success}"
        );
        // The memory provider answers every request with the same content.
        assert_eq!(success["text"], r#"{"total":12.5}"#);
    }
    assert_eq!(results.error_types()["line-5"], "invalid_input");
}

#[tokio::test]
async fn text_output_with_several_rows_per_request_fails_the_job() {
    let s = Steps::new(Settings::default());
    let spec = json!({"model": "openai/gpt-4o-mini", "rows_per_request": 2});
    let reason = s.submit_refused("inbox/text-packed.jsonl", spec).await;
    assert!(
        reason.contains("`rows_per_request`") && reason.contains(r#"`output` "text""#),
        "{reason}"
    );
}

#[tokio::test]
async fn parquet_alone_replaces_the_jsonl_successes_and_errors_stay_jsonl() {
    let s = Steps::new(Settings::default());
    let (job, _) = s
        .start("parquet", 4, json!({"formats": ["parquet"]}), true)
        .await;
    let record = s.run_to_end(&job).await;
    assert_eq!(record.status, JobStatus::Completed);
    let layout = record.table.expect("the layout is decided at submit");
    let keys_written = s.ctx.store.list(&format!("results/{job}/")).await.unwrap();
    let parquet = keys::successes_parquet(&job, 0);
    assert!(keys_written.contains(&parquet), "{keys_written:?}");
    assert!(!keys_written.contains(&keys::successes(&job, 0)));
    assert!(keys_written.contains(&keys::input_errors(&job)));
    let summary: Value =
        serde_json::from_slice(&s.ctx.store.get(&keys::summary(&job)).await.unwrap().1).unwrap();
    assert_eq!(summary["files"]["successes"], json!([parquet]));

    let (_, file) = s.ctx.store.get(&parquet).await.unwrap();
    let reader =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
    assert_eq!(reader.schema(), &layout.arrow_schema());
    let batch = reader.build().unwrap().next().unwrap().unwrap();
    assert_eq!(batch.num_rows(), 4);
    let totals = batch
        .column_by_name("total")
        .unwrap()
        .as_any()
        .downcast_ref::<arrow_array::Float64Array>()
        .unwrap();
    assert!(totals.iter().all(|total| total == Some(12.5)));
}

#[tokio::test]
async fn a_schema_without_a_table_layout_fails_a_parquet_job_at_submit() {
    let s = Steps::new(Settings::default());
    let spec = json!({
        "model": "openai/gpt-4o-mini", "formats": ["jsonl", "parquet"], "schema_name": "s",
        "schema": {"type": "object", "properties": {"attempts": {"type": "integer"}},
                   "required": ["attempts"], "additionalProperties": false},
    });
    let reason = s.submit_refused("inbox/clash.jsonl", spec).await;
    assert!(
        reason.contains("`formats`") && reason.contains(r#""attempts""#),
        "{reason}"
    );
}

/// The ids of a job's successes.
fn succeeded_ids(results: &Results) -> Vec<String> {
    let mut ids: Vec<String> = results
        .successes
        .iter()
        .map(|r| r["custom_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn skip_succeeded_sends_only_the_rows_without_a_success_in_the_pipeline() {
    let s = Steps::new(Settings::default());
    let skip = json!({"skip_succeeded": true, "max_attempts": 1});
    // The first job: doc-0 and doc-1 succeed, doc-2 and doc-3 expire.
    s.provider.script(Fate::Expire { ran: 2 });
    let (first, ids) = s.start("invoices/monday", 4, skip.clone(), false).await;
    s.run_to_end(&first).await;
    assert_eq!(s.results(&first, &ids).await.successes.len(), 2);
    // A job of another pipeline skips nothing.
    let (other, ids) = s.start("receipts/monday", 4, skip.clone(), false).await;
    s.run_to_end(&other).await;
    assert!(s.results(&other, &ids).await.skipped.is_empty());

    let (second, ids) = s.start("invoices/tuesday", 6, skip, false).await;
    let record = s.run_to_end(&second).await;
    assert_eq!(record.skipped, 2);
    let results = s.results(&second, &ids).await;
    assert_eq!(
        results.skipped,
        vec![
            json!({"custom_id": "doc-0", "answer_job": first}),
            json!({"custom_id": "doc-1", "answer_job": first}),
        ]
    );
    assert_eq!(
        succeeded_ids(&results),
        ["doc-2", "doc-3", "doc-4", "doc-5"]
    );
    // Only the rows that were not skipped went to the provider.
    assert_eq!(record.parts.iter().map(|p| p.requests).sum::<u64>(), 4);
    assert_eq!(
        results.summary["files"]["skipped"],
        json!([keys::skipped(&second)])
    );
}

#[tokio::test]
async fn concurrent_uploads_never_skip_a_row_that_neither_has_done() {
    let s = Steps::new(Settings::default());
    let skip = json!({"skip_succeeded": true});
    // Both are submitted before either has a success: each sends every row.
    let (a, ids) = s.start("invoices/a", 3, skip.clone(), false).await;
    let (b, _) = s.start("invoices/b", 3, skip.clone(), false).await;
    s.run_to_end(&a).await;
    s.run_to_end(&b).await;
    for job in [&a, &b] {
        let results = s.results(job, &ids).await;
        assert!(results.skipped.is_empty());
        assert_eq!(results.successes.len(), 3);
    }
    // A later upload skips them all, each pointing at a job whose results hold it.
    let (c, _) = s.start("invoices/c", 3, skip, false).await;
    let record = s.run_to_end(&c).await;
    assert!(record.parts.is_empty(), "{record:?}");
    let results = s.results(&c, &ids).await;
    assert_eq!(results.skipped.len(), 3);
    for row in &results.skipped {
        let answer_job = row["answer_job"].as_str().unwrap();
        assert!([&a, &b].contains(&&answer_job.to_string()));
        let holder = s.results(answer_job, &ids).await;
        assert!(succeeded_ids(&holder).contains(&row["custom_id"].as_str().unwrap().to_string()));
    }
}

#[tokio::test]
async fn skip_succeeded_outside_a_pipeline_fails_the_job_before_submission() {
    let s = Steps::new(Settings::default());
    let spec = json!({"model": "openai/gpt-4o-mini", "skip_succeeded": true});
    let reason = s.submit_refused("inbox/loose.jsonl", spec).await;
    assert!(
        reason.contains("`skip_succeeded`") && reason.contains("inbox/<pipeline>/"),
        "{reason}"
    );
}

#[tokio::test]
async fn a_rerun_upload_makes_a_job_of_exactly_the_failed_rows() {
    let s = Steps::new(Settings::default());
    s.provider.script(Fate::Expire { ran: 2 });
    let (first, ids) = s
        .start("invoices/wednesday", 4, json!({"max_attempts": 1}), true)
        .await;
    // Not finished yet: a re-run is refused and says why.
    let request = json!({"rerun_failed": first}).to_string();
    let reason = s
        .failed_submit("inbox/reruns/early.json", request.clone())
        .await;
    assert!(reason.contains("has not finished"), "{reason}");
    s.run_to_end(&first).await;
    let failed = s.results(&first, &ids).await.error_types();
    assert_eq!(failed.len(), 3, "{failed:?}");

    let key = "inbox/reruns/wednesday.json";
    s.put(key, request).await;
    let rerun = match s.submit(key).await.unwrap() {
        SubmitOutcome::Submitted {
            job_id, requests, ..
        } => {
            assert_eq!(requests, 3);
            job_id
        }
        other => panic!("{other:?}"),
    };
    let record = s.run_to_end(&rerun).await;
    assert_eq!(record.rerun_of.as_ref().unwrap().job_id, first);
    let rerun_ids: Vec<String> = failed.keys().cloned().collect();
    let results = s.results(&rerun, &rerun_ids).await;
    assert_eq!(results.summary["rerun_of"]["job_id"], first);
    // The expired rows ran this time; the bad line is still bad, under the same id
    // and naming the file it is in.
    assert_eq!(succeeded_ids(&results), ["doc-2", "doc-3"]);
    let bad = &results.errors[0];
    assert_eq!(bad["custom_id"], "line-6");
    assert!(
        bad["error_message"]
            .as_str()
            .unwrap()
            .starts_with("inbox/invoices/wednesday.jsonl line 6"),
        "{bad}"
    );

    for (request, why) in [
        (json!({"rerun_failed": "no-such-job"}), "there is no job"),
        (
            json!({"rerun_failed": rerun.clone(), "x": 1}),
            "not a valid re-run request",
        ),
    ] {
        let reason = s
            .failed_submit(&format!("inbox/reruns/{why}.json"), request.to_string())
            .await;
        assert!(reason.contains(why), "{reason}");
    }
}

#[tokio::test]
async fn a_resumed_submit_replays_its_skip_decisions_for_the_parts_it_made() {
    let s = Steps::new(Settings::default());
    let ledger = s.ctx.ledger.clone().unwrap();
    let record = |ids: &[&str], job: &str| {
        let ids: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
        let ledger = ledger.clone();
        let job = job.to_string();
        async move { ledger.record("invoices", &job, &ids).await.unwrap() }
    };
    record(&["doc-1"], "earlier").await;
    // Two rows a part: part 0 is doc-0 + doc-2 (doc-1 skipped), then the submit dies
    // creating part 1.
    s.provider.fail_creates_after(1, 1);
    let key = "inbox/invoices/friday.jsonl";
    let spec = json!({"spec": {"model": "openai/gpt-4o-mini", "skip_succeeded": true,
                               "max_requests_per_part": 2}});
    let mut lines = vec![spec.to_string()];
    lines.extend((0..6).map(|i| json!({"custom_id": format!("doc-{i}"), "text": "x"}).to_string()));
    s.put(key, lines.join("\n")).await;
    assert!(s.submit(key).await.is_err());
    // Meanwhile other jobs succeed with doc-2 (already in part 0: still sent by this
    // job) and doc-4 (not in a part yet: now skipped), and doc-1's entry moves.
    record(&["doc-2", "doc-4"], "concurrent").await;
    record(&["doc-1"], "later").await;
    let job = s.job_of(key).await;
    assert!(matches!(
        s.submit(key).await.unwrap(),
        SubmitOutcome::Submitted { .. }
    ));
    let record = s.run_to_end(&job).await;
    let ids: Vec<String> = (0..6).map(|i| format!("doc-{i}")).collect();
    let results = s.results(&job, &ids).await;
    assert_eq!(
        succeeded_ids(&results),
        ["doc-0", "doc-2", "doc-3", "doc-5"]
    );
    let skipped: Vec<(&str, &str)> = results
        .skipped
        .iter()
        .map(|r| {
            (
                r["custom_id"].as_str().unwrap(),
                r["answer_job"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(skipped, [("doc-1", "earlier"), ("doc-4", "concurrent")]);
    assert_eq!(record.parts.len(), 2);
    // Part 0 was created once, and part 1 once on the resume.
    assert_eq!(s.provider.created(), 2);
}

/// The invoice spec the other tests use, with `fields` added.
fn invoice_spec(fields: Value) -> Value {
    let mut spec = json!({
        "model": "openai/gpt-4o-mini",
        "schema_name": "invoice",
        "schema": {"type": "object", "properties": {"total": {"type": "number"}},
                   "required": ["total"], "additionalProperties": false},
    });
    spec.as_object_mut()
        .unwrap()
        .extend(fields.as_object().unwrap().clone());
    spec
}

impl Steps {
    /// Stores `spec` as the pipeline `name` and `body` at `key`, then submits it.
    async fn submit_under_pipeline(
        &self,
        name: &str,
        spec: Value,
        key: &str,
        body: impl Into<Bytes>,
    ) -> SubmitOutcome {
        self.put(&keys::pipeline_spec(name), spec.to_string()).await;
        self.put(key, body).await;
        self.submit(key).await.unwrap()
    }
}

#[tokio::test]
async fn a_csv_job_carries_its_kept_column_into_every_record_and_retry() {
    let s = Steps::new(Settings::default());
    // A quoted comma, a quoted line end, doubled quotes, a repeated id and a short row.
    let csv = "sku,title,body,region\r\n\
               A-1,Lamp,\"Bright, warm\",EU\r\n\
               A-2,Chair,\"Four legs\r\nand a back\",US\r\n\
               A-3,\"Desk \"\"XL\"\"\",Big,EU\r\n\
               A-1,Again,dup,APAC\r\n\
               A-4,too,few\r\n";
    let spec = invoice_spec(json!({
        "id_column": "sku", "template": "Title: {title}\n\n{body}", "keep": ["region"],
        "max_attempts": 2, "formats": ["jsonl", "parquet"],
    }));
    // The first batch throttles two rows, the retry one of them again.
    s.provider
        .script(Fate::RateLimited(vec!["A-2".into(), "A-3".into()]));
    s.provider.script(Fate::RateLimited(vec!["A-3".into()]));
    let outcome = s
        .submit_under_pipeline("shop", spec, "inbox/shop/products.csv", csv.to_string())
        .await;
    let SubmitOutcome::Submitted {
        job_id: job,
        requests,
        rejected_lines,
        ..
    } = outcome
    else {
        panic!("{outcome:?}");
    };
    assert_eq!((requests, rejected_lines), (5, 2));
    let record = s.run_to_end(&job).await;
    assert_eq!(record.status, JobStatus::Completed);
    assert_eq!(record.parts.len(), 2, "one retry part");
    let ids: Vec<String> = ["A-1", "A-2", "A-3", "line-6", "line-7"]
        .map(String::from)
        .to_vec();
    let results = s.results(&job, &ids).await;
    let region = |id: &str| match id {
        "A-2" => json!("US"),
        "line-6" => json!("APAC"),
        _ => json!("EU"),
    };
    for record in results.successes.iter().chain(&results.errors) {
        let id = record["custom_id"].as_str().unwrap();
        let fields: Vec<&String> = record.as_object().unwrap().keys().collect();
        if id == "line-7" {
            // A ragged row's columns cannot be told apart: nothing is kept.
            assert_eq!(record.get("region"), None, "{record}");
            continue;
        }
        assert_eq!(record["region"], region(id), "{record}");
        assert_eq!(fields[..2], ["custom_id", "region"], "{record}");
    }
    assert_eq!(results.by_id("A-2")["attempts"], 2);
    assert_eq!(results.by_id("A-3")["attempts"], 2);
    assert_eq!(results.by_id("A-3")["error_type"], "rate_limit_exceeded");
    assert_eq!(results.successes.len(), 2);
    let input_errors = s.json_lines(&keys::input_errors(&job)).await;
    assert_eq!(input_errors.len(), 2);
    for (error, line, reason) in [
        (&input_errors[0], 6, "duplicate custom_id \"A-1\""),
        (&input_errors[1], 7, "3 fields and the header 4"),
    ] {
        let message = error["error_message"].as_str().unwrap();
        assert_eq!(error["error_type"], "invalid_input");
        assert_eq!(error["line"], line);
        assert!(
            message.starts_with(&format!("inbox/shop/products.csv line {line}: "))
                && message.contains(reason),
            "{message}"
        );
    }
    let summary = &results.summary;
    assert_eq!(
        summary["succeeded"].as_u64().unwrap() + summary["failed"].as_u64().unwrap(),
        5
    );
    // The table has the kept column too, on every success of either part.
    let mut kept_in_table = Vec::new();
    for part in &record.parts {
        let (_, file) = s
            .ctx
            .store
            .get(&keys::successes_parquet(&job, part.index))
            .await
            .unwrap();
        let reader =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
        for batch in reader.build().unwrap() {
            let batch = batch.unwrap();
            let column = |name: &str| {
                batch
                    .column_by_name(name)
                    .unwrap()
                    .as_any()
                    .downcast_ref::<arrow_array::StringArray>()
                    .unwrap()
                    .clone()
            };
            let (ids, regions) = (column("custom_id"), column("region"));
            for row in 0..batch.num_rows() {
                kept_in_table.push((ids.value(row).to_string(), json!(regions.value(row))));
            }
        }
    }
    kept_in_table.sort_by(|a, b| a.0.cmp(&b.0));
    let expected: Vec<(String, Value)> = ["A-1", "A-2"]
        .iter()
        .map(|id| (id.to_string(), region(id)))
        .collect();
    assert_eq!(kept_in_table, expected);
}

#[tokio::test]
async fn csv_files_that_do_not_fit_their_spec_fail_before_anything_is_sent() {
    let cases: [(Value, &str, &str); 6] = [
        (json!({"id_column": "sku"}), "id,text\n1,x\n", "`id_column`"),
        (json!({"text_column": "body"}), "id,text\n1,x\n", "\"body\""),
        (
            json!({"template": "{title}: {body}"}),
            "title,text\nt,x\n",
            "(spec field `template`)",
        ),
        (json!({"keep": ["region"]}), "text\nx\n", "`keep`"),
        (json!({}), "text,id,text\nx,1,y\n", "\"text\" twice"),
        (json!({}), "\u{feff}text\r\n", "no data rows"),
    ];
    for (fields, csv, expected) in cases {
        let s = Steps::new(Settings::default());
        let key = "inbox/shop/bad.csv.gz";
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, csv.as_bytes()).unwrap();
        let body = gz.finish().unwrap();
        let spec = invoice_spec(fields.clone());
        match s.submit_under_pipeline("shop", spec, key, body).await {
            SubmitOutcome::Failed { reason, .. } => assert!(
                reason.starts_with(key) && reason.contains(expected),
                "{fields}: {reason}"
            ),
            other => panic!("{fields}: {other:?}"),
        }
        assert_eq!(s.provider.created(), 0);
    }
    // A CSV file has no header line to take a spec from.
    let s = Steps::new(Settings::default());
    let reason = s.failed_submit("inbox/loose.csv", "text\nx\n").await;
    assert!(reason.contains("a CSV file has no spec header"), "{reason}");
}

#[tokio::test]
async fn jsonl_lines_carry_their_kept_fields_null_where_missing() {
    let s = Steps::new(Settings::default());
    let spec = invoice_spec(json!({"keep": ["sku", "note"]}));
    let body = [
        json!({"custom_id": "a", "text": "x", "sku": 1, "note": "n"}),
        json!({"custom_id": "b", "text": "y", "sku": 2}),
        json!({"custom_id": "c", "text": "z", "skew": 3}),
    ]
    .map(|line| line.to_string())
    .join("\n");
    let outcome = s
        .submit_under_pipeline("kept", spec, "inbox/kept/rows.jsonl", body)
        .await;
    let SubmitOutcome::Submitted { job_id: job, .. } = outcome else {
        panic!("{outcome:?}");
    };
    s.run_to_end(&job).await;
    let ids = ["a", "b", "c"].map(String::from);
    let results = s.results(&job, &ids).await;
    let a = results.by_id("a");
    assert_eq!((&a["sku"], &a["note"]), (&json!(1), &json!("n")));
    assert_eq!(results.by_id("b")["note"], Value::Null);
    // An unknown field is still refused, the kept ones reported with it.
    let refused = results.by_id("c");
    assert!(refused["error_message"].as_str().unwrap().contains("skew"));
    assert_eq!(refused["sku"], Value::Null);
}

impl Steps {
    /// Polls, ends the running batches and collects, `ticks` times, the clock moving
    /// ten minutes a tick; answers the most parts that had a running batch at once.
    async fn run_ticks(&self, ticks: usize) -> usize {
        let mut most_running = 0;
        for _ in 0..ticks {
            self.clock.advance(Duration::from_secs(600));
            poll(&self.ctx).await.unwrap();
            most_running = most_running.max(self.running_parts().await);
            self.provider.finish_all();
            poll(&self.ctx).await.unwrap();
            for outcome in self.collect_queued(false).await {
                outcome.unwrap();
            }
        }
        most_running
    }

    /// Parts of every open job whose batch runs now.
    async fn running_parts(&self) -> usize {
        let mut running = 0;
        for key in self.ctx.store.list(keys::OPEN).await.unwrap() {
            let record = self.record(&key[keys::OPEN.len()..]).await;
            running += record.parts.iter().filter(|p| p.is_running()).count();
        }
        running
    }
}

#[tokio::test]
async fn parts_past_an_open_batch_limit_wait_and_start_as_earlier_batches_end() {
    let s = Steps::new(Settings::default());
    let spec = json!({"max_requests_per_part": 2, "quota": {"open_batches": 2}});
    let (job, ids) = s.start("queue-limit", 10, spec, false).await;
    let record = s.record(&job).await;
    assert_eq!(record.status, JobStatus::Open);
    assert_eq!(s.provider.created(), 2, "two parts fit, three wait");
    let waiting: Vec<u32> = record
        .parts
        .iter()
        .filter(|p| p.waiting_since.is_some())
        .map(|p| p.index)
        .collect();
    assert_eq!(waiting, [2, 3, 4]);
    // A waiting part has everything it needs in the bucket but its batch.
    for index in waiting {
        let (_, input) = s
            .ctx
            .store
            .get(&keys::part_requests(&job, index))
            .await
            .unwrap();
        assert_eq!(
            input
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .count(),
            2
        );
    }
    let most_running = s.run_ticks(4).await;
    assert!(most_running <= 2, "{most_running} batches ran at once");
    assert_eq!(s.provider.peak_open_batches(), 2);
    assert_eq!(s.record(&job).await.status, JobStatus::Completed);
    let results = s.results(&job, &ids).await;
    assert_eq!(results.successes.len(), 10);
    assert_eq!(s.provider.created(), 5, "no batch created twice");
    let waits = &results.summary["quota_waits"];
    assert_eq!(waits["parts"], 3, "{}", results.summary);
    assert_eq!(waits["given_up"], 0);
    assert!(waits["longest_seconds"].as_u64().unwrap() >= 600, "{waits}");
}

#[tokio::test]
async fn two_jobs_share_the_accounts_quota() {
    let s = Steps::new(Settings {
        quotas: crate::quota::QuotaTable::parse(r#"{"openai": {"open_batches": 1}}"#).unwrap(),
        ..Settings::default()
    });
    let (first, first_ids) = s.start("first", 2, json!({}), false).await;
    let (second, second_ids) = s.start("second", 2, json!({}), false).await;
    assert_eq!(
        s.provider.created(),
        1,
        "the second job waits for the first"
    );
    assert!(s.record(&second).await.parts[0].waiting_since.is_some());
    s.run_ticks(3).await;
    assert_eq!(s.provider.peak_open_batches(), 1);
    for (job, ids) in [(first, first_ids), (second, second_ids)] {
        assert_eq!(s.results(&job, &ids).await.successes.len(), 2);
    }
}

#[tokio::test]
async fn a_create_refused_for_quota_makes_the_parts_wait_instead_of_failing() {
    let s = Steps::new(Settings::default());
    // No limit is known: the provider's refusal is the only signal.
    s.provider.limit_open_batches(Some(1));
    let (job, ids) = s
        .start("refused", 6, json!({"max_requests_per_part": 2}), false)
        .await;
    let record = s.record(&job).await;
    assert_eq!(s.provider.created(), 1);
    assert!(
        record.parts[1]
            .batch_error
            .as_deref()
            .unwrap()
            .contains("quota")
    );
    assert_eq!(
        record
            .parts
            .iter()
            .filter(|p| p.waiting_since.is_some())
            .count(),
        2,
        "the part after a refusal waits without asking"
    );
    s.run_ticks(4).await;
    let results = s.results(&job, &ids).await;
    assert_eq!(results.successes.len(), 6, "{}", results.summary);
    assert_eq!(s.provider.created(), 3);
}

#[tokio::test]
async fn a_batch_failed_for_quota_is_created_again_and_its_rows_do_not_fail() {
    let s = Steps::new(Settings::default());
    s.provider.script(Fate::QuotaExceeded);
    let (job, ids) = s.start("token-limit", 3, json!({}), false).await;
    s.provider.finish_all();
    poll(&s.ctx).await.unwrap();
    let part = s.record(&job).await.parts[0].clone();
    assert!(part.batch_id.is_some(), "created again in the same poll");
    assert_eq!(part.quota_waits, 1);
    assert!(
        s.queue.drain().is_empty(),
        "nothing to collect from the failed batch"
    );
    s.run_ticks(2).await;
    let results = s.results(&job, &ids).await;
    assert_eq!(results.successes.len(), 3, "{}", results.summary);
    assert_eq!(s.provider.created(), 2);
    assert_eq!(results.summary["quota_waits"]["waits"], 1);
}

#[tokio::test]
async fn parts_still_waiting_at_the_deadline_expire_and_every_row_is_accounted_for() {
    let s = Steps::new(Settings::default());
    let spec = json!({"max_requests_per_part": 2, "deadline_hours": 1,
                      "quota": {"open_batches": 1}});
    let (job, ids) = s.start("deadline", 4, spec, false).await;
    // The first batch runs past the deadline; the second part never gets its turn.
    s.clock.advance(Duration::from_secs(2 * 3600));
    let report = poll(&s.ctx).await.unwrap();
    assert_eq!(report.parts_expired, 1);
    let late = [("Pipeline", "default"), ("Provider", "openai")];
    assert_eq!(s.metrics.total("JobsPastDeadline", &late), 1.0);
    poll(&s.ctx).await.unwrap();
    assert_eq!(
        s.metrics.total("JobsPastDeadline", &late),
        2.0,
        "every tick that finds the job still open counts it: the alarm stays on"
    );
    for outcome in s.collect_queued(false).await {
        outcome.unwrap();
    }
    s.run_ticks(1).await;
    assert_eq!(s.provider.created(), 1);
    let results = s.results(&job, &ids).await;
    let types = results.error_types();
    assert_eq!(types.len(), 2);
    assert!(types.values().all(|t| t == "expired"), "{types:?}");
    let message = results.by_id("doc-3")["error_message"].as_str().unwrap();
    assert!(message.contains("deadline_hours"), "{message}");
    assert_eq!(results.summary["quota_waits"]["given_up"], 1);
}

#[tokio::test]
async fn an_enqueued_token_limit_sizes_the_parts_and_holds_batches_back() {
    let s = Steps::new(Settings::default());
    let spec = json!({"quota": {"enqueued_tokens": 600}});
    let (job, ids) = s.start("tokens", 12, spec, false).await;
    let record = s.record(&job).await;
    assert!(record.parts.len() > 2, "{} parts", record.parts.len());
    assert!(record.parts.iter().all(|p| p.estimated_tokens <= 600));
    // By the estimate one part fits at a time.
    assert_eq!(s.provider.created(), 1);
    s.run_ticks(record.parts.len() + 1).await;
    let results = s.results(&job, &ids).await;
    assert_eq!(results.successes.len(), 12);
    assert_eq!(s.provider.created(), record.parts.len());
    // The first part's usage showed the real count far below the estimate (the memory
    // provider reports 10 prompt tokens a request): the rest ran side by side.
    let record = s.record(&job).await;
    assert!(record.token_ratio() < 0.5, "{}", record.token_ratio());
    assert!(s.provider.peak_open_batches() > 1);
}

impl Steps {
    /// Runs the submit invocations the submit queue asks for until none is left, as
    /// the submit function would; an invocation that fails is run again (the queue's
    /// redelivery). Answers how many invocations ran.
    async fn follow_handovers(&self) -> usize {
        let mut invocations = 0;
        loop {
            let messages = self.submit_queue.drain();
            if messages.is_empty() {
                return invocations;
            }
            for body in messages {
                let job_id = serde_json::from_str::<Value>(&body).unwrap()["job_id"]
                    .as_str()
                    .unwrap()
                    .to_string();
                loop {
                    invocations += 1;
                    assert!(invocations < 200, "submit never finished");
                    let snapshot = job::load(self.ctx.store.as_ref(), &job_id).await.unwrap();
                    match super::submission::resume_submit(&self.ctx, snapshot).await {
                        Ok(_) => break,
                        Err(e) => eprintln!("invocation failed, delivered again: {e}"),
                    }
                }
            }
        }
    }
}

#[tokio::test]
async fn an_upload_read_over_many_invocations_has_every_row_submitted_once() {
    for key in ["inbox/long.jsonl", "inbox/long.jsonl.gz"] {
        let mut s = Steps::new(Settings {
            // Out of time after every row: each invocation reads one and hands over.
            submit_budget: Duration::ZERO,
            ..Settings::default()
        });
        s.ctx.submit_queue = Some(s.submit_queue.clone());
        let mut lines =
            vec![json!({"spec": invoice_spec(json!({"max_requests_per_part": 3}))}).to_string()];
        let mut ids = Vec::new();
        for i in 0..12 {
            let id = format!("doc-{i}");
            lines.push(json!({"custom_id": id, "text": format!("Invoice {i}")}).to_string());
            ids.push(id);
        }
        // A line that is not JSON, and an id an earlier invocation's part holds.
        lines.insert(5, "not json".into());
        ids.push("line-6".into());
        lines.push(json!({"custom_id": "doc-1", "text": "again"}).to_string());
        ids.push("line-15".into());
        let text = lines.join("\n") + "\n";
        let body = match key.ends_with(".gz") {
            false => text.into_bytes(),
            true => {
                use std::io::Write;
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                gz.write_all(text.as_bytes()).unwrap();
                gz.finish().unwrap()
            }
        };
        s.put(key, body).await;
        let first = s.submit(key).await.unwrap();
        let SubmitOutcome::HandedOver { job_id: job, .. } = first else {
            panic!("{first:?}");
        };
        // A crash between parts: the fourth create after this fails once.
        s.provider.fail_creates_after(3, 1);
        let invocations = 1 + s.follow_handovers().await;
        assert!(invocations >= 5, "{invocations} invocations");
        let record = s.record(&job).await;
        assert_eq!(record.status, JobStatus::Open, "{:?}", record.failure);
        assert!(record.checkpoint.is_none());
        assert!(record.handovers >= 4, "{}", record.handovers);
        assert_eq!(record.requests, 14);
        assert_eq!(record.input_errors, 2);
        assert_eq!(
            s.provider.created(),
            record.parts.len(),
            "a batch per part, none twice"
        );
        assert_eq!(
            record.input.unwrap().bytes_read,
            s.ctx.store.head(key, None).await.unwrap().size
        );
        s.run_to_end(&job).await;
        let results = s.results(&job, &ids).await;
        assert_eq!(results.successes.len(), 12, "{key}");
        assert_eq!(results.error_types()["line-15"], "invalid_input");
        let repeated = results.by_id("line-15")["error_message"].as_str().unwrap();
        assert!(
            repeated.contains("duplicate custom_id \"doc-1\""),
            "{repeated}"
        );
    }
}

#[tokio::test]
async fn an_upload_of_more_than_five_gib_is_accepted() {
    let s = Steps::new(Settings {
        submit_budget: Duration::ZERO,
        ..Settings::default()
    });
    let key = "inbox/huge.jsonl";
    let body = format!(
        "{}\n{}\n",
        json!({"spec": invoice_spec(json!({}))}),
        json!({"custom_id": "a", "text": "Invoice"})
    );
    s.put(key, body).await;
    // The store says what a 6 GiB upload's head says; one invocation reads a stretch of
    // it and hands the rest over instead of refusing the file.
    let meta = crate::storage::ObjectMeta {
        size: 6 << 30,
        ..s.ctx.store.head(key, None).await.unwrap()
    };
    let outcome = super::submission::submit_object(&s.ctx, key, &meta)
        .await
        .unwrap();
    assert!(
        matches!(outcome, SubmitOutcome::HandedOver { lines_read: 2, .. }),
        "{outcome:?}"
    );
    let record = s.record(&s.job_of(key).await).await;
    assert_eq!(record.status, JobStatus::Submitting);
    assert_eq!(
        record.checkpoint.unwrap().offset,
        s.ctx.store.head(key, None).await.unwrap().size
    );
}

// ---------------------------------------------------------------- poll's fan-out

/// A memory queue that counts the calls made to it.
#[derive(Debug, Default)]
struct CountingQueue {
    inner: MemoryQueue,
    calls: std::sync::atomic::AtomicUsize,
}

impl CountingQueue {
    fn calls(&self) -> usize {
        self.calls.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[async_trait]
impl crate::queue::Queue for CountingQueue {
    async fn send(&self, body: String) -> Result<(), crate::queue::QueueError> {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.send(body).await
    }

    async fn send_batch(&self, bodies: Vec<String>) -> Result<(), crate::queue::QueueError> {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.send_batch(bodies).await
    }
}

/// A store that names every call made to it, over another.
#[derive(Debug)]
struct CountingStore {
    inner: Arc<dyn crate::storage::ObjectStore>,
    calls: std::sync::Mutex<Vec<&'static str>>,
}

impl CountingStore {
    fn note(&self, call: &'static str) {
        self.calls.lock().unwrap().push(call);
    }
}

#[async_trait]
impl crate::storage::ObjectStore for CountingStore {
    async fn head(
        &self,
        key: &str,
        version: Option<&str>,
    ) -> crate::storage::StoreResult<crate::storage::ObjectMeta> {
        self.note("head");
        self.inner.head(key, version).await
    }
    async fn get(
        &self,
        key: &str,
    ) -> crate::storage::StoreResult<(crate::storage::ObjectMeta, Bytes)> {
        self.note("get");
        self.inner.get(key).await
    }
    async fn get_stream(
        &self,
        key: &str,
        version: Option<&str>,
        from: u64,
    ) -> crate::storage::StoreResult<crate::storage::ByteStream> {
        self.note("get_stream");
        self.inner.get_stream(key, version, from).await
    }
    async fn put(
        &self,
        key: &str,
        body: Bytes,
        mode: PutMode,
    ) -> crate::storage::StoreResult<String> {
        self.note("put");
        self.inner.put(key, body, mode).await
    }
    async fn delete(&self, key: &str) -> crate::storage::StoreResult<()> {
        self.note("delete");
        self.inner.delete(key).await
    }
    async fn list(&self, prefix: &str) -> crate::storage::StoreResult<Vec<String>> {
        self.note("list");
        self.inner.list(prefix).await
    }
    async fn start_upload(&self, key: &str) -> crate::storage::StoreResult<String> {
        self.note("start_upload");
        self.inner.start_upload(key).await
    }
    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> crate::storage::StoreResult<String> {
        self.note("upload_part");
        self.inner.upload_part(key, upload_id, number, body).await
    }
    async fn complete_upload(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<(i32, String)>,
    ) -> crate::storage::StoreResult<()> {
        self.note("complete_upload");
        self.inner.complete_upload(key, upload_id, parts).await
    }
    async fn abort_upload(&self, key: &str, upload_id: &str) -> crate::storage::StoreResult<()> {
        self.note("abort_upload");
        self.inner.abort_upload(key, upload_id).await
    }
}

/// Providers a poll tick must never ask for: it only fans out.
#[derive(Debug)]
struct NoProviders;

#[async_trait]
impl ProviderSource for NoProviders {
    async fn provider(&self, kind: ProviderKind) -> crate::Result<Arc<dyn BatchProvider>> {
        panic!("the fanned-out tick asked for the {kind:?} provider");
    }
}

impl Steps {
    /// Starts `n` jobs of `rows` requests each; answers their ids and rows.
    async fn start_many(&self, n: usize, rows: usize) -> Vec<(String, Vec<String>)> {
        let mut jobs = Vec::new();
        for i in 0..n {
            jobs.push(
                self.start(&format!("many-{i}"), rows, json!({}), false)
                    .await,
            );
        }
        jobs
    }

    /// The jobs named by the fan-out messages sent since the last call.
    fn fanned_out_jobs(&self) -> Vec<String> {
        self.poll_jobs
            .inner
            .drain()
            .iter()
            .map(|body| JobMessage::parse(body).unwrap().job_id)
            .collect()
    }

    /// Runs poll's workers on the pending fan-out messages, ten a delivery as the
    /// template's event source hands them over.
    async fn run_workers(&self) -> Vec<ListedPoll> {
        let mut outcomes = Vec::new();
        for delivery in self.fanned_out_jobs().chunks(10) {
            outcomes.push(poll_listed(&self.ctx, delivery).await);
        }
        outcomes
    }

    /// Ticks (fanning out), ends the batches, ticks again, runs the workers each time
    /// and collects, until every open job is closed; answers the workers' outcomes.
    async fn run_fanned_out_to_end(&self) -> Vec<ListedPoll> {
        let mut outcomes = Vec::new();
        for _ in 0..10 {
            if self.ctx.store.list(keys::OPEN).await.unwrap().is_empty() {
                return outcomes;
            }
            self.clock.advance(Duration::from_secs(600));
            for _ in 0..2 {
                let report = poll(&self.ctx).await.unwrap();
                assert_eq!(report.parts_checked, 0, "the tick fanned out: {report:?}");
                outcomes.extend(self.run_workers().await);
                self.provider.finish_all();
            }
            for outcome in self.collect_queued(false).await {
                outcome.unwrap();
            }
        }
        panic!(
            "jobs still open: {:?}",
            self.ctx.store.list(keys::OPEN).await
        );
    }
}

#[tokio::test]
async fn a_tick_over_the_inline_limit_sends_one_message_per_open_job_and_nothing_else() {
    let s = Steps::new(Settings::default()).fanned_out();
    let inline = s.ctx.settings.poll_inline_jobs;
    let mut jobs = s.start_many(inline, 1).await;
    // Up to the limit the tick still polls every job itself.
    let report = poll(&s.ctx).await.unwrap();
    assert_eq!((report.jobs_fanned_out, report.parts_checked), (0, inline));
    assert_eq!(s.poll_jobs.calls(), 0);

    jobs.extend(s.start_many(50 - inline, 1).await);
    let store = Arc::new(CountingStore {
        inner: s.ctx.store.clone(),
        calls: std::sync::Mutex::default(),
    });
    let tick = Context {
        store: store.clone(),
        providers: Arc::new(NoProviders),
        ..s.ctx.clone()
    };
    let report = poll(&tick).await.unwrap();
    assert_eq!((report.open_jobs, report.jobs_fanned_out), (50, 50));
    assert_eq!(
        *store.calls.lock().unwrap(),
        ["list"],
        "one list, no record read"
    );
    assert_eq!(s.poll_jobs.calls(), 1, "one batch send for every job");
    let mut sent = s.fanned_out_jobs();
    sent.sort();
    let mut open: Vec<String> = jobs.iter().map(|(job, _)| job.clone()).collect();
    open.sort();
    assert_eq!(sent, open, "exactly one message per open job");
    assert!(s.queue.drain().is_empty(), "nothing queued for collect");
}

#[tokio::test]
async fn poll_workers_move_every_fanned_out_job_to_its_end() {
    let s = Steps::new(Settings {
        poll_inline_jobs: 0,
        ..Settings::default()
    })
    .fanned_out();
    let jobs = s.start_many(25, 3).await;
    let outcomes = s.run_fanned_out_to_end().await;
    assert!(outcomes.iter().all(|o| o.unpolled.is_empty()));
    let queued: usize = outcomes.iter().map(|o| o.report.parts_queued).sum();
    assert_eq!(queued, 25, "each job's one part queued once");
    for (job, ids) in &jobs {
        assert_eq!(s.record(job).await.status, JobStatus::Completed);
        assert_eq!(s.results(job, ids).await.successes.len(), 3);
    }
    assert_eq!(s.provider.created(), 25, "no batch created twice");
}

#[tokio::test]
async fn a_worker_starts_its_jobs_waiting_parts_and_skips_a_closed_job() {
    let s = Steps::new(Settings {
        poll_inline_jobs: 0,
        quotas: crate::quota::QuotaTable::parse(r#"{"openai": {"open_batches": 1}}"#).unwrap(),
        ..Settings::default()
    })
    .fanned_out();
    let (first, first_ids) = s.start("first", 2, json!({}), false).await;
    let (second, second_ids) = s.start("second", 2, json!({}), false).await;
    assert!(s.record(&second).await.parts[0].waiting_since.is_some());
    s.provider.finish_all();
    poll(&s.ctx).await.unwrap();
    assert_eq!(s.fanned_out_jobs().len(), 2);

    // The first job waits for nothing: its worker neither reads other jobs nor starts.
    let polled = poll_listed(&s.ctx, std::slice::from_ref(&first)).await;
    assert_eq!(
        (polled.report.parts_queued, polled.report.parts_started),
        (1, 0)
    );
    assert_eq!(s.provider.created(), 1);
    // The second job's worker counts what runs for every open job, and its part fits now.
    let polled = poll_listed(&s.ctx, std::slice::from_ref(&second)).await;
    assert_eq!(polled.report.parts_started, 1, "{:?}", polled.report);
    assert_eq!(s.provider.created(), 2);
    assert!(s.record(&second).await.parts[0].batch_id.is_some());

    s.run_fanned_out_to_end().await;
    for (job, ids) in [(&first, &first_ids), (&second, &second_ids)] {
        assert_eq!(s.results(job, ids).await.successes.len(), 2);
    }
    assert_eq!(s.provider.peak_open_batches(), 1);

    // A message for a job closed meanwhile changes nothing.
    let before = job::load(s.ctx.store.as_ref(), &first).await.unwrap();
    let polled = poll_listed(&s.ctx, std::slice::from_ref(&first)).await;
    assert!(polled.unpolled.is_empty());
    assert_eq!(polled.report.parts_checked + polled.report.parts_queued, 0);
    let after = job::load(s.ctx.store.as_ref(), &first).await.unwrap();
    assert_eq!(before.etag, after.etag);
    assert!(s.queue.drain().is_empty());
    assert_eq!(s.provider.created(), 2);
}

#[cfg(feature = "aws")]
#[tokio::test]
async fn the_poll_function_tells_a_worker_delivery_from_a_tick_and_fails_only_bad_messages() {
    use super::events::{PollResponse, handle_poll_payload};
    let s = Steps::new(Settings::default()).fanned_out();
    let (job, _) = s.start("one", 1, json!({}), false).await;
    let record = |id: &str, body: String| json!({"messageId": id, "body": body});
    let event = json!({"Records": [
        record("good", json!({"job_id": job}).to_string()),
        record("garbage", "not json".into()),
        record("unknown", json!({"job_id": "no-such-job"}).to_string()),
    ]});
    let PollResponse::Worker(response) = handle_poll_payload(&s.ctx, event).await.unwrap() else {
        panic!("an SQS event is a worker delivery");
    };
    let failed: Vec<&str> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    assert_eq!(failed, ["garbage", "unknown"]);
    let schedule = json!({"detail-type": "Scheduled Event", "source": "aws.events", "detail": {}});
    let PollResponse::Tick(report) = handle_poll_payload(&s.ctx, schedule).await.unwrap() else {
        panic!("a schedule event is a tick");
    };
    assert_eq!((report.open_jobs, report.jobs_fanned_out), (1, 0));
}

/// Requests the cancellation of `job` as the operator's CLI does: store and clock only.
async fn cancel(s: &Steps, job: &str) -> Result<CancelRequest, PipelineError> {
    request_cancel(s.ctx.store.as_ref(), s.ctx.clock.as_ref(), job).await
}

#[tokio::test]
async fn cancelling_an_open_job_cancels_its_batches_and_accounts_for_every_row() {
    let s = Steps::new(Settings::default());
    // Two requests of the first batch ran before the cancel reached it; none of the second.
    s.provider.script(Fate::Cancel { ran: 2 });
    let (job, ids) = s
        .start("cancel-open", 6, json!({"max_requests_per_part": 3}), false)
        .await;
    assert_eq!(s.provider.created(), 2);
    let CancelRequest::Requested { requested_at } = cancel(&s, &job).await.unwrap() else {
        panic!("a first request is recorded");
    };
    assert_eq!(
        cancel(&s, &job).await.unwrap(),
        CancelRequest::AlreadyRequested {
            requested_at: requested_at.clone()
        }
    );
    let record = s.run_to_end(&job).await;
    assert_eq!(record.status, JobStatus::Cancelled);
    assert_eq!(record.cancel_requested_at.as_deref(), Some(&*requested_at));
    assert_eq!(s.provider.cancels(), 2, "one cancel per running batch");
    assert_eq!(s.provider.created(), 2, "nothing created after the request");
    let results = s.results(&job, &ids).await;
    assert_eq!(succeeded_ids(&results), ["doc-0", "doc-1"]);
    let types = results.error_types();
    assert_eq!(types.len(), 4);
    assert!(types.values().all(|t| t == "cancelled"), "{types:?}");
    assert_eq!(results.summary["status"], "cancelled");
    assert_eq!(results.summary["cancel_requested_at"], requested_at);
    // Closed: a later request changes nothing, and nothing asks the provider again.
    let before = s
        .ctx
        .store
        .head(&keys::job_record(&job), None)
        .await
        .unwrap();
    assert_eq!(
        cancel(&s, &job).await.unwrap(),
        CancelRequest::AlreadyClosed {
            status: JobStatus::Cancelled
        }
    );
    let after = s
        .ctx
        .store
        .head(&keys::job_record(&job), None)
        .await
        .unwrap();
    assert_eq!(before.etag, after.etag);
    poll(&s.ctx).await.unwrap();
    assert_eq!(s.provider.cancels(), 2);
}

#[tokio::test]
async fn a_part_waiting_for_quota_is_never_created_once_its_job_is_cancelled() {
    let s = Steps::new(Settings::default());
    s.provider.script(Fate::Cancel { ran: 1 });
    let spec = json!({"max_requests_per_part": 2, "quota": {"open_batches": 1}});
    let (job, ids) = s.start("cancel-waiting", 4, spec, false).await;
    assert!(s.record(&job).await.parts[1].waiting_since.is_some());
    cancel(&s, &job).await.unwrap();
    let record = s.run_to_end(&job).await;
    assert_eq!(record.status, JobStatus::Cancelled);
    assert_eq!(
        s.provider.created(),
        1,
        "the waiting part never got a batch"
    );
    assert_eq!(record.parts[1].given_up_for, job::GiveUp::Cancel);
    let results = s.results(&job, &ids).await;
    assert_eq!(succeeded_ids(&results), ["doc-0"]);
    let types = results.error_types();
    assert!(types.values().all(|t| t == "cancelled"), "{types:?}");
    let message = results.by_id("doc-3")["error_message"].as_str().unwrap();
    assert!(message.contains("waited for quota"), "{message}");
    assert_eq!(results.summary["quota_waits"]["given_up"], 1);
}

/// A provider whose first create comes with a cancellation request for `job`, as
/// an operator's CLI would make it while submit runs.
#[derive(Debug)]
struct CancelDuringCreate {
    inner: Arc<MemoryProvider>,
    store: Arc<dyn crate::storage::ObjectStore>,
    clock: Arc<dyn Clock>,
    job: String,
    requested: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl BatchProvider for CancelDuringCreate {
    fn kind(&self) -> ProviderKind {
        self.inner.kind()
    }
    async fn create(
        &self,
        model: &str,
        input: Bytes,
        tags: &crate::provider::BatchTags,
    ) -> crate::Result<crate::status::BatchStatus> {
        let created = self.inner.create(model, input, tags).await;
        if !self
            .requested
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            let request = request_cancel(self.store.as_ref(), self.clock.as_ref(), &self.job);
            assert!(matches!(
                request.await.unwrap(),
                CancelRequest::Requested { .. }
            ));
        }
        created
    }
    async fn status(&self, batch_id: &str) -> crate::Result<crate::status::BatchStatus> {
        self.inner.status(batch_id).await
    }
    async fn cancel(&self, batch_id: &str) -> crate::Result<crate::status::BatchStatus> {
        self.inner.cancel(batch_id).await
    }
    async fn list(&self) -> crate::Result<Vec<crate::status::BatchStatus>> {
        self.inner.list().await
    }
    async fn results(&self, batch_id: &str) -> crate::Result<crate::provider::LineStream> {
        self.inner.results(batch_id).await
    }
}

#[derive(Debug)]
struct Source(Arc<CancelDuringCreate>);

#[async_trait]
impl ProviderSource for Source {
    async fn provider(&self, _kind: ProviderKind) -> crate::Result<Arc<dyn BatchProvider>> {
        Ok(self.0.clone())
    }
}

#[tokio::test]
async fn a_submit_under_way_reads_every_row_but_sends_no_part_after_the_cancellation() {
    let mut s = Steps::new(Settings::default());
    s.provider.script(Fate::Cancel { ran: 1 });
    let (key, ids) = s
        .upload(
            "cancel-submit",
            6,
            json!({"max_requests_per_part": 2}),
            true,
        )
        .await;
    let job = s.job_of(&key).await;
    s.ctx.providers = Arc::new(Source(Arc::new(CancelDuringCreate {
        inner: s.provider.clone(),
        store: s.ctx.store.clone(),
        clock: s.ctx.clock.clone(),
        job: job.clone(),
        requested: false.into(),
    })));
    // The request lands while the first part's batch is created: the submit's next
    // write takes it in instead of failing, and the parts after it are not sent.
    let outcome = s.submit(&key).await.unwrap();
    assert!(
        matches!(outcome, SubmitOutcome::Submitted { parts: 3, .. }),
        "{outcome:?}"
    );
    let record = s.record(&job).await;
    assert_eq!(record.status, JobStatus::Open);
    assert!(record.cancel_requested_at.is_some());
    assert_eq!(s.provider.created(), 1);
    let record = s.run_to_end(&job).await;
    assert_eq!(record.status, JobStatus::Cancelled);
    assert_eq!(
        s.provider.created(),
        1,
        "no part after the request was sent"
    );
    assert_eq!(s.provider.cancels(), 1);
    let results = s.results(&job, &ids).await;
    assert_eq!(succeeded_ids(&results), ["doc-0"]);
    let types = results.error_types();
    assert_eq!(types["line-8"], "invalid_input", "{types:?}");
    assert_eq!(types.values().filter(|t| *t == "cancelled").count(), 5);
    let message = results.by_id("doc-5")["error_message"].as_str().unwrap();
    assert!(message.contains("before this part was sent"), "{message}");
}

#[tokio::test]
async fn after_a_cancellation_temporary_failures_are_final_and_an_ended_batch_is_tolerated() {
    let s = Steps::new(Settings::default());
    s.provider
        .script(Fate::RateLimited(vec!["doc-1".to_string()]));
    let (job, ids) = s.start("cancel-ended", 3, json!({}), false).await;
    // The batch ends before poll gets to cancel it.
    s.provider.finish_all();
    cancel(&s, &job).await.unwrap();
    let record = s.run_to_end(&job).await;
    assert_eq!(record.status, JobStatus::Cancelled);
    assert_eq!(s.provider.created(), 1, "no retry part");
    let results = s.results(&job, &ids).await;
    assert_eq!(results.successes.len(), 2);
    assert_eq!(results.error_types()["doc-1"], "rate_limit_exceeded");
}

#[tokio::test]
async fn a_closed_or_unknown_job_cannot_be_cancelled() {
    let s = Steps::new(Settings::default());
    let (job, _) = s.start("done", 2, json!({}), false).await;
    assert_eq!(s.run_to_end(&job).await.status, JobStatus::Completed);
    let (before, _) = s.ctx.store.get(&keys::job_record(&job)).await.unwrap();
    assert_eq!(
        cancel(&s, &job).await.unwrap(),
        CancelRequest::AlreadyClosed {
            status: JobStatus::Completed
        }
    );
    let (after, _) = s.ctx.store.get(&keys::job_record(&job)).await.unwrap();
    assert_eq!(before.etag, after.etag, "nothing written");
    assert!(matches!(
        cancel(&s, "no-such-job").await,
        Err(PipelineError::UnknownJob { job }) if job == "no-such-job"
    ));
}

#[tokio::test]
async fn a_cancel_call_that_failed_is_made_again_next_tick_without_holding_the_others_back() {
    let s = Steps::new(Settings::default());
    let (job, ids) = s
        .start(
            "cancel-retry",
            4,
            json!({"max_requests_per_part": 2}),
            false,
        )
        .await;
    s.provider.fail_cancels(1);
    cancel(&s, &job).await.unwrap();
    poll(&s.ctx).await.unwrap();
    let record = s.record(&job).await;
    assert_eq!(s.provider.cancels(), 2);
    assert!(record.parts[0].cancel_sent_at.is_none());
    let noted = record.last_error.as_deref().unwrap_or_default();
    assert!(
        noted.contains("part 0: cancelling batch batch_0 failed"),
        "{noted}"
    );
    assert!(
        record.parts[1].cancel_sent_at.is_some(),
        "the other part was cancelled"
    );
    let collected = s.collect_queued(false).await;
    assert_eq!(collected.len(), 1, "the cancelled batch is queued");
    poll(&s.ctx).await.unwrap();
    assert_eq!(s.provider.cancels(), 3, "asked again on the next tick");
    assert_eq!(s.run_to_end(&job).await.status, JobStatus::Cancelled);
    assert_eq!(s.provider.cancels(), 3);
    let results = s.results(&job, &ids).await;
    assert!(results.successes.is_empty());
    assert!(results.error_types().values().all(|t| t == "cancelled"));
}
