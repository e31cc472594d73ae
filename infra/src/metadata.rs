//! Reads of the metadata database that several programs share (the workers, drctl, the
//! bench), so that what they decide on is read the same way everywhere.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use drfleet_protocol::retention::Candidate;

/// SQL condition: the backup record (alias `r`) is used by a queued or running job that
/// reads it — a restore, a drill or a verify — so retention must not delete it now.
pub const BACKUP_IN_USE: &str = "EXISTS (SELECT 1 FROM pf_jobs j \
     WHERE j.state IN ('queued', 'running') \
       AND j.kind IN ('restore', 'drill', 'verify') AND j.organization_id = r.organization_id \
       AND j.spec->>'backup_record_id' = r.id::text)";

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
