//! The object store port: the trait every backend implements and the types it speaks.

use std::fmt::Debug;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

/// Why a store operation failed; the first two are answers callers act on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No such object (or version).
    #[error("object {key:?} not found")]
    NotFound {
        /// The object's key.
        key: String,
    },
    /// A conditional write lost: the object exists (create) or changed (update).
    #[error("object {key:?} changed or exists already (conditional write refused)")]
    Conflict {
        /// The object's key.
        key: String,
    },
    /// Anything else the backend reported (network, permissions, throttling).
    #[error("storage {operation} on {key:?} failed: {message}")]
    Backend {
        /// The store operation, e.g. `put`.
        operation: &'static str,
        /// The object's key.
        key: String,
        /// The backend's description, with its causes.
        message: String,
    },
}

/// The result of a store operation.
pub type StoreResult<T> = Result<T, StoreError>;

/// A byte stream of an object's body.
pub type ByteStream = BoxStream<'static, StoreResult<Bytes>>;

/// What a store knows of an object without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// The object's key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Entity tag without quotes.
    pub etag: String,
    /// The version, where the bucket keeps versions.
    pub version_id: Option<String>,
}

/// How a put treats an existing object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutMode {
    /// Whatever is there.
    Overwrite,
    /// Only if no object exists (`If-None-Match: *`).
    Create,
    /// Only if the object still has this entity tag (`If-Match`).
    Update(String),
}

/// The store every pipeline step works on: S3 in Lambda, [`MemoryStore`] in unit tests.
#[async_trait]
pub trait ObjectStore: Send + Sync + Debug {
    /// Metadata of the object, or of one `version` of it.
    async fn head(&self, key: &str, version: Option<&str>) -> StoreResult<ObjectMeta>;
    /// Whole body of a small object (records, manifests, specs).
    async fn get(&self, key: &str) -> StoreResult<(ObjectMeta, Bytes)>;
    /// Streamed body from byte `from` on (0: all of it), pinned to `version` where given.
    async fn get_stream(
        &self,
        key: &str,
        version: Option<&str>,
        from: u64,
    ) -> StoreResult<ByteStream>;
    /// Returns the new entity tag.
    async fn put(&self, key: &str, body: Bytes, mode: PutMode) -> StoreResult<String>;
    /// Removes the object; removing a missing one is not an error.
    async fn delete(&self, key: &str) -> StoreResult<()>;
    /// Keys under `prefix`, all pages.
    async fn list(&self, prefix: &str) -> StoreResult<Vec<String>>;

    /// Starts a multipart upload to `key` and returns its id.
    async fn start_upload(&self, key: &str) -> StoreResult<String>;
    /// Uploads part `number` (1-based) and returns its entity tag.
    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> StoreResult<String>;
    /// Makes the object visible from `parts` (number, entity tag), in order.
    async fn complete_upload(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<(i32, String)>,
    ) -> StoreResult<()>;
    /// Drops a started upload and its parts.
    async fn abort_upload(&self, key: &str, upload_id: &str) -> StoreResult<()>;
}
