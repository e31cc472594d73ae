//! The restore role: an artifact back into PostgreSQL, into a staging schema, optionally
//! promoted over the tenant's live rows.
//!
//! 1. `restore_initiated`; the record must be the command's organization's and completed.
//! 2. Verify pass: the whole stored object is streamed through the artifact reader — sha256
//!    of the stored bytes, every chunk's AEAD tag, per-table counts and hashes against the
//!    manifest — before a single row is written anywhere.
//! 3. One transaction on the tenant database: create `dr_restore_<id>` with tables `LIKE` the
//!    live ones (columns, types, defaults, constraints, identity, generated), stream each
//!    table in with `COPY … FROM STDIN` in foreign-key order, then run the integrity checks
//!    (row counts, content hashes re-computed from what was loaded, schema compatibility,
//!    foreign keys closed within the tenant, every row the tenant's).
//! 4. STAGING: commit; the schema holds exactly the backup.
//!    PROMOTE: in the same transaction, lock the live tables against writes (EXCLUSIVE: reads
//!    go on, writers wait for the swap), delete the tenant's rows in reverse FK order, insert
//!    the staged rows in FK order, move identity/serial sequences past the restored maxima,
//!    record the promotion, drop the staging schema, commit. All tables or none.
//!
//! Staging tables are UNLOGGED and loaded with `COPY … WITH (FREEZE)` (allowed because they
//! are created in the same transaction): no WAL and no later hint-bit writes for a scratch
//! copy. The live tables a promotion writes stay logged; a database crash empties a kept
//! STAGING schema's tables (restore again).
//!
//! Any failure (or a crash) rolls the transaction back: no staging schema is left behind. The
//! promotion marker (`drfleet_restore.promotions`) commits with the swap, so a job retried
//! after a crash between the swap and its bookkeeping does not promote twice.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use futures::future::BoxFuture;
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::{Connection, PgConnection};
use tokio::sync::mpsc;

use drfleet_artifact::{
    ArtifactBinding, ArtifactReader, Manifest, TableManifest, verify_against_manifest,
};
use drfleet_infra::auth::Actor;
use drfleet_protocol::events::timestamp;
use drfleet_protocol::topology::CommandKind;
use drfleet_protocol::v1::{self, event_envelope::Event};
use drfleet_protocol::validate::{
    CommandBody, ReasonCode, Rejection, RestoreMode, RestoreSpec, ValidCommand,
};

use super::catalog::{PIN_RENDERING, quote_ident};
use super::{ChannelReader, RoleCtx, source_error};
use crate::handler::{Admission, AdmitError, Job, JobCtx, JobError, JobHandler};
use crate::outbox;

const BUF: usize = 1 << 20;

pub struct RestoreHandler {
    ctx: Arc<RoleCtx>,
}

impl RestoreHandler {
    pub fn new(ctx: Arc<RoleCtx>) -> Self {
        Self { ctx }
    }
}

fn spec(job: &Job) -> Result<&RestoreSpec, JobError> {
    match &job.spec {
        CommandBody::Restore(r) => Ok(r),
        _ => Err(JobError::permanent("SPEC_MISMATCH", "job is not a restore")),
    }
}

/// Staging schema of a job: `dr_restore_` + the random tail of the job id.
pub fn staging_schema(job: &Job) -> String {
    let hex = job.id.as_uuid().simple().to_string();
    format!("dr_restore_{}", &hex[20..])
}

/// One integrity check, as stored in `pf_restore_jobs.checks`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    pub name: &'static str,
    pub passed: bool,
    pub detail: String,
}

/// The backup record being restored.
struct Record {
    object_key: String,
    manifest: Manifest,
    snapshot_at: Option<DateTime<Utc>>,
}

/// `status, object_key, manifest, snapshot_at` of a backup record.
type RecordRow = (
    String,
    Option<String>,
    Option<serde_json::Value>,
    Option<DateTime<Utc>>,
);

