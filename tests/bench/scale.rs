//! `make bench-scale` (`batchline-bench scale`): one job of a million rows through
//! moto (S3 + SQS), the provider emulator and the real pipeline steps, driven the way
//! the deployment drives them, with every function invocation in a fresh child
//! process ([`crate::invoke`]) so that its duration, peak RSS and S3/SQS requests are
//! its own. Then one poll tick over 10,000 open parts.
//!
//! ```text
//! batchline-bench scale [--rows N] [--poll-every S] [--step-ms MS]
//!                       [--submit-budget S] [--tick-jobs N] [--tick-parts N] [--no-tick]
//!                       [--timeout S]
//! ```
//!
//! The drive: the upload's S3 event to a submit invocation; the submit queue's handover
//! messages to further submit invocations; a poll invocation every `--poll-every`
//! seconds; one collect invocation per ready-queue message (`BatchSize: 1`). The
//! emulator's OpenAI `openai_enqueued_tokens` quota is a fifth of the job's prompt
//! tokens, and the job's spec gives the pipeline the same limit, so parts wait and poll
//! starts them as earlier batches end.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::MessageSystemAttributeName;
use batchline::build::build_batch;
use batchline::model::ProviderKind;
use batchline::pipeline::job::{self, keys};
use batchline::provider::{BatchProvider, BatchTags, connect};
use batchline::storage::{ObjectStore, PutMode, S3Store};
use batchline_emulator::harness::{API_KEY, EmulatorProviders, Moto, moto_sdk_config};
use batchline_emulator::model::{Api, prompt_tokens};
use batchline_emulator::{Config, Emulator, QuotaReport, Quotas, workload};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Value, json};

use crate::invoke::{Function, Invocation, Requests};
use crate::measure::run_child_as;
use crate::{child_command, progress};

const MODEL: &str = "openai/gpt-4o-mini";
const BUCKET: &str = "batchline-scale";
const TICK_BUCKET: &str = "batchline-scale-tick";
/// The job's prompt tokens over the emulator's enqueued-token limit.
const QUOTA_FRACTION: u64 = 5;
/// Sampled rows for the job's prompt tokens (counting all million would take minutes).
const TOKEN_SAMPLE: usize = 2_000;

/// `batchline-bench scale` options.
#[derive(Debug, Clone)]
pub struct Options {
    pub rows: usize,
    /// Time between poll ticks (the deployment's EventBridge schedule).
    pub poll_every: Duration,
    /// The emulator's lifecycle step: a batch ends three steps after its create.
    pub step: Duration,
    /// `SUBMIT_BUDGET_SECONDS` of the submit invocations: 8 s by default, so that a
    /// million rows are read over several invocations (one submit reads them in about
    /// 26 s on 2 cores, well inside the deployment's 720 s).
    pub submit_budget_s: u64,
    /// The tick measurement: open jobs and parts per job (0 jobs: skipped).
    pub tick_jobs: usize,
    pub tick_parts: usize,
    /// Give up after this long.
    pub timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            rows: 1_000_000,
            poll_every: Duration::from_secs(3),
            step: Duration::from_secs(2),
            submit_budget_s: 8,
            tick_jobs: 1_000,
            tick_parts: 10,
            timeout: Duration::from_secs(40 * 60),
        }
    }
}

impl Options {
    pub fn parse(args: &[String]) -> Result<Self, String> {
        let mut options = Self::default();
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let mut value = || -> Result<f64, String> {
                let text = args.next().ok_or_else(|| format!("{arg} needs a value"))?;
                text.parse().map_err(|e| format!("{arg} {text}: {e}"))
            };
            match arg.as_str() {
                "--rows" => options.rows = value()? as usize,
                "--poll-every" => options.poll_every = Duration::from_secs_f64(value()?),
                "--step-ms" => options.step = Duration::from_secs_f64(value()? / 1000.0),
                "--submit-budget" => options.submit_budget_s = value()? as u64,
                "--tick-jobs" => options.tick_jobs = value()? as usize,
                "--tick-parts" => options.tick_parts = value()? as usize,
                "--no-tick" => options.tick_jobs = 0,
                "--timeout" => options.timeout = Duration::from_secs_f64(value()?),
                other => return Err(format!("scale: unknown argument {other:?}")),
            }
        }
        if options.rows == 0 {
            return Err("--rows must be at least 1".into());
        }
        Ok(options)
    }
}

