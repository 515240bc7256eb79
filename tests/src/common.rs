//! What every provider module of the emulator shares: the clock that moves batches
//! through their lifecycles, the fault plan, and deterministic answers.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::cache::{CacheConfig, CacheState};
use crate::quota::QuotaState;

/// Emulator settings, fixed at start.
#[derive(Debug, Clone)]
pub struct Config {
    /// How long a batch stays in each intermediate lifecycle stage.
    pub step: Duration,
    /// API key / token every provider expects (`Authorization`, `x-api-key`, `x-goog-api-key`).
    pub api_key: String,
    /// Seeds the order of results lines (mixed with each batch id) and the prompt
    /// caches' misses, so that a failure seen with a shuffled results file can be replayed.
    pub seed: u64,
    /// The prompt caches' knobs (its `seed` is replaced by `seed` above).
    pub cache: CacheConfig,
    /// The S3 endpoint (a moto server) Bedrock batch jobs read their input from and
    /// write their output to; settable later with `Emulator::set_s3_endpoint`.
    pub s3_endpoint: Option<String>,
    /// Amazon Bedrock batch inference: credentials and record limits.
    pub bedrock: BedrockConfig,
}

/// Amazon Bedrock batch inference settings, changeable on a running emulator
/// (`Emulator::set_bedrock`, `POST /_emulator/bedrock` with some of the fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BedrockConfig {
    /// The access key id every request must be SigV4-signed with.
    pub access_key_id: String,
    /// Its secret access key.
    pub secret_access_key: String,
    /// The fewest records a job may hold (the Bedrock quota's default is 100); a job
    /// with fewer fails validation.
    pub min_records: usize,
    /// The most records a job may hold (Bedrock's default quota: 50,000).
    pub max_records: usize,
}

impl Default for BedrockConfig {
    fn default() -> Self {
        Self {
            access_key_id: "test".to_string(),
            secret_access_key: "test".to_string(),
            min_records: 100,
            max_records: 50_000,
        }
    }
}

/// The results-order seed when `EMULATOR_SEED` is not set.
pub const DEFAULT_SEED: u64 = 0x5EED_BA7C_41E5;

impl Config {
    /// `EMULATOR_SEED` (a decimal number) if set, else [`DEFAULT_SEED`].
    ///
    /// # Panics
    /// If `EMULATOR_SEED` is set but not a number: a replay must not silently use another seed.
    pub fn seed_from_env() -> u64 {
        match std::env::var("EMULATOR_SEED") {
            Ok(value) => value
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("EMULATOR_SEED={value:?} is not a decimal u64")),
            Err(_) => DEFAULT_SEED,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            step: Duration::from_millis(300),
            api_key: "test-key".to_string(),
            seed: Self::seed_from_env(),
            cache: CacheConfig::default(),
            s3_endpoint: None,
            bedrock: BedrockConfig::default(),
        }
    }
}

/// How a batch ends, chosen when it is created from the pending fault plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchFate {
    /// Runs every request.
    #[default]
    Complete,
    /// Ends expired after running only `partial` of its requests (the rest never ran).
    Expire,
    /// Fails validation before running anything (OpenAI `failed`, Google `*_FAILED`).
    FailValidation,
    /// Every request fails; for OpenAI the batch completes with no output file.
    AllFail,
}

/// A fault injected at the HTTP layer: the next `times` matching calls get `status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HttpFault {
    #[serde(default)]
    pub method: Option<String>,
    /// Matches request paths starting with this.
    pub path_prefix: String,
    pub status: u16,
    #[serde(default)]
    pub retry_after_s: Option<u64>,
    #[serde(default = "one")]
    pub times: u32,
    /// Sleep this long before answering (a slow response instead of a status fault when `status` is 0).
    #[serde(default)]
    pub delay_ms: u64,
}

fn one() -> u32 {
    1
}

/// Faults switched on through `POST /_emulator/faults`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FaultPlan {
    /// Fate of the batches created from now on (until changed).
    #[serde(default)]
    pub batch_fate: BatchFate,
    /// With `Expire`: fraction of requests that ran before expiry (0.0–1.0).
    #[serde(default = "half")]
    pub partial: f64,
    #[serde(default)]
    pub http: Vec<HttpFault>,
    /// Results downloads are cut off (connection dropped) after this many bytes.
    #[serde(default)]
    pub drop_results_after_bytes: Option<usize>,
}

fn half() -> f64 {
    0.5
}

