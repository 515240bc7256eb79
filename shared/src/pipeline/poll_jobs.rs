//! Poll's fan-out: with many open jobs, the poll tick only lists them and sends one
//! message per job to the fan-out queue, and poll's workers (the same function, fed by
//! that queue) poll each job. The tick's work stays one list and one send per ten jobs
//! however many jobs are open.

use super::context::PipelineError;
use super::ready::JobMessage;
use crate::queue::Queue;

/// Sends one message per job, in as few queue calls as the queue allows. A tick that
/// fails half-way is harmless: the next tick sends every job again, and polling a job
/// twice is safe.
pub(super) async fn fan_out(queue: &dyn Queue, jobs: &[String]) -> Result<(), PipelineError> {
    let bodies = jobs.iter().map(|job_id| JobMessage::body(job_id)).collect();
    queue.send_batch(bodies).await?;
    Ok(())
}
