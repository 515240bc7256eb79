//! `make bench`: batchline's throughput, memory and cold start, side by side with the
//! Python reference library (`instructor`'s batch module), printed as one table.
//!
//! Every figure is the median (with min and max) of several runs, each in a fresh
//! process so that its peak RSS is its own; build and parse runs are pinned to one
//! core. All data is generated deterministically (`batchline_emulator::workload`).
//!
//! ```text
//! batchline-bench [--runs N] [--quick] [--only build,parse,collect,coldstart,cost]
//!                 [--python PATH | --no-python] [--keep-data]
//! ```
//!
//! `batchline-bench scale [--rows N] …` (`make bench-scale`) is a run of its own: one
//! job of a million rows through moto, the emulator and the pipeline's functions
//! ([`scale`]).
//!
//! `cost` (section 5) is not a timing: it bills one invoice workload through the
//! emulator's token accounting, the reference library's requests against batchline's
//! packed and cached ones ([`cost`]).

mod child;
mod coldstart;
mod collect_env;
mod cost;
mod invoices;
mod invoke;
mod measure;
mod report;
mod scale;
mod scale_report;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use batchline::model::ProviderKind;
use batchline::pipeline::spec::ResultFormat;
use batchline_emulator::workload::{self, FileSize};
use bytes::Bytes;

use collect_env::SuccessesWritten;
use measure::{Figures, Report, run_child};
use report::{ColdStart, CollectFigures, CollectLine, Measured, Table};

/// The providers the reference library's batch module supports.
const REFERENCE_PROVIDERS: [ProviderKind; 2] = [ProviderKind::OpenAi, ProviderKind::Anthropic];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("child") => child_mode(&args[1..]),
        Some("scale") => run_scale(&args[1..]),
        _ => Options::parse(&args).and_then(|options| run_bench(&options)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("batchline-bench: {message}");
            ExitCode::FAILURE
        }
    }
}

/// `batchline-bench scale …`: the million-row job, printed as its own table.
fn run_scale(args: &[String]) -> Result<(), String> {
    let options = scale::Options::parse(args)?;
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let figures = scale::run(&options, &me)?;
    scale_report::print(&figures);
    Ok(())
}

/// `child build|parse|parse-stage|collect|invoke …`: one measured run; prints its report.
fn child_mode(args: &[String]) -> Result<(), String> {
    let arg = |i: usize| {
        args.get(i)
            .map(String::as_str)
            .ok_or_else(|| format!("child: missing argument {i} in {args:?}"))
    };
    let number = |i: usize| -> Result<u64, String> {
        arg(i)?
            .parse()
            .map_err(|e| format!("argument {i} of {args:?}: {e}"))
    };
    let provider =
        |i: usize| -> Result<ProviderKind, String> { arg(i)?.parse().map_err(|e| format!("{e}")) };
    if arg(0)? == "invoke" {
        let function = invoke::Function::from_name(arg(1)?)?;
        let invocation = invoke::invoke(function, Path::new(arg(2)?))?;
        println!(
            "{}",
            serde_json::to_string(&invocation).map_err(|e| e.to_string())?
        );
        return Ok(());
    }
    let report = match arg(0)? {
        "build" => child::build(provider(1)?, Path::new(arg(2)?))?,
        "build-packed" => {
            child::build_packed(provider(1)?, Path::new(arg(2)?), number(3)? as usize)?
        }
        "parse" => child::parse(provider(1)?, Path::new(arg(2)?), number(3)? as usize)?,
        "parse-packed" => {
            child::parse_packed(Path::new(arg(2)?), number(3)? as usize, number(1)? as usize)?
        }
        "parse-stage" => child::parse_stage(
            child::ParseStage::from_name(arg(1)?)?,
            Path::new(arg(2)?),
            number(3)? as usize,
        )?,
        "collect" => child::collect_part(&child::CollectTarget {
            moto_url: arg(1)?,
            emulator_url: arg(2)?,
            bucket: arg(3)?,
            job_id: arg(4)?,
            results_bytes: number(5)?,
        })?,
        other => return Err(format!("unknown child mode {other:?}")),
    };
    report.print();
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    Build,
    Parse,
    Collect,
    ColdStart,
    Cost,
}

struct Options {
    runs: usize,
    /// Requests per build, lines per per-provider results file, rows of the collect part.
    rows: usize,
    /// Size of the large OpenAI results file and of the collect part's results.
    big_bytes: u64,
    sections: Vec<Section>,
    python: Option<PathBuf>,
    /// Leave the generated data in place (its directory is printed) for profiling.
    keep_data: bool,
}

