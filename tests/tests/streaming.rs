//! Streaming as a behaviour, not a timing: `collect` and `submit` run with a counting
//! global allocator, and the peak of live heap bytes while each runs must stay far
//! below what flows through it. A step that buffered a whole results file or every
//! part of a job would go past the bound.
//!
//! The provider is an in-process fake that generates results lazily and discards
//! uploaded batch input; the store keeps records but drops multipart part bodies
//! after counting them, so that neither holds the data being measured.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use batchline::model::ProviderKind;
use batchline::pipeline::job::{self, JobStatus, keys};
use batchline::pipeline::spec::ResultFormat;
use batchline::pipeline::{
    CollectOutcome, Context, ProviderSource, ReadyMessage, Settings, SubmitOutcome, UploadedObject,
    collect, submit,
};
use batchline::provider::{BatchProvider, BatchTags, LineStream};
use batchline::queue::MemoryQueue;
use batchline::status::{BatchState, BatchStatus, RequestCounts};
use batchline::storage::{ByteStream, MemoryStore, ObjectMeta, ObjectStore, PutMode, StoreResult};
use batchline_emulator::harness::store_ended_part;
use batchline_emulator::workload;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::json;

// ---------------------------------------------------------------------------------
// Counting allocator.

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; the counters
// only observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            // Count the old block as live until the move is done: a copying realloc
            // holds both for a moment.
            grew(new_size);
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn grew(size: usize) {
    let now = LIVE.fetch_add(size, Ordering::Relaxed) + size;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

/// One measurement at a time: the counters are process-wide.
static SERIAL: Mutex<()> = Mutex::new(());

/// Runs `work` on a single-threaded runtime and answers its output and the peak of
/// live heap bytes above the level at its start.
fn peak_heap_during<T>(work: impl Future<Output = T>) -> (T, usize) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let output = runtime.block_on(work);
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    (output, peak)
}

const MIB: usize = 1024 * 1024;

// ---------------------------------------------------------------------------------
// A store that forgets multipart bodies, and a provider that makes results up.

/// A memory store whose multipart uploads and parts' batch inputs (which S3 holds, not
/// the function) count their bytes and keep none of them.
#[derive(Debug, Default)]
struct CountingSink {
    inner: MemoryStore,
    uploaded: AtomicU64,
}

#[async_trait]
impl ObjectStore for CountingSink {
    async fn head(&self, key: &str, version: Option<&str>) -> StoreResult<ObjectMeta> {
        self.inner.head(key, version).await
    }
    async fn get(&self, key: &str) -> StoreResult<(ObjectMeta, Bytes)> {
        self.inner.get(key).await
    }
    async fn get_stream(
        &self,
        key: &str,
        version: Option<&str>,
        from: u64,
    ) -> StoreResult<ByteStream> {
        self.inner.get_stream(key, version, from).await
    }
    async fn put(&self, key: &str, body: Bytes, mode: PutMode) -> StoreResult<String> {
        if key.ends_with(".requests") {
            self.uploaded
                .fetch_add(body.len() as u64, Ordering::Relaxed);
            return self.inner.put(key, Bytes::new(), mode).await;
        }
        self.inner.put(key, body, mode).await
    }
    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.inner.delete(key).await
    }
    async fn list(&self, prefix: &str) -> StoreResult<Vec<String>> {
        self.inner.list(prefix).await
    }
    async fn start_upload(&self, key: &str) -> StoreResult<String> {
        Ok(format!("upload-{key}"))
    }
    async fn upload_part(
        &self,
        _key: &str,
        _upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> StoreResult<String> {
        self.uploaded
            .fetch_add(body.len() as u64, Ordering::Relaxed);
        Ok(format!("part-{number}"))
    }
    async fn complete_upload(
        &self,
        key: &str,
        _upload_id: &str,
        _parts: Vec<(i32, String)>,
    ) -> StoreResult<()> {
        // The object exists (empty here): its bytes were counted as they went by.
        self.inner
            .put(key, Bytes::new(), PutMode::Overwrite)
            .await?;
        Ok(())
    }
    async fn abort_upload(&self, _key: &str, _upload_id: &str) -> StoreResult<()> {
        Ok(())
    }
}

