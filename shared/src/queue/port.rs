//! The queue port: the trait every queue implements and its error.

use std::fmt::Debug;

use async_trait::async_trait;

/// A message could not be sent; carries the backend's reason.
#[derive(Debug, thiserror::Error)]
#[error("queue send failed: {0}")]
pub struct QueueError(pub String);

/// Where poll puts one message per finished part, for collect.
#[async_trait]
pub trait Queue: Send + Sync + Debug {
    /// Sends one message with this body.
    async fn send(&self, body: String) -> Result<(), QueueError>;
}
