//! The success ledger behind `skip_succeeded` (DynamoDB in production, memory in tests).

#[cfg(feature = "aws")]
mod dynamodb;
mod port;

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

#[cfg(feature = "aws")]
pub use dynamodb::DynamoLedger;
pub use port::{LedgerError, MAX_LOOKUP_IDS, SuccessLedger};

/// The ledger in memory, for tests and the library used on its own.
#[derive(Debug, Default)]
pub struct MemoryLedger {
    rows: Mutex<HashMap<(String, String), String>>,
}

impl MemoryLedger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rows recorded, over every pipeline.
    pub fn len(&self) -> usize {
        self.rows.lock().expect("ledger lock").len()
    }

    /// True when nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl SuccessLedger for MemoryLedger {
    async fn lookup(
        &self,
        pipeline: &str,
        ids: &[String],
    ) -> Result<HashMap<String, String>, LedgerError> {
        let rows = self.rows.lock().expect("ledger lock");
        Ok(ids
            .iter()
            .filter_map(|id| {
                let job = rows.get(&(pipeline.to_string(), id.clone()))?;
                Some((id.clone(), job.clone()))
            })
            .collect())
    }

    async fn record(&self, pipeline: &str, job: &str, ids: &[String]) -> Result<(), LedgerError> {
        let mut rows = self.rows.lock().expect("ledger lock");
        for id in ids {
            rows.insert((pipeline.to_string(), id.clone()), job.to_string());
        }
        Ok(())
    }
}
