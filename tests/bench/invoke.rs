//! One Lambda invocation of a pipeline function in a process of its own
//! (`batchline-bench child invoke FUNCTION EVENT_FILE`), so that its peak RSS is its
//! own: the context is built from the environment the way the function builds it
//! (`pipeline::env::context_from_env`), its store and queues are wrapped in counting
//! adapters, and the event goes to the library call the function's handler makes.

use std::fmt;
use std::ops::AddAssign;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use async_trait::async_trait;
use batchline::pipeline::{PipelineError, env, events};
use batchline::queue::{Queue, QueueError};
use batchline::storage::{ByteStream, ObjectMeta, ObjectStore, PutMode, StoreResult};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::measure::own_peak_rss_bytes;

/// The three functions of `infra/template.yaml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Function {
    Submit,
    Poll,
    Collect,
}

impl Function {
    pub const ALL: [Function; 3] = [Self::Submit, Self::Poll, Self::Collect];

    pub fn name(self) -> &'static str {
        match self {
            Self::Submit => "submit",
            Self::Poll => "poll",
            Self::Collect => "collect",
        }
    }

    pub fn from_name(name: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|f| f.name() == name)
            .ok_or_else(|| format!("unknown function {name:?}"))
    }

    /// `MemorySize` of the function in `infra/template.yaml`, in MB: what Lambda bills.
    pub fn memory_mb(self) -> u64 {
        match self {
            Self::Submit | Self::Collect => 1024,
            Self::Poll => 512,
        }
    }
}

impl fmt::Display for Function {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Requests an invocation made to S3 and SQS, by kind (what AWS bills per request).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Requests {
    pub s3_get: u64,
    pub s3_put: u64,
    /// `ListObjectsV2` pages (1,000 keys each).
    pub s3_list: u64,
    pub s3_head: u64,
    pub s3_delete: u64,
    /// Create, upload part, complete, abort.
    pub s3_multipart: u64,
    pub sqs_send: u64,
    pub sqs_receive: u64,
    pub sqs_delete: u64,
}

impl AddAssign for Requests {
    fn add_assign(&mut self, other: Self) {
        self.s3_get += other.s3_get;
        self.s3_put += other.s3_put;
        self.s3_list += other.s3_list;
        self.s3_head += other.s3_head;
        self.s3_delete += other.s3_delete;
        self.s3_multipart += other.s3_multipart;
        self.sqs_send += other.sqs_send;
        self.sqs_receive += other.sqs_receive;
        self.sqs_delete += other.sqs_delete;
    }
}

/// What an invocation child prints as its last stdout line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Invocation {
    /// From the start of the context's construction to the handler's answer: what
    /// Lambda would bill (init included: it is billed since 2025).
    pub seconds: f64,
    pub peak_rss_bytes: u64,
    pub requests: Requests,
    /// The handler's answer, or its error (the event is then delivered again).
    pub outcome: Result<serde_json::Value, String>,
}

/// `child invoke FUNCTION EVENT_FILE`: the event (a Lambda payload as JSON) given to
/// the function's library call.
pub fn invoke(function: Function, event_file: &Path) -> Result<Invocation, String> {
    let event = std::fs::read(event_file).map_err(|e| format!("{}: {e}", event_file.display()))?;
    let payload: serde_json::Value =
        serde_json::from_slice(&event).map_err(|e| format!("event: {e}"))?;
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let started = Instant::now();
    let counters = Arc::new(Counters::default());
    let outcome = runtime.block_on(async {
        let mut ctx = env::context_from_env()
            .await
            .map_err(|e| format!("context: {e}"))?;
        ctx.store = Arc::new(CountingStore {
            inner: ctx.store,
            counters: counters.clone(),
        });
        ctx.queue = Arc::new(CountingQueue {
            inner: ctx.queue,
            counters: counters.clone(),
        });
        ctx.submit_queue = ctx.submit_queue.map(|inner| {
            Arc::new(CountingQueue {
                inner,
                counters: counters.clone(),
            }) as Arc<dyn Queue>
        });
        match function {
            Function::Submit => answer(events::handle_submit_payload(&ctx, payload).await),
            Function::Poll => answer(events::handle_poll_payload(&ctx, payload).await),
            Function::Collect => {
                let event = serde_json::from_value(payload).map_err(|e| e.to_string())?;
                let response =
                    events::handle_sqs_event(&ctx, event, env::collect_max_receives()).await;
                serde_json::to_value(response).map_err(|e| e.to_string())
            }
        }
    });
    let seconds = started.elapsed().as_secs_f64();
    Ok(Invocation {
        seconds,
        peak_rss_bytes: own_peak_rss_bytes()?,
        requests: counters.snapshot(),
        outcome,
    })
}

