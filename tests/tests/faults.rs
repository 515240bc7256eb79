//! Faults survived, end to end against moto and the provider emulator: a crash after
//! every side effect of every step, provider faults during submit, poll and collect,
//! S3/SQS unreachable for a while, concurrent deliveries, and automatic retries.
//! Every scenario ends with the invariant (each request exactly once in the results)
//! and a count of the provider batches it created.

mod support;

use std::time::{Duration, Instant};

use batchline::model::ProviderKind;
use batchline::pipeline::collect::{CollectOutcome, ReadyMessage, collect};
use batchline::pipeline::job::JobStatus;
use batchline::pipeline::{PipelineError, poll, submit};
use batchline_emulator::{BatchFate, FaultPlan, HttpFault};
use serde_json::{Value, json};
use support::crash::{CrashPoint, Crasher, Op, signal};
use support::options::{HarnessOptions, LEASE_PASSES, no_wait_settings, quick_settings};
use support::report::{BatchCount, Category};
use support::{Harness, JobResults, header, job_file};

const RATE_LIMITED: &str = "Invoice [[fault:rate_limit]]";

/// Header, `good` requests `doc-…`, one request the provider always rate-limits
/// (`rl`: retried, then final) and one line that is not JSON; `per_part` requests a part.
fn mixed_job(kind: ProviderKind, good: usize, per_part: usize) -> (String, Vec<String>) {
    let mut lines = vec![header(kind, json!({"max_requests_per_part": per_part}))];
    let mut ids = Vec::new();
    for i in 0..good {
        let id = format!("doc-{i}");
        lines.push(json!({"custom_id": id, "text": format!("Invoice {i} from ACME")}).to_string());
        ids.push(id);
    }
    lines.push(json!({"custom_id": "rl", "text": RATE_LIMITED}).to_string());
    ids.push("rl".into());
    lines.push("this line is not JSON".into());
    ids.push(format!("line-{}", lines.len()));
    (lines.join("\n") + "\n", ids)
}

fn error_of<'a>(results: &'a JobResults, id: &str) -> &'a Value {
    results
        .errors
        .iter()
        .find(|e| e["custom_id"] == id)
        .unwrap_or_else(|| panic!("no error for {id}: {:?}", results.errors))
}

fn success_of<'a>(results: &'a JobResults, id: &str) -> &'a Value {
    results
        .successes
        .iter()
        .find(|e| e["custom_id"] == id)
        .unwrap_or_else(|| panic!("no success for {id}: {:?}", results.errors))
}

// ---------------------------------------------------------------------------------
// Crashes: between every pair of side effects of submit, poll and collect.
// ---------------------------------------------------------------------------------

