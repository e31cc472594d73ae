//! The staging engine: an artifact loaded into a staging schema, checked, and optionally
//! promoted over the tenant's live rows. The restore role drives it (the drill role will too);
//! it is no role itself. A [`Stage`] writes one database ([`Stage::db`]: the source or a
//! named restore target) and times each phase ([`PhaseTimings`]).
//!
//! - [`verify_sealed`]: the stored object checked against the manifest before any row is
//!   written (size, SHA-256, every chunk's AEAD tag).
//! - Tables come from the live tables (`LIKE`, [`Tables::Like`]) or from the manifest's DDL
//!   ([`Tables::Recreate`]: types and sequences, then each table created where it is loaded,
//!   then constraints and indexes after the checks — a drill's scratch copy).
//! - [`load`]: the tables streamed into `dr_restore_<id>` in foreign-key order, large ones in
//!   segments, each committed segment read back while the next one loads.
//! - [`checks`]: read-back digests, foreign keys closed within the backup, schema
//!   compatibility of the backup with the live tables. A recreated stage's foreign keys are
//!   checked by PostgreSQL itself as they are recreated (the same test: every key without a
//!   NULL has its parent row), and counted only to say which are open when that fails.
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

use std::time::Instant;
use tracing::Instrument as _;

use futures::StreamExt;
use sqlx::{PgConnection, PgPool};
use tokio::sync::mpsc;

use drfleet_artifact::Manifest;
use drfleet_artifact::ddl::{ConstraintKind, SchemaDdl};

use super::catalog::quote_ident;
use super::schema::{Placement, recreate};
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

/// Where the staging tables' definitions come from.
#[derive(Clone, Debug)]
pub enum Tables {
    /// Each staging table is created `LIKE` the live table of `live_schema` (a restore).
    /// `recreated`: the live tables were just created from the manifest
    /// ([`recreate::create_tables`]), so their keys do not exist yet and the foreign keys
    /// checked are the manifest's.
    Like {
        live_schema: String,
        recreated: bool,
    },
    /// Everything is created from the manifest's DDL in the stage's own schema (a drill's
    /// scratch copy): types and sequences first, each table where it is loaded (UNLOGGED, one
    /// segment), constraints and indexes after the checks passed. Never promoted.
    Recreate,
}

/// How long each phase took, in ms (0: the phase did not run). The drill's RTO phases.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PhaseTimings {
    /// Fetching the artifact and its sealed pass ([`verify_sealed`]).
    pub fetch_ms: u64,
    /// The schema compatibility check, or recreating types, sequences (and tables).
    pub schema_ms: u64,
    /// Streaming the rows into the staging tables.
    pub load_ms: u64,
    /// The integrity checks after the load (read-backs finishing, foreign keys, scope).
    pub checks_ms: u64,
    /// Recreated constraints, indexes and sequences (phase 2, after the data).
    pub constraints_ms: u64,
    /// The promotion (PROMOTE restores only).
    pub promote_ms: u64,
}

/// What [`Stage::build`] produced.
#[derive(Debug, Clone)]
pub struct Built {
    pub checks: Vec<Check>,
    /// Rows loaded.
    pub rows: u64,
    /// `schema_ms` (recreation only), `load_ms`, `checks_ms`, `constraints_ms` set.
    pub timings: PhaseTimings,
}

impl Built {
    /// Every check passed.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }
}

/// One staging schema being built for one organization's backup.
#[derive(Clone)]
pub struct Stage {
    pub ctx: Arc<RoleCtx>,
    /// The database written: the source, or a restore target ([`RoleCtx::database`]).
    pub db: PgPool,
    /// `dr_restore_<…>` (or a drill's scratch schema).
    pub schema: String,
    pub tables: Tables,
    /// The organization id (metadata, fault points).
    pub org: uuid::Uuid,
    /// The tenant key and its column type: what selects and checks the tenant's rows.
    pub key: drfleet_protocol::tenant::TenantKey,
    pub key_type: drfleet_protocol::tenant::KeyType,
    /// Opens the artifact ([`RoleCtx::reading_keyring`]): held for this job only.
    pub keyring: Arc<drfleet_artifact::Keyring>,
    pub progress: Progress,
}

