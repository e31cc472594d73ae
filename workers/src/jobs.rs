//! Durable jobs: `pf_jobs` rows claimed with `FOR UPDATE SKIP LOCKED`, held by a lease that
//! a heartbeat renews. A job whose worker died (lease ran out) is claimed again by another
//! worker; the lease guard on every final write makes its effects commit once.

use std::sync::Arc;
use std::time::Duration;

use sqlx::{PgConnection, PgPool, Row};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use drfleet_infra::trace_context::{TraceContext, continue_from};
use drfleet_protocol::tenant::TenantKey;
use drfleet_protocol::topology::CommandKind;
use drfleet_protocol::validate::CommandBody;

use crate::handler::{Job, JobCtx, JobError, JobHandler};
use crate::metrics::{Metrics, RunOutcome};

/// Insert a queued job (inside the transaction recording its command).
pub async fn insert(
    tx: &mut PgConnection,
    job: &Job,
    concurrency_key: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO pf_jobs (id, kind, organization_id, command_id, correlation_id, actor, spec, \
         concurrency_key, state, max_attempts, tenant_key, trace_context) \
         VALUES ($1,$2,$3,$4,$5,$6,$7,$8,'queued',$9,$10,$11)",
    )
    .bind(job.id.as_uuid())
    .bind(job.kind.as_str())
    .bind(job.organization_id.as_uuid())
    .bind(job.command_id.as_uuid())
    .bind(&job.correlation_id)
    .bind(&job.actor)
    .bind(sqlx::types::Json(&job.spec))
    .bind(concurrency_key)
    .bind(job.max_attempts)
    .bind(job.tenant_key.as_str())
    .bind(job.trace.as_ref().map(TraceContext::to_column))
    .execute(&mut *tx)
    .await?;
    sqlx::query("SELECT pg_notify('dr_jobs', $1)")
        .bind(job.kind.as_str())
        .execute(&mut *tx)
        .await?;
    Ok(())
}

fn row_to_job(row: &sqlx::postgres::PgRow) -> Result<Job, sqlx::Error> {
    let kind: String = row.try_get("kind")?;
    let spec: sqlx::types::Json<CommandBody> = row.try_get("spec")?;
    let organization_id: drfleet_protocol::OrganizationId =
        row.try_get::<uuid::Uuid, _>("organization_id")?.into();
    // Jobs queued before tenant keys were stored are uuid tenants' jobs.
    let tenant_key = match row.try_get::<Option<String>, _>("tenant_key")? {
        Some(k) => TenantKey::parse(&k)
            .map_err(|_| sqlx::Error::Protocol("pf_jobs.tenant_key is not a tenant key".into()))?,
        None => TenantKey::from(organization_id),
    };
    Ok(Job {
        id: row.try_get::<uuid::Uuid, _>("id")?.into(),
        kind: CommandKind::parse(&kind)
            .ok_or_else(|| sqlx::Error::Protocol("unknown job kind".into()))?,
        organization_id,
        tenant_key,
        command_id: row.try_get::<uuid::Uuid, _>("command_id")?.into(),
        correlation_id: row.try_get("correlation_id")?,
        actor: row.try_get("actor")?,
        spec: spec.0,
        attempt: row.try_get("attempts")?,
        max_attempts: row.try_get("max_attempts")?,
        trace: TraceContext::from_column(row.try_get::<Option<&str>, _>("trace_context")?),
    })
}

/// Claim the oldest runnable job of `kind`: queued, or running with an expired lease (its
/// worker died). Jobs whose concurrency key is held by a live running job wait.
pub async fn claim(
    pool: &PgPool,
    kind: CommandKind,
    owner: &str,
    lease: Duration,
) -> Result<Option<Job>, sqlx::Error> {
    let res = sqlx::query(
        "WITH c AS ( \
           SELECT j.id FROM pf_jobs j \
           WHERE j.kind = $1 AND j.not_before <= now() \
             AND (j.state = 'queued' OR (j.state = 'running' AND j.lease_expires_at < now())) \
             AND NOT EXISTS (SELECT 1 FROM pf_jobs r WHERE r.concurrency_key = j.concurrency_key \
                             AND r.state = 'running' AND r.id <> j.id) \
           ORDER BY j.created_at LIMIT 1 FOR UPDATE SKIP LOCKED) \
         UPDATE pf_jobs j SET state = 'running', lease_owner = $2, \
           lease_expires_at = now() + make_interval(secs => $3), attempts = j.attempts + 1, \
           started_at = COALESCE(j.started_at, now()), \
           progress_rows = NULL, progress_bytes = NULL, progress_table = NULL, progress_at = NULL \
         FROM c WHERE j.id = c.id RETURNING j.*",
    )
    .bind(kind.as_str())
    .bind(owner)
    .bind(lease.as_secs_f64())
    .fetch_optional(pool)
    .await;
    match res {
        Ok(Some(row)) => Ok(Some(row_to_job(&row)?)),
        Ok(None) => Ok(None),
        // Lost a race for the one-running-per-key slot: nothing to claim right now.
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("23505") => Ok(None),
        Err(e) => Err(e),
    }
}

