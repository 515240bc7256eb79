//! Crash injection: wrappers around the store, the queue and the providers that log
//! every side effect and can make the "process" die right after the Nth one, or
//! when the Nth call of one kind is made. Once dead, every later call of any
//! wrapper fails, as nothing more happens after a real crash.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use batchline::model::ProviderKind;
use batchline::pipeline::{Context, ProviderSource};
use batchline::provider::{BatchProvider, BatchTags, LineStream};
use batchline::queue::{Queue, QueueError};
use batchline::status::BatchStatus;
use batchline::storage::{ByteStream, ObjectMeta, ObjectStore, PutMode, StoreError, StoreResult};
use bytes::Bytes;

/// The kinds of call the wrappers see. Side effects change the world; reads do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Head,
    Get,
    List,
    Put,
    Delete,
    StartUpload,
    UploadPart,
    CompleteUpload,
    AbortUpload,
    Send,
    Create,
    Cancel,
    Status,
    ListBatches,
    Results,
}

impl Op {
    pub fn is_side_effect(self) -> bool {
        matches!(
            self,
            Op::Put
                | Op::Delete
                | Op::StartUpload
                | Op::UploadPart
                | Op::CompleteUpload
                | Op::AbortUpload
                | Op::Send
                | Op::Create
                | Op::Cancel
        )
    }
}

/// One side effect that happened: what and on what (key, message, part tags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effect {
    pub op: Op,
    pub target: String,
}

impl fmt::Display for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} {}", self.op, self.target)
    }
}

/// When the process dies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// Never: only log.
    Never,
    /// Right after the Nth side effect (1-based) succeeded.
    AfterEffect(usize),
    /// When the Nth call (1-based) of this kind is made; that call fails.
    AtCall(Op, usize),
}

/// The shared log and kill switch of one crash run.
#[derive(Debug)]
pub struct Crasher {
    point: CrashPoint,
    effects: Mutex<Vec<Effect>>,
    calls: Mutex<Vec<Op>>,
    dead: AtomicBool,
}

impl Crasher {
    pub fn new(point: CrashPoint) -> Arc<Self> {
        Arc::new(Self {
            point,
            effects: Mutex::new(Vec::new()),
            calls: Mutex::new(Vec::new()),
            dead: AtomicBool::new(false),
        })
    }

    pub fn effects(&self) -> Vec<Effect> {
        self.effects.lock().expect("crash log").clone()
    }

