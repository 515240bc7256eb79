//! The part of the Cloud Storage JSON API that Vertex AI batch jobs need: simple media
//! uploads, downloads (`alt=media`), object metadata, listing by prefix, and deletes.
//! Objects live in memory as `Bytes` and are served without copying.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use crate::common::{Shared, download_response, lock};
use crate::google::{GoogleError, timestamp};
use crate::oauth::{self, Tokens};

const DEFAULT_MAX_RESULTS: usize = 1000;

/// One stored object.
#[derive(Debug, Clone)]
pub struct StoredObject {
    pub data: Bytes,
    pub content_type: String,
    pub generation: u64,
    pub created: OffsetDateTime,
    /// Written by a batch job: its downloads are results, subject to the drop fault.
    pub batch_output: bool,
}

/// Every bucket's objects, keyed by (bucket, object name) so listings come out sorted.
#[derive(Debug, Default)]
pub struct Storage {
    objects: Mutex<BTreeMap<(String, String), StoredObject>>,
    generations: AtomicU64,
}

impl Storage {
    pub fn put(
        &self,
        bucket: &str,
        name: &str,
        data: Bytes,
        content_type: &str,
        batch_output: bool,
    ) -> StoredObject {
        let object = StoredObject {
            data,
            content_type: content_type.to_string(),
            generation: 1_700_000_000_000_000 + self.generations.fetch_add(1, Ordering::Relaxed),
            created: OffsetDateTime::now_utc(),
            batch_output,
        };
        lock(&self.objects).insert((bucket.to_string(), name.to_string()), object.clone());
        object
    }

    pub fn get(&self, bucket: &str, name: &str) -> Option<StoredObject> {
        lock(&self.objects)
            .get(&(bucket.to_string(), name.to_string()))
            .cloned()
    }

    /// A bucket exists once anything was uploaded to it.
    pub fn bucket_exists(&self, bucket: &str) -> bool {
        lock(&self.objects)
            .range((bucket.to_string(), String::new())..)
            .next()
            .is_some_and(|((found, _), _)| found == bucket)
    }

    fn remove(&self, bucket: &str, name: &str) -> bool {
        lock(&self.objects)
            .remove(&(bucket.to_string(), name.to_string()))
            .is_some()
    }

    /// Objects of `bucket` whose names start with `prefix` and sort after `after`.
    fn names_after(
        &self,
        bucket: &str,
        prefix: &str,
        after: Option<&str>,
    ) -> Vec<(String, StoredObject)> {
        let start = (bucket.to_string(), after.unwrap_or(prefix).to_string());
        lock(&self.objects)
            .range(start..)
            .skip_while(|((_, name), _)| Some(name.as_str()) == after)
            .take_while(|((found, name), _)| found == bucket && name.starts_with(prefix))
            .map(|((_, name), object)| (name.clone(), object.clone()))
            .collect()
    }
}

/// Splits `gs://bucket/path/to/object` into the bucket and the object path (which may
/// be empty for a prefix).
pub fn parse_gs_uri(uri: &str) -> Option<(&str, &str)> {
    let rest = uri.strip_prefix("gs://")?;
    let (bucket, object) = rest.split_once('/').unwrap_or((rest, ""));
    is_bucket_name(bucket).then_some((bucket, object))
}

/// Bucket naming rules: 3–63 characters of lowercase letters, digits, `-`, `_` and
/// `.`, starting and ending with a letter or digit.
fn is_bucket_name(bucket: &str) -> bool {
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    (3..=63).contains(&bucket.len())
        && edge_ok(bucket.chars().next())
        && edge_ok(bucket.chars().last())
        && bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
}

struct Gcs {
    storage: Arc<Storage>,
    shared: Arc<Shared>,
}