/// A handler's answer as JSON, or its error as text.
fn answer<T: Serialize>(result: Result<T, PipelineError>) -> Result<serde_json::Value, String> {
    result
        .map_err(|e| e.to_string())
        .and_then(|v| serde_json::to_value(v).map_err(|e| e.to_string()))
}

#[derive(Debug, Default)]
struct Counters {
    s3_get: AtomicU64,
    s3_put: AtomicU64,
    s3_list: AtomicU64,
    s3_head: AtomicU64,
    s3_delete: AtomicU64,
    s3_multipart: AtomicU64,
    sqs_send: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> Requests {
        let n = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Requests {
            s3_get: n(&self.s3_get),
            s3_put: n(&self.s3_put),
            s3_list: n(&self.s3_list),
            s3_head: n(&self.s3_head),
            s3_delete: n(&self.s3_delete),
            s3_multipart: n(&self.s3_multipart),
            sqs_send: n(&self.sqs_send),
            // The functions never receive or delete: Lambda's event source does.
            sqs_receive: 0,
            sqs_delete: 0,
        }
    }
}

fn count(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// An [`ObjectStore`] that counts the S3 requests it passes on (failed ones too: AWS
/// bills them).
#[derive(Debug)]
struct CountingStore {
    inner: Arc<dyn ObjectStore>,
    counters: Arc<Counters>,
}

#[async_trait]
impl ObjectStore for CountingStore {
    async fn head(&self, key: &str, version: Option<&str>) -> StoreResult<ObjectMeta> {
        count(&self.counters.s3_head, 1);
        self.inner.head(key, version).await
    }

    async fn get(&self, key: &str) -> StoreResult<(ObjectMeta, Bytes)> {
        count(&self.counters.s3_get, 1);
        self.inner.get(key).await
    }

    async fn get_stream(
        &self,
        key: &str,
        version: Option<&str>,
        from: u64,
    ) -> StoreResult<ByteStream> {
        count(&self.counters.s3_get, 1);
        self.inner.get_stream(key, version, from).await
    }

    async fn put(&self, key: &str, body: Bytes, mode: PutMode) -> StoreResult<String> {
        count(&self.counters.s3_put, 1);
        self.inner.put(key, body, mode).await
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        count(&self.counters.s3_delete, 1);
        self.inner.delete(key).await
    }

    async fn list(&self, prefix: &str) -> StoreResult<Vec<String>> {
        let keys = self.inner.list(prefix).await;
        // One request per page of 1,000 keys, as the paginator sends them.
        let pages = keys
            .as_ref()
            .map_or(1, |keys| keys.len().div_ceil(1000).max(1));
        count(&self.counters.s3_list, pages as u64);
        keys
    }

    async fn start_upload(&self, key: &str) -> StoreResult<String> {
        count(&self.counters.s3_multipart, 1);
        self.inner.start_upload(key).await
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> StoreResult<String> {
        count(&self.counters.s3_multipart, 1);
        self.inner.upload_part(key, upload_id, number, body).await
    }

    async fn complete_upload(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<(i32, String)>,
    ) -> StoreResult<()> {
        count(&self.counters.s3_multipart, 1);
        self.inner.complete_upload(key, upload_id, parts).await
    }

    async fn abort_upload(&self, key: &str, upload_id: &str) -> StoreResult<()> {
        count(&self.counters.s3_multipart, 1);
        self.inner.abort_upload(key, upload_id).await
    }
}

/// A [`Queue`] that counts the SQS sends it passes on.
#[derive(Debug)]
struct CountingQueue {
    inner: Arc<dyn Queue>,
    counters: Arc<Counters>,
}

#[async_trait]
impl Queue for CountingQueue {
    async fn send(&self, body: String) -> Result<(), QueueError> {
        count(&self.counters.sqs_send, 1);
        self.inner.send(body).await
    }
}
