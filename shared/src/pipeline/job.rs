//! Job records, the open-jobs index and the bucket layout.
//!
//! Records are JSON written with conditional puts: `Create` when a job starts,
//! `Update(etag)` afterwards, so two invocations can never overwrite each other.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::context::PipelineError;
use super::spec::JobSpec;
use crate::metrics::Labels;
use crate::results::{Usage, error_type};
use crate::status::BatchState;
use crate::storage::{ObjectStore, PutMode, StoreError};
use crate::table::TableLayout;

/// Where everything lives in the bucket. `inbox/` is the only prefix that triggers
/// submit, and nothing below writes there.
pub mod keys {
    /// Uploads under this prefix are jobs.
    pub const INBOX: &str = "inbox/";
    /// Named pipelines: `pipelines/<name>.json` is the spec of uploads under `inbox/<name>/`.
    pub const PIPELINES: &str = "pipelines/";
    /// The open-jobs index: one empty marker per job that poll still watches.
    pub const OPEN: &str = "open/";
    /// Job records and their parts' manifests: `jobs/<job>/…`.
    pub const JOBS: &str = "jobs/";

    /// The job record, `jobs/<job>/job.json`.
    pub fn job_record(job: &str) -> String {
        format!("{JOBS}{job}/job.json")
    }
    /// A part's id manifest: its `custom_id`s in row order, which collect joins the
    /// provider's result lines on.
    pub fn part_manifest(job: &str, part: u32) -> String {
        format!("jobs/{job}/parts/{part:05}.ids")
    }
    /// A part's kept values, for a job whose spec keeps input fields: one JSON object
    /// per row, in the manifest's row order.
    pub fn part_kept(job: &str, part: u32) -> String {
        format!("jobs/{job}/parts/{part:05}.kept")
    }
    /// A part's batch input as the provider takes it, kept so that a part waiting for
    /// quota (or failed by the provider for quota) can be created later.
    pub fn part_requests(job: &str, part: u32) -> String {
        format!("jobs/{job}/parts/{part:05}.requests")
    }
    /// The rows skipped (`skip_succeeded`) while a part filled, written before its
    /// batch is created, so that a resumed submit makes the same decisions.
    pub fn part_skipped(job: &str, part: u32) -> String {
        format!("jobs/{job}/parts/{part:05}.skipped")
    }
    /// The job's entry in the open-jobs index.
    pub fn open_marker(job: &str) -> String {
        format!("{OPEN}{job}")
    }
    /// A part's validated results.
    pub fn successes(job: &str, part: u32) -> String {
        format!("results/{job}/successes/part-{part:05}.jsonl")
    }
    /// A part's validated results as Parquet, when the job's spec asks for them.
    pub fn successes_parquet(job: &str, part: u32) -> String {
        format!("results/{job}/successes/part-{part:05}.parquet")
    }
    /// A part's failed requests, one error record per `custom_id`.
    pub fn errors(job: &str, part: u32) -> String {
        format!("results/{job}/errors/part-{part:05}.jsonl")
    }
    /// Lines rejected before anything was sent to the provider.
    pub fn input_errors(job: &str) -> String {
        format!("results/{job}/errors/input.jsonl")
    }
    /// The lines rejected by submit's invocation `n` (0: the first, which writes
    /// [`input_errors`]) of an upload read over several.
    pub fn input_errors_of(job: &str, n: u32) -> String {
        match n {
            0 => input_errors(job),
            n => format!("results/{job}/errors/input-{n:04}.jsonl"),
        }
    }
    /// The job's summary, written when the job closes.
    pub fn summary(job: &str) -> String {
        format!("results/{job}/summary.json")
    }
    /// The spec of the named pipeline `name`.
    pub fn pipeline_spec(name: &str) -> String {
        format!("{PIPELINES}{name}.json")
    }
    /// Rows not sent because an earlier job of the pipeline has their success
    /// (`skip_succeeded`), each with that job.
    pub fn skipped(job: &str) -> String {
        format!("results/{job}/skipped.jsonl")
    }
    /// The rows skipped by submit's invocation `n` (0: the first, which writes
    /// [`skipped`]) of an upload read over several.
    pub fn skipped_of(job: &str, n: u32) -> String {
        match n {
            0 => skipped(job),
            n => format!("results/{job}/skipped-{n:04}.jsonl"),
        }
    }
    /// The named pipeline an upload belongs to: `<name>` for `inbox/<name>/…`.
    pub fn pipeline_of(key: &str) -> Option<&str> {
        let (name, _) = key.strip_prefix(INBOX)?.split_once('/')?;
        (!name.is_empty()).then_some(name)
    }
}