/// An OpenAI-shaped provider: results are generated line by line as they are read;
/// created batches are measured and dropped.
#[derive(Debug)]
struct GeneratedProvider {
    rows: usize,
    answer_items: usize,
    largest_input: AtomicUsize,
    created: AtomicUsize,
}

impl GeneratedProvider {
    fn new(rows: usize, answer_items: usize) -> Arc<Self> {
        Arc::new(Self {
            rows,
            answer_items,
            largest_input: AtomicUsize::new(0),
            created: AtomicUsize::new(0),
        })
    }

    fn status_of(&self, batch_id: &str) -> BatchStatus {
        BatchStatus {
            batch_id: batch_id.to_string(),
            state: BatchState::Completed,
            raw_status: "completed".into(),
            counts: RequestCounts {
                total: self.rows as u64,
                succeeded: self.rows as u64,
                failed: 0,
                pending: 0,
            },
            quota_exceeded: false,
            created_at: None,
            ended_at: None,
            error: None,
            tags: BTreeMap::new(),
        }
    }
}

#[async_trait]
impl BatchProvider for GeneratedProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::OpenAi
    }

    async fn create(
        &self,
        _model: &str,
        input: Bytes,
        tags: &BatchTags,
    ) -> batchline::Result<BatchStatus> {
        self.largest_input.fetch_max(input.len(), Ordering::Relaxed);
        let n = self.created.fetch_add(1, Ordering::Relaxed);
        let mut status = self.status_of(&format!("batch_{n}"));
        status.tags = tags.clone();
        Ok(status)
    }

    async fn status(&self, batch_id: &str) -> batchline::Result<BatchStatus> {
        Ok(self.status_of(batch_id))
    }

    async fn cancel(&self, batch_id: &str) -> batchline::Result<BatchStatus> {
        Ok(self.status_of(batch_id))
    }

    async fn list(&self) -> batchline::Result<Vec<BatchStatus>> {
        Ok(Vec::new())
    }

    async fn results(&self, _batch_id: &str) -> batchline::Result<LineStream> {
        let items = self.answer_items;
        Ok(futures::stream::iter(0..self.rows)
            .map(move |row| {
                let mut line = Vec::new();
                workload::write_results_line(ProviderKind::OpenAi, row, items, &mut line)
                    .expect("writing to a Vec");
                Ok(Bytes::from(line))
            })
            .boxed())
    }
}

#[derive(Debug)]
struct Only(Arc<GeneratedProvider>);

#[async_trait]
impl ProviderSource for Only {
    async fn provider(&self, _kind: ProviderKind) -> batchline::Result<Arc<dyn BatchProvider>> {
        Ok(self.0.clone())
    }
}

fn context(store: Arc<CountingSink>, provider: Arc<GeneratedProvider>) -> Context {
    Context {
        store,
        bucket: "streaming".into(),
        queue: Arc::new(MemoryQueue::new()),
        poll_jobs: None,
        providers: Arc::new(Only(provider)),
        settings: Settings::default(),
        clock: Arc::new(batchline::clock::SystemClock),
        ledger: None,
        submit_queue: None,
        metrics: Arc::new(batchline::metrics::MemorySink::new()),
    }
}

// ---------------------------------------------------------------------------------

#[test]
fn collect_holds_far_less_than_the_results_it_streams() {
    collect_within(COLLECT_CAP, &[ResultFormat::Jsonl]);
}

/// The Parquet writer adds its row group (see `ParquetSuccesses::ROW_GROUP_BYTES`),
/// held a few times over while it is closed and handed to its own upload.
#[test]
fn collect_writing_parquet_too_holds_far_less_than_the_results_it_streams() {
    collect_within(64 * MIB, &[ResultFormat::Jsonl, ResultFormat::Parquet]);
}

/// The heap collect may use for JSONL successes alone.
const COLLECT_CAP: usize = 32 * MIB;

