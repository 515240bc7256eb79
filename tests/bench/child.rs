//! The measured work, each run in a process of its own (`batchline-bench child …`) so
//! that its peak RSS is its own: build, parse + validate, collect end to end.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use batchline::build::{BatchBuilder, build_batch};
use batchline::model::{ModelRef, ProviderKind};
use batchline::pipeline::{CollectOutcome, Context, ReadyMessage, Settings, collect};
use batchline::provider::openai;
use batchline::queue::MemoryQueue;
use batchline::results::{Outcome, ResultParser};
use batchline::storage::S3Store;
use batchline::{GenerationParams, Request, Role};
use batchline_emulator::harness::{EmulatorProviders, moto_sdk_config};
use batchline_emulator::workload;
use serde::de::IgnoredAny;

use crate::measure::{Report, own_cpu_seconds, own_peak_rss_bytes};

/// The model each provider is benchmarked with.
pub fn model_for(provider: ProviderKind) -> &'static str {
    match provider {
        ProviderKind::OpenAi => "openai/gpt-4o-mini",
        ProviderKind::Anthropic => "anthropic/claude-sonnet-4-5",
        ProviderKind::Vertex => "google/gemini-2.5-flash",
        ProviderKind::Gemini => "gemini/gemini-2.5-flash",
        ProviderKind::Bedrock => "bedrock/amazon.nova-lite-v1:0",
    }
}

/// `child build PROVIDER REQUESTS_FILE`: every request into the provider's batch input.
pub fn build(provider: ProviderKind, requests_file: &Path) -> Result<Report, String> {
    let requests: Vec<Request> = read_lines(requests_file)?
        .iter()
        .map(|line| serde_json::from_str(line).map_err(|e| format!("request line: {e}")))
        .collect::<Result<_, _>>()?;
    let model: ModelRef = model_for(provider).parse().map_err(|e| format!("{e}"))?;
    let schema = workload::invoice_schema();
    let started = Instant::now();
    let plan = build_batch(&model, &schema, &workload::generation_params(), &requests)
        .map_err(|e| e.to_string())?;
    let seconds = started.elapsed().as_secs_f64();
    let built: usize = plan.parts.iter().map(|p| p.custom_ids.len()).sum();
    if built != requests.len() {
        return Err(format!("built {built} of {} requests", requests.len()));
    }
    Ok(Report {
        seconds,
        bytes: plan.parts.iter().map(|p| p.body.len() as u64).sum(),
        items: built as u64,
        peak_rss_bytes: own_peak_rss_bytes()?,
        cpu_seconds: own_cpu_seconds(),
    })
}

/// `child build-packed PROVIDER REQUESTS_FILE ROWS_PER_REQUEST`: the same rows, each
/// reduced to its user text with the system prompt in the generation parameters (what
/// packing needs), built `rows_per_request` to a request; items are rows.
pub fn build_packed(
    provider: ProviderKind,
    requests_file: &Path,
    rows_per_request: usize,
) -> Result<Report, String> {
    let rows: Vec<Request> = read_lines(requests_file)?
        .iter()
        .map(|line| {
            let mut row: Request =
                serde_json::from_str(line).map_err(|e| format!("request line: {e}"))?;
            row.messages.retain(|m| m.role == Role::User);
            Ok(row)
        })
        .collect::<Result<_, String>>()?;
    let model: ModelRef = model_for(provider).parse().map_err(|e| format!("{e}"))?;
    let schema = workload::invoice_schema();
    let params = GenerationParams {
        system_prompt: Some(workload::SYSTEM_PROMPT.to_string()),
        max_tokens: 4096,
        ..workload::generation_params()
    };
    let started = Instant::now();
    let mut builder = BatchBuilder::packed(&model, &schema.into(), &params, rows_per_request)
        .map_err(|e| e.to_string())?;
    let mut parts = Vec::new();
    for row in &rows {
        parts.extend(builder.push(row).map_err(|e| e.to_string())?);
    }
    parts.extend(builder.finish());
    let seconds = started.elapsed().as_secs_f64();
    let built: usize = parts.iter().map(|p| p.custom_ids.len()).sum();
    if built != rows.len() {
        return Err(format!("built {built} of {} rows", rows.len()));
    }
    Ok(Report {
        seconds,
        bytes: parts.iter().map(|p| p.body.len() as u64).sum(),
        items: built as u64,
        peak_rss_bytes: own_peak_rss_bytes()?,
        cpu_seconds: own_cpu_seconds(),
    })
}