/// The uploaded object a job comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceObject {
    /// The bucket it was uploaded to.
    pub bucket: String,
    /// Its key, under `inbox/`.
    pub key: String,
    /// Its entity tag: the upload's identity when the bucket is not versioned.
    pub etag: String,
    /// Its version, in a versioned bucket: reads (a retry part's too) use that upload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
}

impl SourceObject {
    /// A job id derived from the object's identity: the same upload always maps to the
    /// same job (a repeated S3 event is not a new job), a new version to a new one.
    /// Readable stem plus a hash; safe as an S3 key segment and a Vertex label value.
    pub fn job_id(&self) -> String {
        let identity = format!(
            "{}\n{}\n{}",
            self.bucket,
            self.key,
            self.version_id.as_deref().unwrap_or(&self.etag)
        );
        let digest = hex::encode(&Sha256::digest(identity.as_bytes())[..6]);
        let file = self.key.rsplit('/').next().unwrap_or_default();
        let stem: String = file
            .split('.')
            .next()
            .unwrap_or_default()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect::<String>()
            .split('-')
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("-");
        let stem: String = stem.chars().take(40).collect();
        if stem.is_empty() {
            digest
        } else {
            format!("{stem}-{digest}")
        }
    }
}

/// Where a job is: submitting, open while its parts are at the provider, then
/// completed, failed or cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Submit is reading the file and creating provider batches.
    Submitting,
    /// Every part is submitted; poll and collect take it from here.
    Open,
    /// Every part is collected (or every line was rejected): the job is closed.
    Completed,
    /// A whole-file problem; nothing (more) was submitted.
    Failed,
    /// Closed after its cancellation was requested ([`JobRecord::cancel_requested_at`]):
    /// the rows that ran before have their outcome, every other row is a `cancelled`
    /// error.
    Cancelled,
}

impl JobStatus {
    /// True once the job is closed: nothing about it changes any more.
    pub fn is_closed(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

/// Why a part was given up without a batch, which decides its rows' error type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GiveUp {
    /// It still waited for quota at the job's deadline: its rows are `expired`.
    #[default]
    Deadline,
    /// The job's cancellation was requested before it was sent: its rows are
    /// `cancelled`.
    Cancel,
}

impl GiveUp {
    /// The error type of the rows of a part given up so.
    pub fn error_type(self) -> &'static str {
        match self {
            Self::Deadline => error_type::EXPIRED,
            Self::Cancel => error_type::CANCELLED,
        }
    }
}

/// What collect found for one part.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartOutcome {
    /// Requests with a validated result in the part's successes file.
    pub succeeded: u64,
    /// Requests written to the part's errors file.
    pub failed: u64,
    /// `failed` by `error_type`.
    pub errors_by_type: BTreeMap<String, u64>,
    /// Tokens the part's result lines report, successes and errors alike.
    pub usage: Usage,
    /// Lines the provider sent for ids not in the part, or twice (ignored, counted).
    #[serde(default)]
    pub unexpected_lines: u64,
    /// Requests that failed for a retryable reason and went into a retry part
    /// (counted there, not here).
    #[serde(default)]
    pub retried: u64,
    /// `failed` by error type and message, for the first few distinct pairs
    /// (`summary::note_error`): what the summary's `cause` is drawn from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub error_groups: Vec<ErrorGroup>,
}

