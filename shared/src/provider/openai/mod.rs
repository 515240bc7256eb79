//! OpenAI Batch API client: upload the JSONL input as a file, create the batch over
//! `/v1/chat/completions`, poll it, and stream its output file then its error file.

pub mod decode;
pub mod encode;
pub mod schema;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use reqwest::multipart::{Form, Part};
use serde::Deserialize;
use serde_json::json;

use super::config::ProviderConfig;
use super::contract::{BatchProvider, BatchTags, LineStream, id_path, required_key};
use super::http::{AfterIdPage, Auth, HttpClient, Paging, Resend};
use crate::error::Result;
use crate::model::ProviderKind;
use crate::provider::config::Variables;
use crate::provider::contract::{AnswerFixup, ProviderDescriptor};
use crate::provider::decode::{Decoded, Malformed};
use crate::provider::encode::{PartLimits, RequestEncoder};
use crate::request::{AnswerFormat, GenerationParams};
use crate::status::{BatchState, BatchStatus, RequestCounts};
use serde_json::Value;

const KIND: ProviderKind = ProviderKind::OpenAi;
/// The only endpoint batchline's request lines target.
const ENDPOINT: &str = "/v1/chat/completions";
/// Lists page by 100, the next page after the last id.
const PAGING: Paging<'static> = Paging {
    query: &[("limit", "100")],
    cursor: "after",
};

/// The OpenAI Batch API, model prefix `openai/`. Its variables:
///
/// | Variable | Meaning |
/// |---|---|
/// | `OPENAI_API_KEY` | API key (required) |
/// | `OPENAI_BASE_URL` | API root, default `https://api.openai.com` |
#[derive(Debug)]
pub struct OpenAi;

impl ProviderDescriptor for OpenAi {
    fn kind(&self) -> ProviderKind {
        KIND
    }

    fn display_name(&self) -> &'static str {
        "OpenAI"
    }

    fn temporary_error_types(&self) -> &'static [&'static str] {
        &["rate_limit_exceeded", "server_error"]
    }

    fn prompt_too_long(&self) -> (&'static str, &'static str) {
        ("context_length_exceeded", "")
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
        Ok(Box::new(encode::OpenAiEncoder::new(model, format, params)?))
    }

    fn decode<'a>(&self, line: &'a [u8]) -> Result<Decoded<'a>, Malformed> {
        decode::decode(line)
    }

    /// Strict mode made optional properties nullable: the nulls the model writes for
    /// them are dropped.
    fn answer_fixup(&self, schema: &Value) -> Option<AnswerFixup> {
        schema::introduces_nulls(schema).then_some(schema::remove_introduced_nulls as AnswerFixup)
    }

    fn secret_variables(&self) -> &'static [&'static str] {
        &[API_KEY_VARIABLE]
    }

    fn config(&self, vars: &Variables<'_>) -> Result<ProviderConfig> {
        ProviderConfig::keyed(
            vars,
            API_KEY_VARIABLE,
            "OPENAI_BASE_URL",
            "https://api.openai.com",
        )
    }

    fn connect(&self, config: &ProviderConfig) -> Result<Arc<dyn BatchProvider>> {
        Ok(Arc::new(OpenAiClient::new(config)?))
    }
}

/// The variable that holds the API key.
const API_KEY_VARIABLE: &str = "OPENAI_API_KEY";

/// The OpenAI Batch API over [`HttpClient`] (bearer auth).
#[derive(Debug, Clone)]
pub struct OpenAiClient {
    http: HttpClient,
}

#[derive(Debug, Deserialize)]
struct FileObject {
    id: String,
}

#[derive(Debug, Deserialize)]
struct Batch {
    id: String,
    status: String,
    output_file_id: Option<String>,
    error_file_id: Option<String>,
    created_at: Option<i64>,
    completed_at: Option<i64>,
    failed_at: Option<i64>,
    expired_at: Option<i64>,
    cancelled_at: Option<i64>,
    request_counts: Option<Counts>,
    errors: Option<Errors>,
    metadata: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
struct Counts {
    total: u64,
    completed: u64,
    failed: u64,
}

#[derive(Debug, Deserialize)]
struct Errors {
    #[serde(default)]
    data: Vec<ValidationError>,
}

#[derive(Debug, Deserialize)]
struct ValidationError {
    code: Option<String>,
    message: Option<String>,
    line: Option<u64>,
}

impl OpenAiClient {
    /// The client for `config`; fails without an API key.
    pub fn new(config: &ProviderConfig) -> Result<Self> {
        let auth = Auth::Bearer(required_key(KIND, config)?);
        Ok(Self {
            http: HttpClient::new(KIND, config, auth)?,
        })
    }

    fn batch_path(batch_id: &str, suffix: &str) -> Result<String> {
        Ok(format!("/v1/batches/{}{suffix}", id_path(KIND, batch_id)?))
    }

    async fn upload(&self, input: Bytes) -> Result<FileObject> {
        let url = self.http.url("/v1/files");
        let length = input.len() as u64;
        self.http
            .json(Resend::Always, |http| {
                let file = Part::stream_with_length(super::http::body(&input), length)
                    .file_name("batchline-input.jsonl");
                let form = Form::new().text("purpose", "batch").part("file", file);
                http.post(&url).multipart(form)
            })
            .await
    }

    /// Lines of one file, opened only when the stream reaches it.
    fn file_lines(
        &self,
        file_id: String,
    ) -> impl Future<Output = Result<LineStream>> + Send + use<> {
        let http = self.http.clone();
        async move {
            let url = http.url(&format!("/v1/files/{}/content", id_path(KIND, &file_id)?));
            http.lines(&url, &[]).await
        }
    }
}

#[async_trait]
impl BatchProvider for OpenAiClient {
    fn kind(&self) -> ProviderKind {
        KIND
    }

