//! The "ready" queue between poll and collect (SQS in production, memory in tests).

mod port;
#[cfg(feature = "aws")]
mod sqs;

use std::sync::Mutex;

use async_trait::async_trait;

pub use port::{Queue, QueueError};
#[cfg(feature = "aws")]
pub use sqs::SqsQueue;

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