/// `child parse PROVIDER RESULTS_FILE ROWS`: streams the file through parsing and
/// schema validation; every line must be a success.
pub fn parse(provider: ProviderKind, results_file: &Path, rows: usize) -> Result<Report, String> {
    // Only Vertex lines need the part's ids (they carry a row number instead).
    let row_ids: Arc<[String]> = if provider == ProviderKind::Vertex {
        (0..rows).map(workload::custom_id).collect()
    } else {
        Arc::from([])
    };
    let parser = ResultParser::new(provider, &workload::invoice_schema(), row_ids)
        .map_err(|e| e.to_string())?;
    let file = File::open(results_file).map_err(|e| format!("{}: {e}", results_file.display()))?;
    let bytes = file.metadata().map_err(|e| e.to_string())?.len();
    let started = Instant::now();
    let mut items = 0u64;
    for outcome in parser.parse_reader(BufReader::with_capacity(1 << 20, file)) {
        if let Outcome::Error(failure) = outcome {
            return Err(format!("line {:?} failed: {failure:?}", failure.line));
        }
        items += 1;
    }
    parse_report(started, bytes, items, rows)
}

/// The report of a parse that started at `started` over `bytes` and yielded `items`
/// rows, all `rows` expected.
fn parse_report(started: Instant, bytes: u64, items: u64, rows: usize) -> Result<Report, String> {
    let seconds = started.elapsed().as_secs_f64();
    if items != rows as u64 {
        return Err(format!("parsed {items} rows, expected {rows}"));
    }
    Ok(Report {
        seconds,
        bytes,
        items,
        peak_rss_bytes: own_peak_rss_bytes()?,
        cpu_seconds: own_cpu_seconds(),
    })
}

/// `child parse-packed ROWS_PER_REQUEST RESULTS_FILE ROWS`: an OpenAI results file of
/// packed requests (`rows-<k>`, `ROWS_PER_REQUEST` answers each) parsed, split back
/// and validated row by row; every row must be a success. Items are rows.
pub fn parse_packed(
    results_file: &Path,
    rows: usize,
    rows_per_request: usize,
) -> Result<Report, String> {
    let requests: Arc<[Vec<String>]> = (0..rows)
        .collect::<Vec<_>>()
        .chunks(rows_per_request)
        .map(|chunk| chunk.iter().map(|&i| workload::custom_id(i)).collect())
        .collect();
    let parser = ResultParser::packed(
        ProviderKind::OpenAi,
        &workload::invoice_schema().into(),
        requests,
    )
    .map_err(|e| e.to_string())?;
    let file = File::open(results_file).map_err(|e| format!("{}: {e}", results_file.display()))?;
    let bytes = file.metadata().map_err(|e| e.to_string())?.len();
    // Read as it is parsed, as `parse` reads, so that the two compare like for like.
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let started = Instant::now();
    let (mut line, mut outcomes) = (Vec::new(), Vec::with_capacity(rows_per_request));
    let (mut items, mut line_no) = (0u64, 0u64);
    while reader
        .read_until(b'\n', &mut line)
        .map_err(|e| e.to_string())?
        > 0
    {
        line_no += 1;
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        parser.parse_line_into(line_no, text, &mut outcomes);
        for outcome in outcomes.drain(..) {
            if let Outcome::Error(failure) = outcome {
                return Err(format!("row {} failed: {failure:?}", failure.custom_id));
            }
            items += 1;
        }
        line.clear();
    }
    parse_report(started, bytes, items, rows)
}

/// How far `child parse-stage` takes each OpenAI results line, to show where parse
/// time goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseStage {
    /// serde_json checks the line's syntax and keeps nothing (`IgnoredAny`).
    Syntax,
    /// The envelope read into the decoder's borrowed structs; the answer is not parsed.
    Envelope,
    /// What `parse_reader` does per line: envelope, answer and schema validation.
    Full,
}