impl Options {
    fn parse(args: &[String]) -> Result<Self, String> {
        let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut options = Self {
            runs: 5,
            rows: 50_000,
            big_bytes: 1_000_000_000,
            sections: vec![
                Section::Build,
                Section::Parse,
                Section::Collect,
                Section::ColdStart,
                Section::Cost,
            ],
            python: Some(workspace.join(".venv-bench/bin/python")),
            keep_data: false,
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let mut value = || {
                args.next()
                    .cloned()
                    .ok_or_else(|| format!("{arg} needs a value"))
            };
            match arg.as_str() {
                "--runs" => options.runs = value()?.parse().map_err(|e| format!("--runs: {e}"))?,
                // A smoke run: small data, three runs (figures not comparable).
                "--quick" => {
                    options.runs = 3;
                    options.rows = 2_000;
                    options.big_bytes = 20_000_000;
                }
                "--only" => {
                    options.sections = value()?
                        .split(',')
                        .map(|name| match name {
                            "build" => Ok(Section::Build),
                            "parse" => Ok(Section::Parse),
                            "collect" => Ok(Section::Collect),
                            "coldstart" => Ok(Section::ColdStart),
                            "cost" => Ok(Section::Cost),
                            other => Err(format!("unknown section {other:?}")),
                        })
                        .collect::<Result<_, _>>()?
                }
                "--python" => options.python = Some(PathBuf::from(value()?)),
                "--no-python" => options.python = None,
                "--keep-data" => options.keep_data = true,
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        if options.runs == 0 {
            return Err("--runs must be at least 1".into());
        }
        Ok(options)
    }

    fn wants(&self, section: Section) -> bool {
        self.sections.contains(&section)
    }
}

/// The generated inputs, in a temporary directory removed at the end.
struct Data {
    dir: tempfile::TempDir,
    rows: usize,
    big_rows: usize,
}

impl Data {
    fn requests(&self) -> PathBuf {
        self.dir.path().join("requests.jsonl")
    }

    fn results(&self, provider: ProviderKind) -> PathBuf {
        self.dir.path().join(format!("results-{provider}.jsonl"))
    }

    /// OpenAI results of the same rows packed [`report::PACKED_ROWS`] to a request.
    fn packed_results(&self) -> PathBuf {
        self.dir.path().join("results-openai-packed.jsonl")
    }

    fn big_results(&self) -> PathBuf {
        self.dir.path().join("results-openai-big.jsonl")
    }

    fn generate(options: &Options) -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("batchline-bench-")
            .tempdir()
            .map_err(|e| format!("temporary directory: {e}"))?;
        let mut data = Self {
            dir,
            rows: options.rows,
            big_rows: 0,
        };
        let write = |path: &Path, fill: &dyn Fn(&mut BufWriter<File>) -> std::io::Result<usize>| {
            let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
            let rows = fill(&mut out)?;
            out.flush()?;
            Ok::<usize, std::io::Error>(rows)
        };
        let io = |e: std::io::Error| format!("generating data: {e}");
        if options.wants(Section::Build) {
            write(&data.requests(), &|out| {
                for i in 0..options.rows {
                    workload::write_input_line(i, out)?;
                }
                Ok(options.rows)
            })
            .map_err(io)?;
        }
        if options.wants(Section::Parse) {
            for provider in ProviderKind::ALL {
                write(&data.results(provider), &|out| {
                    workload::write_results_file(
                        provider,
                        FileSize::Rows(options.rows),
                        workload::ANSWER_ITEMS,
                        out,
                    )
                })
                .map_err(io)?;
            }
            write(&data.packed_results(), &|out| {
                let rows: Vec<usize> = (0..options.rows).collect();
                for (k, request) in rows.chunks(report::PACKED_ROWS).enumerate() {
                    let answer: serde_json::Map<String, serde_json::Value> = request
                        .iter()
                        .enumerate()
                        .map(|(n, &i)| {
                            let answer = workload::answer(i, workload::ANSWER_ITEMS);
                            ((n + 1).to_string(), answer)
                        })
                        .collect();
                    let id = batchline::packing::packed_request_id(k);
                    workload::write_answer_line(ProviderKind::OpenAi, k, &id, &answer.into(), out)?;
                    out.write_all(b"\n")?;
                }
                Ok(options.rows)
            })
            .map_err(io)?;
            data.big_rows = write(&data.big_results(), &|out| {
                workload::write_results_file(
                    ProviderKind::OpenAi,
                    FileSize::Bytes(options.big_bytes),
                    workload::ANSWER_ITEMS,
                    out,
                )
            })
            .map_err(io)?;
        }
        Ok(data)
    }
}

fn run_bench(options: &Options) -> Result<(), String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let python = match &options.python {
        Some(path) if !path.exists() => {
            return Err(format!(
                "{} not found: run `make bench-venv`, or pass --no-python",
                path.display()
            ));
        }
        other => other.clone(),
    };
    let reference_script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench/reference.py");
    progress("generating data");
    let data = Data::generate(options)?;
    let mut table = Table::new(options.runs);