    pub fn crashed(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    /// Called before every call: false when the process is (now) dead.
    fn enter(&self, op: Op) -> bool {
        if self.crashed() {
            return false;
        }
        let mut calls = self.calls.lock().expect("crash calls");
        calls.push(op);
        if let CrashPoint::AtCall(kind, nth) = self.point
            && kind == op
            && calls.iter().filter(|c| **c == op).count() == nth
        {
            self.dead.store(true, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// Called after a call succeeded.
    fn done(&self, op: Op, target: &str) {
        if !op.is_side_effect() {
            return;
        }
        let mut effects = self.effects.lock().expect("crash log");
        effects.push(Effect {
            op,
            target: target.to_string(),
        });
        if self.point == CrashPoint::AfterEffect(effects.len()) {
            self.dead.store(true, Ordering::SeqCst);
        }
    }

    /// A pipeline context whose store, queue and providers go through this crasher.
    pub fn context(self: &Arc<Self>, ctx: &Context) -> Context {
        Context {
            store: Arc::new(CrashStore {
                inner: ctx.store.clone(),
                crasher: self.clone(),
            }),
            queue: Arc::new(CrashQueue {
                inner: ctx.queue.clone(),
                crasher: self.clone(),
            }),
            providers: Arc::new(CrashProviders {
                inner: ctx.providers.clone(),
                crasher: self.clone(),
            }),
            ..ctx.clone()
        }
    }
}

const CRASHED: &str = "injected crash: the process is gone";

fn store_crash(operation: &'static str, key: &str) -> StoreError {
    StoreError::Backend {
        operation,
        key: key.to_string(),
        message: CRASHED.to_string(),
    }
}

#[derive(Debug)]
struct CrashStore {
    inner: Arc<dyn ObjectStore>,
    crasher: Arc<Crasher>,
}

impl CrashStore {
    /// Runs one store call under the crasher: refused when dead, logged when it succeeds.
    async fn guard<T, F>(&self, op: Op, name: &'static str, key: &str, call: F) -> StoreResult<T>
    where
        F: Future<Output = StoreResult<T>>,
    {
        if !self.crasher.enter(op) {
            return Err(store_crash(name, key));
        }
        let out = call.await?;
        self.crasher.done(op, key);
        Ok(out)
    }
}

#[async_trait]
impl ObjectStore for CrashStore {
    async fn head(&self, key: &str, version: Option<&str>) -> StoreResult<ObjectMeta> {
        self.guard(Op::Head, "head", key, self.inner.head(key, version))
            .await
    }
    async fn get(&self, key: &str) -> StoreResult<(ObjectMeta, Bytes)> {
        self.guard(Op::Get, "get", key, self.inner.get(key)).await
    }
    async fn get_stream(&self, key: &str, version: Option<&str>) -> StoreResult<ByteStream> {
        self.guard(Op::Get, "get", key, self.inner.get_stream(key, version))
            .await
    }
    async fn put(&self, key: &str, body: Bytes, mode: PutMode) -> StoreResult<String> {
        self.guard(Op::Put, "put", key, self.inner.put(key, body, mode))
            .await
    }
    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.guard(Op::Delete, "delete", key, self.inner.delete(key))
            .await
    }
    async fn list(&self, prefix: &str) -> StoreResult<Vec<String>> {
        self.guard(Op::List, "list", prefix, self.inner.list(prefix))
            .await
    }
    async fn start_upload(&self, key: &str) -> StoreResult<String> {
        self.guard(
            Op::StartUpload,
            "start_upload",
            key,
            self.inner.start_upload(key),
        )
        .await
    }
    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> StoreResult<String> {
        self.guard(
            Op::UploadPart,
            "upload_part",
            key,
            self.inner.upload_part(key, upload_id, number, body),
        )
        .await
    }
    async fn complete_upload(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<(i32, String)>,
    ) -> StoreResult<()> {
        self.guard(
            Op::CompleteUpload,
            "complete_upload",
            key,
            self.inner.complete_upload(key, upload_id, parts),
        )
        .await
    }
    async fn abort_upload(&self, key: &str, upload_id: &str) -> StoreResult<()> {
        self.guard(
            Op::AbortUpload,
            "abort_upload",
            key,
            self.inner.abort_upload(key, upload_id),
        )
        .await
    }
}

#[derive(Debug)]
struct CrashQueue {
    inner: Arc<dyn Queue>,
    crasher: Arc<Crasher>,
}

#[async_trait]
impl Queue for CrashQueue {
    async fn send(&self, body: String) -> Result<(), QueueError> {
        if !self.crasher.enter(Op::Send) {
            return Err(QueueError(CRASHED.to_string()));
        }
        self.inner.send(body.clone()).await?;
        self.crasher.done(Op::Send, &body);
        Ok(())
    }
}

#[derive(Debug)]
struct CrashProviders {
    inner: Arc<dyn ProviderSource>,
    crasher: Arc<Crasher>,
}

#[async_trait]
impl ProviderSource for CrashProviders {
    async fn provider(&self, kind: ProviderKind) -> batchline::Result<Arc<dyn BatchProvider>> {
        Ok(Arc::new(CrashProvider {
            inner: self.inner.provider(kind).await?,
            crasher: self.crasher.clone(),
        }))
    }
}

#[derive(Debug)]
struct CrashProvider {
    inner: Arc<dyn BatchProvider>,
    crasher: Arc<Crasher>,
}

impl CrashProvider {
    async fn guard<T, F>(&self, op: Op, target: &str, call: F) -> batchline::Result<T>
    where
        F: Future<Output = batchline::Result<T>>,
    {
        if !self.crasher.enter(op) {
            return Err(batchline::Error::Transport {
                provider: self.inner.kind(),
                attempts: 1,
                message: CRASHED.to_string(),
            });
        }
        let out = call.await?;
        self.crasher.done(op, target);
        Ok(out)
    }
}

fn describe_tags(tags: &BatchTags) -> String {
    tags.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[async_trait]
impl BatchProvider for CrashProvider {
    fn kind(&self) -> ProviderKind {
        self.inner.kind()
    }
    async fn create(
        &self,
        model: &str,
        input: Bytes,
        tags: &BatchTags,
    ) -> batchline::Result<BatchStatus> {
        self.guard(
            Op::Create,
            &describe_tags(tags),
            self.inner.create(model, input, tags),
        )
        .await
    }
    async fn status(&self, batch_id: &str) -> batchline::Result<BatchStatus> {
        self.guard(Op::Status, batch_id, self.inner.status(batch_id))
            .await
    }
    async fn cancel(&self, batch_id: &str) -> batchline::Result<BatchStatus> {
        self.guard(Op::Cancel, batch_id, self.inner.cancel(batch_id))
            .await
    }
    async fn list(&self) -> batchline::Result<Vec<BatchStatus>> {
        self.guard(Op::ListBatches, "", self.inner.list()).await
    }
    async fn find(&self, tags: &BatchTags) -> batchline::Result<Option<BatchStatus>> {
        // The provider's own `find` (Anthropic's answers None without listing).
        self.guard(Op::ListBatches, "", self.inner.find(tags)).await
    }
    async fn results(&self, batch_id: &str) -> batchline::Result<LineStream> {
        self.guard(Op::Results, batch_id, self.inner.results(batch_id))
            .await
    }
}
