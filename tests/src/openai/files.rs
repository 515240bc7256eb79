//! OpenAI Files API: uploads, file objects and file content (input, output and error files).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Bytes;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, Path, Query, State};
use axum::response::Response;
use serde_json::{Value, json};

use crate::common::{download_response, lock, new_id, page_limit, unix_now};

use super::batches::DAY_SECONDS;
use super::{ApiError, ApiResult, OpenAi};

const FILE_RETENTION_SECONDS: i64 = 30 * DAY_SECONDS;
/// `GET /v1/files`: `limit` from 1 to 10,000, all of them by default.
const MAX_LIST_LIMIT: usize = 10_000;
/// Creation order of files; `created_at` (whole seconds) ties within a second.
static NEXT_SEQUENCE: AtomicU64 = AtomicU64::new(0);

pub(super) struct StoredFile {
    pub(super) id: String,
    pub(super) filename: String,
    pub(super) purpose: String,
    pub(super) created_at: i64,
    /// Orders files created in the same second.
    sequence: u64,
    pub(super) content: Bytes,
}

impl StoredFile {
    pub(super) fn new(filename: String, purpose: &str, content: Bytes) -> Self {
        Self {
            id: new_id("file-"),
            filename,
            purpose: purpose.to_string(),
            created_at: unix_now(),
            sequence: NEXT_SEQUENCE.fetch_add(1, Ordering::Relaxed),
            content,
        }
    }

    pub(super) fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "object": "file",
            "bytes": self.content.len(),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": self.created_at + FILE_RETENTION_SECONDS,
            "status_details": null,
        })
    }
}

pub(super) async fn upload_file(
    State(state): State<Arc<OpenAi>>,
    multipart: Result<Multipart, MultipartRejection>,
) -> ApiResult<axum::Json<Value>> {
    let mut multipart = multipart.map_err(|rejection| ApiError {
        status: rejection.status(),
        ..ApiError::invalid(rejection.body_text(), None)
    })?;
    let mut purpose = None;
    let mut file = None;
    while let Some(field) = multipart.next_field().await.map_err(multipart_error)? {
        match field.name() {
            Some("purpose") => purpose = Some(field.text().await.map_err(multipart_error)?),
            Some("file") => {
                let filename = field.file_name().unwrap_or_default().to_string();
                file = Some((filename, field.bytes().await.map_err(multipart_error)?));
            }
            _ => {}
        }
    }
    let purpose = purpose.ok_or_else(|| {
        ApiError::invalid("Missing required parameter: 'purpose'.", Some("purpose"))
    })?;
    let (filename, content) =
        file.ok_or_else(|| ApiError::invalid("Missing required parameter: 'file'.", Some("file")))?;
    if purpose != "batch" {
        return Err(ApiError::invalid(
            format!("Invalid value for 'purpose': '{purpose}'. The emulator only accepts 'batch'."),
            Some("purpose"),
        ));
    }
    if !filename.ends_with(".jsonl") {
        return Err(ApiError::invalid(
            "Invalid file format for Batch API. Must be .jsonl",
            Some("file"),
        ));
    }
    let stored = StoredFile::new(filename, "batch", content);
    let answer = stored.to_json();
    lock(&state.store).files.insert(stored.id.clone(), stored);
    Ok(axum::Json(answer))
}

fn multipart_error(error: axum::extract::multipart::MultipartError) -> ApiError {
    ApiError {
        status: error.status(),
        ..ApiError::invalid(error.body_text(), Some("file"))
    }
}

/// `GET /v1/files?purpose=&limit=&after=&order=`: a cursor page of file objects,
/// newest first unless `order=asc`; `after` is the id the previous page ended with.
pub(super) async fn list_files(
    State(state): State<Arc<OpenAi>>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<axum::Json<Value>> {
    let limit = page_limit(&query, MAX_LIST_LIMIT, MAX_LIST_LIMIT).map_err(|text| {
        ApiError::invalid(
            format!("Invalid 'limit': {text}. Expected an integer between 1 and {MAX_LIST_LIMIT}."),
            Some("limit"),
        )
    })?;
    let ascending = match query.get("order").map(String::as_str) {
        None | Some("desc") => false,
        Some("asc") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                format!("Invalid value: '{other}'. Supported values are: 'asc' and 'desc'."),
                Some("order"),
            ));
        }
    };
    let store = lock(&state.store);
    let mut files: Vec<&StoredFile> = store
        .files
        .values()
        .filter(|file| query.get("purpose").is_none_or(|p| &file.purpose == p))
        .collect();
    files.sort_by_key(|file| (file.created_at, file.sequence));
    if !ascending {
        files.reverse();
    }
    let start = match query.get("after") {
        None => 0,
        Some(after) => {
            files
                .iter()
                .position(|file| &file.id == after)
                .ok_or_else(|| ApiError::not_found("File", after))?
                + 1
        }
    };
    let data: Vec<Value> = files
        .iter()
        .skip(start)
        .take(limit)
        .map(|f| f.to_json())
        .collect();
    Ok(axum::Json(json!({
        "object": "list",
        "data": data,
        "first_id": data.first().map(|f| f["id"].clone()),
        "last_id": data.last().map(|f| f["id"].clone()),
        "has_more": files.len() > start + limit,
    })))
}

pub(super) async fn get_file(
    State(state): State<Arc<OpenAi>>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    let store = lock(&state.store);
    let file = store
        .files
        .get(&id)
        .ok_or_else(|| ApiError::not_found("File", &id))?;
    Ok(axum::Json(file.to_json()))
}

pub(super) async fn delete_file(
    State(state): State<Arc<OpenAi>>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    lock(&state.store)
        .files
        .remove(&id)
        .ok_or_else(|| ApiError::not_found("File", &id))?;
    Ok(axum::Json(
        json!({"id": id, "object": "file", "deleted": true}),
    ))
}

/// Raw file bytes; results downloads (output and error files) honour the planned drop.
pub(super) async fn file_content(
    State(state): State<Arc<OpenAi>>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let (content, is_result) = {
        let store = lock(&state.store);
        let file = store
            .files
            .get(&id)
            .ok_or_else(|| ApiError::not_found("File", &id))?;
        (file.content.clone(), file.purpose == "batch_output")
    };
    let drop_after = if is_result {
        state.shared.drop_results_after()
    } else {
        None
    };
    Ok(download_response(
        content,
        "application/octet-stream",
        drop_after,
    ))
}
