//! `batchline run`: the pipeline's own steps (submit, poll, collect) in this process,
//! over a directory instead of a bucket. The job's state lives in that directory, so
//! running the same command again reattaches to the batches already created: submit
//! finds the job record (or, after a crash between create and record, the batch by its
//! tags) instead of paying for a second batch.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use batchline::clock::SystemClock;
use batchline::metrics::NoMetrics;
use batchline::pipeline::job::{self, JobRecord, keys};
use batchline::pipeline::spec::JobSpec;
use batchline::pipeline::{
    Context, ReadyMessage, Settings, SubmitOutcome, UploadedObject, collect, poll, submit,
};
use batchline::queue::MemoryQueue;
use batchline::storage::{LocalStore, ObjectStore, PutMode, StoreError};
use bytes::Bytes;
use tokio::io::AsyncReadExt;

use crate::args::RunArgs;
use crate::direct::EnvironmentProviders;
use crate::error::{CliError, CliResult};
use crate::files::{copy_to_store, file_name, read_schema};
use crate::output::{Output, Progress};
use crate::view::JobView;

/// The bucket name a run's jobs are recorded under: fixed, so that the job's id does
/// not change when the directory is moved.
const LOCAL_BUCKET: &str = "local";
/// The pipeline name a run's flags are written under (`pipelines/run.json`).
const RUN_PIPELINE: &str = "run";
/// Deliveries of one part to collect before what is missing is recorded as errors
/// (the template's ready queue delivers five times).
const COLLECT_ATTEMPTS: u32 = 5;

/// Runs the job of `args` to its end; `Ok(true)` when it completed.
pub async fn run(args: RunArgs, output: &Output) -> CliResult<bool> {
    let spec = spec_of(&args).await?;
    std::fs::create_dir_all(&args.out).map_err(|e| CliError::file(&args.out, e))?;
    let _lock = lock(&args.out)?;
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(&args.out));
    let key = stage_input(store.as_ref(), &args.file, spec.as_ref()).await?;
    let queue = Arc::new(MemoryQueue::new());
    let ctx = Context {
        store,
        bucket: LOCAL_BUCKET.into(),
        queue: queue.clone(),
        poll_jobs: None,
        providers: Arc::new(EnvironmentProviders::default()),
        settings: run_settings(),
        clock: Arc::new(SystemClock),
        ledger: None,
        submit_queue: None,
        metrics: Arc::new(NoMetrics),
    };
    let interval = Duration::from_secs_f64(args.poll_every.max(0.05));
    tokio::select! {
        ended = drive(&ctx, &args.out, &queue, &key, interval, output) => ended,
        _ = tokio::signal::ctrl_c() => Err(CliError::Failed(format!(
            "interrupted: nothing is lost; run the same command again to reattach (state in {})",
            args.out.display()
        ))),
    }
}

/// The pipeline's settings for one process that owns its directory: a lease found in a
/// record is always a dead run's, and one invocation reads the whole upload.
fn run_settings() -> Settings {
    Settings {
        submit_lease: Duration::ZERO,
        collect_lease: Duration::ZERO,
        requeue_after: Duration::ZERO,
        submit_budget: Duration::from_secs(365 * 24 * 3600),
        ..Settings::default()
    }
}

/// Submit (or reattach), then poll and collect until the job is closed.
async fn drive(
    ctx: &Context,
    dir: &Path,
    queue: &MemoryQueue,
    key: &str,
    interval: Duration,
    output: &Output,
) -> CliResult<bool> {
    let object = UploadedObject {
        key: key.to_string(),
        version_id: None,
    };
    let job_id = match submit(ctx, &object).await? {
        SubmitOutcome::Submitted { job_id, .. }
        | SubmitOutcome::Duplicate { job_id }
        | SubmitOutcome::InProgress { job_id }
        | SubmitOutcome::HandedOver { job_id, .. }
        | SubmitOutcome::Failed { job_id, .. } => job_id,
        SubmitOutcome::Ignored { reason, .. } => return Err(CliError::Usage(reason)),
    };
    let mut progress = Progress::default();
    let mut deliveries: HashMap<u32, u32> = HashMap::new();
    loop {
        let record = job::load(ctx.store.as_ref(), &job_id).await?.record;
        let view = JobView::of(&record, ctx.clock.as_ref());
        if view.is_closed() {
            return finish(ctx, dir, &record, output, progress).await;
        }
        if !output.json {
            progress.show(output, view.lines(output));
        }
        poll(ctx).await?;
        for body in queue.drain() {
            let message = ReadyMessage::parse(&body)?;
            let attempt = deliveries.entry(message.part).or_insert(0);
            *attempt += 1;
            if let Err(e) = collect(ctx, &message, *attempt >= COLLECT_ATTEMPTS).await {
                // Delivered again on the next tick, as the ready queue would.
                eprintln!("collect of part {} failed, retrying: {e}", message.part);
            }
        }
        let record = job::load(ctx.store.as_ref(), &job_id).await?.record;
        if !JobView::of(&record, ctx.clock.as_ref()).is_closed() {
            tokio::time::sleep(interval).await;
        }
    }
}

