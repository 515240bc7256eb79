//! A job as the operator sees it, read from its record: the same view for a job run
//! from this machine (`run`) and one of the deployed pipeline (`job`, `jobs`).

use std::collections::BTreeMap;

use batchline::clock::{Clock, seconds_between};
use batchline::pipeline::job::{JobRecord, JobStatus, PartRecord};
use batchline::results::Usage;
use serde::Serialize;

use crate::output::{Output, Table, cost, duration};

/// One job's state, counts and cost.
#[derive(Debug, Serialize)]
pub struct JobView {
    /// The job's id.
    pub job_id: String,
    /// The named pipeline, or `default`.
    pub pipeline: String,
    /// `provider/model`, once the spec is read.
    pub model: Option<String>,
    /// `submitting`, `open`, `completed`, `failed` (as the record says).
    pub status: String,
    /// Why the job failed, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// Rows read so far.
    pub rows: u64,
    /// Rows with a validated answer so far.
    pub succeeded: u64,
    /// Rows with an error record so far.
    pub failed: u64,
    /// Rows skipped because an earlier job has their success.
    pub skipped: u64,
    /// Failed rows by error type.
    pub errors_by_type: BTreeMap<String, u64>,
    /// Tokens of the collected parts.
    pub usage: Usage,
    /// At the spec's prices, where it gives them.
    pub cost_usd: Option<f64>,
    /// When the job was created (RFC 3339).
    pub created_at: String,
    /// Seconds since then (to its end, once closed).
    pub age_seconds: u64,
    /// The parts, in order.
    pub parts: Vec<PartView>,
}

/// One part: its provider batch and how far it has got.
#[derive(Debug, Serialize)]
pub struct PartView {
    /// The part's index.
    pub index: u32,
    /// The provider's batch id, once created.
    pub batch_id: Option<String>,
    /// `waiting` (for quota), `collected`, or the batch state.
    pub state: String,
    /// Rows in the part.
    pub rows: u64,
    /// Requests the provider has answered so far (collected: rows with a success).
    pub done: u64,
    /// Requests that failed so far.
    pub failed: u64,
    /// Requests the provider counts in the batch.
    pub total: u64,
}

impl JobView {
    /// The view of `record` at `clock`'s now.
    pub fn of(record: &JobRecord, clock: &dyn Clock) -> Self {
        let tally = record.tally();
        let age_seconds = match &record.completed_at {
            Some(end) => seconds_between(&record.created_at, end)
                .and_then(|s| u64::try_from(s).ok())
                .unwrap_or(0),
            None => clock.seconds_since(&record.created_at),
        };
        Self {
            job_id: record.job_id.clone(),
            pipeline: record.pipeline().unwrap_or("default").to_string(),
            model: record.spec.as_ref().map(|spec| spec.model.to_string()),
            status: Self::status_name(record.status),
            failure: record.failure.clone(),
            rows: record.requests,
            succeeded: tally.succeeded,
            failed: tally.failed,
            skipped: record.skipped,
            errors_by_type: tally.errors_by_type,
            usage: tally.usage,
            cost_usd: tally.cost_usd,
            created_at: record.created_at.clone(),
            age_seconds,
            parts: record.parts.iter().map(PartView::of).collect(),
        }
    }

    /// A job status as its record spells it (`open`, `completed`, …).
    pub fn status_name(status: JobStatus) -> String {
        wire_name(&status)
    }

    /// True once the job is closed: completed, failed or cancelled.
    pub fn is_closed(&self) -> bool {
        !matches!(self.status.as_str(), "submitting" | "open")
    }

    /// The exit status of a command that followed the job to its end.
    pub fn ended_well(&self) -> bool {
        self.status == "completed"
    }

    /// The job's headline and its parts, as lines.
    pub fn lines(&self, output: &Output) -> Vec<String> {
        let mut lines = vec![
            format!(
                "job {}  {}  {}  {} rows: {} succeeded, {} failed{}  {}  {}",
                self.job_id,
                self.model.as_deref().unwrap_or("-"),
                output.state(&self.status),
                self.rows,
                self.succeeded,
                self.failed,
                if self.skipped > 0 {
                    format!(", {} skipped", self.skipped)
                } else {
                    String::new()
                },
                cost(self.cost_usd),
                // Outside a terminal a line is printed when it changes: a clock in it
                // would print it on every refresh.
                match output.terminal || self.is_closed() {
                    true => duration(self.age_seconds as i64),
                    false => String::new(),
                },
            )
            .trim_end()
            .to_string(),
        ];
        if let Some(failure) = &self.failure {
            lines.push(format!("  failure: {failure}"));
        }
        let mut table = Table::new(vec!["part", "batch", "state", "done", "failed", "total"]);
        for part in &self.parts {
            table.row(vec![
                part.index.to_string(),
                part.batch_id.clone().unwrap_or_else(|| "-".into()),
                output.state(&part.state),
                part.done.to_string(),
                part.failed.to_string(),
                part.total.to_string(),
            ]);
        }
        if !self.parts.is_empty() {
            lines.extend(table.lines().into_iter().map(|l| format!("  {l}")));
        }
        if !self.errors_by_type.is_empty() {
            let errors: Vec<String> = self
                .errors_by_type
                .iter()
                .map(|(kind, n)| format!("{kind} {n}"))
                .collect();
            lines.push(format!("  errors by type: {}", errors.join(", ")));
        }
        if let Some(eta) = self.estimate_seconds() {
            lines.push(format!("  about {} left", duration(eta as i64)));
        }
        lines
    }

    /// Time left at the pace so far, where the providers count requests.
    fn estimate_seconds(&self) -> Option<u64> {
        let (done, total) = self
            .parts
            .iter()
            .filter(|p| p.state != "collected")
            .fold((0, 0), |(d, t), p| (d + p.done + p.failed, t + p.total));
        (done > 0 && total > done && !self.is_closed())
            .then(|| self.age_seconds * (total - done) / done)
    }
}

impl PartView {
    fn of(part: &PartRecord) -> Self {
        let counts = part.counts.unwrap_or_default();
        let (state, done, failed) = match (&part.collected, part.batch_id.is_none()) {
            (Some(outcome), _) => ("collected".to_string(), outcome.succeeded, outcome.failed),
            (None, true) if part.waiting_since.is_some() => ("waiting".to_string(), 0, 0),
            (None, _) => (
                part.state
                    .map_or_else(|| "created".to_string(), |state| wire_name(&state)),
                counts.succeeded,
                counts.failed,
            ),
        };
        Self {
            index: part.index,
            batch_id: part.batch_id.clone(),
            state,
            rows: part.requests,
            done,
            failed,
            total: counts.total.max(part.llm_requests.unwrap_or(part.requests)),
        }
    }
}

/// How a unit enum is spelt in records and JSON output.
pub fn wire_name<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}