/// Failed rows that share one error type and one message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorGroup {
    /// The rows' `error_type`.
    pub error_type: String,
    /// The message, cut at `summary::MAX_GROUP_MESSAGE_CHARS` characters.
    pub message: String,
    /// How many failed rows had both.
    pub rows: u64,
}

/// One part of a job: the requests of one provider batch, and what poll and collect
/// recorded about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartRecord {
    /// The part's number in the job: in its keys and in ready messages.
    pub index: u32,
    /// Input rows in the part (the ids in its manifest).
    pub requests: u64,
    /// Provider requests in the part (the lines of its manifest): fewer than `requests`
    /// when rows are packed; absent in records written before packing existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_requests: Option<u64>,
    /// The provider's batch id, once the batch is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<String>,
    /// The batch state as last seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<BatchState>,
    /// The provider's own word for that state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_status: Option<String>,
    /// The provider's error for the whole batch, if it reported one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_error: Option<String>,
    /// The batch's request counts as last seen, where the provider reports them: how
    /// far a running part has got.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<crate::status::RequestCounts>,
    /// Set by poll when it queued the part for collect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enqueued_at: Option<String>,
    /// What collect found; set once, when the part is in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collected: Option<PartOutcome>,
    /// Why this part was closed before the end of the file (a provider limit), if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_reason: Option<String>,
    /// 1 for the parts submit creates; a retry part has its source part's attempt + 1.
    #[serde(default = "first_attempt")]
    pub attempt: u32,
    /// The part whose retryable failures this part resubmits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<u32>,
    /// A running collect owns the part until then; another one waits (or takes over after).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collect_lease_until: Option<String>,
    /// The last status call that failed, with its time and the provider's words;
    /// cleared by the next one that succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_error: Option<String>,
    /// Status calls refused in a row (HTTP 401, 403 or 404: a revoked key, a batch
    /// deleted at the provider). At `Settings::max_refused_polls` poll gives up.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub refused_polls: u32,
    /// Set when poll gave up on the batch: collect then records every request of
    /// the part as a `batch_unreachable` error with this reason, without calling
    /// the provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abandoned: Option<String>,
    /// Input tokens the part's batch counts against an enqueued-token quota, estimated
    /// from its input's size ([`crate::quota::estimated_tokens`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub estimated_tokens: u64,
    /// Set while the part waits for quota, without a batch: creating it would pass a
    /// known limit, or the provider refused it (or failed it) for quota. Poll creates
    /// it once earlier batches have ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_since: Option<String>,
    /// Times the part was made to wait for quota. It tags the part's next batch, so
    /// that a batch the provider failed for quota is never taken for the new one.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub quota_waits: u32,
    /// Seconds the part spent waiting for quota, over all its waits.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub waited_seconds: u64,
    /// A poll is creating the waiting part's batch until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_lease_until: Option<String>,
    /// Set when the part was given up without a batch (see [`PartRecord::give_up`]):
    /// it still waited for quota at the job's deadline, or, as `given_up_for` says,
    /// the job's cancellation came first. Collect records its rows as errors with
    /// this reason, without a batch. (The name is the one older records have.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_passed: Option<String>,
    /// Why the part was given up, when `deadline_passed` is set; absent in records
    /// written before cancellation existed, which were all given up at the deadline.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub given_up_for: GiveUp,
    /// When poll asked the provider to cancel the part's batch, after the job's
    /// cancellation was requested (or found it ended already): it is not asked again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_sent_at: Option<String>,
}

impl PartRecord {
    /// The batch as poll last saw it, for a collect that cannot ask the provider.
    pub fn last_seen_status(&self, batch_id: &str) -> crate::status::BatchStatus {
        crate::status::BatchStatus {
            batch_id: batch_id.to_string(),
            state: self.state.unwrap_or(BatchState::Failed),
            raw_status: self.raw_status.clone().unwrap_or_default(),
            counts: crate::status::RequestCounts::default(),
            created_at: None,
            ended_at: None,
            error: self.batch_error.clone(),
            quota_exceeded: false,
            tags: BTreeMap::new(),
        }
    }

