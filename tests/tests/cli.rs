//! The `batchline` operator CLI, driven as a user drives it: the real binary against
//! the provider emulator (direct mode) and against moto with the pipeline's steps
//! running beside it as the deployed functions would (stack mode).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use batchline::model::ProviderKind;
use batchline::pipeline::job::keys;
use batchline::pipeline::{UploadedObject, poll, submit};
use batchline_emulator::{Config, Emulator};
use serde_json::{Value, json};
use support::{API_KEY, BUCKET, Harness, invoice_schema, job_file};
use tokio::process::Command;

/// The CLI binary, built beside this test (`cargo test --workspace` builds every
/// package's binaries before running any test).
fn batchline() -> Command {
    let dir = std::env::current_exe()
        .expect("test binary path")
        .parent()
        .and_then(Path::parent)
        .expect("target directory")
        .to_path_buf();
    let binary = dir.join("batchline");
    assert!(
        binary.exists(),
        "{} is missing: run `cargo build -p batchline-cli`",
        binary.display()
    );
    let mut command = Command::new(binary);
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// Direct mode against the emulator: the OpenAI variables a user sets, pointed at it.
fn direct(emulator: &Emulator) -> Command {
    let mut command = batchline();
    command
        .env("OPENAI_API_KEY", API_KEY)
        .env("OPENAI_BASE_URL", emulator.base_url());
    command
}

/// Stack mode against moto, with the credentials and endpoint a user's shell has.
fn stack(h: &Harness) -> Command {
    let mut command = batchline();
    command
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", &h.moto.url)
        .env("BATCHLINE_BUCKET", BUCKET);
    command
}

async fn run(command: &mut Command, args: &[&str]) -> Output {
    let output = command.args(args).output().await.expect("batchline runs");
    eprintln!(
        "batchline {}: {}\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stdout_json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).expect("--json prints JSON")
}

fn json_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .expect("results file")
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// A requests file of `n` invoices and the schema file, in `dir`.
fn inputs(dir: &Path, n: usize) -> (PathBuf, PathBuf) {
    let rows: Vec<String> = (0..n)
        .map(|i| json!({"custom_id": format!("doc-{i}"), "text": format!("Invoice {i} from ACME, total {i}.50 EUR")}).to_string())
        .collect();
    let file = dir.join("invoices.jsonl");
    std::fs::write(&file, rows.join("\n") + "\n").unwrap();
    let schema = dir.join("invoice.schema.json");
    std::fs::write(&schema, invoice_schema().to_string()).unwrap();
    (file, schema)
}

async fn openai_batches(emulator: &Emulator) -> Vec<Value> {
    let listed: Value = batchline_emulator::harness::http_client()
        .get(format!("{}/v1/batches?limit=100", emulator.base_url()))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("list batches")
        .json()
        .await
        .expect("JSON");
    listed["data"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn run_interrupted_after_submit_reattaches_without_a_second_paid_batch() {
    // Slow lifecycles, so that the run is interrupted while its batches are running.
    let emulator = Emulator::start(Config {
        step: Duration::from_millis(700),
        api_key: API_KEY.into(),
        ..Config::default()
    })
    .await
    .expect("emulator");
    let dir = tempfile::tempdir().unwrap();
    let (file, schema) = inputs(dir.path(), 12);
    let spec = dir.path().join("spec.json");
    std::fs::write(&spec, json!({"max_requests_per_part": 5}).to_string()).unwrap();
    let out = dir.path().join("out");
    let args = [
        "run",
        file.to_str().unwrap(),
        "--model",
        "openai/gpt-4o-mini",
        "--schema",
        schema.to_str().unwrap(),
        "--spec",
        spec.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--poll-every",
        "0.2",
    ];

    let first = direct(&emulator)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    while openai_batches(&emulator).await.len() < 3 {
        assert!(Instant::now() < deadline, "the run created no 3 batches");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Ctrl-C, as a user would.
    let pid = first.id().expect("pid") as i32;
    unsafe { libc::kill(pid, libc::SIGINT) };
    let interrupted = first.wait_with_output().await.expect("run ends");
    let said = String::from_utf8_lossy(&interrupted.stderr);
    assert_eq!(interrupted.status.code(), Some(1), "{said}");
    assert!(said.contains("run the same command again"), "{said}");
    let batches = openai_batches(&emulator).await;
    assert_eq!(batches.len(), 3, "three parts, three batches");
    assert!(
        batches.iter().any(|b| b["status"] != "completed"),
        "interrupted while batches were still running: {batches:?}"
    );

    let resumed = run(&mut direct(&emulator), &args).await;
    assert!(resumed.status.success());
    assert_eq!(
        openai_batches(&emulator).await.len(),
        3,
        "no second paid batch"
    );
    let jobs: Vec<_> = std::fs::read_dir(out.join("results")).unwrap().collect();
    assert_eq!(jobs.len(), 1, "one job");
    let job_dir = jobs[0].as_ref().unwrap().path();
    let summary: Value =
        serde_json::from_slice(&std::fs::read(job_dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["status"], "completed");
    assert_eq!(summary["succeeded"], 12);
    assert_eq!(summary["invariant_holds"], true);
    let mut ids: Vec<String> = std::fs::read_dir(job_dir.join("successes"))
        .unwrap()
        .flat_map(|f| json_lines(&f.unwrap().path()))
        .map(|l| l["custom_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    let mut expected: Vec<String> = (0..12).map(|i| format!("doc-{i}")).collect();
    expected.sort();
    assert_eq!(ids, expected, "every row once, under its own id");
}

#[tokio::test]
async fn batches_verbs_work_on_a_batch_created_by_another_tool() {
    let emulator = Emulator::start(Config {
        // Slow enough that the batch is still running when results are first asked for.
        step: Duration::from_secs(5),
        api_key: API_KEY.into(),
        ..Config::default()
    })
    .await
    .expect("emulator");
    let dir = tempfile::tempdir().unwrap();
    // Another tool's batch: OpenAI's format, uploaded and created over plain HTTP.
    let lines: Vec<String> = (0..4)
        .map(|i| {
            json!({
                "custom_id": format!("other-{i}"),
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": "gpt-4o-mini",
                    "messages": [{"role": "user", "content": format!("Invoice {i} from ACME, total {i}.50 EUR")}],
                    "response_format": {"type": "json_schema", "json_schema": {"name": "invoice", "strict": true, "schema": invoice_schema()}}
                }
            })
            .to_string()
        })
        .collect();
    let requests = dir.path().join("requests.jsonl");
    std::fs::write(&requests, lines.join("\n") + "\n").unwrap();
    let schema = dir.path().join("invoice.schema.json");
    std::fs::write(&schema, invoice_schema().to_string()).unwrap();

    let created = run(
        &mut direct(&emulator),
        &[
            "batches",
            "create",
            "--file",
            requests.to_str().unwrap(),
            "--model",
            "openai/gpt-4o-mini",
            "--json",
        ],
    )
    .await;
    assert!(created.status.success());
    let batch_id = stdout_json(&created)[0]["batch_id"]
        .as_str()
        .unwrap()
        .to_string();

    let listed = run(
        &mut direct(&emulator),
        &["batches", "list", "--provider", "openai", "--json"],
    )
    .await;
    assert!(listed.status.success());
    assert!(
        stdout_json(&listed)
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["batch_id"] == batch_id.as_str())
    );

    // Not ended yet: results are refused with a usage error, not an empty file.
    let out = dir.path().join("results.jsonl");
    let early = run(
        &mut direct(&emulator),
        &[
            "batches",
            "results",
            "--batch-id",
            &batch_id,
            "--provider",
            "openai",
            "--output",
            out.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(early.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&early.stderr).contains("has not ended"));
    assert!(!out.exists(), "no file for a batch that has not ended");
    emulator.finish_all(true);
    let results = run(
        &mut direct(&emulator),
        &[
            "batches",
            "results",
            "--batch-id",
            &batch_id,
            "--provider",
            "openai",
            "--schema",
            schema.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ],
    )
    .await;
    assert!(results.status.success());
    let outcomes = json_lines(&out);
    let mut ids: Vec<&str> = outcomes
        .iter()
        .map(|o| o["custom_id"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, ["other-0", "other-1", "other-2", "other-3"]);
    assert!(
        outcomes.iter().all(|o| o["result"]["vendor"].is_string()),
        "{outcomes:?}"
    );

    // Cancelling an ended batch is the provider's error, exit 1, and no key is printed.
    let cancelled = run(
        &mut direct(&emulator),
        &[
            "batches",
            "cancel",
            "--batch-id",
            &batch_id,
            "--provider",
            "openai",
        ],
    )
    .await;
    assert_eq!(
        cancelled.status.code(),
        Some(1),
        "an ended batch cannot be cancelled"
    );
    assert!(!String::from_utf8_lossy(&cancelled.stderr).contains(API_KEY));

    // A missing key is a configuration error: exit 2, the variable named.
    let no_key = run(
        &mut batchline(),
        &["batches", "list", "--provider", "openai"],
    )
    .await;
    assert_eq!(no_key.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&no_key.stderr).contains("OPENAI_API_KEY"));
}

/// Runs the pipeline's steps as the deployed functions would, for ever: every upload
/// under `inbox/` is submitted, then poll and collect.
async fn deployed(h: &Harness) {
    loop {
        for key in h.ctx.store.list(keys::INBOX).await.expect("list inbox") {
            let object = UploadedObject {
                key,
                version_id: None,
            };
            submit(&h.ctx, &object).await.expect("submit");
        }
        poll(&h.ctx).await.expect("poll");
        h.collect_queued().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn stack_mode_follows_lists_fetches_and_cancels_the_deployed_pipelines_jobs() {
    // Slow lifecycles, so that the job to cancel is still running when it is cancelled.
    let h = Harness::start_with_step(Duration::from_secs(2)).await;
    tokio::select! {
        () = deployed(&h) => unreachable!("the pipeline runs until the test ends"),
        () = operate(&h) => {}
    }
}

/// A stack in moto with the template's `DataBucketName` output naming the test bucket.
async fn batchline_stack(h: &Harness, name: &str) {
    let template = json!({
        "Resources": {"ReadyQueue": {"Type": "AWS::SQS::Queue"}},
        "Outputs": {"DataBucketName": {"Value": BUCKET}}
    });
    aws_sdk_cloudformation::Client::new(&batchline_emulator::harness::moto_sdk_config(&h.moto.url))
        .create_stack()
        .stack_name(name)
        .template_body(template.to_string())
        .send()
        .await
        .expect("create stack");
}

/// What the operator does while the pipeline runs.
async fn operate(h: &Harness) {
    let dir = tempfile::tempdir().unwrap();
    // The demo's pipeline and requests: 20 invoices, one line of them cut off.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let spec = std::fs::read(root.join("events/pipelines/invoices.json")).unwrap();
    h.ctx
        .store
        .put(
            &keys::pipeline_spec("invoices"),
            spec.into(),
            batchline::storage::PutMode::Overwrite,
        )
        .await
        .unwrap();
    let file = root.join("events/jobs/invoices.jsonl");

    h.emulator.finish_all(true);
    let uploaded = run(
        &mut stack(h),
        &[
            "upload",
            file.to_str().unwrap(),
            "--pipeline",
            "invoices",
            "--wait",
            "--every",
            "0.2",
            "--json",
        ],
    )
    .await;
    assert!(uploaded.status.success());
    let view = stdout_json(&uploaded);
    let job_id = view["job_id"].as_str().unwrap().to_string();
    assert_eq!(view["status"], "completed");
    assert_eq!(view["pipeline"], "invoices");
    let (succeeded, failed) = (
        view["succeeded"].as_u64().unwrap(),
        view["failed"].as_u64().unwrap(),
    );
    assert_eq!(succeeded + failed, 20, "every row accounted for");
    assert_eq!(view["errors_by_type"]["invalid_input"], 1);

    let listed = run(
        &mut stack(h),
        &[
            "jobs",
            "--status",
            "completed",
            "--pipeline",
            "invoices",
            "--json",
        ],
    )
    .await;
    assert!(listed.status.success());
    let listed = stdout_json(&listed);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["job_id"], job_id.as_str());
    // The bucket named by a stack's output, as `sam deploy` leaves it.
    batchline_stack(h, "batchline-demo").await;
    let by_stack = run(
        stack(h).env_remove("BATCHLINE_BUCKET"),
        &["jobs", "--stack", "batchline-demo", "--json"],
    )
    .await;
    assert!(by_stack.status.success());
    assert_eq!(stdout_json(&by_stack)[0]["job_id"], job_id.as_str());
    let open = run(&mut stack(h), &["jobs", "--status", "open", "--json"]).await;
    assert!(stdout_json(&open).as_array().unwrap().is_empty());

    let shown = run(&mut stack(h), &["job", &job_id, "--json"]).await;
    assert!(shown.status.success());
    let shown = stdout_json(&shown);
    assert_eq!(shown["rows"], 20);
    assert!(
        shown["parts"][0]["batch_id"]
            .as_str()
            .unwrap()
            .starts_with("batch_")
    );
    assert!(shown["usage"]["input_tokens"].as_u64().unwrap() > 0);
    let table = run(&mut stack(h), &["job", &job_id]).await;
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("invalid_input 1"), "{table}");

    let csv = dir.path().join("invoices.csv");
    let fetched = run(
        &mut stack(h),
        &[
            "job",
            &job_id,
            "results",
            "--format",
            "csv",
            "-o",
            csv.to_str().unwrap(),
        ],
    )
    .await;
    assert!(fetched.status.success());
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    assert!(
        lines.next().unwrap().starts_with("custom_id,vendor,"),
        "one column per schema property: {text}"
    );
    assert_eq!(lines.count() as u64, succeeded);
    let errors = dir.path().join("invoice-errors.jsonl");
    let fetched = run(
        &mut stack(h),
        &[
            "job",
            &job_id,
            "results",
            "--errors",
            "-o",
            errors.to_str().unwrap(),
        ],
    )
    .await;
    assert!(fetched.status.success());
    let errors = json_lines(&errors);
    assert_eq!(errors.len() as u64, failed);
    assert!(
        errors
            .iter()
            .any(|e| e["error_type"] == "invalid_input" && e["line"] == 16)
    );

    // A job cancelled while its batch runs: every row is still accounted for.
    h.emulator.finish_all(false);
    let (body, _) = job_file(ProviderKind::OpenAi, 5, &[]);
    let slow = dir.path().join("slow.jsonl");
    std::fs::write(&slow, body).unwrap();
    let uploaded = run(&mut stack(h), &["upload", slow.to_str().unwrap(), "--json"]).await;
    let slow_id = stdout_json(&uploaded)["job_id"]
        .as_str()
        .unwrap()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while h
        .ctx
        .store
        .head(&keys::job_record(&slow_id), None)
        .await
        .is_err()
        || h.record(&slow_id)
            .await
            .parts
            .iter()
            .any(|p| p.batch_id.is_none())
    {
        assert!(
            Instant::now() < deadline,
            "the pipeline did not submit {slow_id}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cancelled = run(
        &mut stack(h),
        &[
            "job", &slow_id, "cancel", "--wait", "--every", "0.2", "--json",
        ],
    )
    .await;
    let view = stdout_json(&cancelled);
    assert!(
        cancelled.status.success(),
        "the cancellation asked for is done"
    );
    assert_eq!(view["status"], "cancelled");
    assert_eq!(
        view["succeeded"].as_u64().unwrap() + view["failed"].as_u64().unwrap(),
        5
    );
    let errors = dir.path().join("errors.jsonl");
    let fetched = run(
        &mut stack(h),
        &[
            "job",
            &slow_id,
            "results",
            "--errors",
            "-o",
            errors.to_str().unwrap(),
        ],
    )
    .await;
    assert!(fetched.status.success());
    assert!(
        json_lines(&errors)
            .iter()
            .all(|e| e["error_type"] == "cancelled")
    );
    let again = run(&mut stack(h), &["job", &slow_id, "cancel", "--json"]).await;
    assert!(again.status.success());
    assert_eq!(stdout_json(&again)["cancellation"], "already_closed");

    let missing = run(&mut batchline(), &["jobs"]).await;
    assert_eq!(missing.status.code(), Some(2), "no bucket is a usage error");
}

#[tokio::test]
async fn help_shows_an_example_and_completions_are_generated() {
    for command in ["run", "jobs", "job", "upload"] {
        let help = run(&mut batchline(), &[command, "--help"]).await;
        assert!(help.status.success());
        assert!(
            String::from_utf8_lossy(&help.stdout).contains("Example"),
            "{command}"
        );
    }
    let completions = run(&mut batchline(), &["completions", "bash"]).await;
    assert!(String::from_utf8_lossy(&completions.stdout).contains("batchline"));
    let usage = run(&mut batchline(), &["run"]).await;
    assert_eq!(usage.status.code(), Some(2));
    // A missing key is a configuration error, named, whichever command meets it.
    let dir = tempfile::tempdir().unwrap();
    let (file, schema) = inputs(dir.path(), 2);
    let out = dir.path().join("out");
    let no_key = run(
        &mut batchline(),
        &[
            "run",
            file.to_str().unwrap(),
            "--model",
            "openai/gpt-4o-mini",
            "--schema",
            schema.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(no_key.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&no_key.stderr).contains("OPENAI_API_KEY"));
}
