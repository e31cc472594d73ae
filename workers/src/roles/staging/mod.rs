//! The staging engine: an artifact loaded into a staging schema, checked, and optionally
//! promoted over the tenant's live rows. The restore role drives it (the drill role will too);
//! it is no role itself.
//!
//! - [`load`]: the tables streamed into `dr_restore_<id>` in foreign-key order, large ones in
//!   segments, each committed segment read back while the next one loads.
//! - [`checks`]: read-back digests, foreign keys closed within the backup, schema
//!   compatibility of the backup with the live tables.
//! - [`promote`]: the swap of the tenant's live rows for the staged ones, and what it
//!   guarantees (see its docs).
//!
//! Every phase ticks the job's [`Progress`], so a phase that hangs is ended by the runtime's
//! stall watchdog rather than kept alive by the job's heartbeat, and every helper task is
//! aborted when the phase that spawned it ends, whatever way it ends.

pub mod checks;
pub mod load;
pub mod promote;

use std::sync::Arc;
use tracing::Instrument as _;

use futures::StreamExt;
use sqlx::PgConnection;
use tokio::sync::mpsc;

use drfleet_artifact::Manifest;

use super::catalog::quote_ident;
use super::{ChannelReader, RoleCtx, source_error};
use crate::handler::{JobError, Progress};

/// One integrity check, as stored in `pf_restore_jobs.checks`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    pub name: &'static str,
    pub passed: bool,
    pub detail: String,
}

impl Check {
    pub fn new(name: &'static str, problems: Vec<String>) -> Self {
        Self {
            name,
            passed: problems.is_empty(),
            detail: problems.join("; "),
        }
    }

    /// A failed check recording why a phase stopped (the error's sanitized message).
    pub fn failed(name: &'static str, err: &JobError) -> Self {
        Self {
            name,
            passed: false,
            detail: format!("{}: {}", err.code, err.message),
        }
    }
}

/// A foreign key between two backed-up tables: child, its columns, parent, its columns.
pub type ForeignKey = (String, Vec<String>, String, Vec<String>);

/// Staging schema of a restore job: `dr_restore_` + the random tail of its id.
pub fn schema_name(job_id: uuid::Uuid) -> String {
    let hex = job_id.simple().to_string();
    format!("dr_restore_{}", &hex[20..])
}

/// Schema of the later segments of large staging tables (see [`load`]).
pub fn parts_schema(staging: &str) -> String {
    format!("{staging}_parts")
}

/// Drops a staging schema and its parts schema, whichever exist.
pub fn drop_sql(staging: &str) -> String {
    format!(
        "DROP SCHEMA IF EXISTS {}, {} CASCADE",
        quote_ident(staging),
        quote_ident(&parts_schema(staging))
    )
}

/// One staging schema being built for one organization's backup.
#[derive(Clone)]
pub struct Stage {
    pub ctx: Arc<RoleCtx>,
    /// `dr_restore_<…>`.
    pub schema: String,
    /// The organization id (metadata, fault points).
    pub org: uuid::Uuid,
    /// The tenant key and its column type: what selects and checks the tenant's rows.
    pub key: drfleet_protocol::tenant::TenantKey,
    pub key_type: drfleet_protocol::tenant::KeyType,
    pub progress: Progress,
}

impl Stage {
    /// Drop the staging schema (best effort: a failed drop is logged; the job's next attempt
    /// or its final failure drops it again).
    pub async fn drop(&self) {
        drop_schema(&self.ctx, &self.schema).await
    }

    /// Create the staging schema, load the artifact into it and check it. Returns the checks
    /// and the rows loaded. The schema is left as it is on error (the caller drops it).
    pub async fn build(
        &self,
        conn: &mut PgConnection,
        object_key: &str,
        manifest: &Manifest,
    ) -> Result<(Vec<Check>, u64), JobError> {
        let started = std::time::Instant::now();
        let sq = quote_ident(&self.schema);
        src(
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {sq}")))
                .execute(&mut *conn)
                .await,
        )?;
        // Per-restore seed of the row digests (see `rowset`).
        let seed = uuid::Uuid::new_v4().as_u64_pair().0;
        let names: Vec<String> = manifest.tables.iter().map(|t| t.name.clone()).collect();
        let fks = checks::foreign_keys(&self.ctx, conn, &names).await?;
        let loaded = load::load(self, conn, object_key, manifest, seed, &fks)
            .instrument(tracing::info_span!("restore.load"))
            .await?;
        let load_ms = started.elapsed().as_millis() as u64;
        let out = checks::integrity_checks(self, manifest, loaded, &fks)
            .instrument(tracing::info_span!("restore.checks"))
            .await?;
        tracing::info!(
            load_ms,
            checks_ms = started.elapsed().as_millis() as u64 - load_ms,
            "restore staged"
        );
        Ok(out)
    }
}

/// Drop `staging` and its parts (best effort, bounded).
pub async fn drop_schema(ctx: &RoleCtx, staging: &str) {
    let dropped = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        sqlx::query(sqlx::AssertSqlSafe(drop_sql(staging))).execute(&ctx.source),
    )
    .await;
    if !matches!(dropped, Ok(Ok(_))) {
        tracing::warn!(staging, "could not drop the staging schema");
    }
}

pub(crate) fn src<T>(r: Result<T, sqlx::Error>) -> Result<T, JobError> {
    r.map_err(|e| source_error(&e))
}

/// Stream an object into a bounded channel for a blocking reader. Returns the reader and the
/// pump future (run it concurrently with the reader; it ends when the reader is dropped).
pub(crate) async fn object_reader(
    ctx: &RoleCtx,
    key: &str,
    progress: &Progress,
) -> Result<
    (
        ChannelReader,
        impl std::future::Future<Output = Result<(), JobError>> + use<>,
    ),
    JobError,
> {
    let path = drfleet_storage::keys::parse(key)?;
    let mut stream = ctx.store.get_stream(&path).await?;
    let (tx, rx) = mpsc::channel(8);
    let progress = progress.clone();
    let pump = async move {
        while let Some(chunk) = stream.next().await {
            progress.tick();
            match chunk {
                Ok(b) => {
                    if tx.send(Ok(b)).await.is_err() {
                        return Ok(()); // the reader stopped; it reports why
                    }
                }
                Err(e) => {
                    let _ = tx
                        .send(Err(std::io::Error::other("object store read failed")))
                        .await;
                    return Err(JobError::from(e));
                }
            }
        }
        Ok(())
    };
    Ok((ChannelReader::new(rx), pump))
}