    // `subject`: the provider, or for `parse-stage` the stage.
    let ours = |mode: &str, subject: &str, file: &Path, rows: Option<usize>| {
        let mut command = child_command(&me);
        command.args(["child", mode, subject]).arg(file);
        if let Some(rows) = rows {
            command.arg(rows.to_string());
        }
        repeat(options.runs, &format!("batchline {mode} {subject}"), || {
            run_child(clone_command(&command), true)
        })
    };
    let reference = |mode: &str, provider: ProviderKind, file: &Path| {
        let (Some(python), true) = (&python, REFERENCE_PROVIDERS.contains(&provider)) else {
            return Ok(None);
        };
        let mut command = child_command(python);
        command
            .arg(&reference_script)
            .args([mode, provider.as_str()])
            .arg(file);
        repeat(
            options.runs,
            &format!("reference {mode} {provider}"),
            || run_child(clone_command(&command), true),
        )
        .map(Some)
    };

    if options.wants(Section::Build) {
        for provider in ProviderKind::ALL {
            let batchline = ours("build", provider.as_str(), &data.requests(), None)?;
            let python = reference("build", provider, &data.requests())?;
            table
                .build
                .push(Measured::new(provider, data.rows, batchline, python)?);
        }
        // Issue 11: packing must not slow building (rows/s within 10% of one row per
        // request), so both run here on the same rows.
        for provider in ProviderKind::ALL {
            for rows_per_request in report::PACKED_ROWS_PER_REQUEST {
                let runs = ours(
                    "build-packed",
                    provider.as_str(),
                    &data.requests(),
                    Some(rows_per_request),
                )?;
                let figures = Figures::of(&runs).ok_or("no runs")?;
                table
                    .build_packed
                    .push((provider, rows_per_request, figures));
            }
        }
    }
    if options.wants(Section::Parse) {
        for provider in ProviderKind::ALL {
            let file = data.results(provider);
            let batchline = ours("parse", provider.as_str(), &file, Some(data.rows))?;
            let python = reference("parse", provider, &file)?;
            table
                .parse
                .push(Measured::new(provider, data.rows, batchline, python)?);
        }
        // Issue 11: packing must not slow parsing (rows/s within 10% of one row per
        // request): the same rows, one and ten to a request.
        let packed = report::PACKED_ROWS.to_string();
        let runs = ours(
            "parse-packed",
            &packed,
            &data.packed_results(),
            Some(data.rows),
        )?;
        table.parse_packed = Some(Figures::of(&runs).ok_or("no runs")?);
        let file = data.results(ProviderKind::OpenAi);
        for stage in child::ParseStage::ALL {
            let runs = ours("parse-stage", stage.name(), &file, Some(data.rows))?;
            let figures = Figures::of(&runs).ok_or("no runs")?;
            table.parse_stages.push((stage.name(), figures));
        }
        let file = data.big_results();
        let batchline = ours(
            "parse",
            ProviderKind::OpenAi.as_str(),
            &file,
            Some(data.big_rows),
        )?;
        let python = reference("parse", ProviderKind::OpenAi, &file)?;
        let mut big = Measured::new(ProviderKind::OpenAi, data.big_rows, batchline, python)?;
        big.bytes = file_size(&file)?;
        table.parse_big = Some(big);
    }
    if options.wants(Section::Collect) {
        table.collect = Some(bench_collect(options, &me)?);
    }
    if options.wants(Section::ColdStart) {
        table.cold_start = bench_cold_start(options, &me)?;
    }
    if options.wants(Section::Cost) {
        table.cost = Some(cost::run(
            python.as_deref(),
            &reference_script,
            data.dir.path(),
        )?);
    }
    if options.keep_data {
        progress(&format!("data kept in {}", data.dir.keep().display()));
    }
    table.print();
    Ok(())
}

