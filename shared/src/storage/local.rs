//! A directory as the bucket, for the operator CLI that runs the whole pipeline in
//! process: records, manifests, results and the user's upload are plain files under it.
//!
//! Every write goes to a staged file that is then renamed (or hard-linked, for
//! [`PutMode::Create`]) onto its key, so a crash never leaves half an object under a key.
//! Staged files and multipart parts live under [`HIDDEN`] at the root, on the same
//! filesystem as the objects (a rename does not cross filesystems), where `list` never
//! looks.

use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio_util::io::ReaderStream;

use super::port::{ByteStream, ObjectMeta, ObjectStore, PutMode, StoreError, StoreResult};

/// The root's directory of staged writes and multipart uploads; no key may start with it.
const HIDDEN: &str = ".batchline";
/// Objects up to this size are tagged by their content, larger ones by size and time.
const HASHED_UP_TO: u64 = 16 * 1024 * 1024;
/// Chunk size of [`ObjectStore::get_stream`]: memory stays bounded whatever the object.
const CHUNK: usize = 64 * 1024;

/// Objects as files under a root directory, keys split on `/` into its subdirectories.
///
/// The root is created by the first write; reading a store whose root does not exist yet
/// finds nothing. Keys must be plain relative paths (no empty, `.` or `..` segment, no
/// leading `/`, no `\` or NUL, not under `.batchline`); anything else is refused with
/// [`StoreError::Backend`]. Unlike S3, a key cannot be both an object and the directory
/// of other keys (`a` and `a/b`); the bucket layout never needs that.
///
/// Entity tags are the hex SHA-256 of the content up to 16 MiB: records are compared by
/// conditional writes, and a content tag cannot miss a rewrite inside one tick of the
/// filesystem's clock. Larger objects (results, the user's multi-GB upload, which submit
/// heads several times) are tagged by size, modification time in nanoseconds and inode,
/// so that a head never reads gigabytes; conditional writes never concern them.
///
/// There are no versions: a version argument is ignored. Conditional puts are atomic
/// with respect to the other calls on this store only (one lock serialises every commit),
/// so one process owns a directory at a time; the CLI makes sure of it with a lock file.
/// Deleting an object leaves its (possibly empty) directories; `list` shows no
/// directories. Staged files of a crashed process stay under `.batchline/`, never
/// listed, and may be removed while no process uses the directory.
#[derive(Debug)]
pub struct LocalStore {
    root: PathBuf,
    /// Makes a conditional put's check and its rename one step for this process.
    commit: tokio::sync::Mutex<()>,
}

impl LocalStore {
    /// The store over the directory `root` (created by the first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            commit: tokio::sync::Mutex::new(()),
        }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file of `key`, if `key` is a plain key.
    fn path(&self, operation: &'static str, key: &str) -> StoreResult<PathBuf> {
        let plain = key.split('/').all(plain_segment) && key.split('/').next() != Some(HIDDEN);
        if !plain {
            return Err(StoreError::Backend {
                operation,
                key: key.to_string(),
                message: "not a plain relative key (empty, `.` or `..` segment, leading `/`, \
                          `\\`, NUL, or under .batchline/)"
                    .into(),
            });
        }
        Ok(self.root.join(key))
    }

    fn staging(&self) -> PathBuf {
        self.root.join(HIDDEN).join("tmp")
    }

    /// The staging directory of multipart upload `upload_id` to `key`.
    fn upload_dir(
        &self,
        operation: &'static str,
        key: &str,
        upload_id: &str,
    ) -> StoreResult<PathBuf> {
        self.path(operation, key)?;
        if !plain_segment(upload_id) || upload_id.contains('/') {
            return Err(StoreError::Backend {
                operation,
                key: key.to_string(),
                message: format!("upload id {upload_id:?} is not one of this store's"),
            });
        }
        Ok(self.root.join(HIDDEN).join("uploads").join(upload_id))
    }

    /// Moves a staged file onto `key` as `mode` says, under the commit lock.
    async fn commit(
        &self,
        operation: &'static str,
        key: &str,
        staged: PathBuf,
        target: PathBuf,
        mode: PutMode,
    ) -> StoreResult<()> {
        let _commit = self.commit.lock().await;
        let committed = blocking(operation, key, move || {
            let result = commit_staged(&staged, &target, &mode);
            // A rename took the staged file; after a link or a refusal it goes here.
            remove_if_present(&staged)?;
            result
        })
        .await?;
        match committed {
            true => Ok(()),
            false => Err(StoreError::Conflict {
                key: key.to_string(),
            }),
        }
    }
}