/// Cloud Storage routes, behind the bearer-token check.
pub fn router(storage: Arc<Storage>, tokens: Arc<Tokens>, shared: Arc<Shared>) -> Router {
    let state = Arc::new(Gcs { storage, shared });
    Router::new()
        .route(
            "/upload/storage/v1/b/{bucket}/o",
            post(upload).layer(DefaultBodyLimit::disable()),
        )
        .route("/storage/v1/b/{bucket}/o", get(list))
        .route(
            "/storage/v1/b/{bucket}/o/{*object}",
            get(read).delete(delete),
        )
        .route("/download/storage/v1/b/{bucket}/o/{*object}", get(read))
        .route_layer(middleware::from_fn_with_state(
            tokens,
            oauth::require_bearer,
        ))
        .with_state(state)
}

impl Gcs {
    fn resource(&self, bucket: &str, name: &str, object: &StoredObject) -> Value {
        let encoded = utf8_percent_encode(name, NON_ALPHANUMERIC).to_string();
        let base = &self.shared.base_url;
        let created = timestamp(object.created);
        json!({
            "kind": "storage#object",
            "id": format!("{bucket}/{name}/{}", object.generation),
            "selfLink": format!("{base}/storage/v1/b/{bucket}/o/{encoded}"),
            "mediaLink": format!("{base}/download/storage/v1/b/{bucket}/o/{encoded}?generation={}&alt=media", object.generation),
            "name": name,
            "bucket": bucket,
            "generation": object.generation.to_string(),
            "metageneration": "1",
            "contentType": object.content_type,
            "storageClass": "STANDARD",
            "size": object.data.len().to_string(),
            "etag": URL_SAFE_NO_PAD.encode(object.generation.to_le_bytes()),
            "timeCreated": created,
            "updated": created,
            "timeStorageClassUpdated": created,
        })
    }
}

fn no_such_object(bucket: &str, name: &str) -> GoogleError {
    GoogleError::not_found(format!("No such object: {bucket}/{name}"))
}

