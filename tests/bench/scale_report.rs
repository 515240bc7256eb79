//! The table `batchline-bench scale` prints: time, memory and requests per function,
//! the job's AWS cost at list prices, the quota, the invariant, the poll tick, and the
//! issue's targets as PASS or MISSED.

use crate::invoke::Function;
use crate::scale::{ScaleFigures, TickFigures};

/// Lambda x86, per GB-second and per request (us-east-1 list prices).
const LAMBDA_GB_SECOND: f64 = 0.000_016_666_7;
const LAMBDA_REQUEST: f64 = 0.20 / 1e6;
/// S3 Standard: PUT, COPY, POST, LIST per request; GET and HEAD per request.
const S3_PUT_LIST: f64 = 0.005 / 1000.0;
const S3_GET: f64 = 0.0004 / 1000.0;
/// SQS standard queue, per request.
const SQS_REQUEST: f64 = 0.40 / 1e6;

/// The targets.
const MAX_RSS_MIB: f64 = 256.0;
const MAX_LAMBDA_USD_PER_MILLION_ROWS: f64 = 0.05;
const MAX_TICK_SECONDS: f64 = 60.0;

const MIB: f64 = 1024.0 * 1024.0;

/// The Lambda, S3 and SQS cost of the job.
#[derive(Debug, Clone, Copy)]
pub struct Cost {
    pub gb_seconds: f64,
    pub compute: f64,
    pub invocations: u64,
    pub lambda_requests: f64,
    pub s3: f64,
    pub sqs: f64,
}

impl Cost {
    pub fn of(figures: &ScaleFigures) -> Self {
        let gb_seconds: f64 = figures
            .functions
            .iter()
            .map(|(function, f)| f.seconds * function.memory_mb() as f64 / 1024.0)
            .sum();
        let invocations = figures.functions.values().map(|f| f.invocations).sum();
        let r = figures.requests;
        Self {
            gb_seconds,
            compute: gb_seconds * LAMBDA_GB_SECOND,
            invocations,
            lambda_requests: invocations as f64 * LAMBDA_REQUEST,
            s3: (r.s3_put + r.s3_list + r.s3_multipart) as f64 * S3_PUT_LIST
                + (r.s3_get + r.s3_head) as f64 * S3_GET,
            sqs: (r.sqs_send + r.sqs_receive + r.sqs_delete) as f64 * SQS_REQUEST,
        }
    }

    /// What the targets count as the pipeline's own Lambda cost.
    pub fn lambda(&self) -> f64 {
        self.compute + self.lambda_requests
    }
}

fn verdict(pass: bool) -> &'static str {
    if pass { "PASS" } else { "MISSED" }
}

/// Prints the whole table as Markdown.
pub fn print(figures: &ScaleFigures) {
    let cost = Cost::of(figures);
    let own_seconds: f64 = figures.functions.values().map(|f| f.seconds).sum();
    let summary = &figures.summary;
    let (succeeded, failed) = (
        summary["succeeded"].as_u64().unwrap_or(0),
        summary["failed"].as_u64().unwrap_or(0),
    );
    println!(
        "\n## bench-scale: {} rows, {:.0} MB upload (OpenAI gpt-4o-mini, invoice schema; submit budget {} s, poll every {} s)\n",
        figures.rows,
        figures.upload_bytes as f64 / 1e6,
        figures.submit_budget_s,
        figures.poll_every.as_secs_f64()
    );
    println!("| figure | value |");
    println!("|---|---|");
    println!("| pipeline's own work (sum of invocation durations) | {own_seconds:.1} s |");
    println!(
        "| end to end (first submit to summary, emulator's batch processing included) | {:.1} s |",
        figures.end_to_end_seconds
    );
    println!("\n| function | invocations | peak RSS (max) | total duration | MemorySize | GB-s |");
    println!("|---|---|---|---|---|---|");
    for function in Function::ALL {
        let f = figures
            .functions
            .get(&function)
            .copied()
            .unwrap_or_default();
        let gb_s = f.seconds * function.memory_mb() as f64 / 1024.0;
        println!(
            "| {function} | {} | {:.1} MiB | {:.1} s | {} MB | {gb_s:.1} |",
            f.invocations,
            f.peak_rss_bytes as f64 / MIB,
            f.seconds,
            function.memory_mb()
        );
    }
    let r = figures.requests;
    println!("\n| requests | count |");
    println!("|---|---|");
    for (name, n) in [
        ("S3 GET", r.s3_get),
        ("S3 PUT", r.s3_put),
        ("S3 LIST (pages)", r.s3_list),
        ("S3 HEAD", r.s3_head),
        ("S3 DELETE", r.s3_delete),
        (
            "S3 multipart (create, part, complete, abort)",
            r.s3_multipart,
        ),
        ("SQS send", r.sqs_send),
        ("SQS receive (event source, non-empty)", r.sqs_receive),
        ("SQS delete (event source)", r.sqs_delete),
    ] {
        println!("| {name} | {n} |");
    }
    println!("\n| cost at list prices | USD |");
    println!("|---|---|");
    println!(
        "| Lambda compute: {:.1} GB-s × $0.0000166667 | {:.5} |",
        cost.gb_seconds, cost.compute
    );
    println!(
        "| Lambda requests: {} × $0.20 per million | {:.6} |",
        cost.invocations, cost.lambda_requests
    );
    println!(
        "| **Lambda, the pipeline's own** | **{:.5}** |",
        cost.lambda()
    );
    println!(
        "| S3 requests (PUT/LIST/multipart $0.005 per 1,000, GET/HEAD $0.0004 per 1,000) | {:.5} |",
        cost.s3
    );
    println!("| SQS requests ($0.40 per million) | {:.6} |", cost.sqs);
    let openai = &figures.quota.openai;
    println!("\n| quota | value |");
    println!("|---|---|");
    println!(
        "| emulator `openai_enqueued_tokens` (a fifth of ≈{} prompt tokens, sampled) | limit {}, peak {}, refused {}, admitted {} |",
        figures.estimated_prompt_tokens,
        openai.limit.unwrap_or(0),
        openai.peak,
        openai.refused,
        openai.admitted
    );
    println!(
        "| the job's input tokens (summary `usage`) | {} |",
        summary["usage"]["input_tokens"]
    );
    let real = summary["usage"]["input_tokens"]
        .as_u64()
        .unwrap_or(0)
        .max(1);
    println!(
        "| the pipeline's token estimate (sum of the parts' `estimated_tokens`) | {} ({:.2}× the real count) |",
        figures.part_token_estimate,
        figures.part_token_estimate as f64 / real as f64
    );
    println!("| summary `quota_waits` | {} |", summary["quota_waits"]);
    println!(
        "| invariant: succeeded + failed = rows | {succeeded} + {failed} = {} (rows {}), `invariant_holds` {} |",
        succeeded + failed,
        figures.rows,
        summary["invariant_holds"]
    );
    if let Some(tick) = &figures.tick {
        print_tick(tick);
    }
    print_targets(figures, &cost);
}

