//! STAGING schemas do not pile up: each lives for DR_STAGING_TTL unless promoted.
//!
//! - A completed STAGING restore records `staging_expires_at` (completion + TTL) in the
//!   transaction that completes it ([`stamp_expiry`]). Jobs from before this change have
//!   none; for them `finished_at + TTL` is the expiry.
//! - The restore role runs a [`Sweeper`]: it claims one expired row at a time with
//!   `FOR UPDATE SKIP LOCKED` (so several restore workers share the work without doing it
//!   twice), drops the schema (`DROP SCHEMA IF EXISTS`: idempotent, so a sweep that dies
//!   before its commit is simply redone), and marks the row and writes `staging_expired` to
//!   the outbox in the same transaction.
//! - `StagingDiscardCommand` (a `restore`-kind command) drops one now, the same way, with a
//!   `staging_discarded` event; [`admit_discard`], [`run_discard`] and [`discard_failed`] are
//!   what the restore handler dispatches to for it.
//!
//! Only rows that are `completed`, `mode = 'staging'`, with a schema and not yet dropped are
//! ever touched: a running restore (`initiated`) or a promoted one (no kept schema; its
//! staging schema went with the swap) never is.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use drfleet_protocol::events::{envelope, timestamp};
use drfleet_protocol::v1::{self, event_envelope::Event};
use drfleet_protocol::validate::{
    CommandBody, ReasonCode, Rejection, StagingDiscardSpec, ValidCommand,
};
use drfleet_protocol::{CommandId, JobId, OrganizationId};

use crate::RunError;
use crate::config::WorkerConfig;
use crate::engine::staging::drop_sql as drop_staging_sql;
use crate::engine::{RoleCtx, source_error};
use crate::handler::{Admission, AdmitError, Job, JobCtx, JobError};
use crate::outbox;

/// How long a drop waits for locks on the staging tables (someone may be reading them)
/// before giving up until the next sweep or retry.
const DROP_LOCK_TIMEOUT: &str = "10s";

/// SQL condition: the row keeps a STAGING schema (alias `r`).
const KEPT: &str = "r.status = 'completed' AND r.mode = 'staging' AND r.staging_schema IS NOT NULL \
                    AND r.staging_dropped_at IS NULL";

/// Record the expiry of a STAGING restore's schema, inside the transaction completing it.
/// Promoted restores keep no schema (`staging_schema` is NULL) and get none.
pub(crate) async fn stamp_expiry(
    tx: &mut PgConnection,
    restore_job: JobId,
    ttl: Duration,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE pf_restore_jobs SET staging_expires_at = now() + make_interval(secs => $2) \
         WHERE id = $1 AND mode = 'staging' AND staging_schema IS NOT NULL",
    )
    .bind(restore_job.as_uuid())
    .bind(ttl.as_secs_f64())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Drop `schema` (and its parts schema) on the tenant database; a no-op if already gone.
async fn drop_schema(source: &PgPool, schema: &str) -> Result<(), JobError> {
    let mut conn = source.acquire().await.map_err(|e| source_error(&e))?;
    let mut tx = conn.begin().await.map_err(|e| source_error(&e))?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SET LOCAL lock_timeout = '{DROP_LOCK_TIMEOUT}'"
    )))
    .execute(&mut *tx)
    .await
    .map_err(|e| source_error(&e))?;
    sqlx::query(sqlx::AssertSqlSafe(drop_staging_sql(schema)))
        .execute(&mut *tx)
        .await
        .map_err(|e| source_error(&e))?;
    tx.commit().await.map_err(|e| source_error(&e))?;
    Ok(())
}

// ---- StagingDiscardCommand ----

fn discard_spec(job: &Job) -> Result<&StagingDiscardSpec, JobError> {
    match &job.spec {
        CommandBody::StagingDiscard(d) => Ok(d),
        _ => Err(JobError::permanent(
            "SPEC_MISMATCH",
            "job is not a staging discard",
        )),
    }
}

