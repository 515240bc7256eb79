//! Lambda events in, pipeline steps out: what each handler calls.

use aws_lambda_events::event::s3::S3Event;
use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use percent_encoding::percent_decode_str;
use serde::Serialize;

use super::collect::{ReadyMessage, collect};
use super::context::{Context, PipelineError};
use super::job;
use super::poll::{PollReport, poll, poll_listed};
use super::ready::JobMessage;
use super::submission::resume_submit;
use super::submit::{SubmitOutcome, UploadedObject, submit};

/// S3 event keys are URL-encoded with `+` for spaces.
pub fn decode_s3_key(raw: &str) -> String {
    let spaced = raw.replace('+', " ");
    percent_decode_str(&spaced).decode_utf8_lossy().into_owned()
}

/// Whatever the submit function is invoked with: S3 notifications are submitted;
/// messages of the submit queue (`{"job_id"}`, an upload handed over by an earlier
/// invocation) resume their job; S3's `s3:TestEvent` (sent when a notification is
/// configured) and any other payload are ignored with a log line, since retrying them
/// could never help.
pub async fn handle_submit_payload(
    ctx: &Context,
    payload: serde_json::Value,
) -> Result<SubmitResponse, PipelineError> {
    let from_sqs = payload["Records"][0]["eventSource"] == "aws:sqs";
    if from_sqs && let Ok(event) = serde_json::from_value::<SqsEvent>(payload.clone()) {
        return Ok(SubmitResponse::Handovers(
            resume_handed_over(ctx, event).await,
        ));
    }
    let reason = match payload.get("Event").and_then(|e| e.as_str()) {
        Some(test @ "s3:TestEvent") => format!("{test} is S3's test notification"),
        _ => match serde_json::from_value::<S3Event>(payload) {
            Ok(event) => return Ok(SubmitResponse::Uploads(handle_s3_event(ctx, event).await?)),
            Err(e) => format!("not an S3 notification: {e}"),
        },
    };
    tracing::info!(%reason, "event ignored");
    Ok(SubmitResponse::Uploads(vec![SubmitOutcome::Ignored {
        key: String::new(),
        reason,
    }]))
}

/// What the submit function answers: what became of each upload, or the submit
/// queue's messages to deliver again.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum SubmitResponse {
    /// The S3 notification's uploads (or why the payload was ignored).
    Uploads(Vec<SubmitOutcome>),
    /// Handed-over uploads whose resumption failed.
    Handovers(SqsBatchResponse),
}

/// Resumes the job each submit-queue message names; a message whose job could not be
/// resumed is reported back, so that only it comes again (poll also resumes the job
/// once its lease has passed).
async fn resume_handed_over(ctx: &Context, event: SqsEvent) -> SqsBatchResponse {
    let mut response = SqsBatchResponse::default();
    for message in event.records {
        let id = message.message_id.unwrap_or_default();
        let body = message.body.unwrap_or_default();
        let Ok(JobMessage { job_id }) = JobMessage::parse(&body) else {
            // Delivering it again could never help.
            tracing::warn!(message = %id, %body, "submit queue message ignored: not a job id");
            continue;
        };
        let resumed = match job::load(ctx.store.as_ref(), &job_id).await {
            Ok(snapshot) => resume_submit(ctx, snapshot).await,
            Err(e) => Err(e),
        };
        match resumed {
            Ok(outcome) => tracing::info!(message = %id, ?outcome, "submit"),
            Err(e) => {
                tracing::error!(message = %id, job = %job_id, error = %e, "resuming the upload failed; the message will be delivered again");
                response.batch_item_failures.push(item_failure(id));
            }
        }
    }
    response
}

