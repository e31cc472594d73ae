//! The engines the roles share; no role of its own, and it never imports a role (roles
//! import it).
//!
//! - [`catalog`], [`membership`], [`tenant_key`]: the tenant schema as the PostgreSQL catalog
//!   has it — which tables a tier covers, how their rows are the tenant's, the key's type.
//! - [`rowset`]: order-independent digests of COPY rows (backup vs read-back).
//! - [`shrink`]: the row-count drop guard of backups.
//! - [`schema`]: the manifest's DDL of the backed-up tables, read from the catalog and
//!   recreated (types, tables; then constraints and indexes), relocatable.
//! - [`staging`]: an artifact loaded into a staging schema, checked, optionally promoted.
//! - [`key_store`]: tenant keys, the middle of the key hierarchy (master → tenant → data key).
//!
//! [`RoleCtx`] holds what command roles and engines share: the tenant-data pool, the artifact
//! store, the master keys and the tenant layout settings.

pub mod catalog;
pub mod key_store;
pub mod membership;
pub mod rowset;
pub mod schema;
pub mod shrink;
pub mod staging;
pub mod tenant_key;

use std::sync::Arc;

use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use drfleet_artifact::{Keyring, MasterKey};
use drfleet_storage::ArtifactStore;

use crate::RunError;
use crate::config::WorkerConfig;
use crate::handler::JobError;

/// `std::io::Read` over chunks sent from the async side; used on a blocking thread.
pub(crate) struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Result<bytes::Bytes, std::io::Error>>,
    cur: bytes::Bytes,
}

impl ChannelReader {
    /// The end of the channel is the end of the input.
    pub(crate) fn new(
        rx: tokio::sync::mpsc::Receiver<Result<bytes::Bytes, std::io::Error>>,
    ) -> Self {
        Self {
            rx,
            cur: bytes::Bytes::new(),
        }
    }
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.cur.len());
        out[..n].copy_from_slice(&self.cur.split_to(n));
        Ok(n)
    }
}

/// Shared by the command roles of one process.
pub struct RoleCtx {
    /// Tenant data (DR_SOURCE_DATABASE_URL).
    pub source: sqlx::PgPool,
    /// DR_RESTORE_TARGETS: a lazy pool per named database a restore or drill may write.
    pub targets: std::collections::BTreeMap<String, sqlx::PgPool>,
    pub store: ArtifactStore,
    /// The master keys (current + previous). They wrap tenant keys ([`key_store`]) and open
    /// format-1 artifacts; a job wanting an artifact's key asks [`RoleCtx::reading_keyring`].
    pub keyring: Arc<Keyring>,
    pub tenant_column: String,
    pub tenant_schema: String,
    /// DR_TENANT_ROOT.
    pub tenant_root: Option<membership::TenantRoot>,
    /// See [`crate::config::WorkerConfig::restore_segment_bytes`].
    pub restore_segment_bytes: usize,
    /// See [`crate::config::WorkerConfig::staging_ttl`].
    pub staging_ttl: std::time::Duration,
    /// See [`crate::config::WorkerConfig::retention_orphan_grace`].
    pub retention_orphan_grace: std::time::Duration,
    /// The tenant key's type as last read from the catalog ([`tenant_key`]).
    pub key_type: tenant_key::KeyTypeCache,
}

impl RoleCtx {
    /// The pool of the restore target named `name` (DR_RESTORE_TARGETS), if configured.
    pub fn target(&self, name: &str) -> Option<&sqlx::PgPool> {
        self.targets.get(name)
    }

    /// The database a restore writes: the named target, or the source for none.
    pub fn database(&self, target: Option<&str>) -> Option<&sqlx::PgPool> {
        match target {
            None => Some(&self.source),
            Some(name) => self.target(name),
        }
    }