/// Admission of a discard: the job must be this organization's (another organization's
/// answers exactly like a missing one: NOT_FOUND) and keep a STAGING schema (CONFLICT).
pub(crate) fn admit_discard<'a>(
    tx: &'a mut PgConnection,
    cmd: &'a ValidCommand,
) -> BoxFuture<'a, Result<Admission, AdmitError>> {
    Box::pin(async move {
        let CommandBody::StagingDiscard(d) = &cmd.body else {
            return Err(AdmitError::Reject(Rejection::new(
                ReasonCode::InvalidArgument,
                "not a staging discard command",
            )));
        };
        let (job, org) = (d.restore_job_id.as_uuid(), cmd.organization_id.as_uuid());
        let kept: Option<bool> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT {KEPT} FROM pf_restore_jobs r WHERE r.id = $1 AND r.organization_id = $2"
        )))
        .bind(job)
        .bind(org)
        .fetch_optional(&mut *tx)
        .await?;
        // A restore accepted but not started yet has a job and no restore row.
        let queued = kept.is_none()
            && sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM pf_jobs WHERE id = $1 AND organization_id = $2 AND kind = 'restore' \
                 AND spec->>'kind' = 'restore'",
            )
            .bind(job)
            .bind(org)
            .fetch_one(&mut *tx)
            .await?
                > 0;
        match kept {
            Some(true) => Ok(Admission {
                concurrency_key: format!("staging-discard:{job}"),
            }),
            Some(false) => Err(AdmitError::Reject(Rejection::new(
                ReasonCode::Conflict,
                "restore job keeps no staging schema (not a completed STAGING restore, or already dropped)",
            ))),
            None if queued => Err(AdmitError::Reject(Rejection::new(
                ReasonCode::Conflict,
                "restore job has not completed",
            ))),
            None => Err(AdmitError::Reject(Rejection::new(
                ReasonCode::NotFound,
                "restore job not found",
            ))),
        }
    })
}

/// `backup_record_id, staging_schema` of a kept STAGING restore, locked for update.
type KeptRow = (uuid::Uuid, String, String);

/// Drop the schema now; the row, the event and the job's success commit together.
pub(crate) fn run_discard<'a>(
    engine: &'a RoleCtx,
    ctx: &'a JobCtx,
) -> BoxFuture<'a, Result<(), JobError>> {
    Box::pin(async move {
        let job = &ctx.job;
        let d = discard_spec(job)?;
        let org = job.organization_id.as_uuid();
        let mut tx = ctx.pool.begin().await?;
        let row: Option<KeptRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT r.backup_record_id, r.staging_schema, r.target FROM pf_restore_jobs r \
             WHERE r.id = $1 AND r.organization_id = $2 AND {KEPT} FOR UPDATE"
        )))
        .bind(d.restore_job_id.as_uuid())
        .bind(org)
        .fetch_optional(&mut *tx)
        .await?;
        // Admitted, but expired (or discarded by a twin command) since.
        let Some((record, schema, target)) = row else {
            return Err(JobError::permanent(
                "STAGING_NOT_KEPT",
                "the restore job no longer keeps a staging schema",
            ));
        };
        // The schema lives in the database the restore wrote.
        let db = engine
            .database(Some(target.as_str()).filter(|t| !t.is_empty()))
            .ok_or_else(|| {
                JobError::permanent(
                    "RESTORE_TARGET_UNKNOWN",
                    "the restore's target is no longer configured",
                )
            })?;
        drop_schema(db, &schema).await?;
        let at: DateTime<Utc> = sqlx::query_scalar(
            "UPDATE pf_restore_jobs SET staging_dropped_at = now(), staging_drop_reason = 'discarded' \
             WHERE id = $1 RETURNING staging_dropped_at",
        )
        .bind(d.restore_job_id.as_uuid())
        .fetch_one(&mut *tx)
        .await?;
        let ev = job.event(Event::StagingDiscarded(v1::StagingDiscarded {
            restore_job_id: d.restore_job_id.to_string(),
            backup_record_id: record.to_string(),
            staging_schema: schema.clone(),
            discarded_at: Some(timestamp(at)),
            operator: job.actor.clone(),
        }));
        outbox::enqueue(&mut tx, &ev).await?;
        ctx.finish_in(&mut tx).await?;
        tx.commit().await?;
        tracing::info!(restore_job_id = %d.restore_job_id, staging = schema, "staging schema discarded");
        Ok(())
    })
}

/// A discard's final failure: `restore_failed` carrying the discard's own job id (the
/// restore whose schema it was meant to drop did not fail); no restore row changes.
pub(crate) fn discard_failed<'a>(
    tx: &'a mut PgConnection,
    job: &'a Job,
    err: &'a JobError,
) -> BoxFuture<'a, Result<(), sqlx::Error>> {
    Box::pin(async move {
        let ev = job.event(Event::RestoreFailed(v1::RestoreFailed {
            restore_job_id: job.id.to_string(),
            backup_record_id: String::new(),
            operator: job.actor.clone(),
            error_code: err.code.to_string(),
            message: format!("staging discard failed: {}", err.message),
        }));
        outbox::enqueue(tx, &ev).await
    })
}

// ---- The sweep ----

