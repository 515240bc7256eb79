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
    /// Not a crash: the process with this pid (moto) is paused with SIGSTOP just
    /// before the Nth call of this kind, which then runs (and times out).
    PauseAt(Op, usize, u32),
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
        let nth_of_kind = calls.iter().filter(|c| **c == op).count();
        match self.point {
            CrashPoint::AtCall(kind, nth) if kind == op && nth == nth_of_kind => {
                self.dead.store(true, Ordering::SeqCst);
                false
            }
            CrashPoint::PauseAt(kind, nth, pid) if kind == op && nth == nth_of_kind => {
                signal(pid, libc::SIGSTOP);
                true
            }
            _ => true,
        }
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

/// Sends `signal` to `pid` (a child process of the test).
pub fn signal(pid: u32, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is our own child.
    let status = unsafe { libc::kill(pid, signal) };
    assert_eq!(status, 0, "kill({pid}, {signal})");
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
    async fn get_stream(
        &self,
        key: &str,
        version: Option<&str>,
        from: u64,
    ) -> StoreResult<ByteStream> {
        self.guard(
            Op::Get,
            "get",
            key,
            self.inner.get_stream(key, version, from),
        )
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

impl super::Harness {
    /// Receives one batch of ready messages and hands it to collect under `ctx`,
    /// deleting those it did not report failed. `None` when the queue is empty;
    /// else (delivered, failed).
    pub async fn deliver_with(&self, ctx: &Context) -> Option<(usize, usize)> {
        let (event, handles) = self.receive().await?;
        let ids: Vec<String> = event
            .records
            .iter()
            .filter_map(|r| r.message_id.clone())
            .collect();
        let response = batchline::pipeline::events::handle_sqs_event(ctx, event, 5).await;
        let failed: Vec<&str> = response
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.as_str())
            .collect();
        for (id, handle) in ids.iter().zip(handles) {
            if !failed.contains(&id.as_str()) {
                self.sqs
                    .delete_message()
                    .queue_url(&self.queue_url)
                    .receipt_handle(handle)
                    .send()
                    .await
                    .expect("delete");
            }
        }
        Some((ids.len(), failed.len()))
    }

    /// Plays the upload's S3 event, then polls and collects under `ctx` until the job
    /// closes or the crasher fires. Step errors are what a crash looks like from the
    /// outside; they are left for the rerun.
    pub async fn drive(&self, ctx: &Context, crasher: &Crasher, key: &str, version: &str) {
        let _ =
            batchline::pipeline::events::handle_s3_event(ctx, self.s3_event(key, version)).await;
        for _ in 0..20 {
            if crasher.crashed() {
                return;
            }
            let _ = batchline::pipeline::poll(ctx).await;
            while !crasher.crashed()
                && let Some((_, failed)) = self.deliver_with(ctx).await
            {
                if failed > 0 {
                    break;
                }
            }
            if crasher.crashed()
                || self
                    .ctx
                    .store
                    .list("open/")
                    .await
                    .is_ok_and(|k| k.is_empty())
            {
                return;
            }
        }
    }
}

/// A context whose providers end every results stream cleanly after `lines` lines:
/// a results file that is shorter than the provider says.
pub fn truncating_context(ctx: &Context, lines: usize) -> Context {
    Context {
        providers: Arc::new(TruncatingProviders {
            inner: ctx.providers.clone(),
            lines,
        }),
        ..ctx.clone()
    }
}

#[derive(Debug)]
struct TruncatingProviders {
    inner: Arc<dyn ProviderSource>,
    lines: usize,
}

#[async_trait]
impl ProviderSource for TruncatingProviders {
    async fn provider(&self, kind: ProviderKind) -> batchline::Result<Arc<dyn BatchProvider>> {
        Ok(Arc::new(TruncatingProvider {
            inner: self.inner.provider(kind).await?,
            lines: self.lines,
        }))
    }
}

#[derive(Debug)]
struct TruncatingProvider {
    inner: Arc<dyn BatchProvider>,
    lines: usize,
}

#[async_trait]
impl BatchProvider for TruncatingProvider {
    fn kind(&self) -> ProviderKind {
        self.inner.kind()
    }
    async fn create(
        &self,
        model: &str,
        input: Bytes,
        tags: &BatchTags,
    ) -> batchline::Result<BatchStatus> {
        self.inner.create(model, input, tags).await
    }
    async fn status(&self, batch_id: &str) -> batchline::Result<BatchStatus> {
        self.inner.status(batch_id).await
    }
    async fn cancel(&self, batch_id: &str) -> batchline::Result<BatchStatus> {
        self.inner.cancel(batch_id).await
    }
    async fn list(&self) -> batchline::Result<Vec<BatchStatus>> {
        self.inner.list().await
    }
    async fn find(&self, tags: &BatchTags) -> batchline::Result<Option<BatchStatus>> {
        self.inner.find(tags).await
    }
    async fn results(&self, batch_id: &str) -> batchline::Result<LineStream> {
        use futures::StreamExt;
        Ok(self.inner.results(batch_id).await?.take(self.lines).boxed())
    }
}
