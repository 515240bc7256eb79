//! The ready-queue message between poll and collect.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::context::PipelineError;

/// The ready-queue message: one part of one job has ended at the provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadyMessage {
    /// The job the part belongs to.
    pub job_id: String,
    /// The part's index in the job record.
    pub part: u32,
}

impl ReadyMessage {
    /// Reads a message body; an unreadable one is an error that quotes it.
    pub fn parse(body: &str) -> Result<Self, PipelineError> {
        parse_message(body)
    }
}

/// Reads a queue message of the pipeline; an unreadable one is an error that quotes it.
pub(super) fn parse_message<T: DeserializeOwned>(body: &str) -> Result<T, PipelineError> {
    serde_json::from_str(body).map_err(|e| PipelineError::InvalidMessage {
        body: body.chars().take(200).collect(),
        reason: e.to_string(),
    })
}
