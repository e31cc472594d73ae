//! Tenant keys (`pf_tenant_keys`): the middle of the key hierarchy.
//!
//! Master key (DR_MASTER_KEY, never stored) → one key-encryption key per organization (random,
//! stored only wrapped by a master key) → one data key per artifact (in its header, wrapped by
//! the tenant key). A job unwraps the tenant key it needs into a [`Keyring`] of its own and
//! drops it when it ends: no process keeps unwrapped tenant keys between jobs.
//!
//! - [`RoleCtx::writing_keyring`]: the organization's active key (created on first use) for a
//!   new artifact.
//! - [`RoleCtx::reading_keyring`]: the key an artifact names (a format-1 artifact names a master
//!   key: the master keyring), or `KEY_DESTROYED` after a shred.
//! - [`load`], [`insert_active`]: the rows, for the keys role's rotation and shredding.

use std::sync::Arc;

use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use drfleet_artifact::{
    ArtifactError, Keyring, Manifest, MasterKey, TenantKey, WrappedTenantKey, parse_tenant_key_id,
    tenant_key_id,
};

use super::RoleCtx;
use crate::handler::JobError;

/// A stored tenant key row (still wrapped).
#[derive(Debug, Clone)]
pub struct StoredKey {
    pub id: Uuid,
    pub organization_id: Uuid,
    pub wrapped: WrappedTenantKey,
}

impl StoredKey {
    pub fn from_row(r: &sqlx::postgres::PgRow) -> Result<Self, JobError> {
        let malformed =
            || JobError::permanent("TENANT_KEY_MALFORMED", "a stored tenant key is malformed");
        let nonce: Vec<u8> = r.try_get("wrap_nonce")?;
        let sealed: Vec<u8> = r.try_get("wrapped_key")?;
        Ok(Self {
            id: r.try_get("id")?,
            organization_id: r.try_get("organization_id")?,
            wrapped: WrappedTenantKey {
                nonce: nonce.try_into().map_err(|_| malformed())?,
                sealed: sealed.try_into().map_err(|_| malformed())?,
                master_key_id: r.try_get("master_key_id")?,
            },
        })
    }

    /// Unwraps with the worker's master keys.
    pub fn open(&self, masters: &Keyring) -> Result<TenantKey, JobError> {
        TenantKey::unwrap(masters, self.id, self.organization_id, &self.wrapped).map_err(|e| {
            match e {
                // The artifact's codes: the key chain is part of opening the artifact.
                ArtifactError::UnknownKeyId { .. } => JobError::permanent(
                    "ARTIFACT_UNKNOWN_KEY_ID",
                    format!(
                        "tenant key {} is wrapped by master key {}, which this worker does not have (DR_MASTER_KEY, DR_PREVIOUS_MASTER_KEYS)",
                        self.id,
                        printable(&self.wrapped.master_key_id)
                    ),
                ),
                _ => JobError::permanent(
                    "ARTIFACT_KEY_UNWRAP_FAILED",
                    format!(
                        "tenant key {} does not open with master key {}",
                        self.id,
                        printable(&self.wrapped.master_key_id)
                    ),
                ),
            }
        })
    }
}

/// Master key ids come from configuration (printable by construction); bounded anyway.
fn printable(id: &str) -> String {
    id.chars().filter(|c| !c.is_control()).take(64).collect()
}

const COLUMNS: &str = "id, organization_id, wrapped_key, wrap_nonce, master_key_id";

/// The organization's active key row, if any.
pub async fn active(conn: &mut PgConnection, org: Uuid) -> Result<Option<StoredKey>, JobError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM pf_tenant_keys WHERE organization_id = $1 AND state = 'active'"
    )))
    .bind(org)
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(StoredKey::from_row).transpose()
}

/// One key row of the organization, whatever its state.
pub async fn load(
    conn: &mut PgConnection,
    org: Uuid,
    id: Uuid,
) -> Result<Option<StoredKey>, JobError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM pf_tenant_keys WHERE id = $1 AND organization_id = $2"
    )))
    .bind(id)
    .bind(org)
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(StoredKey::from_row).transpose()
}