/// A per-request fault, asked for by a marker `[[fault:KIND]]` in the request's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFault {
    /// The provider's own error line (context length exceeded / invalid request).
    ProviderError,
    /// A rate-limit error line.
    RateLimit,
    /// A server error line.
    ServerError,
    /// An answer that is not JSON.
    NonJson,
    /// JSON that breaks the schema.
    SchemaBreak,
    /// The model refuses.
    Refusal,
    /// Output cut off by the token limit (truncated JSON, finish reason length).
    Truncate,
    /// In one row of a several-rows request: that row's key is left out of the answer.
    DropRow,
    /// In one row of a several-rows request: an extra key `N+1` is added to the answer.
    InventRow,
    /// In one row of a several-rows request: that row's key appears twice in the answer
    /// text, the second time with another valid answer.
    RepeatRow,
}

impl RequestFault {
    /// Every fault, under the name its marker uses.
    pub const ALL: [(&'static str, RequestFault); 10] = [
        ("provider_error", Self::ProviderError),
        ("rate_limit", Self::RateLimit),
        ("server_error", Self::ServerError),
        ("non_json", Self::NonJson),
        ("schema_break", Self::SchemaBreak),
        ("refusal", Self::Refusal),
        ("truncate", Self::Truncate),
        ("drop_row", Self::DropRow),
        ("invent_row", Self::InventRow),
        ("repeat_row", Self::RepeatRow),
    ];

    /// Whether the fault applies to one row of a several-rows request (not the whole).
    pub fn is_row_fault(self) -> bool {
        matches!(self, Self::DropRow | Self::InventRow | Self::RepeatRow)
    }

    /// Every known fault marker in `text`, in order.
    pub fn find_all(text: &str) -> Vec<Self> {
        let mut found = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("[[fault:") {
            rest = &rest[start..];
            found.extend(Self::find_in(rest));
            rest = &rest["[[fault:".len()..];
        }
        found
    }

    /// Finds the first fault marker in a request's serialized body.
    pub fn find_in(text: &str) -> Option<Self> {
        let start = text.find("[[fault:")? + "[[fault:".len();
        let end = text[start..].find("]]")? + start;
        let name = &text[start..end];
        Self::ALL
            .iter()
            .find(|(marker, _)| *marker == name)
            .map(|&(_, fault)| fault)
    }
}

/// State shared by all provider modules.
#[derive(Debug)]
pub struct Shared {
    pub config: Config,
    /// `http://127.0.0.1:PORT`, known once the listener is bound.
    pub base_url: String,
    pub faults: Mutex<FaultPlan>,
    /// Batches forced to their end by `POST /_emulator/advance`.
    pub forced: Mutex<HashMap<String, ()>>,
    /// When true every batch counts as past all its stages.
    pub finish_all: Mutex<bool>,
    pub started: Instant,
    /// The prompt caches of every provider (organisation-wide, not per batch).
    pub cache: Mutex<CacheState>,
    /// Batch quotas (`/_emulator/quotas`) and what they saw.
    pub quotas: QuotaState,
    /// The S3 endpoint in force (starts as `Config::s3_endpoint`).
    pub s3_endpoint: Mutex<Option<String>>,
    /// The Bedrock settings in force (start as `Config::bedrock`).
    pub bedrock: Mutex<BedrockConfig>,
}

impl Shared {
    pub fn new(config: Config, base_url: String) -> Self {
        let cache = CacheState::new(CacheConfig {
            seed: config.seed,
            ..config.cache.clone()
        });
        Self {
            cache: Mutex::new(cache),
            s3_endpoint: Mutex::new(config.s3_endpoint.clone()),
            bedrock: Mutex::new(config.bedrock.clone()),
            config,
            base_url,
            faults: Mutex::new(FaultPlan::default()),
            forced: Mutex::new(HashMap::new()),
            finish_all: Mutex::new(false),
            started: Instant::now(),
            quotas: QuotaState::default(),
        }
    }

    /// How many lifecycle steps a batch created at `created` has gone through.
    /// Forced batches (control endpoint) are past every stage.
    pub fn steps_since(&self, batch_id: &str, created: Instant) -> u32 {
        if *self.finish_all.lock().unwrap() || self.forced.lock().unwrap().contains_key(batch_id) {
            return u32::MAX;
        }
        let step = self.config.step.as_millis().max(1);
        (created.elapsed().as_millis() / step).min(u32::MAX as u128) as u32
    }

    /// The order to write the `count` results lines of batch `batch_id` in: a shuffle,
    /// as the real APIs promise no order, fixed by the seed and the batch id.
    pub fn results_order(&self, batch_id: &str, count: usize) -> Vec<usize> {
        shuffled_order(self.config.seed, batch_id, count)
    }

