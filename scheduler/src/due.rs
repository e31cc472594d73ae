//! Backup slots: claim the policies that are due, fairly and within the in-flight cap, and
//! in the caller's transaction record each slot and queue its command in the outbox.
//!
//! A policy's `next_due_at` is its next slot. A claimed policy fires ONE command for the
//! latest slot at or before now (one catch-up after any downtime, never one per missed slot)
//! and moves `next_due_at` past now. A slot is recorded in `pf_schedule_slots` under a unique
//! key, so even two schedulers cannot publish it twice.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use drfleet_protocol::OrganizationId;
use drfleet_protocol::policy::Schedule;

use crate::commands::{self, Minter, Target};
use crate::slots::SlotRows;
use crate::tick::TickError;

/// What one pass published.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DueReport {
    /// Policies whose slot was due.
    pub due: u64,
    pub published: u64,
    /// Of those, catch-ups for missed slots.
    pub catch_ups: u64,
    /// Due slots left waiting for capacity.
    pub waiting: u64,
    /// Scheduled backup jobs queued or running before this pass.
    pub in_flight: u64,
}

type Candidate = (
    uuid::Uuid,
    uuid::Uuid,
    String,
    String,
    String,
    String,
    DateTime<Utc>,
);

type Moves = (
    Vec<uuid::Uuid>,
    Vec<Option<DateTime<Utc>>>,
    Vec<DateTime<Utc>>,
);

/// Scheduled backups still queued or running (their slot not settled).
pub async fn in_flight(tx: &mut PgConnection, kind: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM pf_schedule_slots WHERE kind = $1 AND settled_at IS NULL",
    )
    .bind(kind)
    .fetch_one(&mut *tx)
    .await
}

/// Publish the due backup slots, at most `max_in_flight` scheduled backups in flight.
#[tracing::instrument(skip_all, err)]
pub async fn publish_due(
    tx: &mut PgConnection,
    minter: &Minter,
    max_in_flight: u32,
    now: DateTime<Utc>,
) -> Result<DueReport, TickError> {
    let busy = in_flight(tx, "backup").await?;
    let due_total: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pf_backup_policies WHERE enabled AND next_due_at <= $1",
    )
    .bind(now)
    .fetch_one(&mut *tx)
    .await?;
    let mut report = DueReport {
        due: due_total as u64,
        in_flight: busy as u64,
        ..Default::default()
    };
    let free = i64::from(max_in_flight) - busy;
    if free <= 0 || due_total == 0 {
        report.waiting = due_total as u64;
        return Ok(report);
    }
    // Fair across organizations (round robin: each organization's oldest slot first), oldest
    // first within a round. Picked first, locked second (by primary key: a join here gets
    // planned as a nested loop whenever the due column's statistics are stale); rows another
    // transaction holds (a policy being changed) wait for the next tick.
    let picked: Vec<uuid::Uuid> = sqlx::query_scalar(
        "SELECT id FROM ( \
           SELECT id, next_due_at, row_number() OVER \
             (PARTITION BY organization_id ORDER BY next_due_at, id) AS rn \
           FROM pf_backup_policies WHERE enabled AND next_due_at <= $1) d \
         ORDER BY rn, next_due_at, id LIMIT $2",
    )
    .bind(now)
    .bind(free)
    .fetch_all(&mut *tx)
    .await?;
    let mut rows: Vec<Candidate> = sqlx::query_as(
        "SELECT id, organization_id, tenant_key, tier, schedule, timezone, next_due_at \
           FROM pf_backup_policies \
          WHERE id = ANY($1) AND enabled AND next_due_at <= $2 \
            FOR UPDATE SKIP LOCKED",
    )
    .bind(&picked)
    .bind(now)
    .fetch_all(&mut *tx)
    .await?;
    let order: std::collections::HashMap<uuid::Uuid, usize> =
        picked.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    rows.sort_by_key(|r| order.get(&r.0).copied().unwrap_or(usize::MAX));

    let mut slots = SlotRows::default();
    // Per claimed policy: id, next slot (None: stop), slot fired.
    let mut moved: Moves = Default::default();
    // Most policies share a handful of schedules: parse each once per pass.
    let mut parsed: std::collections::HashMap<(String, String), Option<Schedule>> =
        Default::default();
    for (id, org, tenant_key, tier, schedule, tz, next_due) in rows.drain(..) {
        let sched = parsed
            .entry((schedule, tz))
            .or_insert_with_key(|(s, tz)| Schedule::parse("schedule", s, tz).ok());
        let Some(sched) = sched.as_ref() else {
            // Validated when set; a schedule this build cannot read must not fire forever.
            tracing::warn!(policy_id = %id, "policy schedule unreadable; not scheduling it");
            moved.0.push(id);
            moved.1.push(None);
            moved.2.push(next_due);
            continue;
        };
        let Some(due) = sched.due(next_due, now) else {
            continue;
        };
        let target = Target {
            policy_id: id,
            organization_id: OrganizationId(org),
            tenant_key: &tenant_key,
        };
        let env = commands::backup(minter, &target, &tier, due.slot, due.missed)?;
        slots.push(env, id, org, due.slot, None);
        moved.0.push(id);
        moved.1.push(due.next);
        moved.2.push(due.slot);
        if due.missed {
            report.catch_ups += 1;
        }
    }
    // A slot already recorded cannot happen while next_due_at moves past it, but the unique
    // key is what guarantees it.
    report.published = slots.publish(tx, "backup").await?;
    sqlx::query(
        "UPDATE pf_backup_policies p SET next_due_at = m.next, last_slot_at = m.slot \
           FROM UNNEST($1::uuid[], $2::timestamptz[], $3::timestamptz[]) AS m(id, next, slot) \
          WHERE p.id = m.id",
    )
    .bind(&moved.0)
    .bind(&moved.1)
    .bind(&moved.2)
    .execute(&mut *tx)
    .await?;
    report.waiting = report.due.saturating_sub(report.published);
    Ok(report)
}

/// Settle slots whose job finished, whose command was refused, or that waited longer than
/// `lost_after` without a job: they no longer count against the in-flight cap.
#[tracing::instrument(skip_all, err)]
pub async fn settle(
    tx: &mut PgConnection,
    lost_after: std::time::Duration,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE pf_schedule_slots s SET settled_at = now() \
          WHERE s.settled_at IS NULL AND ( \
             EXISTS (SELECT 1 FROM pf_jobs j WHERE j.command_id = s.command_id \
                      AND j.state IN ('succeeded', 'failed')) \
          OR EXISTS (SELECT 1 FROM pf_commands c WHERE c.command_id = s.command_id \
                      AND c.outcome = 'rejected') \
          OR EXISTS (SELECT 1 FROM pf_rejected_messages r WHERE r.command_id = s.command_id) \
          OR (s.published_at < now() - make_interval(secs => $1) \
              AND NOT EXISTS (SELECT 1 FROM pf_jobs j WHERE j.command_id = s.command_id)))",
    )
    .bind(lost_after.as_secs_f64())
    .execute(&mut *tx)
    .await?
    .rows_affected())
}