impl Stage {
    /// Drop the staging schema (best effort: a failed drop is logged; the job's next attempt
    /// or its final failure drops it again).
    pub async fn drop(&self) {
        drop_schema(&self.db, &self.schema).await
    }

    /// The schema holding the live tables (promotion's target); a recreated stage is its own.
    pub fn live_schema(&self) -> &str {
        match &self.tables {
            Tables::Like { live_schema, .. } => live_schema,
            Tables::Recreate => &self.schema,
        }
    }

    /// Create the staging schema, load the artifact into it and check it ([`Tables::Recreate`]:
    /// also create the types first and the constraints and indexes last, when the checks
    /// passed). The schema is left as it is on error (the caller drops it). `conn` is on
    /// [`Stage::db`].
    pub async fn build(
        &self,
        conn: &mut PgConnection,
        object_key: &str,
        manifest: &Manifest,
    ) -> Result<Built, JobError> {
        let mut timings = PhaseTimings::default();
        let sq = quote_ident(&self.schema);
        let recreate = matches!(self.tables, Tables::Recreate);
        let ddl = match (&self.tables, &manifest.schema) {
            (Tables::Recreate, None) => return Err(schema_not_recorded()),
            (_, ddl) => ddl.as_ref(),
        };
        src(
            // (A drill may have created its scratch schema already, to record it.)
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "CREATE SCHEMA IF NOT EXISTS {sq}"
            )))
            .execute(&mut *conn)
            .await,
        )?;
        let mut checks = Vec::new();
        if let (true, Some(ddl)) = (recreate, ddl) {
            timings.schema_ms = recreate::create_types(conn, ddl, &self.placement()).await?;
            checks.push(Check {
                name: "schema_recreated",
                passed: true,
                detail: format!(
                    "{} types, {} sequences, {} tables",
                    ddl.types.len(),
                    ddl.sequences.len(),
                    ddl.tables.len()
                ),
            });
        }
        let started = Instant::now();
        // Per-restore seed of the row digests (see `rowset`).
        let seed = uuid::Uuid::new_v4().as_u64_pair().0;
        let names: Vec<String> = manifest.tables.iter().map(|t| t.name.clone()).collect();
        let fks = match (&self.tables, ddl) {
            (
                Tables::Like {
                    recreated: false,
                    live_schema,
                },
                _,
            ) => checks::foreign_keys(conn, live_schema, &names).await?,
            (_, Some(ddl)) => manifest_foreign_keys(ddl),
            (_, None) => Vec::new(),
        };
        let loaded = load::load(self, conn, object_key, manifest, seed, &fks)
            .instrument(tracing::info_span!("restore.load"))
            .await?;
        timings.load_ms = started.elapsed().as_millis() as u64;
        let started = Instant::now();
        // A recreated stage's keys are checked by recreating them (below).
        let counted = (!recreate).then_some(fks.as_slice());
        let (staged, rows) = checks::integrity_checks(self, manifest, loaded, counted, seed)
            .instrument(tracing::info_span!("restore.checks"))
            .await?;
        timings.checks_ms = started.elapsed().as_millis() as u64;
        checks.extend(staged);
        if let (true, Some(ddl)) = (recreate, ddl) {
            let started = Instant::now();
            checks.extend(self.recreate_keys(conn, ddl, &fks, &checks).await?);
            timings.constraints_ms = started.elapsed().as_millis() as u64;
        }
        tracing::info!(
            load_ms = timings.load_ms,
            checks_ms = timings.checks_ms,
            schema_ms = timings.schema_ms,
            constraints_ms = timings.constraints_ms,
            "restore staged"
        );
        Ok(Built {
            checks,
            rows,
            timings,
        })
    }

    /// A recreated stage's phase 2 ([`recreate::create_constraints`]) once the checks so far
    /// passed, and the `foreign_keys_closed` and `constraints_recreated` checks. Creating a
    /// foreign key validates every row against its parent — what `foreign_keys_closed` counts
    /// — so when phase 2 succeeds the keys are closed without a count of their own. When it
    /// fails, or is not attempted, the dangling references are counted: a key they leave open
    /// is the finding (as before, no `constraints_recreated`); otherwise the failure is
    /// `constraints_recreated`'s.
    async fn recreate_keys(
        &self,
        conn: &mut PgConnection,
        ddl: &SchemaDdl,
        fks: &[ForeignKey],
        so_far: &[Check],
    ) -> Result<Vec<Check>, JobError> {
        let failed = if so_far.iter().all(|c| c.passed) {
            match recreate::create_constraints(conn, ddl, &self.placement()).await {
                Ok(t) => {
                    return Ok(vec![
                        Check {
                            name: "foreign_keys_closed",
                            passed: true,
                            detail: format!(
                                "{} foreign keys validated as they were recreated",
                                fks.len()
                            ),
                        },
                        Check {
                            name: "constraints_recreated",
                            passed: true,
                            detail: format!(
                                "constraints {} ms, indexes {} ms",
                                t.constraints_ms, t.indexes_ms
                            ),
                        },
                    ]);
                }
                Err(e) if e.transient => return Err(e),
                Err(e) => Some(e),
            }
        } else {
            None
        };
        let dangling = checks::dangling_references(self, fks, Vec::new()).await?;
        let closed = Check::new("foreign_keys_closed", dangling);
        let mut out = Vec::new();
        match failed {
            Some(e) if closed.passed => {
                out.push(closed);
                out.push(Check::failed("constraints_recreated", &e));
            }
            _ => out.push(closed),
        }
        Ok(out)
    }

    /// Where a recreated stage puts the recorded objects: all in its schema.
    pub fn placement(&self) -> Placement {
        Placement::into_one(&self.schema)
    }
}