/// Submits every object the event names. Objects of another bucket, events other than
/// `ObjectCreated:*` and folder markers (keys ending in `/`) are ignored with a log
/// line. An error (S3 or provider unreachable) fails the invocation so that Lambda
/// retries; submit resumes where it stopped.
pub async fn handle_s3_event(
    ctx: &Context,
    event: S3Event,
) -> Result<Vec<SubmitOutcome>, PipelineError> {
    let mut outcomes = Vec::with_capacity(event.records.len());
    for record in event.records {
        let key = decode_s3_key(record.s3.object.key.as_deref().unwrap_or_default());
        let event_name = record.event_name.as_deref().unwrap_or("ObjectCreated");
        let not_an_upload = if record.s3.bucket.name.as_deref() != Some(ctx.bucket.as_str()) {
            Some(format!(
                "bucket {:?} is not this pipeline's",
                record.s3.bucket.name
            ))
        } else if !event_name.starts_with("ObjectCreated") {
            Some(format!("{event_name} is not an upload"))
        } else if key.ends_with('/') {
            Some("a folder marker, not a file".to_string())
        } else {
            None
        };
        if let Some(reason) = not_an_upload {
            tracing::info!(%key, %reason, "event record ignored");
            outcomes.push(SubmitOutcome::Ignored { key, reason });
            continue;
        }
        let object = UploadedObject {
            key,
            version_id: record
                .s3
                .object
                .version_id
                .filter(|v| !v.is_empty() && v != "null"),
        };
        let outcome = submit(ctx, &object).await?;
        tracing::info!(?outcome, "submit");
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

/// Collects every message; failed ones are reported back so that only they are
/// delivered again. `max_receives` is the queue's redrive count: the delivery that
/// reaches it is the last, and records what is still missing as errors.
pub async fn handle_sqs_event(
    ctx: &Context,
    event: SqsEvent,
    max_receives: u32,
) -> SqsBatchResponse {
    let mut response = SqsBatchResponse::default();
    for message in event.records {
        let id = message.message_id.clone().unwrap_or_default();
        let receives: u32 = message
            .attributes
            .get("ApproximateReceiveCount")
            .and_then(|n| n.parse().ok())
            .unwrap_or(1);
        let result = match ReadyMessage::parse(message.body.as_deref().unwrap_or_default()) {
            Ok(ready) => collect(ctx, &ready, receives >= max_receives).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(outcome) => tracing::info!(message = %id, ?outcome, "collect"),
            Err(e) => {
                tracing::error!(message = %id, error = %e, receives, "collect failed; the message will be delivered again");
                response.batch_item_failures.push(item_failure(id));
            }
        }
    }
    response
}

/// What the poll function answers: a tick's report, or a worker's failed messages.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum PollResponse {
    /// The schedule's tick (or any other payload but an SQS event).
    Tick(PollReport),
    /// The fan-out messages to deliver again.
    Worker(SqsBatchResponse),
}

/// Whatever the poll function is invoked with: an SQS event carries fan-out messages
/// for a worker ([`handle_poll_jobs_event`]); anything else (the EventBridge schedule,
/// a test invoke) is a tick.
pub async fn handle_poll_payload(
    ctx: &Context,
    payload: serde_json::Value,
) -> Result<PollResponse, PipelineError> {
    if payload.get("Records").is_some_and(|r| r.is_array()) {
        let event = serde_json::from_value::<SqsEvent>(payload)?;
        return Ok(PollResponse::Worker(
            handle_poll_jobs_event(ctx, event).await,
        ));
    }
    let report = poll(ctx).await?;
    tracing::info!(?report, "poll");
    Ok(PollResponse::Tick(report))
}

/// Polls the job of every fan-out message; a message whose job could not be polled
/// (or that is not a fan-out message) is reported back so that only it is delivered
/// again.
pub async fn handle_poll_jobs_event(ctx: &Context, event: SqsEvent) -> SqsBatchResponse {
    let mut response = SqsBatchResponse::default();
    let mut messages = Vec::with_capacity(event.records.len());
    for message in event.records {
        let id = message.message_id.unwrap_or_default();
        match JobMessage::parse(message.body.as_deref().unwrap_or_default()) {
            Ok(parsed) => messages.push((id, parsed.job_id)),
            Err(e) => {
                tracing::error!(message = %id, error = %e, "not a fan-out message");
                response.batch_item_failures.push(item_failure(id));
            }
        }
    }
    let jobs: Vec<String> = messages.iter().map(|(_, job)| job.clone()).collect();
    let polled = poll_listed(ctx, &jobs).await;
    tracing::info!(report = ?polled.report, "poll worker");
    for (id, job) in messages {
        if polled.unpolled.contains(&job) {
            response.batch_item_failures.push(item_failure(id));
        }
    }
    response
}

fn item_failure(message_id: String) -> BatchItemFailure {
    let mut failure = BatchItemFailure::default();
    failure.item_identifier = message_id;
    failure
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_s3_event_keys() {
        assert_eq!(
            decode_s3_key("inbox/demo/My+Invoices+%C3%A9t%C3%A9.jsonl"),
            "inbox/demo/My Invoices été.jsonl"
        );
        assert_eq!(decode_s3_key("inbox/a%2Bb.jsonl"), "inbox/a+b.jsonl");
    }
}
