//! Signals for the people on call: CloudWatch metrics written as Embedded Metric
//! Format (EMF) documents, one JSON object per log line, which CloudWatch Logs turns
//! into metrics without an API call of ours.
//!
//! Pure: the documents are built here from what the pipeline steps saw, and a
//! [`MetricsSink`] (the port) takes them: [`StdoutSink`] in the functions (Lambda sends
//! stdout to CloudWatch Logs), [`MemorySink`] in tests.
//!
//! Every document carries two dimension sets: its own dimensions (`Pipeline`,
//! `Provider`, and `ErrorType` for failed rows) and the empty set, so that one
//! dimensionless series per metric sums every pipeline and provider (what the alarms
//! watch, since an alarm cannot search over dimension values).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Write;
use std::sync::Mutex;

use serde::Serialize;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::model::ProviderKind;
use crate::provider::decode::Usage;

/// The CloudWatch namespace of every metric.
pub const NAMESPACE: &str = "batchline";

/// The most metrics one EMF directive may hold (the EMF specification's limit).
pub const MAX_METRICS: usize = 100;

/// The `Pipeline` dimension: the named pipeline an upload came under.
pub const PIPELINE: &str = "Pipeline";
/// The `Provider` dimension: the provider's name in model strings and logs (`openai`,
/// `anthropic`, `google` for Vertex AI, `gemini`, `bedrock`).
pub const PROVIDER: &str = "Provider";
/// The `ErrorType` dimension of [`ROWS_FAILED`]: the error records' `error_type`.
pub const ERROR_TYPE: &str = "ErrorType";
/// `Pipeline` of an upload that is not under `inbox/<pipeline>/`.
pub const DEFAULT_PIPELINE: &str = "default";
/// `Provider` of a job that failed before its spec (and so its model) was known.
pub const UNKNOWN_PROVIDER: &str = "unknown";

/// A CloudWatch unit (the EMF `Unit` member).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Unit {
    /// A number of things.
    Count,
    /// A duration in seconds.
    Seconds,
    /// A plain number (an amount of US dollars).
    None,
}

/// A metric's name and unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    /// The metric's name in [`NAMESPACE`].
    pub name: &'static str,
    /// Its unit.
    pub unit: Unit,
}

impl Metric {
    const fn new(name: &'static str, unit: Unit) -> Self {
        Self { name, unit }
    }
}

/// A job whose upload was read and whose parts were created (or wait for quota).
pub const JOBS_SUBMITTED: Metric = Metric::new("JobsSubmitted", Unit::Count);
/// A job closed with every row accounted for.
pub const JOBS_COMPLETED: Metric = Metric::new("JobsCompleted", Unit::Count);
/// A job closed as failed (at submit, or an upload not read to its end).
pub const JOBS_FAILED: Metric = Metric::new("JobsFailed", Unit::Count);
/// A job closed after its cancellation was requested.
pub const JOBS_CANCELLED: Metric = Metric::new("JobsCancelled", Unit::Count);
/// An open job past its deadline, once per poll tick that finds it so (its parts
/// still waiting for quota are given up then; running batches keep running).
pub const JOBS_PAST_DEADLINE: Metric = Metric::new("JobsPastDeadline", Unit::Count);
/// Rows of a closed job with a validated result.
pub const ROWS_SUCCEEDED: Metric = Metric::new("RowsSucceeded", Unit::Count);
/// Rows of a closed job written as errors, by `ErrorType`.
pub const ROWS_FAILED: Metric = Metric::new("RowsFailed", Unit::Count);
/// Prompt tokens of a closed job, cached ones included.
pub const INPUT_TOKENS: Metric = Metric::new("InputTokens", Unit::Count);
/// Answer tokens of a closed job.
pub const OUTPUT_TOKENS: Metric = Metric::new("OutputTokens", Unit::Count);
/// What a closed job cost in US dollars, when its spec gives `prices`.
pub const COST_USD: Metric = Metric::new("CostUSD", Unit::None);
/// Parts waiting for quota after a poll (all open jobs).
pub const PARTS_WAITING_FOR_QUOTA: Metric = Metric::new("PartsWaitingForQuota", Unit::Count);
/// From a batch's end at the provider to its part's results in S3.
pub const RESULTS_LATENCY: Metric = Metric::new("ResultsLatency", Unit::Seconds);

