//! Gemini Files API: resumable uploads, file metadata and downloads.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::common::{download_response, lock};
use crate::google::{Code, GoogleError, field, json_body, page, timestamp};

use super::{Gemini, header};

const UPLOAD_CHUNK_GRANULARITY: &str = "8388608";
const FILE_LIFETIME: Duration = Duration::from_secs(48 * 3600);
const MAX_FILE_ID: usize = 40;

#[derive(Clone)]
pub(super) struct StoredFile {
    pub(super) id: String,
    pub(super) display_name: Option<String>,
    pub(super) mime_type: String,
    pub(super) data: Bytes,
    pub(super) create_time: OffsetDateTime,
    /// Written by a batch (results), as opposed to uploaded.
    pub(super) generated: bool,
}

/// A resumable upload between its start and its finalize.
pub(super) struct Upload {
    pub(super) file_id: String,
    pub(super) display_name: Option<String>,
    pub(super) mime_type: String,
    declared_length: usize,
    received: Vec<u8>,
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

    pub(super) fn store(&self, file: StoredFile) {
        lock(&self.files).insert(file.id.clone(), file);
    }

    pub(super) fn file(&self, id: &str) -> Result<StoredFile, GoogleError> {
        lock(&self.files).get(id).cloned().ok_or_else(|| {
            GoogleError::new(
                Code::PermissionDenied,
                format!("You do not have permission to access the File {id} or it may not exist."),
            )
        })
    }
}

/// `POST /upload/v1beta/files`: starts a resumable upload, or (with `upload_id`) takes
/// its bytes.
pub(super) async fn upload(
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

pub(super) fn start_upload(
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
pub(super) async fn get_file(
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
pub(super) async fn download_only(
    State(gemini): State<Arc<Gemini>>,
    Path(file): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, GoogleError> {
    match file.split_once(':') {
        Some((id, "download")) => download(&gemini, id, &query),
        _ => Err(GoogleError::not_found(format!("Method not found: {file}"))),
    }
}

pub(super) fn download(
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

/// Files per page of `GET /v1beta/files` by default, and at most.
const DEFAULT_FILES_PAGE: usize = 10;
const MAX_FILES_PAGE: usize = 100;

/// `GET /v1beta/files?pageSize=&pageToken=`: `{"files": […], "nextPageToken"}`, newest
/// first (both fields left out when empty, as Google does).
pub(super) async fn list_files(
    State(gemini): State<Arc<Gemini>>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, GoogleError> {
    let mut files: Vec<StoredFile> = lock(&gemini.files).values().cloned().collect();
    // Creation time in nanoseconds orders the files and serves as the page token.
    let sequence = |file: &StoredFile| file.create_time.unix_timestamp_nanos() as u64;
    files.sort_by_key(|file| std::cmp::Reverse(sequence(file)));
    let newest_first = files
        .iter()
        .map(|file| (sequence(file), gemini.file_json(file)))
        .collect();
    let (files, next) = page(newest_first, &query, DEFAULT_FILES_PAGE, MAX_FILES_PAGE)?;
    let mut answer = json!({});
    if !files.is_empty() {
        answer["files"] = Value::Array(files);
    }
    if let Some(next) = next {
        answer["nextPageToken"] = json!(next);
    }
    Ok(Json(answer))
}

pub(super) async fn delete_file(
    State(gemini): State<Arc<Gemini>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, GoogleError> {
    gemini.file(&id)?;
    lock(&gemini.files).remove(&id);
    Ok(Json(json!({})))
}