/// Per function: invocations, the highest peak RSS, total duration.
#[derive(Debug, Clone, Copy, Default)]
pub struct FunctionFigures {
    pub invocations: u64,
    pub peak_rss_bytes: u64,
    pub seconds: f64,
}

/// What the scale run measured.
#[derive(Debug, Clone)]
pub struct ScaleFigures {
    pub rows: usize,
    pub upload_bytes: u64,
    pub submit_budget_s: u64,
    pub poll_every: Duration,
    pub functions: BTreeMap<Function, FunctionFigures>,
    /// What the functions sent to S3 and SQS, and the event source's receives and
    /// deletes of the messages the functions were invoked with.
    pub requests: Requests,
    pub end_to_end_seconds: f64,
    pub estimated_prompt_tokens: u64,
    /// The pipeline's own upper estimate of the job's input tokens: the sum of its
    /// parts' `estimated_tokens` (what quota counts start from).
    pub part_token_estimate: u64,
    pub quota: QuotaReport,
    pub summary: Value,
    pub tick: Option<TickFigures>,
}

/// One poll tick over many open parts, twice: the first tick writes every job record
/// (the parts' states are new to it), the second finds nothing changed.
#[derive(Debug, Clone)]
pub struct TickFigures {
    pub jobs: usize,
    pub parts: usize,
    pub first: Invocation,
    pub second: Invocation,
}