/// Creates an active key for `org` under the current master key unless one exists (two jobs
/// racing both end up with the same one). Returns the active row.
pub async fn insert_active(
    conn: &mut PgConnection,
    masters: &Keyring,
    org: Uuid,
) -> Result<StoredKey, JobError> {
    let fresh = TenantKey::generate(Uuid::now_v7(), org).map_err(rng_failed)?;
    let current = current_master(masters)?;
    let wrapped = fresh.wrap(current).map_err(rng_failed)?;
    sqlx::query(
        "INSERT INTO pf_tenant_keys (id, organization_id, state, wrapped_key, wrap_nonce, master_key_id)
         VALUES ($1, $2, 'active', $3, $4, $5)
         ON CONFLICT (organization_id) WHERE state = 'active' DO NOTHING",
    )
    .bind(fresh.id)
    .bind(org)
    .bind(&wrapped.sealed[..])
    .bind(&wrapped.nonce[..])
    .bind(&wrapped.master_key_id)
    .execute(&mut *conn)
    .await?;
    active(conn, org).await?.ok_or_else(|| {
        JobError::transient(
            "TENANT_KEY_RACE",
            "the organization's key changed; retrying",
        )
    })
}

/// The keyring's current key as a master key (it wraps tenant keys).
pub fn current_master(masters: &Keyring) -> Result<&MasterKey, JobError> {
    masters
        .master(masters.current_id())
        .ok_or_else(|| JobError::permanent("MASTER_KEY_MISSING", "no current master key"))
}

fn rng_failed(_: ArtifactError) -> JobError {
    JobError::transient(
        "TENANT_KEY_GENERATION_FAILED",
        "a tenant key could not be generated",
    )
}

/// Why an artifact's key is gone.
pub fn key_destroyed() -> JobError {
    JobError::permanent(
        "KEY_DESTROYED",
        "the organization was crypto-shredded: the key of this backup was destroyed and it can no longer be decrypted",
    )
}

impl RoleCtx {
    /// A keyring whose current key is the organization's active tenant key (created on first
    /// use): a new artifact's data key is wrapped by it (container format 2). Also returns the
    /// key's id, for the backup's completion check.
    pub async fn writing_keyring(
        &self,
        meta: &PgPool,
        org: Uuid,
    ) -> Result<(Arc<Keyring>, Uuid), JobError> {
        let mut conn = meta.acquire().await?;
        let stored = match active(&mut conn, org).await? {
            Some(k) => k,
            None => insert_active(&mut conn, &self.keyring, org).await?,
        };
        let key = stored.open(&self.keyring)?;
        Ok((
            Arc::new(Keyring::new(MasterKey::tenant(&key), vec![])),
            stored.id,
        ))
    }

    /// The keyring that opens the artifact `manifest` describes: its tenant key (format 2), or
    /// the master keyring (format 1). `KEY_DESTROYED` when the organization was shredded.
    pub async fn reading_keyring(
        &self,
        meta: &PgPool,
        manifest: &Manifest,
    ) -> Result<Arc<Keyring>, JobError> {
        let org = manifest.organization_id;
        let mut conn = meta.acquire().await?;
        let shredded: Option<bool> = sqlx::query_scalar(
            "SELECT shredded_at IS NOT NULL FROM pf_backup_records WHERE id = $1 AND organization_id = $2",
        )
        .bind(manifest.backup_record_id)
        .bind(org)
        .fetch_optional(&mut *conn)
        .await?;
        if shredded == Some(true) {
            return Err(key_destroyed());
        }
        let Some(id) = parse_tenant_key_id(&manifest.key_id) else {
            return Ok(self.keyring.clone());
        };
        match load(&mut conn, org, id).await? {
            Some(stored) => {
                let key = stored.open(&self.keyring)?;
                debug_assert_eq!(tenant_key_id(key.id), manifest.key_id);
                Ok(Arc::new(Keyring::new(MasterKey::tenant(&key), vec![])))
            }
            None => {
                let destroyed: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM pf_destroyed_tenant_keys WHERE id = $1)",
                )
                .bind(id)
                .fetch_one(&mut *conn)
                .await?;
                Err(if destroyed {
                    key_destroyed()
                } else {
                    JobError::permanent(
                        "TENANT_KEY_MISSING",
                        format!("tenant key {id} named by the backup is not in pf_tenant_keys"),
                    )
                })
            }
        }
    }
}