async fn load_record(
    conn: &mut PgConnection,
    org: uuid::Uuid,
    id: uuid::Uuid,
) -> Result<Record, JobError> {
    let row: Option<RecordRow> = sqlx::query_as(
        "SELECT status, object_key, manifest, snapshot_at FROM pf_backup_records WHERE id = $1 AND organization_id = $2",
    )
    .bind(id)
    .bind(org)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((status, Some(object_key), Some(manifest), snapshot_at)) =
        row.filter(|r| r.0 == "completed")
    else {
        return Err(JobError::permanent(
            "BACKUP_NOT_RESTORABLE",
            "backup record is missing or not completed",
        ));
    };
    let manifest: Manifest = serde_json::from_value(manifest)
        .map_err(|_| JobError::permanent("MANIFEST_INVALID", "recorded manifest unreadable"))?;
    debug_assert_eq!(status, "completed");
    if manifest.organization_id != org || manifest.backup_record_id != id {
        return Err(JobError::permanent(
            "MANIFEST_BINDING_MISMATCH",
            "manifest belongs to another record",
        ));
    }
    Ok(Record {
        object_key,
        manifest,
        snapshot_at,
    })
}

/// Stream an object into a bounded channel for a blocking reader. Returns the reader and the
/// pump future (run it concurrently with the reader).
pub(crate) async fn object_reader(
    ctx: &RoleCtx,
    key: &str,
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
    let pump = async move {
        while let Some(chunk) = stream.next().await {
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

enum Piece {
    Begin(String, Vec<String>),
    Rows(Vec<u8>),
    End,
}

impl RestoreHandler {
    /// Pass 1: the stored object checked end to end against the recorded manifest.
    async fn verify_artifact(&self, rec: &Record) -> Result<(), JobError> {
        let (reader, pump) = object_reader(&self.ctx, &rec.object_key).await?;
        let keyring = self.ctx.keyring.clone();
        let manifest = rec.manifest.clone();
        let check = tokio::task::spawn_blocking(move || {
            verify_against_manifest(reader, &keyring, &manifest)
        });
        let (pumped, checked) = tokio::join!(pump, check);
        let checked = checked
            .map_err(|_| JobError::permanent("ARTIFACT_READER_PANIC", "artifact reader failed"))?;
        match (pumped, checked) {
            (_, Ok(_)) => Ok(()),
            // A store failure surfaces as the reader's I/O error: report the store's.
            (Err(e), Err(_)) => Err(e),
            (Ok(()), Err(e)) => Err(e.into()),
        }
    }

    /// Pass 2: stream the tables into the staging schema (inside the caller's transaction).
    /// Returns rows loaded per table.
    async fn load(
        &self,
        conn: &mut PgConnection,
        rec: &Record,
        staging: &str,
    ) -> Result<HashMap<String, u64>, JobError> {
        let (reader, pump) = object_reader(&self.ctx, &rec.object_key).await?;
        let keyring = self.ctx.keyring.clone();
        let binding = ArtifactBinding {
            organization_id: rec.manifest.organization_id,
            backup_record_id: rec.manifest.backup_record_id,
        };
        let (tx, mut rx) = mpsc::channel::<Piece>(4);
        let decode =
            tokio::task::spawn_blocking(move || -> Result<(), drfleet_artifact::ArtifactError> {
                let mut r = ArtifactReader::open(reader, &keyring, binding)?;
                while let Some(h) = r.next_table()? {
                    let cols = h.columns.iter().map(|c| c.name.clone()).collect();
                    if tx
                        .blocking_send(Piece::Begin(h.name.clone(), cols))
                        .is_err()
                    {
                        return Ok(());
                    }
                    let mut buf = Vec::with_capacity(BUF + 256 * 1024);
                    while let Some(p) = r.next_rows()? {
                        buf.extend_from_slice(p);
                        if buf.len() >= BUF
                            && tx
                                .blocking_send(Piece::Rows(std::mem::replace(
                                    &mut buf,
                                    Vec::with_capacity(BUF + 256 * 1024),
                                )))
                                .is_err()
                        {
                            return Ok(());
                        }
                    }
                    if (!buf.is_empty() && tx.blocking_send(Piece::Rows(buf)).is_err())
                        || tx.blocking_send(Piece::End).is_err()
                    {
                        return Ok(());
                    }
                }
                r.finish()?;
                Ok(())
            });
        let staging_q = quote_ident(staging);
        let loading = async {
            let mut loaded = HashMap::new();
            while let Some(p) = rx.recv().await {
                let Piece::Begin(name, cols) = p else {
                    return Err(JobError::permanent(
                        "ARTIFACT_CORRUPT_STREAM",
                        "rows outside a table",
                    ));
                };
                let cols: Vec<String> = cols.iter().map(|c| quote_ident(c)).collect();
                let sql = format!(
                    "COPY {staging_q}.{} ({}) FROM STDIN WITH (FREEZE)",
                    quote_ident(&name),
                    cols.join(", ")
                );
                let mut copy = conn.copy_in_raw(&sql).await?;
                let mut ended = false;
                while let Some(p) = rx.recv().await {
                    match p {
                        Piece::Rows(b) => {
                            copy.send(b).await?;
                        }
                        Piece::End => {
                            ended = true;
                            break;
                        }
                        Piece::Begin(..) => break,
                    }
                }
                if !ended {
                    let _ = copy.abort("artifact ended inside a table").await;
                    return Err(JobError::permanent(
                        "ARTIFACT_CORRUPT_STREAM",
                        "artifact ended inside a table",
                    ));
                }
                loaded.insert(name, copy.finish().await?);
            }
            Ok::<_, JobError>(loaded)
        };
        let (pumped, loaded) = tokio::join!(pump, loading);
        let decoded = decode
            .await
            .map_err(|_| JobError::permanent("ARTIFACT_READER_PANIC", "artifact reader failed"))?;
        pumped?;
        decoded?;
        loaded
    }

    /// The tenant database's live columns of `table`: name → (type, needs a value).
    async fn live_columns(
        &self,
        conn: &mut PgConnection,
        table: &str,
    ) -> Result<Option<HashMap<String, (String, bool)>>, JobError> {
        let rows: Vec<(String, String, bool)> = sqlx::query_as(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), \
               (a.attnotnull AND NOT a.atthasdef AND a.attidentity = '' AND a.attgenerated = '') \
             FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped",
        )
        .bind(&self.ctx.tenant_schema)
        .bind(table)
        .fetch_all(&mut *conn)
        .await?;
        Ok((!rows.is_empty()).then(|| rows.into_iter().map(|(n, t, req)| (n, (t, req))).collect()))
    }

    /// The backup's columns still fit the live tables: a column added since takes its
    /// default; a dropped or retyped one is an incompatibility, never a silent loss.
    async fn schema_check(
        &self,
        conn: &mut PgConnection,
        tables: &[TableManifest],
    ) -> Result<Check, JobError> {
        let mut problems = Vec::new();
        for t in tables {
            let Some(live) = self.live_columns(conn, &t.name).await? else {
                problems.push(format!("table {} no longer exists", t.name));
                continue;
            };
            for c in &t.columns {
                match live.get(&c.name) {
                    None => problems.push(format!("{}.{} was dropped", t.name, c.name)),
                    Some((ty, _)) if *ty != c.data_type => {
                        problems.push(format!("{}.{} changed type", t.name, c.name))
                    }
                    _ => {}
                }
            }
            for (name, (_, required)) in &live {
                if *required && !t.columns.iter().any(|c| &c.name == name) {
                    problems.push(format!("{}.{} was added without a default", t.name, name));
                }
            }
        }
        Ok(Check {
            name: "schema_compatible",
            passed: problems.is_empty(),
            detail: problems.join("; "),
        })
    }

    /// Foreign keys among the restored tables, as (child, child cols, parent, parent cols).
    async fn foreign_keys(
        &self,
        conn: &mut PgConnection,
        names: &[String],
    ) -> Result<Vec<(String, Vec<String>, String, Vec<String>)>, JobError> {
        Ok(sqlx::query_as(
            "SELECT cl.relname::text, \
               ARRAY(SELECT a.attname::text FROM unnest(con.conkey) WITH ORDINALITY k(n, o) \
                     JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n ORDER BY k.o), \
               pl.relname::text, \
               ARRAY(SELECT a.attname::text FROM unnest(con.confkey) WITH ORDINALITY k(n, o) \
                     JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n ORDER BY k.o) \
             FROM pg_constraint con JOIN pg_class cl ON cl.oid = con.conrelid JOIN pg_class pl ON pl.oid = con.confrelid \
             JOIN pg_namespace n ON n.oid = cl.relnamespace \
             WHERE con.contype = 'f' AND n.nspname = $1 AND cl.relname = ANY($2) AND pl.relname = ANY($2) \
             ORDER BY con.conname",
        )
        .bind(&self.ctx.tenant_schema)
        .bind(names)
        .fetch_all(&mut *conn)
        .await?)
    }

    /// Checks on what was loaded.
    async fn integrity_checks(
        &self,
        conn: &mut PgConnection,
        rec: &Record,
        staging: &str,
        loaded: &HashMap<String, u64>,
        org: uuid::Uuid,
    ) -> Result<Vec<Check>, JobError> {
        let sq = quote_ident(staging);
        let tenant = quote_ident(&self.ctx.tenant_column);
        let mut counts = Vec::new();
        let mut hashes = Vec::new();
        let mut foreign_rows = Vec::new();
        for t in &rec.manifest.tables {
            let n = loaded.get(&t.name).copied().unwrap_or(0);
            if n != t.row_count {
                counts.push(format!(
                    "{}: {} loaded, {} in manifest",
                    t.name, n, t.row_count
                ));
            }
            let cols: Vec<String> = t.columns.iter().map(|c| quote_ident(&c.name)).collect();
            let sql = format!(
                "COPY (SELECT {} FROM {sq}.{}) TO STDOUT",
                cols.join(", "),
                quote_ident(&t.name)
            );
            let mut hasher = Sha256::new();
            let mut s = conn.copy_out_raw(&sql).await?;
            while let Some(c) = s.next().await {
                hasher.update(&c?);
            }
            drop(s);
            if hex::encode(hasher.finalize()) != t.sha256 {
                hashes.push(t.name.clone());
            }
            let sql = format!(
                "SELECT count(*) FROM {sq}.{} WHERE {tenant} IS DISTINCT FROM $1",
                quote_ident(&t.name)
            );
            let strangers: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .bind(org)
                .fetch_one(&mut *conn)
                .await?;
            if strangers != 0 {
                foreign_rows.push(t.name.clone());
            }
        }
        let names: Vec<String> = rec.manifest.tables.iter().map(|t| t.name.clone()).collect();
        let mut dangling = Vec::new();
        for (child, ccols, parent, pcols) in self.foreign_keys(conn, &names).await? {
            let not_null: Vec<String> = ccols
                .iter()
                .map(|c| format!("c.{} IS NOT NULL", quote_ident(c)))
                .collect();
            let join: Vec<String> = ccols
                .iter()
                .zip(&pcols)
                .map(|(c, p)| format!("p.{} = c.{}", quote_ident(p), quote_ident(c)))
                .collect();
            let sql = format!(
                "SELECT count(*) FROM {sq}.{} c WHERE {} AND NOT EXISTS (SELECT 1 FROM {sq}.{} p WHERE {})",
                quote_ident(&child),
                not_null.join(" AND "),
                quote_ident(&parent),
                join.join(" AND ")
            );
            let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_one(&mut *conn)
                .await?;
            if n > 0 {
                dangling.push(format!("{child} → {parent}: {n} rows"));
            }
        }
        Ok(vec![
            Check {
                name: "row_counts",
                passed: counts.is_empty(),
                detail: counts.join("; "),
            },
            Check {
                name: "content_hashes",
                passed: hashes.is_empty(),
                detail: if hashes.is_empty() {
                    String::new()
                } else {
                    format!("mismatch in {}", hashes.join(", "))
                },
            },
            Check {
                name: "tenant_scoped",
                passed: foreign_rows.is_empty(),
                detail: foreign_rows.join(", "),
            },
            Check {
                name: "foreign_keys_closed",
                passed: dangling.is_empty(),
                detail: dangling.join("; "),
            },
        ])
    }

    /// Replace the tenant's live rows with the staged ones (inside the caller's transaction).
    async fn promote(
        &self,
        conn: &mut PgConnection,
        rec: &Record,
        staging: &str,
        org: uuid::Uuid,
        job: &Job,
        rows: u64,
    ) -> Result<(), JobError> {
        let live = quote_ident(&self.ctx.tenant_schema);
        let sq = quote_ident(staging);
        let tenant = quote_ident(&self.ctx.tenant_column);
        let tables: Vec<String> = rec
            .manifest
            .tables
            .iter()
            .map(|t| format!("{live}.{}", quote_ident(&t.name)))
            .collect();
        // Writers wait for the swap; readers see the old rows until it commits.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "LOCK TABLE {} IN EXCLUSIVE MODE",
            tables.join(", ")
        )))
        .execute(&mut *conn)
        .await?;
        for t in rec.manifest.tables.iter().rev() {
            let sql = format!(
                "DELETE FROM {live}.{} WHERE {tenant} = $1",
                quote_ident(&t.name)
            );
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(org)
                .execute(&mut *conn)
                .await?;
        }
        for t in &rec.manifest.tables {
            let cols: Vec<String> = t.columns.iter().map(|c| quote_ident(&c.name)).collect();
            let cols = cols.join(", ");
            let name = quote_ident(&t.name);
            let sql = format!(
                "INSERT INTO {live}.{name} ({cols}) OVERRIDING SYSTEM VALUE SELECT {cols} FROM {sq}.{name}"
            );
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut *conn)
                .await?;
            // Identity and serial sequences past the restored maxima.
            for c in &t.columns {
                let seq: Option<String> =
                    sqlx::query_scalar("SELECT pg_get_serial_sequence($1, $2)")
                        .bind(format!("{live}.{name}"))
                        .bind(&c.name)
                        .fetch_one(&mut *conn)
                        .await?;
                if let Some(seq) = seq {
                    let col = quote_ident(&c.name);
                    let sql = format!(
                        "SELECT setval($1::regclass, GREATEST((SELECT max({col}) FROM {live}.{name}), (SELECT last_value FROM {seq})), true)"
                    );
                    sqlx::query(sqlx::AssertSqlSafe(sql))
                        .bind(&seq)
                        .execute(&mut *conn)
                        .await?;
                }
            }
        }
        sqlx::query(
            "INSERT INTO drfleet_restore.promotions (restore_job_id, organization_id, backup_record_id, row_count) VALUES ($1, $2, $3, $4)",
        )
        .bind(job.id.as_uuid())
        .bind(org)
        .bind(rec.manifest.backup_record_id)
        .bind(rows as i64)
        .execute(&mut *conn)
        .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {sq} CASCADE")))
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    async fn record_checks(&self, ctx: &JobCtx, checks: &[Check]) -> Result<(), JobError> {
        sqlx::query(
            "UPDATE pf_restore_jobs SET checks = $3 WHERE id = $1 AND organization_id = $2",
        )
        .bind(ctx.job.id.as_uuid())
        .bind(ctx.job.organization_id.as_uuid())
        .bind(json!(checks))
        .execute(&ctx.pool)
        .await?;
        Ok(())
    }

    /// Steps 3–4 on a dedicated connection: dropping it (crash, cancel) rolls everything back.
    async fn restore(
        &self,
        ctx: &JobCtx,
        rec: &Record,
        r: &RestoreSpec,
    ) -> Result<(u64, Vec<Check>), JobError> {
        let job = &ctx.job;
        let org = job.organization_id.as_uuid();
        let staging = staging_schema(job);
        let opts = self.ctx.source.connect_options();
        let mut conn = PgConnection::connect_with(&opts)
            .await
            .map_err(|e| source_error(&e))?;
        if r.mode == RestoreMode::Promote {
            sqlx::raw_sql(
                "CREATE SCHEMA IF NOT EXISTS drfleet_restore; \
                 CREATE TABLE IF NOT EXISTS drfleet_restore.promotions (restore_job_id uuid PRIMARY KEY, organization_id uuid NOT NULL, \
                   backup_record_id uuid NOT NULL, row_count bigint NOT NULL, promoted_at timestamptz NOT NULL DEFAULT now())",
            )
            .execute(&mut conn)
            .await
            .map_err(|e| source_error(&e))?;
            // Promoted already by an earlier attempt that died before its bookkeeping?
            let done: Option<i64> = sqlx::query_scalar("SELECT row_count FROM drfleet_restore.promotions WHERE restore_job_id = $1 AND organization_id = $2")
                .bind(job.id.as_uuid())
                .bind(org)
                .fetch_optional(&mut conn)
                .await?;
            if let Some(rows) = done {
                let checks = vec![Check {
                    name: "promoted",
                    passed: true,
                    detail: "promoted by an earlier attempt".into(),
                }];
                return Ok((rows as u64, checks));
            }
        }
        let mut tx = conn.begin().await.map_err(|e| source_error(&e))?;
        sqlx::raw_sql(PIN_RENDERING).execute(&mut *tx).await?;
        let mut checks = vec![self.schema_check(&mut tx, &rec.manifest.tables).await?];
        if !checks[0].passed {
            self.record_checks(ctx, &checks).await?;
            return Err(JobError::permanent(
                "RESTORE_SCHEMA_INCOMPATIBLE",
                "backup columns were dropped or retyped in the live schema",
            ));
        }
        let sq = quote_ident(&staging);
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {sq}")))
            .execute(&mut *tx)
            .await?;
        let live = quote_ident(&self.ctx.tenant_schema);
        for t in &rec.manifest.tables {
            let name = quote_ident(&t.name);
            let sql = format!(
                "CREATE UNLOGGED TABLE {sq}.{name} (LIKE {live}.{name} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING GENERATED INCLUDING IDENTITY)"
            );
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut *tx)
                .await?;
        }
        let loaded = self.load(&mut tx, rec, &staging).await?;
        checks.extend(
            self.integrity_checks(&mut tx, rec, &staging, &loaded, org)
                .await?,
        );
        if checks.iter().any(|c| !c.passed) {
            drop(tx); // rolls back: no staging schema remains
            self.record_checks(ctx, &checks).await?;
            return Err(JobError::permanent(
                "RESTORE_INTEGRITY_CHECK_FAILED",
                "an integrity check failed",
            ));
        }
        let rows: u64 = loaded.values().sum();
        if r.mode == RestoreMode::Promote {
            self.promote(&mut tx, rec, &staging, org, job, rows).await?;
            checks.push(Check {
                name: "promoted",
                passed: true,
                detail: String::new(),
            });
        }
        tx.commit().await?;
        Ok((rows, checks))
    }
}