/// Prints the closed job and where its files are.
async fn finish(
    ctx: &Context,
    dir: &Path,
    record: &JobRecord,
    output: &Output,
    mut progress: Progress,
) -> CliResult<bool> {
    let view = JobView::of(record, ctx.clock.as_ref());
    if output.json {
        let (_, summary) = ctx.store.get(&keys::summary(&view.job_id)).await?;
        println!("{}", String::from_utf8_lossy(&summary));
        return Ok(view.ended_well());
    }
    progress.show(output, view.lines(output));
    let files = record.result_files();
    let summary = keys::summary(&view.job_id);
    for (what, keys) in [
        ("summary", std::slice::from_ref(&summary)),
        ("successes", files.successes.as_slice()),
        ("errors", files.errors.as_slice()),
    ] {
        for key in keys {
            println!("{what:<10} {}", dir.join(key).display());
        }
    }
    Ok(view.ended_well())
}

/// The spec from `--spec` and the flags, or None when the file carries its own header.
async fn spec_of(args: &RunArgs) -> CliResult<Option<JobSpec>> {
    let mut spec = match &args.spec {
        Some(path) => {
            let text = std::fs::read(path).map_err(|e| CliError::file(path, e))?;
            serde_json::from_slice::<serde_json::Value>(&text)
                .map_err(|e| CliError::Usage(format!("{}: not JSON: {e}", path.display())))?
        }
        None if args.model.is_none() => return Ok(None),
        None => serde_json::json!({}),
    };
    let fields = spec
        .as_object_mut()
        .ok_or_else(|| CliError::Usage("the spec must be a JSON object".into()))?;
    if let Some(model) = &args.model {
        fields.insert("model".into(), model.as_str().into());
    }
    if let Some(path) = &args.schema {
        let schema = read_schema(path).await?;
        fields.insert("schema_name".into(), schema.name.into());
        fields.insert("schema".into(), schema.schema);
    }
    if let Some(prompt) = &args.system_prompt {
        fields.insert("system_prompt".into(), prompt.as_str().into());
    }
    if let Some(n) = args.rows_per_request {
        fields.insert("rows_per_request".into(), n.into());
    }
    let spec: JobSpec = serde_json::from_value(spec)
        .map_err(|e| CliError::Usage(format!("the job spec is not valid: {e}")))?;
    Ok(Some(spec))
}

/// Puts the input (and the spec) where submit reads them. An input already there with
/// the same bytes is kept, so that its entity tag, and with it the job's id, stays the
/// same for a rerun of the same command.
async fn stage_input(
    store: &dyn ObjectStore,
    file: &Path,
    spec: Option<&JobSpec>,
) -> CliResult<String> {
    let name = file_name(file);
    let key = match spec {
        Some(spec) => {
            let body = Bytes::from(serde_json::to_vec_pretty(spec).expect("a spec serialises"));
            store
                .put(&keys::pipeline_spec(RUN_PIPELINE), body, PutMode::Overwrite)
                .await?;
            format!("{}{RUN_PIPELINE}/{name}", keys::INBOX)
        }
        None => format!("{}{name}", keys::INBOX),
    };
    if !same_bytes(store, &key, file).await? {
        copy_to_store(store, &key, file).await?;
    }
    Ok(key)
}

/// True when the object at `key` holds exactly the bytes of `file`.
async fn same_bytes(store: &dyn ObjectStore, key: &str, file: &Path) -> CliResult<bool> {
    let size = std::fs::metadata(file)
        .map_err(|e| CliError::file(file, e))?
        .len();
    match store.head(key, None).await {
        Ok(meta) if meta.size == size => {}
        Ok(_) | Err(StoreError::NotFound { .. }) => return Ok(false),
        Err(e) => return Err(e.into()),
    }
    use futures::StreamExt;
    let mut stored = store.get_stream(key, None, 0).await?;
    let mut local = tokio::fs::File::open(file)
        .await
        .map_err(|e| CliError::file(file, e))?;
    let mut buffer = Vec::new();
    while let Some(chunk) = stored.next().await {
        let chunk = chunk?;
        buffer.resize(chunk.len(), 0);
        local
            .read_exact(&mut buffer)
            .await
            .map_err(|e| CliError::file(file, e))?;
        if buffer != chunk {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Holds the directory for this process: two runs on one directory would each take
/// the other's leases for dead ones.
fn lock(dir: &Path) -> CliResult<std::fs::File> {
    let hidden = dir.join(".batchline");
    std::fs::create_dir_all(&hidden).map_err(|e| CliError::file(&hidden, e))?;
    let path: PathBuf = hidden.join("lock");
    let file = std::fs::File::create(&path).map_err(|e| CliError::file(&path, e))?;
    file.try_lock().map_err(|_| {
        CliError::Usage(format!(
            "another batchline run is working in {}; wait for it or use another --out",
            dir.display()
        ))
    })?;
    Ok(file)
}