/// Runs the job and the tick measurement.
pub fn run(options: &Options, me: &Path) -> Result<ScaleFigures, String> {
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let dir = tempfile::Builder::new()
        .prefix("batchline-scale-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    progress("scale: starting moto and the emulator");
    let moto = Moto::start();
    let emulator = runtime
        .block_on(Emulator::start(Config {
            step: options.step,
            api_key: API_KEY.into(),
            ..Config::default()
        }))
        .map_err(|e| format!("emulator: {e}"))?;
    let world = runtime.block_on(World::create(&moto.url, BUCKET))?;

    let estimated_prompt_tokens = estimate_prompt_tokens(options.rows)?;
    let quota_limit = (estimated_prompt_tokens / QUOTA_FRACTION).max(1);
    emulator.set_quotas(Quotas {
        openai_enqueued_tokens: Some(quota_limit),
        ..Quotas::default()
    });
    progress(&format!(
        "scale: writing {} rows (≈{estimated_prompt_tokens} prompt tokens; quota {quota_limit})",
        options.rows
    ));
    let upload = dir.path().join("upload.jsonl");
    write_upload(&upload, options.rows, quota_limit)?;
    let upload_bytes = std::fs::metadata(&upload).map_err(|e| e.to_string())?.len();
    let key = "inbox/scale.jsonl";
    progress(&format!("scale: uploading {upload_bytes} bytes to moto"));
    runtime.block_on(world.upload(key, &upload))?;
    std::fs::remove_file(&upload).map_err(|e| e.to_string())?;

    let env = FunctionEnv {
        me: me.to_path_buf(),
        dir: dir.path().to_path_buf(),
        moto_url: moto.url.clone(),
        emulator_url: emulator.base_url(),
        bucket: BUCKET.into(),
        ready_queue: world.ready_queue.clone(),
        submit_queue: world.submit_queue.clone(),
        submit_budget_s: options.submit_budget_s,
    };
    let mut tally = Tally::default();
    let started = Instant::now();
    let event = s3_event(BUCKET, key, upload_bytes);
    let first = tally.invoke(&env, Function::Submit, &event)?;
    let job_id = first
        .as_array()
        .and_then(|outcomes| outcomes.first())
        .and_then(|o| o["job_id"].as_str())
        .ok_or_else(|| format!("submit answered no job: {first}"))?
        .to_string();
    progress(&format!("scale: job {job_id}: {first}"));
    let summary = runtime.block_on(drive(options, &world, &env, &mut tally, &job_id, started))?;
    let end_to_end_seconds = started.elapsed().as_secs_f64();
    let record = runtime
        .block_on(batchline::pipeline::job::load(&world.store, &job_id))
        .map_err(|e| e.to_string())?
        .record;
    let part_token_estimate = record.parts.iter().map(|p| p.estimated_tokens).sum();
    let quota = emulator.quota_report();
    drop(emulator);

    let tick = match options.tick_jobs {
        0 => None,
        jobs => Some(runtime.block_on(measure_tick(options, &moto.url, me, dir.path(), jobs))?),
    };
    Ok(ScaleFigures {
        rows: options.rows,
        upload_bytes,
        submit_budget_s: options.submit_budget_s,
        poll_every: options.poll_every,
        functions: tally.functions,
        requests: tally.requests,
        end_to_end_seconds,
        estimated_prompt_tokens,
        part_token_estimate,
        quota,
        summary,
        tick,
    })
}

/// Delivers events until the job's summary is written: handed-over uploads to
/// submit, a poll per tick, each ready message to collect.
async fn drive(
    options: &Options,
    world: &World,
    env: &FunctionEnv,
    tally: &mut Tally,
    job_id: &str,
    started: Instant,
) -> Result<Value, String> {
    let mut last_poll: Option<Instant> = None;
    loop {
        if started.elapsed() > options.timeout {
            return Err(format!("the job did not finish in {:?}", options.timeout));
        }
        let mut busy = false;
        let handed_over = world.receive(&world.submit_queue, tally).await?;
        for message in handed_over {
            busy = true;
            let outcome = tally.invoke(env, Function::Submit, &message.event)?;
            progress(&format!("scale: submit (handed over): {outcome}"));
            world.delete(&world.submit_queue, &message, tally).await?;
        }
        if last_poll.is_none_or(|at| at.elapsed() >= options.poll_every) {
            last_poll = Some(Instant::now());
            let report = tally.invoke(env, Function::Poll, &json!({}))?;
            progress(&format!("scale: poll: {report}"));
        }
        let ready = world.receive(&world.ready_queue, tally).await?;
        for message in ready {
            busy = true;
            let response = tally.invoke(env, Function::Collect, &message.event)?;
            let failed = response["batchItemFailures"]
                .as_array()
                .is_some_and(|failures| !failures.is_empty());
            // A failed delivery comes back after the visibility timeout, as in SQS.
            if !failed {
                world.delete(&world.ready_queue, &message, tally).await?;
            }
        }
        if let Some(summary) = world.summary(job_id).await? {
            return Ok(summary);
        }
        if !busy {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The environment every function invocation gets (the template's variables, pointed
/// at moto and the emulator).
struct FunctionEnv {
    /// This binary, run as `child invoke`.
    me: PathBuf,
    /// Where event files are written for the children.
    dir: PathBuf,
    moto_url: String,
    emulator_url: String,
    bucket: String,
    ready_queue: String,
    submit_queue: String,
    submit_budget_s: u64,
}

impl FunctionEnv {
    /// One invocation of `function` with `event` in a fresh child (`n` names its
    /// event file).
    fn invoke(&self, function: Function, event: &Value, n: u64) -> Result<Invocation, String> {
        let file = self.dir.join(format!("event-{n}.json"));
        std::fs::write(&file, event.to_string()).map_err(|e| e.to_string())?;
        let mut command = child_command(&self.me);
        command
            .args(["child", "invoke", function.name()])
            .arg(&file);
        self.apply(&mut command);
        let invocation = run_child_as(command, false);
        let _ = std::fs::remove_file(&file);
        invocation
    }

    fn apply(&self, command: &mut Command) {
        command
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_ENDPOINT_URL", &self.moto_url)
            .env("S3_FORCE_PATH_STYLE", "true")
            .env("BUCKET_NAME", &self.bucket)
            .env("READY_QUEUE_URL", &self.ready_queue)
            .env("SUBMIT_QUEUE_URL", &self.submit_queue)
            .env("SUBMIT_BUDGET_SECONDS", self.submit_budget_s.to_string())
            .env("OPENAI_API_KEY", API_KEY)
            .env("OPENAI_BASE_URL", &self.emulator_url)
            .env(
                "RUST_LOG",
                std::env::var("SCALE_RUST_LOG").unwrap_or_else(|_| "warn".into()),
            );
    }
}

/// The invocations so far.
#[derive(Default)]
struct Tally {
    functions: BTreeMap<Function, FunctionFigures>,
    requests: Requests,
    events: u64,
}

impl Tally {
    /// One invocation of `function` with `event` in a fresh child; answers the
    /// handler's answer. A handler error fails the bench: nothing here should fail.
    fn invoke(
        &mut self,
        env: &FunctionEnv,
        function: Function,
        event: &Value,
    ) -> Result<Value, String> {
        self.events += 1;
        let invocation = env.invoke(function, event, self.events)?;
        let figures = self.functions.entry(function).or_default();
        figures.invocations += 1;
        figures.seconds += invocation.seconds;
        figures.peak_rss_bytes = figures.peak_rss_bytes.max(invocation.peak_rss_bytes);
        self.requests += invocation.requests;
        invocation
            .outcome
            .map_err(|e| format!("{function} failed: {e}"))
    }
}

/// A message as the event source hands it to a function.
struct Delivery {
    receipt: String,
    event: Value,
}

/// Moto's bucket and queues, as the deployment's template makes them.
struct World {
    s3: aws_sdk_s3::Client,
    sqs: aws_sdk_sqs::Client,
    store: S3Store,
    ready_queue: String,
    submit_queue: String,
}

impl World {
    async fn create(moto_url: &str, bucket: &str) -> Result<Self, String> {
        let sdk = moto_sdk_config(moto_url);
        let s3 = S3Store::client_from(&sdk, true);
        s3.create_bucket()
            .bucket(bucket)
            .send()
            .await
            .map_err(|e| format!("creating the bucket: {e}"))?;
        let sqs = aws_sdk_sqs::Client::new(&sdk);
        let mut urls = Vec::new();
        for name in ["ready", "submit"] {
            let out = sqs
                .create_queue()
                .queue_name(format!("{bucket}-{name}"))
                .attributes(
                    aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
                    "900",
                )
                .send()
                .await
                .map_err(|e| format!("creating the {name} queue: {e}"))?;
            urls.push(out.queue_url().unwrap_or_default().to_string());
        }
        Ok(Self {
            store: S3Store::new(s3.clone(), bucket),
            s3,
            sqs,
            submit_queue: urls.pop().unwrap_or_default(),
            ready_queue: urls.pop().unwrap_or_default(),
        })
    }

    async fn upload(&self, key: &str, path: &Path) -> Result<(), String> {
        let body = aws_sdk_s3::primitives::ByteStream::from_path(path)
            .await
            .map_err(|e| e.to_string())?;
        self.s3
            .put_object()
            .bucket(BUCKET)
            .key(key)
            .body(body)
            .send()
            .await
            .map_err(|e| format!("uploading {key}: {e}"))?;
        Ok(())
    }

    /// Up to ten messages of `queue`, each as a one-record SQS event (`BatchSize: 1`).
    async fn receive(&self, queue: &str, tally: &mut Tally) -> Result<Vec<Delivery>, String> {
        let out = self
            .sqs
            .receive_message()
            .queue_url(queue)
            .max_number_of_messages(10)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .map_err(|e| format!("receiving from {queue}: {e}"))?;
        let messages = out.messages();
        // Lambda's event source polls all the time; only the receives that brought
        // messages are counted (its empty long polls cost about $0.05 a month).
        tally.requests.sqs_receive += u64::from(!messages.is_empty());
        Ok(messages
            .iter()
            .map(|m| Delivery {
                receipt: m.receipt_handle().unwrap_or_default().to_string(),
                event: sqs_event(m, queue),
            })
            .collect())
    }

    async fn delete(
        &self,
        queue: &str,
        message: &Delivery,
        tally: &mut Tally,
    ) -> Result<(), String> {
        tally.requests.sqs_delete += 1;
        self.sqs
            .delete_message()
            .queue_url(queue)
            .receipt_handle(&message.receipt)
            .send()
            .await
            .map_err(|e| format!("deleting from {queue}: {e}"))?;
        Ok(())
    }

    async fn summary(&self, job_id: &str) -> Result<Option<Value>, String> {
        match self.store.get(&keys::summary(job_id)).await {
            Ok((_, body)) => serde_json::from_slice(&body)
                .map(Some)
                .map_err(|e| format!("summary: {e}")),
            Err(batchline::storage::StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// The S3 notification of an upload, as S3 sends it to submit.
fn s3_event(bucket: &str, key: &str, size: u64) -> Value {
    json!({"Records": [{
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "us-east-1",
        "eventTime": "2026-12-03T00:00:00.000Z",
        "eventName": "ObjectCreated:Put",
        "userIdentity": {"principalId": "AWS:AIDAEXAMPLE"},
        "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "batchline-inbox-upload",
            "bucket": {
                "name": bucket,
                "ownerIdentity": {"principalId": "EXAMPLE"},
                "arn": format!("arn:aws:s3:::{bucket}")
            },
            "object": {"key": key, "size": size, "sequencer": "0055AED6DCD90281E5"}
        }
    }]})
}

/// A received message as Lambda's SQS event source hands it over.
fn sqs_event(message: &aws_sdk_sqs::types::Message, queue: &str) -> Value {
    let attributes: serde_json::Map<String, Value> = message
        .attributes()
        .into_iter()
        .flatten()
        .map(|(name, value)| (name.as_str().to_string(), Value::from(value.as_str())))
        .collect();
    let name = queue.rsplit('/').next().unwrap_or_default();
    json!({"Records": [{
        "messageId": message.message_id(),
        "receiptHandle": message.receipt_handle(),
        "body": message.body(),
        "attributes": attributes,
        "messageAttributes": {},
        "md5OfBody": message.md5_of_body(),
        "eventSource": "aws:sqs",
        "eventSourceARN": format!("arn:aws:sqs:us-east-1:123456789012:{name}"),
        "awsRegion": "us-east-1"
    }]})
}

/// The job's prompt tokens as the emulator counts them (what OpenAI reports as
/// `prompt_tokens`), from an even sample of its rows built the way submit builds them.
fn estimate_prompt_tokens(rows: usize) -> Result<u64, String> {
    let every = rows.div_ceil(TOKEN_SAMPLE).max(1);
    let sample: Vec<_> = (0..rows).step_by(every).map(workload::request).collect();
    let model = MODEL.parse().map_err(|e| format!("{e}"))?;
    let plan = build_batch(
        &model,
        &workload::invoice_schema(),
        &workload::generation_params(),
        &sample,
    )
    .map_err(|e| e.to_string())?;
    let mut tokens = 0u64;
    for part in &plan.parts {
        for line in part.body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let line: Value = serde_json::from_slice(line).map_err(|e| e.to_string())?;
            tokens += prompt_tokens(Api::OpenAi, &line["body"]);
        }
    }
    Ok(tokens * rows as u64 / sample.len() as u64)
}

/// The upload: a header line with the spec (the workload's invoice schema and system
/// prompt, the quota), then row `i` as `{"custom_id", "text"}`.
fn write_upload(path: &Path, rows: usize, quota_limit: u64) -> Result<(), String> {
    let params = workload::generation_params();
    let header = json!({"spec": {
        "model": MODEL,
        "schema_name": workload::SCHEMA_NAME,
        "schema": workload::invoice_schema().schema,
        "system_prompt": workload::SYSTEM_PROMPT,
        "max_tokens": params.max_tokens,
        "temperature": params.temperature,
        "quota": {"enqueued_tokens": quota_limit}
    }});
    let io = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path).map_err(io)?);
    writeln!(out, "{header}").map_err(io)?;
    for i in 0..rows {
        let row = json!({"custom_id": workload::custom_id(i), "text": workload::user_text(i)});
        writeln!(out, "{row}").map_err(io)?;
    }
    out.flush().map_err(io)
}

/// One poll tick over `jobs` open jobs of `options.tick_parts` parts each, whose
/// batches exist in an emulator of their own where they stay pending.
async fn measure_tick(
    options: &Options,
    moto_url: &str,
    me: &Path,
    dir: &Path,
    jobs: usize,
) -> Result<TickFigures, String> {
    let parts = jobs * options.tick_parts;
    progress(&format!(
        "tick: creating {parts} batches and {jobs} open jobs"
    ));
    let emulator = Emulator::start(Config {
        // Long enough that no batch moves while the tick runs.
        step: Duration::from_secs(3600),
        api_key: API_KEY.into(),
        ..Config::default()
    })
    .await
    .map_err(|e| format!("emulator: {e}"))?;
    let world = World::create(moto_url, TICK_BUCKET).await?;
    let provider = connect(
        ProviderKind::OpenAi,
        &EmulatorProviders::new(emulator.base_url()).config(ProviderKind::OpenAi),
    )
    .map_err(|e| e.to_string())?;
    let model = MODEL.parse().map_err(|e| format!("{e}"))?;
    let input = build_batch(
        &model,
        &workload::invoice_schema(),
        &workload::generation_params(),
        &[workload::request(0)],
    )
    .map_err(|e| e.to_string())?
    .parts
    .remove(0)
    .body;
    let provider: &dyn BatchProvider = provider.as_ref();
    let batch_ids: Vec<String> = futures::stream::iter(0..parts)
        .map(|n| {
            let input = input.clone();
            async move {
                let tags = BatchTags::from([("part".to_string(), n.to_string())]);
                provider
                    .create("gpt-4o-mini", input, &tags)
                    .await
                    .map(|status| status.batch_id)
                    .map_err(|e| e.to_string())
            }
        })
        .buffered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let store = &world.store;
    let seeded: Vec<Result<(), String>> =
        futures::stream::iter(batch_ids.chunks(options.tick_parts))
            .enumerate()
            .map(|(n, batches)| seed_open_job(store, format!("tick-{n:05}"), batches))
            .buffer_unordered(16)
            .collect()
            .await;
    seeded.into_iter().collect::<Result<(), _>>()?;
    let env = FunctionEnv {
        me: me.to_path_buf(),
        dir: dir.to_path_buf(),
        moto_url: moto_url.to_string(),
        emulator_url: emulator.base_url(),
        bucket: TICK_BUCKET.into(),
        ready_queue: world.ready_queue.clone(),
        submit_queue: world.submit_queue.clone(),
        submit_budget_s: options.submit_budget_s,
    };
    let tick = |n: u64| {
        let invocation = env.invoke(Function::Poll, &json!({}), n)?;
        progress(&format!(
            "tick: {:.1} s: {:?}",
            invocation.seconds, invocation.outcome
        ));
        Ok::<_, String>(invocation)
    };
    let first = tick(1)?;
    let second = tick(2)?;
    for invocation in [&first, &second] {
        let report = invocation.outcome.as_ref().map_err(Clone::clone)?;
        if report["parts_checked"].as_u64() != Some(parts as u64) {
            return Err(format!("the tick checked not all {parts} parts: {report}"));
        }
    }
    Ok(TickFigures {
        jobs,
        parts,
        first,
        second,
    })
}

/// An open job record whose parts are the given pending batches, and its open marker.
async fn seed_open_job(store: &S3Store, job_id: String, batches: &[String]) -> Result<(), String> {
    let job_id = job_id.as_str();
    let now = batchline::clock::Clock::timestamp(&batchline::clock::SystemClock);
    let params = workload::generation_params();
    let parts: Vec<Value> = batches
        .iter()
        .enumerate()
        .map(|(index, batch_id)| {
            json!({
                "index": index,
                "requests": 1,
                "batch_id": batch_id,
                "state": "processing",
                "raw_status": "in_progress"
            })
        })
        .collect();
    // Written as the record's JSON so that fields added later take their defaults.
    let record = serde_json::from_value(json!({
        "job_id": job_id,
        "source": {"bucket": TICK_BUCKET, "key": format!("inbox/{job_id}.jsonl"), "etag": "generated"},
        "status": "open",
        "spec": {
            "model": MODEL,
            "schema_name": workload::SCHEMA_NAME,
            "schema": workload::invoice_schema().schema,
            "max_tokens": params.max_tokens,
        },
        "requests": batches.len(),
        "input_errors": 0,
        "parts": parts,
        "created_at": now,
        "submitted_at": now
    }))
    .map_err(|e| format!("job record: {e}"))?;
    job::create(store, record)
        .await
        .map_err(|e| e.to_string())?;
    store
        .put(&keys::open_marker(job_id), Bytes::new(), PutMode::Overwrite)
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}