/// A key or upload id segment that names exactly one entry of its directory.
fn plain_segment(segment: &str) -> bool {
    !segment.is_empty() && segment != "." && segment != ".." && !segment.contains(['\\', '\0'])
}

/// Missing objects (or a missing directory on the way to one) are `NotFound`.
fn io_error(operation: &'static str, key: &str, err: io::Error) -> StoreError {
    match err.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => StoreError::NotFound {
            key: key.to_string(),
        },
        _ => StoreError::Backend {
            operation,
            key: key.to_string(),
            message: err.to_string(),
        },
    }
}

/// Runs filesystem work off the runtime's threads.
async fn blocking<T: Send + 'static>(
    operation: &'static str,
    key: &str,
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> StoreResult<T> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(|e| io_error(operation, key, e)),
        Err(e) => Err(StoreError::Backend {
            operation,
            key: key.to_string(),
            message: format!("filesystem task failed: {e}"),
        }),
    }
}

fn content_tag(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// Size, modification time and inode: a rename brings a new inode, so even a rewrite of
/// the same size inside one tick of the filesystem's clock gets a new tag.
fn stamp_tag(meta: &Metadata) -> io::Result<String> {
    let nanos = meta
        .modified()?
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(meta);
    #[cfg(not(unix))]
    let inode = 0u64;
    Ok(format!("{:x}-{nanos:x}-{inode:x}", meta.len()))
}

/// Opens the object at `path`; a directory is no object.
fn open_object(path: &Path) -> io::Result<(File, Metadata)> {
    let file = File::open(path)?;
    let meta = file.metadata()?;
    if meta.is_dir() {
        return Err(io::ErrorKind::NotFound.into());
    }
    Ok((file, meta))
}

/// The rest of `file` and the object's tag.
fn read_tagged(file: &mut File, meta: &Metadata) -> io::Result<(Vec<u8>, String)> {
    let mut body = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.read_to_end(&mut body)?;
    let tag = match body.len() as u64 > HASHED_UP_TO {
        true => stamp_tag(meta)?,
        false => content_tag(&body),
    };
    Ok((body, tag))
}

/// The tag of the object open as `file`, reading it only when it is small enough to hash.
fn file_tag(file: &mut File, meta: &Metadata) -> io::Result<String> {
    match meta.len() > HASHED_UP_TO {
        true => stamp_tag(meta),
        false => read_tagged(file, meta).map(|(_, tag)| tag),
    }
}

/// Writes a new staged file with `fill`, flushed to disk; answers its path and tag.
fn stage(
    dir: &Path,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<(PathBuf, String)> {
    fs::create_dir_all(dir)?;
    let path = dir.join(uuid::Uuid::new_v4().simple().to_string());
    let written = (|| {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        fill(&mut file)?;
        // On disk before the rename, so that a power loss leaves the old object or the new.
        file.sync_data()?;
        file.rewind()?;
        let meta = file.metadata()?;
        file_tag(&mut file, &meta)
    })();
    match written {
        Ok(tag) => Ok((path, tag)),
        Err(e) => {
            let _ = fs::remove_file(&path);
            Err(e)
        }
    }
}

/// Puts `staged` at `target` as `mode` says; `false` when the condition does not hold.
fn commit_staged(staged: &Path, target: &Path, mode: &PutMode) -> io::Result<bool> {
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent)?;
    }
    match mode {
        PutMode::Overwrite => {}
        // A link never replaces an existing file, so two creators cannot both win.
        PutMode::Create => {
            return match fs::hard_link(staged, target) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(e),
            };
        }
        PutMode::Update(expected) => {
            let (mut file, meta) = open_object(target)?;
            if file_tag(&mut file, &meta)? != *expected {
                return Ok(false);
            }
        }
    }
    fs::rename(staged, target).map(|()| true)
}

