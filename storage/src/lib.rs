//! # drfleet-storage — where artifacts live
//!
//! One [`ArtifactStore`] over object_store, for the local filesystem (default) or any
//! S3-compatible store; the same conformance tests run against both (`tests/conformance.rs`).
//!
//! - [`keys`]: object keys, derived only from organization id, backup record id and attempt
//!   (never from user text).
//! - [`ArtifactStore`]: streaming multipart upload with bounded buffering and backpressure,
//!   create-only puts (manifests are never overwritten), streaming download, delete, listing
//!   and deleting everything under a prefix (a backup's attempts).
//!
//! - [`metrics`]: errors counted by operation and kind (`drfleet_artifact_store_errors_total`).
//!
//! Errors ([`StorageError`]) carry a kind and say whether a retry can help; their Display
//! never includes endpoints or credentials.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{
    ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig, WriteMultipart,
};

use drfleet_infra::config::ObjectStoreLocation;

pub mod keys;
pub mod metrics;

/// Part size of multipart uploads (S3 needs ≥ 5 MiB for all but the last part).
pub const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts in flight at once: bounds upload memory to about PART_SIZE × (this + 1).
pub const PARTS_IN_FLIGHT: usize = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageErrorKind {
    NotFound,
    AlreadyExists,
    /// Network, timeouts, 5xx: may work later.
    Unavailable,
    /// Misconfiguration, permissions, anything a retry will not fix.
    Permanent,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("object store {op}: {kind:?}")]
pub struct StorageError {
    pub op: &'static str,
    pub kind: StorageErrorKind,
}

impl StorageError {
    pub fn is_transient(&self) -> bool {
        self.kind == StorageErrorKind::Unavailable
    }
    pub fn code(&self) -> &'static str {
        match self.kind {
            StorageErrorKind::NotFound => "OBJECT_NOT_FOUND",
            StorageErrorKind::AlreadyExists => "OBJECT_EXISTS",
            StorageErrorKind::Unavailable => "OBJECT_STORE_UNAVAILABLE",
            StorageErrorKind::Permanent => "OBJECT_STORE_ERROR",
        }
    }
}

fn classify(op: &'static str, e: object_store::Error) -> StorageError {
    use object_store::Error as E;
    let kind = match &e {
        E::NotFound { .. } => StorageErrorKind::NotFound,
        E::AlreadyExists { .. } | E::Precondition { .. } => StorageErrorKind::AlreadyExists,
        E::PermissionDenied { .. }
        | E::Unauthenticated { .. }
        | E::NotSupported { .. }
        | E::NotImplemented { .. }
        | E::InvalidPath { .. } => StorageErrorKind::Permanent,
        // Generic covers I/O and HTTP failures after object_store's own retries.
        _ => StorageErrorKind::Unavailable,
    };
    tracing::debug!(op, kind = ?kind, "object store error");
    metrics::count(op, kind);
    StorageError { op, kind }
}

/// Pieces of a local file read per blocking task.
const LOCAL_READ_CHUNK: u64 = 1 << 20;

/// `range` of a local file as a stream of pieces of up to [`LOCAL_READ_CHUNK`] bytes.
fn file_stream(
    file: std::fs::File,
    range: std::ops::Range<u64>,
) -> BoxStream<'static, Result<Bytes, StorageError>> {
    let unavailable = || {
        metrics::count("get", StorageErrorKind::Unavailable);
        StorageError {
            op: "get",
            kind: StorageErrorKind::Unavailable,
        }
    };
    futures::stream::try_unfold((file, range.start), move |(mut file, pos)| async move {
        if pos >= range.end {
            return Ok(None);
        }
        let want = (range.end - pos).min(LOCAL_READ_CHUNK) as usize;
        let (file, piece) = tokio::task::spawn_blocking(move || {
            use std::io::{Read, Seek, SeekFrom};
            file.seek(SeekFrom::Start(pos))?;
            let mut piece = vec![0u8; want];
            file.read_exact(&mut piece)?;
            Ok::<_, std::io::Error>((file, piece))
        })
        .await
        .map_err(|_| unavailable())?
        .map_err(|_| unavailable())?;
        Ok(Some((Bytes::from(piece), (file, pos + want as u64))))
    })
    .boxed()
}

/// Artifact storage. Cheap to clone.
#[derive(Clone)]
pub struct ArtifactStore {
    inner: Arc<dyn ObjectStore>,
}

impl std::fmt::Debug for ArtifactStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ArtifactStore")
    }
}

