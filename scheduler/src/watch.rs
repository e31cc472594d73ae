//! Freshness watch: conditions of enabled policies evaluated every tick, one `alert_raised`
//! per episode (at most one open alert per policy and kind, by a unique index) and one
//! `alert_resolved` when the condition clears (also when the policy is disabled or deleted).
//!
//! Kinds: `RPO_BREACHED` (the newest completed backup is older than the RPO objective, or
//! none exists an RPO after the policy was created), `BACKUP_FAILING` (the last
//! [`FAILING_AFTER`] finished backups all failed), `VERIFY_FAILED` (a completed backup's
//! latest verify was not ok).

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use drfleet_protocol::OrganizationId;
use drfleet_protocol::events::{envelope, timestamp};
use drfleet_protocol::v1::{self, event_envelope::Event};
use drfleet_runtime::outbox;

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

    fn severity(self) -> &'static str {
        match self {
            // The objective is missed: an auditor's finding.
            Kind::RpoBreached | Kind::VerifyFailed => "critical",
            // Not yet a missed objective; RPO_BREACHED follows if it goes on.
            Kind::BackupFailing => "warning",
        }
    }

    /// Policies (id, organization, backup, code) for which the condition holds now.
    fn condition(self) -> &'static str {
        match self {
            Kind::RpoBreached => {
                "SELECT p.id, p.organization_id, NULL::uuid, ''::text \
                   FROM pf_backup_policies p \
                   LEFT JOIN LATERAL ( \
                     SELECT max(r.snapshot_at) AS newest FROM pf_backup_records r \
                      WHERE r.policy_id = p.id::text AND r.status = 'completed') n ON true \
                  WHERE p.enabled AND p.rpo_seconds IS NOT NULL \
                    AND coalesce(n.newest, p.created_at) \
                        < $1 - make_interval(secs => p.rpo_seconds)"
            }
            Kind::BackupFailing => {
                "SELECT p.id, p.organization_id, l.last_id, coalesce(l.last_code, '') \
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
                "SELECT DISTINCT ON (p.id) p.id, p.organization_id, r.id, \
                        coalesce(r.verify_error_code, '') \
                   FROM pf_backup_policies p \
                   JOIN pf_backup_records r ON r.policy_id = p.id::text \
                  WHERE p.enabled AND r.status = 'completed' AND r.verify_status = 'failed' \
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

type Cond = (uuid::Uuid, uuid::Uuid, Option<uuid::Uuid>, String);
type AlertRow = (
    uuid::Uuid,
    uuid::Uuid,
    uuid::Uuid,
    Option<uuid::Uuid>,
    String,
    DateTime<Utc>,
);

/// Evaluate every kind; raise and resolve in `tx`, with their events.
#[tracing::instrument(skip_all, err)]
pub async fn watch(tx: &mut PgConnection, now: DateTime<Utc>) -> Result<WatchReport, sqlx::Error> {
    let mut report = WatchReport::default();
    for kind in Kind::ALL {
        let mut q = sqlx::query_as::<_, Cond>(sqlx::AssertSqlSafe(kind.condition()));
        q = match kind {
            Kind::RpoBreached => q.bind(now),
            Kind::BackupFailing => q.bind(FAILING_AFTER),
            Kind::VerifyFailed => q,
        };
        let holds = q.fetch_all(&mut *tx).await?;
        let ids: Vec<uuid::Uuid> = holds.iter().map(|c| c.0).collect();

        // Clear first: an episode whose condition is gone ends.
        let resolved: Vec<(uuid::Uuid, uuid::Uuid, uuid::Uuid)> = sqlx::query_as(
            "UPDATE pf_alerts SET resolved_at = $3 \
              WHERE kind = $1 AND resolved_at IS NULL AND NOT (policy_id = ANY($2)) \
             RETURNING id, organization_id, policy_id",
        )
        .bind(kind.as_str())
        .bind(&ids)
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        for (alert_id, org, policy_id) in resolved {
            let ev = Event::AlertResolved(v1::AlertResolved {
                alert_id: alert_id.to_string(),
                kind: kind.as_str().into(),
                policy_id: policy_id.to_string(),
                resolved_at: Some(timestamp(now)),
            });
            let corr = format!("policy:{policy_id}");
            outbox::enqueue(tx, &envelope(Some(OrganizationId(org)), &corr, None, ev)).await?;
            report.resolved += 1;
        }

        // Raise: one open row per (policy, kind); an existing episode stays as it is.
        let new_ids: Vec<uuid::Uuid> = holds.iter().map(|_| uuid::Uuid::now_v7()).collect();
        let orgs: Vec<uuid::Uuid> = holds.iter().map(|c| c.1).collect();
        let backups: Vec<Option<uuid::Uuid>> = holds.iter().map(|c| c.2).collect();
        let codes: Vec<String> = holds.iter().map(|c| c.3.clone()).collect();
        let raised: Vec<AlertRow> = sqlx::query_as(
            "INSERT INTO pf_alerts \
               (id, organization_id, kind, severity, policy_id, backup_record_id, code, raised_at) \
             SELECT a, o, $5, $6, p, b, c, $7 \
               FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $8::text[]) \
                 AS x(a, o, p, b, c) \
             ON CONFLICT (policy_id, kind) WHERE resolved_at IS NULL DO NOTHING \
             RETURNING id, organization_id, policy_id, backup_record_id, code, raised_at",
        )
        .bind(&new_ids)
        .bind(&orgs)
        .bind(&ids)
        .bind(&backups)
        .bind(kind.as_str())
        .bind(kind.severity())
        .bind(now)
        .bind(&codes)
        .fetch_all(&mut *tx)
        .await?;
        for (alert_id, org, policy_id, backup, code, raised_at) in raised {
            let ev = Event::AlertRaised(v1::AlertRaised {
                alert_id: alert_id.to_string(),
                kind: kind.as_str().into(),
                severity: kind.severity().into(),
                policy_id: policy_id.to_string(),
                backup_record_id: backup.map(|b| b.to_string()).unwrap_or_default(),
                code,
                raised_at: Some(timestamp(raised_at)),
            });
            let corr = format!("policy:{policy_id}");
            outbox::enqueue(tx, &envelope(Some(OrganizationId(org)), &corr, None, ev)).await?;
            report.raised += 1;
        }
    }
    report.open =
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM pf_alerts WHERE resolved_at IS NULL")
            .fetch_one(&mut *tx)
            .await? as u64;
    Ok(report)
}
