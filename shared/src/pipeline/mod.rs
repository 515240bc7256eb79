//! The pipeline steps behind the three Lambda functions: `submit` (S3 upload →
//! provider batches), `poll` (timer → status → ready queue), `collect` (ready message →
//! validated results in S3). Each step is idempotent; see `design.md` for the invariant.

pub mod collect;
#[cfg(feature = "aws")]
pub mod env;
#[cfg(feature = "aws")]
pub mod events;
pub mod input;
pub mod job;
pub mod poll;
#[cfg(feature = "aws")]
pub mod secrets;
pub mod spec;
pub mod submit;
mod summary;

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::model::ProviderKind;
use crate::provider::BatchProvider;
use crate::queue::{Queue, QueueError};
use crate::storage::{ObjectStore, StoreError};

pub use collect::{CollectOutcome, ReadyMessage, collect};
pub use poll::{PollReport, poll};
pub use submit::{SubmitOutcome, UploadedObject, submit};

/// Failures that make a function invocation fail (so that Lambda retries it).
/// Bad input is not among them: it becomes error records instead.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Provider(#[from] crate::Error),
    #[error("record {key} is not valid JSON: {reason}")]
    CorruptRecord { key: String, reason: String },
    #[error("job {job}: too many concurrent updates of its record")]
    Contended { job: String },
    #[error("job {job} part {part} is being collected by another invocation until {until}")]
    Busy {
        job: String,
        part: u32,
        until: String,
    },
    #[error("job {job} has no part {part}")]
    UnknownPart { job: String, part: u32 },
    #[error("job {job} part {part}: {received} results arrived, the provider reports {expected}")]
    IncompleteResults {
        job: String,
        part: u32,
        received: u64,
        expected: u64,
    },
    #[error("invalid ready message {body:?}: {reason}")]
    InvalidMessage { body: String, reason: String },
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Hands out a client per provider (built from configuration and secrets in Lambda,
/// pointed at the emulator in tests).
#[async_trait]
pub trait ProviderSource: Send + Sync + Debug {
    async fn provider(&self, kind: ProviderKind) -> crate::Result<Arc<dyn BatchProvider>>;
}

/// Tunables of the pipeline, with production defaults.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Jobs polled at once.
    pub poll_concurrency: usize,
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
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            poll_concurrency: 8,
            requeue_after: Duration::from_secs(30 * 60),
            submit_lease: Duration::from_secs(16 * 60),
            collect_lease: Duration::from_secs(16 * 60),
            max_object_bytes: 5 * 1024 * 1024 * 1024,
            // An hour at the template's five-minute schedule: long enough to rotate a key.
            max_refused_polls: 12,
        }
    }
}

/// What every step works with.
#[derive(Debug, Clone)]
pub struct Context {
    pub store: Arc<dyn ObjectStore>,
    /// The bucket `store` writes to (recorded in job sources).
    pub bucket: String,
    pub queue: Arc<dyn Queue>,
    pub providers: Arc<dyn ProviderSource>,
    pub settings: Settings,
}
