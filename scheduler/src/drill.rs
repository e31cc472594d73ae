//! Drill cadence: one `DrillCommand` per slot of each enabled policy's `drill_schedule`.
//!
//! The slot fired is the latest one at or before now — one catch-up after any downtime, never
//! one per missed slot — and only when it is newer than both the policy's last recorded drill
//! slot and its last change (a schedule set now does not fire a slot that passed before).
//! The command id is derived from (policy, slot) like a backup's, and the slot's unique row
//! in `pf_schedule_slots` makes it fire once whatever the number of schedulers. The drill
//! restores the policy's newest completed backup of its tier into the worker's drill target.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use drfleet_protocol::OrganizationId;
use drfleet_protocol::policy::Schedule;

use crate::commands::{self, Minter, Target};
use crate::due::in_flight;
use crate::slots::SlotRows;
use crate::tick::TickError;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DrillReport {
    /// Policies with a drill slot due now.
    pub due: u64,
    pub published: u64,
    /// Due slots left for a later tick (the in-flight cap).
    pub waiting: u64,
}

type Row = (
    uuid::Uuid,
    uuid::Uuid,
    String,
    String,
    String,
    String,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
);

/// The drill slot due for a policy now: the latest slot at or before `now`, if it is after
/// `not_before` (the policy's last change) and after the last slot fired.
pub fn due_slot(
    schedule: &Schedule,
    now: DateTime<Utc>,
    not_before: DateTime<Utc>,
    last_fired: Option<DateTime<Utc>>,
) -> Option<DateTime<Utc>> {
    schedule
        .latest_at_or_before(now)
        .filter(|s| *s >= not_before && last_fired.is_none_or(|l| *s > l))
}

/// Publish the due drill slots, at most `max_in_flight` scheduled drills in flight.
#[tracing::instrument(skip_all, err)]
pub async fn publish(
    tx: &mut PgConnection,
    minter: &Minter,
    max_in_flight: u32,
    now: DateTime<Utc>,
) -> Result<DrillReport, TickError> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT p.id, p.organization_id, p.tenant_key, p.tier, p.drill_schedule, p.timezone, \
                p.updated_at, \
                (SELECT max(s.slot_at) FROM pf_schedule_slots s \
                  WHERE s.policy_id = p.id AND s.kind = 'drill') \
           FROM pf_backup_policies p \
          WHERE p.enabled AND p.drill_schedule IS NOT NULL \
          ORDER BY p.id",
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut parsed: HashMap<(String, String), Option<Schedule>> = HashMap::new();
    let mut due = Vec::new();
    for (id, org, key, tier, cron, tz, changed, last) in rows {
        let sched = parsed
            .entry((cron, tz))
            .or_insert_with_key(|(c, tz)| Schedule::parse("drill_schedule", c, tz).ok());
        let Some(sched) = sched.as_ref() else {
            tracing::warn!(policy_id = %id, "drill schedule unreadable; not scheduling it");
            continue;
        };
        if let Some(slot) = due_slot(sched, now, changed, last) {
            due.push((id, org, key, tier, slot));
        }
    }
    let mut report = DrillReport {
        due: due.len() as u64,
        ..Default::default()
    };
    let free = i64::from(max_in_flight) - in_flight(tx, "drill").await?;
    // Oldest slot first, so a policy left waiting is first at the next tick.
    due.sort_by_key(|d| (d.4, d.0));
    let mut slots = SlotRows::default();
    for (policy_id, org, key, tier, slot) in due.into_iter().take(free.max(0) as usize) {
        let target = Target {
            policy_id,
            organization_id: OrganizationId(org),
            tenant_key: &key,
        };
        let env = commands::drill(minter, &target, &tier, slot)?;
        slots.push(env, policy_id, org, slot, None);
    }
    report.published = slots.publish(tx, "drill").await?;
    report.waiting = report.due.saturating_sub(report.published);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn the_latest_slot_fires_once_and_never_before_the_policy_changed() {
        let weekly = Schedule::parse("drill_schedule", "0 4 * * 0", "").unwrap();
        // Sunday 2026-11-29 04:00 is the latest slot before Wednesday.
        let now = t("2026-12-02T12:00:00Z");
        let sunday = t("2026-11-29T04:00:00Z");
        assert_eq!(
            due_slot(&weekly, now, t("2026-11-01T00:00:00Z"), None),
            Some(sunday)
        );
        // Already fired.
        assert_eq!(
            due_slot(&weekly, now, t("2026-11-01T00:00:00Z"), Some(sunday)),
            None
        );
        // Fired the week before: this week's is due (one catch-up, not one per week).
        assert_eq!(
            due_slot(
                &weekly,
                now,
                t("2026-01-01T00:00:00Z"),
                Some(t("2026-11-01T04:00:00Z"))
            ),
            Some(sunday)
        );
        // Set after the slot passed: nothing until next Sunday.
        assert_eq!(
            due_slot(&weekly, now, t("2026-12-01T00:00:00Z"), None),
            None
        );
    }
}
