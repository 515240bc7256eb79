//! Stack mode: the deployed pipeline's jobs, read from its bucket with the caller's
//! own AWS access (profiles, SSO, environment credentials, as every AWS tool reads them).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_types::region::Region;
use batchline::clock::SystemClock;
use batchline::pipeline::cancel::{CancelRequest, request_cancel};
use batchline::pipeline::input::{InputLine, LineReader};
use batchline::pipeline::job::{self, JobRecord, SourceObject, keys};
use batchline::pipeline::spec::bounds::MAX_LINE_BYTES;
use batchline::provider::http::error_chain;
use batchline::storage::{ObjectStore, S3Store};
use futures::{StreamExt, TryStreamExt};
use serde_json::Value;

use crate::args::{
    JobAction, JobArgs, JobsArgs, ResultsFormat, StackArgs, StatusFilter, UploadArgs,
};
use crate::error::{CliError, CliResult};
use crate::files::{Sink, copy_to_store, file_name};
use crate::output::{Output, Progress, Table, cost, duration};
use crate::view::JobView;

/// The stack output that names the data bucket.
const BUCKET_OUTPUT: &str = "DataBucketName";
/// Job records read at once by `jobs`.
const CONCURRENT_READS: usize = 16;

/// The deployed pipeline's bucket, reached with the caller's AWS access.
#[derive(Debug)]
pub struct Stack {
    store: Arc<dyn ObjectStore>,
    bucket: String,
    clock: SystemClock,
}

impl Stack {
    /// Connects with `args`: the bucket from `--bucket`, `BATCHLINE_BUCKET` or the
    /// stack's outputs.
    pub async fn connect(args: &StackArgs) -> CliResult<Self> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(batchline::aws::https_client());
        if let Some(profile) = &args.profile {
            loader = loader.profile_name(profile);
        }
        if let Some(region) = &args.region {
            loader = loader.region(Region::new(region.clone()));
        }
        let sdk = loader.load().await;
        let bucket = match (&args.bucket, &args.stack) {
            (Some(bucket), _) => bucket.clone(),
            (None, Some(stack)) => bucket_of_stack(&sdk, stack).await?,
            (None, None) => {
                return Err(CliError::Usage(
                    "which pipeline? give --bucket, BATCHLINE_BUCKET or --stack".into(),
                ));
            }
        };
        // A local endpoint (moto) wants path-style addressing; AWS takes either.
        let client = S3Store::client_from(&sdk, sdk.endpoint_url().is_some());
        Ok(Self {
            store: Arc::new(S3Store::new(client, bucket.clone())),
            bucket,
            clock: SystemClock,
        })
    }

    async fn record(&self, job_id: &str) -> CliResult<JobRecord> {
        Ok(job::load(self.store.as_ref(), job_id).await?.record)
    }

    /// Refreshes the job's view until it is closed; true when it completed.
    async fn follow(&self, job_id: &str, every: f64, output: &Output) -> CliResult<bool> {
        let mut progress = Progress::default();
        loop {
            let view = JobView::of(&self.record(job_id).await?, &self.clock);
            if view.is_closed() {
                if output.json {
                    output.print_json(&view);
                } else {
                    progress.show(output, view.lines(output));
                }
                return Ok(view.ended_well());
            }
            if !output.json {
                progress.show(output, view.lines(output));
            }
            tokio::time::sleep(Duration::from_secs_f64(every.max(0.05))).await;
        }
    }
}

async fn bucket_of_stack(sdk: &aws_types::SdkConfig, stack: &str) -> CliResult<String> {
    let described = aws_sdk_cloudformation::Client::new(sdk)
        .describe_stacks()
        .stack_name(stack)
        .send()
        .await
        .map_err(|e| CliError::Aws(format!("describing stack {stack}: {}", error_chain(&e))))?;
    described
        .stacks()
        .iter()
        .flat_map(|s| s.outputs())
        .find(|o| o.output_key() == Some(BUCKET_OUTPUT))
        .and_then(|o| o.output_value().map(str::to_string))
        .ok_or_else(|| CliError::Usage(format!("stack {stack} has no {BUCKET_OUTPUT} output")))
}

