//! Provider batch APIs: one folder per provider, each described once by a
//! [`ProviderDescriptor`] (as `object_store` does for storage backends). [`descriptor`]
//! is the only place that maps a [`ProviderKind`] to its provider.
//!
//! Each provider folder has:
//! - `encode.rs`: pure request-line encoding (schema translation applied), golden-tested,
//!   a [`RequestEncoder`] (contract and shared helpers in [`encode`]);
//! - `decode.rs`: pure result-line decoding into a [`decode::Decoded`], golden-tested;
//! - `schema.rs`: the translation of the job's JSON Schema into what the API takes;
//! - `mod.rs`: the descriptor, the configuration it reads and the client, the HTTP
//!   operations over [`http::HttpClient`].
//!
//! Amazon Bedrock (`bedrock/`) keeps its input and output in the pipeline's S3 bucket.
//!
//! The two Google APIs (Vertex AI, model prefix `google/`, and the Gemini API, `gemini/`)
//! share their request and response bodies, schema subset and wire details in `google/`.

pub mod anthropic;
pub mod bedrock;
pub mod config;
mod contract;
pub mod decode;
pub mod encode;
pub mod google;
pub mod http;
pub mod lines;
pub mod memory;
pub mod openai;

use std::sync::Arc;

use crate::error::Result;
use crate::model::ProviderKind;
use config::{ProviderConfig, Variables};
pub use contract::{AnswerFixup, BatchProvider, BatchTags, LineStream, ProviderDescriptor};
pub use encode::{Framing, PartLimits, RequestEncoder};

/// The descriptor of `kind`.
pub fn descriptor(kind: ProviderKind) -> &'static dyn ProviderDescriptor {
    match kind {
        ProviderKind::OpenAi => &openai::OpenAi,
        ProviderKind::Anthropic => &anthropic::Anthropic,
        ProviderKind::Vertex => &google::vertex::Vertex,
        ProviderKind::Gemini => &google::gemini::Gemini,
        ProviderKind::Bedrock => &bedrock::Bedrock,
    }
}

/// The client for `kind`, configured by `config` (see [`ProviderConfig::from_env`]).
/// Fails early when the configuration lacks what the provider needs.
pub fn connect(kind: ProviderKind, config: &ProviderConfig) -> Result<Arc<dyn BatchProvider>> {
    descriptor(kind).connect(config)
}

// Defined here rather than in `config.rs`, which knows no provider.
impl ProviderConfig {
    /// Reads the variables of `kind` from the process environment.
    pub fn from_env(kind: ProviderKind) -> Result<Self> {
        Self::from_lookup(kind, |name| std::env::var(name).ok())
    }

    /// Like [`Self::from_env`] with `lookup` in place of the process environment.
    pub fn from_lookup(
        kind: ProviderKind,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self> {
        descriptor(kind).config(&Variables::new(kind, &lookup))
    }
}

#[cfg(test)]
mod tests {
    use super::contract::id_path;
    use super::*;

    #[test]
    fn each_provider_names_its_temporary_failures() {
        let cases = [
            (ProviderKind::OpenAi, "rate_limit_exceeded", "", true),
            (ProviderKind::OpenAi, "context_length_exceeded", "", false),
            (ProviderKind::Anthropic, "overloaded_error", "", true),
            (ProviderKind::Anthropic, "invalid_request_error", "", false),
            (ProviderKind::Gemini, "UNAVAILABLE", "", true),
            (ProviderKind::Gemini, "INVALID_ARGUMENT", "", false),
            (
                ProviderKind::Vertex,
                "provider_error",
                r#"{"status": "UNAVAILABLE"}"#,
                true,
            ),
            (
                ProviderKind::Vertex,
                "provider_error",
                "Bad Request: invalid schema",
                false,
            ),
            (
                ProviderKind::Vertex,
                "provider_error",
                "INTERNAL: 13: Internal error encountered.",
                true,
            ),
            (
                ProviderKind::Vertex,
                "provider_error",
                "INVALID_ARGUMENT: 3: bad",
                false,
            ),
            // Gemini error types are names, never HTTP codes.
            (ProviderKind::Gemini, "503", "", false),
            // Another provider's code means nothing here.
            (ProviderKind::OpenAi, "overloaded_error", "", false),
        ];
        for (kind, error_type, message, temporary) in cases {
            assert_eq!(
                descriptor(kind).is_temporary_failure(error_type, message),
                temporary,
                "{kind} {error_type} {message}"
            );
        }
    }

    #[test]
    fn batch_ids_cannot_escape_their_path() {
        let kind = ProviderKind::Vertex;
        for good in [
            "batch_abc",
            "batches/x-1",
            "projects/p/locations/us-central1/batchPredictionJobs/9",
        ] {
            assert_eq!(id_path(kind, good).unwrap(), good);
        }
        for bad in [
            "", "a/../b", "..", "a//b", "a?b", "a#b", "a%2e", "x/", "a b",
        ] {
            assert!(id_path(kind, bad).is_err(), "{bad}");
        }
    }
}