/// Extend the lease; `false` when it is no longer ours.
pub async fn heartbeat(
    pool: &PgPool,
    job: &Job,
    owner: &str,
    lease: Duration,
) -> Result<bool, sqlx::Error> {
    let n = sqlx::query(
        "UPDATE pf_jobs SET lease_expires_at = now() + make_interval(secs => $3) \
         WHERE id = $1 AND lease_owner = $2 AND state = 'running'",
    )
    .bind(job.id.as_uuid())
    .bind(owner)
    .bind(lease.as_secs_f64())
    .execute(pool)
    .await?
    .rows_affected();
    Ok(n == 1)
}

pub(crate) async fn mark_succeeded(
    tx: &mut PgConnection,
    id: drfleet_protocol::JobId,
    owner: &str,
) -> Result<(), JobError> {
    let n = sqlx::query(
        "UPDATE pf_jobs SET state = 'succeeded', finished_at = now(), lease_owner = NULL, lease_expires_at = NULL \
         WHERE id = $1 AND lease_owner = $2 AND state = 'running'",
    )
    .bind(id.as_uuid())
    .bind(owner)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if n == 1 {
        Ok(())
    } else {
        Err(JobError::permanent(
            "LEASE_LOST",
            "job was taken over by another worker",
        ))
    }
}

/// Final failure: the handler records it and the job is marked failed, in one transaction.
async fn mark_failed(
    pool: &PgPool,
    handler: &dyn JobHandler,
    job: &Job,
    owner: Option<&str>,
    err: &JobError,
) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let n = sqlx::query(
        "UPDATE pf_jobs SET state = 'failed', finished_at = now(), error_code = $3, lease_owner = NULL, lease_expires_at = NULL \
         WHERE id = $1 AND state = 'running' AND ($2::text IS NULL OR lease_owner = $2)",
    )
    .bind(job.id.as_uuid())
    .bind(owner)
    .bind(err.code.as_ref())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if n != 1 {
        return Ok(false);
    }
    handler.on_failed(&mut tx, job, err).await?;
    tx.commit().await?;
    Ok(true)
}

/// Hand a job back to the queue (transient failure, or shutdown), optionally after a delay.
/// A shutdown hand-back does not count as an attempt.
async fn release(
    pool: &PgPool,
    job: &Job,
    owner: &str,
    delay: Duration,
    count_attempt: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE pf_jobs SET state = 'queued', lease_owner = NULL, lease_expires_at = NULL, \
           not_before = now() + make_interval(secs => $3), attempts = attempts - CASE WHEN $4 THEN 0 ELSE 1 END \
         WHERE id = $1 AND lease_owner = $2 AND state = 'running'",
    )
    .bind(job.id.as_uuid())
    .bind(owner)
    .bind(delay.as_secs_f64())
    .bind(count_attempt)
    .execute(pool)
    .await?;
    Ok(())
}

/// Shared state of the job runners of one process.
#[derive(Clone)]
pub struct RunnerCtx {
    pub pool: PgPool,
    pub owner: Arc<str>,
    pub lease: Duration,
    /// A job without progress for this long is ended (DR_JOB_STALL_SECS).
    pub stall: Duration,
    pub poll: Duration,
    pub metrics: Arc<Metrics>,
    /// Cancelled at shutdown: stop claiming.
    pub stop_claiming: CancellationToken,
    /// Cancelled when the shutdown grace ran out: abandon in-flight jobs (handed back).
    pub abandon: CancellationToken,
}

/// Delay before retrying a transiently failed job: 2 s, 4 s, 8 s ... capped at 60 s.
pub fn retry_delay(attempt: i32) -> Duration {
    Duration::from_secs(2u64.saturating_pow(attempt.clamp(1, 6) as u32).min(60))
}

/// Claim and run jobs of `handler.kind()` until shutdown.
pub async fn run_runner(ctx: RunnerCtx, handler: Arc<dyn JobHandler>, wake: Arc<Notify>) {
    let kind = handler.kind();
    loop {
        if ctx.stop_claiming.is_cancelled() {
            return;
        }
        match claim(&ctx.pool, kind, &ctx.owner, ctx.lease).await {
            Ok(Some(job)) => {
                // A span of the command's trace, whichever worker and attempt this is.
                let span = tracing::info_span!(
                    "job",
                    job_id = %job.id,
                    kind = job.kind.as_str(),
                    org = %job.organization_id,
                    attempt = job.attempt,
                );
                continue_from(job.trace.as_ref(), &span);
                run_one(&ctx, handler.as_ref(), job).instrument(span).await;
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(kind = kind.as_str(), error = %e, "job claim failed; will retry")
            }
        }
        tokio::select! {
            _ = ctx.stop_claiming.cancelled() => return,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(ctx.poll) => {}
        }
    }
}