    async fn create(&self, _model: &str, input: Bytes, tags: &BatchTags) -> Result<BatchStatus> {
        let file = self.upload(input).await?;
        let body = json!({
            "input_file_id": file.id,
            "endpoint": ENDPOINT,
            "completion_window": "24h",
            "metadata": tags,
        });
        let batch = self
            .http
            .post_json(Resend::OnlyIfUnsent, "/v1/batches", Some(&body))
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
            .list::<AfterIdPage<Batch>, _>("/v1/batches", PAGING, to_status)
            .await
    }

    /// The output file's lines, then the error file's; either may be absent (a batch
    /// where every request failed has no output file).
    async fn results(&self, batch_id: &str) -> Result<LineStream> {
        let batch: Batch = self.http.get_json(&Self::batch_path(batch_id, "")?).await?;
        let files: Vec<String> = [batch.output_file_id, batch.error_file_id]
            .into_iter()
            .flatten()
            .collect();
        let this = self.clone();
        Ok(futures::stream::iter(files)
            .then(move |file| this.file_lines(file))
            .try_flatten()
            .boxed())
    }
}

fn to_status(batch: Batch) -> Result<BatchStatus> {
    let state = match batch.status.as_str() {
        "validating" => BatchState::Pending,
        // `cancelling` is still writing its partial output: reading results now would
        // miss them, so it stays open like `finalizing`.
        "in_progress" | "finalizing" | "cancelling" => BatchState::Processing,
        "completed" => BatchState::Completed,
        "failed" => BatchState::Failed,
        "expired" => BatchState::Expired,
        "cancelled" => BatchState::Cancelled,
        other => {
            return Err(crate::Error::Protocol {
                provider: KIND,
                message: format!("unknown batch status {other:?} for {}", batch.id),
            });
        }
    };
    let counts = batch
        .request_counts
        .map_or_else(RequestCounts::default, |c| RequestCounts {
            total: c.total,
            succeeded: c.completed,
            failed: c.failed,
            pending: c.total.saturating_sub(c.completed + c.failed),
        });
    let ended = [
        batch.completed_at,
        batch.failed_at,
        batch.expired_at,
        batch.cancelled_at,
    ]
    .into_iter()
    .flatten()
    .max();
    let quota_exceeded = batch.errors.as_ref().is_some_and(|errors| {
        errors
            .data
            .iter()
            .any(|e| e.code.as_deref() == Some("token_limit_exceeded"))
    });
    let error = batch.errors.and_then(|errors| {
        let described: Vec<String> = errors.data.iter().map(describe_validation_error).collect();
        (!described.is_empty()).then(|| described.join("; "))
    });
    Ok(BatchStatus {
        batch_id: batch.id,
        state,
        raw_status: batch.status,
        counts,
        created_at: batch.created_at.and_then(unix_to_rfc3339),
        ended_at: ended.and_then(unix_to_rfc3339),
        error,
        quota_exceeded,
        tags: batch.metadata.unwrap_or_default(),
    })
}

fn describe_validation_error(error: &ValidationError) -> String {
    let mut text = match (&error.code, &error.message) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(only), None) | (None, Some(only)) => only.clone(),
        (None, None) => "validation failed".to_string(),
    };
    if let Some(line) = error.line {
        text.push_str(&format!(" (line {line})"));
    }
    text
}

fn unix_to_rfc3339(seconds: i64) -> Option<String> {
    time::OffsetDateTime::from_unix_timestamp(seconds)
        .ok()?
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(status: &str, extra: serde_json::Value) -> Batch {
        let mut value = json!({
            "id": "batch_1", "object": "batch", "endpoint": ENDPOINT, "input_file_id": "file-1",
            "completion_window": "24h", "status": status, "created_at": 1_700_000_000,
            "output_file_id": null, "error_file_id": null, "errors": null,
            "request_counts": {"total": 10, "completed": 6, "failed": 1},
            "metadata": {"batchline-job": "j1"}
        });
        if let (Some(target), Some(extra)) = (value.as_object_mut(), extra.as_object()) {
            target.extend(extra.clone());
        }
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn maps_every_status() {
        let expected = [
            ("validating", BatchState::Pending),
            ("in_progress", BatchState::Processing),
            ("finalizing", BatchState::Processing),
            ("cancelling", BatchState::Processing),
            ("completed", BatchState::Completed),
            ("failed", BatchState::Failed),
            ("expired", BatchState::Expired),
            ("cancelled", BatchState::Cancelled),
        ];
        for (raw, state) in expected {
            let status = to_status(batch(raw, json!({}))).unwrap();
            assert_eq!(status.state, state, "{raw}");
            assert_eq!(status.raw_status, raw);
        }
        assert!(to_status(batch("paused", json!({}))).is_err());
    }

    #[test]
    fn fills_counts_times_tags_and_validation_errors() {
        let status = to_status(batch(
            "failed",
            json!({
                "failed_at": 1_700_000_060,
                "errors": {"object": "list", "data": [
                    {"code": "invalid_json_line", "message": "bad line", "param": null, "line": 3}
                ]}
            }),
        ))
        .unwrap();
        assert_eq!(
            status.counts,
            RequestCounts {
                total: 10,
                succeeded: 6,
                failed: 1,
                pending: 3
            }
        );
        assert_eq!(status.created_at.as_deref(), Some("2023-11-14T22:13:20Z"));
        assert_eq!(status.ended_at.as_deref(), Some("2023-11-14T22:14:20Z"));
        assert_eq!(
            status.error.as_deref(),
            Some("invalid_json_line: bad line (line 3)")
        );
        assert_eq!(
            status.tags.get("batchline-job").map(String::as_str),
            Some("j1")
        );
    }
}
