//! The crate's single error type.
//!
//! Every variant has a stable machine-readable code (`ARTIFACT_*`) that the
//! workers persist on the backup record. `Display` output is built only from
//! the code, static text, small integers and identifiers (UUIDs, key ids):
//! it never contains key material or row data, so errors can be logged and
//! stored freely.

use std::io;

use uuid::Uuid;

/// Errors produced while writing, reading or verifying an artifact.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ArtifactError {
    /// The underlying sink/source failed. Only the [`io::ErrorKind`] is kept:
    /// io error messages are not ours to control.
    #[error("ARTIFACT_IO: i/o error ({kind:?})")]
    Io { kind: io::ErrorKind },

    /// The stored bytes do not start with the artifact magic.
    #[error("ARTIFACT_BAD_MAGIC: not a drfleet artifact")]
    BadMagic,

    /// The container format version is not one this build can read.
    #[error("ARTIFACT_UNSUPPORTED_VERSION: format version {found} is not supported")]
    UnsupportedVersion { found: u16 },

    /// The artifact's data key was wrapped with a master key that is not in
    /// the keyring (neither current nor previous).
    #[error("ARTIFACT_UNKNOWN_KEY_ID: master key id {key_id:?} is not in the keyring")]
    UnknownKeyId { key_id: String },

    /// A master key with the right id exists, but the wrapped data key did not
    /// authenticate under it (wrong key material, or header tampering).
    #[error(
        "ARTIFACT_KEY_UNWRAP_FAILED: data key could not be unwrapped with master key {key_id:?}"
    )]
    KeyUnwrapFailed { key_id: String },

    /// The artifact belongs to a different tenant and/or backup record.
    #[error(
        "ARTIFACT_BINDING_MISMATCH: artifact is bound to organization {found_organization_id} / record {found_backup_record_id}, expected {expected_organization_id} / {expected_backup_record_id}"
    )]
    BindingMismatch {
        expected_organization_id: Uuid,
        expected_backup_record_id: Uuid,
        found_organization_id: Uuid,
        found_backup_record_id: Uuid,
    },

    /// A chunk failed AEAD authentication: modified, reordered, dropped,
    /// transplanted from another artifact, or the header was modified.
    #[error("ARTIFACT_CHUNK_AUTH_FAILED: chunk {chunk_index} failed authentication")]
    ChunkAuthFailed { chunk_index: u64 },

    /// The stored bytes ended before the terminal chunk.
    #[error("ARTIFACT_TRUNCATED: artifact ends prematurely ({context})")]
    Truncated { context: &'static str },

    /// Bytes follow the terminal chunk.
    #[error("ARTIFACT_TRAILING_DATA: unexpected bytes after the final chunk")]
    TrailingData,

    /// Malformed container framing, header, plaintext frames or zstd data.
    #[error("ARTIFACT_CORRUPT_STREAM: {detail}")]
    CorruptStream { detail: &'static str },

    /// A table's rows do not match its in-stream trailer or the manifest.
    /// Tables are identified by their position (0-based) in the artifact.
    #[error("ARTIFACT_TABLE_MISMATCH: table #{table_index}: {detail}")]
    TableMismatch {
        table_index: usize,
        detail: &'static str,
    },

    /// An artifact-level property differs from the manifest.
    #[error("ARTIFACT_MANIFEST_MISMATCH: {detail}")]
    ManifestMismatch { detail: &'static str },

    /// The manifest JSON could not be parsed.
    #[error("ARTIFACT_BAD_MANIFEST: manifest JSON is invalid (line {line}, column {column})")]
    BadManifest { line: usize, column: usize },

    /// Master key material is malformed (bad base64, wrong length).
    #[error("ARTIFACT_BAD_KEY: {detail}")]
    BadKey { detail: &'static str },

    /// A caller-supplied argument is out of range (chunk size, zstd level,
    /// oversized table header, ...).
    #[error("ARTIFACT_INVALID_ARGUMENT: {detail}")]
    InvalidArgument { detail: &'static str },

    /// Methods were called in an order the API does not allow (for example
    /// `write_rows` before `begin_table`).
    #[error("ARTIFACT_INVALID_STATE: {detail}")]
    InvalidState { detail: &'static str },
}

impl ArtifactError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Io { .. } => "ARTIFACT_IO",
            Self::BadMagic => "ARTIFACT_BAD_MAGIC",
            Self::UnsupportedVersion { .. } => "ARTIFACT_UNSUPPORTED_VERSION",
            Self::UnknownKeyId { .. } => "ARTIFACT_UNKNOWN_KEY_ID",
            Self::KeyUnwrapFailed { .. } => "ARTIFACT_KEY_UNWRAP_FAILED",
            Self::BindingMismatch { .. } => "ARTIFACT_BINDING_MISMATCH",
            Self::ChunkAuthFailed { .. } => "ARTIFACT_CHUNK_AUTH_FAILED",
            Self::Truncated { .. } => "ARTIFACT_TRUNCATED",
            Self::TrailingData => "ARTIFACT_TRAILING_DATA",
            Self::CorruptStream { .. } => "ARTIFACT_CORRUPT_STREAM",
            Self::TableMismatch { .. } => "ARTIFACT_TABLE_MISMATCH",
            Self::ManifestMismatch { .. } => "ARTIFACT_MANIFEST_MISMATCH",
            Self::BadManifest { .. } => "ARTIFACT_BAD_MANIFEST",
            Self::BadKey { .. } => "ARTIFACT_BAD_KEY",
            Self::InvalidArgument { .. } => "ARTIFACT_INVALID_ARGUMENT",
            Self::InvalidState { .. } => "ARTIFACT_INVALID_STATE",
        }
    }

    /// Whether retrying the whole operation may succeed. Only I/O failures of
    /// a transient kind qualify; every integrity/format/key problem is
    /// permanent.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Io { kind } => matches!(
                kind,
                io::ErrorKind::Interrupted
                    | io::ErrorKind::TimedOut
                    | io::ErrorKind::WouldBlock
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::NotConnected
            ),
            _ => false,
        }
    }

    /// Maps an error from reading stored bytes: a premature EOF is truncation.
    pub(crate) fn from_read(err: io::Error, context: &'static str) -> Self {
        if err.kind() == io::ErrorKind::UnexpectedEof {
            Self::Truncated { context }
        } else {
            Self::Io { kind: err.kind() }
        }
    }
}

impl From<io::Error> for ArtifactError {
    fn from(err: io::Error) -> Self {
        Self::Io { kind: err.kind() }
    }
}

/// Key ids read from an (untrusted, possibly tampered) header are only echoed
/// into errors when they look like ids.
pub(crate) fn printable_key_id(key_id: &str) -> String {
    let ok =
        !key_id.is_empty() && key_id.len() <= 128 && key_id.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        key_id.to_owned()
    } else {
        "<unprintable>".to_owned()
    }
}
