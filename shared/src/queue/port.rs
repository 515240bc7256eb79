//! The queue port: the trait every queue implements and its error.

use std::fmt::Debug;

use async_trait::async_trait;

/// A message could not be sent; carries the backend's reason.
#[derive(Debug, thiserror::Error)]
#[error("queue send failed: {0}")]
pub struct QueueError(pub String);

/// Where poll puts one message per finished part, for collect (and, when poll fans
/// out, one message per open job for its workers).
#[async_trait]
pub trait Queue: Send + Sync + Debug {
    /// Sends one message with this body.
    async fn send(&self, body: String) -> Result<(), QueueError>;

    /// Sends every body, in as few calls as the backend allows (SQS: ten a call).
    /// On an error some of the bodies may have been sent; sending them all again is
    /// safe, since every message of the pipeline is idempotent.
    async fn send_batch(&self, bodies: Vec<String>) -> Result<(), QueueError> {
        for body in bodies {
            self.send(body).await?;
        }
        Ok(())
    }
}