impl ArtifactStore {
    /// Open the configured store. For S3, credentials, region and endpoint come from the
    /// standard `AWS_*` variables (`AWS_ENDPOINT_URL` for S3-compatible stores).
    pub fn open(location: &ObjectStoreLocation) -> Result<Self, StorageError> {
        let err = |_| StorageError {
            op: "open",
            kind: StorageErrorKind::Permanent,
        };
        let inner: Arc<dyn ObjectStore> = match location {
            ObjectStoreLocation::Local(dir) => {
                std::fs::create_dir_all(dir).map_err(|_| StorageError {
                    op: "open",
                    kind: StorageErrorKind::Permanent,
                })?;
                Arc::new(LocalFileSystem::new_with_prefix(dir).map_err(err)?)
            }
            ObjectStoreLocation::S3 { bucket, prefix } => {
                let mut b = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(RetryConfig {
                        max_retries: 3,
                        retry_timeout: Duration::from_secs(30),
                        ..Default::default()
                    });
                if let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL") {
                    b = b
                        .with_allow_http(endpoint.starts_with("http://"))
                        .with_endpoint(endpoint);
                }
                let s3 = b.build().map_err(err)?;
                if prefix.is_empty() {
                    Arc::new(s3)
                } else {
                    Arc::new(PrefixStore::new(s3, prefix.as_str()))
                }
            }
        };
        Ok(Self { inner })
    }

    /// From an object_store directly (tests, embedding).
    pub fn from_store(inner: Arc<dyn ObjectStore>) -> Self {
        Self { inner }
    }

    /// Start a streaming multipart upload.
    pub async fn upload(&self, key: &Path) -> Result<Upload, StorageError> {
        let up = self
            .inner
            .put_multipart(key)
            .await
            .map_err(|e| classify("upload", e))?;
        Ok(Upload {
            writer: WriteMultipart::new_with_chunk_size(up, PART_SIZE),
            bytes: 0,
        })
    }

    /// Write a small object only if nothing is at `key` (manifests: never overwritten).
    /// Finding exactly `body` there already counts as written: the S3 client resends a put
    /// whose connection closed before the answer came, and that retry finds what the first
    /// one stored. Any other bytes are `AlreadyExists`.
    pub async fn put_create(&self, key: &Path, body: Bytes) -> Result<(), StorageError> {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .inner
            .put_opts(key, PutPayload::from_bytes(body.clone()), opts)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let err = classify("put", e);
                if err.kind != StorageErrorKind::AlreadyExists {
                    return Err(err);
                }
                let stored = self.get_bytes(key).await?;
                if stored == body {
                    tracing::debug!("create-only put found its own bytes (a retried put)");
                    Ok(())
                } else {
                    Err(err)
                }
            }
        }
    }

    /// Whole object (small objects only: manifests).
    pub async fn get_bytes(&self, key: &Path) -> Result<Bytes, StorageError> {
        let r = self.inner.get(key).await.map_err(|e| classify("get", e))?;
        r.bytes().await.map_err(|e| classify("get", e))
    }

    /// Streaming download.
    pub async fn get_stream(
        &self,
        key: &Path,
    ) -> Result<BoxStream<'static, Result<Bytes, StorageError>>, StorageError> {
        let r = self.inner.get(key).await.map_err(|e| classify("get", e))?;
        match r.payload {
            // object_store reads local files in 8 KiB pieces, one blocking task each; that
            // costs more than verifying the bytes. Read 1 MiB at a time instead.
            object_store::GetResultPayload::File(file, _) => Ok(file_stream(file, r.range)),
            object_store::GetResultPayload::Stream(s) => {
                Ok(s.map(|c| c.map_err(|e| classify("get", e))).boxed())
            }
        }
    }

    /// Size of an object.
    pub async fn size(&self, key: &Path) -> Result<u64, StorageError> {
        Ok(self
            .inner
            .head(key)
            .await
            .map_err(|e| classify("head", e))?
            .size)
    }

    pub async fn delete(&self, key: &Path) -> Result<(), StorageError> {
        match self.inner.delete(key).await {
            Ok(()) => Ok(()),
            Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(classify("delete", e)),
        }
    }

    /// Every object under `prefix` (recursively); none when nothing is there.
    pub async fn list(&self, prefix: &Path) -> Result<Vec<Path>, StorageError> {
        Ok(self
            .list_modified(prefix)
            .await?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }

    /// Like [`Self::list`], with each object's last modification time.
    pub async fn list_modified(
        &self,
        prefix: &Path,
    ) -> Result<Vec<(Path, std::time::SystemTime)>, StorageError> {
        use futures::TryStreamExt;
        match self
            .inner
            .list(Some(prefix))
            .map_ok(|m| (m.location, std::time::SystemTime::from(m.last_modified)))
            .try_collect::<Vec<_>>()
            .await
        {
            Ok(v) => Ok(v),
            Err(object_store::Error::NotFound { .. }) => Ok(Vec::new()),
            Err(e) => Err(classify("list", e)),
        }
    }

    /// Delete every object under `prefix`; returns how many there were.
    pub async fn delete_prefix(&self, prefix: &Path) -> Result<usize, StorageError> {
        let keys = self.list(prefix).await?;
        for k in &keys {
            self.delete(k).await?;
        }
        Ok(keys.len())
    }

    /// Overwrite (tests that simulate tampering use this; drfleet itself never overwrites).
    pub async fn put_overwrite(&self, key: &Path, body: Bytes) -> Result<(), StorageError> {
        self.inner
            .put(key, PutPayload::from_bytes(body))
            .await
            .map_err(|e| classify("put", e))?;
        Ok(())
    }
}

/// A multipart upload in progress. `write` waits when [`PARTS_IN_FLIGHT`] parts are being
/// sent, which is the backpressure the backup pipeline relies on.
pub struct Upload {
    writer: WriteMultipart,
    bytes: u64,
}

impl Upload {
    pub async fn write(&mut self, buf: &[u8]) -> Result<(), StorageError> {
        self.writer
            .wait_for_capacity(PARTS_IN_FLIGHT)
            .await
            .map_err(|e| classify("upload", e))?;
        self.writer.write(buf);
        self.bytes += buf.len() as u64;
        Ok(())
    }

    pub fn bytes_written(&self) -> u64 {
        self.bytes
    }

    pub async fn finish(self) -> Result<u64, StorageError> {
        self.writer
            .finish()
            .await
            .map_err(|e| classify("upload", e))?;
        Ok(self.bytes)
    }

    pub async fn abort(self) {
        let _ = self.writer.abort().await;
    }
}
