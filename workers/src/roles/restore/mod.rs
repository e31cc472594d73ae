//! The restore role: an artifact back into PostgreSQL, into a staging schema, optionally
//! promoted over the tenant's live rows. The work is the staging engine's
//! ([`crate::engine::staging`]); this role admits the command, runs the phases in order, and records
//! the outcome.
//!
//! 1. `restore_initiated`; the record must be the command's organization's and completed.
//! 2. Sealed pass: the stored object's size and SHA-256 and every chunk's AEAD tag are checked
//!    against the recorded manifest before a single row is written anywhere (it decrypts but
//!    does not decompress, so it costs a fraction of the load).
//! 3. PROMOTE: the worker's database role may set `session_replication_role` (else
//!    `PROMOTE_PRIVILEGE_MISSING` now, not after the load).
//! 4. The database written is the source, or the named target (`RestoreCommand.target`,
//!    DR_RESTORE_TARGETS; an unknown name is refused at admission). A target lacking every
//!    backed-up table gets them created from the manifest's DDL (types, sequences, tables;
//!    `SCHEMA_NOT_RECORDED` for a format 1 manifest), their constraints and indexes after the
//!    data (after the promotion, or at once for STAGING). Where the tables exist: schema
//!    compatibility — a column added since the backup takes its default; a dropped or
//!    retyped one fails the restore before staging exists.
//! 5. Staging `dr_restore_<id>`, loaded and checked ([`staging::load`], [`staging::checks`]).
//! 6. STAGING: the schema holds exactly the backup. PROMOTE: the swap
//!    ([`staging::promote`]).
//!
//! Every failure ends the attempt: its staging schema is dropped, the checks so far (and the
//! one that failed) are stored in `pf_restore_jobs.checks`, and the job is retried when the
//! error is transient or fails with `restore_failed` naming the failing check or table.
//! A worker killed mid-load leaves its schema until the job's next attempt (which drops it
//! before loading) or its final failure.
//!
//! Spans of the job's trace: `restore.sealed_pass`, `restore.load` and `restore.checks` (in
//! the staging engine), `restore.promote`.

mod target;

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde_json::json;
use sqlx::{Connection, PgConnection};
use tracing::Instrument as _;

use drfleet_artifact::{Keyring, Manifest};
use drfleet_infra::auth::Actor;
use drfleet_protocol::events::timestamp;
use drfleet_protocol::topology::CommandKind;
use drfleet_protocol::v1::{self, event_envelope::Event};
use drfleet_protocol::validate::{
    CommandBody, ReasonCode, Rejection, RestoreMode, RestoreSpec, ValidCommand,
};

use crate::engine::staging::{self, Check, PhaseTimings, Stage, Tables, checks, promote, src};
use crate::engine::tenant_key;
use crate::engine::{RoleCtx, admit_completed_record};
use crate::handler::{Admission, AdmitError, Job, JobCtx, JobError, JobHandler};
use crate::outbox;

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
    staging::schema_name(job.id.as_uuid())
}

/// What a restore produced.
struct Restored {
    rows: u64,
    checks: Vec<Check>,
    /// Time the live tables were locked by the promotion (0 for STAGING).
    lock_ms: u64,
    timings: PhaseTimings,
    /// The tables were created from the manifest.
    recreated: bool,
}

/// Longest failure message put into an event; the stored checks keep every detail.
const MESSAGE_MAX: usize = 1000;

