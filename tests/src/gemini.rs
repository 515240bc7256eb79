//! Gemini Developer API batch mode (`/v1beta`): resumable file uploads, batches from a
//! JSONL file or inline requests served as long-running operations, and results as a
//! downloadable file or inline responses. Auth is `x-goog-api-key` (or `?key=`).
//!
//! A batch is PENDING for one lifecycle step and RUNNING for two, then ends. Its input
//! is parsed when it ends: a malformed file (bad JSON, missing or duplicate keys) fails
//! the whole batch; a bad request only fails its own line.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::common::{BatchFate, Shared, download_response, lock, ran_count};
use crate::google::{
    Api, Code, GoogleError, field, generate, json_body, page, scrambled_order, steps, timestamp,
};

const PENDING: &str = "BATCH_STATE_PENDING";
const RUNNING: &str = "BATCH_STATE_RUNNING";
const SUCCEEDED: &str = "BATCH_STATE_SUCCEEDED";
const FAILED: &str = "BATCH_STATE_FAILED";
const CANCELLED: &str = "BATCH_STATE_CANCELLED";
const EXPIRED: &str = "BATCH_STATE_EXPIRED";

const BATCH_TYPE: &str =
    "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch";
const OUTPUT_TYPE: &str =
    "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput";

/// Lifecycle step after which a batch ends (PENDING at step 0, RUNNING at 1 and 2).
const LAST_RUNNING_STEP: u32 = 2;
/// Inline requests: the whole create call is limited to 20 MB.
const INLINE_LIMIT_BYTES: usize = 20 * 1024 * 1024;
/// Room above the inline limit so that oversized calls get Google's error, not axum's.
const CREATE_BODY_LIMIT_BYTES: usize = 2 * INLINE_LIMIT_BYTES;
const UPLOAD_CHUNK_GRANULARITY: &str = "8388608";
const FILE_LIFETIME: Duration = Duration::from_secs(48 * 3600);
const MAX_FILE_ID: usize = 40;
const DEFAULT_PAGE_SIZE: usize = 50;
const MAX_PAGE_SIZE: usize = 1000;

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

#[derive(Clone)]
struct StoredFile {
    id: String,
    display_name: Option<String>,
    mime_type: String,
    data: Bytes,
    create_time: OffsetDateTime,
    /// Written by a batch (results), as opposed to uploaded.
    generated: bool,
}

/// A resumable upload between its start and its finalize.
struct Upload {
    file_id: String,
    display_name: Option<String>,
    mime_type: String,
    declared_length: usize,
    received: Vec<u8>,
}

/// The key (file input) or metadata (inline input) a request is reported under.
enum Tag {
    Key(String),
    Metadata(Option<Value>),
}

enum Input {
    /// `files/{id}`.
    File(String),
    /// Each inline request with its optional `metadata`.
    Inline(Vec<(Option<Value>, Value)>),
}

struct Batch {
    id: String,
    sequence: u64,
    model_id: String,
    display_name: String,
    input_config: Value,
    input: Input,
    request_count: usize,
    created: Instant,
    create_time: OffsetDateTime,
    fate: BatchFate,
    partial: f64,
    /// The lifecycle step at which cancellation was asked for.
    cancelled_at_step: Option<u32>,
    state: &'static str,
    update_time: String,
    end_time: Option<String>,
    end: Option<Ended>,
}

/// How a batch ended.
struct Ended {
    error: Option<GoogleError>,
    output: Option<Output>,
    stats: Stats,
}

enum Output {
    ResponsesFile(String),
    Inline(Vec<Value>),
}

#[derive(Default)]
struct Stats {
    successful: usize,
    failed: usize,
    pending: usize,
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

impl Gemini {
    fn file_json(&self, file: &StoredFile) -> Value {
        let base = &self.shared.base_url;
        let created = timestamp(file.create_time);
        let mut answer = json!({
            "name": format!("files/{}", file.id),
            "mimeType": file.mime_type,
            "sizeBytes": file.data.len().to_string(),
            "createTime": created,
            "updateTime": created,
            "expirationTime": timestamp(file.create_time + FILE_LIFETIME),
            // Google sends the hex digest, base64-encoded.
            "sha256Hash": STANDARD.encode(hex::encode(Sha256::digest(&file.data))),
            "uri": format!("{base}/v1beta/files/{}", file.id),
            "state": "ACTIVE",
            "source": if file.generated { "GENERATED" } else { "UPLOADED" },
        });
        if let Some(display_name) = &file.display_name {
            answer["displayName"] = json!(display_name);
        }
        if file.generated {
            answer["downloadUri"] = json!(format!(
                "{base}/download/v1beta/files/{}:download?alt=media",
                file.id
            ));
        }
        answer
    }

    fn store(&self, file: StoredFile) {
        lock(&self.files).insert(file.id.clone(), file);
    }

