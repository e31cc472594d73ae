//! Reads of the metadata database that several programs share (the workers, drctl, the
//! bench), so that what they decide on is read the same way everywhere.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use drfleet_protocol::policy::{PolicyError, parse_timezone};
use drfleet_protocol::retention::{Candidate, Rules};

/// SQL condition: the backup record (alias `r`) is used by a queued or running job that
/// reads it — a restore, a drill or a verify — so retention must not delete it now. A drill
/// that chose its backup itself (LATEST, RANDOM_WITHIN_WINDOW) names it in its report row.
pub const BACKUP_IN_USE: &str = "(EXISTS (SELECT 1 FROM pf_jobs j \
     WHERE j.state IN ('queued', 'running') \
       AND j.kind IN ('restore', 'drill', 'verify') AND j.organization_id = r.organization_id \
       AND j.spec->>'backup_record_id' = r.id::text) \
  OR EXISTS (SELECT 1 FROM pf_dr_drill_reports d JOIN pf_jobs j ON j.id = d.job_id \
     WHERE j.state IN ('queued', 'running') AND d.backup_record_id = r.id))";

#[derive(sqlx::FromRow)]
struct CandidateRow {
    id: uuid::Uuid,
    snapshot_at: DateTime<Utc>,
    verified_ok: bool,
    in_use: bool,
    held: bool,
}

/// The completed backups of `policy` (of organization `org`) as the retention selection sees
/// them: the sweep and `drctl retention plan` both read them here.
pub async fn retention_candidates(
    pool: &PgPool,
    org: uuid::Uuid,
    policy: uuid::Uuid,
) -> Result<Vec<Candidate>, sqlx::Error> {
    let rows: Vec<CandidateRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT r.id, COALESCE(r.snapshot_at, r.completed_at, r.started_at) AS snapshot_at, \
                COALESCE(r.verify_status = 'ok', false) AS verified_ok, \
                {BACKUP_IN_USE} AS in_use, r.legal_hold AS held \
         FROM pf_backup_records r \
         WHERE r.organization_id = $1 AND r.policy_id = $2 AND r.status = 'completed'"
    )))
    .bind(org)
    .bind(policy.to_string())
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Candidate {
            id: r.id,
            snapshot_at: r.snapshot_at,
            verified_ok: r.verified_ok,
            in_use: r.in_use,
            held: r.held,
        })
        .collect())
}

/// A policy's retention columns, as `pf_backup_policies` stores them.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredRetention {
    pub timezone: String,
    pub keep_last: Option<i32>,
    pub keep_daily: Option<i32>,
    pub keep_weekly: Option<i32>,
    pub keep_monthly: Option<i32>,
    pub keep_yearly: Option<i32>,
    pub keep_within_seconds: Option<i64>,
}

impl StoredRetention {
    /// The columns to select for [`StoredRetention`].
    pub const COLUMNS: &str = "timezone, keep_last, keep_daily, keep_weekly, keep_monthly, \
         keep_yearly, keep_within_seconds";

    /// The selection's rules (an unreadable time zone is refused: it was validated when set).
    pub fn rules(&self) -> Result<Rules, PolicyError> {
        let n = |v: Option<i32>| v.and_then(|v| u32::try_from(v).ok());
        Ok(Rules {
            keep_last: n(self.keep_last),
            keep_daily: n(self.keep_daily),
            keep_weekly: n(self.keep_weekly),
            keep_monthly: n(self.keep_monthly),
            keep_yearly: n(self.keep_yearly),
            keep_within_secs: self.keep_within_seconds.and_then(|v| u64::try_from(v).ok()),
            timezone: parse_timezone(&self.timezone)?,
        })
    }
}