    /// Runs the first `count` requests of batch `batch_id` against the prompt caches, in
    /// the batch's results order (so that cache waves follow it), and answers their
    /// results in request order: `run(index, cache)` for each.
    pub fn run_in_results_order<T>(
        &self,
        batch_id: &str,
        count: usize,
        mut run: impl FnMut(usize, &mut CacheState) -> T,
    ) -> Vec<T> {
        let mut cache = lock(&self.cache);
        cache.start_batch();
        let mut out: Vec<Option<T>> = (0..count).map(|_| None).collect();
        for index in self.results_order(batch_id, count) {
            out[index] = Some(run(index, &mut cache));
        }
        out.into_iter()
            .map(|result| result.expect("a permutation runs every request"))
            .collect()
    }

    /// The fate and partial fraction for a batch being created now.
    pub fn fate_for_new_batch(&self) -> (BatchFate, f64) {
        let plan = self.faults.lock().unwrap();
        (plan.batch_fate, plan.partial.clamp(0.0, 1.0))
    }

    pub fn drop_results_after(&self) -> Option<usize> {
        self.faults.lock().unwrap().drop_results_after_bytes
    }
}

/// Unix seconds now.
pub fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// RFC 3339 timestamp now.
pub fn rfc3339_now() -> String {
    rfc3339(time::OffsetDateTime::now_utc())
}

pub fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .expect("formatting a valid time as RFC 3339")
}

/// A short random id with a prefix, e.g. `batch_3f…`.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

