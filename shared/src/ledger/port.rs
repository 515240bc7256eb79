//! The ledger port: which rows of a named pipeline already have a success, and in
//! which job. What `skip_succeeded` reads at submit and collect writes.

use std::collections::HashMap;
use std::fmt::Debug;

use async_trait::async_trait;

/// The ledger could not be read or written; carries the backend's reason.
#[derive(Debug, thiserror::Error)]
#[error("success ledger {operation} failed: {message}")]
pub struct LedgerError {
    /// `lookup` or `record`.
    pub operation: &'static str,
    /// What the backend said.
    pub message: String,
}

/// Most ids one [`SuccessLedger::lookup`] takes (DynamoDB's `BatchGetItem` limit), so
/// that a call is one round trip.
pub const MAX_LOOKUP_IDS: usize = 100;

/// Rows with a success, per pipeline: `(pipeline, custom_id) → job`. One entry per
/// row, so a lookup costs the same however long the pipeline's history is.
#[async_trait]
pub trait SuccessLedger: Send + Sync + Debug {
    /// The job holding a success for each of `ids` (at most [`MAX_LOOKUP_IDS`]) that
    /// has one in `pipeline`; ids without a success are absent from the map.
    async fn lookup(
        &self,
        pipeline: &str,
        ids: &[String],
    ) -> Result<HashMap<String, String>, LedgerError>;

    /// Records that `ids` succeeded in `job` (any number; written in the backend's
    /// own batches). A row already recorded by another job now names this one: both
    /// hold a success, so either is a right answer to "where is it".
    async fn record(&self, pipeline: &str, job: &str, ids: &[String]) -> Result<(), LedgerError>;
}
