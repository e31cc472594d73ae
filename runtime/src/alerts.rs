//! Alerts (`pf_alerts`): raising and resolving them with their `alert_raised` /
//! `alert_resolved` events, in the caller's transaction. The scheduler's freshness watch
//! and the drill role both raise through here, so an alert means the same everywhere:
//! at most one open alert per (policy, kind) — one episode — enforced by a unique index, an
//! event only for a row actually opened or closed.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use drfleet_protocol::CommandId;
use drfleet_protocol::events::{envelope_for, timestamp};
use drfleet_protocol::tenant::TenantKey;
use drfleet_protocol::v1::{self, EventEnvelope, event_envelope::Event};

use crate::outbox;

/// A drill of the policy did not pass (resolved by its next passing drill).
pub const DRILL_FAILED: &str = "DRILL_FAILED";
/// A passing drill's RTO exceeded 1.25 × the median of the policy's last 5 passing drills
/// (resolved by a passing drill within that bound).
pub const DRILL_RTO_REGRESSED: &str = "DRILL_RTO_REGRESSED";
/// A drill's measured RTO exceeded the policy's objective (resolved by a drill within it).
pub const RTO_OBJECTIVE_MISSED: &str = "RTO_OBJECTIVE_MISSED";
/// The kinds the drill role raises.
pub const DRILL_KINDS: [&str; 3] = [DRILL_FAILED, DRILL_RTO_REGRESSED, RTO_OBJECTIVE_MISSED];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Warning => "warning",
            Self::Critical => "critical",
        }
    }
}

/// What the events of an alert are correlated with: a command (the drill that raised it)
/// or, by default, the policy (`policy:<id>`, no causation).
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub correlation_id: Option<String>,
    pub causation_id: Option<CommandId>,
}

/// One condition that holds for one policy now.
#[derive(Debug, Clone)]
pub struct Condition {
    pub organization_id: uuid::Uuid,
    /// The organization as on the wire (events carry it).
    pub tenant_key: String,
    pub policy_id: uuid::Uuid,
    /// The backup (or report) it is about, when there is one.
    pub backup_record_id: Option<uuid::Uuid>,
    /// Sanitized code (an error code, a check name); never content.
    pub code: String,
}

fn event_of(key: &str, policy_id: uuid::Uuid, origin: &Origin, ev: Event) -> EventEnvelope {
    let key = TenantKey::parse(key).ok();
    let correlation = origin
        .correlation_id
        .clone()
        .unwrap_or_else(|| format!("policy:{policy_id}"));
    envelope_for(key.as_ref(), &correlation, origin.causation_id, ev)
}

type Raised = (
    uuid::Uuid,
    String,
    uuid::Uuid,
    Option<uuid::Uuid>,
    String,
    DateTime<Utc>,
);

/// Open an alert of `kind` for every condition whose policy has none open; an open episode
/// stays as it is. Returns the ids of the alerts opened (one `alert_raised` each).
pub async fn raise_all(
    tx: &mut PgConnection,
    kind: &str,
    severity: Severity,
    holds: &[Condition],
    now: DateTime<Utc>,
    origin: &Origin,
) -> Result<Vec<uuid::Uuid>, sqlx::Error> {
    if holds.is_empty() {
        return Ok(Vec::new());
    }
    let new_ids: Vec<uuid::Uuid> = holds.iter().map(|_| uuid::Uuid::now_v7()).collect();
    let orgs: Vec<uuid::Uuid> = holds.iter().map(|c| c.organization_id).collect();
    let policies: Vec<uuid::Uuid> = holds.iter().map(|c| c.policy_id).collect();
    let keys: Vec<String> = holds.iter().map(|c| c.tenant_key.clone()).collect();
    let backups: Vec<Option<uuid::Uuid>> = holds.iter().map(|c| c.backup_record_id).collect();
    let codes: Vec<String> = holds.iter().map(|c| c.code.clone()).collect();
    let raised: Vec<Raised> = sqlx::query_as(
        "INSERT INTO pf_alerts \
           (id, organization_id, tenant_key, kind, severity, policy_id, backup_record_id, \
            code, raised_at) \
         SELECT a, o, k, $5, $6, p, b, c, $7 \
           FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $8::text[], \
                       $9::text[]) AS x(a, o, p, b, c, k) \
         ON CONFLICT (policy_id, kind) WHERE resolved_at IS NULL DO NOTHING \
         RETURNING id, tenant_key, policy_id, backup_record_id, code, raised_at",
    )
    .bind(&new_ids)
    .bind(&orgs)
    .bind(&policies)
    .bind(&backups)
    .bind(kind)
    .bind(severity.as_str())
    .bind(now)
    .bind(&codes)
    .bind(&keys)
    .fetch_all(&mut *tx)
    .await?;
    let mut out = Vec::with_capacity(raised.len());
    for (alert_id, key, policy_id, backup, code, raised_at) in raised {
        let ev = Event::AlertRaised(v1::AlertRaised {
            alert_id: alert_id.to_string(),
            kind: kind.into(),
            severity: severity.as_str().into(),
            policy_id: policy_id.to_string(),
            backup_record_id: backup.map(|b| b.to_string()).unwrap_or_default(),
            code,
            raised_at: Some(timestamp(raised_at)),
        });
        outbox::enqueue(tx, &event_of(&key, policy_id, origin, ev)).await?;
        out.push(alert_id);
    }
    Ok(out)
}

