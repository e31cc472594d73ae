//! Freshness watch: conditions of enabled policies evaluated every tick, one `alert_raised`
//! per episode (at most one open alert per policy and kind, by a unique index) and one
//! `alert_resolved` when the condition clears (also when the policy is disabled or deleted).
//!
//! Kinds: `RPO_BREACHED` (the newest completed backup is older than the RPO objective, or
//! none exists an RPO after the policy was created), `BACKUP_FAILING` (the last
//! [`FAILING_AFTER`] finished backups all failed), `VERIFY_FAILED` (a completed backup's
//! latest verify was not ok). The drill kinds (raised and resolved by the drill role) are
//! resolved here only when their policy is disabled or deleted.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use drfleet_runtime::alerts::{self, Condition, Origin, Severity};

/// Consecutive failed backups that raise `BACKUP_FAILING`.
pub const FAILING_AFTER: i64 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    RpoBreached,
    BackupFailing,
    VerifyFailed,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::RpoBreached, Kind::BackupFailing, Kind::VerifyFailed];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::RpoBreached => "RPO_BREACHED",
            Kind::BackupFailing => "BACKUP_FAILING",
            Kind::VerifyFailed => "VERIFY_FAILED",
        }
    }

    fn severity(self) -> Severity {
        match self {
            // The objective is missed: an auditor's finding.
            Kind::RpoBreached | Kind::VerifyFailed => Severity::Critical,
            // Not yet a missed objective; RPO_BREACHED follows if it goes on.
            Kind::BackupFailing => Severity::Warning,
        }
    }

    /// Policies (id, organization, backup, code) for which the condition holds now.
    fn condition(self) -> &'static str {
        match self {
            Kind::RpoBreached => {
                "SELECT p.id, p.organization_id, p.tenant_key, NULL::uuid, ''::text \
                   FROM pf_backup_policies p \
                   LEFT JOIN LATERAL ( \
                     SELECT max(r.snapshot_at) AS newest FROM pf_backup_records r \
                      WHERE r.policy_id = p.id::text AND r.status = 'completed') n ON true \
                  WHERE p.enabled AND p.rpo_seconds IS NOT NULL \
                    AND coalesce(n.newest, p.created_at) \
                        < $1 - make_interval(secs => p.rpo_seconds)"
            }
            Kind::BackupFailing => {
                "SELECT p.id, p.organization_id, p.tenant_key, l.last_id, coalesce(l.last_code, '') \
                   FROM pf_backup_policies p \
                   CROSS JOIN LATERAL ( \
                     SELECT count(*) AS n, count(*) FILTER (WHERE t.status = 'failed') AS failed, \
                            (array_agg(t.id ORDER BY t.started_at DESC))[1] AS last_id, \
                            (array_agg(t.error_code ORDER BY t.started_at DESC))[1] AS last_code \
                       FROM (SELECT r.id, r.status, r.error_code, r.started_at \
                               FROM pf_backup_records r \
                              WHERE r.policy_id = p.id::text AND r.status <> 'started' \
                              ORDER BY r.started_at DESC LIMIT $1) t) l \
                  WHERE p.enabled AND l.n = $1 AND l.failed = $1"
            }
            Kind::VerifyFailed => {
                "SELECT DISTINCT ON (p.id) p.id, p.organization_id, p.tenant_key, r.id, \
                        coalesce(r.verify_error_code, '') \
                   FROM pf_backup_policies p \
                   JOIN pf_backup_records r ON r.policy_id = p.id::text \
                  WHERE p.enabled AND r.status = 'completed' AND r.verify_status = 'failed' \
                    AND r.shredded_at IS NULL \
                  ORDER BY p.id, r.last_verified_at DESC NULLS LAST"
            }
        }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WatchReport {
    pub raised: u64,
    pub resolved: u64,
    pub open: u64,
}

type Cond = (uuid::Uuid, uuid::Uuid, String, Option<uuid::Uuid>, String);

/// Evaluate every kind; raise and resolve in `tx`, with their events (through
/// [`drfleet_runtime::alerts`], as the drill role does).
#[tracing::instrument(skip_all, err)]
pub async fn watch(tx: &mut PgConnection, now: DateTime<Utc>) -> Result<WatchReport, sqlx::Error> {
    let mut report = WatchReport::default();
    let origin = Origin::default();
    for kind in Kind::ALL {
        let mut q = sqlx::query_as::<_, Cond>(sqlx::AssertSqlSafe(kind.condition()));
        q = match kind {
            Kind::RpoBreached => q.bind(now),
            Kind::BackupFailing => q.bind(FAILING_AFTER),
            Kind::VerifyFailed => q,
        };
        let holds: Vec<Condition> = q
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(
                |(policy_id, organization_id, tenant_key, backup_record_id, code)| Condition {
                    organization_id,
                    tenant_key,
                    policy_id,
                    backup_record_id,
                    code,
                },
            )
            .collect();
        let ids: Vec<uuid::Uuid> = holds.iter().map(|c| c.policy_id).collect();
        // Clear first: an episode whose condition is gone ends.
        report.resolved += alerts::resolve_all_but(tx, kind.as_str(), &ids, now, &origin)
            .await?
            .len() as u64;
        // Raise: one open row per (policy, kind); an existing episode stays as it is.
        report.raised += alerts::raise_all(tx, kind.as_str(), kind.severity(), &holds, now, &origin)
            .await?
            .len() as u64;
    }
    // The drill role raises and resolves the drill kinds; an alert of a policy since disabled
    // or deleted would wait for a drill that never comes.
    let enabled: Vec<uuid::Uuid> = sqlx::query_scalar(
        "SELECT p.id FROM pf_backup_policies p WHERE p.enabled AND EXISTS \
           (SELECT 1 FROM pf_alerts a WHERE a.policy_id = p.id AND a.resolved_at IS NULL)",
    )
    .fetch_all(&mut *tx)
    .await?;
    for kind in alerts::DRILL_KINDS {
        report.resolved += alerts::resolve_all_but(tx, kind, &enabled, now, &origin)
            .await?
            .len() as u64;
    }
    report.open =
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM pf_alerts WHERE resolved_at IS NULL")
            .fetch_one(&mut *tx)
            .await? as u64;
    Ok(report)
}