    /// The tenant schema's layout, for [`membership`].
    pub fn layout(&self) -> membership::Layout<'_> {
        membership::Layout {
            schema: &self.tenant_schema,
            tenant_column: &self.tenant_column,
            root: self.tenant_root.as_ref(),
        }
    }

    pub fn from_config(config: &WorkerConfig) -> Result<Self, RunError> {
        let keys = config
            .master_keys
            .as_ref()
            .ok_or_else(|| RunError::Role("master keys are required".into()))?;
        let keyring = Keyring::new(
            MasterKey::new(keys.current_id.clone(), *keys.current.expose()),
            keys.previous
                .iter()
                .map(|(id, k)| MasterKey::new(id.clone(), *k.expose()))
                .collect(),
        );
        let source = source_pool(config, "drfleet-worker-source", config.tenant_pool_size)?;
        let mut targets = std::collections::BTreeMap::new();
        for (name, url) in &config.restore_targets {
            let pool = lazy_pool(
                url.expose(),
                "drfleet-worker-target",
                config.tenant_pool_size,
            )
            .map_err(|_| RunError::Role("DR_RESTORE_TARGETS is invalid".into()))?;
            targets.insert(name.clone(), pool);
        }
        let store = ArtifactStore::open(&config.object_store)
            .map_err(|e| RunError::Role(format!("artifact store: {e}")))?;
        Ok(Self {
            source,
            targets,
            store,
            keyring: Arc::new(keyring),
            tenant_column: config.tenant_column.clone(),
            tenant_schema: config.tenant_schema.clone(),
            tenant_root: config.tenant_root.clone(),
            restore_segment_bytes: config.restore_segment_bytes,
            staging_ttl: config.staging_ttl,
            retention_orphan_grace: config.retention_orphan_grace,
            key_type: Default::default(),
        })
    }
}

/// A lazy pool on the tenant database (DR_SOURCE_DATABASE_URL): its outage fails (and
/// retries) the jobs that need it rather than the process.
pub(crate) fn source_pool(
    config: &WorkerConfig,
    application_name: &str,
    max_connections: u32,
) -> Result<sqlx::PgPool, RunError> {
    lazy_pool(
        config.source_database_url.expose(),
        application_name,
        max_connections,
    )
    .map_err(|_| RunError::Role("DR_SOURCE_DATABASE_URL is invalid".into()))
}

/// A lazy pool on a tenant database (the source or a restore target).
pub(crate) fn lazy_pool(
    url: &str,
    application_name: &str,
    max_connections: u32,
) -> Result<sqlx::PgPool, sqlx::Error> {
    let opts: PgConnectOptions = url.parse()?;
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect_lazy_with(
            opts.application_name(application_name)
                // Whole-table statements (staging checks, promotion) take seconds to
                // minutes by design; only warn when one runs unusually long.
                .log_slow_statements(log::LevelFilter::Warn, std::time::Duration::from_secs(600)),
        ))
}

/// Admission of a command naming one backup record (restore, verify, drill of a RECORD): the
/// record must be the organization's and completed. Another organization's record answers
/// exactly like a missing one (NOT_FOUND); one not completed is CONFLICT.
pub async fn admit_completed_record(
    tx: &mut sqlx::PgConnection,
    org: uuid::Uuid,
    record: uuid::Uuid,
) -> Result<(), crate::handler::AdmitError> {
    use drfleet_protocol::validate::{ReasonCode, Rejection};
    let status: Option<String> = sqlx::query_scalar(
        "SELECT status FROM pf_backup_records WHERE id = $1 AND organization_id = $2",
    )
    .bind(record)
    .bind(org)
    .fetch_optional(&mut *tx)
    .await?;
    let reject = |code, what| {
        Err(crate::handler::AdmitError::Reject(Rejection::new(
            code, what,
        )))
    };
    match status.as_deref() {
        None => reject(ReasonCode::NotFound, "backup record not found"),
        Some("completed") => Ok(()),
        Some(_) => reject(ReasonCode::Conflict, "backup record is not completed"),
    }
}

/// A tenant-database error, classified like any database error but coded apart from the
/// metadata database's.
pub(crate) fn source_error(e: &sqlx::Error) -> JobError {
    let mut j = JobError::db(e);
    j.code = "SOURCE_DATABASE_ERROR".into();
    j
}

impl From<drfleet_storage::StorageError> for JobError {
    fn from(e: drfleet_storage::StorageError) -> Self {
        JobError {
            code: e.code().into(),
            message: e.to_string().into(),
            transient: e.is_transient(),
        }
    }
}

impl From<drfleet_artifact::ArtifactError> for JobError {
    fn from(e: drfleet_artifact::ArtifactError) -> Self {
        JobError {
            code: e.code().into(),
            message: e.code().into(),
            transient: e.is_transient(),
        }
    }
}
