//! The SQS queue (also speaks to moto in tests through `AWS_ENDPOINT_URL`).

use async_trait::async_trait;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;

use super::port::{Queue, QueueError};

/// The most messages one `SendMessageBatch` call takes.
const BATCH_ENTRIES: usize = 10;

/// Sends each message to one SQS queue.
#[derive(Debug, Clone)]
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    url: String,
}

impl SqsQueue {
    /// The queue at `url`, reached through `client`.
    pub fn new(client: aws_sdk_sqs::Client, url: impl Into<String>) -> Self {
        Self {
            client,
            url: url.into(),
        }
    }

    /// One `SendMessageBatch` call for at most ten bodies; answers the bodies SQS
    /// did not take, each with its reason.
    async fn send_group(&self, bodies: Vec<String>) -> Result<Vec<(String, String)>, QueueError> {
        let entries = bodies
            .iter()
            .enumerate()
            .map(|(i, body)| {
                SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(body)
                    .build()
                    .map_err(|e| QueueError(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let output = self
            .client
            .send_message_batch()
            .queue_url(&self.url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(sdk_error)?;
        Ok(output
            .failed()
            .iter()
            .filter_map(|failed| {
                let body = bodies.get(failed.id().parse::<usize>().ok()?)?;
                let reason = format!(
                    "{} ({}sender fault): {}",
                    failed.code(),
                    if failed.sender_fault() { "" } else { "no " },
                    failed.message().unwrap_or_default()
                );
                Some((body.clone(), reason))
            })
            .collect())
    }
}

fn sdk_error<E: std::error::Error + 'static>(e: E) -> QueueError {
    QueueError(aws_sdk_sqs::error::DisplayErrorContext(&e).to_string())
}

#[async_trait]
impl Queue for SqsQueue {
    async fn send(&self, body: String) -> Result<(), QueueError> {
        self.client
            .send_message()
            .queue_url(&self.url)
            .message_body(body)
            .send()
            .await
            .map_err(sdk_error)?;
        Ok(())
    }

    /// `SendMessageBatch` in groups of ten. Entries SQS fails one by one (throttling,
    /// an internal error) are sent once more in a group of their own; what fails
    /// again is the error.
    async fn send_batch(&self, bodies: Vec<String>) -> Result<(), QueueError> {
        let mut bodies = bodies.into_iter().peekable();
        while bodies.peek().is_some() {
            let group: Vec<String> = bodies.by_ref().take(BATCH_ENTRIES).collect();
            let failed = self.send_group(group).await?;
            if failed.is_empty() {
                continue;
            }
            let again = failed.into_iter().map(|(body, _)| body).collect();
            if let Some((_, reason)) = self.send_group(again).await?.into_iter().next() {
                return Err(QueueError(format!(
                    "SendMessageBatch entry failed: {reason}"
                )));
            }
        }
        Ok(())
    }
}
