//! Retention cadence: one `RetentionCommand` per enabled policy per interval. The slot is
//! the interval boundary (`floor(now / interval) · interval`), so every scheduler computes
//! the same slot and the same command id, and the slot's unique row makes it fire once.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use drfleet_protocol::OrganizationId;

use crate::commands::{self, Minter, Target};
use crate::slots::SlotRows;
use crate::tick::TickError;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RetentionReport {
    pub published: u64,
}

/// The interval boundary at or before `now`.
pub fn slot(now: DateTime<Utc>, interval: Duration) -> DateTime<Utc> {
    let step = i64::try_from(interval.as_secs().max(1)).unwrap_or(i64::MAX);
    let secs = now.timestamp().div_euclid(step) * step;
    DateTime::<Utc>::from_timestamp(secs, 0).unwrap_or(now)
}

#[tracing::instrument(skip_all, err)]
pub async fn publish(
    tx: &mut PgConnection,
    minter: &Minter,
    interval: Duration,
    now: DateTime<Utc>,
) -> Result<RetentionReport, TickError> {
    let at = slot(now, interval);
    // Only policies without this slot's row: one index probe each, no insert conflicts.
    let rows: Vec<(uuid::Uuid, uuid::Uuid, String)> = sqlx::query_as(
        "SELECT p.id, p.organization_id, p.tenant_key FROM pf_backup_policies p \
          WHERE p.enabled AND NOT EXISTS (SELECT 1 FROM pf_schedule_slots s \
                 WHERE s.policy_id = p.id AND s.kind = 'retention' AND s.slot_at = $1 \
                   AND s.backup_record_id IS NULL) \
          ORDER BY p.id",
    )
    .bind(at)
    .fetch_all(&mut *tx)
    .await?;
    let mut slots = SlotRows::default();
    for (policy_id, org, tenant_key) in rows {
        let target = Target {
            policy_id,
            organization_id: OrganizationId(org),
            tenant_key: &tenant_key,
        };
        let env = commands::retention(minter, &target, at)?;
        slots.push(env, policy_id, org, at, None);
    }
    Ok(RetentionReport {
        published: slots.publish(tx, "retention").await?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_is_the_interval_boundary() {
        let t = DateTime::parse_from_rfc3339("2026-12-02T10:37:12Z")
            .unwrap()
            .with_timezone(&Utc);
        let s = slot(t, Duration::from_secs(3600));
        assert_eq!(s.to_rfc3339(), "2026-12-02T10:00:00+00:00");
        assert_eq!(slot(s, Duration::from_secs(3600)), s);
        assert_eq!(
            slot(t, Duration::from_secs(900)).to_rfc3339(),
            "2026-12-02T10:30:00+00:00"
        );
    }
}