    /// True once submit is done with the part: its batch exists, it waits for quota,
    /// or it was given up.
    pub fn is_submitted(&self) -> bool {
        self.batch_id.is_some() || self.waiting_since.is_some() || self.deadline_passed.is_some()
    }

    /// Gives the part up without a batch, for `why` with `reason`: collect then
    /// records every row of it as an error of `why`'s type, without a provider call.
    pub fn give_up(&mut self, why: GiveUp, reason: String) {
        self.deadline_passed = Some(reason);
        self.given_up_for = why;
    }

    /// For a part given up without a batch, its rows' error type and the reason.
    pub fn given_up(&self) -> Option<(&'static str, &str)> {
        let reason = self.deadline_passed.as_deref()?;
        Some((self.given_up_for.error_type(), reason))
    }

    /// True while the part's batch exists and has not ended, as last seen: it holds
    /// its share of the provider's quotas.
    pub fn is_running(&self) -> bool {
        self.batch_id.is_some()
            && self.collected.is_none()
            && self.state.is_none_or(|state| !state.is_terminal())
    }

    /// What the part's batch holds at its provider while it runs, its estimated tokens
    /// scaled by `token_ratio` (see [`JobRecord::token_ratio`]).
    pub fn load(&self, token_ratio: f64) -> crate::quota::Load {
        crate::quota::Load {
            tokens: (self.estimated_tokens as f64 * token_ratio).ceil() as u64,
            requests: self.llm_requests.unwrap_or(self.requests),
        }
    }

    /// Makes the part wait for quota from `now`, without a batch (the one the
    /// provider failed for quota, if any, is forgotten).
    pub fn wait_for_quota(&mut self, now: &str, reason: String) {
        self.batch_id = None;
        self.state = None;
        self.raw_status = None;
        self.enqueued_at = None;
        self.batch_error = Some(reason);
        self.waiting_since = Some(now.to_string());
        self.quota_waits += 1;
    }
}

fn is_zero<N: Default + PartialEq>(n: &N) -> bool {
    *n == N::default()
}

fn first_attempt() -> u32 {
    1
}

impl PartRecord {
    /// A part as submit creates it: first attempt, not yet polled or collected.
    pub fn submitted(part: &crate::build::BatchPart, status: crate::status::BatchStatus) -> Self {
        Self {
            batch_id: Some(status.batch_id),
            state: Some(status.state),
            raw_status: Some(status.raw_status),
            batch_error: status.error,
            ..Self::unsubmitted(part)
        }
    }

    /// A part whose batch is not created yet: it waits for quota from `now`.
    pub fn waiting(part: &crate::build::BatchPart, now: &str, reason: String) -> Self {
        let mut record = Self::unsubmitted(part);
        record.wait_for_quota(now, reason);
        record
    }

    /// A part without a batch, not waiting: what the other constructors start from,
    /// and a part given up before it was sent (see [`PartRecord::give_up`]).
    pub fn unsubmitted(part: &crate::build::BatchPart) -> Self {
        Self {
            index: part.index,
            requests: part.custom_ids.len() as u64,
            llm_requests: Some(part.request_rows.len() as u64),
            batch_id: None,
            state: None,
            raw_status: None,
            batch_error: None,
            counts: None,
            enqueued_at: None,
            collected: None,
            split_reason: None,
            attempt: first_attempt(),
            retry_of: None,
            collect_lease_until: None,
            poll_error: None,
            refused_polls: 0,
            abandoned: None,
            estimated_tokens: crate::quota::estimated_tokens(part.body.len()),
            waiting_since: None,
            quota_waits: 0,
            waited_seconds: 0,
            create_lease_until: None,
            deadline_passed: None,
            given_up_for: GiveUp::default(),
            cancel_sent_at: None,
        }
    }
}