/// `batchline jobs`.
pub async fn jobs(args: JobsArgs, output: &Output) -> CliResult<bool> {
    let stack = Stack::connect(&args.stack).await?;
    let ids: Vec<String> = stack
        .store
        .list(keys::JOBS)
        .await?
        .into_iter()
        .filter_map(|key| {
            key.strip_prefix(keys::JOBS)?
                .strip_suffix("/job.json")
                .map(str::to_string)
        })
        .collect();
    let mut views: Vec<JobView> = futures::stream::iter(ids)
        .map(|id| {
            let stack = &stack;
            async move { stack.record(&id).await }
        })
        .buffer_unordered(CONCURRENT_READS)
        .map_ok(|record| JobView::of(&record, &stack.clock))
        .try_filter(|view| {
            let keep = args.pipeline.as_deref().is_none_or(|p| p == view.pipeline)
                && args
                    .status
                    .is_none_or(|status| matches_status(status, &view.status));
            async move { keep }
        })
        .try_collect()
        .await?;
    views.sort_by(|a, b| b.created_at.cmp(&a.created_at));
    if output.json {
        output.print_json(&views);
        return Ok(true);
    }
    let mut table = Table::new(vec![
        "job",
        "pipeline",
        "model",
        "state",
        "rows",
        "succeeded",
        "failed",
        "cost",
        "age",
    ]);
    for view in &views {
        table.row(vec![
            view.job_id.clone(),
            view.pipeline.clone(),
            view.model.clone().unwrap_or_else(|| "-".into()),
            output.state(&view.status),
            view.rows.to_string(),
            view.succeeded.to_string(),
            view.failed.to_string(),
            cost(view.cost_usd),
            duration(view.age_seconds as i64),
        ]);
    }
    table.print();
    Ok(true)
}

fn matches_status(filter: StatusFilter, status: &str) -> bool {
    match filter {
        StatusFilter::Open => matches!(status, "submitting" | "open"),
        StatusFilter::Completed => status == "completed",
        StatusFilter::Failed => status == "failed",
        StatusFilter::Cancelled => status == "cancelled",
    }
}

/// `batchline job ID [--watch | cancel | results]`.
pub async fn job(args: JobArgs, output: &Output) -> CliResult<bool> {
    let stack = Stack::connect(&args.stack).await?;
    match args.action {
        None if args.watch => stack.follow(&args.id, args.every, output).await,
        None => {
            let view = JobView::of(&stack.record(&args.id).await?, &stack.clock);
            if output.json {
                output.print_json(&view);
            } else {
                for line in view.lines(output) {
                    println!("{line}");
                }
            }
            Ok(!matches!(view.status.as_str(), "failed" | "cancelled"))
        }
        Some(JobAction::Cancel { wait }) => {
            let answer = request_cancel(stack.store.as_ref(), &stack.clock, &args.id).await?;
            let (answer, said) = match answer {
                CancelRequest::Requested { requested_at } => (
                    "requested",
                    format!("requested at {requested_at}: poll cancels the open batches next tick"),
                ),
                CancelRequest::AlreadyRequested { requested_at } => (
                    "already_requested",
                    format!("already requested at {requested_at}"),
                ),
                CancelRequest::AlreadyClosed { status } => (
                    "already_closed",
                    format!("closed already ({})", JobView::status_name(status)),
                ),
                other => ("other", format!("{other:?}")),
            };
            if wait {
                eprintln!("job {}: cancellation {said}", args.id);
                return stack
                    .follow(&args.id, args.every, output)
                    .await
                    .map(|_| true);
            }
            if output.json {
                let json =
                    serde_json::json!({"job_id": args.id, "cancellation": answer, "message": said});
                output.print_json(&json);
            } else {
                println!("job {}: cancellation {said}", args.id);
            }
            Ok(true)
        }
        Some(JobAction::Results {
            format,
            errors,
            output: path,
        }) => {
            let record = stack.record(&args.id).await?;
            let written = write_results(&stack, &record, format, errors, &path).await?;
            eprintln!(
                "{written} {} -> {}",
                if errors { "errors" } else { "successes" },
                path.display()
            );
            Ok(true)
        }
    }
}

/// Streams the job's result files into one file at `path`; returns the rows written.
async fn write_results(
    stack: &Stack,
    record: &JobRecord,
    format: ResultsFormat,
    errors: bool,
    path: &Path,
) -> CliResult<u64> {
    let files = record.result_files();
    let keys: Vec<&String> = match errors {
        true => files.errors.iter().collect(),
        false => files
            .successes
            .iter()
            .filter(|k| k.ends_with(".jsonl"))
            .collect(),
    };
    let columns = match format {
        ResultsFormat::Jsonl => None,
        ResultsFormat::Csv => Some(Columns::of(record, errors)),
    };
    let mut sink = Sink::open(path).await?;
    if let Some(columns) = &columns {
        sink.write(&columns.header(), path).await?;
    }
    let mut rows = 0;
    for key in keys {
        let stream = stack.store.get_stream(key, None, 0).await?;
        let unreadable = |reason: String| CliError::Failed(format!("{key}: {reason}"));
        let mut lines = LineReader::open(key, stream, MAX_LINE_BYTES)
            .await
            .map_err(|e| unreadable(e.to_string()))?;
        let mut out = Vec::new();
        while let Some(line) = lines
            .next_line()
            .await
            .map_err(|e| unreadable(e.to_string()))?
        {
            let InputLine::Line { bytes: line, .. } = line else {
                return Err(unreadable(format!("{line:?}")));
            };
            rows += 1;
            match &columns {
                None => {
                    out.extend_from_slice(&line);
                    out.push(b'\n');
                }
                Some(columns) => columns.row(&line, &mut out),
            }
            if out.len() > 1 << 20 {
                sink.write(&out, path).await?;
                out.clear();
            }
        }
        sink.write(&out, path).await?;
    }
    sink.finish(path).await?;
    Ok(rows)
}

