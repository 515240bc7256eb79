//! Anthropic Message Batches client: the prepared `{"requests":[…]}` document is the
//! create body; results come from the batch's `results_url`, followed only when it is
//! on the configured API origin.

pub mod decode;
pub mod encode;
pub mod schema;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde::Deserialize;

use super::config::ProviderConfig;
use super::contract::{BatchProvider, BatchTags, LineStream, id_path, required_key};
use super::http::{AfterIdPage, Auth, HttpClient, Paging, Resend};
use crate::error::Result;
use crate::model::ProviderKind;
use crate::provider::config::Variables;
use crate::provider::contract::ProviderDescriptor;
use crate::provider::decode::{Decoded, Malformed};
use crate::provider::encode::{PartLimits, RequestEncoder};
use crate::request::{AnswerFormat, GenerationParams};
use crate::status::{BatchState, BatchStatus, RequestCounts};

const KIND: ProviderKind = ProviderKind::Anthropic;
const API_VERSION: &str = "2023-06-01";
/// Lists page by 100, the next page after the last id.
const PAGING: Paging<'static> = Paging {
    query: &[("limit", "100")],
    cursor: "after_id",
};

/// Anthropic Message Batches, model prefix `anthropic/`. Its variables:
///
/// | Variable | Meaning |
/// |---|---|
/// | `ANTHROPIC_API_KEY` | API key (required) |
/// | `ANTHROPIC_BASE_URL` | API root, default `https://api.anthropic.com` |
#[derive(Debug)]
pub struct Anthropic;

impl ProviderDescriptor for Anthropic {
    fn kind(&self) -> ProviderKind {
        KIND
    }

    fn display_name(&self) -> &'static str {
        "Anthropic"
    }

    fn temporary_error_types(&self) -> &'static [&'static str] {
        &["rate_limit_error", "overloaded_error", "api_error"]
    }

    /// "prompt is too long: 210000 tokens > 200000 maximum".
    fn prompt_too_long(&self) -> (&'static str, &'static str) {
        ("invalid_request_error", "prompt is too long")
    }

    fn limits(&self) -> PartLimits {
        encode::LIMITS
    }

    fn encoder(
        &self,
        model: &str,
        format: &AnswerFormat,
        params: &GenerationParams,
    ) -> Result<Box<dyn RequestEncoder>> {
        Ok(Box::new(encode::AnthropicEncoder::new(
            model, format, params,
        )?))
    }

    fn decode<'a>(&self, line: &'a [u8]) -> Result<Decoded<'a>, Malformed> {
        decode::decode(line)
    }

    /// Without a schema the answer is the message's text blocks.
    fn decode_text<'a>(&self, line: &'a [u8]) -> Result<Decoded<'a>, Malformed> {
        decode::decode_text(line)
    }

    fn secret_variables(&self) -> &'static [&'static str] {
        &[API_KEY_VARIABLE]
    }

    fn config(&self, vars: &Variables<'_>) -> Result<ProviderConfig> {
        ProviderConfig::keyed(
            vars,
            API_KEY_VARIABLE,
            "ANTHROPIC_BASE_URL",
            "https://api.anthropic.com",
        )
    }

    fn connect(&self, config: &ProviderConfig) -> Result<Arc<dyn BatchProvider>> {
        Ok(Arc::new(AnthropicClient::new(config)?))
    }
}

/// The variable that holds the API key.
const API_KEY_VARIABLE: &str = "ANTHROPIC_API_KEY";

/// Anthropic Message Batches over [`HttpClient`] (`x-api-key` auth).
#[derive(Debug, Clone)]
pub struct AnthropicClient {
    http: HttpClient,
}