impl ParseStage {
    pub const ALL: [ParseStage; 3] = [Self::Syntax, Self::Envelope, Self::Full];

    pub fn name(self) -> &'static str {
        match self {
            Self::Syntax => "syntax",
            Self::Envelope => "envelope",
            Self::Full => "full",
        }
    }

    pub fn from_name(name: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|stage| stage.name() == name)
            .ok_or_else(|| format!("unknown parse stage {name:?}"))
    }
}

/// `child parse-stage STAGE RESULTS_FILE ROWS`: an OpenAI results file, each line
/// taken only as far as `stage`. Lines are read the same way for every stage (copied
/// out of a 1 MiB buffer), so the stages differ only in what they do with a line.
pub fn parse_stage(stage: ParseStage, results_file: &Path, rows: usize) -> Result<Report, String> {
    let parser = ResultParser::new(
        ProviderKind::OpenAi,
        &workload::invoice_schema(),
        Arc::from([]),
    )
    .map_err(|e| e.to_string())?;
    let file = File::open(results_file).map_err(|e| format!("{}: {e}", results_file.display()))?;
    let bytes = file.metadata().map_err(|e| e.to_string())?.len();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut line = Vec::with_capacity(4096);
    let started = Instant::now();
    let mut items = 0u64;
    loop {
        line.clear();
        if reader
            .read_until(b'\n', &mut line)
            .map_err(|e| e.to_string())?
            == 0
        {
            break;
        }
        let text = line.trim_ascii();
        if text.is_empty() {
            continue;
        }
        items += 1;
        let readable = match stage {
            ParseStage::Syntax => serde_json::from_slice::<IgnoredAny>(text).is_ok(),
            ParseStage::Envelope => openai::decode::decode(text).is_ok(),
            ParseStage::Full => parser.parse_line(items, text).is_success(),
        };
        if !readable {
            return Err(format!("line {items} did not get through {}", stage.name()));
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    if items != rows as u64 {
        return Err(format!("read {items} lines, expected {rows}"));
    }
    Ok(Report {
        seconds,
        bytes,
        items,
        peak_rss_bytes: own_peak_rss_bytes()?,
        cpu_seconds: own_cpu_seconds(),
    })
}

/// Where the collect child finds moto, the emulator and the prepared job.
pub struct CollectTarget<'a> {
    pub moto_url: &'a str,
    pub emulator_url: &'a str,
    pub bucket: &'a str,
    pub job_id: &'a str,
    /// Size of the part's results at the provider.
    pub results_bytes: u64,
}

/// `child collect …`: one ended part through `batchline::pipeline::collect`, from the
/// emulator's results download into S3 multipart uploads on moto.
pub fn collect_part(target: &CollectTarget<'_>) -> Result<Report, String> {
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let sdk = moto_sdk_config(target.moto_url);
        let ctx = Context {
            store: Arc::new(S3Store::new(
                S3Store::client_from(&sdk, true),
                target.bucket,
            )),
            bucket: target.bucket.to_string(),
            queue: Arc::new(MemoryQueue::default()),
            poll_jobs: None,
            providers: Arc::new(EmulatorProviders::new(target.emulator_url)),
            settings: Settings::default(),
            clock: Arc::new(batchline::clock::SystemClock),
            ledger: None,
            submit_queue: None,
            metrics: Arc::new(batchline::metrics::MemorySink::new()),
        };
        let message = ReadyMessage {
            job_id: target.job_id.to_string(),
            part: 0,
        };
        let started = Instant::now();
        let outcome = collect(&ctx, &message, true)
            .await
            .map_err(|e| e.to_string())?;
        let seconds = started.elapsed().as_secs_f64();
        match outcome {
            CollectOutcome::Collected {
                succeeded,
                failed: 0,
                job_closed: true,
            } => Ok(Report {
                seconds,
                bytes: target.results_bytes,
                items: succeeded,
                peak_rss_bytes: own_peak_rss_bytes()?,
                cpu_seconds: own_cpu_seconds(),
            }),
            other => Err(format!("collect ended with {other:?}")),
        }
    })
}

fn read_lines(path: &Path) -> Result<Vec<String>, String> {
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    BufReader::new(file)
        .lines()
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))
}