/// A permutation of `0..count`, fixed by `seed` and `batch_id` (Fisher-Yates over splitmix64).
pub fn shuffled_order(seed: u64, batch_id: &str, count: usize) -> Vec<usize> {
    let digest = Sha256::digest(batch_id.as_bytes());
    let mut id_bits = [0u8; 8];
    id_bits.copy_from_slice(&digest[..8]);
    let mut state = seed ^ u64::from_le_bytes(id_bits);
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut order: Vec<usize> = (0..count).collect();
    for i in (1..count).rev() {
        // The modulo bias is far below anything a test could notice.
        let j = (next() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

/// Middleware (`from_fn_with_state` with the header name as state): every answer, error
/// answers included, carries a fresh request id `req_<32 hex>` under that header, as
/// OpenAI (`x-request-id`) and Anthropic (`request-id`) answers do.
pub async fn add_request_id(
    State(name): State<HeaderName>,
    request: Request,
    next: Next,
) -> Response {
    let mut response = next.run(request).await;
    let id = HeaderValue::try_from(new_id("req_")).expect("an id of ASCII letters and digits");
    response.headers_mut().insert(name, id);
    response
}

/// A list call's `limit` query parameter: `default` when absent, `Err` with the text
/// given when it is not a whole number from 1 to `max` (each API words that itself).
pub fn page_limit(
    query: &std::collections::HashMap<String, String>,
    default: usize,
    max: usize,
) -> Result<usize, &str> {
    match query.get("limit") {
        None => Ok(default),
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or(text.as_str()),
    }
}

/// Locks a mutex even if a handler panicked while holding it: the emulator's state
/// stays usable for the rest of a test run.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `^[a-zA-Z0-9_-]{1,64}$`: Anthropic custom ids, OpenAI json_schema names.
pub fn is_identifier(text: &str) -> bool {
    (1..=64).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The text of a chat message's `content`: a string, or blocks/parts carrying `text`.
pub fn content_text(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|block| block.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// The text of every message in a `messages` array, one per line.
pub fn messages_text(messages: &[Value]) -> String {
    messages
        .iter()
        .map(|message| content_text(message.get("content").unwrap_or(&Value::Null)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first half of `text`, cut on a character boundary: a truncated answer.
pub fn first_half(text: &str) -> &str {
    let mut end = text.len() / 2;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// How many of `total` requests ran when only `fraction` of them could.
pub fn ran_count(total: usize, fraction: f64) -> usize {
    ((total as f64 * fraction.clamp(0.0, 1.0)).floor() as usize).min(total)
}

const DOWNLOAD_CHUNK: usize = 64 * 1024;
const DROP_FLUSH_PAUSE: Duration = Duration::from_millis(20);

/// Serves `content` from memory in zero-copy slices. With `drop_after`, the stream fails
/// after that many bytes: the client sees a connection cut short of `Content-Length`.
pub fn download_response(
    content: Bytes,
    content_type: &str,
    drop_after: Option<usize>,
) -> Response {
    let full_length = content.len();
    let served = content.slice(..drop_after.map_or(full_length, |n| n.min(full_length)));
    let cut = served.len() < full_length;
    let chunks = (0..served.len()).step_by(DOWNLOAD_CHUNK).map(move |start| {
        let end = (start + DOWNLOAD_CHUNK).min(served.len());
        Ok::<_, std::io::Error>(served.slice(start..end))
    });
    // Pausing before the failure lets the server flush the headers and the served bytes:
    // over a real connection the client then sees the body end early, not a failed send.
    let failure = futures::stream::iter(cut.then_some(())).then(|()| async {
        tokio::time::sleep(DROP_FLUSH_PAUSE).await;
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "emulated connection drop",
        ))
    });
    let body = Body::from_stream(futures::stream::iter(chunks).chain(failure));
    (
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (header::CONTENT_LENGTH, full_length.to_string()),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_follow_the_provider_pattern() {
        assert!(is_identifier("req-1_A"));
        assert!(is_identifier(&"a".repeat(64)));
        assert!(!is_identifier(&"a".repeat(65)));
        assert!(!is_identifier(""));
        assert!(!is_identifier("has space"));
        assert!(!is_identifier("dot.ted"));
    }

    #[test]
    fn first_half_cuts_on_a_character_boundary() {
        assert_eq!(first_half("abcd"), "ab");
        assert_eq!(first_half("éé"), "é");
        assert_eq!(first_half("aé"), "a");
    }

    #[tokio::test]
    async fn downloads_stream_everything_or_fail_after_the_cut() {
        let content = Bytes::from(vec![b'x'; 200_000]);
        let whole = download_response(content.clone(), "application/octet-stream", None);
        assert_eq!(whole.headers()[header::CONTENT_LENGTH], "200000");
        let body = axum::body::to_bytes(whole.into_body(), usize::MAX)
            .await
            .unwrap();
        assert_eq!(body, content);

        let cut = download_response(content, "application/octet-stream", Some(70_000));
        assert_eq!(cut.headers()[header::CONTENT_LENGTH], "200000");
        assert!(
            axum::body::to_bytes(cut.into_body(), usize::MAX)
                .await
                .is_err()
        );
    }

    #[test]
    fn results_orders_are_seeded_permutations_per_batch() {
        let order = shuffled_order(7, "batch_a", 20);
        assert_eq!(order, shuffled_order(7, "batch_a", 20));
        assert_ne!(order, (0..20).collect::<Vec<_>>());
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..20).collect::<Vec<_>>());
        assert_ne!(order, shuffled_order(7, "batch_b", 20));
        assert_ne!(order, shuffled_order(8, "batch_a", 20));
        assert!(shuffled_order(7, "batch_a", 0).is_empty());
    }

    #[test]
    fn finds_fault_markers() {
        assert_eq!(
            RequestFault::find_in("hello [[fault:refusal]] there"),
            Some(RequestFault::Refusal)
        );
        assert_eq!(RequestFault::find_in("no marker"), None);
        assert_eq!(RequestFault::find_in("[[fault:bogus]]"), None);
    }
}

/// Helpers for the provider modules' unit tests: a router called in-process.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use axum::Router;
    use axum::body::{Body, Bytes};
    use axum::http::{Request, StatusCode};
    use serde_json::Value;
    use tower::ServiceExt;

    use super::{Config, Shared};

    pub const BASE_URL: &str = "http://127.0.0.1:9";

    /// One lifecycle step in [`frozen_shared`]: far longer than any test runs.
    pub const STEP: Duration = Duration::from_secs(60);

    /// Shared state whose batches only move when a test moves them.
    pub fn frozen_shared() -> Arc<Shared> {
        let config = Config {
            step: STEP,
            ..Config::default()
        };
        Arc::new(Shared::new(config, BASE_URL.to_string()))
    }

    /// Sends one request; answers the status and the whole body.
    pub async fn call(
        router: &Router,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: impl Into<Body>,
    ) -> (StatusCode, Bytes) {
        let mut request = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(body.into()).expect("a valid test request");
        let response = router
            .clone()
            .oneshot(request)
            .await
            .expect("routers are infallible");
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("reading the response body");
        (status, body)
    }

    /// Like [`call`], with the body parsed as JSON.
    pub async fn call_json(
        router: &Router,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: impl Into<Body>,
    ) -> (StatusCode, Value) {
        let (status, body) = call(router, method, uri, headers, body).await;
        let value = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("response is not JSON ({e}): {body:?}"));
        (status, value)
    }

    /// An instant `steps` lifecycle steps (and a little) in the past.
    pub fn steps_ago(steps: u32) -> Instant {
        Instant::now()
            .checked_sub(STEP * steps + Duration::from_secs(1))
            .expect("the monotonic clock started long enough ago")
    }

    /// The JSON lines of a JSONL body.
    pub fn jsonl(body: &[u8]) -> Vec<Value> {
        body.split(|b| *b == b'\n')
            .filter(|line| !line.is_empty())
            .map(|line| serde_json::from_slice(line).expect("a JSON line"))
            .collect()
    }
}
