//! The backup role: one tenant's rows, one consistent snapshot, one encrypted artifact.
//!
//! Pipeline (memory stays flat whatever the tenant's size):
//!
//! ```text
//! COPY (SELECT … WHERE tenant) TO STDOUT ──≥1 MiB buffers──▶ blocking thread:
//!   frames → zstd → AES-256-GCM chunks → sha256 ──≥1 MiB──▶ multipart upload (2 parts in flight)
//! ```
//! Bounded channels between the stages give backpressure end to end. The record id is the
//! job id, so a retried job (worker crash, transient error) keeps its record; each attempt
//! writes its own object keys and the manifest, written last and create-only, is what makes
//! an artifact count.
//!
//! Spans of the job's trace: `backup.snapshot` (the snapshot and the catalog reads in it),
//! `backup.export` per table, `backup.upload` (the object, while it streams and until it is
//! complete), `backup.manifest`.

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use futures::future::BoxFuture;
use sqlx::PgConnection;
use tokio::sync::mpsc;
use tracing::Instrument as _;

use drfleet_artifact::ddl::SchemaDdl;
use drfleet_artifact::{ArtifactBinding, ArtifactWriter, Keyring, Manifest, TableHeader};
use drfleet_infra::auth::Actor;
use drfleet_protocol::events::timestamp;
use drfleet_protocol::topology::CommandKind;
use drfleet_protocol::v1::{self, event_envelope::Event};
use drfleet_protocol::validate::{CommandBody, ReasonCode, Rejection, ValidCommand};
use drfleet_storage::keys;

use crate::engine::catalog::{PIN_RENDERING, TableInfo, quote_ident, resolve_tables};
use crate::engine::membership;
use crate::engine::schema::read::read_schema;
use crate::engine::{RoleCtx, key_store, shrink, source_error};
use crate::faults::{self, point};
use crate::handler::{Admission, AdmitError, Job, JobCtx, JobError, JobHandler, Progress};
use crate::outbox;

/// Buffers handed between pipeline stages.
const BUF: usize = 1 << 20;
/// Buffers in flight per channel.
const DEPTH: usize = 4;

pub struct BackupHandler {
    ctx: Arc<RoleCtx>,
}

impl BackupHandler {
    pub fn new(ctx: Arc<RoleCtx>) -> Self {
        Self { ctx }
    }
}

/// A tier as stored in `pf_backup_tiers`.
struct Tier {
    all_tables: bool,
    tables: Vec<String>,
}

async fn find_tier(
    conn: &mut PgConnection,
    org: uuid::Uuid,
    name: &str,
) -> Result<Option<Tier>, sqlx::Error> {
    // An organization's own tier shadows a global one of the same name.
    let row: Option<(bool, Vec<String>)> = sqlx::query_as(
        "SELECT all_tables, tables FROM pf_backup_tiers WHERE name = $2 AND (organization_id = $1 OR organization_id IS NULL) \
         ORDER BY organization_id NULLS LAST LIMIT 1",
    )
    .bind(org)
    .bind(name)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.map(|(all_tables, tables)| Tier { all_tables, tables }))
}

fn spec(job: &Job) -> Result<&drfleet_protocol::validate::BackupSpec, JobError> {
    match &job.spec {
        CommandBody::Backup(b) => Ok(b),
        _ => Err(JobError::permanent("SPEC_MISMATCH", "job is not a backup")),
    }
}

/// What a finished export produced.
struct Exported {
    manifest: Manifest,
    artifact_key: String,
    manifest_key: String,
}

enum Piece {
    Begin(TableHeader),
    Rows(Vec<u8>),
    End,
}

/// `std::io::Write` end of the ciphertext channel, used from the blocking thread.
struct ChannelSink {
    tx: mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
}

impl ChannelSink {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let full = std::mem::replace(&mut self.buf, Vec::with_capacity(BUF + BUF / 4));
        self.tx
            .blocking_send(full)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "upload stopped"))
    }
}

