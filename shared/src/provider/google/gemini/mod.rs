//! Gemini Developer API batch mode client: resumable file upload, `batchGenerateContent`
//! with the file as input, results from the responses file (or inline responses).
//! The batch's display name carries its tags so that [`BatchProvider::find`] works.

pub mod decode;
pub mod encode;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::model::ProviderKind;
use crate::provider::config::ProviderConfig;
use crate::provider::config::Variables;
use crate::provider::contract::ProviderDescriptor;
use crate::provider::contract::{BatchProvider, BatchTags, LineStream, id_path, required_key};
use crate::provider::decode::{Decoded, Malformed};
use crate::provider::encode::{PartLimits, RequestEncoder};
use crate::provider::google::wire::{
    PAGING, RpcStatus, TokenPage, int64, tagged_display_name, tags_from_display_name,
};
use crate::provider::http::{Auth, HttpClient, Resend};
use crate::request::{AnswerFormat, GenerationParams};
use crate::status::{BatchState, BatchStatus, RequestCounts};

const KIND: ProviderKind = ProviderKind::Gemini;
const UPLOAD_URL_HEADER: &str = "x-goog-upload-url";

/// The Gemini Developer API batch mode, model prefix `gemini/`. Its variables:
///
/// | Variable | Meaning |
/// |---|---|
/// | `GEMINI_API_KEY` | API key (required) |
/// | `GEMINI_BASE_URL` | API root, default `https://generativelanguage.googleapis.com` |
#[derive(Debug)]
pub struct Gemini;

impl ProviderDescriptor for Gemini {
    fn kind(&self) -> ProviderKind {
        KIND
    }

    fn display_name(&self) -> &'static str {
        "the Gemini API"
    }

    fn temporary_error_types(&self) -> &'static [&'static str] {
        &super::TEMPORARY_STATUSES
    }

    fn prompt_too_long(&self) -> (&'static str, &'static str) {
        super::PROMPT_TOO_LONG
    }

    fn limits(&self) -> PartLimits {
        encode::LIMITS
    }

    fn encoder(
        &self,
        _model: &str,
        format: &AnswerFormat,
        params: &GenerationParams,
    ) -> Result<Box<dyn RequestEncoder>> {
        Ok(Box::new(encode::GeminiEncoder::new(format, params)?))
    }

    fn decode<'a>(&self, line: &'a [u8]) -> Result<Decoded<'a>, Malformed> {
        decode::decode(line)
    }

    fn secret_variables(&self) -> &'static [&'static str] {
        &[API_KEY_VARIABLE]
    }

    fn config(&self, vars: &Variables<'_>) -> Result<ProviderConfig> {
        ProviderConfig::keyed(
            vars,
            API_KEY_VARIABLE,
            "GEMINI_BASE_URL",
            "https://generativelanguage.googleapis.com",
        )
    }

    fn connect(&self, config: &ProviderConfig) -> Result<Arc<dyn BatchProvider>> {
        Ok(Arc::new(GeminiClient::new(config)?))
    }
}

/// The variable that holds the API key.
const API_KEY_VARIABLE: &str = "GEMINI_API_KEY";

/// The Gemini API batch mode over [`HttpClient`] (`x-goog-api-key` auth).
#[derive(Debug, Clone)]
pub struct GeminiClient {
    http: HttpClient,
}

#[derive(Debug, Deserialize)]
struct UploadedFile {
    file: FileInfo,
}

#[derive(Debug, Deserialize)]
struct FileInfo {
    name: String,
}