/// The job record, `jobs/<job_id>/job.json`: the state every step reads and writes
/// back conditionally.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The job's id (see [`SourceObject::job_id`]).
    pub job_id: String,
    /// The upload the job comes from.
    pub source: SourceObject,
    /// Where the job is.
    pub status: JobStatus,
    /// Why the job failed, or fails once its parts are in (an upload not read to its
    /// end): a whole-file problem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// The job's spec, once submit has read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<JobSpec>,
    /// The columns of the successes' Parquet files, decided at submit when the spec
    /// asks for them, so that every part's file has the same ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<TableLayout>,
    /// Request lines read from the file (header excluded).
    pub requests: u64,
    /// Lines rejected before submission (they are in the input errors file).
    pub input_errors: u64,
    /// The parts, retry parts included, in the order they were created.
    pub parts: Vec<PartRecord>,
    /// When submit created the record (RFC 3339, as every timestamp here).
    pub created_at: String,
    /// When submit finished creating the parts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_at: Option<String>,
    /// When the job closed; a closed record without it has no summary yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
    /// A running submit owns the record until then; a later one may resume after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submit_lease_until: Option<String>,
    /// How much of the uploaded object submit read (set once it reached the end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<InputRead>,
    /// The last failure of a step that will be retried (a submit whose provider call
    /// failed), with its time: what an operator reads while the job waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Rows not sent because an earlier job of the pipeline has their success
    /// (`skip_succeeded`); they are in `results/<job>/skipped.jsonl`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub skipped: u64,
    /// For a re-run of a finished job's failed rows: that job, and the upload its rows
    /// are read from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerun_of: Option<RerunOf>,
    /// Where submit stopped reading the upload when it handed the rest to its next
    /// invocation; that one goes on from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<SubmitCheckpoint>,
    /// Times submit handed the rest of the upload to a next invocation; invocation
    /// `n` (0: the first) writes its own input error and skipped files
    /// ([`keys::input_errors_of`], [`keys::skipped_of`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub handovers: u32,
    /// The submit invocations that rejected lines (each wrote its input error file).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejected_by: Vec<u32>,
    /// The submit invocations that skipped rows (each wrote its skipped file).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped_by: Vec<u32>,
    /// When the job's cancellation was requested (`pipeline::cancel`): nothing more
    /// is sent to the provider, poll cancels the batches that run, and the job closes
    /// as [`JobStatus::Cancelled`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_requested_at: Option<String>,
}

/// How far submit read an upload it handed over: every row before `offset` is in a
/// part, in the input errors or skipped, and nothing after it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitCheckpoint {
    /// Bytes of the (uncompressed) upload before the next unread line.
    pub offset: u64,
    /// The number of the last line read.
    pub line: u64,
    /// The index of the next part.
    pub next_part: u32,
    /// Request lines read before `offset`.
    pub requests: u64,
    /// Of those, rejected (in the input errors).
    pub rejected: u64,
    /// Of those, skipped (`skip_succeeded`).
    pub skipped: u64,
}

/// The finished job a re-run job takes its failed rows from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RerunOf {
    /// The earlier job's id.
    pub job_id: String,
    /// The upload that job read, in the version it read.
    pub source: SourceObject,
}

impl JobRecord {
    /// The upload the job's rows are read from: its own, or for a re-run the earlier
    /// job's.
    pub fn rows_source(&self) -> &SourceObject {
        self.rerun_of
            .as_ref()
            .map_or(&self.source, |rerun| &rerun.source)
    }

    /// The provider's input tokens per estimated token ([`crate::quota::estimated_tokens`],
    /// an upper bound), learnt from the job's parts collected with every row answered,
    /// with a tenth more for safety and never above 1; 1 before any is in. Measured on
    /// English invoices the estimate is about twice the real count: scaling it lets as
    /// many parts run under an enqueued-token quota as really fit.
    pub fn token_ratio(&self) -> f64 {
        let (real, estimated) = self
            .parts
            .iter()
            .filter_map(|part| {
                let outcome = part.collected.as_ref()?;
                let whole = outcome.failed == 0 && outcome.retried == 0 && outcome.succeeded > 0;
                (whole && part.estimated_tokens > 0)
                    .then_some((outcome.usage.input_tokens, part.estimated_tokens))
            })
            .fold((0u64, 0u64), |(r, e), (real, est)| (r + real, e + est));
        match estimated {
            0 => 1.0,
            _ => (real as f64 / estimated as f64 * 1.1).min(1.0),
        }
    }