/// Every metric the pipeline emits (the template's alarms and dashboard use these).
pub const ALL: [Metric; 12] = [
    JOBS_SUBMITTED,
    JOBS_COMPLETED,
    JOBS_FAILED,
    JOBS_CANCELLED,
    JOBS_PAST_DEADLINE,
    ROWS_SUCCEEDED,
    ROWS_FAILED,
    INPUT_TOKENS,
    OUTPUT_TOKENS,
    COST_USD,
    PARTS_WAITING_FOR_QUOTA,
    RESULTS_LATENCY,
];

/// Which job a metric is about: its `Pipeline` and `Provider` dimensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labels {
    pipeline: String,
    provider: &'static str,
}

impl Labels {
    /// The labels of a job of `pipeline` (None: [`DEFAULT_PIPELINE`]) at `provider`
    /// (None: [`UNKNOWN_PROVIDER`]).
    pub fn new(pipeline: Option<&str>, provider: Option<ProviderKind>) -> Self {
        Self {
            pipeline: pipeline.unwrap_or(DEFAULT_PIPELINE).to_string(),
            provider: provider.map_or(UNKNOWN_PROVIDER, ProviderKind::as_str),
        }
    }
}

/// One EMF document: metric values that share a timestamp and dimensions.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    timestamp_ms: i64,
    dimensions: Vec<(&'static str, String)>,
    values: Vec<(Metric, f64)>,
}

impl Document {
    /// A document at `now` without dimensions or values.
    pub fn new(now: OffsetDateTime) -> Self {
        Self {
            timestamp_ms: (now.unix_timestamp_nanos() / 1_000_000) as i64,
            dimensions: Vec::new(),
            values: Vec::new(),
        }
    }

    /// A document at `now` about the job `labels` names.
    pub fn of_job(now: OffsetDateTime, labels: &Labels) -> Self {
        Self::new(now)
            .dimension(PIPELINE, &labels.pipeline)
            .dimension(PROVIDER, labels.provider)
    }

    /// Adds the dimension `name` with `value`.
    pub fn dimension(mut self, name: &'static str, value: &str) -> Self {
        self.dimensions.push((name, value.to_string()));
        self
    }

    /// Adds `value` of `metric`. A value that is not finite is left out: JSON has no
    /// NaN, and CloudWatch would drop the whole document for a null.
    pub fn value(mut self, metric: Metric, value: f64) -> Self {
        if value.is_finite() {
            self.values.push((metric, value));
        }
        self
    }

    /// The document as the EMF specification has it: `_aws` (timestamp and one
    /// directive naming the dimension sets and metrics), then each dimension and
    /// metric value as a member of the root.
    pub fn to_json(&self) -> Value {
        let keys: Vec<&str> = self.dimensions.iter().map(|(name, _)| *name).collect();
        let mut sets = vec![keys];
        if !self.dimensions.is_empty() {
            sets.push(Vec::new());
        }
        let metrics: Vec<Value> = self
            .values
            .iter()
            .map(|(metric, _)| json!({"Name": metric.name, "Unit": metric.unit}))
            .collect();
        let mut root = Map::new();
        root.insert(
            "_aws".into(),
            json!({
                "Timestamp": self.timestamp_ms,
                "CloudWatchMetrics": [{
                    "Namespace": NAMESPACE,
                    "Dimensions": sets,
                    "Metrics": metrics,
                }],
            }),
        );
        for (name, value) in &self.dimensions {
            root.insert((*name).into(), Value::from(value.as_str()));
        }
        for (metric, value) in &self.values {
            root.insert(metric.name.into(), Value::from(*value));
        }
        Value::Object(root)
    }

    /// The document as one log line (compact JSON has no line break; no newline at
    /// the end).
    pub fn to_line(&self) -> String {
        self.to_json().to_string()
    }
}

/// A job submitted: its upload read and its parts created or waiting.
pub fn job_submitted(now: OffsetDateTime, labels: &Labels) -> Vec<Document> {
    vec![Document::of_job(now, labels).value(JOBS_SUBMITTED, 1.0)]
}