/// The long-running operation every batch call answers with.
#[derive(Debug, Deserialize)]
struct Operation {
    name: String,
    #[serde(default)]
    metadata: Option<BatchMetadata>,
    error: Option<RpcStatus>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct BatchMetadata {
    state: Option<String>,
    display_name: Option<String>,
    create_time: Option<String>,
    end_time: Option<String>,
    batch_stats: Option<BatchStats>,
    output: Option<BatchOutput>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BatchStats {
    #[serde(default, deserialize_with = "int64")]
    request_count: u64,
    #[serde(default, deserialize_with = "int64")]
    successful_request_count: u64,
    #[serde(default, deserialize_with = "int64")]
    failed_request_count: u64,
    #[serde(default, deserialize_with = "int64")]
    pending_request_count: u64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BatchOutput {
    responses_file: Option<String>,
    inlined_responses: Option<InlinedResponses>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct InlinedResponses {
    #[serde(default)]
    inlined_responses: Vec<Value>,
}

impl GeminiClient {
    /// The client for `config`; fails without an API key.
    pub fn new(config: &ProviderConfig) -> Result<Self> {
        let auth = Auth::XGoogApiKey(required_key(KIND, config)?);
        Ok(Self {
            http: HttpClient::new(KIND, config, auth)?,
        })
    }

    /// `batches/x` or a bare `x`, as the resource path.
    fn batch_path(batch_id: &str, suffix: &str) -> Result<String> {
        let name = id_path(KIND, batch_id)?;
        let name = if name.starts_with("batches/") {
            name.to_string()
        } else {
            format!("batches/{name}")
        };
        Ok(format!("/v1beta/{name}{suffix}"))
    }

    async fn get_batch(&self, batch_id: &str) -> Result<Operation> {
        self.http.get_json(&Self::batch_path(batch_id, "")?).await
    }

    /// Resumable upload: a start call hands out the upload URL, then one call sends the
    /// bytes and finalizes.
    async fn upload(&self, input: Bytes, display_name: &str) -> Result<FileInfo> {
        let start_url = self.http.url("/upload/v1beta/files");
        let start_body = Bytes::from(serde_json::to_vec(
            &json!({"file": {"displayName": display_name}}),
        )?);
        let length = input.len().to_string();
        let started = self
            .http
            .send_with_retry(Resend::Always, |http| {
                http.post(&start_url)
                    .header("x-goog-upload-protocol", "resumable")
                    .header("x-goog-upload-command", "start")
                    .header("x-goog-upload-header-content-length", &length)
                    .header("x-goog-upload-header-content-type", "application/jsonl")
                    .header("content-type", "application/json")
                    .body(crate::provider::http::body(&start_body))
            })
            .await?;
        let raw_upload_url = started
            .headers()
            .get(UPLOAD_URL_HEADER)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                self.http
                    .protocol("the upload start answer has no x-goog-upload-url")
            })?
            .to_string();
        // The key goes with the bytes: only to the API's own origin.
        let upload_url = self.http.checked_url(&raw_upload_url)?;
        let uploaded: UploadedFile = self
            .http
            .json(Resend::Always, |http| {
                http.post(upload_url.clone())
                    .header("x-goog-upload-command", "upload, finalize")
                    .header("x-goog-upload-offset", "0")
                    .header("content-length", &length)
                    .body(crate::provider::http::body(&input))
            })
            .await?;
        Ok(uploaded.file)
    }
}

#[async_trait]
impl BatchProvider for GeminiClient {
    fn kind(&self) -> ProviderKind {
        KIND
    }

    async fn create(&self, model: &str, input: Bytes, tags: &BatchTags) -> Result<BatchStatus> {
        let display_name = tagged_display_name(tags);
        let file = self.upload(input, &display_name).await?;
        let model = id_path(KIND, model.strip_prefix("models/").unwrap_or(model))?;
        let body = json!({
            "batch": {"displayName": display_name, "inputConfig": {"fileName": file.name}}
        });
        let path = format!("/v1beta/models/{model}:batchGenerateContent");
        let operation = self
            .http
            .post_json(Resend::OnlyIfUnsent, &path, Some(&body))
            .await?;
        to_status(operation)
    }

    async fn status(&self, batch_id: &str) -> Result<BatchStatus> {
        to_status(self.get_batch(batch_id).await?)
    }

    async fn cancel(&self, batch_id: &str) -> Result<BatchStatus> {
        let path = Self::batch_path(batch_id, ":cancel")?;
        self.http.post_ignoring_answer(&path, &json!({})).await?;
        self.status(batch_id).await
    }

    async fn list(&self) -> Result<Vec<BatchStatus>> {
        self.http
            .list::<TokenPage<Operation>, _>("/v1beta/batches", PAGING, to_status)
            .await
    }

    /// The responses file's lines, or for inline batches each inline response as a line
    /// in the file's form: `{"key", "response"}` or `{"key", "error"}`.
    async fn results(&self, batch_id: &str) -> Result<LineStream> {
        let operation = self.get_batch(batch_id).await?;
        let Some(output) = operation.metadata.and_then(|m| m.output) else {
            return Ok(futures::stream::empty().boxed());
        };
        if let Some(file) = output.responses_file {
            let url = self.http.url(&format!(
                "/download/v1beta/{}:download",
                id_path(KIND, &file)?
            ));
            return self.http.lines(&url, &[("alt", "media")]).await;
        }
        let inline = output
            .inlined_responses
            .map(|i| i.inlined_responses)
            .unwrap_or_default();
        let lines: Vec<Result<Bytes>> = inline
            .into_iter()
            .map(|item| Ok(Bytes::from(serde_json::to_vec(&inline_as_file_line(item))?)))
            .collect();
        Ok(futures::stream::iter(lines).boxed())
    }
}

/// `{"metadata":{"key"}, "response"|"error"}` → `{"key", "response"|"error"}`.
fn inline_as_file_line(item: Value) -> Value {
    let Value::Object(mut fields) = item else {
        return item;
    };
    let key = fields
        .get("metadata")
        .and_then(|m| m.get("key"))
        .cloned()
        .unwrap_or(Value::Null);
    fields.remove("metadata");
    fields.insert("key".to_string(), key);
    Value::Object(fields)
}

fn to_status(operation: Operation) -> Result<BatchStatus> {
    let metadata = operation.metadata.unwrap_or_default();
    let raw = metadata.state.unwrap_or_default();
    let state = match raw.as_str() {
        // A just-created batch may not report a state yet.
        "" | "BATCH_STATE_UNSPECIFIED" | "BATCH_STATE_PENDING" => BatchState::Pending,
        "BATCH_STATE_RUNNING" => BatchState::Processing,
        "BATCH_STATE_SUCCEEDED" => BatchState::Completed,
        "BATCH_STATE_FAILED" => BatchState::Failed,
        "BATCH_STATE_CANCELLED" => BatchState::Cancelled,
        "BATCH_STATE_EXPIRED" => BatchState::Expired,
        other => {
            return Err(Error::Protocol {
                provider: KIND,
                message: format!("unknown batch state {other:?} for {}", operation.name),
            });
        }
    };
    let counts = metadata
        .batch_stats
        .map_or_else(RequestCounts::default, |s| RequestCounts {
            total: s.request_count,
            succeeded: s.successful_request_count,
            failed: s.failed_request_count,
            pending: s.pending_request_count,
        });
    Ok(BatchStatus {
        batch_id: operation.name,
        state,
        raw_status: raw,
        counts,
        created_at: metadata.create_time,
        ended_at: metadata.end_time,
        quota_exceeded: operation.error.as_ref().is_some_and(|e| e.is_quota()),
        error: operation.error.map(|e| e.describe()),
        tags: metadata
            .display_name
            .as_deref()
            .map(tags_from_display_name)
            .unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn operation(state: &str) -> Operation {
        let tags: BatchTags = [("batchline-job".to_string(), "j 1".to_string())]
            .into_iter()
            .collect();
        serde_json::from_value(json!({
            "name": "batches/b1",
            "metadata": {
                "@type": "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch",
                "model": "models/gemini-2.5-flash", "displayName": tagged_display_name(&tags),
                "state": state, "createTime": "2026-01-01T00:00:00Z",
                "batchStats": {"requestCount": "4", "successfulRequestCount": "2",
                    "failedRequestCount": "1", "pendingRequestCount": "1"}
            },
            "done": false
        }))
        .unwrap()
    }

    #[test]
    fn maps_states_counts_and_tags() {
        let cases = [
            ("BATCH_STATE_PENDING", BatchState::Pending),
            ("BATCH_STATE_RUNNING", BatchState::Processing),
            ("BATCH_STATE_SUCCEEDED", BatchState::Completed),
            ("BATCH_STATE_FAILED", BatchState::Failed),
            ("BATCH_STATE_CANCELLED", BatchState::Cancelled),
            ("BATCH_STATE_EXPIRED", BatchState::Expired),
        ];
        for (raw, state) in cases {
            assert_eq!(to_status(operation(raw)).unwrap().state, state, "{raw}");
        }
        let status = to_status(operation("BATCH_STATE_RUNNING")).unwrap();
        assert_eq!(
            status.counts,
            RequestCounts {
                total: 4,
                succeeded: 2,
                failed: 1,
                pending: 1
            }
        );
        assert_eq!(
            status.tags.get("batchline-job").map(String::as_str),
            Some("j 1")
        );
        assert!(to_status(operation("BATCH_STATE_ODD")).is_err());
    }

    #[test]
    fn inline_responses_take_the_file_line_form() {
        let line = inline_as_file_line(
            json!({"metadata": {"key": "r1"}, "error": {"code": 3, "message": "bad"}}),
        );
        assert_eq!(
            line,
            json!({"key": "r1", "error": {"code": 3, "message": "bad"}})
        );
    }
}
