//! Typed errors of the library. Every variant carries enough context to act on.

use crate::model::{InvalidModel, ProviderKind};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A model string that is not `provider/model` with a known provider.
    #[error(transparent)]
    InvalidModel(#[from] InvalidModel),

    /// A request the library refuses to build (bad id, empty conversation, …).
    #[error("invalid request {custom_id:?}: {reason}")]
    InvalidRequest { custom_id: String, reason: String },

    /// A JSON Schema that cannot be expressed for a provider.
    #[error("schema {name:?} cannot be used with {provider}: {reason}")]
    UnsupportedSchema {
        name: String,
        provider: ProviderKind,
        reason: String,
    },

    /// Configuration missing or wrong (base URL, credentials, project, bucket).
    #[error("configuration: {0}")]
    Config(String),

    /// The provider answered with an error that retrying will not fix.
    #[error("{provider} API error (HTTP {status}): {message}")]
    Api {
        provider: ProviderKind,
        status: u16,
        message: String,
    },

    /// The request never got a usable answer (connection, timeout, retries exhausted).
    #[error("{provider} request failed after {attempts} attempt(s): {message}")]
    Transport {
        provider: ProviderKind,
        attempts: u32,
        message: String,
    },

    /// The provider answered 2xx with a body we could not understand.
    #[error("{provider} returned an unexpected answer: {message}")]
    Protocol {
        provider: ProviderKind,
        message: String,
    },

    /// A URL handed out by the provider points somewhere we must not send credentials.
    #[error("refusing to follow {url:?}: host is not the configured {provider} API host")]
    ForeignHost { provider: ProviderKind, url: String },

    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
}