impl std::io::Write for ChannelSink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= BUF {
            self.send()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// How the export selects the tenant's rows.
struct TenantSelect {
    /// The tenant key as an SQL literal of the key type (`TenantKey::sql_literal`).
    org_lit: String,
    /// The tenant has no row in the root table at the snapshot.
    root_row_missing: bool,
    /// What recreates the tables (the manifest's `schema`), read in the same snapshot.
    ddl: SchemaDdl,
    /// The organization's tenant key: wraps the artifact's data key (this job only).
    keyring: Arc<Keyring>,
}

impl BackupHandler {
    /// Delete the artifact and manifest of `attempts` of a record, best effort: a store that
    /// cannot be reached now leaves them to the retention sweep's orphan grace.
    async fn remove_attempts(
        &self,
        org: uuid::Uuid,
        record: uuid::Uuid,
        attempts: std::ops::Range<u32>,
    ) {
        for a in attempts {
            for key in [
                keys::artifact(org, record, a),
                keys::manifest(org, record, a),
            ] {
                if let Err(e) = self.ctx.store.delete(&key).await {
                    tracing::warn!(backup_record_id = %record, attempt = a, error = %e, "could not remove an earlier attempt's object");
                }
            }
        }
    }

    /// Export `tables` inside the snapshot held by `src` into one artifact.
    async fn export(
        &self,
        src: &mut PgConnection,
        job: &Job,
        tables: &[TableInfo],
        snapshot_at: DateTime<Utc>,
        tenant: &TenantSelect,
        progress: &Progress,
    ) -> Result<Exported, JobError> {
        let org = job.organization_id.as_uuid();
        let record = job.id.as_uuid();
        let attempt = job.attempt.max(1) as u32;
        let akey = keys::artifact(org, record, attempt);
        let mkey = keys::manifest(org, record, attempt);
        let binding = ArtifactBinding {
            organization_id: org,
            backup_record_id: record,
        };

        let (piece_tx, mut piece_rx) = mpsc::channel::<Piece>(DEPTH);
        let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(DEPTH);
        let keyring = tenant.keyring.clone();
        let writer = tokio::task::spawn_blocking(
            move || -> Result<Manifest, drfleet_artifact::ArtifactError> {
                let sink = ChannelSink {
                    tx: out_tx,
                    buf: Vec::with_capacity(BUF + BUF / 4),
                };
                let mut w = ArtifactWriter::new(sink, &keyring, binding, 1)?;
                while let Some(p) = piece_rx.blocking_recv() {
                    match p {
                        Piece::Begin(h) => w.begin_table(&h)?,
                        Piece::Rows(b) => w.write_rows(&b)?,
                        Piece::End => {
                            w.end_table()?;
                        }
                    }
                }
                let (manifest, mut sink) = w.finish()?;
                sink.send().map_err(drfleet_artifact::ArtifactError::from)?;
                Ok(manifest)
            },
        );

        let upload_span = tracing::info_span!("backup.upload");
        let mut upload = self
            .ctx
            .store
            .upload(&akey)
            .instrument(upload_span.clone())
            .await?;
        let uploading = async {
            while let Some(buf) = out_rx.recv().await {
                upload.write(&buf).await?;
                progress.tick();
            }
            Ok::<_, JobError>(())
        }
        .instrument(upload_span.clone());
        let schema = quote_ident(&self.ctx.tenant_schema);
        let producing = async move {
            for t in tables {
                progress.set_table(&t.name);
                let table_span = tracing::info_span!("backup.export", table = t.name.as_str());
                async {
                    piece_tx
                        .send(Piece::Begin(t.header()))
                        .await
                        .map_err(|_| stopped())?;
                    let cols: Vec<String> =
                        t.columns.iter().map(|c| quote_ident(&c.name)).collect();
                    // The tenant key, a literal of the column's type (quotes doubled, no control
                    // characters: see TenantKey::sql_literal); the only value in the statement.
                    // A table reached by keys joins along its path, in the same snapshot.
                    let sql = format!(
                        "COPY (SELECT {} FROM {schema}.{} t WHERE {}) TO STDOUT",
                        cols.join(", "),
                        quote_ident(&t.name),
                        membership::predicate(&t.reach, &schema, "t", &tenant.org_lit)
                    );
                    let mut stream = src.copy_out_raw(&sql).await?;
                    // sqlx yields one item per row: coalesce before crossing threads.
                    let mut buf = Vec::with_capacity(BUF + 64 * 1024);
                    let mut rows = 0u64;
                    while let Some(chunk) = stream.next().await {
                        buf.extend_from_slice(&chunk?);
                        rows += 1;
                        if buf.len() >= BUF {
                            progress.add_rows(std::mem::take(&mut rows));
                            progress.add_bytes(buf.len() as u64);
                            let full =
                                std::mem::replace(&mut buf, Vec::with_capacity(BUF + 64 * 1024));
                            piece_tx
                                .send(Piece::Rows(full))
                                .await
                                .map_err(|_| stopped())?;
                        }
                    }
                    progress.add_rows(rows);
                    if !buf.is_empty() {
                        progress.add_bytes(buf.len() as u64);
                        piece_tx
                            .send(Piece::Rows(buf))
                            .await
                            .map_err(|_| stopped())?;
                    }
                    piece_tx.send(Piece::End).await.map_err(|_| stopped())?;
                    Ok::<_, JobError>(())
                }
                .instrument(table_span)
                .await?;
            }
            Ok::<_, JobError>(())
        };
        let joined = tokio::try_join!(producing, uploading);
        let written = writer
            .await
            .map_err(|_| JobError::permanent("ARTIFACT_WRITER_PANIC", "artifact writer failed"))?;
        let outcome = match (joined, written) {
            (Ok(_), Ok(mut manifest)) => match upload.finish().instrument(upload_span).await {
                Ok(_) => {
                    manifest.snapshot_at = Some(snapshot_at);
                    manifest.schema = Some(tenant.ddl.clone());
                    // How each table was reached, for the restore's checks and promotion.
                    for (m, t) in manifest.tables.iter_mut().zip(tables) {
                        m.reach = Some(t.reach.clone());
                    }
                    if tenant.root_row_missing {
                        manifest
                            .extra
                            .insert("tenant_root_row_missing".into(), true.into());
                    }
                    self.ctx
                        .store
                        .put_create(&mkey, manifest.to_json().into())
                        .instrument(tracing::info_span!("backup.manifest"))
                        .await
                        .map(|_| manifest)
                        .map_err(JobError::from)
                }
                Err(e) => Err(e.into()),
            },
            // The writer's error is the cause when it stopped first (the others see a closed channel).
            (Err(e), Err(w)) if e.code == "PIPELINE_STOPPED" => {
                upload.abort().await;
                Err(w.into())
            }
            (Err(e), _) => {
                upload.abort().await;
                Err(e)
            }
            (Ok(_), Err(w)) => {
                upload.abort().await;
                Err(w.into())
            }
        };
        match outcome {
            Ok(manifest) => Ok(Exported {
                manifest,
                artifact_key: akey.to_string(),
                manifest_key: mkey.to_string(),
            }),
            Err(e) => {
                // No manifest was written, so nothing counts; remove what the attempt left.
                let _ = self.ctx.store.delete(&akey).await;
                Err(e)
            }
        }
    }
}

fn stopped() -> JobError {
    JobError::permanent("PIPELINE_STOPPED", "artifact pipeline stopped")
}

impl JobHandler for BackupHandler {
    fn kind(&self) -> CommandKind {
        CommandKind::Backup
    }