#[derive(Debug, Deserialize)]
struct MessageBatch {
    id: String,
    processing_status: String,
    request_counts: Counts,
    created_at: Option<String>,
    ended_at: Option<String>,
    cancel_initiated_at: Option<String>,
    results_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Counts {
    processing: u64,
    succeeded: u64,
    errored: u64,
    canceled: u64,
    expired: u64,
}

impl AnthropicClient {
    /// The client for `config`; fails without an API key.
    pub fn new(config: &ProviderConfig) -> Result<Self> {
        let auth = Auth::XApiKey(required_key(KIND, config)?);
        Ok(Self {
            http: HttpClient::new(KIND, config, auth)?
                .with_header("anthropic-version", API_VERSION),
        })
    }

    fn batch_path(batch_id: &str, suffix: &str) -> Result<String> {
        Ok(format!(
            "/v1/messages/batches/{}{suffix}",
            id_path(KIND, batch_id)?
        ))
    }
}

#[async_trait]
impl BatchProvider for AnthropicClient {
    fn kind(&self) -> ProviderKind {
        KIND
    }

    /// `input` is already the whole create body; Anthropic has no file upload and no
    /// tags, so `tags` cannot be stored.
    async fn create(&self, _model: &str, input: Bytes, _tags: &BatchTags) -> Result<BatchStatus> {
        let url = self.http.url("/v1/messages/batches");
        let batch = self
            .http
            .json(Resend::OnlyIfUnsent, |http| {
                http.post(&url)
                    .header("content-type", "application/json")
                    .body(super::http::body(&input))
            })
            .await?;
        to_status(batch)
    }

    async fn status(&self, batch_id: &str) -> Result<BatchStatus> {
        to_status(self.http.get_json(&Self::batch_path(batch_id, "")?).await?)
    }

    async fn cancel(&self, batch_id: &str) -> Result<BatchStatus> {
        let path = Self::batch_path(batch_id, "/cancel")?;
        to_status(self.http.post_json(Resend::Always, &path, None).await?)
    }

    async fn list(&self) -> Result<Vec<BatchStatus>> {
        self.http
            .list::<AfterIdPage<MessageBatch>, _>("/v1/messages/batches", PAGING, to_status)
            .await
    }

    /// Message batches carry no tags, so a lost batch cannot be recognised.
    async fn find(&self, _tags: &BatchTags) -> Result<Option<BatchStatus>> {
        Ok(None)
    }

