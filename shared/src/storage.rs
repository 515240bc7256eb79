//! Object storage behind one small trait (S3 in production, a directory for the
//! operator CLI, memory in unit tests), with the conditional writes that keep job
//! records consistent under retries.

mod local;
mod memory;
mod port;
#[cfg(feature = "aws")]
mod s3;

use bytes::BytesMut;

pub use local::LocalStore;
pub use memory::MemoryStore;
pub use port::{ByteStream, ObjectMeta, ObjectStore, PutMode, StoreError, StoreResult};
#[cfg(feature = "aws")]
pub use s3::S3Store;

/// Streams bytes into one object: small objects become a single put, large ones a
/// multipart upload, so memory stays at one part whatever the object size.
pub struct ObjectWriter<'a> {
    store: &'a dyn ObjectStore,
    key: String,
    buffer: BytesMut,
    part_size: usize,
    upload: Option<(String, Vec<(i32, String)>)>,
    written: u64,
}

impl<'a> ObjectWriter<'a> {
    /// S3 wants parts of at least 5 MiB except the last; 8 MiB keeps requests few.
    pub const DEFAULT_PART_SIZE: usize = 8 * 1024 * 1024;

    /// A writer to `key` with parts of [`Self::DEFAULT_PART_SIZE`].
    pub fn new(store: &'a dyn ObjectStore, key: impl Into<String>) -> Self {
        Self::with_part_size(store, key, Self::DEFAULT_PART_SIZE)
    }

    /// A writer to `key` that uploads in parts of `part_size` bytes.
    pub fn with_part_size(
        store: &'a dyn ObjectStore,
        key: impl Into<String>,
        part_size: usize,
    ) -> Self {
        Self {
            store,
            key: key.into(),
            buffer: BytesMut::with_capacity(part_size.min(1 << 20)),
            part_size,
            upload: None,
            written: 0,
        }
    }

    /// The key written to.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Appends `data`; uploads a part whenever a part's worth is buffered.
    pub async fn write(&mut self, data: &[u8]) -> StoreResult<()> {
        self.buffer.extend_from_slice(data);
        self.written += data.len() as u64;
        if self.buffer.len() >= self.part_size {
            self.flush_part().await?;
        }
        Ok(())
    }

    async fn flush_part(&mut self) -> StoreResult<()> {
        if self.upload.is_none() {
            let id = self.store.start_upload(&self.key).await?;
            self.upload = Some((id, Vec::new()));
        }
        let body = self.buffer.split().freeze();
        let Some((upload_id, parts)) = self.upload.as_mut() else {
            unreachable!("upload started above")
        };
        let number = parts.len() as i32 + 1;
        let etag = self
            .store
            .upload_part(&self.key, upload_id, number, body)
            .await?;
        parts.push((number, etag));
        Ok(())
    }

    /// Gives up: nothing becomes visible and a started multipart upload is removed.
    pub async fn abort(mut self) {
        if let Some((upload_id, _)) = self.upload.take()
            && let Err(e) = self.store.abort_upload(&self.key, &upload_id).await
        {
            tracing::warn!(key = %self.key, error = %e, "aborting a multipart upload failed; a bucket lifecycle rule cleans it up");
        }
    }

    /// Writes what is left and makes the object visible.
    pub async fn finish(mut self) -> StoreResult<u64> {
        match self.upload.take() {
            None => {
                let body = self.buffer.split().freeze();
                self.store.put(&self.key, body, PutMode::Overwrite).await?;
            }
            Some(upload) => {
                self.upload = Some(upload);
                if !self.buffer.is_empty() {
                    self.flush_part().await?;
                }
                let Some((upload_id, parts)) = self.upload.take() else {
                    unreachable!("upload kept above")
                };
                if let Err(e) = self
                    .store
                    .complete_upload(&self.key, &upload_id, parts)
                    .await
                {
                    let _ = self.store.abort_upload(&self.key, &upload_id).await;
                    return Err(e);
                }
            }
        }
        Ok(self.written)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    /// What the pipeline needs of any store's writes; every adapter's tests run these.
    pub(super) mod contract {
        use super::*;

        /// Writes through [`ObjectWriter`] below and above one part and reads them back.
        pub(in crate::storage) async fn streams_small_and_large_objects(store: &dyn ObjectStore) {
            let mut small = ObjectWriter::with_part_size(store, "a", 8);
            small.write(b"abc").await.unwrap();
            assert_eq!(small.finish().await.unwrap(), 3);
            assert_eq!(store.get("a").await.unwrap().1, Bytes::from_static(b"abc"));

            let mut large = ObjectWriter::with_part_size(store, "b", 4);
            for chunk in [&b"0123"[..], b"4567", b"89"] {
                large.write(chunk).await.unwrap();
            }
            large.finish().await.unwrap();
            assert_eq!(
                store.get("b").await.unwrap().1,
                Bytes::from_static(b"0123456789")
            );
        }

        /// Create once, update only from the current tag.
        pub(in crate::storage) async fn refuses_stale_and_duplicate_writers(
            store: &dyn ObjectStore,
        ) {
            let first = store
                .put("r", Bytes::from_static(b"1"), PutMode::Create)
                .await
                .unwrap();
            assert!(matches!(
                store
                    .put("r", Bytes::from_static(b"2"), PutMode::Create)
                    .await,
                Err(StoreError::Conflict { .. })
            ));
            let second = store
                .put(
                    "r",
                    Bytes::from_static(b"2"),
                    PutMode::Update(first.clone()),
                )
                .await
                .unwrap();
            assert_ne!(first, second);
            assert!(matches!(
                store
                    .put("r", Bytes::from_static(b"3"), PutMode::Update(first))
                    .await,
                Err(StoreError::Conflict { .. })
            ));
            assert_eq!(store.get("r").await.unwrap().1, Bytes::from_static(b"2"));
        }
    }

    #[tokio::test]
    async fn small_objects_are_one_put_and_large_ones_multipart() {
        let store = MemoryStore::new();
        contract::streams_small_and_large_objects(&store).await;
        assert_eq!(store.completed_uploads(), 1);
    }

    #[tokio::test]
    async fn conditional_writes_refuse_stale_and_duplicate_writers() {
        contract::refuses_stale_and_duplicate_writers(&MemoryStore::new()).await;
    }
}