/// Removing what is not there succeeds, as a delete in S3 does.
fn ignore_missing(removed: io::Result<()>) -> io::Result<()> {
    match removed {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    ignore_missing(fs::remove_file(path))
}

/// Adds to `keys` every file under `dir` (whose keys start with `dir_key`) that starts
/// with `prefix`, descending only into directories that can hold such keys.
fn walk(dir: &Path, dir_key: &str, prefix: &str, keys: &mut Vec<String>) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        entries => entries?,
    };
    for entry in entries {
        let entry = entry?;
        // A name that is not UTF-8 cannot be a key, and nothing of ours has one.
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let key = format!("{dir_key}{name}");
        if key == HIDDEN {
            continue;
        }
        if entry.file_type()?.is_dir() {
            let sub = format!("{key}/");
            if sub.starts_with(prefix) || prefix.starts_with(&sub) {
                walk(&entry.path(), &sub, prefix, keys)?;
            }
        } else if key.starts_with(prefix) && entry.path().is_file() {
            keys.push(key);
        }
    }
    Ok(())
}

fn meta(key: &str, size: u64, etag: String) -> ObjectMeta {
    ObjectMeta {
        key: key.to_string(),
        size,
        etag,
        version_id: None,
    }
}

#[async_trait]
impl ObjectStore for LocalStore {
    async fn head(&self, key: &str, _version: Option<&str>) -> StoreResult<ObjectMeta> {
        let path = self.path("head", key)?;
        let (size, etag) = blocking("head", key, move || {
            let (mut file, meta) = open_object(&path)?;
            Ok((meta.len(), file_tag(&mut file, &meta)?))
        })
        .await?;
        Ok(meta(key, size, etag))
    }

    async fn get(&self, key: &str) -> StoreResult<(ObjectMeta, Bytes)> {
        let path = self.path("get", key)?;
        let (body, etag) = blocking("get", key, move || {
            let (mut file, meta) = open_object(&path)?;
            read_tagged(&mut file, &meta)
        })
        .await?;
        Ok((meta(key, body.len() as u64, etag), Bytes::from(body)))
    }

    async fn get_stream(
        &self,
        key: &str,
        _version: Option<&str>,
        from: u64,
    ) -> StoreResult<ByteStream> {
        let path = self.path("get", key)?;
        let (file, size) = blocking("get", key, move || {
            let (mut file, meta) = open_object(&path)?;
            file.seek(SeekFrom::Start(from))?;
            Ok((file, meta.len()))
        })
        .await?;
        // As S3 (and the memory store) do, a range that starts at or past the end is refused.
        if from > 0 && from >= size {
            return Err(StoreError::Backend {
                operation: "get",
                key: key.to_string(),
                message: format!("InvalidRange: bytes={from}- of {size} bytes"),
            });
        }
        let key = key.to_string();
        let chunks = ReaderStream::with_capacity(tokio::fs::File::from_std(file), CHUNK);
        Ok(chunks
            .map(move |chunk| chunk.map_err(|e| io_error("get", &key, e)))
            .boxed())
    }

    async fn put(&self, key: &str, body: Bytes, mode: PutMode) -> StoreResult<String> {
        let target = self.path("put", key)?;
        let staging = self.staging();
        let (staged, etag) =
            blocking("put", key, move || stage(&staging, |f| f.write_all(&body))).await?;
        self.commit("put", key, staged, target, mode).await?;
        Ok(etag)
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        let path = self.path("delete", key)?;
        blocking("delete", key, move || remove_if_present(&path)).await
    }