fn print_tick(tick: &TickFigures) {
    println!(
        "\n| poll tick over {} open parts ({} jobs × {}) | wall | peak RSS | S3 GET / PUT / LIST |",
        tick.parts,
        tick.jobs,
        tick.parts / tick.jobs.max(1)
    );
    println!("|---|---|---|---|");
    for (name, run) in [
        ("first tick (every record written)", &tick.first),
        ("second tick (nothing changed)", &tick.second),
    ] {
        println!(
            "| {name} | {:.1} s | {:.1} MiB | {} / {} / {} |",
            run.seconds,
            run.peak_rss_bytes as f64 / MIB,
            run.requests.s3_get,
            run.requests.s3_put,
            run.requests.s3_list
        );
    }
    println!(
        "\nThe tick polls inline (`POLL_JOBS_QUEUE_URL` unset); fanned out, a tick is one LIST \
         page per 1,000 jobs and one SendMessageBatch per 10, and poll's workers do this work \
         in parallel."
    );
}

fn print_targets(figures: &ScaleFigures, cost: &Cost) {
    println!("\n| target | measured | verdict |");
    println!("|---|---|---|");
    for function in Function::ALL {
        let mib = figures
            .functions
            .get(&function)
            .map_or(0.0, |f| f.peak_rss_bytes as f64 / MIB);
        println!(
            "| peak memory of {function} ≤ {MAX_RSS_MIB} MiB | {mib:.1} MiB | {} |",
            verdict(mib <= MAX_RSS_MIB)
        );
    }
    let per_million = cost.lambda() * 1e6 / figures.rows as f64;
    let scaled = if figures.rows == 1_000_000 {
        String::new()
    } else {
        format!(" (scaled from {} rows)", figures.rows)
    };
    println!(
        "| Lambda cost of a million rows < ${MAX_LAMBDA_USD_PER_MILLION_ROWS} | ${per_million:.4}{scaled} | {} |",
        verdict(per_million < MAX_LAMBDA_USD_PER_MILLION_ROWS)
    );
    match &figures.tick {
        Some(tick) => {
            let seconds = tick.first.seconds.max(tick.second.seconds);
            // Fewer parts than the target names say nothing about it.
            let verdict = match tick.parts >= 10_000 {
                true => verdict(seconds < MAX_TICK_SECONDS),
                false => "not measured at 10,000",
            };
            println!(
                "| poll tick over {} open parts < {MAX_TICK_SECONDS} s | {seconds:.1} s (slower of the two) | {verdict} |",
                tick.parts
            );
        }
        None => {
            println!("| poll tick over 10,000 open parts < {MAX_TICK_SECONDS} s | not run | — |")
        }
    }
}