fn clip(mut s: String) -> String {
    if s.len() > MESSAGE_MAX {
        let mut end = MESSAGE_MAX;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
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

impl RestoreHandler {
    async fn record_checks(&self, ctx: &JobCtx, checks: &[Check]) {
        let stored = sqlx::query(
            "UPDATE pf_restore_jobs SET checks = $3 WHERE id = $1 AND organization_id = $2",
        )
        .bind(ctx.job.id.as_uuid())
        .bind(ctx.job.organization_id.as_uuid())
        .bind(json!(checks))
        .execute(&ctx.pool)
        .await;
        if let Err(e) = stored {
            tracing::warn!(error = %e, "could not store the restore checks");
        }
    }

    /// End a failed attempt: drop its staging schema, store the checks with the failed one,
    /// and hand back the error.
    async fn fail(
        &self,
        ctx: &JobCtx,
        stage: &Stage,
        mut checks: Vec<Check>,
        failed: Check,
        err: JobError,
    ) -> JobError {
        stage.drop().await;
        checks.push(failed);
        self.record_checks(ctx, &checks).await;
        err
    }

    /// Steps 3–6 (see the module docs).
    async fn restore(
        &self,
        ctx: &JobCtx,
        rec: &Record,
        r: &RestoreSpec,
        keyring: Arc<Keyring>,
    ) -> Result<Restored, JobError> {
        let job = &ctx.job;
        let mut timings = PhaseTimings::default();
        let db = self
            .ctx
            .database(r.target.as_deref())
            .ok_or_else(target::unknown_target)?
            .clone();
        let opts = db.connect_options();
        let mut conn = src(PgConnection::connect_with(&opts).await)?;
        // A target lacking the tables gets them from the manifest (constraints later).
        let recreated = if r.target.is_some() {
            match target::prepare_tables(&self.ctx, &mut conn, job, &rec.manifest, &mut timings)
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    self.record_checks(ctx, &[Check::failed("schema_recreated", &e)])
                        .await;
                    return Err(e);
                }
            }
        } else {
            false
        };
        // The key type as the catalog has it now; the job's key must fit it. (The source's
        // is remembered for admission; a target's is not.)
        let key_type = if r.target.is_some() {
            let t = tenant_key::read_key_type(&mut conn, &self.ctx.layout()).await?;
            let t = t.unwrap_or(drfleet_protocol::tenant::KeyType::Uuid);
            tenant_key::check_job_key(t, &job.tenant_key)?;
            t
        } else {
            self.ctx.job_key_type(&mut conn, &job.tenant_key).await?
        };
        let stage = Stage {
            ctx: self.ctx.clone(),
            db,
            schema: staging_schema(job),
            tables: Tables::Like {
                live_schema: self.ctx.tenant_schema.clone(),
                recreated,
            },
            org: job.organization_id.as_uuid(),
            key: job.tenant_key.clone(),
            key_type,
            keyring,
            progress: ctx.progress.clone(),
        };
        if r.mode == RestoreMode::Promote {
            // Promoted already by an earlier attempt that died before its bookkeeping?
            if let Some(rows) =
                promote::promoted_before(&mut conn, job.id.as_uuid(), stage.org).await?
            {
                stage.drop().await;
                let mut checks = vec![Check {
                    name: "promoted",
                    passed: true,
                    detail: "promoted by an earlier attempt".into(),
                }];
                if recreated {
                    timings.constraints_ms =
                        target::finish_recreation(&mut conn, &rec.manifest, job.id.as_uuid())
                            .await?;
                    checks.push(target::recreated_check());
                }
                return Ok(Restored {
                    rows: rows as u64,
                    checks,
                    lock_ms: 0,
                    timings,
                    recreated,
                });
            }
            if let Err(e) = promote::check_privilege(&mut conn).await {
                let failed = Check::failed("promote_privilege", &e);
                return Err(self.fail(ctx, &stage, Vec::new(), failed, e).await);
            }
        }
        let started = Instant::now();
        let schema =
            checks::schema_check(&mut conn, &self.ctx.tenant_schema, &rec.manifest.tables).await?;
        timings.schema_ms += started.elapsed().as_millis() as u64;
        if !schema.passed {
            let e = JobError::permanent(
                "RESTORE_SCHEMA_INCOMPATIBLE",
                clip(format!(
                    "backup columns were dropped or retyped in the live schema: {}",
                    schema.detail
                )),
            );
            self.record_checks(ctx, &[schema]).await;
            return Err(e);
        }
        let mut checks = vec![schema];
        // An earlier attempt of this job may have left its staging schema behind.
        stage.drop().await;
        let rows = match stage.build(&mut conn, &rec.object_key, &rec.manifest).await {
            Ok(built) => {
                checks.extend(built.checks);
                timings.load_ms = built.timings.load_ms;
                timings.checks_ms = built.timings.checks_ms;
                built.rows
            }
            Err(e) => {
                drop(conn);
                let failed = Check::failed("loaded", &e);
                return Err(self.fail(ctx, &stage, checks, failed, e).await);
            }
        };
        let failing: Vec<String> = checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| format!("{} ({})", c.name, c.detail))
            .collect();
        if !failing.is_empty() {
            stage.drop().await;
            self.record_checks(ctx, &checks).await;
            return Err(JobError::permanent(
                "RESTORE_INTEGRITY_CHECK_FAILED",
                clip(format!("integrity check failed: {}", failing.join("; "))),
            ));
        }
        let mut lock_ms = 0;
        if r.mode == RestoreMode::Promote {
            let advice = promote::index_advice(&stage, &mut conn, &rec.manifest)
                .await
                .unwrap_or_else(|e| Check::failed("referencing_indexes", &e));
            checks.push(Check {
                passed: true,
                ..advice
            });
            let started = Instant::now();
            let promoted =
                promote::promote(&stage, &mut conn, &rec.manifest, job.id.as_uuid(), rows)
                    .instrument(tracing::info_span!("restore.promote"))
                    .await;
            match promoted {
                Ok(p) => {
                    timings.promote_ms = started.elapsed().as_millis() as u64;
                    tracing::info!(
                        promote_ms = timings.promote_ms,
                        lock_ms = p.lock_ms,
                        lock_wait_ms = p.lock_wait_ms,
                        "restore promoted"
                    );
                    lock_ms = p.lock_ms;
                    checks.push(Check {
                        name: "promoted",
                        passed: true,
                        detail: format!("live tables locked {} ms", p.lock_ms),
                    });
                }
                Err(e) => {
                    drop(conn);
                    let failed = Check::failed("promoted", &e);
                    let e = JobError {
                        message: clip(format!("promotion failed: {}", e.message)).into(),
                        ..e
                    };
                    return Err(self.fail(ctx, &stage, checks, failed, e).await);
                }
            }
        }
        if recreated {
            // After the data (PROMOTE) or on the still empty live tables (STAGING).
            match target::finish_recreation(&mut conn, &rec.manifest, job.id.as_uuid()).await {
                Ok(ms) => {
                    timings.constraints_ms = ms;
                    checks.push(target::recreated_check());
                }
                Err(e) => {
                    let failed = Check::failed("constraints_recreated", &e);
                    return Err(self.fail(ctx, &stage, checks, failed, e).await);
                }
            }
        }
        Ok(Restored {
            rows,
            checks,
            lock_ms,
            timings,
            recreated,
        })
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
        if let CommandBody::StagingDiscard(_) = &cmd.body {
            return super::staging_ttl::admit_discard(tx, cmd);
        }
        Box::pin(async move {
            let CommandBody::Restore(r) = &cmd.body else {
                return Err(AdmitError::Reject(Rejection::new(
                    ReasonCode::InvalidArgument,
                    "not a restore command",
                )));
            };
            if let Some(t) = &r.target
                && self.ctx.target(t).is_none()
            {
                return Err(AdmitError::Reject(Rejection::new(
                    ReasonCode::InvalidArgument,
                    "restore.target names no configured target",
                )));
            }
            self.ctx
                .admit_key(&cmd.tenant_key)
                .await
                .map_err(AdmitError::Reject)?;
            admit_completed_record(
                tx,
                cmd.organization_id.as_uuid(),
                r.backup_record_id.as_uuid(),
            )
            .await?;
            Ok(Admission {
                concurrency_key: format!("restore:{}", cmd.organization_id),
            })
        })
    }

    fn run<'a>(&'a self, ctx: &'a JobCtx) -> BoxFuture<'a, Result<(), JobError>> {
        if let CommandBody::StagingDiscard(_) = &ctx.job.spec {
            return super::staging_ttl::run_discard(&self.ctx, ctx);
        }
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
                 VALUES ($1, $2, $3, $4, $5, $8, $6, 'initiated', $7) ON CONFLICT (id) DO NOTHING",
            )
            .bind(job.id.as_uuid())
            .bind(org)
            .bind(job.command_id.as_uuid())
            .bind(r.backup_record_id.as_uuid())
            .bind(r.mode.as_str())
            .bind(&job.actor)
            .bind(&staging)
            .bind(r.target.as_deref().unwrap_or_default())
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

            // The backup's key, for this job only (KEY_DESTROYED after a shred).
            let keyring = match self.ctx.reading_keyring(&ctx.pool, &rec.manifest).await {
                Ok(k) => k,
                Err(e) => {
                    self.record_checks(ctx, &[Check::failed("sealed", &e)])
                        .await;
                    return Err(e);
                }
            };
            let fetch_ms = match staging::verify_sealed(
                &self.ctx,
                &keyring,
                &rec.object_key,
                &rec.manifest,
                &ctx.progress,
            )
            .instrument(tracing::info_span!("restore.sealed_pass"))
            .await
            {
                Ok(ms) => ms,
                Err(e) => {
                    self.record_checks(ctx, &[Check::failed("sealed", &e)])
                        .await;
                    return Err(e);
                }
            };
            ctx.progress.tick();
            tracing::info!(verify_ms = fetch_ms, "restore artifact verified");
            let Restored {
                rows,
                checks,
                lock_ms,
                mut timings,
                recreated,
            } = self.restore(ctx, &rec, r, keyring).await?;
            timings.fetch_ms = fetch_ms;

            let finished_at = Utc::now();
            let staging_out = if r.mode == RestoreMode::Staging {
                staging.clone()
            } else {
                String::new()
            };
            let mut tx = ctx.pool.begin().await?;
            sqlx::query(
                "UPDATE pf_restore_jobs SET status = 'completed', checks = $3, row_count = $4, finished_at = now(), \
                   staging_schema = NULLIF($5, ''), lock_ms = $6, timings = $7, recreated = $8 \
                 WHERE id = $1 AND organization_id = $2",
            )
            .bind(job.id.as_uuid())
            .bind(org)
            .bind(json!(checks))
            .bind(rows as i64)
            .bind(&staging_out)
            .bind((r.mode == RestoreMode::Promote).then_some(lock_ms as i64))
            .bind(json!(timings))
            .bind(recreated)
            .execute(&mut *tx)
            .await?;
            super::staging_ttl::stamp_expiry(&mut tx, job.id, self.ctx.staging_ttl).await?;
            let ev = job.event(Event::RestoreCompleted(v1::RestoreCompleted {
                restore_job_id: job.id.to_string(),
                backup_record_id: r.backup_record_id.to_string(),
                operator: job.actor.clone(),
                mode: r.mode.to_wire() as i32,
                started_at: Some(timestamp(started_at)),
                finished_at: Some(timestamp(finished_at)),
                row_count: rows,
                staging_schema: staging_out,
                lock_ms,
                target: r.target.clone().unwrap_or_default(),
            }));
            outbox::enqueue(&mut tx, &ev).await?;
            ctx.finish_in(&mut tx).await?;
            tx.commit().await?;
            tracing::info!(restore_job_id = %job.id, mode = r.mode.as_str(), target = r.target.as_deref().unwrap_or(""), rows, ?timings, "restore completed");
            Ok(())
        })
    }

    fn on_failed<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        job: &'a Job,
        err: &'a JobError,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        if let CommandBody::StagingDiscard(_) = &job.spec {
            return super::staging_ttl::discard_failed(tx, job, err);
        }
        Box::pin(async move {
            let (record, mode, target) = match spec(job) {
                Ok(r) => (
                    r.backup_record_id.to_string(),
                    r.mode.as_str(),
                    r.target.clone(),
                ),
                Err(_) => (String::new(), "staging", None),
            };
            let record_uuid = uuid::Uuid::parse_str(&record).unwrap_or_default();
            // A job given up after its workers died may have left its staging schema.
            if let Some(db) = self.ctx.database(target.as_deref()) {
                staging::drop_schema(db, &staging_schema(job)).await;
            }
            sqlx::query(
                "INSERT INTO pf_restore_jobs (id, organization_id, command_id, backup_record_id, mode, operator, status, error_code, finished_at, target) \
                 VALUES ($1, $2, $3, $4, $5, $6, 'failed', $7, now(), $8) \
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
            .bind(target.as_deref().unwrap_or_default())
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