/// Runs one job while logging every side effect, then for each of them a fresh job
/// that "dies" right after it; the same S3 event and the usual schedule and queue
/// then run it again and must converge: every request exactly once, and no provider
/// batch beyond the parts the record holds (Anthropic: see `KNOWN LIMITATION`).
async fn crash_after_every_side_effect(kind: ProviderKind) {
    let h = Harness::start_with(HarnessOptions {
        settings: no_wait_settings(),
        ..HarnessOptions::default()
    })
    .await;
    h.emulator.finish_all(true);
    let (body, expected) = mixed_job(kind, 4, 3);

    let dry = Crasher::new(CrashPoint::Never);
    let key = format!("inbox/{kind}/crash-dry.jsonl");
    let version = h.upload(&key, body.clone()).await;
    let before = h.provider_batches(kind).await;
    h.drive(&dry.context(&h.ctx), &dry, &key, &version).await;
    let job = h.submit_version(&key, &version).await;
    let record = h.record(&job).await;
    assert_eq!(record.status, JobStatus::Completed, "{kind}: {record:?}");
    assert_eq!(
        record.parts.len(),
        3,
        "{kind}: two parts and one retry part"
    );
    h.assert_invariant(&job, &expected).await;
    assert_eq!(h.provider_batches(kind).await - before, 3, "{kind}");
    let effects = dry.effects();
    for op in [Op::Put, Op::Create, Op::Send, Op::Delete] {
        assert!(
            effects.iter().any(|e| e.op == op),
            "{kind}: no {op:?} in {effects:?}"
        );
    }

    for (i, planned) in effects.iter().enumerate() {
        let key = format!("inbox/{kind}/crash-{i:02}.jsonl");
        let version = h.upload(&key, body.clone()).await;
        let before = h.provider_batches(kind).await;
        let crasher = Crasher::new(CrashPoint::AfterEffect(i + 1));
        h.drive(&crasher.context(&h.ctx), &crasher, &key, &version)
            .await;
        assert!(
            crasher.crashed(),
            "{kind}: never got to effect {i}: {planned}"
        );
        // Parts may be collected in another order than in the dry run: what this run
        // did last is what matters.
        let effect = crasher
            .effects()
            .last()
            .cloned()
            .expect("the effect it died after");
        // The rerun: the same S3 event again, then poll and collect as scheduled.
        let job = h.submit_version(&key, &version).await;
        let record = h.run_to_close(&job).await;
        // KNOWN LIMITATION: Anthropic batches carry no tags, so a batch accepted just
        // before the crash cannot be found again and its part is submitted once more.
        let known_extra = u64::from(kind == ProviderKind::Anthropic && effect.op == Op::Create);
        let results = h
            .check_scenario(
                Category::Fault,
                &format!("{kind}: crash after side effect {i} ({effect})"),
                &job,
                &expected,
                BatchCount {
                    created: (h.provider_batches(kind).await - before) as u64,
                    needed: record.parts.len() as u64,
                    known_extra,
                },
            )
            .await;
        assert_eq!(record.parts.len(), 3, "{kind} after {effect}");
        assert_eq!(results.successes.len(), 4, "{kind} after {effect}");
        assert_eq!(
            error_of(&results, "rl")["attempts"],
            2,
            "{kind} after {effect}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_survives_a_crash_after_every_side_effect() {
    crash_after_every_side_effect(ProviderKind::OpenAi).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_survives_a_crash_after_every_side_effect() {
    crash_after_every_side_effect(ProviderKind::Anthropic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vertex_survives_a_crash_after_every_side_effect() {
    crash_after_every_side_effect(ProviderKind::Vertex).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_survives_a_crash_after_every_side_effect() {
    crash_after_every_side_effect(ProviderKind::Gemini).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bedrock_survives_a_crash_after_every_side_effect() {
    crash_after_every_side_effect(ProviderKind::Bedrock).await;
}

/// The lease: a rerun while the crashed submit could still be alive does nothing;
/// after the lease the rerun (or poll, if no event comes) finds the batch by its tags.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_that_died_after_the_provider_accepted_is_resumed_after_its_lease() {
    let h = Harness::start_with(HarnessOptions {
        settings: quick_settings(),
        ..HarnessOptions::default()
    })
    .await;
    for kind in ProviderKind::ALL {
        for resume_by_poll in [false, true] {
            let (body, expected) = job_file(kind, 3, &[]);
            let key = format!("inbox/{kind}/lease-{resume_by_poll}.jsonl");
            let version = h.upload(&key, body).await;
            let before = h.provider_batches(kind).await;
            let crasher = Crasher::new(CrashPoint::AtCall(Op::Put, 5));
            let cctx = crasher.context(&h.ctx);
            // Puts: record, open marker, manifest, batch input, then the record with the
            // batch id.
            let crashed =
                batchline::pipeline::events::handle_s3_event(&cctx, h.s3_event(&key, &version))
                    .await;
            assert!(crashed.is_err(), "{kind}: the crash fails the invocation");
            assert_eq!(h.provider_batches(kind).await, before + 1, "{kind}");
            let outcome = submit::submit(
                &h.ctx,
                &submit::UploadedObject {
                    key: key.clone(),
                    version_id: Some(version.clone()),
                },
            )
            .await
            .expect("rerun");
            assert!(
                matches!(outcome, submit::SubmitOutcome::InProgress { .. }),
                "{kind}: {outcome:?}"
            );
            let job = match &outcome {
                submit::SubmitOutcome::InProgress { job_id } => job_id.clone(),
                _ => unreachable!("checked above"),
            };
            assert_eq!(h.record(&job).await.status, JobStatus::Submitting);
            tokio::time::sleep(LEASE_PASSES).await;
            if resume_by_poll {
                // Lambda's retries all came within the lease: the schedule resumes it.
                poll(&h.ctx).await.expect("poll");
            } else {
                h.submit_version(&key, &version).await;
            }
            let record = h.run_to_close(&job).await;
            let known_extra = u64::from(kind == ProviderKind::Anthropic);
            h.check_scenario(
                Category::Fault,
                &format!(
                    "{kind}: submit died after create, resumed by {}",
                    if resume_by_poll { "poll" } else { "the event" }
                ),
                &job,
                &expected,
                BatchCount {
                    created: (h.provider_batches(kind).await - before) as u64,
                    needed: record.parts.len() as u64,
                    known_extra,
                },
            )
            .await;
        }
    }
}

/// The providers whose wire these faults are injected into: their results come over
/// their own HTTP API, and their clients honour `Retry-After`. Bedrock's output is read
/// from S3 and its control plane retries through the AWS SDK (its own backoff); its
/// storms, exhausted retries, expiry, cancel and validation failures are covered in
/// `providers.rs`.
const FAULT_PROVIDERS: [ProviderKind; 4] = [
    ProviderKind::OpenAi,
    ProviderKind::Anthropic,
    ProviderKind::Vertex,
    ProviderKind::Gemini,
];

// ---------------------------------------------------------------------------------
// Provider faults.
// ---------------------------------------------------------------------------------

/// The path prefix of the call that creates a batch (or uploads its input first).
fn create_path(kind: ProviderKind) -> &'static str {
    match kind {
        ProviderKind::OpenAi => "/v1/batches",
        ProviderKind::Anthropic => "/v1/messages/batches",
        ProviderKind::Vertex => "/v1/projects",
        ProviderKind::Gemini => "/v1beta/models",
        ProviderKind::Bedrock => "/model-invocation-job",
    }
}

/// The path prefix of status calls.
fn status_path(kind: ProviderKind) -> &'static str {
    match kind {
        ProviderKind::OpenAi => "/v1/batches/",
        ProviderKind::Anthropic => "/v1/messages/batches/",
        ProviderKind::Vertex => "/v1/projects",
        ProviderKind::Gemini => "/v1beta/batches/",
        ProviderKind::Bedrock => "/model-invocation-job/",
    }
}

fn http_fault(method: &str, path: &str, status: u16, times: u32) -> HttpFault {
    HttpFault {
        method: Some(method.into()),
        path_prefix: path.into(),
        status,
        retry_after_s: None,
        times,
        delay_ms: 0,
    }
}

/// Submits, runs to the end and checks the scenario: one batch a part.
/// Submits `n` requests of `kind` with the next batch's fate set by `fate`; returns
/// the job, its ids and how many provider batches existed before.
async fn submit_with_fate(
    h: &Harness,
    kind: ProviderKind,
    fate: FaultPlan,
    n: usize,
    file: &str,
) -> (String, Vec<String>, usize) {
    h.emulator.set_faults(fate);
    let (body, expected) = job_file(kind, n, &[]);
    let before = h.provider_batches(kind).await;
    let job = h.submit(&format!("inbox/{kind}/{file}"), body).await;
    (job, expected, before)
}

async fn run_and_check(
    h: &Harness,
    kind: ProviderKind,
    scenario: &str,
    job: &str,
    expected: &[String],
    before: usize,
) -> JobResults {
    let record = h.run_to_close(job).await;
    h.check_scenario(
        Category::Fault,
        &format!("{kind}: {scenario}"),
        job,
        expected,
        BatchCount::exact(h.provider_batches(kind).await - before, record.parts.len()),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_storm_with_retry_after_is_waited_out_during_submit_and_poll() {
    let h = Harness::start_with(HarnessOptions {
        settings: quick_settings(),
        ..HarnessOptions::default()
    })
    .await;
    for kind in FAULT_PROVIDERS {
        let mut storm = http_fault("POST", create_path(kind), 429, 2);
        storm.retry_after_s = Some(1);
        let mut status_storm = http_fault("GET", status_path(kind), 429, 2);
        status_storm.retry_after_s = Some(1);
        h.emulator.set_faults(FaultPlan {
            http: vec![storm, status_storm],
            ..FaultPlan::default()
        });
        let (body, expected) = job_file(kind, 4, &[]);
        let before = h.provider_batches(kind).await;
        let started = Instant::now();
        let job = h.submit(&format!("inbox/{kind}/storm.jsonl"), body).await;
        assert!(
            started.elapsed() >= Duration::from_secs(2),
            "{kind}: Retry-After was not honoured ({:?})",
            started.elapsed()
        );
        run_and_check(
            &h,
            kind,
            "429 storm with Retry-After on create and status",
            &job,
            &expected,
            before,
        )
        .await;
        h.emulator.set_faults(FaultPlan::default());
    }
}

/// More 500s than the client retries: the step fails (Lambda retries it), the record
/// stays consistent, and the rerun converges without a second batch. More 429s than
/// the retries are a quota refusal: the part waits and poll creates it later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_beyond_the_client_retries_fail_the_step_and_the_rerun_converges() {
    let h = Harness::start_with(HarnessOptions {
        settings: quick_settings(),
        ..HarnessOptions::default()
    })
    .await;
    for kind in FAULT_PROVIDERS {
        for status in [429, 500, 503] {
            h.emulator.set_faults(FaultPlan {
                http: vec![http_fault("POST", create_path(kind), status, 50)],
                ..FaultPlan::default()
            });
            let (body, expected) = job_file(kind, 3, &[]);
            let key = format!("inbox/{kind}/refused-{status}.jsonl");
            let version = h.upload(&key, body).await;
            let before = h.provider_batches(kind).await;
            let submitted =
                batchline::pipeline::events::handle_s3_event(&h.ctx, h.s3_event(&key, &version))
                    .await;
            let job = batchline::pipeline::job::SourceObject {
                bucket: support::BUCKET.into(),
                key: key.clone(),
                etag: String::new(),
                version_id: Some(version.clone()),
            }
            .job_id();
            if status == 429 {
                submitted.expect("a quota refusal is not a failure of the step");
                let record = h.record(&job).await;
                assert_eq!(record.status, JobStatus::Open, "{kind}");
                let part = &record.parts[0];
                assert!(
                    part.batch_id.is_none() && part.waiting_since.is_some(),
                    "{kind}"
                );
                let why = part.batch_error.clone().unwrap_or_default();
                assert!(why.contains("429"), "{kind}: {why}");
                h.emulator.set_faults(FaultPlan::default());
                run_and_check(
                    &h,
                    kind,
                    "429 beyond the retries on create",
                    &job,
                    &expected,
                    before,
                )
                .await;
                continue;
            }
            let err = submitted.expect_err("the submit must fail so that Lambda retries it");
            assert!(
                err.to_string().contains(&status.to_string()),
                "{kind}: {err}"
            );
            let record = h.record(&job).await;
            assert_eq!(record.status, JobStatus::Submitting, "{kind}");
            assert!(record.parts.iter().all(|p| p.batch_id.is_some()), "{kind}");
            // The failed submit gave its lease back and says why it waits, so that
            // Lambda's own retry (a minute later, long before a lease would pass)
            // resumes the job at once.
            assert_eq!(record.submit_lease_until, None, "{kind}");
            let noted = record.last_error.clone().unwrap_or_default();
            assert!(noted.contains(&status.to_string()), "{kind}: {noted}");
            h.emulator.set_faults(FaultPlan::default());
            let outcomes =
                batchline::pipeline::events::handle_s3_event(&h.ctx, h.s3_event(&key, &version))
                    .await
                    .expect("the retried event resumes the submit");
            assert!(
                matches!(
                    outcomes.as_slice(),
                    [submit::SubmitOutcome::Submitted { .. }]
                ),
                "{kind}: {outcomes:?}"
            );
            run_and_check(
                &h,
                kind,
                &format!("HTTP {status} beyond the retries on create"),
                &job,
                &expected,
                before,
            )
            .await;
        }
        // Status calls failing beyond the retries: that poll reports the job failed,
        // the next one goes on.
        let (body, expected) = job_file(kind, 3, &[]);
        let before = h.provider_batches(kind).await;
        let job = h
            .submit(&format!("inbox/{kind}/status-500.jsonl"), body)
            .await;
        h.emulator.set_faults(FaultPlan {
            http: vec![http_fault("GET", status_path(kind), 500, 50)],
            ..FaultPlan::default()
        });
        let report = poll(&h.ctx).await.expect("poll itself succeeds");
        assert_eq!(report.failed_jobs, vec![job.clone()], "{kind}");
        let noted = h.record(&job).await.parts[0].poll_error.clone();
        assert!(
            noted.as_deref().is_some_and(|e| e.contains("500")),
            "{kind}: the job record says why it waits: {noted:?}"
        );
        h.emulator.set_faults(FaultPlan::default());
        run_and_check(
            &h,
            kind,
            "HTTP 500 beyond the retries on status",
            &job,
            &expected,
            before,
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_answers_time_out_and_are_retried_or_resumed() {
    let h = Harness::start_with(HarnessOptions {
        settings: quick_settings(),
        provider_read_timeout: Some(Duration::from_millis(300)),
        ..HarnessOptions::default()
    })
    .await;
    for kind in FAULT_PROVIDERS {
        // A slow status answer: reads are sent again.
        let (body, expected) = job_file(kind, 3, &[]);
        let before = h.provider_batches(kind).await;
        let job = h
            .submit(&format!("inbox/{kind}/slow-status.jsonl"), body)
            .await;
        let mut slow = http_fault("GET", status_path(kind), 0, 2);
        slow.delay_ms = 1_000;
        h.emulator.set_faults(FaultPlan {
            http: vec![slow],
            ..FaultPlan::default()
        });
        run_and_check(
            &h,
            kind,
            "slow status answers (timeouts)",
            &job,
            &expected,
            before,
        )
        .await;

        // A slow create: the provider may have accepted it, so it is not sent again;
        // the step fails and the rerun finds the batch by its tags.
        let (body, expected) = job_file(kind, 3, &[]);
        let key = format!("inbox/{kind}/slow-create.jsonl");
        let version = h.upload(&key, body).await;
        let before = h.provider_batches(kind).await;
        let mut slow = http_fault("POST", create_path(kind), 0, 1);
        slow.delay_ms = 1_000;
        h.emulator.set_faults(FaultPlan {
            http: vec![slow],
            ..FaultPlan::default()
        });
        let first =
            batchline::pipeline::events::handle_s3_event(&h.ctx, h.s3_event(&key, &version)).await;
        assert!(
            first.is_err(),
            "{kind}: a timed-out create fails the submit"
        );
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        h.emulator.set_faults(FaultPlan::default());
        let job = h.submit_version(&key, &version).await;
        let record = h.run_to_close(&job).await;
        h.check_scenario(
            Category::Fault,
            &format!("{kind}: create timed out after the provider accepted it"),
            &job,
            &expected,
            BatchCount {
                created: (h.provider_batches(kind).await - before) as u64,
                needed: record.parts.len() as u64,
                known_extra: u64::from(kind == ProviderKind::Anthropic),
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_results_download_cut_midway_fails_the_message_and_the_redelivery_succeeds() {
    let h = Harness::start().await;
    h.emulator.finish_all(true);
    for kind in FAULT_PROVIDERS {
        let (body, expected) = job_file(kind, 40, &[]);
        let before = h.provider_batches(kind).await;
        let job = h.submit(&format!("inbox/{kind}/cut.jsonl"), body).await;
        poll(&h.ctx).await.expect("poll");
        h.emulator.set_faults(FaultPlan {
            drop_results_after_bytes: Some(600),
            ..FaultPlan::default()
        });
        let (delivered, failed) = h.deliver_with(&h.ctx).await.expect("a ready message");
        assert_eq!(
            (delivered, failed),
            (1, 1),
            "{kind}: the cut download fails the message"
        );
        assert!(
            h.ctx
                .store
                .list(&format!("results/{job}/"))
                .await
                .expect("list")
                .is_empty(),
            "{kind}: nothing half-written"
        );
        assert_eq!(h.record(&job).await.status, JobStatus::Open);
        h.emulator.set_faults(FaultPlan::default());
        let results = run_and_check(
            &h,
            kind,
            "results download cut midway",
            &job,
            &expected,
            before,
        )
        .await;
        assert_eq!(results.successes.len(), 40, "{kind}");
    }
}

/// A results file that ends cleanly but short: retried while deliveries remain; the
/// last delivery records what is missing as errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_results_file_is_retried_then_reported() {
    let h = Harness::start().await;
    h.emulator.finish_all(true);
    for kind in FAULT_PROVIDERS {
        let (body, expected) = job_file(kind, 6, &[]);
        let before = h.provider_batches(kind).await;
        let job = h.submit(&format!("inbox/{kind}/short.jsonl"), body).await;
        poll(&h.ctx).await.expect("poll");
        let short = support::crash::truncating_context(&h.ctx, 4);
        let message = ReadyMessage {
            job_id: job.clone(),
            part: 0,
        };
        let err = collect(&short, &message, false)
            .await
            .expect_err("short file");
        assert!(
            matches!(err, PipelineError::IncompleteResults { received: 4, .. }),
            "{kind}: {err}"
        );
        let outcome = collect(&short, &message, true)
            .await
            .expect("last delivery");
        assert!(
            matches!(
                outcome,
                CollectOutcome::Collected {
                    succeeded: 4,
                    failed: 2,
                    job_closed: true
                }
            ),
            "{kind}: {outcome:?}"
        );
        let record = h.record(&job).await;
        let results = h
            .check_scenario(
                Category::Fault,
                &format!("{kind}: truncated results file"),
                &job,
                &expected,
                BatchCount::exact(h.provider_batches(kind).await - before, record.parts.len()),
            )
            .await;
        assert_eq!(results.errors.len(), 2, "{kind}");
        assert!(
            results
                .errors
                .iter()
                .all(|e| e["error_type"] == "missing_result"),
            "{kind}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_fails_validation_reports_every_request() {
    let h = Harness::start().await;
    for kind in FAULT_PROVIDERS {
        let fate = FaultPlan {
            batch_fate: BatchFate::FailValidation,
            ..FaultPlan::default()
        };
        let (job, expected, before) = submit_with_fate(&h, kind, fate, 5, "invalid.jsonl").await;
        let results =
            run_and_check(&h, kind, "batch failed validation", &job, &expected, before).await;
        assert!(results.successes.is_empty(), "{kind}");
        assert_eq!(results.errors.len(), 5, "{kind}");
        h.emulator.set_faults(FaultPlan::default());
    }
}

/// An expired batch keeps what ran; the rest is resubmitted in a retry
/// part and succeeds there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_batch_keeps_partial_results_and_retries_the_rest() {
    let h = Harness::start().await;
    for kind in FAULT_PROVIDERS {
        let fate = FaultPlan {
            batch_fate: BatchFate::Expire,
            partial: 0.5,
            ..FaultPlan::default()
        };
        let (job, expected, before) =
            submit_with_fate(&h, kind, fate, 8, "expire-retry.jsonl").await;
        poll(&h.ctx).await.expect("poll");
        h.emulator.finish_all(true);
        // The retry part is created by collect, with the provider healthy again.
        h.emulator.set_faults(FaultPlan::default());
        let results = run_and_check(
            &h,
            kind,
            "batch expired with partial results",
            &job,
            &expected,
            before,
        )
        .await;
        h.emulator.finish_all(false);
        assert_eq!(results.successes.len(), 8, "{kind}: {:?}", results.errors);
        let retried = results
            .successes
            .iter()
            .filter(|s| s["attempts"] == 2)
            .count();
        assert_eq!(retried, 4, "{kind}: half ran before expiry");
        assert_eq!(results.summary["retried"], 4, "{kind}");
        assert_eq!(
            results.summary["outcomes_by_attempt"],
            json!({"1": 4, "2": 4}),
            "{kind}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_cancelled_at_the_provider_is_final() {
    // Batches stay running until the test ends them, so that they can be cancelled.
    let h = Harness::start_with(HarnessOptions {
        emulator_step: Some(Duration::from_secs(600)),
        ..HarnessOptions::default()
    })
    .await;
    for kind in FAULT_PROVIDERS {
        let (body, expected) = job_file(kind, 6, &[]);
        let before = h.provider_batches(kind).await;
        let job = h
            .submit(&format!("inbox/{kind}/cancelled.jsonl"), body)
            .await;
        let provider = h.ctx.providers.provider(kind).await.expect("provider");
        let batch = h.record(&job).await.parts[0]
            .batch_id
            .clone()
            .expect("batch");
        provider.cancel(&batch).await.expect("cancel");
        let results = run_and_check(
            &h,
            kind,
            "batch cancelled at the provider",
            &job,
            &expected,
            before,
        )
        .await;
        h.emulator.finish_all(false);
        // A person cancelled it: nothing is resubmitted, every request says so.
        assert!(
            results.successes.is_empty(),
            "{kind}: {:?}",
            results.successes
        );
        assert!(
            results
                .errors
                .iter()
                .all(|e| e["error_type"] == "cancelled" && e["attempts"] == 1),
            "{kind}: {:?}",
            results.errors
        );
        assert_eq!(results.errors.len(), 6, "{kind}");
        assert_eq!(h.record(&job).await.parts.len(), 1, "{kind}: no retry part");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_where_every_request_failed_has_every_error_and_is_retried_once() {
    let h = Harness::start().await;
    for kind in FAULT_PROVIDERS {
        let fate = FaultPlan {
            batch_fate: BatchFate::AllFail,
            ..FaultPlan::default()
        };
        let (job, expected, before) = submit_with_fate(&h, kind, fate, 5, "allfail.jsonl").await;
        let results = run_and_check(
            &h,
            kind,
            "every request failed (OpenAI: no output file)",
            &job,
            &expected,
            before,
        )
        .await;
        h.emulator.set_faults(FaultPlan::default());
        assert!(results.successes.is_empty(), "{kind}");
        // Server errors are retryable: one retry part, then final.
        assert!(
            results.errors.iter().all(|e| e["attempts"] == 2),
            "{kind}: {:?}",
            results.errors
        );
        assert_eq!(h.record(&job).await.parts.len(), 2, "{kind}");
    }
}

// ---------------------------------------------------------------------------------
// Retries.
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_failures_are_resubmitted_up_to_max_attempts() {
    let h = Harness::start().await;
    for kind in FAULT_PROVIDERS {
        for max_attempts in [1u32, 2, 3] {
            let mut lines = vec![header(kind, json!({"max_attempts": max_attempts}))];
            lines.push(json!({"custom_id": "ok", "text": "Invoice 1"}).to_string());
            lines.push(json!({"custom_id": "rl", "text": RATE_LIMITED}).to_string());
            lines.push(
                json!({"custom_id": "se", "text": "Invoice [[fault:server_error]]"}).to_string(),
            );
            lines.push(
                json!({"custom_id": "pe", "text": "Invoice [[fault:provider_error]]"}).to_string(),
            );
            let expected: Vec<String> = ["ok", "rl", "se", "pe"].map(String::from).to_vec();
            let before = h.provider_batches(kind).await;
            let job = h
                .submit(
                    &format!("inbox/{kind}/retry-{max_attempts}.jsonl"),
                    lines.join("\n"),
                )
                .await;
            let results = run_and_check(
                &h,
                kind,
                &format!("retries with max_attempts {max_attempts}"),
                &job,
                &expected,
                before,
            )
            .await;
            assert_eq!(success_of(&results, "ok")["attempts"], 1, "{kind}");
            for id in ["rl", "se"] {
                assert_eq!(
                    error_of(&results, id)["attempts"],
                    max_attempts,
                    "{kind} {id}"
                );
            }
            // Not retryable: the request itself is at fault.
            assert_eq!(error_of(&results, "pe")["attempts"], 1, "{kind}");
            let record = h.record(&job).await;
            assert_eq!(record.parts.len(), max_attempts as usize, "{kind}");
            assert_eq!(
                results.summary["retried"],
                2 * (max_attempts - 1),
                "{kind}: {}",
                results.summary
            );
        }
    }
}

// ---------------------------------------------------------------------------------
// AWS unreachable (moto paused with SIGSTOP).
// ---------------------------------------------------------------------------------

/// Each step with S3/SQS paused at one of its calls fails (so Lambda retries it) and
/// leaves the record readable and consistent; after SIGCONT the rerun converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_and_sqs_paused_mid_step_fail_the_step_and_leave_no_half_written_record() {
    let h = Harness::start_with(HarnessOptions {
        settings: quick_settings(),
        aws_attempt_timeout: Some(Duration::from_millis(500)),
        ..HarnessOptions::default()
    })
    .await;
    h.emulator.finish_all(true);
    let pid = h.moto.pid();
    let kind = ProviderKind::OpenAi;
    // (step, call to pause at): submit's record with the batch id, poll's send,
    // collect's results file and its record update.
    let cases: [(&str, Op, usize); 5] = [
        ("submit: S3 head of the upload", Op::Head, 1),
        ("submit: the record with the batch id", Op::Put, 4),
        ("poll: SQS send", Op::Send, 1),
        ("collect: the results file", Op::Put, 2),
        ("collect: the record update", Op::Put, 3),
    ];
    for (case, op, nth) in cases {
        let (body, expected) = job_file(kind, 4, &[]);
        let key = format!("inbox/{kind}/paused-{op:?}-{nth}.jsonl");
        let version = h.upload(&key, body).await;
        let before = h.provider_batches(kind).await;
        let step = case.split(':').next().unwrap_or_default();
        // Run the steps before the paused one normally.
        let job = match step {
            "submit" => None,
            _ => Some(h.submit_version(&key, &version).await),
        };
        if step == "collect" {
            poll(&h.ctx).await.expect("poll");
        }
        let pauser = Crasher::new(CrashPoint::PauseAt(op, nth, pid));
        let pctx = pauser.context(&h.ctx);
        let failed = match step {
            "submit" => {
                batchline::pipeline::events::handle_s3_event(&pctx, h.s3_event(&key, &version))
                    .await
                    .is_err()
            }
            "poll" => !poll(&pctx)
                .await
                .expect("poll lists before the pause")
                .failed_jobs
                .is_empty(),
            _ => h
                .deliver_with(&pctx)
                .await
                .is_some_and(|(_, failed)| failed > 0),
        };
        signal(pid, libc::SIGCONT);
        assert!(failed, "{case}: the step must report failure");
        let job = match job {
            Some(job) => job,
            None => h.submit_version(&key, &version).await,
        };
        // The record parses and says something consistent.
        let record = h.record(&job).await;
        assert!(
            record.parts.iter().all(|p| p.batch_id.is_some()),
            "{case}: {record:?}"
        );
        tokio::time::sleep(LEASE_PASSES).await;
        h.submit_version(&key, &version).await;
        run_and_check(
            &h,
            kind,
            &format!("S3/SQS paused during {case}"),
            &job,
            &expected,
            before,
        )
        .await;
    }
}

// ---------------------------------------------------------------------------------
// Concurrency.
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_message_to_two_collects_at_once_collects_and_retries_once() {
    let h = Harness::start().await;
    h.emulator.finish_all(true);
    for kind in FAULT_PROVIDERS {
        let (body, expected) = mixed_job(kind, 4, 10);
        let before = h.provider_batches(kind).await;
        let job = h.submit(&format!("inbox/{kind}/twice.jsonl"), body).await;
        poll(&h.ctx).await.expect("poll");
        let message = ReadyMessage {
            job_id: job.clone(),
            part: 0,
        };
        let (a, b) = tokio::join!(
            collect(&h.ctx, &message, false),
            collect(&h.ctx, &message, false)
        );
        let collected = [&a, &b]
            .iter()
            .filter(|r| matches!(r, Ok(CollectOutcome::Collected { .. })))
            .count();
        assert_eq!(collected, 1, "{kind}: {a:?} {b:?}");
        for other in [a, b] {
            assert!(
                matches!(other, Ok(_) | Err(PipelineError::Busy { .. })),
                "{kind}: {other:?}"
            );
        }
        // The loser's redelivery finds the part in.
        assert_eq!(
            collect(&h.ctx, &message, false).await.expect("redelivery"),
            CollectOutcome::AlreadyCollected
        );
        let results = run_and_check(
            &h,
            kind,
            "the same message to two collects at once",
            &job,
            &expected,
            before,
        )
        .await;
        assert_eq!(error_of(&results, "rl")["attempts"], 2, "{kind}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_uploads_of_one_key_in_quick_succession_are_two_jobs_and_repeats_are_not() {
    let h = Harness::start().await;
    for kind in FAULT_PROVIDERS {
        let key = format!("inbox/{kind}/twice-uploaded.jsonl");
        let (first_body, first_ids) = job_file(kind, 3, &[]);
        let (second_body, second_ids) = job_file(kind, 5, &[]);
        let before = h.provider_batches(kind).await;
        let first = h.upload(&key, first_body).await;
        let second = h.upload(&key, second_body).await;
        let submit_event = |version: String| {
            let ctx = h.ctx.clone();
            let event = h.s3_event(&key, &version);
            async move { batchline::pipeline::events::handle_s3_event(&ctx, event).await }
        };
        let outcomes = futures::future::join_all([
            submit_event(first.clone()),
            submit_event(second.clone()),
            submit_event(first.clone()),
            submit_event(second.clone()),
        ])
        .await;
        for outcome in &outcomes {
            assert!(outcome.is_ok(), "{kind}: {outcome:?}");
        }
        let first_job = h.submit_version(&key, &first).await;
        let second_job = h.submit_version(&key, &second).await;
        assert_ne!(first_job, second_job);
        for (job, ids) in [(first_job, first_ids), (second_job, second_ids)] {
            h.run_to_close(&job).await;
            h.check_scenario(
                Category::Fault,
                &format!("{kind}: two uploads of one key, each event twice at once"),
                &job,
                &ids,
                BatchCount::default(),
            )
            .await;
        }
        assert_eq!(
            h.provider_batches(kind).await - before,
            2,
            "{kind}: one batch per version"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_polls_at_once_with_retry_parts_queue_each_part_once() {
    let h = Harness::start().await;
    h.emulator.finish_all(true);
    for kind in FAULT_PROVIDERS {
        let (body, expected) = mixed_job(kind, 5, 2);
        let before = h.provider_batches(kind).await;
        let job = h.submit(&format!("inbox/{kind}/polls.jsonl"), body).await;
        let (a, b) = tokio::join!(poll(&h.ctx), poll(&h.ctx));
        let queued = a.expect("poll a").parts_queued + b.expect("poll b").parts_queued;
        assert_eq!(queued, 3, "{kind}: each of the three parts once");
        run_and_check(&h, kind, "two polls at once", &job, &expected, before).await;
    }
}

/// A provider that keeps refusing status calls (a revoked key: 401; a batch deleted
/// at the provider: 404) does not leave the job open forever: every poll notes the
/// refusal in the job record, and after `max_refused_polls` in a row the part is
/// given up and its requests become `batch_unreachable` errors quoting the provider.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_calls_refused_for_good_end_the_part_with_the_providers_words() {
    let h = Harness::start_with(HarnessOptions {
        settings: batchline::pipeline::Settings {
            max_refused_polls: 3,
            ..quick_settings()
        },
        ..HarnessOptions::default()
    })
    .await;
    for kind in FAULT_PROVIDERS {
        for refusal in [401, 404] {
            let (body, expected) = job_file(kind, 3, &[]);
            let before = h.provider_batches(kind).await;
            let job = h
                .submit(
                    &format!("inbox/{kind}/refused-status-{refusal}.jsonl"),
                    body,
                )
                .await;
            h.emulator.set_faults(FaultPlan {
                http: vec![http_fault("GET", status_path(kind), refusal, 1_000)],
                ..FaultPlan::default()
            });
            for tick in 1..=2u32 {
                poll(&h.ctx).await.expect("poll");
                let record = h.record(&job).await;
                assert_eq!(record.status, JobStatus::Open, "{kind} {refusal}");
                let part = &record.parts[0];
                assert_eq!(part.refused_polls, tick, "{kind} {refusal}");
                let noted = part.poll_error.clone().unwrap_or_default();
                assert!(noted.contains(&refusal.to_string()), "{kind}: {noted}");
            }
            poll(&h.ctx).await.expect("poll");
            assert!(h.record(&job).await.parts[0].abandoned.is_some(), "{kind}");
            h.collect_queued().await;
            h.emulator.set_faults(FaultPlan::default());
            let results = run_and_check(
                &h,
                kind,
                &format!("status calls refused with HTTP {refusal} until given up"),
                &job,
                &expected,
                before,
            )
            .await;
            assert!(results.successes.is_empty(), "{kind}");
            for error in &results.errors {
                let message = error["error_message"].as_str().unwrap_or_default();
                assert_eq!(error["error_type"], "batch_unreachable", "{kind}: {error}");
                assert!(
                    message.contains("refused 3 status calls")
                        && message.contains(&refusal.to_string()),
                    "{kind}: {message}"
                );
            }
            let part = &results.summary["parts"][0];
            assert!(
                part["error"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("refused"),
                "{kind}: the summary says why: {part}"
            );
        }
    }
}
