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
//! The two Google APIs (Vertex AI, model prefix `google/`, and the Gemini API, `gemini/`)
//! share their request and response bodies, schema subset and wire details in `google/`.

pub mod anthropic;
pub mod config;
pub mod decode;
pub mod encode;
pub mod google;
pub mod http;
pub mod lines;
pub mod memory;
pub mod openai;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::ProviderKind;
use crate::request::{GenerationParams, OutputSchema};
use crate::status::BatchStatus;
use config::{ProviderConfig, Variables};
use decode::{Decoded, Malformed};
pub use encode::{Framing, PartLimits, RequestEncoder};

/// Tags attached to a provider batch so that it can be found again after a crash
/// (OpenAI `metadata`, Vertex `labels`, Gemini `displayName`; Anthropic has none).
pub type BatchTags = BTreeMap<String, String>;

/// One results line (without its newline), or the error that broke the stream.
pub type LineStream = BoxStream<'static, Result<Bytes>>;

/// The operations of a provider's batch API.
#[async_trait]
pub trait BatchProvider: Send + Sync + Debug {
    /// Which provider this client talks to.
    fn kind(&self) -> ProviderKind;

    /// Uploads the input where the API needs that, then creates the batch.
    async fn create(&self, model: &str, input: Bytes, tags: &BatchTags) -> Result<BatchStatus>;

    /// The batch's state and counts as the provider reports them now.
    async fn status(&self, batch_id: &str) -> Result<BatchStatus>;

    /// Asks the provider to stop the batch; answers its state after the request (the
    /// batch may keep running a while and still write partial results).
    async fn cancel(&self, batch_id: &str) -> Result<BatchStatus>;

    /// Every batch the account can see, all pages.
    async fn list(&self) -> Result<Vec<BatchStatus>>;

    /// A batch created earlier with exactly these tags, for crash recovery.
    /// Providers without tags (Anthropic) always answer `None`.
    async fn find(&self, tags: &BatchTags) -> Result<Option<BatchStatus>> {
        Ok(self
            .list()
            .await?
            .into_iter()
            .find(|b| tags.iter().all(|(k, v)| b.tags.get(k) == Some(v))))
    }

    /// Streams every results line of an ended batch (for OpenAI the output file and
    /// then the error file). Never buffers a whole file.
    async fn results(&self, batch_id: &str) -> Result<LineStream>;
}

/// Everything batchline knows about one provider. Each provider implements it once,
/// in its own folder; [`descriptor`] is the only `match` on [`ProviderKind`].
pub trait ProviderDescriptor: Send + Sync + Debug {
    /// Which provider this is.
    fn kind(&self) -> ProviderKind;

    /// The provider's name in a sentence ("OpenAI", "Vertex AI", "the Gemini API").
    fn display_name(&self) -> &'static str;

    /// How much one batch may hold.
    fn limits(&self) -> PartLimits;

    /// The encoder of requests to `model`, with `schema` translated once for the batch.
    fn encoder(
        &self,
        model: &str,
        schema: &OutputSchema,
        params: &GenerationParams,
    ) -> Result<Box<dyn RequestEncoder>>;

    /// Reads the envelope of one results line (without its newline).
    fn decode<'a>(&self, line: &'a [u8]) -> Result<Decoded<'a>, Malformed>;

    /// What to undo in answers to `schema` before they are validated against it (what
    /// the schema translation made the model write that `schema` does not accept), or
    /// `None` when answers to `schema` need nothing.
    fn answer_fixup(&self, _schema: &Value) -> Option<AnswerFixup> {
        None
    }

    /// The provider's own error types (and codes) for a request that failed for a
    /// temporary, server-side reason (throttling, overload, a server error): worth
    /// another attempt in a retry part.
    fn temporary_error_types(&self) -> &'static [&'static str];

    /// Whether a request that failed with `error_type` and `message` may succeed if
    /// sent again. The default looks up [`Self::temporary_error_types`].
    fn is_temporary_failure(&self, error_type: &str, _message: &str) -> bool {
        self.temporary_error_types().contains(&error_type)
    }

    /// The variables that may come from a secret store instead of the environment
    /// (the Lambda functions read `<NAME>_SECRET_ARN` and `<NAME>_PARAMETER`).
    fn secret_variables(&self) -> &'static [&'static str];

    /// The client configuration from `vars`; fails when a required variable is missing.
    fn config(&self, vars: &Variables<'_>) -> Result<ProviderConfig>;

    /// The client, configured by `config`. Fails early when the configuration lacks
    /// what the provider needs.
    fn connect(&self, config: &ProviderConfig) -> Result<Arc<dyn BatchProvider>>;
}

/// Rewrites an answer (second argument) so that it validates against the job's own
/// schema (first argument); see [`ProviderDescriptor::answer_fixup`].
pub type AnswerFixup = fn(&Value, &mut Value);

/// The descriptor of `kind`.
pub fn descriptor(kind: ProviderKind) -> &'static dyn ProviderDescriptor {
    match kind {
        ProviderKind::OpenAi => &openai::OpenAi,
        ProviderKind::Anthropic => &anthropic::Anthropic,
        ProviderKind::Vertex => &google::vertex::Vertex,
        ProviderKind::Gemini => &google::gemini::Gemini,
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

/// The API key a key-authenticated provider needs.
fn required_key(kind: ProviderKind, config: &ProviderConfig) -> Result<config::Credential> {
    config
        .api_key
        .clone()
        .ok_or_else(|| Error::Config(format!("{kind} needs an API key")))
}

/// A provider batch id (or resource name such as `batches/x`) checked before it goes
/// into a URL path: segments of `[A-Za-z0-9_.-]`, none of them `.` or `..`, so that an id
/// can never reach another endpoint with our credentials.
fn id_path(kind: ProviderKind, id: &str) -> Result<&str> {
    let valid = id.split('/').all(|segment| {
        !segment.is_empty()
            && segment != "."
            && segment != ".."
            && segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    });
    if !valid {
        return Err(Error::Config(format!(
            "{id:?} is not a valid {kind} batch id"
        )));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
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