/// What a job's summary counts when it closes.
#[derive(Debug, Clone, Copy)]
pub struct JobClosed<'a> {
    /// Whose job.
    pub labels: &'a Labels,
    /// How it closed: [`JOBS_COMPLETED`], [`JOBS_FAILED`] or [`JOBS_CANCELLED`].
    pub outcome: Metric,
    /// Rows with a validated result.
    pub succeeded: u64,
    /// Rows written as errors, by error type.
    pub errors_by_type: &'a BTreeMap<String, u64>,
    /// Tokens of every collected part.
    pub usage: &'a Usage,
    /// The cost, when the spec gives prices.
    pub cost_usd: Option<f64>,
}

impl JobClosed<'_> {
    /// One document for the job (its outcome, successes, tokens and cost) and one per
    /// error type (`RowsFailed` with its `ErrorType`: a document has one value per
    /// dimension).
    pub fn documents(&self, now: OffsetDateTime) -> Vec<Document> {
        let job = Document::of_job(now, self.labels)
            .value(self.outcome, 1.0)
            .value(ROWS_SUCCEEDED, self.succeeded as f64)
            .value(INPUT_TOKENS, self.usage.input_tokens as f64)
            .value(OUTPUT_TOKENS, self.usage.output_tokens as f64);
        let job = match self.cost_usd {
            Some(cost) => job.value(COST_USD, cost),
            None => job,
        };
        let by_type = self.errors_by_type.iter().map(|(error_type, rows)| {
            Document::of_job(now, self.labels)
                .dimension(ERROR_TYPE, error_type)
                .value(ROWS_FAILED, *rows as f64)
        });
        std::iter::once(job).chain(by_type).collect()
    }
}

/// A part's results written at `now`, of a batch that ended at the provider at
/// `ended_at` (RFC 3339, where the provider says; nothing without it or when it is
/// unreadable). A clock behind the provider's counts as no delay.
pub fn results_written(
    now: OffsetDateTime,
    labels: &Labels,
    ended_at: Option<&str>,
) -> Vec<Document> {
    let Some(ended) = ended_at.and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok()) else {
        return Vec::new();
    };
    let seconds = (now - ended).as_seconds_f64().max(0.0);
    vec![Document::of_job(now, labels).value(RESULTS_LATENCY, seconds)]
}

/// A poll's count of the parts still waiting for quota.
pub fn parts_waiting(now: OffsetDateTime, parts: usize) -> Vec<Document> {
    vec![Document::new(now).value(PARTS_WAITING_FOR_QUOTA, parts as f64)]
}

/// A job found open past its deadline.
pub fn job_past_deadline(now: OffsetDateTime, labels: &Labels) -> Vec<Document> {
    vec![Document::of_job(now, labels).value(JOBS_PAST_DEADLINE, 1.0)]
}

/// Where the documents go (the port).
pub trait MetricsSink: Send + Sync + Debug {
    /// Takes `documents`; never fails the step (a metric lost is no reason to fail
    /// a job).
    fn emit(&self, documents: &[Document]);
}

/// Writes each document as one line on stdout, where Lambda hands it to CloudWatch
/// Logs.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdoutSink;

impl MetricsSink for StdoutSink {
    fn emit(&self, documents: &[Document]) {
        // One `write_all` per line under stdout's lock, as the tracing layer writes its
        // lines: a log line never lands inside a document or a document inside one.
        let mut out = std::io::stdout();
        for document in documents {
            let line = document.to_line() + "\n";
            if let Err(e) = out.write_all(line.as_bytes()) {
                tracing::warn!(error = %e, "a metrics line could not be written");
            }
        }
    }
}

/// Drops every document: for the pipeline run outside Lambda (the CLI's `run`), where
/// no log group turns them into metrics and they would only clutter the terminal.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoMetrics;

impl MetricsSink for NoMetrics {
    fn emit(&self, _documents: &[Document]) {}
}

/// Keeps the lines a [`StdoutSink`] would print, for tests.
#[derive(Debug, Default)]
pub struct MemorySink {
    lines: Mutex<Vec<String>>,
}

impl MemorySink {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// The documents emitted so far, parsed back from their lines.
    pub fn documents(&self) -> Vec<Value> {
        self.lock()
            .iter()
            .map(|line| serde_json::from_str(line).expect("a document line is JSON"))
            .collect()
    }