    /// The input error files submit wrote, one per invocation that rejected a line.
    pub fn input_error_files(&self) -> Vec<String> {
        self.files_of(&self.rejected_by, self.input_errors, keys::input_errors_of)
    }

    /// The skipped-rows files submit wrote, one per invocation that skipped a row.
    pub fn skipped_files(&self) -> Vec<String> {
        self.files_of(&self.skipped_by, self.skipped, keys::skipped_of)
    }

    /// The files of the invocations `by`; a record from before uploads were read over
    /// several invocations has one file when it has `rows`.
    fn files_of(&self, by: &[u32], rows: u64, key: fn(&str, u32) -> String) -> Vec<String> {
        match (by, rows) {
            ([], 0) => Vec::new(),
            ([], _) => vec![key(&self.job_id, 0)],
            (by, _) => by.iter().map(|&n| key(&self.job_id, n)).collect(),
        }
    }

    /// The named pipeline of the job's rows (the ledger's key), if they were uploaded
    /// under one.
    pub fn pipeline(&self) -> Option<&str> {
        keys::pipeline_of(&self.rows_source().key)
    }

    /// The status the job closes with once its parts are in: failed for a whole-file
    /// problem noted while it ran (it weighs more than a cancellation), cancelled when
    /// its cancellation was requested, else completed.
    pub fn closing_status(&self) -> JobStatus {
        match (&self.failure, &self.cancel_requested_at) {
            (Some(_), _) => JobStatus::Failed,
            (None, Some(_)) => JobStatus::Cancelled,
            (None, None) => JobStatus::Completed,
        }
    }

    /// The result files written so far, in part order.
    pub fn result_files(&self) -> ResultFiles {
        let mut files = ResultFiles {
            successes: Vec::new(),
            errors: self.input_error_files(),
            skipped: self.skipped_files(),
        };
        let jsonl = self
            .spec
            .as_ref()
            .is_none_or(|spec| spec.writes(super::spec::ResultFormat::Jsonl));
        for part in &self.parts {
            let Some(outcome) = &part.collected else {
                continue;
            };
            if outcome.succeeded > 0 {
                if jsonl {
                    files
                        .successes
                        .push(keys::successes(&self.job_id, part.index));
                }
                if self.table.is_some() {
                    files
                        .successes
                        .push(keys::successes_parquet(&self.job_id, part.index));
                }
            }
            if outcome.failed > 0 {
                files.errors.push(keys::errors(&self.job_id, part.index));
            }
        }
        files
    }

    /// What the input errors and the collected parts add up to: so far for an open
    /// job, the whole job once it is closed.
    pub fn tally(&self) -> JobTally {
        let mut tally = JobTally {
            failed: self.input_errors,
            ..JobTally::default()
        };
        if self.input_errors > 0 {
            tally
                .errors_by_type
                .insert(super::input::INVALID_INPUT.to_string(), self.input_errors);
            tally.outcomes_by_attempt.insert(1, self.input_errors);
        }
        for part in &self.parts {
            let Some(outcome) = &part.collected else {
                continue;
            };
            tally.succeeded += outcome.succeeded;
            tally.failed += outcome.failed;
            tally.retried += outcome.retried;
            if outcome.succeeded + outcome.failed > 0 {
                *tally.outcomes_by_attempt.entry(part.attempt).or_insert(0) +=
                    outcome.succeeded + outcome.failed;
            }
            tally.usage.add(&outcome.usage);
            for (kind, n) in &outcome.errors_by_type {
                *tally.errors_by_type.entry(kind.clone()).or_insert(0) += n;
            }
        }
        tally.cost_usd = self
            .spec
            .as_ref()
            .and_then(|spec| spec.prices)
            .map(|prices| prices.cost_usd(&tally.usage));
        tally
    }