/// A manifest without DDL (format 1) cannot recreate tables that do not exist.
pub fn schema_not_recorded() -> JobError {
    JobError::permanent(
        "SCHEMA_NOT_RECORDED",
        "the backup's manifest records no table definitions (format 1) and the target lacks the tables",
    )
}

/// The foreign keys among the backed-up tables as the manifest records them.
pub fn manifest_foreign_keys(ddl: &SchemaDdl) -> Vec<ForeignKey> {
    let mut out: Vec<(String, ForeignKey)> = Vec::new();
    for t in &ddl.tables {
        for c in &t.constraints {
            if let ConstraintKind::ForeignKey {
                columns,
                references,
                ref_columns,
                ..
            } = &c.def
            {
                out.push((
                    c.name.clone(),
                    (
                        t.name.name.clone(),
                        columns.clone(),
                        references.name.clone(),
                        ref_columns.clone(),
                    ),
                ));
            }
        }
    }
    // By constraint name, as the catalog read orders them.
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out.into_iter().map(|(_, fk)| fk).collect()
}

/// Drop `staging` and its parts in `db` (best effort, bounded).
pub async fn drop_schema(db: &PgPool, staging: &str) {
    let dropped = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        sqlx::query(sqlx::AssertSqlSafe(drop_sql(staging))).execute(db),
    )
    .await;
    if !matches!(dropped, Ok(Ok(_))) {
        tracing::warn!(staging, "could not drop the staging schema");
    }
}

/// Pass 1: the stored object's SHA-256, size and every chunk's AEAD tag against the manifest,
/// before a single row is written anywhere. Returns its ms (fetch included).
pub async fn verify_sealed(
    ctx: &RoleCtx,
    keyring: &Arc<drfleet_artifact::Keyring>,
    object_key: &str,
    manifest: &Manifest,
    progress: &Progress,
) -> Result<u64, JobError> {
    let started = Instant::now();
    let (reader, pump) = object_reader(ctx, object_key, progress).await?;
    let keyring = keyring.clone();
    let manifest = manifest.clone();
    let check = tokio::task::spawn_blocking(move || {
        drfleet_artifact::verify_sealed(reader, &keyring, &manifest)
    });
    let (pumped, checked) = tokio::join!(pump, check);
    let checked = checked
        .map_err(|_| JobError::permanent("ARTIFACT_READER_PANIC", "artifact reader failed"))?;
    match (pumped, checked) {
        (_, Ok(_)) => Ok(started.elapsed().as_millis() as u64),
        // A store failure surfaces as the reader's I/O error: report the store's.
        (Err(e), Err(_)) => Err(e),
        (Ok(()), Err(e)) => Err(e.into()),
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