/// [`raise_all`] for one condition: the alert's id when it was opened now, `None` when an
/// episode of this kind is already open for the policy.
pub async fn raise(
    tx: &mut PgConnection,
    kind: &str,
    severity: Severity,
    cond: Condition,
    now: DateTime<Utc>,
    origin: &Origin,
) -> Result<Option<uuid::Uuid>, sqlx::Error> {
    Ok(raise_all(tx, kind, severity, &[cond], now, origin)
        .await?
        .into_iter()
        .next())
}

async fn close(
    tx: &mut PgConnection,
    kind: &str,
    rows: Vec<(uuid::Uuid, String, uuid::Uuid)>,
    now: DateTime<Utc>,
    origin: &Origin,
) -> Result<Vec<uuid::Uuid>, sqlx::Error> {
    let mut out = Vec::with_capacity(rows.len());
    for (alert_id, key, policy_id) in rows {
        let ev = Event::AlertResolved(v1::AlertResolved {
            alert_id: alert_id.to_string(),
            kind: kind.into(),
            policy_id: policy_id.to_string(),
            resolved_at: Some(timestamp(now)),
        });
        outbox::enqueue(tx, &event_of(&key, policy_id, origin, ev)).await?;
        out.push(alert_id);
    }
    Ok(out)
}

/// Resolve every open alert of `kind` whose policy is not in `holding` (its condition
/// cleared). Returns the ids resolved (one `alert_resolved` each).
pub async fn resolve_all_but(
    tx: &mut PgConnection,
    kind: &str,
    holding: &[uuid::Uuid],
    now: DateTime<Utc>,
    origin: &Origin,
) -> Result<Vec<uuid::Uuid>, sqlx::Error> {
    let rows: Vec<(uuid::Uuid, String, uuid::Uuid)> = sqlx::query_as(
        "UPDATE pf_alerts SET resolved_at = $3 \
          WHERE kind = $1 AND resolved_at IS NULL AND NOT (policy_id = ANY($2)) \
         RETURNING id, tenant_key, policy_id",
    )
    .bind(kind)
    .bind(holding)
    .bind(now)
    .fetch_all(&mut *tx)
    .await?;
    close(tx, kind, rows, now, origin).await
}

/// Resolve the open alert of `kind` of one policy, if any. Returns its id.
pub async fn resolve(
    tx: &mut PgConnection,
    kind: &str,
    policy_id: uuid::Uuid,
    now: DateTime<Utc>,
    origin: &Origin,
) -> Result<Option<uuid::Uuid>, sqlx::Error> {
    let rows: Vec<(uuid::Uuid, String, uuid::Uuid)> = sqlx::query_as(
        "UPDATE pf_alerts SET resolved_at = $3 \
          WHERE kind = $1 AND resolved_at IS NULL AND policy_id = $2 \
         RETURNING id, tenant_key, policy_id",
    )
    .bind(kind)
    .bind(policy_id)
    .bind(now)
    .fetch_all(&mut *tx)
    .await?;
    Ok(close(tx, kind, rows, now, origin).await?.into_iter().next())
}