    /// The job's metric dimensions: its pipeline and its spec's provider.
    pub fn labels(&self) -> Labels {
        Labels::new(
            self.pipeline(),
            self.spec.as_ref().map(|s| s.model.provider),
        )
    }
}

/// The result files a job has written so far: all of them once it is closed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ResultFiles {
    /// Successes: a JSONL file and, where the spec asks, a Parquet file per part.
    pub successes: Vec<String>,
    /// Error records: the input errors, then one file per part with failures.
    pub errors: Vec<String>,
    /// Rows skipped because an earlier job has their success.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
}

/// A job's outcomes added up over its input errors and collected parts
/// ([`JobRecord::tally`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobTally {
    /// Rows with a validated answer.
    pub succeeded: u64,
    /// Rows with an error record, input errors included.
    pub failed: u64,
    /// Requests resubmitted after a retryable failure (each counted once per retry).
    pub retried: u64,
    /// `failed` by error type.
    pub errors_by_type: BTreeMap<String, u64>,
    /// Final outcomes by the attempt they came from (1: first try).
    pub outcomes_by_attempt: BTreeMap<u32, u64>,
    /// Tokens over every collected part.
    pub usage: Usage,
    /// `usage` at the spec's `prices`, where the spec gives them.
    pub cost_usd: Option<f64>,
}

/// How much of the uploaded object submit read, counted as the bytes arrived from
/// the store, independently of the line reader and its decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputRead {
    /// The object's size as stored.
    pub object_bytes: u64,
    /// The object's bytes that arrived and were decoded.
    pub bytes_read: u64,
    /// Every byte was read and the decoder ended cleanly at the object's end.
    pub complete: bool,
}

/// A record together with the entity tag it was read or written with.
#[derive(Debug, Clone)]
pub struct Versioned {
    /// The record.
    pub record: JobRecord,
    /// Its entity tag: the condition of the next write.
    pub etag: String,
}

/// Reads the job's record; one that is not valid JSON is a
/// [`PipelineError::CorruptRecord`].
pub async fn load(store: &dyn ObjectStore, job: &str) -> Result<Versioned, PipelineError> {
    let (meta, body) = store.get(&keys::job_record(job)).await?;
    let record = serde_json::from_slice(&body).map_err(|e| PipelineError::CorruptRecord {
        key: keys::job_record(job),
        reason: e.to_string(),
    })?;
    Ok(Versioned {
        record,
        etag: meta.etag,
    })
}

