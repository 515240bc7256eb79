//! OpenAI Files and Batch API: upload, batch lifecycle, output and error files.
//!
//! The input file is checked when the batch is created, the way the real API does it in
//! its `validating` stage: file-level problems make the batch `failed` with `errors`,
//! an invalid request body becomes a 400 line in the error file.

mod batches;
mod endpoints;
mod files;
mod results;
#[cfg(test)]
mod tests;
mod validation;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderName, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use batches::BatchRecord;
use batches::cancel_batch;
use batches::create_batch;
use batches::get_batch;
use batches::list_batches;
use batches::preload_finished_batch;
use files::StoredFile;
use files::delete_file;
use files::file_content;
use files::get_file;
use files::list_files;
use files::upload_file;
use serde_json::json;

use crate::common::{Shared, add_request_id};

/// The Files API accepts files up to 512 MB; the batch limit (200 MB) is checked later.
const MAX_UPLOAD_BYTES: usize = 512 * 1024 * 1024;

/// The provider's routes. Every answer, error or not (injected HTTP faults included),
/// carries a `x-request-id` header.
pub fn router(shared: Arc<Shared>) -> Router {
    let faults = middleware::from_fn_with_state(shared.clone(), crate::http_faults);
    let request_ids =
        middleware::from_fn_with_state(HeaderName::from_static("x-request-id"), add_request_id);
    routes(Arc::new(OpenAi {
        shared,
        store: Mutex::new(Store::default()),
    }))
    .layer(faults)
    .layer(request_ids)
}

fn routes(state: Arc<OpenAi>) -> Router {
    Router::new()
        .route(
            "/v1/files",
            post(upload_file)
                .layer(DefaultBodyLimit::max(MAX_UPLOAD_BYTES))
                .get(list_files),
        )
        .route("/v1/files/{id}", get(get_file).delete(delete_file))
        .route("/v1/files/{id}/content", get(file_content))
        .route("/v1/batches", post(create_batch).get(list_batches))
        .route("/v1/batches/{id}", get(get_batch))
        .route("/v1/batches/{id}/cancel", post(cancel_batch))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize))
        .route(
            "/_emulator/openai/batches",
            post(preload_finished_batch).layer(DefaultBodyLimit::disable()),
        )
        .with_state(state)
}

struct OpenAi {
    shared: Arc<Shared>,
    store: Mutex<Store>,
}

#[derive(Default)]
struct Store {
    files: HashMap<String, StoredFile>,
    /// In creation order; listed newest first.
    batches: Vec<BatchRecord>,
}

/// An error answered with the OpenAI error body.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    param: Option<&'static str>,
    code: Option<&'static str>,
}

impl ApiError {
    fn invalid(message: impl Into<String>, param: Option<&'static str>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param,
            code: None,
        }
    }

    fn not_found(what: &str, id: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: format!("No such {what} object: {id}"),
            kind: "invalid_request_error",
            param: Some("id"),
            code: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }});
        (self.status, axum::Json(body)).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Every route needs `Authorization: Bearer <key>`; the answer never echoes the key sent.
async fn authorize(State(state): State<Arc<OpenAi>>, request: Request, next: Next) -> Response {
    let expected = format!("Bearer {}", state.shared.config.api_key);
    let sent = request.headers().get(header::AUTHORIZATION);
    if sent.is_some_and(|value| value.as_bytes() == expected.as_bytes()) {
        return next.run(request).await;
    }
    ApiError {
        status: StatusCode::UNAUTHORIZED,
        message: "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.".to_string(),
        kind: "invalid_request_error",
        param: None,
        code: Some("invalid_api_key"),
    }
    .into_response()
}
