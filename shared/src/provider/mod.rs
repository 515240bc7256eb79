//! Provider batch APIs behind one trait, one module per provider (as `object_store`
//! does for storage backends).
//!
//! Each provider module has three parts:
//! - `encode`: pure request-line encoding (schema translation applied), golden-tested;
//! - `decode`: pure result-line decoding into [`crate::results::Decoded`], golden-tested;
//! - the client (`mod.rs`): the HTTP operations over [`http::HttpClient`].

pub mod anthropic;
pub mod config;
pub mod gemini;
mod google;
pub mod http;
pub mod lines;
pub mod openai;
pub mod vertex;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

use crate::error::{Error, Result};
use crate::model::ProviderKind;
use crate::request::Request;
use crate::status::BatchStatus;
use config::ProviderConfig;

/// Tags attached to a provider batch so that it can be found again after a crash
/// (OpenAI `metadata`, Vertex `labels`, Gemini `displayName`; Anthropic has none).
pub type BatchTags = BTreeMap<String, String>;

/// One results line (without its newline), or the error that broke the stream.
pub type LineStream = BoxStream<'static, Result<Bytes>>;

/// How much one provider batch may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartLimits {
    pub max_requests: usize,
    pub max_bytes: usize,
}

/// How request lines are laid out in a provider's batch input: JSONL for most,
/// one JSON document `{"requests":[…]}` for Anthropic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    pub prefix: &'static [u8],
    pub separator: &'static [u8],
    pub suffix: &'static [u8],
}

impl Framing {
    pub const JSONL: Framing = Framing {
        prefix: b"",
        separator: b"",
        suffix: b"",
    };
}

/// Encodes requests into one provider's batch input. Pure: no I/O, no clock.
pub trait RequestEncoder: Send + Sync + Debug {
    fn limits(&self) -> PartLimits;
    fn framing(&self) -> Framing;
    /// Appends the encoding of `request` (row `row` of its part) to `out`. JSONL
    /// encoders end the line with `\n`. On error `out` is left as it was.
    fn encode(&self, row: usize, request: &Request, out: &mut Vec<u8>) -> Result<()>;
}

/// The operations of a provider's batch API.
#[async_trait]
pub trait BatchProvider: Send + Sync + Debug {
    fn kind(&self) -> ProviderKind;

    /// Uploads the input where the API needs that, then creates the batch.
    async fn create(&self, model: &str, input: Bytes, tags: &BatchTags) -> Result<BatchStatus>;

    async fn status(&self, batch_id: &str) -> Result<BatchStatus>;

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

/// The client for `kind`, configured by `config` (see [`ProviderConfig::from_env`]).
/// Fails early when the configuration lacks what the provider needs.
pub fn connect(kind: ProviderKind, config: &ProviderConfig) -> Result<Arc<dyn BatchProvider>> {
    Ok(match kind {
        ProviderKind::OpenAi => Arc::new(openai::OpenAiClient::new(config)?),
        ProviderKind::Anthropic => Arc::new(anthropic::AnthropicClient::new(config)?),
        ProviderKind::Google => Arc::new(vertex::VertexClient::new(config)?),
        ProviderKind::Gemini => Arc::new(gemini::GeminiClient::new(config)?),
    })
}

/// The API key a key-authenticated provider needs.
fn required_key(kind: ProviderKind, config: &ProviderConfig) -> Result<config::ApiKey> {
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
    fn batch_ids_cannot_escape_their_path() {
        let kind = ProviderKind::Google;
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
