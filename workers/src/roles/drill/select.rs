//! Which backup a drill restores (AWS Backup's two algorithms, plus a named record):
//!
//! - LATEST: the newest completed backup (by snapshot time) of the tier, of the policy when
//!   one is given;
//! - RANDOM_WITHIN_WINDOW: uniformly among the completed backups of the tier (and policy)
//!   whose snapshot lies within the last `window_days` days;
//! - RECORD: the named record, which must be the organization's and completed.
//!
//! The choice is made once per drill: it is recorded in the drill's report row before the
//! restore starts, and a later attempt of the same drill reuses it.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use drfleet_protocol::validate::{DrillSelection, DrillSpec};

use crate::handler::JobError;

/// The chosen backup.
#[derive(Debug, Clone)]
pub struct Chosen {
    pub backup_record_id: uuid::Uuid,
    pub tier: String,
    pub snapshot_at: Option<DateTime<Utc>>,
}

/// A completed backup's snapshot instant: `snapshot_at`, else its completion.
const SNAPSHOT: &str = "COALESCE(r.snapshot_at, r.completed_at, r.started_at)";

/// Choose the backup for `spec` among `org`'s completed ones at `now`. `tier` is the tier to
/// choose from (the command's, else the policy's; empty = any).
pub async fn choose(
    conn: &mut PgConnection,
    org: uuid::Uuid,
    spec: &DrillSpec,
    tier: &str,
    now: DateTime<Utc>,
) -> Result<Chosen, JobError> {
    let policy = spec.policy_id.map(|p| p.to_string());
    let row: Option<(uuid::Uuid, String, Option<DateTime<Utc>>)> = match spec.selection {
        DrillSelection::Record => {
            let id = spec
                .backup_record_id
                .ok_or_else(|| JobError::permanent("SPEC_MISMATCH", "RECORD without a record"))?;
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT r.id, r.tier, {SNAPSHOT} FROM pf_backup_records r \
                  WHERE r.id = $1 AND r.organization_id = $2 AND r.status = 'completed'"
            )))
            .bind(id.as_uuid())
            .bind(org)
            .fetch_optional(&mut *conn)
            .await?
        }
        // A crypto-shredded backup can no longer be read: LATEST and RANDOM choose among the
        // others (RECORD names one and fails with KEY_DESTROYED).
        DrillSelection::Latest => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT r.id, r.tier, {SNAPSHOT} FROM pf_backup_records r \
                  WHERE r.organization_id = $1 AND r.status = 'completed' AND r.shredded_at IS NULL \
                    AND ($2 = '' OR r.tier = $2) AND ($3::text IS NULL OR r.policy_id = $3) \
                  ORDER BY {SNAPSHOT} DESC, r.id DESC LIMIT 1"
            )))
            .bind(org)
            .bind(tier)
            .bind(&policy)
            .fetch_optional(&mut *conn)
            .await?
        }
        DrillSelection::RandomWithinWindow => {
            // Uniform: every candidate gets an independent random sort key.
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT r.id, r.tier, {SNAPSHOT} FROM pf_backup_records r \
                  WHERE r.organization_id = $1 AND r.status = 'completed' AND r.shredded_at IS NULL \
                    AND ($2 = '' OR r.tier = $2) AND ($3::text IS NULL OR r.policy_id = $3) \
                    AND {SNAPSHOT} >= $4 - make_interval(days => $5) AND {SNAPSHOT} <= $4 \
                  ORDER BY random() LIMIT 1"
            )))
            .bind(org)
            .bind(tier)
            .bind(&policy)
            .bind(now)
            .bind(spec.window_days as i32)
            .fetch_optional(&mut *conn)
            .await?
        }
    };
    let Some((backup_record_id, tier, snapshot_at)) = row else {
        return Err(match spec.selection {
            DrillSelection::Record => JobError::permanent(
                "BACKUP_NOT_RESTORABLE",
                "backup record is missing or not completed",
            ),
            DrillSelection::Latest => {
                JobError::permanent("NO_BACKUP_TO_DRILL", "no completed backup to drill")
            }
            DrillSelection::RandomWithinWindow => JobError::permanent(
                "NO_BACKUP_TO_DRILL",
                "no completed backup within the window",
            ),
        });
    };
    Ok(Chosen {
        backup_record_id,
        tier,
        snapshot_at,
    })
}