/// Collects 1,200 results of about 100 KB (120 MB, several times [`COLLECT_CAP`])
/// writing the successes in `formats`, and checks that the heap stayed under `cap`.
fn collect_within(cap: usize, formats: &[ResultFormat]) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    const ROWS: usize = 1_200;
    let provider = GeneratedProvider::new(ROWS, workload::items_for_line_bytes(100_000));
    let store = Arc::new(CountingSink::default());
    let ctx = context(store.clone(), provider.clone());
    let setup = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    setup
        .block_on(store_ended_part(
            store.as_ref(),
            "streaming",
            "big-part",
            "openai/gpt-4o-mini",
            "batch_big",
            ROWS,
            formats,
        ))
        .expect("job record");

    let message = ReadyMessage {
        job_id: "big-part".into(),
        part: 0,
    };
    let (outcome, peak) = peak_heap_during(collect(&ctx, &message, true));
    eprintln!(
        "TEMP {formats:?} peak {} KiB uploaded {}",
        peak / 1024,
        store.uploaded.load(Ordering::Relaxed)
    );

    assert_eq!(
        outcome.expect("collect"),
        CollectOutcome::Collected {
            succeeded: ROWS as u64,
            failed: 0,
            job_closed: true,
        }
    );
    let streamed: u64 = (0..ROWS)
        .map(|row| {
            let mut line = Vec::new();
            workload::write_results_line(
                ProviderKind::OpenAi,
                row,
                provider.answer_items,
                &mut line,
            )
            .expect("line");
            line.len() as u64
        })
        .sum();
    assert!(
        streamed > 3 * COLLECT_CAP as u64,
        "the results ({streamed} bytes) must exceed the cap several times over"
    );
    let uploaded = store.uploaded.load(Ordering::Relaxed);
    assert!(
        uploaded > 2 * COLLECT_CAP as u64,
        "the successes went out in multipart parts ({uploaded} bytes)"
    );
    assert!(
        peak < cap,
        "collect's heap peaked at {} MiB for {} MiB of results (cap {} MiB) writing {formats:?}",
        peak / MIB,
        streamed / MIB as u64,
        cap / MIB
    );
}

#[test]
fn submit_holds_at_most_one_part_at_a_time() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    const REQUESTS: usize = 20_000;
    const PER_PART: usize = 250;
    let mut input = json!({"spec": {
        "model": "openai/gpt-4o-mini",
        "schema_name": workload::SCHEMA_NAME,
        "schema": workload::invoice_schema().schema,
        "max_requests_per_part": PER_PART
    }})
    .to_string()
    .into_bytes();
    input.push(b'\n');
    for row in 0..REQUESTS {
        workload::write_input_line(row, &mut input).expect("input line");
    }
    let store = Arc::new(CountingSink::default());
    let provider = GeneratedProvider::new(0, 0);
    let ctx = context(store.clone(), provider.clone());
    let key = "inbox/streaming/many-parts.jsonl";
    let setup = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    setup
        .block_on(store.put(key, Bytes::from(input), PutMode::Overwrite))
        .expect("upload");

    let object = UploadedObject {
        key: key.into(),
        version_id: None,
    };
    let (outcome, peak) = peak_heap_during(submit(&ctx, &object));

    let parts = REQUESTS / PER_PART;
    let job_id = match outcome.expect("submit") {
        SubmitOutcome::Submitted {
            job_id,
            parts: submitted,
            requests,
            rejected_lines: 0,
        } => {
            assert_eq!((submitted, requests), (parts, REQUESTS as u64));
            job_id
        }
        other => panic!("{other:?}"),
    };
    let record = setup
        .block_on(job::load(store.as_ref(), &job_id))
        .expect("record")
        .record;
    assert_eq!(record.status, JobStatus::Open);
    assert_eq!(provider.created.load(Ordering::Relaxed), parts);
    setup
        .block_on(store.head(&keys::part_manifest(&job_id, parts as u32 - 1), None))
        .expect("the last part's manifest");

    // One part being filled plus the one being sent, plus the reader and the ids.
    let part = provider.largest_input.load(Ordering::Relaxed);
    let bound = 2 * part + 8 * MIB;
    let built = part * parts;
    assert!(
        built > 3 * bound,
        "the job's parts ({built} bytes) must exceed the bound several times over"
    );
    assert!(
        peak < bound,
        "submit's heap peaked at {} KiB with parts of {} KiB (bound {} KiB)",
        peak / 1024,
        part / 1024,
        bound / 1024
    );
}
