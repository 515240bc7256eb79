//! What every pipeline step works with: the context (store, queue, providers,
//! settings, clock, metrics) and the errors that fail an invocation.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::clock::Clock;
use crate::ledger::SuccessLedger;
use crate::metrics::MetricsSink;
use crate::model::ProviderKind;
use crate::provider::BatchProvider;
use crate::queue::{Queue, QueueError};
use crate::storage::{ObjectStore, StoreError};

/// Failures that make a function invocation fail (so that Lambda retries it).
/// Bad input is not among them: it becomes error records instead.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// The object store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A queue (ready or fan-out) failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The successes could not be written as Parquet.
    #[error(transparent)]
    Table(#[from] crate::table::TableError),
    /// A provider call or the provider's configuration failed.
    #[error(transparent)]
    Provider(#[from] crate::Error),
    /// A record the pipeline wrote cannot be read back.
    #[error("record {key} is not valid JSON: {reason}")]
    CorruptRecord {
        /// The record's key.
        key: String,
        /// The JSON error.
        reason: String,
    },
    /// Conditional writes of the job record kept losing to other invocations.
    #[error("job {job}: too many concurrent updates of its record")]
    Contended {
        /// The job's id.
        job: String,
    },
    /// Another invocation holds the part's collect lease.
    #[error("job {job} part {part} is being collected by another invocation until {until}")]
    Busy {
        /// The job's id.
        job: String,
        /// The part's index.
        part: u32,
        /// When the lease ends (RFC 3339).
        until: String,
    },
    /// No job has this id (a cancellation request for a job that does not exist).
    #[error("there is no job {job}")]
    UnknownJob {
        /// The job's id.
        job: String,
    },
    /// A ready message names a part the job does not have.
    #[error("job {job} has no part {part}")]
    UnknownPart {
        /// The job's id.
        job: String,
        /// The part's index.
        part: u32,
    },
    /// Fewer results than the provider counted; the delivery is retried.
    #[error("job {job} part {part}: {received} results arrived, the provider reports {expected}")]
    IncompleteResults {
        /// The job's id.
        job: String,
        /// The part's index.
        part: u32,
        /// Results read.
        received: u64,
        /// Results the provider reports.
        expected: u64,
    },
    /// A queue message (ready or fan-out) that is not the pipeline's.
    #[error("invalid queue message {body:?}: {reason}")]
    InvalidMessage {
        /// The message body.
        body: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Serialising or parsing JSON failed.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The success ledger failed.
    #[error(transparent)]
    Ledger(#[from] crate::ledger::LedgerError),
}

/// Hands out a client per provider (built from configuration and secrets in Lambda,
/// pointed at the emulator in tests).
#[async_trait]
pub trait ProviderSource: Send + Sync + Debug {
    /// The client for `kind`, built on first use.
    async fn provider(&self, kind: ProviderKind) -> crate::Result<Arc<dyn BatchProvider>>;
}

/// Tunables of the pipeline, with production defaults.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Jobs polled at once.
    pub poll_concurrency: usize,
    /// Open jobs a poll tick still polls itself; with more, and a fan-out queue
    /// ([`Context::poll_jobs`]), the tick sends one message per job to poll's workers.
    pub poll_inline_jobs: usize,
    /// A part queued for collect but not collected after this is queued again
    /// (covers a poll that died between its record write and its queue send).
    pub requeue_after: Duration,
    /// How long a submit owns a job before a repeated event may take it over;
    /// longer than the function's timeout.
    pub submit_lease: Duration,
    /// How long a collect owns a part before another delivery may take it over;
    /// longer than the function's timeout.
    pub collect_lease: Duration,
    /// Largest upload accepted.
    pub max_object_bytes: u64,
    /// Status calls a provider may refuse in a row (HTTP 400, 401, 403, 404) before poll
    /// gives the batch up and collect records its requests as `batch_unreachable`.
    pub max_refused_polls: u32,
    /// The provider accounts' limits by model or provider (`QUOTA_LIMITS`); a job's
    /// spec may complete them.
    pub quotas: crate::quota::QuotaTable,
    /// The largest part submit builds, below the provider's own limit (Vertex AI takes
    /// 1 GB, the Gemini API 2 GB): a part is held in memory while it is built and sent,
    /// so this bounds submit's memory.
    pub max_part_bytes: usize,
    /// How long one submit invocation reads an upload before it hands the rest to the
    /// next one: below the function's timeout, with room to close the open part.
    pub submit_budget: Duration,
    /// Bedrock's fewest records per batch job (`BEDROCK_MIN_RECORDS`): 100 unless the
    /// account's quota was changed. Parts are never built under it.
    pub bedrock_min_records: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            poll_concurrency: 8,
            // What one tick polls well within its timeout; beyond it workers scale out.
            poll_inline_jobs: 20,
            requeue_after: Duration::from_secs(30 * 60),
            submit_lease: Duration::from_secs(16 * 60),
            collect_lease: Duration::from_secs(16 * 60),
            // S3's own largest object: an upload of any size is read, over as many
            // invocations as it takes.
            max_object_bytes: 5 << 40,
            // An hour at the template's five-minute schedule: long enough to rotate a key.
            max_refused_polls: 12,
            quotas: crate::quota::QuotaTable::default(),
            max_part_bytes: 100_000_000,
            // The template's submit timeout is 15 minutes.
            submit_budget: Duration::from_secs(12 * 60),
            bedrock_min_records: crate::provider::bedrock::encode::MIN_RECORDS,
        }
    }
}

impl Settings {
    /// The fewest requests a batch of `provider` may hold.
    pub fn min_requests(&self, provider: crate::model::ProviderKind) -> usize {
        match provider {
            crate::model::ProviderKind::Bedrock => self.bedrock_min_records,
            other => crate::provider::descriptor(other).min_requests(),
        }
    }
}

/// What every step works with.
#[derive(Debug, Clone)]
pub struct Context {
    /// Inputs, job records and results.
    pub store: Arc<dyn ObjectStore>,
    /// The bucket `store` writes to (recorded in job sources).
    pub bucket: String,
    /// The ready queue from poll to collect.
    pub queue: Arc<dyn Queue>,
    /// The fan-out queue from the poll tick to poll's workers, one message per open
    /// job (None: the tick polls every job itself).
    pub poll_jobs: Option<Arc<dyn Queue>>,
    /// The provider clients.
    pub providers: Arc<dyn ProviderSource>,
    /// Tunables.
    pub settings: Settings,
    /// Now, for leases, requeue delays and record timestamps.
    pub clock: Arc<dyn Clock>,
    /// Rows with a success per pipeline, for `skip_succeeded` (None: not configured;
    /// a job that asks for it then fails with a reason that says so).
    pub ledger: Option<Arc<dyn SuccessLedger>>,
    /// Where submit hands the rest of an upload to its next invocation (a message
    /// `{"job_id"}` the submit function receives). None: poll resumes it on its
    /// next tick instead.
    pub submit_queue: Option<Arc<dyn Queue>>,
    /// Where the steps' metrics go (`StdoutSink` in the functions: EMF lines that
    /// CloudWatch Logs turns into metrics).
    pub metrics: Arc<dyn MetricsSink>,
}
