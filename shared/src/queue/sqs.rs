//! The SQS queue (also speaks to moto in tests through `AWS_ENDPOINT_URL`).

use async_trait::async_trait;

use super::port::{Queue, QueueError};

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
            .map_err(|e| QueueError(aws_sdk_sqs::error::DisplayErrorContext(&e).to_string()))?;
        Ok(())
    }
}
