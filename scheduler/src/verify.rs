//! Rotating verification: every retained completed backup of a policy with a `verify_cycle`
//! is verified at least once per cycle; a new backup soon after it completes, the others
//! spread evenly over the cycle rather than all at once.
//!
//! State (`pf_verify_rotation`: when each backup is next due) survives restarts, so a
//! restarted scheduler continues the cycle. A backup first seen is due now if it is its
//! policy's newest, else at `now + cycle·rank/n` (rank among the policy's n backups, newest
//! first). Once its verify is published it is next due a cycle later, less a margin for the
//! time the verify waits in the queue.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use drfleet_protocol::OrganizationId;

use crate::commands::{self, Minter, Target};
use crate::due::in_flight;
use crate::slots::SlotRows;
use crate::tick::TickError;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct VerifyReport {
    pub registered: u64,
    pub published: u64,
    pub dropped: u64,
}

/// How much earlier than a full cycle a backup is verified again: a tenth of the cycle, at
/// most 10 minutes (the time a verify may wait in the queue).
pub fn margin(cycle: Duration) -> Duration {
    (cycle / 10).min(Duration::from_secs(600))
}

type DueRow = (
    uuid::Uuid,
    uuid::Uuid,
    DateTime<Utc>,
    uuid::Uuid,
    String,
    i64,
);

#[tracing::instrument(skip_all, err)]
pub async fn rotate(
    tx: &mut PgConnection,
    minter: &Minter,
    max_in_flight: u32,
    now: DateTime<Utc>,
) -> Result<VerifyReport, TickError> {
    // Backups no longer retained (or crypto-shredded: nothing can read them), or whose policy
    // no longer rotates, leave the rotation.
    let dropped = sqlx::query(
        "DELETE FROM pf_verify_rotation v \
          WHERE NOT EXISTS (SELECT 1 FROM pf_backup_records r \
                             WHERE r.id = v.backup_record_id AND r.status = 'completed' \
                               AND r.shredded_at IS NULL) \
             OR NOT EXISTS (SELECT 1 FROM pf_backup_policies p WHERE p.id = v.policy_id \
                             AND p.enabled AND p.verify_cycle_seconds IS NOT NULL)",
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let registered = sqlx::query(
        "INSERT INTO pf_verify_rotation (backup_record_id, policy_id, due_at) \
         SELECT c.id, c.policy_id, \
                CASE WHEN c.rank = 0 THEN $1 \
                     ELSE $1 + make_interval(secs => c.cycle::float8 * c.rank / c.n) END \
           FROM (SELECT r.id, p.id AS policy_id, p.verify_cycle_seconds AS cycle, \
                        row_number() OVER w - 1 AS rank, count(*) OVER (PARTITION BY p.id) AS n \
                   FROM pf_backup_policies p \
                   JOIN pf_backup_records r \
                     ON r.policy_id = p.id::text AND r.status = 'completed' \
                    AND r.shredded_at IS NULL \
                  WHERE p.enabled AND p.verify_cycle_seconds IS NOT NULL \
                 WINDOW w AS (PARTITION BY p.id ORDER BY r.completed_at DESC, r.id)) c \
          WHERE NOT EXISTS (SELECT 1 FROM pf_verify_rotation v \
                             WHERE v.backup_record_id = c.id) \
         ON CONFLICT DO NOTHING",
    )
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let mut report = VerifyReport {
        registered,
        dropped,
        published: 0,
    };

    let free = i64::from(max_in_flight) - in_flight(tx, "verify").await?;
    if free <= 0 {
        return Ok(report);
    }
    let rows: Vec<DueRow> = sqlx::query_as(
        "SELECT v.backup_record_id, v.policy_id, v.due_at, p.organization_id, p.tenant_key, \
                p.verify_cycle_seconds \
           FROM pf_verify_rotation v \
           JOIN pf_backup_policies p ON p.id = v.policy_id \
          WHERE v.due_at <= $1 AND p.enabled AND p.verify_cycle_seconds IS NOT NULL \
          ORDER BY v.due_at, v.backup_record_id \
          LIMIT $2 \
            FOR UPDATE OF v SKIP LOCKED",
    )
    .bind(now)
    .bind(free)
    .fetch_all(&mut *tx)
    .await?;
    let mut slots = SlotRows::default();
    let (mut ids, mut next) = (Vec::new(), Vec::new());
    for (backup, policy_id, due_at, org, tenant_key, cycle) in rows {
        let target = Target {
            policy_id,
            organization_id: OrganizationId(org),
            tenant_key: &tenant_key,
        };
        let env = commands::verify(minter, &target, backup, due_at)?;
        slots.push(env, policy_id, org, due_at, Some(backup));
        let cycle = Duration::from_secs(cycle.max(1) as u64);
        ids.push(backup);
        next.push(now + (cycle - margin(cycle)));
    }
    report.published = slots.publish(tx, "verify").await?;
    sqlx::query(
        "UPDATE pf_verify_rotation v SET due_at = m.next, last_scheduled_at = $3 \
           FROM UNNEST($1::uuid[], $2::timestamptz[]) AS m(id, next) \
          WHERE v.backup_record_id = m.id",
    )
    .bind(&ids)
    .bind(&next)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    Ok(report)
}
