//! The pipeline steps behind the three Lambda functions: `submit` (S3 upload →
//! provider batches), `poll` (timer → status → ready queue), `collect` (ready message →
//! validated results in S3). Each step is idempotent;
//! `ARCHITECTURE.md` at the repository root states the invariant every step keeps.

pub mod cancel;
pub mod collect;
mod context;
mod csv_input;
#[cfg(feature = "aws")]
pub mod env;
#[cfg(feature = "aws")]
pub mod events;
mod id_set;
pub mod input;
pub mod job;
mod parts;
pub mod poll;
pub mod poll_jobs;
pub mod ready;
mod rerun;
pub mod row;
#[cfg(feature = "aws")]
pub mod secrets;
pub mod skip;
pub mod spec;
#[cfg(test)]
mod step_tests;
pub mod submission;
pub mod submit;
mod summary;
pub mod template;
mod upload;
mod waiting;

pub use cancel::{CancelRequest, request_cancel};
pub use collect::{CollectOutcome, collect};
pub use context::{Context, PipelineError, ProviderSource, Settings};
pub use poll::{ListedPoll, PollReport, poll, poll_listed};

pub use ready::{JobMessage, ReadyMessage};
pub use submit::{SubmitOutcome, UploadedObject, submit};