impl JobHandler for RestoreHandler {
    fn kind(&self) -> CommandKind {
        CommandKind::Restore
    }

    fn admit<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        cmd: &'a ValidCommand,
        _actor: &'a Actor,
    ) -> BoxFuture<'a, Result<Admission, AdmitError>> {
        Box::pin(async move {
            let CommandBody::Restore(r) = &cmd.body else {
                return Err(AdmitError::Reject(Rejection::new(
                    ReasonCode::InvalidArgument,
                    "not a restore command",
                )));
            };
            if r.target.is_some() {
                return Err(AdmitError::Reject(Rejection::new(
                    ReasonCode::InvalidArgument,
                    "restore.target names no configured target",
                )));
            }
            // Another organization's record answers exactly like a missing one.
            let status: Option<String> = sqlx::query_scalar(
                "SELECT status FROM pf_backup_records WHERE id = $1 AND organization_id = $2",
            )
            .bind(r.backup_record_id.as_uuid())
            .bind(cmd.organization_id.as_uuid())
            .fetch_optional(&mut *tx)
            .await?;
            match status.as_deref() {
                None => Err(AdmitError::Reject(Rejection::new(
                    ReasonCode::NotFound,
                    "backup record not found",
                ))),
                Some("completed") => Ok(Admission {
                    concurrency_key: format!("restore:{}", cmd.organization_id),
                }),
                Some(_) => Err(AdmitError::Reject(Rejection::new(
                    ReasonCode::Conflict,
                    "backup record is not completed",
                ))),
            }
        })
    }

    fn run<'a>(&'a self, ctx: &'a JobCtx) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(async move {
            let job = &ctx.job;
            let r = spec(job)?;
            let org = job.organization_id.as_uuid();
            let started_at = Utc::now();
            let staging = staging_schema(job);

            let mut tx = ctx.pool.begin().await?;
            let rec = load_record(&mut tx, org, r.backup_record_id.as_uuid()).await?;
            let fresh = sqlx::query(
                "INSERT INTO pf_restore_jobs (id, organization_id, command_id, backup_record_id, mode, target, operator, status, staging_schema) \
                 VALUES ($1, $2, $3, $4, $5, '', $6, 'initiated', $7) ON CONFLICT (id) DO NOTHING",
            )
            .bind(job.id.as_uuid())
            .bind(org)
            .bind(job.command_id.as_uuid())
            .bind(r.backup_record_id.as_uuid())
            .bind(r.mode.as_str())
            .bind(&job.actor)
            .bind(&staging)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if fresh {
                let ev = job.event(Event::RestoreInitiated(v1::RestoreInitiated {
                    restore_job_id: job.id.to_string(),
                    backup_record_id: r.backup_record_id.to_string(),
                    operator: job.actor.clone(),
                    mode: r.mode.to_wire() as i32,
                    snapshot_at: rec.snapshot_at.map(timestamp),
                }));
                outbox::enqueue(&mut tx, &ev).await?;
            }
            tx.commit().await?;

            self.verify_artifact(&rec).await?;
            let (rows, checks) = self.restore(ctx, &rec, r).await?;

            let finished_at = Utc::now();
            let staging_out = if r.mode == RestoreMode::Staging {
                staging.clone()
            } else {
                String::new()
            };
            let mut tx = ctx.pool.begin().await?;
            sqlx::query(
                "UPDATE pf_restore_jobs SET status = 'completed', checks = $3, row_count = $4, finished_at = now(), \
                   staging_schema = NULLIF($5, '') WHERE id = $1 AND organization_id = $2",
            )
            .bind(job.id.as_uuid())
            .bind(org)
            .bind(json!(checks))
            .bind(rows as i64)
            .bind(&staging_out)
            .execute(&mut *tx)
            .await?;
            let ev = job.event(Event::RestoreCompleted(v1::RestoreCompleted {
                restore_job_id: job.id.to_string(),
                backup_record_id: r.backup_record_id.to_string(),
                operator: job.actor.clone(),
                mode: r.mode.to_wire() as i32,
                started_at: Some(timestamp(started_at)),
                finished_at: Some(timestamp(finished_at)),
                row_count: rows,
                staging_schema: staging_out,
            }));
            outbox::enqueue(&mut tx, &ev).await?;
            ctx.finish_in(&mut tx).await?;
            tx.commit().await?;
            tracing::info!(restore_job_id = %job.id, mode = r.mode.as_str(), rows, "restore completed");
            Ok(())
        })
    }

    fn on_failed<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        job: &'a Job,
        err: &'a JobError,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(async move {
            let (record, mode) = match spec(job) {
                Ok(r) => (r.backup_record_id.to_string(), r.mode.as_str()),
                Err(_) => (String::new(), "staging"),
            };
            let record_uuid = uuid::Uuid::parse_str(&record).unwrap_or_default();
            sqlx::query(
                "INSERT INTO pf_restore_jobs (id, organization_id, command_id, backup_record_id, mode, operator, status, error_code, finished_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, 'failed', $7, now()) \
                 ON CONFLICT (id) DO UPDATE SET status = 'failed', error_code = EXCLUDED.error_code, finished_at = now(), staging_schema = NULL \
                 WHERE pf_restore_jobs.organization_id = EXCLUDED.organization_id",
            )
            .bind(job.id.as_uuid())
            .bind(job.organization_id.as_uuid())
            .bind(job.command_id.as_uuid())
            .bind(record_uuid)
            .bind(mode)
            .bind(&job.actor)
            .bind(err.code.as_ref())
            .execute(&mut *tx)
            .await?;
            let ev = job.event(Event::RestoreFailed(v1::RestoreFailed {
                restore_job_id: job.id.to_string(),
                backup_record_id: record,
                operator: job.actor.clone(),
                error_code: err.code.to_string(),
                message: err.message.to_string(),
            }));
            outbox::enqueue(tx, &ev).await
        })
    }
}
