//! The "ready" queue between poll and collect (SQS in production, memory in tests).

#[cfg(feature = "aws")]
mod sqs;

use std::fmt::Debug;
use std::sync::Mutex;

use async_trait::async_trait;

#[cfg(feature = "aws")]
pub use sqs::SqsQueue;

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

/// Collects sent messages in memory; tests drain them into `collect`.
#[derive(Debug, Default)]
pub struct MemoryQueue {
    messages: Mutex<Vec<String>>,
}

impl MemoryQueue {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// The messages sent since the last drain, oldest first.
    pub fn drain(&self) -> Vec<String> {
        std::mem::take(&mut *self.messages.lock().expect("memory queue lock"))
    }
}

#[async_trait]
impl Queue for MemoryQueue {
    async fn send(&self, body: String) -> Result<(), QueueError> {
        self.messages.lock().expect("memory queue lock").push(body);
        Ok(())
    }
}