/// `id, organization_id, backup_record_id, staging_schema, expires_at, correlation_id` of
/// an expired kept schema.
type ExpiredRow = (
    uuid::Uuid,
    uuid::Uuid,
    uuid::Uuid,
    String,
    DateTime<Utc>,
    Option<String>,
    String,
);

/// Drops expired STAGING schemas periodically; run by every restore worker.
pub struct Sweeper {
    pool: PgPool,
    source: PgPool,
    /// DR_RESTORE_TARGETS (STAGING restores into a target keep their schema there).
    targets: std::collections::BTreeMap<String, PgPool>,
    ttl: Duration,
    interval: Duration,
}

impl Sweeper {
    /// `pool` is the metadata database; the tenant database is opened lazily from `config`.
    pub fn new(config: &WorkerConfig, pool: PgPool) -> Result<Self, RunError> {
        let source = crate::engine::source_pool(config, "drfleet-worker-staging-sweep", 1)?;
        let mut targets = std::collections::BTreeMap::new();
        for (name, url) in &config.restore_targets {
            let pool = crate::engine::lazy_pool(url.expose(), "drfleet-worker-staging-sweep", 1)
                .map_err(|_| RunError::Role("DR_RESTORE_TARGETS is invalid".into()))?;
            targets.insert(name.clone(), pool);
        }
        Ok(Self {
            pool,
            source,
            targets,
            ttl: config.staging_ttl,
            // Often enough that a schema outlives its TTL by a small fraction of it.
            interval: (config.staging_ttl / 4)
                .clamp(Duration::from_secs(1), Duration::from_secs(60)),
        })
    }

    /// Sweep now and every interval until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        loop {
            match self.sweep().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(dropped = n, "expired staging schemas dropped"),
                Err(e) => {
                    tracing::warn!(code = %e.code, message = %e.message, "staging sweep failed; will retry")
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
        self.source.close().await;
        for t in self.targets.values() {
            t.close().await;
        }
    }

    /// Drop every expired kept schema, one transaction each; returns how many.
    pub async fn sweep(&self) -> Result<usize, JobError> {
        let mut n = 0;
        while self.sweep_one().await? {
            n += 1;
        }
        Ok(n)
    }

    async fn sweep_one(&self) -> Result<bool, JobError> {
        let mut tx = self.pool.begin().await?;
        let row: Option<ExpiredRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT r.id, r.organization_id, r.backup_record_id, r.staging_schema, \
               COALESCE(r.staging_expires_at, r.finished_at + make_interval(secs => $1)) AS expires_at, \
               j.correlation_id, r.target \
             FROM pf_restore_jobs r LEFT JOIN pf_jobs j ON j.id = r.id \
             WHERE {KEPT} AND COALESCE(r.staging_expires_at, r.finished_at + make_interval(secs => $1)) <= now() \
               AND (r.target = '' OR r.target = ANY($2)) \
             ORDER BY expires_at LIMIT 1 FOR UPDATE OF r SKIP LOCKED"
        )))
        .bind(self.ttl.as_secs_f64())
        .bind(self.targets.keys().cloned().collect::<Vec<String>>())
        .fetch_optional(&mut *tx)
        .await?;
        let Some((id, org, record, schema, expires_at, correlation, target)) = row else {
            return Ok(false);
        };
        // Schemas in a target no longer configured wait (the query skips them).
        let db = self.targets.get(&target).unwrap_or(&self.source);
        drop_schema(db, &schema).await?;
        let dropped_at: DateTime<Utc> = sqlx::query_scalar(
            "UPDATE pf_restore_jobs SET staging_dropped_at = now(), staging_drop_reason = 'expired', \
               staging_expires_at = $2 WHERE id = $1 RETURNING staging_dropped_at",
        )
        .bind(id)
        .bind(expires_at)
        .fetch_one(&mut *tx)
        .await?;
        // Correlated with the restore that kept the schema; no command caused the drop.
        let ev = envelope(
            Some(OrganizationId::from(org)),
            correlation.as_deref().unwrap_or_default(),
            None::<CommandId>,
            Event::StagingExpired(v1::StagingExpired {
                restore_job_id: id.to_string(),
                backup_record_id: record.to_string(),
                staging_schema: schema.clone(),
                expired_at: Some(timestamp(expires_at)),
                dropped_at: Some(timestamp(dropped_at)),
            }),
        );
        outbox::enqueue(&mut tx, &ev).await?;
        tx.commit().await?;
        tracing::info!(restore_job_id = %id, staging = schema, "expired staging schema dropped");
        Ok(true)
    }
}