async fn upload(
    State(gcs): State<Arc<Gcs>>,
    Path(bucket): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, GoogleError> {
    match query.get("uploadType").map(String::as_str) {
        Some("media") => {}
        Some(other) => {
            return Err(GoogleError::invalid(format!(
                "uploadType={other} is not served by the emulator; use uploadType=media."
            )));
        }
        None => return Err(GoogleError::invalid("Required parameter: uploadType")),
    }
    if !is_bucket_name(&bucket) {
        return Err(GoogleError::invalid(format!(
            "Invalid bucket name: '{bucket}'"
        )));
    }
    let name = query
        .get("name")
        .filter(|name| !name.is_empty())
        .ok_or_else(|| GoogleError::invalid("Required parameter: name"))?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("application/octet-stream");
    let object = gcs.storage.put(&bucket, name, body, content_type, false);
    Ok(Json(gcs.resource(&bucket, name, &object)))
}

/// Object metadata, or with `alt=media` its bytes.
async fn read(
    State(gcs): State<Arc<Gcs>>,
    Path((bucket, name)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, GoogleError> {
    let object = gcs
        .storage
        .get(&bucket, &name)
        .ok_or_else(|| no_such_object(&bucket, &name))?;
    if query.get("alt").map(String::as_str) != Some("media") {
        return Ok(Json(gcs.resource(&bucket, &name, &object)).into_response());
    }
    let drop_after = if object.batch_output {
        gcs.shared.drop_results_after()
    } else {
        None
    };
    Ok(download_response(
        object.data,
        &object.content_type,
        drop_after,
    ))
}

async fn delete(
    State(gcs): State<Arc<Gcs>>,
    Path((bucket, name)): Path<(String, String)>,
) -> Result<StatusCode, GoogleError> {
    if gcs.storage.remove(&bucket, &name) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(no_such_object(&bucket, &name))
    }
}

/// `GET …/o?prefix=&delimiter=&maxResults=&pageToken=`. As in the real API, `items`
/// and `prefixes` are left out when empty.
async fn list(
    State(gcs): State<Arc<Gcs>>,
    Path(bucket): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, GoogleError> {
    let prefix = query.get("prefix").map(String::as_str).unwrap_or("");
    let delimiter = query
        .get("delimiter")
        .map(String::as_str)
        .filter(|d| !d.is_empty());
    let max_results = match query.get("maxResults").map(|n| n.parse::<usize>()) {
        None => DEFAULT_MAX_RESULTS,
        Some(Ok(n)) if n > 0 => n.min(DEFAULT_MAX_RESULTS),
        Some(_) => return Err(GoogleError::invalid("Invalid value for maxResults")),
    };
    let after = match query.get("pageToken").filter(|t| !t.is_empty()) {
        None => None,
        Some(token) => Some(
            URL_SAFE_NO_PAD
                .decode(token)
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .ok_or_else(|| GoogleError::invalid("Invalid page token"))?,
        ),
    };
    let mut items = Vec::new();
    let mut prefixes = BTreeSet::new();
    let mut last_name = None;
    let mut more = false;
    for (name, object) in gcs.storage.names_after(&bucket, prefix, after.as_deref()) {
        if items.len() + prefixes.len() >= max_results {
            more = true;
            break;
        }
        let folded = delimiter.and_then(|d| {
            name[prefix.len()..]
                .find(d)
                .map(|at| name[..prefix.len() + at + d.len()].to_string())
        });
        match folded {
            Some(folder) => {
                prefixes.insert(folder);
            }
            None => items.push(gcs.resource(&bucket, &name, &object)),
        }
        last_name = Some(name);
    }
    let mut answer = Map::new();
    answer.insert("kind".into(), json!("storage#objects"));
    if !items.is_empty() {
        answer.insert("items".into(), Value::Array(items));
    }
    if !prefixes.is_empty() {
        answer.insert("prefixes".into(), json!(prefixes));
    }
    if let Some(last) = last_name.filter(|_| more) {
        answer.insert("nextPageToken".into(), json!(URL_SAFE_NO_PAD.encode(last)));
    }
    Ok(Json(Value::Object(answer)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Config, Emulator};

    async fn emulator() -> Emulator {
        Emulator::start(Config::default()).await.unwrap()
    }

    fn client() -> reqwest::Client {
        crate::harness::http_client()
    }

    async fn put(emulator: &Emulator, bucket: &str, name: &str, body: &'static str) -> Value {
        let response = client()
            .post(format!(
                "{}/upload/storage/v1/b/{bucket}/o",
                emulator.base_url()
            ))
            .query(&[("uploadType", "media"), ("name", name)])
            .bearer_auth("test-key")
            .header("content-type", "application/jsonl")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    #[test]
    fn gs_uris_split_into_bucket_and_path() {
        assert_eq!(
            parse_gs_uri("gs://my-bucket/a/b.jsonl"),
            Some(("my-bucket", "a/b.jsonl"))
        );
        assert_eq!(parse_gs_uri("gs://my-bucket"), Some(("my-bucket", "")));
        assert_eq!(parse_gs_uri("gs://My_Bucket/x"), None);
        assert_eq!(parse_gs_uri("s3://bucket/x"), None);
    }

    #[tokio::test]
    async fn objects_round_trip_with_encoded_names() {
        let emulator = emulator().await;
        let resource = put(&emulator, "batch-bucket", "in/part 1.jsonl", "{\"a\":1}\n").await;
        assert_eq!(resource["size"], "8");
        assert_eq!(resource["name"], "in/part 1.jsonl");
        assert_eq!(resource["contentType"], "application/jsonl");

        let url = format!(
            "{}/storage/v1/b/batch-bucket/o/in%2Fpart%201.jsonl",
            emulator.base_url()
        );
        let media = client()
            .get(&url)
            .query(&[("alt", "media")])
            .bearer_auth("test-key")
            .send()
            .await
            .unwrap();
        assert_eq!(media.status(), 200);
        assert_eq!(media.text().await.unwrap(), "{\"a\":1}\n");

        let metadata: Value = client()
            .get(&url)
            .bearer_auth("test-key")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(metadata["generation"], resource["generation"]);

        let missing = client()
            .get(format!(
                "{}/storage/v1/b/batch-bucket/o/nope",
                emulator.base_url()
            ))
            .bearer_auth("test-key")
            .send()
            .await
            .unwrap();
        assert_eq!(missing.status(), 404);
        let body: Value = missing.json().await.unwrap();
        assert_eq!(body["error"]["status"], "NOT_FOUND");
    }

    #[tokio::test]
    async fn listing_filters_by_prefix_folds_by_delimiter_and_pages() {
        let emulator = emulator().await;
        for name in ["out/a/1", "out/a/2", "out/b", "out/c", "other"] {
            put(&emulator, "bkt", name, "x").await;
        }
        let list = |query: Vec<(&'static str, String)>| {
            let url = format!("{}/storage/v1/b/bkt/o", emulator.base_url());
            async move {
                client()
                    .get(url)
                    .query(&query)
                    .bearer_auth("test-key")
                    .send()
                    .await
                    .unwrap()
                    .json::<Value>()
                    .await
                    .unwrap()
            }
        };
        let names = |page: &Value| -> Vec<String> {
            page["items"]
                .as_array()
                .map(|items| {
                    items
                        .iter()
                        .map(|i| i["name"].as_str().unwrap().to_string())
                        .collect()
                })
                .unwrap_or_default()
        };

        let folded = list(vec![("prefix", "out/".into()), ("delimiter", "/".into())]).await;
        assert_eq!(names(&folded), ["out/b", "out/c"]);
        assert_eq!(folded["prefixes"], json!(["out/a/"]));

        let mut seen = Vec::new();
        let mut token = None;
        loop {
            let mut query = vec![
                ("prefix", "out/".to_string()),
                ("maxResults", "3".to_string()),
            ];
            if let Some(token) = token.take() {
                query.push(("pageToken", token));
            }
            let page = list(query).await;
            seen.extend(names(&page));
            match page["nextPageToken"].as_str() {
                Some(next) => token = Some(next.to_string()),
                None => break,
            }
        }
        assert_eq!(seen, ["out/a/1", "out/a/2", "out/b", "out/c"]);

        let empty = list(vec![("prefix", "nothing/".into())]).await;
        assert_eq!(empty, json!({"kind": "storage#objects"}));
    }

    #[tokio::test]
    async fn calls_without_a_valid_token_are_refused() {
        let emulator = emulator().await;
        let url = format!("{}/storage/v1/b/bkt/o", emulator.base_url());
        for token in [None, Some("ya29.forged")] {
            let mut request = client().get(&url);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 401);
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"]["status"], "UNAUTHENTICATED");
        }
    }

    async fn token_request(emulator: &Emulator, form: &[(&str, &str)]) -> reqwest::Response {
        let body = form
            .iter()
            .map(|(key, value)| format!("{key}={}", utf8_percent_encode(value, NON_ALPHANUMERIC)))
            .collect::<Vec<_>>()
            .join("&");
        client()
            .post(format!("{}/token", emulator.base_url()))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn tokens_from_the_token_endpoint_open_storage() {
        let emulator = emulator().await;
        let now = crate::common::unix_now();
        let jwt = oauth::tests::assertion(&oauth::tests::claims(now));
        let granted: Value = token_request(
            &emulator,
            &[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", jwt.as_str()),
            ],
        )
        .await
        .json()
        .await
        .unwrap();
        assert_eq!(granted["token_type"], "Bearer");
        assert_eq!(granted["expires_in"], 3599);
        let token = granted["access_token"].as_str().unwrap();
        let listed = client()
            .get(format!("{}/storage/v1/b/bkt/o", emulator.base_url()))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(listed.status(), 200);

        let refused = token_request(&emulator, &[("grant_type", "client_credentials")]).await;
        assert_eq!(refused.status(), 400);
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body["error"], "unsupported_grant_type");
    }
}