    async fn results(&self, batch_id: &str) -> Result<LineStream> {
        let batch: MessageBatch = self.http.get_json(&Self::batch_path(batch_id, "")?).await?;
        let raw = batch.results_url.ok_or_else(|| {
            self.http.protocol(format!(
                "batch {batch_id} has no results_url (processing_status {:?})",
                batch.processing_status
            ))
        })?;
        // The API key goes with this request: never to a host other than the API's.
        let url = self.http.checked_url(&raw)?;
        self.http.lines(url.as_str(), &[]).await
    }
}

fn to_status(batch: MessageBatch) -> Result<BatchStatus> {
    let c = &batch.request_counts;
    let state = match batch.processing_status.as_str() {
        "in_progress" => BatchState::Processing,
        // Still running the requests that started before the cancel; results not ready.
        "canceling" => BatchState::Processing,
        "ended" if batch.cancel_initiated_at.is_some() => BatchState::Cancelled,
        "ended" if c.expired > 0 => BatchState::Expired,
        "ended" if c.canceled > 0 && c.succeeded + c.errored == 0 => BatchState::Cancelled,
        "ended" => BatchState::Completed,
        other => {
            return Err(crate::Error::Protocol {
                provider: KIND,
                message: format!("unknown processing_status {other:?} for {}", batch.id),
            });
        }
    };
    let counts = RequestCounts {
        total: c.processing + c.succeeded + c.errored + c.canceled + c.expired,
        succeeded: c.succeeded,
        failed: c.errored + c.canceled + c.expired,
        pending: c.processing,
    };
    Ok(BatchStatus {
        batch_id: batch.id,
        state,
        raw_status: batch.processing_status,
        counts,
        created_at: batch.created_at,
        ended_at: batch.ended_at,
        error: None,
        quota_exceeded: false,
        tags: BatchTags::new(),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::Error;
    use crate::provider::config::Credential;

    fn batch(status: &str, counts: [u64; 5], cancel: bool) -> MessageBatch {
        let [processing, succeeded, errored, canceled, expired] = counts;
        serde_json::from_value(json!({
            "id": "msgbatch_1", "type": "message_batch", "processing_status": status,
            "request_counts": {"processing": processing, "succeeded": succeeded,
                "errored": errored, "canceled": canceled, "expired": expired},
            "created_at": "2026-01-01T00:00:00Z", "expires_at": "2026-01-02T00:00:00Z",
            "ended_at": null, "archived_at": null,
            "cancel_initiated_at": if cancel { json!("2026-01-01T00:01:00Z") } else { json!(null) },
            "results_url": null
        }))
        .unwrap()
    }

    #[test]
    fn maps_statuses_with_counts() {
        let cases = [
            (
                "in_progress",
                [4, 0, 0, 0, 0],
                false,
                BatchState::Processing,
            ),
            ("canceling", [4, 0, 0, 0, 0], true, BatchState::Processing),
            ("ended", [0, 3, 1, 0, 0], false, BatchState::Completed),
            ("ended", [0, 1, 0, 3, 0], true, BatchState::Cancelled),
            ("ended", [0, 0, 0, 4, 0], false, BatchState::Cancelled),
            ("ended", [0, 2, 0, 0, 2], false, BatchState::Expired),
            ("ended", [0, 0, 0, 0, 4], false, BatchState::Expired),
        ];
        for (raw, counts, cancel, state) in cases {
            let status = to_status(batch(raw, counts, cancel)).unwrap();
            assert_eq!(status.state, state, "{raw} {counts:?}");
            assert_eq!(status.counts.total, 4);
        }
        let status = to_status(batch("ended", [0, 2, 1, 0, 1], false)).unwrap();
        assert_eq!(
            status.counts,
            RequestCounts {
                total: 4,
                succeeded: 2,
                failed: 2,
                pending: 0
            }
        );
    }

    #[tokio::test]
    async fn results_url_on_a_foreign_host_is_refused_before_any_request() {
        use std::sync::atomic::Ordering;

        use crate::provider::http::test_server::scripted_server;

        let (foreign, foreign_hits) = scripted_server(vec![(200, vec![], "{}".into())]).await;
        let mut ended = serde_json::to_value(json!({
            "id": "msgbatch_1", "type": "message_batch", "processing_status": "ended",
            "request_counts": {"processing": 0, "succeeded": 1, "errored": 0, "canceled": 0, "expired": 0},
            "created_at": "2026-01-01T00:00:00Z", "ended_at": "2026-01-01T00:05:00Z",
            "expires_at": "2026-01-02T00:00:00Z", "archived_at": null, "cancel_initiated_at": null
        }))
        .unwrap();
        ended["results_url"] = json!(format!("{foreign}/v1/messages/batches/msgbatch_1/results"));
        let (api, api_hits) = scripted_server(vec![(200, vec![], ended.to_string())]).await;
        let config =
            ProviderConfig::with_api_key(&api, Credential::new("sk-ant-secret").unwrap()).unwrap();
        let client = AnthropicClient::new(&config).unwrap();

        let err = match client.results("msgbatch_1").await {
            Ok(_) => panic!("a foreign results_url was followed"),
            Err(err) => err,
        };
        assert!(matches!(err, Error::ForeignHost { .. }), "{err:?}");
        assert_eq!(api_hits.load(Ordering::SeqCst), 1);
        assert_eq!(foreign_hits.load(Ordering::SeqCst), 0);
        assert!(!err.to_string().contains("sk-ant-secret"));
    }

    #[test]
    fn unknown_processing_status_is_an_error() {
        assert!(to_status(batch("paused", [1, 0, 0, 0, 0], false)).is_err());
    }
}