/// Creates the record; `Ok(None)` if one exists already.
pub async fn create(
    store: &dyn ObjectStore,
    record: JobRecord,
) -> Result<Option<Versioned>, PipelineError> {
    let body = Bytes::from(serde_json::to_vec_pretty(&record)?);
    match store
        .put(&keys::job_record(&record.job_id), body, PutMode::Create)
        .await
    {
        Ok(etag) => Ok(Some(Versioned { record, etag })),
        Err(StoreError::Conflict { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Writes `versioned.record` only if nobody wrote since it was read.
pub async fn save(store: &dyn ObjectStore, versioned: &mut Versioned) -> Result<(), PipelineError> {
    let body = Bytes::from(serde_json::to_vec_pretty(&versioned.record)?);
    versioned.etag = store
        .put(
            &keys::job_record(&versioned.record.job_id),
            body,
            PutMode::Update(versioned.etag.clone()),
        )
        .await?;
    Ok(())
}

/// `save` for the submit that holds the job's lease, `held` as it last wrote it: a
/// cancellation requested since (the one write another step makes to a record whose
/// submit holds the lease) is taken into the record, and the write is made again.
/// Any other write in between (a submit that took the job over after the lease
/// passed) is a conflict, as with `save`.
pub async fn save_leased(
    store: &dyn ObjectStore,
    versioned: &mut Versioned,
    held: Option<&str>,
) -> Result<(), PipelineError> {
    match save(store, versioned).await {
        Err(PipelineError::Store(StoreError::Conflict { .. }))
            if adopt_cancel(store, versioned, held).await? =>
        {
            save(store, versioned).await
        }
        other => other,
    }
}

/// Takes into `versioned` a cancellation requested since the submit holding the
/// lease `held` last read or wrote the record, with the entity tag of that write;
/// true when there was one. False when nothing changed, or something else did (the
/// next `save` then fails with a conflict).
pub async fn adopt_cancel(
    store: &dyn ObjectStore,
    versioned: &mut Versioned,
    held: Option<&str>,
) -> Result<bool, PipelineError> {
    let fresh = load(store, &versioned.record.job_id).await?;
    // A submit that took the job over wrote a later lease; failing it changed the status.
    let adopt = fresh.etag != versioned.etag
        && fresh.record.status == JobStatus::Submitting
        && fresh.record.submit_lease_until.as_deref() == held
        && fresh.record.cancel_requested_at.is_some();
    if adopt {
        versioned.record.cancel_requested_at = fresh.record.cancel_requested_at;
        versioned.etag = fresh.etag;
    }
    Ok(adopt)
}

/// Read-modify-write with retries on conflict: `change` is applied to the freshest
/// record until a conditional write succeeds. `change` returns false to skip writing.
pub async fn update<F>(
    store: &dyn ObjectStore,
    job: &str,
    mut change: F,
) -> Result<Versioned, PipelineError>
where
    F: FnMut(&mut JobRecord) -> bool,
{
    const ATTEMPTS: u32 = 8;
    for attempt in 1..=ATTEMPTS {
        let mut current = load(store, job).await?;
        if !change(&mut current.record) {
            return Ok(current);
        }
        match save(store, &mut current).await {
            Ok(()) => return Ok(current),
            Err(PipelineError::Store(StoreError::Conflict { .. })) if attempt < ATTEMPTS => {
                // Another invocation wrote in between; back off a little and redo.
                tokio::time::sleep(std::time::Duration::from_millis(20 * u64::from(attempt))).await;
            }
            Err(e) => return Err(e),
        }
    }
    Err(PipelineError::Contended {
        job: job.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_token_ratio_learns_from_parts_that_ran_whole() {
        let part = |estimated: u64, input: u64, failed: u64| {
            json!({"index": 0, "requests": 2, "estimated_tokens": estimated,
                   "collected": {"succeeded": 2, "failed": failed, "errors_by_type": {},
                                 "usage": {"input_tokens": input, "output_tokens": 1}}})
        };
        let ratio = |parts: Vec<serde_json::Value>| {
            let record: JobRecord = serde_json::from_value(json!({
                "job_id": "j", "source": {"bucket": "b", "key": "inbox/x", "etag": "e"},
                "status": "open", "requests": 2, "input_errors": 0, "parts": parts,
                "created_at": "2026-12-03T00:00:00Z"
            }))
            .unwrap();
            record.token_ratio()
        };
        assert_eq!(ratio(vec![]), 1.0);
        assert!((ratio(vec![part(1000, 400, 0), part(1000, 400, 0)]) - 0.44).abs() < 1e-9);
        // A part with failures ran only some of its requests: it says nothing.
        assert_eq!(ratio(vec![part(1000, 100, 1)]), 1.0);
        // Never above 1: the estimate stays the upper bound it was.
        assert_eq!(ratio(vec![part(1000, 5000, 0)]), 1.0);
    }

    fn source(version: Option<&str>) -> SourceObject {
        SourceObject {
            bucket: "b".into(),
            key: "inbox/team/My Invoices été.jsonl".into(),
            etag: "e1".into(),
            version_id: version.map(str::to_string),
        }
    }

    #[test]
    fn job_ids_follow_object_identity_and_are_key_safe() {
        let a = source(Some("v1")).job_id();
        assert_eq!(a, source(Some("v1")).job_id());
        assert_ne!(a, source(Some("v2")).job_id());
        assert!(a.starts_with("my-invoices-t-"), "{a}");
        assert!(
            a.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
    }
}