    fn admit<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        cmd: &'a ValidCommand,
        _actor: &'a Actor,
    ) -> BoxFuture<'a, Result<Admission, AdmitError>> {
        Box::pin(async move {
            let CommandBody::Backup(b) = &cmd.body else {
                return Err(AdmitError::Reject(Rejection::new(
                    ReasonCode::InvalidArgument,
                    "not a backup command",
                )));
            };
            self.ctx
                .admit_key(&cmd.tenant_key)
                .await
                .map_err(AdmitError::Reject)?;
            if find_tier(tx, cmd.organization_id.as_uuid(), &b.tier)
                .await?
                .is_none()
            {
                return Err(AdmitError::Reject(Rejection::new(
                    ReasonCode::InvalidArgument,
                    "backup.tier names no known tier",
                )));
            }
            // One backup per tenant and tier at a time: the second waits for the first.
            Ok(Admission {
                concurrency_key: format!("backup:{}:{}", cmd.organization_id, b.tier),
            })
        })
    }

    fn run<'a>(&'a self, ctx: &'a JobCtx) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(async move {
            let job = &ctx.job;
            let b = spec(job)?;
            let started = Instant::now();
            let org = job.organization_id.as_uuid();

            // The record and backup_started, once per job whatever the attempt.
            let mut tx = ctx.pool.begin().await?;
            let fresh = sqlx::query(
                "INSERT INTO pf_backup_records (id, organization_id, command_id, tier, policy_id, status, tenant_key) \
                 VALUES ($1, $2, $3, $4, $5, 'started', $6) ON CONFLICT (id) DO NOTHING",
            )
            .bind(job.id.as_uuid())
            .bind(org)
            .bind(job.command_id.as_uuid())
            .bind(&b.tier)
            .bind(&b.policy_id)
            .bind(job.tenant_key.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if fresh {
                let ev = job.event(Event::BackupStarted(v1::BackupStarted {
                    backup_record_id: job.id.to_string(),
                    tier: b.tier.clone(),
                }));
                outbox::enqueue(&mut tx, &ev).await?;
            }
            let tier = find_tier(&mut tx, org, &b.tier)
                .await?
                .ok_or_else(|| JobError::permanent("TIER_NOT_FOUND", "tier no longer exists"))?;
            tx.commit().await?;
            // Earlier attempts of this job are dead (their lease ran out): what they uploaded
            // (an artifact without manifest, or a whole one whose commit never came) goes now,
            // so the completed record leaves no stray attempt behind.
            let attempt = job.attempt.max(1) as u32;
            self.remove_attempts(org, job.id.as_uuid(), 1..attempt)
                .await;
            // The organization's tenant key (created on its first backup, or after a shred):
            // the artifact's data key is wrapped by it. Unwrapped for this job only.
            let (keyring, tenant_key) = self.ctx.writing_keyring(&ctx.pool, org).await?;

            // One snapshot for every table.
            let snapshot_span = tracing::info_span!("backup.snapshot");
            let mut src = async {
                let mut src = self
                    .ctx
                    .source
                    .acquire()
                    .await
                    .map_err(|e| source_error(&e))?;
                sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .execute(&mut *src)
                    .await
                    .map_err(|e| source_error(&e))?;
                Ok::<_, JobError>(src)
            }
            .instrument(snapshot_span.clone())
            .await?;
            let result = async {
                let snapshot = async {
                    sqlx::raw_sql(PIN_RENDERING)
                        .execute(&mut *src)
                        .await
                        .map_err(|e| source_error(&e))?;
                    let snapshot_at: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
                        .fetch_one(&mut *src)
                        .await
                        .map_err(|e| source_error(&e))?;
                    let layout = self.ctx.layout();
                    let tables =
                        resolve_tables(&mut src, &layout, tier.all_tables, &tier.tables).await?;
                    // The key type as the catalog has it in this snapshot: every tenant column
                    // agrees, and the job's key fits it.
                    let key_type = self.ctx.job_key_type(&mut src, &job.tenant_key).await?;
                    let org_lit = job.tenant_key.sql_literal(key_type);
                    // No root row: the organization does not exist (or no longer does) at the
                    // snapshot. Visible in the manifest (`extra.tenant_root_row_missing`), the
                    // log, and the backup's `empty` flag: nothing of a tenant is protected.
                    let root_row_missing = membership::root_row_exists(&mut src, &layout, &org_lit)
                        .await?
                        == Some(false);
                    if root_row_missing {
                        tracing::warn!(
                            code = "TENANT_ROOT_ROW_MISSING",
                            backup_record_id = %job.id,
                            "the organization has no row in the tenant root table"
                        );
                    }
                    let named: Vec<(u32, String)> =
                        tables.iter().map(|t| (t.oid, t.name.clone())).collect();
                    let ddl = read_schema(&mut src, &self.ctx.tenant_schema, &named).await?;
                    Ok::<_, JobError>((snapshot_at, tables, org_lit, root_row_missing, ddl))
                };
                let (snapshot_at, tables, org_lit, root_row_missing, ddl) =
                    snapshot.instrument(snapshot_span).await?;
                faults::hit(
                    &job.organization_id.to_string(),
                    point::BACKUP_AFTER_SNAPSHOT,
                )
                .await?;
                let exported = self
                    .export(
                        &mut src,
                        job,
                        &tables,
                        snapshot_at,
                        &TenantSelect {
                            org_lit,
                            root_row_missing,
                            ddl,
                            keyring,
                        },
                        &ctx.progress,
                    )
                    .await?;
                Ok::<_, JobError>((exported, snapshot_at, root_row_missing))
            }
            .await;
            let _ = sqlx::query("ROLLBACK").execute(&mut *src).await;
            let (exported, snapshot_at, root_row_missing) = result?;
            let m = &exported.manifest;

            let mut tx = ctx.pool.begin().await?;
            // A shred that destroyed the key meanwhile wins: the artifact is unreadable, so
            // the backup fails. (The lock holds a concurrent shred until this commits; it
            // then marks this record shredded too.)
            let key_alive: Option<i32> =
                sqlx::query_scalar("SELECT 1 FROM pf_tenant_keys WHERE id = $1 FOR SHARE")
                    .bind(tenant_key)
                    .fetch_optional(&mut *tx)
                    .await?;
            if key_alive.is_none() {
                return Err(key_store::key_destroyed());
            }
            sqlx::query(
                "UPDATE pf_backup_records SET status = 'completed', key_id = $3, object_key = $4, manifest_key = $5, \
                   manifest = $6, byte_size = $7, checksum_sha256 = $8, row_count = $9, table_count = $10, snapshot_at = $11, \
                   completed_at = now(), duration_ms = $12, error_code = NULL \
                 WHERE id = $1 AND organization_id = $2 AND status = 'started'",
            )
            .bind(job.id.as_uuid())
            .bind(org)
            .bind(&m.key_id)
            .bind(&exported.artifact_key)
            .bind(&exported.manifest_key)
            .bind(sqlx::types::Json(m))
            .bind(m.byte_size as i64)
            .bind(&m.checksum_sha256)
            .bind(m.row_count as i64)
            .bind(m.tables.len() as i32)
            .bind(snapshot_at)
            .bind(started.elapsed().as_millis() as i64)
            .execute(&mut *tx)
            .await?;
            let shrink = shrink::assess(
                &mut tx,
                org,
                job.id.as_uuid(),
                &b.tier,
                &b.policy_id,
                m.row_count,
                root_row_missing,
            )
            .await?;
            let ev = job.event(Event::BackupCompleted(v1::BackupCompleted {
                backup_record_id: job.id.to_string(),
                tier: b.tier.clone(),
                byte_size: m.byte_size,
                checksum_sha256: m.checksum_sha256.clone(),
                row_count: m.row_count,
                table_count: m.tables.len() as u32,
                snapshot_at: Some(timestamp(snapshot_at)),
                empty: shrink.empty,
                previous_row_count: shrink.previous_row_count.unwrap_or(0),
                warning_code: shrink.warning_code.unwrap_or_default().to_string(),
            }));
            outbox::enqueue(&mut tx, &ev).await?;
            ctx.finish_in(&mut tx).await?;
            tx.commit().await?;
            tracing::info!(
                backup_record_id = %job.id,
                bytes = m.byte_size,
                rows = m.row_count,
                tables = m.tables.len(),
                ms = started.elapsed().as_millis() as u64,
                "backup completed"
            );
            if let Some(code) = shrink.warning_code {
                tracing::warn!(
                    backup_record_id = %job.id,
                    code,
                    rows = m.row_count,
                    previous_rows = shrink.previous_row_count,
                    "backup completed with a warning"
                );
            }
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
            let tier = spec(job).map(|b| b.tier.clone()).unwrap_or_default();
            let failed_now = sqlx::query(
                "INSERT INTO pf_backup_records (id, organization_id, command_id, tier, status, error_code, completed_at, tenant_key) \
                 VALUES ($1, $2, $3, $4, 'failed', $5, now(), $6) \
                 ON CONFLICT (id) DO UPDATE SET status = 'failed', error_code = EXCLUDED.error_code, completed_at = now() \
                 WHERE pf_backup_records.status = 'started' AND pf_backup_records.organization_id = EXCLUDED.organization_id",
            )
            .bind(job.id.as_uuid())
            .bind(job.organization_id.as_uuid())
            .bind(job.command_id.as_uuid())
            .bind(&tier)
            .bind(err.code.as_ref())
            .bind(job.tenant_key.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if failed_now {
                // A failed record counts nothing: every attempt's objects go (best effort; the
                // retention sweep removes what is left after DR_RETENTION_ORPHAN_GRACE).
                let org = job.organization_id.as_uuid();
                self.remove_attempts(org, job.id.as_uuid(), 1..job.attempt.max(1) as u32 + 1)
                    .await;
            }
            let ev = job.event(Event::BackupFailed(v1::BackupFailed {
                backup_record_id: job.id.to_string(),
                tier,
                error_code: err.code.to_string(),
                message: err.message.to_string(),
            }));
            outbox::enqueue(tx, &ev).await
        })
    }
}
