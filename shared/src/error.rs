//! Typed errors of the library. Every variant carries enough context to act on.

use crate::model::{InvalidModel, ProviderKind};

/// The library's result: [`Error`] unless a function says otherwise.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything the library can fail with. New variants may come with new providers and
/// features, so matches need a wildcard arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A model string that is not `provider/model` with a known provider.
    #[error(transparent)]
    InvalidModel(#[from] InvalidModel),

    /// A request the library refuses to build (bad id, empty conversation, …).
    #[error("invalid request {custom_id:?}: {reason}")]
    InvalidRequest {
        /// The request's id as given.
        custom_id: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A JSON Schema that cannot be expressed for a provider.
    #[error("schema {name:?} cannot be used with {provider}: {reason}")]
    UnsupportedSchema {
        /// The schema's name.
        name: String,
        /// The provider that cannot take it.
        provider: ProviderKind,
        /// The construct it cannot express, and where.
        reason: String,
    },

    /// Configuration missing or wrong (base URL, credentials, project, bucket).
    #[error("configuration: {0}")]
    Config(String),

    /// The provider answered with an error that retrying will not fix.
    #[error("{provider} API error (HTTP {status}): {message}")]
    Api {
        /// The provider that answered.
        provider: ProviderKind,
        /// The HTTP status of the answer.
        status: u16,
        /// The provider's own message (scrubbed of secrets).
        message: String,
    },

    /// The request never got a usable answer (connection, timeout, retries exhausted).
    #[error("{provider} request failed after {attempts} attempt(s): {message}")]
    Transport {
        /// The provider asked.
        provider: ProviderKind,
        /// Attempts made, the first one included.
        attempts: u32,
        /// The last failure (scrubbed of secrets).
        message: String,
    },

    /// The provider kept answering HTTP 429 until the attempts ran out: a rate limit,
    /// or an account quota (Anthropic's processing queue, Vertex AI's concurrent jobs,
    /// the Gemini API's enqueued tokens) that frees up only as earlier batches end.
    #[error(
        "{provider} refused the request for a rate limit or quota after {attempts} attempt(s): {message}"
    )]
    QuotaExceeded {
        /// The provider asked.
        provider: ProviderKind,
        /// Attempts made, the first one included.
        attempts: u32,
        /// The provider's last answer (scrubbed of secrets).
        message: String,
    },

    /// The provider answered 2xx with a body we could not understand.
    #[error("{provider} returned an unexpected answer: {message}")]
    Protocol {
        /// The provider that answered.
        provider: ProviderKind,
        /// What was wrong with the answer, quoting its start (scrubbed of secrets).
        message: String,
    },

    /// A URL handed out by the provider points somewhere we must not send credentials.
    #[error("refusing to follow {url:?}: host is not the configured {provider} API host")]
    ForeignHost {
        /// The provider whose answer named the URL.
        provider: ProviderKind,
        /// The URL as handed out.
        url: String,
    },

    /// A document that does not serialise or parse as the JSON expected.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
}