async fn run_one(ctx: &RunnerCtx, handler: &dyn JobHandler, job: Job) {
    // A job that has used up its attempts (its workers keep dying) fails for good.
    if job.attempt > job.max_attempts {
        let err = JobError::permanent("ATTEMPTS_EXHAUSTED", "job failed on every attempt");
        if finish_failed(ctx, handler, &job, &err).await {
            ctx.metrics.job_failed(job.kind, &err.code);
        }
        return;
    }
    tracing::info!("job started");
    let run = ctx.metrics.job_started(job.kind);
    let cancel = ctx.abandon.child_token();
    let progress = run.progress.clone();
    tokio::spawn(crate::progress::record(
        ctx.pool.clone(),
        job.id,
        ctx.owner.clone(),
        progress.clone(),
        cancel.clone(),
    ));
    let jctx = JobCtx {
        job: job.clone(),
        pool: ctx.pool.clone(),
        cancel: cancel.clone(),
        progress: progress.clone(),
        lease_owner: ctx.owner.clone(),
    };

    // Heartbeat: renew the lease; if it is lost, or the job has stopped moving, cancel it.
    // Returns whether the job was ended as stalled.
    let hb = {
        let (pool, owner, lease, stall, job, cancel) = (
            ctx.pool.clone(),
            ctx.owner.clone(),
            ctx.lease,
            ctx.stall,
            job.clone(),
            cancel.clone(),
        );
        let beat = (lease / 3).min(stall / 2);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return false,
                    _ = tokio::time::sleep(beat) => {}
                }
                if progress.idle() >= stall {
                    tracing::warn!(job_id = %job.id, stall_secs = stall.as_secs(), "job made no progress; ending it");
                    cancel.cancel();
                    return true;
                }
                match heartbeat(&pool, &job, &owner, lease).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(job_id = %job.id, "job lease lost; stopping it");
                        cancel.cancel();
                        return false;
                    }
                    Err(e) => tracing::warn!(job_id = %job.id, error = %e, "heartbeat failed"),
                }
            }
        })
    };

    let result = tokio::select! {
        r = handler.run(&jctx) => Some(r),
        _ = cancel.cancelled() => None,
    };
    cancel.cancel();
    let stalled = hb.await.unwrap_or(false);
    // A stalled job's future is dropped like a handed-back one (its transactions roll back),
    // but it counts as a failed attempt: retried, and failed for good once out of attempts.
    let result = match result {
        None if stalled => Some(Err(JobError::transient(
            "JOB_STALLED",
            format!("no progress for {} s", ctx.stall.as_secs()),
        ))),
        r => r,
    };

    match result {
        None => {
            // Shutdown grace ran out or the lease was lost: hand it back untouched.
            if let Err(e) = release(&ctx.pool, &job, &ctx.owner, Duration::ZERO, false).await {
                tracing::warn!(error = %e, "could not hand the job back; its lease will expire");
            }
            tracing::info!("job handed back");
            run.end(RunOutcome::HandedBack);
        }
        Some(Ok(())) => {
            // Handlers normally finish inside their last transaction; this covers those
            // without effects of their own.
            let mut conn = match ctx.pool.acquire().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "could not mark the job succeeded; its lease will expire");
                    return;
                }
            };
            let _ = sqlx::query(
                "UPDATE pf_jobs SET state = 'succeeded', finished_at = now(), lease_owner = NULL, lease_expires_at = NULL \
                 WHERE id = $1 AND lease_owner = $2 AND state = 'running'",
            )
            .bind(job.id.as_uuid())
            .bind(&*ctx.owner)
            .execute(&mut *conn)
            .await;
            run.end(RunOutcome::Succeeded);
            tracing::info!("job succeeded");
        }
        Some(Err(err)) if err.transient && job.attempt < job.max_attempts => {
            let delay = retry_delay(job.attempt);
            tracing::warn!(code = %err.code, retry_in_ms = delay.as_millis() as u64, "job failed transiently; will retry");
            run.end(RunOutcome::Retried(&err.code));
            if let Err(e) = release(&ctx.pool, &job, &ctx.owner, delay, true).await {
                tracing::warn!(error = %e, "could not requeue the job; its lease will expire");
            }
        }
        Some(Err(err)) => {
            // Recorded by another worker (the job was taken over): not this run's outcome.
            if finish_failed(ctx, handler, &job, &err).await {
                run.end(RunOutcome::Failed(&err.code));
            }
        }
    }
}

/// Record a final failure; whether this call recorded it.
async fn finish_failed(
    ctx: &RunnerCtx,
    handler: &dyn JobHandler,
    job: &Job,
    err: &JobError,
) -> bool {
    // The failure must be recorded; keep trying through short database outages.
    let mut delay = Duration::from_millis(200);
    for _ in 0..20 {
        match mark_failed(&ctx.pool, handler, job, Some(&ctx.owner), err).await {
            Ok(recorded) => {
                if recorded {
                    tracing::warn!(code = %err.code, "job failed");
                }
                return recorded;
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not record the job failure; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
    false
}
