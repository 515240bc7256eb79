//! Results as a Maybe: every line becomes a success or an error, never a panic.

use serde::{Deserialize, Serialize};

/// Token usage of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// A validated answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Success {
    pub custom_id: String,
    pub result: serde_json::Value,
    pub usage: Usage,
}

/// A request that did not produce a valid answer, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub custom_id: String,
    /// The provider's own code or type, or one of ours (`schema_mismatch`, …).
    pub error_type: String,
    pub error_message: String,
    /// The results line as received, where there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_data: Option<String>,
    /// 1-based line number in the file this came from, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Success(Success),
    Error(Failure),
}

impl Outcome {
    pub fn custom_id(&self) -> &str {
        match self {
            Outcome::Success(s) => &s.custom_id,
            Outcome::Error(e) => &e.custom_id,
        }
    }
}