/// The CSV columns of a result file: JSON paths from a line's top level.
struct Columns {
    names: Vec<String>,
    paths: Vec<Vec<String>>,
}

impl Columns {
    /// `custom_id`, the spec's kept input columns, then what the record holds: for
    /// successes one column per property of the answer schema (in the schema's order),
    /// or the whole answer where there is no schema; for errors the type, message and line.
    fn of(record: &JobRecord, errors: bool) -> Self {
        let spec = record.spec.as_ref();
        let kept = spec.map(|spec| spec.keep.clone()).unwrap_or_default();
        let properties: Vec<String> = spec
            .and_then(|spec| spec.schema.as_ref())
            .and_then(|schema| schema.get("properties"))
            .and_then(Value::as_object)
            .map(|props| props.keys().cloned().collect())
            .unwrap_or_default();
        let top = |name: &str| (name.to_string(), vec![name.to_string()]);
        let mut columns: Vec<(String, Vec<String>)> = vec![top("custom_id")];
        columns.extend(kept.iter().map(|name| top(name)));
        if errors {
            columns.extend(["error_type", "error_message", "line"].map(top));
        } else if properties.is_empty() {
            columns.extend(["result", "text"].map(top));
        } else {
            columns.extend(
                properties
                    .into_iter()
                    .map(|p| (p.clone(), vec!["result".to_string(), p])),
            );
        }
        let (names, paths) = columns.into_iter().unzip();
        Self { names, paths }
    }

    fn header(&self) -> Vec<u8> {
        let mut out = Vec::new();
        write_csv_row(self.names.iter().map(String::as_str), &mut out);
        out
    }

    fn row(&self, line: &[u8], out: &mut Vec<u8>) {
        let value: Value = serde_json::from_slice(line).unwrap_or(Value::Null);
        let cells: Vec<String> = self
            .paths
            .iter()
            .map(
                |path| match path.iter().try_fold(&value, |v, key| v.get(key)) {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                },
            )
            .collect();
        write_csv_row(cells.iter().map(String::as_str), out);
    }
}

/// One CSV record (RFC 4180): a cell with a comma, quote or line break is quoted.
fn write_csv_row<'a>(cells: impl Iterator<Item = &'a str>, out: &mut Vec<u8>) {
    for (i, cell) in cells.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        if cell.contains([',', '"', '\n', '\r']) {
            out.push(b'"');
            out.extend_from_slice(cell.replace('"', "\"\"").as_bytes());
            out.push(b'"');
        } else {
            out.extend_from_slice(cell.as_bytes());
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// `batchline upload`.
pub async fn upload(args: UploadArgs, output: &Output) -> CliResult<bool> {
    let stack = Stack::connect(&args.stack).await?;
    let name = file_name(&args.file);
    let key = match &args.pipeline {
        Some(pipeline) => format!("{}{pipeline}/{name}", keys::INBOX),
        None => format!("{}{name}", keys::INBOX),
    };
    copy_to_store(stack.store.as_ref(), &key, &args.file).await?;
    let meta = stack.store.head(&key, None).await?;
    let job_id = SourceObject {
        bucket: stack.bucket.clone(),
        key: key.clone(),
        etag: meta.etag,
        version_id: meta.version_id,
    }
    .job_id();
    if output.json && !args.wait {
        output.print_json(&serde_json::json!({ "key": key, "job_id": job_id }));
    } else {
        eprintln!("uploaded s3://{}/{key}: job {job_id}", stack.bucket);
    }
    if !args.wait {
        return Ok(true);
    }
    // The job record appears once the submit function has taken the upload.
    let mut waited = Duration::ZERO;
    while stack
        .store
        .head(&keys::job_record(&job_id), None)
        .await
        .is_err()
    {
        if waited > Duration::from_secs(15 * 60) {
            return Err(CliError::Failed(format!(
                "no job {job_id} after 15 minutes: is the bucket's inbox wired to the submit function?"
            )));
        }
        let step = Duration::from_secs_f64(args.every.max(0.05));
        tokio::time::sleep(step).await;
        waited += step;
    }
    stack.follow(&job_id, args.every, output).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_are_quoted_only_when_they_must_be() {
        let mut out = Vec::new();
        write_csv_row(["a", "b,c", "say \"hi\"", "x\ny"].into_iter(), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "a,\"b,c\",\"say \"\"hi\"\"\",\"x\ny\"\r\n"
        );
    }
}
