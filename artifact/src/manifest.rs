//! Plain data types shared by writer, reader and workers: the artifact
//! binding, table headers, and the manifest stored next to each artifact.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::error::ArtifactError;
use crate::hashing::Sha256;

/// Binds an artifact to a tenant and a backup record. Both ids are
/// authenticated (data-key AAD and every chunk's AAD), so an artifact cannot
/// be replayed as another tenant's or another record's backup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArtifactBinding {
    pub organization_id: Uuid,
    pub backup_record_id: Uuid,
}

/// One column of a table section.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ColumnDef {
    pub name: String,
    /// Type as rendered by PostgreSQL, e.g. `format_type()` output.
    pub data_type: String,
    pub nullable: bool,
}

/// Describes one table section.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TableHeader {
    /// Schema-qualified or bare table name.
    pub name: String,
    pub columns: Vec<ColumnDef>,
}

/// Domain separation prefix of the schema fingerprint.
const FINGERPRINT_PREFIX: &[u8] = b"drfleet-schema-v1\0";

impl TableHeader {
    /// Lowercase hex SHA-256 over a canonical, length-prefixed encoding of
    /// the columns (see `docs/artifact-format.md`). The table name is not
    /// included: the fingerprint answers "same column layout?".
    pub fn schema_fingerprint(&self) -> String {
        schema_fingerprint(&self.columns)
    }
}

pub(crate) fn schema_fingerprint(columns: &[ColumnDef]) -> String {
    let mut h = Sha256::new();
    h.update(FINGERPRINT_PREFIX);
    h.update(&(columns.len() as u32).to_be_bytes());
    for c in columns {
        h.update(&(c.name.len() as u32).to_be_bytes());
        h.update(c.name.as_bytes());
        h.update(&(c.data_type.len() as u32).to_be_bytes());
        h.update(c.data_type.as_bytes());
        h.update(&[u8::from(c.nullable)]);
    }
    hex::encode(h.finish())
}

/// Per-table manifest entry.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TableManifest {
    pub name: String,
    /// Number of `\n` bytes in the table's COPY text.
    pub row_count: u64,
    /// Lowercase hex SHA-256 of the table's plaintext COPY bytes.
    pub sha256: String,
    pub schema_fingerprint: String,
    pub columns: Vec<ColumnDef>,
    /// How the table's rows belong to the tenant (set by the backup; absent in manifests
    /// written before tenant membership by foreign keys, whose tables all had the tenant
    /// column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reach: Option<TableReach>,
}

/// How a backed-up table's rows belong to the tenant.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "via", rename_all = "snake_case")]
pub enum TableReach {
    /// `column` holds the tenant id.
    TenantColumn { column: String },
    /// The tenant root table: `column` (its key) is the tenant id.
    Root { column: String },
    /// Along foreign keys, child to parent, to a table whose `column` holds the tenant id.
    Path { hops: Vec<ReachHop>, column: String },
}

/// One foreign key of a [`TableReach::Path`]: `columns` of the table before it reference
/// `parent_columns` of `parent`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReachHop {
    pub constraint: String,
    pub columns: Vec<String>,
    pub parent: String,
    pub parent_columns: Vec<String>,
}

/// Written next to the artifact as its own object and stored with the
/// backup record.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    /// [`crate::MANIFEST_VERSION`] when written; format 1 manifests (no `schema`) still read.
    pub format_version: u16,
    pub organization_id: Uuid,
    pub backup_record_id: Uuid,
    /// Id of the key that wrapped the data key: a tenant key (`tenant:<uuid>`, container
    /// format 2) or a master key (format 1).
    pub key_id: String,
    /// In the order written (= FK order).
    pub tables: Vec<TableManifest>,
    pub row_count: u64,
    /// Size of the stored (encrypted) artifact in bytes.
    pub byte_size: u64,
    /// Lowercase hex SHA-256 of the stored bytes.
    pub checksum_sha256: String,
    /// Always `"zstd"`.
    pub compression: String,
    /// Always `"AES-256-GCM"`.
    pub cipher: String,
    /// Compressed plaintext bytes per AEAD chunk.
    pub chunk_size: u32,
    #[serde(default)]
    pub snapshot_at: Option<DateTime<Utc>>,
    /// Free-form metadata; not interpreted by this crate.
    #[serde(default)]
    pub extra: serde_json::Map<String, Value>,
    /// What recreates the tables on an empty database (format 2; absent in format 1
    /// manifests, whose tables can only be restored where they exist).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<crate::ddl::SchemaDdl>,
}

