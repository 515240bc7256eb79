//! The pipeline's queue messages: the ready-queue message between poll and collect,
//! and the job message of poll's fan-out and of submit's handover.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::context::{Context, PipelineError};

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

/// Sends one ready message per part of `parts` of the job, for collect.
pub(super) async fn send_ready(
    ctx: &Context,
    job_id: &str,
    parts: &[u32],
) -> Result<(), PipelineError> {
    for &part in parts {
        let message = ReadyMessage {
            job_id: job_id.to_string(),
            part,
        };
        ctx.queue.send(serde_json::to_string(&message)?).await?;
    }
    Ok(())
}

/// A message that names a job: poll's fan-out (poll this open job) and submit's
/// handover (read on from this job's checkpoint).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobMessage {
    /// The job.
    pub job_id: String,
}

impl JobMessage {
    /// The message for `job_id`, as a queue body.
    pub fn body(job_id: &str) -> String {
        serde_json::json!({ "job_id": job_id }).to_string()
    }

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
