//! Poll's fan-out: with many open jobs, the poll tick only lists them and sends one
//! message per job to the fan-out queue, and poll's workers (the same function, fed by
//! that queue) poll each job. The tick's work stays one list and one send per ten jobs
//! however many jobs are open.

use serde::{Deserialize, Serialize};

use super::context::PipelineError;
use super::ready::parse_message;
use crate::queue::Queue;

/// The fan-out message: poll this open job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollJobMessage {
    /// The job to poll.
    pub job_id: String,
}

impl PollJobMessage {
    /// Reads a message body; an unreadable one is an error that quotes it.
    pub fn parse(body: &str) -> Result<Self, PipelineError> {
        parse_message(body)
    }
}

/// Sends one message per job, in as few queue calls as the queue allows. A tick that
/// fails half-way is harmless: the next tick sends every job again, and polling a job
/// twice is safe.
pub(super) async fn fan_out(queue: &dyn Queue, jobs: &[String]) -> Result<(), PipelineError> {
    let bodies = jobs
        .iter()
        .map(|job_id| {
            serde_json::to_string(&PollJobMessage {
                job_id: job_id.clone(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    queue.send_batch(bodies).await?;
    Ok(())
}
