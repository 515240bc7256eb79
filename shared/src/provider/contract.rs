//! What a provider is: the client trait ([`BatchProvider`], the operations of a batch
//! API) and the descriptor ([`ProviderDescriptor`], everything else batchline knows
//! about it), with the helpers every client uses. Each provider folder implements both;
//! [`super::descriptor`] picks one.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use serde_json::Value;

use super::config::{self, ProviderConfig, Variables};
use super::decode::{Decoded, Malformed};
use super::encode::{PartLimits, RequestEncoder};
use crate::error::{Error, Result};
use crate::model::ProviderKind;
use crate::request::{AnswerFormat, GenerationParams};
use crate::status::BatchStatus;

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
/// in its own folder; [`super::descriptor`] is the only `match` on [`ProviderKind`].
pub trait ProviderDescriptor: Send + Sync + Debug {
    /// Which provider this is.
    fn kind(&self) -> ProviderKind;

    /// The provider's name in a sentence ("OpenAI", "Vertex AI", "the Gemini API").
    fn display_name(&self) -> &'static str;

    /// How much one batch may hold.
    fn limits(&self) -> PartLimits;

    /// The fewest requests the provider accepts in one batch (Bedrock's record
    /// minimum); the part builder never leaves a part under it when the job has more.
    fn min_requests(&self) -> usize {
        1
    }

    /// The encoder of requests to `model` asking for answers in `format`, with its
    /// schema (if any) translated once for the batch.
    fn encoder(
        &self,
        model: &str,
        format: &AnswerFormat,
        params: &GenerationParams,
    ) -> Result<Box<dyn RequestEncoder>>;

    /// Reads the envelope of one results line (without its newline).
    fn decode<'a>(&self, line: &'a [u8]) -> Result<Decoded<'a>, Malformed>;

    /// Reads one results line of a request sent without a schema (text and JSON
    /// modes), whose answer is the model's text. The default is [`Self::decode`], for
    /// providers whose answer is the message text in every mode.
    fn decode_text<'a>(&self, line: &'a [u8]) -> Result<Decoded<'a>, Malformed> {
        self.decode(line)
    }

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

    /// The error type of the provider's "the prompt is longer than the model's context
    /// window" failure, and words its message always holds ("" when the type alone says it).
    fn prompt_too_long(&self) -> (&'static str, &'static str);

    /// Whether a request failed for its length: the prompt did not fit the model's
    /// context window, or the answer was cut off by the output token limit. A packed
    /// request that fails so is resubmitted in smaller requests.
    fn is_length_failure(&self, error_type: &str, message: &str) -> bool {
        let (too_long_type, too_long_words) = self.prompt_too_long();
        (error_type == crate::provider::decode::error_type::INVALID_JSON
            && message.starts_with(crate::provider::decode::TRUNCATED))
            || (error_type == too_long_type && message.contains(too_long_words))
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

/// The API key a key-authenticated provider needs.
pub(crate) fn required_key(
    kind: ProviderKind,
    config: &ProviderConfig,
) -> Result<config::Credential> {
    config
        .api_key
        .clone()
        .ok_or_else(|| Error::Config(format!("{kind} needs an API key")))
}

/// A provider batch id (or resource name such as `batches/x`) checked before it goes
/// into a URL path: segments of `[A-Za-z0-9_.-]`, none of them `.` or `..`, so that an id
/// can never reach another endpoint with our credentials.
pub(crate) fn id_path(kind: ProviderKind, id: &str) -> Result<&str> {
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
