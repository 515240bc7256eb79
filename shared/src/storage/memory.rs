//! An in-memory object store for unit tests and the library's own examples.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use super::port::{ByteStream, ObjectMeta, ObjectStore, PutMode, StoreError, StoreResult};

/// Objects in a map, entity tags from a counter, conditional writes as S3 does them;
/// no versions (a version argument is ignored).
#[derive(Debug, Default)]
pub struct MemoryStore {
    objects: Mutex<BTreeMap<String, (Bytes, String)>>,
    uploads: Mutex<HashMap<String, Vec<(i32, Bytes)>>>,
    next_tag: AtomicU64,
    completed: AtomicU64,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many multipart uploads were completed (tests check that large objects stream).
    pub fn completed_uploads(&self) -> u64 {
        self.completed.load(Ordering::Relaxed)
    }

    fn tag(&self) -> String {
        format!("etag-{}", self.next_tag.fetch_add(1, Ordering::Relaxed))
    }

    fn lookup(&self, key: &str) -> StoreResult<(Bytes, String)> {
        self.objects
            .lock()
            .expect("memory store lock")
            .get(key)
            .cloned()
            .ok_or_else(|| StoreError::NotFound {
                key: key.to_string(),
            })
    }
}

#[async_trait]
impl ObjectStore for MemoryStore {
    async fn head(&self, key: &str, _version: Option<&str>) -> StoreResult<ObjectMeta> {
        let (body, etag) = self.lookup(key)?;
        Ok(ObjectMeta {
            key: key.to_string(),
            size: body.len() as u64,
            etag,
            version_id: None,
        })
    }

    async fn get(&self, key: &str) -> StoreResult<(ObjectMeta, Bytes)> {
        let (body, etag) = self.lookup(key)?;
        let meta = ObjectMeta {
            key: key.to_string(),
            size: body.len() as u64,
            etag,
            version_id: None,
        };
        Ok((meta, body))
    }

    async fn get_stream(
        &self,
        key: &str,
        _version: Option<&str>,
        from: u64,
    ) -> StoreResult<ByteStream> {
        let (body, _) = self.lookup(key)?;
        // As S3 does, a range that starts at or past the end is refused (HTTP 416).
        let start = usize::try_from(from).unwrap_or(usize::MAX);
        if from > 0 && start >= body.len() {
            return Err(StoreError::Backend {
                operation: "get",
                key: key.to_string(),
                message: format!("InvalidRange: bytes={from}- of {} bytes", body.len()),
            });
        }
        let body = body.slice(start..);
        // Small chunks so that readers meet chunk boundaries inside lines.
        let chunks: Vec<StoreResult<Bytes>> =
            body.chunks(4096).map(|c| Ok(body.slice_ref(c))).collect();
        Ok(futures::stream::iter(chunks).boxed())
    }

    async fn put(&self, key: &str, body: Bytes, mode: PutMode) -> StoreResult<String> {
        let mut objects = self.objects.lock().expect("memory store lock");
        let current = objects.get(key).map(|(_, etag)| etag.clone());
        let allowed = match (&mode, &current) {
            (PutMode::Overwrite, _) => true,
            (PutMode::Create, existing) => existing.is_none(),
            (PutMode::Update(expected), Some(actual)) => expected == actual,
            (PutMode::Update(_), None) => {
                return Err(StoreError::NotFound {
                    key: key.to_string(),
                });
            }
        };
        if !allowed {
            return Err(StoreError::Conflict {
                key: key.to_string(),
            });
        }
        let etag = self.tag();
        objects.insert(key.to_string(), (body, etag.clone()));
        Ok(etag)
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.objects.lock().expect("memory store lock").remove(key);
        Ok(())
    }

    async fn list(&self, prefix: &str) -> StoreResult<Vec<String>> {
        Ok(self
            .objects
            .lock()
            .expect("memory store lock")
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect())
    }

    async fn start_upload(&self, _key: &str) -> StoreResult<String> {
        let id = self.tag();
        self.uploads
            .lock()
            .expect("memory store lock")
            .insert(id.clone(), Vec::new());
        Ok(id)
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> StoreResult<String> {
        let mut uploads = self.uploads.lock().expect("memory store lock");
        let parts = uploads
            .get_mut(upload_id)
            .ok_or_else(|| StoreError::NotFound {
                key: format!("{key} upload {upload_id}"),
            })?;
        parts.push((number, body));
        Ok(self.tag())
    }

    async fn complete_upload(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<(i32, String)>,
    ) -> StoreResult<()> {
        let mut uploaded = self
            .uploads
            .lock()
            .expect("memory store lock")
            .remove(upload_id)
            .ok_or_else(|| StoreError::NotFound {
                key: format!("{key} upload {upload_id}"),
            })?;
        uploaded.sort_by_key(|(n, _)| *n);
        if uploaded.len() != parts.len() {
            return Err(StoreError::Backend {
                operation: "complete_upload",
                key: key.to_string(),
                message: format!("{} parts uploaded, {} listed", uploaded.len(), parts.len()),
            });
        }
        let mut body = BytesMut::new();
        for (_, part) in uploaded {
            body.extend_from_slice(&part);
        }
        self.put(key, body.freeze(), PutMode::Overwrite).await?;
        self.completed.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn abort_upload(&self, _key: &str, upload_id: &str) -> StoreResult<()> {
        self.uploads
            .lock()
            .expect("memory store lock")
            .remove(upload_id);
        Ok(())
    }
}
