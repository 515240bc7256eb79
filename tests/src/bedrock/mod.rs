//! Amazon Bedrock batch inference (the `bedrock` control plane, REST-JSON, SigV4):
//! `CreateModelInvocationJob`, `GetModelInvocationJob`, `ListModelInvocationJobs`,
//! `StopModelInvocationJob` and `ListTagsForResource`, with field names, error codes and
//! constraint messages as botocore's `bedrock/2023-04-20` model has them.
//!
//! Jobs read their JSONL input from and write their output to S3 (a moto server at
//! `Config::s3_endpoint`). A job is `Submitted`, `Validating`, `Scheduled` and
//! `InProgress` for one lifecycle step each, then ends: the input is read and checked
//! when validation ends (problems fail the job with a `message`, as Bedrock does
//! asynchronously), and the records run and the output is written when the job ends. A
//! record whose `modelInput` is invalid becomes an error record.

mod batches;
mod converse;
mod results;
pub mod sigv4;
mod storage;
#[cfg(test)]
mod tests;
mod validation;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::macros::format_description;

use crate::common::{BedrockConfig, Shared, add_request_id, lock};

use batches::{JobEntry, create_job, get_job, list_jobs, list_tags, stop_job};
use storage::S3Clients;

/// The account every job belongs to.
const ACCOUNT: &str = "123456789012";
/// The SigV4 service name and ARN service of the control plane.
const SERVICE: &str = "bedrock";
/// Requests larger than this are refused (the control plane's bodies are small).
const MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// The header naming an AWS error, as restJson clients read it.
const ERROR_TYPE: &str = "x-amzn-errortype";

/// The Bedrock control plane's routes. Every answer carries `x-amzn-RequestId`, and every
/// error (injected HTTP faults included) `x-amzn-ErrorType` with a `{"message"}` body.
pub fn router(shared: Arc<Shared>) -> Router {
    let faults = middleware::from_fn_with_state(shared.clone(), crate::http_faults);
    let request_ids =
        middleware::from_fn_with_state(HeaderName::from_static("x-amzn-requestid"), add_request_id);
    routes(Arc::new(Bedrock::new(shared)))
        .layer(faults)
        .layer(middleware::from_fn(name_errors))
        .layer(request_ids)
}

fn routes(state: Arc<Bedrock>) -> Router {
    Router::new()
        .route("/model-invocation-job", post(create_job))
        .route("/model-invocation-job/{job}", get(get_job))
        .route("/model-invocation-job/{job}/stop", post(stop_job))
        .route("/model-invocation-jobs", get(list_jobs))
        .route("/listTagsForResource", post(list_tags))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_sigv4))
        .with_state(state)
}

struct Bedrock {
    shared: Arc<Shared>,
    /// In creation order: a job's index is its sequence number (list pages use it).
    jobs: Mutex<Vec<JobEntry>>,
    /// Creates run one at a time: idempotency tokens, unique names and the
    /// concurrent-jobs quota are checked against the jobs stored so far.
    creating: tokio::sync::Mutex<()>,
    s3: S3Clients,
}

impl Bedrock {
    fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            jobs: Mutex::new(Vec::new()),
            creating: tokio::sync::Mutex::new(()),
            s3: S3Clients::default(),
        }
    }

    fn settings(&self) -> BedrockConfig {
        lock(&self.shared.bedrock).clone()
    }
}

/// An AWS error: `x-amzn-ErrorType: <kind>` and `{"message": …}`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
        }
    }

    fn validation(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "ValidationException", message)
    }

    fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "ConflictException", message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "ResourceNotFoundException", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response =
            (self.status, axum::Json(json!({"message": self.message}))).into_response();
        response
            .headers_mut()
            .insert(ERROR_TYPE, HeaderValue::from_static(self.kind));
        response
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// The region a request's signature is scoped to (job ARNs are in it).
#[derive(Debug, Clone)]
struct SignedRegion(String);

/// Refuses any request not SigV4-signed for `bedrock` with the configured key pair, as
/// AWS does (403 with the AWS error code); passes the signed region on.
async fn require_sigv4(
    State(state): State<Arc<Bedrock>>,
    request: Request,
    next: Next,
) -> Response {
    let (mut parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, MAX_REQUEST_BYTES).await else {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "ValidationException",
            format!("The request body is larger than {MAX_REQUEST_BYTES} bytes."),
        )
        .into_response();
    };
    let settings = state.settings();
    let signable = sigv4::Signable {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query().unwrap_or(""),
        headers: &parts.headers,
        body: &body,
    };
    let verified = sigv4::verify(
        &signable,
        &settings.access_key_id,
        &settings.secret_access_key,
        SERVICE,
        OffsetDateTime::now_utc(),
    );
    match verified {
        Ok(verified) => {
            parts.extensions.insert(SignedRegion(verified.region));
            next.run(Request::from_parts(parts, Body::from(body))).await
        }
        Err(rejection) => {
            ApiError::new(StatusCode::FORBIDDEN, rejection.kind, rejection.message).into_response()
        }
    }
}

/// Names errors that carry no AWS error type (injected HTTP faults) by their status, so
/// that AWS clients see the code their retry logic knows.
async fn name_errors(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let status = response.status();
    if (status.is_client_error() || status.is_server_error())
        && !response.headers().contains_key(ERROR_TYPE)
    {
        let kind = match status.as_u16() {
            429 => "ThrottlingException",
            503 => "ServiceUnavailableException",
            403 => "AccessDeniedException",
            404 => "ResourceNotFoundException",
            400..=499 => "ValidationException",
            _ => "InternalServerException",
        };
        response
            .headers_mut()
            .insert(ERROR_TYPE, HeaderValue::from_static(kind));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    response
}

/// `POST /_emulator/bedrock`: replaces the fields given of the Bedrock settings
/// ([`BedrockConfig`] field names) and, with `s3_endpoint` (a URL or `null`), the S3
/// endpoint. Unknown fields are refused.
pub async fn set_settings(
    State(shared): State<Arc<Shared>>,
    axum::Json(body): axum::Json<HashMap<String, Value>>,
) -> Response {
    let mut settings =
        serde_json::to_value(lock(&shared.bedrock).clone()).expect("the settings serialize");
    let mut endpoint = None;
    for (key, value) in body {
        if key == "s3_endpoint" {
            endpoint = Some(value);
        } else {
            settings[key] = value;
        }
    }
    let settings: BedrockConfig = match serde_json::from_value(settings) {
        Ok(settings) => settings,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    if let Some(endpoint) = endpoint {
        match endpoint {
            Value::Null => *lock(&shared.s3_endpoint) = None,
            Value::String(url) => *lock(&shared.s3_endpoint) = Some(url),
            other => {
                return (
                    StatusCode::BAD_REQUEST,
                    format!("s3_endpoint: {other} is not a URL"),
                )
                    .into_response();
            }
        }
    }
    *lock(&shared.bedrock) = settings;
    StatusCode::NO_CONTENT.into_response()
}

/// ISO 8601 with milliseconds in UTC (`2026-12-03T07:22:11.123Z`), as AWS restJson
/// services write timestamps.
fn iso8601(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        ))
        .expect("formatting a UTC time")
}
