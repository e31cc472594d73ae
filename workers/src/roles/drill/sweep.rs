//! Scratch schemas do not pile up. A drill drops its own at the end (or keeps it
//! `keep_hours`); what is left — a kept schema past its `keep_until`, or the schema of a drill
//! whose drop failed or whose job was given up — is dropped by this sweep, which every drill
//! worker runs.
//!
//! A candidate is a report whose scratch schema is recorded and not dropped, whose
//! `keep_until` (or, when none, its finish) has passed, and whose job is no longer queued or
//! running (a running attempt owns its schema; a killed attempt's schema is dropped by the
//! next attempt before it loads). One row at a time is claimed with `FOR UPDATE SKIP LOCKED`,
//! the schema dropped (`DROP SCHEMA IF EXISTS`: idempotent), and `scratch_dropped_at` set.

use std::sync::Arc;
use std::time::Duration;

use sqlx::{Connection, PgPool};
use tokio_util::sync::CancellationToken;

use crate::engine::staging::drop_sql;
use crate::engine::{RoleCtx, source_error};
use crate::handler::JobError;

/// How long a drop waits for locks (someone may be reading a kept schema).
const DROP_LOCK_TIMEOUT: &str = "10s";

/// Drop `scratch` (and its parts schema) on the target `db`; a no-op if already gone.
pub async fn drop_scratch(db: &PgPool, scratch: &str) -> Result<(), JobError> {
    let dropped = tokio::time::timeout(Duration::from_secs(60), async {
        let mut conn = db.acquire().await?;
        let mut tx = conn.begin().await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SET LOCAL lock_timeout = '{DROP_LOCK_TIMEOUT}'"
        )))
        .execute(&mut *tx)
        .await?;
        sqlx::query(sqlx::AssertSqlSafe(drop_sql(scratch)))
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    })
    .await;
    match dropped {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            tracing::warn!(scratch, "could not drop the drill's scratch schema");
            Err(source_error(&e))
        }
        Err(_) => {
            tracing::warn!(scratch, "dropping the drill's scratch schema timed out");
            Err(JobError::transient(
                "SCRATCH_DROP_TIMEOUT",
                "dropping the scratch schema timed out",
            ))
        }
    }
}

/// Drops left-over scratch schemas periodically.
pub struct Sweeper {
    pool: PgPool,
    ctx: Arc<RoleCtx>,
    interval: Duration,
}

impl Sweeper {
    /// `pool` is the metadata database.
    pub fn new(pool: PgPool, ctx: Arc<RoleCtx>, interval: Duration) -> Self {
        Self {
            pool,
            ctx,
            interval,
        }
    }

    /// Sweep now and every interval until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        loop {
            match self.sweep().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(dropped = n, "left-over drill scratch schemas dropped"),
                Err(e) => {
                    tracing::warn!(code = %e.code, message = %e.message, "drill scratch sweep failed; will retry")
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
    }

    /// Drop every due scratch schema, one transaction each; returns how many.
    pub async fn sweep(&self) -> Result<usize, JobError> {
        let mut n = 0;
        // Rows whose target is not configured here (another worker's) are skipped, not
        // retried in a loop: each pass looks at each row at most once.
        let mut skipped: Vec<uuid::Uuid> = Vec::new();
        loop {
            match self.sweep_one(&skipped).await? {
                Swept::None => return Ok(n),
                Swept::Dropped => n += 1,
                Swept::Skipped(id) => skipped.push(id),
            }
        }
    }

    async fn sweep_one(&self, skipped: &[uuid::Uuid]) -> Result<Swept, JobError> {
        let mut tx = self.pool.begin().await?;
        let row: Option<(uuid::Uuid, String, String)> = sqlx::query_as(
            "SELECT r.id, r.target, r.scratch_schema FROM pf_dr_drill_reports r \
              WHERE r.scratch_schema IS NOT NULL AND r.scratch_dropped_at IS NULL \
                AND COALESCE(r.keep_until, r.finished_at) <= now() \
                AND NOT (r.id = ANY($1)) \
                AND NOT EXISTS (SELECT 1 FROM pf_jobs j WHERE j.id = r.job_id \
                                 AND j.state IN ('queued', 'running')) \
              ORDER BY COALESCE(r.keep_until, r.finished_at) LIMIT 1 \
                FOR UPDATE OF r SKIP LOCKED",
        )
        .bind(skipped)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((id, target, scratch)) = row else {
            return Ok(Swept::None);
        };
        let Some(db) = self.ctx.target(&target) else {
            return Ok(Swept::Skipped(id));
        };
        drop_scratch(db, &scratch).await?;
        sqlx::query("UPDATE pf_dr_drill_reports SET scratch_dropped_at = now() WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(drill_report_id = %id, scratch, "drill scratch schema dropped");
        Ok(Swept::Dropped)
    }
}

enum Swept {
    None,
    Dropped,
    Skipped(uuid::Uuid),
}