    async fn list(&self, prefix: &str) -> StoreResult<Vec<String>> {
        // The walk starts at the prefix's last directory; the rest of it filters names.
        let dir_key = prefix.rfind('/').map_or("", |end| &prefix[..=end]);
        let dir = match dir_key.strip_suffix('/') {
            Some(dir) => self.path("list", dir)?,
            None => self.root.clone(),
        };
        let (dir_key, owned_prefix) = (dir_key.to_string(), prefix.to_string());
        let mut keys = blocking("list", prefix, move || {
            let mut keys = Vec::new();
            walk(&dir, &dir_key, &owned_prefix, &mut keys)?;
            Ok(keys)
        })
        .await?;
        keys.sort_unstable();
        Ok(keys)
    }

    async fn start_upload(&self, key: &str) -> StoreResult<String> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let dir = self.upload_dir("start_upload", key, &id)?;
        blocking("start_upload", key, move || fs::create_dir_all(dir)).await?;
        Ok(id)
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> StoreResult<String> {
        let dir = self.upload_dir("upload_part", key, upload_id)?;
        // A missing staging directory is an upload that was never started or is gone.
        blocking(
            "upload_part",
            &format!("{key} upload {upload_id}"),
            move || {
                fs::write(dir.join(number.to_string()), &body)?;
                Ok(content_tag(&body))
            },
        )
        .await
    }

    async fn complete_upload(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<(i32, String)>,
    ) -> StoreResult<()> {
        let dir = self.upload_dir("complete_upload", key, upload_id)?;
        let target = self.path("complete_upload", key)?;
        let staging = self.staging();
        let (staged, _) = blocking(
            "complete_upload",
            &format!("{key} upload {upload_id}"),
            move || {
                stage(&staging, |out| {
                    // The tags are not checked again: the parts were written by this process.
                    for (number, _) in &parts {
                        // File to file, so memory stays at the copy's buffer.
                        io::copy(&mut File::open(dir.join(number.to_string()))?, out)?;
                    }
                    Ok(())
                })
            },
        )
        .await?;
        self.commit("complete_upload", key, staged, target, PutMode::Overwrite)
            .await?;
        self.abort_upload(key, upload_id).await
    }

