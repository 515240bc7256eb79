//! One normalised view of a provider batch's state.

use serde::{Deserialize, Serialize};

/// Normalised lifecycle state, the same for every provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BatchState {
    Pending,
    Processing,
    Completed,
    Failed,
    Cancelled,
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
    pub total: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub pending: u64,
}

/// What a status call saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchStatus {
    /// The provider's id for the batch (OpenAI `batch_…`, Anthropic `msgbatch_…`,
    /// Vertex job resource name, Gemini `batches/…`).
    pub batch_id: String,
    pub state: BatchState,
    /// The provider's own status string, unchanged.
    pub raw_status: String,
    pub counts: RequestCounts,
    /// RFC 3339 timestamps where the provider gives them.
    pub created_at: Option<String>,
    pub ended_at: Option<String>,
    /// Provider-reported failure reason for the whole batch, if any.
    pub error: Option<String>,
    /// Tags we attached at submit (job id, part index), read back from the provider.
    pub tags: std::collections::BTreeMap<String, String>,
}
