//! Gemini Developer API batch mode (`/v1beta`, and `/v1`, which google-genai uses by
//! default): resumable file uploads, batches from a JSONL file or inline requests served
//! as long-running operations, and results as a downloadable file or inline responses.
//! Auth is `x-goog-api-key` (or `?key=`).
//!
//! A batch is PENDING for one lifecycle step and RUNNING for two, then ends. Its input
//! is parsed when it ends: a malformed file (bad JSON, missing or duplicate keys) fails
//! the whole batch; a bad request only fails its own line.

mod batches;
mod files;
mod results;
#[cfg(test)]
mod tests;
mod validation;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::HeaderMap;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use batches::Batch;
use batches::INLINE_LIMIT_BYTES;
use batches::batch_method;
use batches::delete_batch;
use batches::get_batch;
use batches::list_batches;
use batches::model_method;
use files::StoredFile;
use files::Upload;
use files::delete_file;
use files::download_only;
use files::get_file;
use files::list_files;
use files::upload;

use crate::common::Shared;
use crate::google::{Code, GoogleError};

/// Room above the inline limit so that oversized calls get Google's error, not axum's.
const CREATE_BODY_LIMIT_BYTES: usize = 2 * INLINE_LIMIT_BYTES;

pub fn router(shared: Arc<Shared>) -> Router {
    let gemini = Arc::new(Gemini {
        shared,
        files: Mutex::new(HashMap::new()),
        uploads: Mutex::new(HashMap::new()),
        batches: Mutex::new(HashMap::new()),
        sequence: AtomicU64::new(1),
    });
    Router::new()
        .route(
            "/upload/v1beta/files",
            post(upload).layer(DefaultBodyLimit::disable()),
        )
        .route("/v1beta/files", get(list_files))
        .route("/v1beta/files/{file}", get(get_file).delete(delete_file))
        .route("/download/v1beta/files/{file}", get(download_only))
        .route(
            "/v1beta/models/{model}",
            post(model_method).layer(DefaultBodyLimit::max(CREATE_BODY_LIMIT_BYTES)),
        )
        .route("/v1beta/batches", get(list_batches))
        .route(
            "/v1beta/batches/{batch}",
            get(get_batch).post(batch_method).delete(delete_batch),
        )
        .route_layer(middleware::from_fn_with_state(
            gemini.clone(),
            require_api_key,
        ))
        .with_state(gemini)
}

struct Gemini {
    shared: Arc<Shared>,
    files: Mutex<HashMap<String, StoredFile>>,
    uploads: Mutex<HashMap<String, Upload>>,
    batches: Mutex<HashMap<String, Batch>>,
    sequence: AtomicU64,
}

/// Middleware: the API key in `x-goog-api-key` or `?key=`. Upload continuations carry
/// none: their `upload_id` is the credential, as with Google's resumable uploads.
async fn require_api_key(
    State(gemini): State<Arc<Gemini>>,
    request: Request,
    next: Next,
) -> Response {
    let query = Query::<HashMap<String, String>>::try_from_uri(request.uri())
        .map(|Query(query)| query)
        .unwrap_or_default();
    if request.uri().path().starts_with("/upload/") && query.contains_key("upload_id") {
        return next.run(request).await;
    }
    let key = request
        .headers()
        .get("x-goog-api-key")
        .and_then(|value| value.to_str().ok())
        .map(str::to_string)
        .or_else(|| query.get("key").cloned());
    match key {
        Some(key) if key == gemini.shared.config.api_key => next.run(request).await,
        Some(_) => GoogleError::invalid("API key not valid. Please pass a valid API key.").into_response(),
        None => GoogleError::new(
            Code::PermissionDenied,
            "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.",
        )
        .into_response(),
    }
}

/// The API version a Gemini call was made under, when it was not `v1beta`
/// (see [`route_v1`]); `v1beta` calls carry none.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ApiVersion(pub(crate) &'static str);

impl ApiVersion {
    /// The version of a request that may carry this extension.
    fn of(request: Option<axum::Extension<ApiVersion>>) -> &'static str {
        request.map_or("v1beta", |axum::Extension(ApiVersion(version))| version)
    }
}

/// Middleware on the whole emulator, before routing: the Gemini API serves batch mode
/// under `/v1` as under `/v1beta`, but on the emulator's one host `/v1/files` and
/// `/v1/batches` are OpenAI's too. A `/v1` call is Gemini's when it carries a Google
/// API key (`x-goog-api-key` or `?key=`; OpenAI's key comes as a bearer token), or when
/// its path is the Gemini API's (`/upload/v1/…`, `/download/v1/…`, and `/v1/models/…`
/// without a bearer token). Such a call is served by the `v1beta` routes, marked with its
/// [`ApiVersion`] so that errors name the version the caller used.
pub async fn route_v1(mut request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let has_google_key = request.headers().contains_key("x-goog-api-key")
        || request
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|pair| pair.starts_with("key=")));
    let rest = ["/upload/v1/", "/download/v1/"]
        .iter()
        .find_map(|prefix| path.strip_prefix(prefix).map(|rest| (*prefix, rest)))
        .or_else(|| {
            let rest = path.strip_prefix("/v1/")?;
            // OpenAI has `/v1/models` too (not emulated): its bearer token keeps it there.
            let has_bearer = request.headers().contains_key("authorization");
            let gemini_path = rest.starts_with("models/") && !has_bearer;
            let shared = rest.starts_with("files") || rest.starts_with("batches");
            (gemini_path || (shared && has_google_key)).then_some(("/v1/", rest))
        });
    if let Some((prefix, rest)) = rest {
        let versioned = prefix.replace("/v1/", "/v1beta/");
        let query = request
            .uri()
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        if let Ok(uri) = format!("{versioned}{rest}{query}").parse() {
            *request.uri_mut() = uri;
            request.extensions_mut().insert(ApiVersion("v1"));
        }
    }
    next.run(request).await
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
}