    async fn abort_upload(&self, key: &str, upload_id: &str) -> StoreResult<()> {
        let dir = self.upload_dir("abort_upload", key, upload_id)?;
        blocking("abort_upload", key, move || {
            ignore_missing(fs::remove_dir_all(dir))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tempfile::TempDir;

    use super::*;
    use crate::storage::tests::contract;

    fn store() -> (TempDir, LocalStore) {
        let dir = TempDir::new().unwrap();
        let store = LocalStore::new(dir.path().join("bucket"));
        (dir, store)
    }

    async fn put(store: &LocalStore, key: &str, body: &'static [u8]) -> String {
        store
            .put(key, Bytes::from_static(body), PutMode::Overwrite)
            .await
            .unwrap()
    }

    async fn stream(store: &LocalStore, key: &str, from: u64) -> Vec<u8> {
        let mut chunks = store.get_stream(key, None, from).await.unwrap();
        let mut body = Vec::new();
        while let Some(chunk) = chunks.next().await {
            body.extend_from_slice(&chunk.unwrap());
        }
        body
    }

    #[tokio::test]
    async fn keeps_the_contract_every_store_keeps() {
        let (_dir, store) = store();
        contract::streams_small_and_large_objects(&store).await;
        contract::refuses_stale_and_duplicate_writers(&store).await;
    }

    #[tokio::test]
    async fn objects_round_trip_with_a_content_tag_that_is_stable() {
        let (_dir, store) = store();
        assert!(matches!(
            store.head("jobs/j/job.json", None).await,
            Err(StoreError::NotFound { .. })
        ));
        let tag = put(&store, "jobs/j/job.json", b"{}").await;
        assert_eq!(tag, content_tag(b"{}"));
        let head = store
            .head("jobs/j/job.json", Some("ignored"))
            .await
            .unwrap();
        assert_eq!((head.size, head.etag.as_str()), (2, tag.as_str()));
        let (meta, body) = store.get("jobs/j/job.json").await.unwrap();
        assert_eq!((meta, body), (head, Bytes::from_static(b"{}")));
        // The same content written again has the same tag; other content another.
        assert_eq!(put(&store, "jobs/j/job.json", b"{}").await, tag);
        assert_ne!(put(&store, "jobs/j/job.json", b"[]").await, tag);
        let file = store.root().join("jobs/j/job.json");
        assert_eq!(fs::read(file).unwrap(), b"[]");
    }

    #[tokio::test]
    async fn one_of_concurrent_updates_from_the_same_tag_wins() {
        let (_dir, store) = store();
        let store = Arc::new(store);
        let tag = put(&store, "r", b"0").await;
        let updates = (1..=8u8).map(|i| {
            let (store, tag) = (store.clone(), tag.clone());
            tokio::spawn(async move {
                store
                    .put("r", Bytes::from(vec![i]), PutMode::Update(tag))
                    .await
            })
        });
        let outcomes = futures::future::join_all(updates).await;
        let won: Vec<_> = outcomes.into_iter().map(Result::unwrap).collect();
        assert_eq!(won.iter().filter(|o| o.is_ok()).count(), 1);
        assert!(
            won.iter()
                .all(|o| matches!(o, Ok(_) | Err(StoreError::Conflict { .. })))
        );
        let winner = won.iter().find_map(|o| o.as_ref().ok()).unwrap();
        assert_eq!(&store.head("r", None).await.unwrap().etag, winner);
        assert!(matches!(
            store
                .put("missing", Bytes::new(), PutMode::Update(tag))
                .await,
            Err(StoreError::NotFound { .. })
        ));
    }

    #[tokio::test]
    async fn streams_from_an_offset_in_bounded_chunks() {
        let (_dir, store) = store();
        let body: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        store
            .put(
                "inbox/u.jsonl",
                Bytes::from(body.clone()),
                PutMode::Overwrite,
            )
            .await
            .unwrap();
        let mut chunks = store.get_stream("inbox/u.jsonl", None, 0).await.unwrap();
        while let Some(chunk) = chunks.next().await {
            assert!(chunk.unwrap().len() <= CHUNK);
        }
        assert_eq!(stream(&store, "inbox/u.jsonl", 0).await, body);
        assert_eq!(
            stream(&store, "inbox/u.jsonl", 70_001).await,
            &body[70_001..]
        );
        assert!(matches!(
            store.get_stream("inbox/u.jsonl", None, 200_000).await,
            Err(StoreError::Backend { .. })
        ));
        assert!(matches!(
            store.get_stream("inbox/none", None, 0).await,
            Err(StoreError::NotFound { .. })
        ));
    }

    #[tokio::test]
    async fn lists_string_prefixes_sorted_without_staged_files() {
        let (_dir, store) = store();
        assert!(store.list("").await.unwrap().is_empty());
        for key in [
            "jobs/b/x",
            "jobs/ab/x",
            "jobs/a",
            "jobs/ab/y/z",
            "open/a",
            "jobsx",
        ] {
            put(&store, key, b"k").await;
        }
        let upload = store.start_upload("results/r").await.unwrap();
        store
            .upload_part("results/r", &upload, 1, Bytes::from_static(b"p"))
            .await
            .unwrap();
        fs::write(store.staging().join("left-by-a-crash"), b"t").unwrap();
        assert_eq!(
            store.list("jobs/a").await.unwrap(),
            ["jobs/a", "jobs/ab/x", "jobs/ab/y/z"]
        );
        assert_eq!(store.list("jobs/").await.unwrap().len(), 4);
        assert_eq!(store.list("jobs").await.unwrap().len(), 5);
        assert_eq!(
            store.list("").await.unwrap(),
            [
                "jobs/a",
                "jobs/ab/x",
                "jobs/ab/y/z",
                "jobs/b/x",
                "jobsx",
                "open/a"
            ]
        );
        assert!(store.list("nothing/here/").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn multipart_concatenates_in_the_listed_order_and_abort_leaves_nothing() {
        let (_dir, store) = store();
        let id = store.start_upload("results/j/s.jsonl").await.unwrap();
        let mut parts = Vec::new();
        for (number, body) in [(2, &b"world"[..]), (1, b"hello ")] {
            let tag = store
                .upload_part("results/j/s.jsonl", &id, number, Bytes::from_static(body))
                .await
                .unwrap();
            parts.push((number, tag));
        }
        parts.sort();
        store
            .complete_upload("results/j/s.jsonl", &id, parts)
            .await
            .unwrap();
        let (meta, body) = store.get("results/j/s.jsonl").await.unwrap();
        assert_eq!(body, Bytes::from_static(b"hello world"));
        assert_eq!(meta.etag, content_tag(b"hello world"));

        let id = store.start_upload("results/j/e.jsonl").await.unwrap();
        store
            .upload_part("results/j/e.jsonl", &id, 1, Bytes::from_static(b"x"))
            .await
            .unwrap();
        store.abort_upload("results/j/e.jsonl", &id).await.unwrap();
        assert!(matches!(
            store
                .upload_part("results/j/e.jsonl", &id, 2, Bytes::from_static(b"y"))
                .await,
            Err(StoreError::NotFound { .. })
        ));
        let uploads = store.root().join(HIDDEN).join("uploads");
        assert_eq!(fs::read_dir(uploads).unwrap().count(), 0);
        assert_eq!(store.list("").await.unwrap(), ["results/j/s.jsonl"]);
    }

    #[tokio::test]
    async fn keys_that_are_not_plain_paths_are_refused() {
        let (_dir, store) = store();
        for key in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "a/./b",
            "a/",
            "a\\b",
            "a\0b",
            ".batchline/tmp/x",
        ] {
            match store.put(key, Bytes::new(), PutMode::Overwrite).await {
                Err(StoreError::Backend { key: named, .. }) => assert_eq!(named, key),
                other => panic!("{key:?}: {other:?}"),
            }
            assert!(store.get(key).await.is_err(), "{key:?}");
        }
        assert!(store.list("../").await.is_err());
        assert!(store.start_upload("a").await.is_ok());
        assert!(
            store
                .upload_part("a", "../x", 1, Bytes::new())
                .await
                .is_err()
        );
        assert!(store.list("").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn deleting_is_idempotent() {
        let (_dir, store) = store();
        store.delete("open/never").await.unwrap();
        put(&store, "open/j", b"").await;
        store.delete("open/j").await.unwrap();
        store.delete("open/j").await.unwrap();
        assert!(matches!(
            store.get("open/j").await,
            Err(StoreError::NotFound { .. })
        ));
        assert!(store.list("open/").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn large_objects_are_tagged_by_size_and_time_without_reading_them() {
        let (_dir, store) = store();
        let body = Bytes::from(vec![b'x'; HASHED_UP_TO as usize + 1]);
        let tag = store
            .put("inbox/big.jsonl", body.clone(), PutMode::Overwrite)
            .await
            .unwrap();
        assert!(tag.contains('-'), "{tag}");
        assert_eq!(store.head("inbox/big.jsonl", None).await.unwrap().etag, tag);
        assert_eq!(store.head("inbox/big.jsonl", None).await.unwrap().etag, tag);
        // Rewritten through the store: a new file, a new tag.
        let rewritten = store
            .put("inbox/big.jsonl", body, PutMode::Overwrite)
            .await
            .unwrap();
        assert_ne!(rewritten, tag);
        // Touched in place by the user: the same size, another modification time.
        let file = File::options()
            .write(true)
            .open(store.root().join("inbox/big.jsonl"))
            .unwrap();
        file.set_modified(UNIX_EPOCH).unwrap();
        let touched = store.head("inbox/big.jsonl", None).await.unwrap();
        assert_eq!(touched.size, HASHED_UP_TO + 1);
        assert_ne!(touched.etag, rewritten);
    }
}
