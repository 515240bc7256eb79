//! Anthropic Message Batches: create, retrieve, list, cancel, delete and results.
//!
//! A create call checks only the envelope (the request count and size, the custom ids)
//! and the few parameters batches never take; it fails as a whole with a 400. Each
//! request's `params` are validated while the batch runs, as the API does: a bad one
//! becomes that request's `errored` result. Results are planned at creation and
//! written once the batch ends.

mod batches;
mod models;
mod results;
#[cfg(test)]
mod tests;
mod validation;

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use batches::MessageBatch;
use batches::cancel_batch;
use batches::create_batch;
use batches::delete_batch;
use batches::get_batch;
use batches::list_batches;
use results::batch_results;
use serde_json::json;

use crate::common::{Shared, add_request_id};

// Bedrock's Claude records carry Messages bodies: it checks and answers them with these.
pub(crate) use results::{ResultKind, plan_valid_result};
pub(crate) use validation::check_message_params;

/// The provider's routes. Every answer, error or not (injected HTTP faults included),
/// carries a `request-id` header.
pub fn router(shared: Arc<Shared>) -> Router {
    let faults = middleware::from_fn_with_state(shared.clone(), crate::http_faults);
    let request_ids =
        middleware::from_fn_with_state(HeaderName::from_static("request-id"), add_request_id);
    routes(Arc::new(Anthropic {
        shared,
        batches: Mutex::new(Vec::new()),
    }))
    .layer(faults)
    .layer(request_ids)
}

fn routes(state: Arc<Anthropic>) -> Router {
    Router::new()
        .route(
            "/v1/messages/batches",
            post(create_batch)
                .get(list_batches)
                // The 256 MB limit is checked by the handler, with the API's own 413 body.
                .layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/v1/messages/batches/{id}",
            get(get_batch).delete(delete_batch),
        )
        .route("/v1/messages/batches/{id}/cancel", post(cancel_batch))
        .route("/v1/messages/batches/{id}/results", get(batch_results))
        .route_layer(middleware::from_fn_with_state(state.clone(), check_headers))
        .with_state(state)
}

struct Anthropic {
    shared: Arc<Shared>,
    /// In creation order; listed newest first.
    batches: Mutex<Vec<MessageBatch>>,
}

/// An error answered with `{"type":"error","error":{"type","message"}}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl ApiError {
    fn invalid(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            message: message.into(),
        }
    }

    fn not_found(id: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            kind: "not_found_error",
            message: format!("No message batch found with id '{id}'."),
        }
    }
}

/// Seconds a 429 answer tells the client to wait.
const RETRY_AFTER_S: u64 = 5;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"type": "error", "error": {"type": self.kind, "message": self.message}});
        let mut response = (self.status, axum::Json(body)).into_response();
        // The real API's 429s say when to retry.
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_S));
        }
        response
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// The configured key must come in `x-api-key` (or as `Authorization: Bearer`, which the
/// current official SDK sends), and `anthropic-version` must be present.
async fn check_headers(
    State(state): State<Arc<Anthropic>>,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    let key = state.shared.config.api_key.as_bytes();
    let bearer = format!("Bearer {}", state.shared.config.api_key);
    let key_ok = headers
        .get("x-api-key")
        .is_some_and(|sent| sent.as_bytes() == key)
        || headers
            .get(header::AUTHORIZATION)
            .is_some_and(|sent| sent.as_bytes() == bearer.as_bytes());
    if !key_ok {
        return ApiError {
            status: StatusCode::UNAUTHORIZED,
            kind: "authentication_error",
            message: "invalid x-api-key".to_string(),
        }
        .into_response();
    }
    if !headers.contains_key("anthropic-version") {
        return ApiError::invalid("anthropic-version: header is required").into_response();
    }
    next.run(request).await
}
