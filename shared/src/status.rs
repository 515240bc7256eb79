//! One normalised view of a provider batch's state.

use serde::{Deserialize, Serialize};

/// Normalised lifecycle state, the same for every provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BatchState {
    /// Accepted, not started (validating, queued).
    Pending,
    /// Running.
    Processing,
    /// Finished; results can be read (some may be errors).
    Completed,
    /// The whole batch failed (e.g. invalid input); results may be missing.
    Failed,
    /// Cancelled; the requests done before that have results.
    Cancelled,
    /// Not finished within the provider's window; unfinished requests have none.
    Expired,
}

impl BatchState {
    /// True once the provider will not change the batch any more; results can be read.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Failed | Self::Cancelled | Self::Expired
        )
    }
}

/// Request counts as the provider reports them (missing figures are zero).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCounts {
    /// Requests in the batch.
    pub total: u64,
    /// Requests that got an answer.
    pub succeeded: u64,
    /// Requests that got an error (or were cancelled or expired).
    pub failed: u64,
    /// Requests not processed yet.
    pub pending: u64,
}

/// What a status call saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchStatus {
    /// The provider's id for the batch (OpenAI `batch_…`, Anthropic `msgbatch_…`,
    /// Vertex job resource name, Gemini `batches/…`).
    pub batch_id: String,
    /// The state, normalised.
    pub state: BatchState,
    /// The provider's own status string, unchanged.
    pub raw_status: String,
    /// Request counts, where the provider reports them.
    pub counts: RequestCounts,
    /// When the batch was created (RFC 3339), where the provider says.
    pub created_at: Option<String>,
    /// When the batch reached its final state (RFC 3339), where the provider says.
    pub ended_at: Option<String>,
    /// Provider-reported failure reason for the whole batch, if any.
    pub error: Option<String>,
    /// The provider failed the batch for an account quota (OpenAI's
    /// `token_limit_exceeded`), not for its requests: the same batch fits later.
    #[serde(default)]
    pub quota_exceeded: bool,
    /// Tags we attached at submit (job id, part index), read back from the provider.
    pub tags: std::collections::BTreeMap<String, String>,
}