    fn file(&self, id: &str) -> Result<StoredFile, GoogleError> {
        lock(&self.files).get(id).cloned().ok_or_else(|| {
            GoogleError::new(
                Code::PermissionDenied,
                format!("You do not have permission to access the File {id} or it may not exist."),
            )
        })
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
}

/// `POST /upload/v1beta/files`: starts a resumable upload, or (with `upload_id`) takes
/// its bytes.
async fn upload(
    State(gemini): State<Arc<Gemini>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, GoogleError> {
    match query.get("upload_id") {
        None => start_upload(&gemini, &headers, &body),
        Some(upload_id) => continue_upload(&gemini, upload_id, &headers, &body),
    }
}

fn upload_status(status: &'static str, body: Option<Value>) -> Response {
    let mut response = match body {
        Some(body) => Json(body).into_response(),
        None => StatusCode::OK.into_response(),
    };
    response
        .headers_mut()
        .insert("x-goog-upload-status", HeaderValue::from_static(status));
    response
}

fn start_upload(
    gemini: &Gemini,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, GoogleError> {
    if header(headers, "x-goog-upload-protocol") != Some("resumable") {
        return Err(GoogleError::invalid(
            "The emulator serves resumable uploads only (X-Goog-Upload-Protocol: resumable).",
        ));
    }
    if header(headers, "x-goog-upload-command") != Some("start") {
        return Err(GoogleError::invalid(
            "A resumable upload starts with X-Goog-Upload-Command: start.",
        ));
    }
    let declared_length = header(headers, "x-goog-upload-header-content-length")
        .and_then(|length| length.parse::<usize>().ok())
        .ok_or_else(|| {
            GoogleError::invalid(
                "X-Goog-Upload-Header-Content-Length must give the file size in bytes.",
            )
        })?;
    let request = json_body(body)?;
    let file = request.get("file").cloned().unwrap_or_else(|| json!({}));
    let display_name = field(&file, "displayName")
        .and_then(Value::as_str)
        .map(String::from);
    let mime_type = header(headers, "x-goog-upload-header-content-type")
        .map(String::from)
        .or_else(|| {
            field(&file, "mimeType")
                .and_then(Value::as_str)
                .map(String::from)
        })
        .ok_or_else(|| GoogleError::invalid("The file's MIME type must be given."))?;
    let file_id = match file.get("name").and_then(Value::as_str) {
        None => new_file_id(),
        Some(name) => {
            let id = name.strip_prefix("files/").unwrap_or(name);
            if !is_file_id(id) {
                return Err(GoogleError::invalid(format!(
                    "Invalid file name {name:?}: use files/ and up to {MAX_FILE_ID} lowercase letters, digits or dashes."
                )));
            }
            if lock(&gemini.files).contains_key(id) {
                return Err(GoogleError::new(
                    Code::AlreadyExists,
                    format!("File files/{id} already exists."),
                ));
            }
            id.to_string()
        }
    };
    let upload_id = uuid::Uuid::new_v4().simple().to_string();
    lock(&gemini.uploads).insert(
        upload_id.clone(),
        Upload {
            file_id,
            display_name,
            mime_type,
            declared_length,
            received: Vec::new(),
        },
    );
    let url = format!(
        "{}/upload/v1beta/files?upload_id={upload_id}&upload_protocol=resumable",
        gemini.shared.base_url
    );
    let mut response = upload_status("active", None);
    let headers = response.headers_mut();
    for (name, value) in [
        ("x-goog-upload-url", url.as_str()),
        ("x-goog-upload-control-url", url.as_str()),
    ] {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    }
    headers.insert(
        "x-goog-upload-chunk-granularity",
        HeaderValue::from_static(UPLOAD_CHUNK_GRANULARITY),
    );
    Ok(response)
}

fn new_file_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

fn is_file_id(id: &str) -> bool {
    (1..=MAX_FILE_ID).contains(&id.len())
        && !id.starts_with('-')
        && !id.ends_with('-')
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn continue_upload(
    gemini: &Gemini,
    upload_id: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, GoogleError> {
    let commands: HashSet<&str> = header(headers, "x-goog-upload-command")
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .collect();
    let mut uploads = lock(&gemini.uploads);
    let upload = uploads
        .get_mut(upload_id)
        .ok_or_else(|| GoogleError::not_found("No such upload session."))?;
    if commands.contains("query") {
        let mut response = upload_status("active", None);
        if let Ok(size) = HeaderValue::from_str(&upload.received.len().to_string()) {
            response
                .headers_mut()
                .insert("x-goog-upload-size-received", size);
        }
        return Ok(response);
    }
    if commands.contains("upload") {
        let offset = header(headers, "x-goog-upload-offset").and_then(|o| o.parse::<usize>().ok());
        if offset != Some(upload.received.len()) {
            return Err(GoogleError::invalid(format!(
                "X-Goog-Upload-Offset must be {}, the number of bytes received so far.",
                upload.received.len()
            )));
        }
        if upload.received.len() + body.len() > upload.declared_length {
            uploads.remove(upload_id);
            return Err(GoogleError::invalid(
                "The upload holds more bytes than X-Goog-Upload-Header-Content-Length declared.",
            ));
        }
        upload.received.extend_from_slice(body);
    }
    if !commands.contains("finalize") {
        if commands.contains("upload") {
            return Ok(upload_status("active", None));
        }
        return Err(GoogleError::invalid(
            "X-Goog-Upload-Command must be upload, finalize or query.",
        ));
    }
    let upload = uploads
        .remove(upload_id)
        .expect("the upload was found above");
    drop(uploads);
    if upload.received.len() != upload.declared_length {
        return Err(GoogleError::invalid(format!(
            "Upload finalized with {} bytes, but X-Goog-Upload-Header-Content-Length declared {}.",
            upload.received.len(),
            upload.declared_length
        )));
    }
    let file = StoredFile {
        id: upload.file_id,
        display_name: upload.display_name,
        mime_type: upload.mime_type,
        data: Bytes::from(upload.received),
        create_time: OffsetDateTime::now_utc(),
        generated: false,
    };
    let answer = json!({"file": gemini.file_json(&file)});
    gemini.store(file);
    Ok(upload_status("final", Some(answer)))
}

/// `GET /v1beta/files/{id}` (metadata) or `/v1beta/files/{id}:download?alt=media`.
async fn get_file(
    State(gemini): State<Arc<Gemini>>,
    Path(file): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, GoogleError> {
    match file.split_once(':') {
        None => Ok(Json(gemini.file_json(&gemini.file(&file)?)).into_response()),
        Some((id, "download")) => download(&gemini, id, &query),
        Some(_) => Err(GoogleError::not_found(format!("Method not found: {file}"))),
    }
}

/// `GET /download/v1beta/files/{id}:download?alt=media`.
async fn download_only(
    State(gemini): State<Arc<Gemini>>,
    Path(file): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, GoogleError> {
    match file.split_once(':') {
        Some((id, "download")) => download(&gemini, id, &query),
        _ => Err(GoogleError::not_found(format!("Method not found: {file}"))),
    }
}

fn download(
    gemini: &Gemini,
    id: &str,
    query: &HashMap<String, String>,
) -> Result<Response, GoogleError> {
    if query.get("alt").map(String::as_str) != Some("media") {
        return Err(GoogleError::invalid("Downloads need alt=media."));
    }
    let file = gemini.file(id)?;
    if !file.generated {
        return Err(GoogleError::invalid(
            "Only generated files can be downloaded; uploaded files cannot.",
        ));
    }
    Ok(download_response(
        file.data,
        &file.mime_type,
        gemini.shared.drop_results_after(),
    ))
}

async fn delete_file(
    State(gemini): State<Arc<Gemini>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, GoogleError> {
    gemini.file(&id)?;
    lock(&gemini.files).remove(&id);
    Ok(Json(json!({})))
}

/// `POST /v1beta/models/{model}:batchGenerateContent`.
async fn model_method(
    State(gemini): State<Arc<Gemini>>,
    Path(model): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, GoogleError> {
    let Some((model_id, "batchGenerateContent")) = model.split_once(':') else {
        return Err(GoogleError::not_found(format!(
            "Method not found: models/{model}"
        )));
    };
    if !model_id.starts_with("gemini-") {
        return Err(GoogleError::not_found(format!(
            "models/{model_id} is not found for API version v1beta, or is not supported for batchGenerateContent. Call ListModels to see the list of available models and their supported methods."
        )));
    }
    if body.len() > INLINE_LIMIT_BYTES {
        return Err(GoogleError::invalid(format!(
            "Request payload size exceeds the limit: {INLINE_LIMIT_BYTES} bytes."
        )));
    }
    let request = json_body(&body)?;
    let batch = request
        .get("batch")
        .filter(|batch| batch.is_object())
        .ok_or_else(|| {
            GoogleError::invalid("* BatchGenerateContentRequest.batch: batch is required")
        })?;
    let display_name = field(batch, "displayName")
        .and_then(Value::as_str)
        .filter(|name| !name.trim().is_empty())
        .ok_or_else(|| {
            GoogleError::invalid("* GenerateContentBatch.display_name: display_name is required")
        })?;
    let input_config = field(batch, "inputConfig")
        .filter(|config| config.is_object())
        .ok_or_else(|| {
            GoogleError::invalid("* GenerateContentBatch.input_config: input_config is required")
        })?;
    let (input, request_count) = parse_input(&gemini, input_config)?;

    let (fate, partial) = gemini.shared.fate_for_new_batch();
    let create_time = OffsetDateTime::now_utc();
    let batch = Batch {
        id: uuid::Uuid::new_v4().simple().to_string(),
        sequence: gemini.sequence.fetch_add(1, Ordering::Relaxed),
        model_id: model_id.to_string(),
        display_name: display_name.to_string(),
        input_config: input_config.clone(),
        input,
        request_count,
        created: Instant::now(),
        create_time,
        fate,
        partial,
        cancelled_at_step: None,
        state: PENDING,
        update_time: timestamp(create_time),
        end_time: None,
        end: None,
    };
    let answer = batch.operation();
    lock(&gemini.batches).insert(batch.id.clone(), batch);
    Ok(Json(answer))
}

/// Exactly one of `fileName` (an uploaded file) and `requests.requests` (inline).
fn parse_input(gemini: &Gemini, config: &Value) -> Result<(Input, usize), GoogleError> {
    let file_name = field(config, "fileName").and_then(Value::as_str);
    let inline = field(config, "requests").and_then(|requests| field(requests, "requests"));
    match (file_name, inline) {
        (Some(name), None) => {
            let id = name.strip_prefix("files/").unwrap_or(name);
            let file = gemini.file(id)?;
            if file.generated {
                return Err(GoogleError::invalid(format!(
                    "{name} holds results; a batch reads an uploaded file."
                )));
            }
            let count = file
                .data
                .split(|b| *b == b'\n')
                .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
                .count();
            Ok((Input::File(file.id), count))
        }
        (None, Some(requests)) => {
            let requests = requests
                .as_array()
                .filter(|requests| !requests.is_empty())
                .ok_or_else(|| {
                    GoogleError::invalid(
                        "* InputConfig.requests.requests: at least one request is required",
                    )
                })?;
            let mut inline = Vec::with_capacity(requests.len());
            for (i, item) in requests.iter().enumerate() {
                let request = item
                    .get("request")
                    .filter(|r| r.is_object())
                    .ok_or_else(|| {
                        GoogleError::invalid(format!(
                            "* InlinedRequests.requests[{i}].request: request is required"
                        ))
                    })?;
                let metadata = item.get("metadata").cloned();
                if metadata.as_ref().is_some_and(|m| !m.is_object()) {
                    return Err(GoogleError::invalid(format!(
                        "* InlinedRequests.requests[{i}].metadata: must be an object"
                    )));
                }
                inline.push((metadata, request.clone()));
            }
            let count = inline.len();
            Ok((Input::Inline(inline), count))
        }
        _ => Err(GoogleError::invalid(
            "* GenerateContentBatch.input_config: exactly one of file_name and requests must be set",
        )),
    }
}

impl Batch {
    fn name(&self) -> String {
        format!("batches/{}", self.id)
    }

    fn observe(&mut self, state: &'static str) {
        if self.state != state {
            self.state = state;
            self.update_time = timestamp(OffsetDateTime::now_utc());
        }
    }

    fn is_over(&self) -> bool {
        self.end.is_some()
    }

    fn steps(&self, gemini: &Gemini) -> u32 {
        steps(&gemini.shared, &[&self.id, &self.name()], self.created)
    }

    /// Moves the batch along its lifecycle; runs it when it reaches its end.
    fn refresh(&mut self, gemini: &Gemini) {
        if self.is_over() {
            return;
        }
        let steps = self.steps(gemini);
        match self.cancelled_at_step {
            Some(at) => self.finish(gemini, Some(at)),
            None if steps > LAST_RUNNING_STEP => self.finish(gemini, None),
            None if steps == 0 => self.observe(PENDING),
            None => self.observe(RUNNING),
        }
    }

    fn finish(&mut self, gemini: &Gemini, cancelled_at: Option<u32>) {
        let (state, ended) = match self.run(gemini, cancelled_at) {
            Ok(run) => run,
            Err(error) => (
                FAILED,
                Ended {
                    error: Some(error),
                    output: None,
                    stats: Stats {
                        pending: self.request_count,
                        ..Stats::default()
                    },
                },
            ),
        };
        self.observe(state);
        self.end_time = Some(self.update_time.clone());
        self.end = Some(ended);
    }

    fn run(
        &self,
        gemini: &Gemini,
        cancelled_at: Option<u32>,
    ) -> Result<(&'static str, Ended), GoogleError> {
        if cancelled_at.is_some_and(|at| at == 0) {
            let stats = Stats {
                pending: self.request_count,
                ..Stats::default()
            };
            return Ok((
                CANCELLED,
                Ended {
                    error: None,
                    output: None,
                    stats,
                },
            ));
        }
        let requests = self.requests(gemini)?;
        if self.fate == BatchFate::FailValidation {
            return Err(GoogleError::invalid(
                "The batch input failed validation (emulated).",
            ));
        }
        let ran = match (cancelled_at, self.fate) {
            (Some(_), _) | (None, BatchFate::Expire) => ran_count(requests.len(), self.partial),
            (None, _) => requests.len(),
        };
        let mut stats = Stats {
            pending: requests.len() - ran,
            ..Stats::default()
        };
        let mut answer = |tag: &Tag, request: &Value| {
            let outcome = match self.fate {
                BatchFate::AllFail => Err(GoogleError::new(
                    Code::Internal,
                    "Internal error encountered.",
                )),
                _ => generate(request, Api::Gemini, &self.model_id),
            };
            let mut line = match tag {
                Tag::Key(key) => json!({"key": key}),
                Tag::Metadata(Some(metadata)) => json!({"metadata": metadata}),
                Tag::Metadata(None) => json!({}),
            };
            match outcome {
                Ok(response) => {
                    stats.successful += 1;
                    line["response"] = response;
                }
                Err(error) => {
                    stats.failed += 1;
                    line["error"] = error.http_error();
                }
            }
            line
        };
        let output = match &self.input {
            Input::File(_) => {
                let mut results = Vec::new();
                for index in scrambled_order(ran) {
                    let (tag, request) = &requests[index];
                    serde_json::to_writer(&mut results, &answer(tag, request))
                        .expect("serializing JSON to memory");
                    results.push(b'\n');
                }
                let id = format!("batch-{}", self.id);
                gemini.store(StoredFile {
                    id: id.clone(),
                    display_name: None,
                    mime_type: "application/jsonl".to_string(),
                    data: Bytes::from(results),
                    create_time: OffsetDateTime::now_utc(),
                    generated: true,
                });
                Output::ResponsesFile(format!("files/{id}"))
            }
            Input::Inline(_) => Output::Inline(
                requests[..ran]
                    .iter()
                    .map(|(tag, request)| answer(tag, request))
                    .collect(),
            ),
        };
        let state = match (cancelled_at, self.fate) {
            (Some(_), _) => CANCELLED,
            (None, BatchFate::Expire) => EXPIRED,
            (None, _) => SUCCEEDED,
        };
        Ok((
            state,
            Ended {
                error: None,
                output: Some(output),
                stats,
            },
        ))
    }

    /// The requests in input order, each with what its result is reported under. A
    /// file line that is not JSON, lacks a key or a request, or repeats a key fails the
    /// whole batch.
    fn requests(&self, gemini: &Gemini) -> Result<Vec<(Tag, Value)>, GoogleError> {
        let file_id = match &self.input {
            Input::Inline(inline) => {
                return Ok(inline
                    .iter()
                    .map(|(metadata, request)| (Tag::Metadata(metadata.clone()), request.clone()))
                    .collect());
            }
            Input::File(file_id) => file_id,
        };
        let data = gemini.file(file_id)?.data;
        let mut keys = HashSet::new();
        let mut requests = Vec::new();
        for (number, raw) in data.split(|b| *b == b'\n').enumerate() {
            if raw.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let bad_line = |why: &str| {
                GoogleError::invalid(format!("Line {} of files/{file_id}: {why}", number + 1))
            };
            let mut line: Map<String, Value> = serde_json::from_slice(raw)
                .map_err(|e| bad_line(&format!("not a JSON object ({e}).")))?;
            let key = match line.remove("key") {
                Some(Value::String(key)) if !key.is_empty() => key,
                _ => return Err(bad_line("\"key\" must be a non-empty string.")),
            };
            let request = line
                .remove("request")
                .filter(Value::is_object)
                .ok_or_else(|| bad_line("\"request\" must be an object."))?;
            if !keys.insert(key.clone()) {
                return Err(bad_line(&format!("the key {key:?} was already used.")));
            }
            requests.push((Tag::Key(key), request));
        }
        if requests.is_empty() {
            return Err(GoogleError::invalid(format!(
                "files/{file_id} holds no requests."
            )));
        }
        Ok(requests)
    }

    fn stats_json(&self) -> Value {
        let stats = match &self.end {
            Some(end) => &end.stats,
            None => &Stats {
                pending: self.request_count,
                ..Stats::default()
            },
        };
        let mut answer = json!({"requestCount": self.request_count.to_string()});
        for (name, count) in [
            ("successfulRequestCount", stats.successful),
            ("failedRequestCount", stats.failed),
            ("pendingRequestCount", stats.pending),
        ] {
            // Zero counts are left out, as proto3 JSON does.
            if count > 0 {
                answer[name] = json!(count.to_string());
            }
        }
        answer
    }

    /// The batch as a long-running operation.
    fn operation(&self) -> Value {
        let name = self.name();
        let mut metadata = json!({
            "@type": BATCH_TYPE,
            "model": format!("models/{}", self.model_id),
            "displayName": self.display_name,
            "inputConfig": self.input_config,
            "createTime": timestamp(self.create_time),
            "updateTime": self.update_time,
            "batchStats": self.stats_json(),
            "state": self.state,
            "name": name,
        });
        let mut operation = json!({"name": name});
        if let Some(end_time) = &self.end_time {
            metadata["endTime"] = json!(end_time);
        }
        if let Some(end) = &self.end {
            operation["done"] = json!(true);
            if let Some(error) = &end.error {
                operation["error"] = error.rpc_status();
            }
            if let Some(output) = &end.output {
                let output = match output {
                    Output::ResponsesFile(file) => json!({"responsesFile": file}),
                    Output::Inline(responses) => {
                        json!({"inlinedResponses": {"inlinedResponses": responses}})
                    }
                };
                metadata["output"] = output.clone();
                let mut response = output;
                response["@type"] = json!(OUTPUT_TYPE);
                operation["response"] = response;
            }
        }
        operation["metadata"] = metadata;
        operation
    }
}

/// The batch `{id}`, moved along its lifecycle.
fn with_batch<T>(
    gemini: &Gemini,
    id: &str,
    action: impl FnOnce(&mut Batch) -> Result<T, GoogleError>,
) -> Result<T, GoogleError> {
    let mut batches = lock(&gemini.batches);
    let batch = batches
        .get_mut(id)
        .ok_or_else(|| GoogleError::not_found(format!("Batch batches/{id} not found.")))?;
    batch.refresh(gemini);
    action(batch)
}

async fn get_batch(
    State(gemini): State<Arc<Gemini>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, GoogleError> {
    with_batch(&gemini, &id, |batch| Ok(Json(batch.operation())))
}

/// `POST /v1beta/batches/{id}:cancel`.
async fn batch_method(
    State(gemini): State<Arc<Gemini>>,
    Path(batch): Path<String>,
) -> Result<Json<Value>, GoogleError> {
    let Some((id, "cancel")) = batch.split_once(':') else {
        return Err(GoogleError::not_found(format!(
            "Method not found: batches/{batch}"
        )));
    };
    with_batch(&gemini, id, |batch| {
        if batch.is_over() {
            return Err(GoogleError::failed_precondition(format!(
                "Batch {} is in state {} and cannot be cancelled.",
                batch.name(),
                batch.state
            )));
        }
        batch.cancelled_at_step = Some(batch.steps(&gemini));
        Ok(Json(json!({})))
    })
}

/// `DELETE /v1beta/batches/{id}`: forgets the batch (its results file stays).
async fn delete_batch(
    State(gemini): State<Arc<Gemini>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, GoogleError> {
    lock(&gemini.batches)
        .remove(&id)
        .map(|_| Json(json!({})))
        .ok_or_else(|| GoogleError::not_found(format!("Batch batches/{id} not found.")))
}

/// `GET /v1beta/batches?pageSize=&pageToken=`, newest first.
async fn list_batches(
    State(gemini): State<Arc<Gemini>>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, GoogleError> {
    let mut batches = lock(&gemini.batches);
    let mut all: Vec<&mut Batch> = batches.values_mut().collect();
    all.sort_by_key(|batch| std::cmp::Reverse(batch.sequence));
    let newest_first = all
        .into_iter()
        .map(|batch| {
            batch.refresh(&gemini);
            (batch.sequence, batch.operation())
        })
        .collect();
    let (operations, next) = page(newest_first, &query, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)?;
    let mut answer = json!({});
    if !operations.is_empty() {
        answer["operations"] = Value::Array(operations);
    }
    if let Some(next) = next {
        answer["nextPageToken"] = json!(next);
    }
    Ok(Json(answer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Config, Emulator, FaultPlan};

    struct Harness {
        emulator: Emulator,
        client: reqwest::Client,
    }

    impl Harness {
        async fn start(step: Duration) -> Self {
            let config = Config {
                step,
                ..Config::default()
            };
            Self {
                emulator: Emulator::start(config).await.unwrap(),
                client: crate::harness::http_client(),
            }
        }

        fn url(&self, path: &str) -> String {
            format!("{}{path}", self.emulator.base_url())
        }

        async fn call(
            &self,
            method: reqwest::Method,
            path: &str,
            body: Option<Value>,
        ) -> (u16, Value) {
            let mut request = self
                .client
                .request(method, self.url(path))
                .header("x-goog-api-key", "test-key");
            if let Some(body) = body {
                request = request.json(&body);
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json().await.unwrap_or(Value::Null))
        }

        async fn start_upload(&self, length: usize) -> String {
            let response = self
                .client
                .post(self.url("/upload/v1beta/files"))
                .header("x-goog-api-key", "test-key")
                .header("x-goog-upload-protocol", "resumable")
                .header("x-goog-upload-command", "start")
                .header("x-goog-upload-header-content-length", length.to_string())
                .header("x-goog-upload-header-content-type", "application/jsonl")
                .json(&json!({"file": {"displayName": "requests"}}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            assert_eq!(response.headers()["x-goog-upload-status"], "active");
            response.headers()["x-goog-upload-url"]
                .to_str()
                .unwrap()
                .to_string()
        }

        async fn send_chunk(
            &self,
            url: &str,
            offset: usize,
            command: &str,
            chunk: &[u8],
        ) -> reqwest::Response {
            self.client
                .post(url)
                .header("x-goog-upload-command", command)
                .header("x-goog-upload-offset", offset.to_string())
                .body(chunk.to_vec())
                .send()
                .await
                .unwrap()
        }

        /// Uploads in two chunks, as the SDK does for large files; answers the file name.
        async fn upload(&self, content: &str) -> String {
            let url = self.start_upload(content.len()).await;
            let (first, second) = content.as_bytes().split_at(content.len() / 2);
            let active = self.send_chunk(&url, 0, "upload", first).await;
            assert_eq!(active.headers()["x-goog-upload-status"], "active");
            let last = self
                .send_chunk(&url, first.len(), "upload, finalize", second)
                .await;
            assert_eq!(last.status(), 200);
            assert_eq!(last.headers()["x-goog-upload-status"], "final");
            let file: Value = last.json().await.unwrap();
            assert_eq!(file["file"]["state"], "ACTIVE");
            assert_eq!(file["file"]["source"], "UPLOADED");
            assert_eq!(file["file"]["sizeBytes"], content.len().to_string());
            file["file"]["name"].as_str().unwrap().to_string()
        }

        async fn create(&self, input_config: Value) -> Value {
            let body = json!({"batch": {"displayName": "extraction", "inputConfig": input_config}});
            let (status, operation) = self
                .call(
                    reqwest::Method::POST,
                    "/v1beta/models/gemini-2.5-flash:batchGenerateContent",
                    Some(body),
                )
                .await;
            assert_eq!(status, 200, "{operation}");
            operation
        }

        async fn get(&self, name: &str) -> Value {
            let (status, operation) = self
                .call(reqwest::Method::GET, &format!("/v1beta/{name}"), None)
                .await;
            assert_eq!(status, 200, "{operation}");
            operation
        }

        fn force_end(&self, name: &str) {
            lock(&self.emulator.shared.forced).insert(name.to_string(), ());
        }

        async fn results(&self, operation: &Value) -> Vec<Value> {
            let file = operation["response"]["responsesFile"].as_str().unwrap();
            let text = self
                .client
                .get(self.url(&format!("/download/v1beta/{file}:download?alt=media")))
                .header("x-goog-api-key", "test-key")
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            text.lines()
                .map(|line| serde_json::from_str(line).unwrap())
                .collect()
        }
    }

    fn request(text: &str) -> Value {
        json!({
            "contents": [{"parts": [{"text": text}], "role": "user"}],
            "generationConfig": {
                "responseMimeType": "application/json",
                "responseJsonSchema": {"type": "object", "properties": {"total": {"type": "integer"}}, "required": ["total"]}
            }
        })
    }

    fn file_line(key: &str, text: &str) -> String {
        json!({"key": key, "request": request(text)}).to_string()
    }

    fn answer_text(response: &Value) -> &str {
        response["candidates"][0]["content"]["parts"][0]["text"]
            .as_str()
            .unwrap()
    }

    #[tokio::test]
    async fn api_keys_are_checked() {
        let harness = Harness::start(Duration::from_secs(3600)).await;
        let missing = harness
            .client
            .get(harness.url("/v1beta/batches"))
            .send()
            .await
            .unwrap();
        assert_eq!(missing.status(), 403);
        let wrong = harness
            .client
            .get(harness.url("/v1beta/batches"))
            .header("x-goog-api-key", "wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 400);
        let body: Value = wrong.json().await.unwrap();
        assert_eq!(body["error"]["status"], "INVALID_ARGUMENT");
        let by_query = harness
            .client
            .get(harness.url("/v1beta/batches?key=test-key"))
            .send()
            .await
            .unwrap();
        assert_eq!(by_query.status(), 200);
    }

    #[tokio::test]
    async fn uploads_check_offsets_and_sizes() {
        let harness = Harness::start(Duration::from_secs(3600)).await;
        let url = harness.start_upload(10).await;
        let wrong_offset = harness.send_chunk(&url, 3, "upload", b"abc").await;
        assert_eq!(wrong_offset.status(), 400);
        let short = harness
            .send_chunk(&url, 0, "upload, finalize", b"abc")
            .await;
        assert_eq!(short.status(), 400);
        let gone = harness
            .send_chunk(&url, 0, "upload, finalize", b"0123456789")
            .await;
        assert_eq!(gone.status(), 404, "a failed finalize ends the session");

        let name = harness.upload("{\"x\":1}\n").await;
        let (status, file) = harness
            .call(reqwest::Method::GET, &format!("/v1beta/{name}"), None)
            .await;
        assert_eq!(status, 200);
        assert_eq!(file["displayName"], "requests");
        assert_eq!(file["mimeType"], "application/jsonl");
        let (status, _) = harness
            .call(
                reqwest::Method::GET,
                &format!("/v1beta/{name}:download?alt=media"),
                None,
            )
            .await;
        assert_eq!(status, 400, "uploaded files cannot be downloaded");
    }

    #[tokio::test]
    async fn a_file_batch_runs_every_request_once() {
        let harness = Harness::start(Duration::from_millis(150)).await;
        let lines = [
            file_line("a", "first invoice"),
            file_line("b", "second [[fault:provider_error]]"),
            file_line("c", "third [[fault:truncate]]"),
            file_line("d", "fourth [[fault:rate_limit]]"),
            json!({"key": "e", "request": {"contents": []}}).to_string(),
        ];
        let file = harness.upload(&(lines.join("\n") + "\n")).await;
        let operation = harness.create(json!({"fileName": file})).await;
        assert_eq!(operation["metadata"]["state"], PENDING);
        assert_eq!(operation["metadata"]["@type"], BATCH_TYPE);
        assert_eq!(operation["metadata"]["model"], "models/gemini-2.5-flash");
        assert_eq!(
            operation["metadata"]["batchStats"],
            json!({"requestCount": "5", "pendingRequestCount": "5"})
        );
        assert!(operation.get("done").is_none());
        let name = operation["name"].as_str().unwrap();

        let mut states = vec![PENDING.to_string()];
        while states.last().unwrap() != SUCCEEDED {
            tokio::time::sleep(Duration::from_millis(40)).await;
            let state = harness.get(name).await["metadata"]["state"]
                .as_str()
                .unwrap()
                .to_string();
            if states.last() != Some(&state) {
                states.push(state);
            }
        }
        assert_eq!(states, [PENDING, RUNNING, SUCCEEDED]);

        let operation = harness.get(name).await;
        assert_eq!(operation["done"], true);
        assert_eq!(operation["response"]["@type"], OUTPUT_TYPE);
        assert_eq!(
            operation["metadata"]["output"]["responsesFile"],
            operation["response"]["responsesFile"]
        );
        assert_eq!(
            operation["metadata"]["batchStats"],
            json!({"requestCount": "5", "successfulRequestCount": "2", "failedRequestCount": "3"})
        );
        let results = harness.results(&operation).await;
        let by_key: HashMap<&str, &Value> = results
            .iter()
            .map(|r| (r["key"].as_str().unwrap(), r))
            .collect();
        assert_eq!(by_key.len(), 5);
        let parsed: Value = serde_json::from_str(answer_text(&by_key["a"]["response"])).unwrap();
        assert!(parsed["total"].is_i64());
        assert_eq!(by_key["b"]["error"]["code"], 400);
        assert_eq!(by_key["b"]["error"]["status"], "INVALID_ARGUMENT");
        assert_eq!(
            by_key["c"]["response"]["candidates"][0]["finishReason"],
            "MAX_TOKENS"
        );
        assert_eq!(by_key["d"]["error"]["status"], "RESOURCE_EXHAUSTED");
        assert_eq!(by_key["e"]["error"]["status"], "INVALID_ARGUMENT");
    }

    #[tokio::test]
    async fn inline_batches_answer_in_request_order() {
        let harness = Harness::start(Duration::from_secs(3600)).await;
        let requests: Vec<Value> = (0..3)
            .map(|i| json!({"request": request(&format!("item {i}")), "metadata": {"key": format!("k{i}")}}))
            .collect();
        let operation = harness
            .create(json!({"requests": {"requests": requests}}))
            .await;
        let name = operation["name"].as_str().unwrap();
        harness.force_end(name);
        let operation = harness.get(name).await;
        assert_eq!(operation["metadata"]["state"], SUCCEEDED);
        let responses = operation["metadata"]["output"]["inlinedResponses"]["inlinedResponses"]
            .as_array()
            .unwrap();
        let keys: Vec<&str> = responses
            .iter()
            .map(|r| r["metadata"]["key"].as_str().unwrap())
            .collect();
        assert_eq!(keys, ["k0", "k1", "k2"]);
        assert!(
            responses
                .iter()
                .all(|r| r["response"]["candidates"][0]["finishReason"] == "STOP")
        );
    }

    #[tokio::test]
    async fn malformed_files_fail_the_batch() {
        let harness = Harness::start(Duration::from_secs(3600)).await;
        for content in [
            format!("{}\n{}\n", file_line("a", "x"), file_line("a", "y")),
            format!("{}\n", json!({"request": request("no key")})),
            "not json\n".to_string(),
        ] {
            let file = harness.upload(&content).await;
            let operation = harness.create(json!({"fileName": file})).await;
            let name = operation["name"].as_str().unwrap();
            harness.force_end(name.trim_start_matches("batches/"));
            let operation = harness.get(name).await;
            assert_eq!(operation["metadata"]["state"], FAILED, "{content}");
            assert_eq!(operation["done"], true);
            assert_eq!(operation["error"]["code"], 3);
            assert!(operation.get("response").is_none());
        }
    }

    #[tokio::test]
    async fn create_rejects_bad_calls() {
        let harness = &Harness::start(Duration::from_secs(3600)).await;
        let create = |path: &'static str, body: Value| async move {
            harness
                .call(reqwest::Method::POST, path, Some(body))
                .await
                .0
        };
        let valid = "/v1beta/models/gemini-2.5-flash:batchGenerateContent";
        let inline = json!({"requests": {"requests": [{"request": request("x")}]}});
        assert_eq!(
            create(
                "/v1beta/models/palm-2:batchGenerateContent",
                json!({"batch": {"displayName": "x", "inputConfig": inline}})
            )
            .await,
            404
        );
        assert_eq!(
            create(valid, json!({"batch": {"inputConfig": inline}})).await,
            400
        );
        assert_eq!(
            create(
                valid,
                json!({"batch": {"displayName": "x", "inputConfig": {}}})
            )
            .await,
            400
        );
        assert_eq!(
            create(
                valid,
                json!({"batch": {"displayName": "x", "inputConfig": {"fileName": "files/nope"}}})
            )
            .await,
            403
        );
        let huge = "x".repeat(INLINE_LIMIT_BYTES);
        let too_big = json!({"batch": {"displayName": "x", "inputConfig": {"requests": {"requests": [{"request": request(&huge)}]}}}});
        assert_eq!(create(valid, too_big).await, 400);
    }

    #[tokio::test]
    async fn cancel_list_and_delete() {
        let harness = Harness::start(Duration::from_secs(3600)).await;
        let inline = json!({"requests": {"requests": [{"request": request("x")}]}});
        let mut names = Vec::new();
        for _ in 0..3 {
            names.push(
                harness.create(inline.clone()).await["name"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
        }
        let cancel = format!("/v1beta/{}:cancel", names[0]);
        assert_eq!(
            harness.call(reqwest::Method::POST, &cancel, None).await,
            (200, json!({}))
        );
        let cancelled = harness.get(&names[0]).await;
        assert_eq!(cancelled["metadata"]["state"], CANCELLED);
        assert_eq!(
            cancelled["metadata"]["batchStats"],
            json!({"requestCount": "1", "pendingRequestCount": "1"})
        );
        assert_eq!(
            harness.call(reqwest::Method::POST, &cancel, None).await.0,
            400
        );

        let mut listed = Vec::new();
        let mut token = String::new();
        loop {
            let (status, page) = harness
                .call(
                    reqwest::Method::GET,
                    &format!("/v1beta/batches?pageSize=2&pageToken={token}"),
                    None,
                )
                .await;
            assert_eq!(status, 200);
            listed.extend(
                page["operations"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|op| op["name"].as_str().unwrap().to_string()),
            );
            match page["nextPageToken"].as_str() {
                Some(next) => token = next.to_string(),
                None => break,
            }
        }
        let mut newest_first = names.clone();
        newest_first.reverse();
        assert_eq!(listed, newest_first);

        let delete = format!("/v1beta/{}", names[1]);
        assert_eq!(
            harness.call(reqwest::Method::DELETE, &delete, None).await,
            (200, json!({}))
        );
        assert_eq!(
            harness.call(reqwest::Method::GET, &delete, None).await.0,
            404
        );
    }

    #[tokio::test]
    async fn expired_batches_keep_partial_results_and_downloads_can_drop() {
        let harness = Harness::start(Duration::from_secs(3600)).await;
        harness.emulator.set_faults(FaultPlan {
            batch_fate: BatchFate::Expire,
            partial: 0.5,
            ..FaultPlan::default()
        });
        let lines: Vec<String> = (0..6).map(|i| file_line(&format!("k{i}"), "x")).collect();
        let file = harness.upload(&lines.join("\n")).await;
        let operation = harness.create(json!({"fileName": file})).await;
        let name = operation["name"].as_str().unwrap();
        harness.force_end(name);
        let operation = harness.get(name).await;
        assert_eq!(operation["metadata"]["state"], EXPIRED);
        assert_eq!(
            operation["metadata"]["batchStats"],
            json!({"requestCount": "6", "successfulRequestCount": "3", "pendingRequestCount": "3"})
        );
        assert_eq!(harness.results(&operation).await.len(), 3);

        harness.emulator.set_faults(FaultPlan {
            drop_results_after_bytes: Some(50),
            ..FaultPlan::default()
        });
        let file = operation["response"]["responsesFile"].as_str().unwrap();
        let cut = harness
            .client
            .get(harness.url(&format!("/v1beta/{file}:download?alt=media")))
            .header("x-goog-api-key", "test-key")
            .send()
            .await
            .unwrap();
        assert!(cut.bytes().await.is_err(), "the body must end early");
    }
}