/// One part of `options.rows` requests whose results add up to `options.big_bytes`
/// (an OpenAI batch at its request limit with large answers), collected into moto.
fn bench_collect(options: &Options, me: &Path) -> Result<CollectFigures, String> {
    progress("collect: generating the part's results and starting moto and the emulator");
    let items = workload::items_for_line_bytes((options.big_bytes / options.rows as u64) as usize);
    let mut results = Vec::with_capacity(options.big_bytes as usize + (1 << 20));
    workload::write_results_file(
        ProviderKind::OpenAi,
        FileSize::Rows(options.rows),
        items,
        &mut results,
    )
    .map_err(|e| e.to_string())?;
    let results_bytes = results.len() as u64;
    let env = collect_env::CollectEnv::start(Bytes::from(results), options.rows)?;
    let mut lines = Vec::new();
    for formats in COLLECT_FORMATS {
        let mut runs: Vec<Report> = Vec::new();
        let mut written = SuccessesWritten::default();
        for run in 0..options.runs {
            progress(&format!(
                "batchline collect writing {formats:?}: run {}/{}",
                run + 1,
                options.runs
            ));
            let job_id = env.prepare_job(run, formats)?;
            let mut command = child_command(me);
            command.args([
                "child",
                "collect",
                &env.moto.url,
                &env.emulator.base_url(),
                collect_env::BUCKET,
                &job_id,
                &results_bytes.to_string(),
            ]);
            runs.push(run_child(command, false)?);
            written = env.check_and_clean(&job_id)?;
        }
        lines.push(CollectLine {
            formats,
            written,
            figures: Figures::of(&runs).ok_or("no collect runs")?,
        });
    }
    Ok(CollectFigures {
        rows: options.rows,
        results_bytes,
        lines,
    })
}

/// The successes formats the collect section measures, one line each: the default,
/// and Parquet beside it.
const COLLECT_FORMATS: [&[ResultFormat]; 2] = [
    &[ResultFormat::Jsonl],
    &[ResultFormat::Jsonl, ResultFormat::Parquet],
];

fn bench_cold_start(options: &Options, me: &Path) -> Result<Vec<ColdStart>, String> {
    let release_dir = me.parent().ok_or("the bench binary has no directory")?;
    let runs = options.runs.max(11);
    ["submit", "poll", "collect"]
        .into_iter()
        .map(|name| {
            let binary = release_dir.join(name);
            if !binary.exists() {
                return Err(format!(
                    "{} not found: `cargo build --release -p submit -p poll -p collect` first",
                    binary.display()
                ));
            }
            progress(&format!("cold start {name}: {runs} runs"));
            let millis = (0..runs)
                .map(|_| coldstart::time_to_first_event(&binary, name))
                .collect::<Result<Vec<f64>, String>>()?;
            Ok(ColdStart {
                name,
                runs,
                millis: measure::Stats::of(millis).ok_or("no cold start runs")?,
                size_bytes: file_size(&binary)?,
            })
        })
        .collect()
}

fn repeat(
    runs: usize,
    label: &str,
    mut once: impl FnMut() -> Result<Report, String>,
) -> Result<Vec<Report>, String> {
    (0..runs)
        .map(|run| {
            progress(&format!("{label}: run {}/{runs}", run + 1));
            once()
        })
        .collect()
}

/// A command for a measured child: `program`, or `$BENCH_CHILD_WRAPPER program` when
/// that is set (e.g. `heaptrack` or `perf record -g` to profile one measurement; the
/// figures then describe the wrapper).
pub(crate) fn child_command(program: &Path) -> Command {
    let wrapper = std::env::var("BENCH_CHILD_WRAPPER").unwrap_or_default();
    let mut words = wrapper.split_whitespace();
    match words.next() {
        Some(tool) => {
            let mut command = Command::new(tool);
            command.args(words).arg(program);
            command
        }
        None => Command::new(program),
    }
}

/// `Command` is not `Clone`; each run needs its own.
fn clone_command(command: &Command) -> Command {
    let mut copy = Command::new(command.get_program());
    copy.args(command.get_args());
    copy
}

fn file_size(path: &Path) -> Result<u64, String> {
    std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// A progress line on stderr.
pub(crate) fn progress(message: &str) {
    eprintln!("[bench] {message}");
}