impl Manifest {
    /// Pretty-printed JSON.
    pub fn to_json(&self) -> Vec<u8> {
        // Only string-keyed maps and plain values: serialization cannot fail.
        serde_json::to_vec_pretty(self).expect("manifest serializes to JSON")
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, ArtifactError> {
        // serde_json's messages can quote input; keep only the position.
        serde_json::from_slice(bytes).map_err(|e| ArtifactError::BadManifest {
            line: e.line(),
            column: e.column(),
        })
    }

    /// The binding recorded in the manifest.
    pub fn binding(&self) -> ArtifactBinding {
        ArtifactBinding {
            organization_id: self.organization_id,
            backup_record_id: self.backup_record_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, ty: &str, nullable: bool) -> ColumnDef {
        ColumnDef {
            name: name.into(),
            data_type: ty.into(),
            nullable,
        }
    }

    #[test]
    fn fingerprint_is_sensitive_to_every_field_and_order() {
        let base = TableHeader {
            name: "public.t".into(),
            columns: vec![col("id", "uuid", false), col("note", "text", true)],
        };
        let fp = base.schema_fingerprint();
        assert_eq!(fp.len(), 64);
        assert!(
            fp.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        // Table name does not matter.
        let mut renamed = base.clone();
        renamed.name = "other".into();
        assert_eq!(renamed.schema_fingerprint(), fp);

        let variants = [
            vec![col("id", "uuid", false), col("note", "text", false)],
            vec![col("id", "uuid", false), col("note", "varchar", true)],
            vec![col("id", "uuid", false), col("notes", "text", true)],
            vec![col("note", "text", true), col("id", "uuid", false)],
            vec![col("id", "uuid", false)],
            // Boundary shifting must not collide thanks to length prefixes.
            vec![col("id", "uuid", false), col("notet", "ext", true)],
        ];
        for v in variants {
            let t = TableHeader {
                name: "public.t".into(),
                columns: v,
            };
            assert_ne!(t.schema_fingerprint(), fp, "{t:?}");
        }
    }

    #[test]
    fn fingerprint_known_answer() {
        // Pins the canonical encoding documented in docs/artifact-format.md.
        let t = TableHeader {
            name: "x".into(),
            columns: vec![col("a", "int4", true)],
        };
        let mut enc = Vec::new();
        enc.extend_from_slice(b"drfleet-schema-v1\0");
        enc.extend_from_slice(&1u32.to_be_bytes());
        enc.extend_from_slice(&1u32.to_be_bytes());
        enc.extend_from_slice(b"a");
        enc.extend_from_slice(&4u32.to_be_bytes());
        enc.extend_from_slice(b"int4");
        enc.push(1);
        assert_eq!(t.schema_fingerprint(), hex::encode(Sha256::digest(&enc)));
    }

    #[test]
    fn manifest_json_defaults_and_errors() {
        let json =
            br#"{"format_version":1,"organization_id":"00000000-0000-0000-0000-000000000001",
            "backup_record_id":"00000000-0000-0000-0000-000000000002","key_id":"k",
            "tables":[],"row_count":0,"byte_size":10,"checksum_sha256":"00",
            "compression":"zstd","cipher":"AES-256-GCM","chunk_size":64}"#;
        let m = Manifest::from_json(json).unwrap();
        assert_eq!(m.snapshot_at, None);
        assert!(m.extra.is_empty());
        assert_eq!(Manifest::from_json(&m.to_json()).unwrap(), m);

        let err = Manifest::from_json(br#"{"format_version":"SECRET-VALUE"}"#).unwrap_err();
        assert_eq!(err.code(), "ARTIFACT_BAD_MANIFEST");
        assert!(!err.to_string().contains("SECRET"));
    }
}