    /// The sum of `metric`'s values over the documents whose dimensions include
    /// `dimensions` (name, value).
    pub fn total(&self, metric: &str, dimensions: &[(&str, &str)]) -> f64 {
        self.documents()
            .iter()
            .filter(|d| dimensions.iter().all(|(name, value)| d[*name] == *value))
            .filter_map(|d| d[metric].as_f64())
            .sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl MetricsSink for MemorySink {
    fn emit(&self, documents: &[Document]) {
        self.lock().extend(documents.iter().map(Document::to_line));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: OffsetDateTime = time::macros::datetime!(2026-12-02 12:00:00.250 UTC);

    /// Checks `document` against the EMF specification and answers its directive.
    fn check_emf(document: &Value) -> &Value {
        let root = document.as_object().expect("an object");
        let aws = &root["_aws"];
        assert_eq!(aws["Timestamp"], 1_796_212_800_250i64, "ms since the epoch");
        let directives = aws["CloudWatchMetrics"].as_array().unwrap();
        assert_eq!(directives.len(), 1);
        let directive = &directives[0];
        assert_eq!(directive["Namespace"], NAMESPACE);
        let metrics = directive["Metrics"].as_array().unwrap();
        assert!(!metrics.is_empty() && metrics.len() <= MAX_METRICS);
        for metric in metrics {
            let name = metric["Name"].as_str().unwrap();
            let known = ALL.iter().find(|m| m.name == name).expect("a known metric");
            assert_eq!(metric["Unit"], json!(known.unit));
            assert!(root[name].is_number(), "{name} is a number: {document}");
        }
        for set in directive["Dimensions"].as_array().unwrap() {
            let set = set.as_array().unwrap();
            assert!(set.len() <= 30);
            for name in set {
                let name = name.as_str().unwrap();
                assert!(root[name].is_string(), "{name} is a member: {document}");
            }
        }
        directive
    }

    fn parse(documents: &[Document]) -> Vec<Value> {
        documents
            .iter()
            .map(|d| {
                let line = d.to_line();
                assert!(!line.contains('\n'));
                serde_json::from_str(&line).unwrap()
            })
            .collect()
    }

    #[test]
    fn a_closed_job_has_one_document_and_one_per_error_type() {
        let labels = Labels::new(Some("invoices"), Some(ProviderKind::Anthropic));
        let errors = BTreeMap::from([("expired".to_string(), 2), ("invalid_input".into(), 1)]);
        let usage = Usage {
            input_tokens: 100,
            output_tokens: 40,
            ..Usage::default()
        };
        let closed = JobClosed {
            labels: &labels,
            outcome: JOBS_FAILED,
            succeeded: 7,
            errors_by_type: &errors,
            usage: &usage,
            cost_usd: Some(0.0125),
        };
        let documents = parse(&closed.documents(NOW));
        assert_eq!(documents.len(), 3);
        let job = &documents[0];
        let directive = check_emf(job);
        assert_eq!(
            directive["Dimensions"],
            json!([["Pipeline", "Provider"], []])
        );
        assert_eq!(
            directive["Metrics"],
            json!([
                {"Name": "JobsFailed", "Unit": "Count"},
                {"Name": "RowsSucceeded", "Unit": "Count"},
                {"Name": "InputTokens", "Unit": "Count"},
                {"Name": "OutputTokens", "Unit": "Count"},
                {"Name": "CostUSD", "Unit": "None"},
            ])
        );
        assert_eq!(
            (&job["Pipeline"], &job["Provider"]),
            (&json!("invoices"), &json!("anthropic"))
        );
        assert_eq!(
            (&job["JobsFailed"], &job["RowsSucceeded"], &job["CostUSD"]),
            (&json!(1.0), &json!(7.0), &json!(0.0125))
        );
        assert_eq!(
            (&job["InputTokens"], &job["OutputTokens"]),
            (&json!(100.0), &json!(40.0))
        );
        for (document, (error_type, rows)) in documents[1..]
            .iter()
            .zip([("expired", 2.0), ("invalid_input", 1.0)])
        {
            let directive = check_emf(document);
            assert_eq!(
                directive["Dimensions"],
                json!([["Pipeline", "Provider", "ErrorType"], []])
            );
            assert_eq!(
                directive["Metrics"],
                json!([{"Name": "RowsFailed", "Unit": "Count"}])
            );
            assert_eq!(document["ErrorType"], error_type);
            assert_eq!(document["RowsFailed"], rows);
        }
    }

    #[test]
    fn a_job_without_pipeline_prices_or_spec_has_default_labels_and_no_cost() {
        let labels = Labels::new(None, None);
        let closed = JobClosed {
            labels: &labels,
            outcome: JOBS_COMPLETED,
            succeeded: 0,
            errors_by_type: &BTreeMap::new(),
            usage: &Usage::default(),
            cost_usd: None,
        };
        let documents = parse(&closed.documents(NOW));
        assert_eq!(documents.len(), 1);
        check_emf(&documents[0]);
        assert_eq!(documents[0]["Pipeline"], DEFAULT_PIPELINE);
        assert_eq!(documents[0]["Provider"], UNKNOWN_PROVIDER);
        assert_eq!(documents[0]["JobsCompleted"], 1.0);
        assert!(documents[0].get("CostUSD").is_none());
    }

    #[test]
    fn the_results_latency_runs_from_the_providers_end_in_seconds() {
        let labels = Labels::new(None, Some(ProviderKind::Gemini));
        let documents = parse(&results_written(NOW, &labels, Some("2026-12-02T11:58:30Z")));
        let directive = check_emf(&documents[0]);
        assert_eq!(
            directive["Metrics"],
            json!([{"Name": "ResultsLatency", "Unit": "Seconds"}])
        );
        assert_eq!(documents[0]["ResultsLatency"], 90.25);
        assert_eq!(documents[0]["Provider"], "gemini");
        // A provider clock ahead of ours is no delay; no end time, no metric.
        let ahead = parse(&results_written(NOW, &labels, Some("2026-12-02T12:01:00Z")));
        assert_eq!(ahead[0]["ResultsLatency"], 0.0);
        assert!(results_written(NOW, &labels, None).is_empty());
        assert!(results_written(NOW, &labels, Some("yesterday")).is_empty());
    }

    #[test]
    fn poll_signals_have_the_units_and_dimensions_on_call_reads() {
        let waiting = parse(&parts_waiting(NOW, 3));
        let directive = check_emf(&waiting[0]);
        assert_eq!(
            directive["Dimensions"],
            json!([[]]),
            "one series for all jobs"
        );
        assert_eq!(waiting[0]["PartsWaitingForQuota"], 3.0);
        let labels = Labels::new(Some("p"), Some(ProviderKind::OpenAi));
        let late = parse(&job_past_deadline(NOW, &labels));
        check_emf(&late[0]);
        assert_eq!(late[0]["JobsPastDeadline"], 1.0);
        let submitted = parse(&job_submitted(NOW, &labels));
        check_emf(&submitted[0]);
        assert_eq!(submitted[0]["JobsSubmitted"], 1.0);
    }

    #[test]
    fn values_that_are_not_finite_are_left_out() {
        let document = Document::new(NOW)
            .value(COST_USD, f64::NAN)
            .value(PARTS_WAITING_FOR_QUOTA, 1.0);
        let json = document.to_json();
        assert!(json.get("CostUSD").is_none());
        assert_eq!(
            json["_aws"]["CloudWatchMetrics"][0]["Metrics"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn the_memory_sink_keeps_lines_and_sums_by_dimension() {
        let sink = MemorySink::new();
        let a = Labels::new(Some("a"), Some(ProviderKind::OpenAi));
        let b = Labels::new(Some("b"), Some(ProviderKind::OpenAi));
        sink.emit(&job_submitted(NOW, &a));
        sink.emit(&job_submitted(NOW, &b));
        assert_eq!(sink.total("JobsSubmitted", &[]), 2.0);
        assert_eq!(sink.total("JobsSubmitted", &[("Pipeline", "b")]), 1.0);
        assert_eq!(sink.total("JobsFailed", &[]), 0.0);
    }

    #[test]
    fn every_metric_name_is_unique() {
        let mut names: Vec<&str> = ALL.iter().map(|m| m.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ALL.len());
    }
}
