//! drfleet backup artifact format (container versions 1 and 2): a pure, synchronous,
//! streaming encoder/decoder for per-tenant PostgreSQL backups.
//!
//! The backup worker feeds tables' `COPY ... TO STDOUT` (TEXT) bytes into an
//! [`ArtifactWriter`], which frames, zstd-compresses, encrypts in chunks and
//! hashes them on the way to any [`std::io::Write`] sink. Restore and verify
//! workers get the COPY bytes back from an [`ArtifactReader`] over any
//! [`std::io::Read`] source. Nothing ever buffers a whole table or artifact:
//! memory is bounded by the chunk size plus zstd's window.
//!
//! The byte-level format is specified in `docs/artifact-format.md`.
//!
//! ```
//! use drfleet_artifact::*;
//! # fn main() -> Result<(), ArtifactError> {
//! let keyring = Keyring::new(MasterKey::new("k1", [7; 32]), vec![]);
//! let binding = ArtifactBinding {
//!     organization_id: uuid::Uuid::from_u128(1),
//!     backup_record_id: uuid::Uuid::from_u128(2),
//! };
//! let header = TableHeader {
//!     name: "public.users".into(),
//!     columns: vec![ColumnDef { name: "id".into(), data_type: "bigint".into(), nullable: false }],
//! };
//!
//! // Backup: any `Write` sink (the worker bridges it to a multipart upload).
//! let mut w = ArtifactWriter::new(Vec::new(), &keyring, binding, DEFAULT_ZSTD_LEVEL)?;
//! w.begin_table(&header)?;
//! w.write_rows(b"1\n2\n")?; // COPY TEXT bytes, any split points
//! w.end_table()?;
//! let (manifest, stored) = w.finish()?;
//! assert_eq!(manifest.row_count, 2);
//!
//! // Restore: any `Read` source.
//! let mut r = ArtifactReader::open(&stored[..], &keyring, binding)?;
//! while let Some(table) = r.next_table()? {
//!     while let Some(copy_bytes) = r.next_rows()? {
//!         // feed `copy_bytes` to COPY ... FROM STDIN for `table.name`
//!         # let _ = (&table, copy_bytes);
//!     }
//! }
//! assert_eq!(r.finish()?.tables, manifest.tables);
//!
//! // Verify: drain and compare against the stored manifest.
//! verify_against_manifest(&stored[..], &keyring, &manifest)?;
//! # Ok(()) }
//! ```
//!
//! # Modules (bottom-up)
//! - [`error`]: [`ArtifactError`] with stable `ARTIFACT_*` codes; its
//!   `Display` never contains key bytes or row data.
//! - [`hashing`]: SHA-256 helpers and [`HashingWriter`] / [`HashingReader`]
//!   (one-pass size + checksum of the stored bytes).
//! - [`keys`]: the key hierarchy — master keys, tenant keys ([`TenantKey`], stored wrapped
//!   by a master key), [`Keyring`] (current + previous wrapping keys, for rotation) and the
//!   per-artifact data key wrapping (container version 2 under a tenant key, 1 under a
//!   master key).
//! - [`manifest`]: [`ArtifactBinding`], [`TableHeader`], [`TableManifest`],
//!   [`Manifest`] — plain serde types shared with the workers.
//! - [`ddl`]: [`ddl::SchemaDdl`], the manifest's record of what recreates the tables
//!   (types, sequences, columns, constraints, indexes), relocatable.
//! - [`container`]: the outer layer — fixed prefix, JSON header, AES-256-GCM
//!   chunks with position/binding/header-bound AAD.
//! - [`frames`]: the plaintext frame stream inside zstd (TABLE_BEGIN, ROWS,
//!   TABLE_END, STREAM_END).
//! - [`writer`] / [`reader`]: the streaming pipelines tying the layers
//!   together, plus [`verify_against_manifest`].
//!
//! aws-lc-rs is the only crypto provider (AEAD, randomness and SHA-256); it
//! is already linked through sqlx's rustls, and mixing providers causes
//! trouble elsewhere in the workspace.

pub mod container;
pub mod ddl;
pub mod error;
pub mod frames;
pub mod hashing;
pub mod keys;
pub mod manifest;
pub mod reader;
pub mod writer;

#[cfg(test)]
mod testutil;

pub use error::ArtifactError;
pub use hashing::{HashingReader, HashingWriter};
pub use keys::{
    KeyScope, Keyring, MasterKey, TenantKey, WrappedTenantKey, parse_tenant_key_id, tenant_key_id,
};
pub use manifest::{
    ArtifactBinding, ColumnDef, Manifest, ReachHop, TableHeader, TableManifest, TableReach,
};
pub use reader::{
    ArtifactReader, ManifestCheck, ReadSummary, verify_against_manifest,
    verify_against_manifest_threaded, verify_sealed,
};
pub use writer::ArtifactWriter;

/// Container format version written by this build when the data key is wrapped by a tenant
/// key ([`keys::KeyScope::Tenant`]); 1 when a master key wraps it (artifacts written before
/// tenant keys, and writers given a master key).
pub const FORMAT_VERSION: u16 = 2;
/// Container format versions this build reads.
pub const FORMAT_VERSIONS_READ: std::ops::RangeInclusive<u16> = 1..=FORMAT_VERSION;

/// The container version whose data keys `scope` wraps.
pub fn container_version(scope: keys::KeyScope) -> u16 {
    match scope {
        keys::KeyScope::Master => 1,
        keys::KeyScope::Tenant => 2,
    }
}
/// Manifest format version written by this build: 2 added `schema` ([`ddl::SchemaDdl`]).
/// Independent of the container's [`FORMAT_VERSION`].
pub const MANIFEST_VERSION: u16 = 2;
/// Manifest format versions this build reads.
pub const MANIFEST_VERSIONS_READ: std::ops::RangeInclusive<u16> = 1..=MANIFEST_VERSION;
/// Compressed plaintext bytes per AEAD chunk.
pub const DEFAULT_CHUNK_SIZE: usize = 1 << 20;
/// zstd level recommended for backups (throughput over ratio).
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;
/// Value of `compression` in headers and manifests.
pub const COMPRESSION_NAME: &str = "zstd";
/// Value of `cipher` in headers and manifests.
pub const CIPHER_NAME: &str = "AES-256-GCM";
