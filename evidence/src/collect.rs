//! Reading one organization's facts from the metadata database (no broker, no master key).
//! Every query filters on the organization; nothing of another one is read.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use futures::TryStreamExt;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::Error;
use crate::model::{
    Alert, AuditChain, Backup, BrokenAt, Drill, DrillCheck, FieldChange, Parameters, Phase, Policy,
    PolicyChange, Restore, Retention, Window,
};

/// Everything the pack reports, before the controls are evaluated.
#[derive(Debug, Clone)]
pub struct Collected {
    pub policies: Vec<Policy>,
    pub policy_changes: Vec<PolicyChange>,
    pub backups: Vec<Backup>,
    pub restores: Vec<Restore>,
    pub drills: Vec<Drill>,
    pub alerts: Vec<Alert>,
    pub audit_chain: AuditChain,
}

/// Longest detail kept of a drill check (they are sanitized texts; this bounds the page).
const MAX_DETAIL: usize = 300;

pub async fn collect(
    pool: &PgPool,
    org: Uuid,
    window: Window,
    params: &Parameters,
    now: DateTime<Utc>,
) -> Result<Collected, Error> {
    // The head first: the walk below covers at least up to it.
    let head = drfleet_audit::chain_head(pool, org).await?;
    let verdict = drfleet_audit::verify_chains(pool, Some(org)).await?;
    let audit_chain = AuditChain {
        intact: verdict.is_ok(),
        head_seq: head.as_ref().map_or(0, |h| h.seq),
        head_hash: head
            .as_ref()
            .map_or_else(|| hex::encode(drfleet_audit::GENESIS), |h| h.hash_hex()),
        events_verified: *verdict.as_ref().unwrap_or(&0),
        broken_at: verdict.err().map(|b| BrokenAt {
            chain_seq: b.chain_seq,
            problem: b.problem.to_string(),
        }),
    };
    let (mut policies, policy_changes, deleted) = policies(pool, org, window).await?;
    policies.extend(deleted);
    Ok(Collected {
        policies,
        policy_changes,
        backups: backups(pool, org, window).await?,
        restores: restores(pool, org, window).await?,
        drills: drills(pool, org, window, params).await?,
        alerts: alerts(pool, org, window, now).await?,
        audit_chain,
    })
}

/// Every organization with anything recorded (policies, backups, drills, restores, alerts or
/// an audit chain), sorted.
pub async fn organizations(pool: &PgPool) -> Result<Vec<Uuid>, Error> {
    Ok(sqlx::query_scalar(
        "SELECT organization_id FROM pf_backup_policies UNION \
         SELECT organization_id FROM pf_backup_records UNION \
         SELECT organization_id FROM pf_dr_drill_reports UNION \
         SELECT organization_id FROM pf_restore_jobs UNION \
         SELECT organization_id FROM pf_alerts UNION \
         SELECT chain_org FROM pf_audit_heads WHERE chain_org <> '00000000-0000-0000-0000-000000000000' \
         ORDER BY 1",
    )
    .fetch_all(pool)
    .await?)
}

#[derive(sqlx::FromRow)]
struct PolicyRow {
    id: Uuid,
    name: String,
    tier: String,
    schedule: String,
    timezone: String,
    enabled: bool,
    rpo_seconds: Option<i64>,
    rto_seconds: Option<i64>,
    keep_last: Option<i32>,
    keep_daily: Option<i32>,
    keep_weekly: Option<i32>,
    keep_monthly: Option<i32>,
    keep_yearly: Option<i32>,
    keep_within_seconds: Option<i64>,
    verify_cycle_seconds: Option<i64>,
    drill_schedule: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    updated_by: String,
}

/// The policies that exist now (created before the window's end), the changes of the window
/// from the audit log, and the policies deleted since the window began (rebuilt from their
/// last `policy_updated`).
async fn policies(
    pool: &PgPool,
    org: Uuid,
    window: Window,
) -> Result<(Vec<Policy>, Vec<PolicyChange>, Vec<Policy>), Error> {
    let rows: Vec<PolicyRow> = sqlx::query_as(
        "SELECT id, name, tier, schedule, timezone, enabled, rpo_seconds, rto_seconds, keep_last, \
           keep_daily, keep_weekly, keep_monthly, keep_yearly, keep_within_seconds, \
           verify_cycle_seconds, drill_schedule, created_at, updated_at, updated_by \
         FROM pf_backup_policies WHERE organization_id = $1 AND created_at < $2 ORDER BY name",
    )
    .bind(org)
    .bind(window.to)
    .fetch_all(pool)
    .await?;
    let n = |v: Option<i32>| v.map(i64::from);
    let current: Vec<Policy> = rows
        .into_iter()
        .map(|r| Policy {
            policy_id: r.id,
            name: r.name,
            tier: r.tier,
            schedule: r.schedule,
            timezone: r.timezone,
            enabled: r.enabled,
            rpo_seconds: r.rpo_seconds,
            rto_seconds: r.rto_seconds,
            retention: Retention {
                keep_last: n(r.keep_last),
                keep_daily: n(r.keep_daily),
                keep_weekly: n(r.keep_weekly),
                keep_monthly: n(r.keep_monthly),
                keep_yearly: n(r.keep_yearly),
                keep_within_seconds: r.keep_within_seconds,
            },
            verify_cycle_seconds: r.verify_cycle_seconds,
            drill_schedule: r.drill_schedule,
            created_at: Some(r.created_at),
            updated_at: Some(r.updated_at),
            updated_by: r.updated_by,
            deleted_at: None,
        })
        .collect();

    // The whole history of the organization's policy events (to diff each against the one
    // before, and to rebuild policies deleted since), reported for the window only.
    let mut events = sqlx::query(
        "SELECT event_id, chain_seq, event_type, occurred_at, payload FROM pf_audit_events \
         WHERE chain_org = $1 AND event_type IN ('policy_updated', 'policy_deleted') \
         ORDER BY chain_seq",
    )
    .bind(org)
    .fetch(pool);
    let mut last_spec: HashMap<String, serde_json::Value> = HashMap::new();
    let mut changes = Vec::new();
    let mut deleted = Vec::new();
    while let Some(row) = events.try_next().await? {
        let payload: serde_json::Value = row.try_get("payload")?;
        let at: DateTime<Utc> = row.try_get("occurred_at")?;
        let event_type: String = row.try_get("event_type")?;
        let text = |k: &str| payload[k].as_str().unwrap_or_default().to_string();
        let policy_id = text("policy_id");
        let (action, diff) = if event_type == "policy_deleted" {
            let spec = last_spec.remove(&policy_id);
            // Deleted since the window began: it was in force during (part of) it.
            if at >= window.from
                && let Some(p) = spec
                    .as_ref()
                    .and_then(|s| policy_from_spec(&payload, s, at))
                && !current.iter().any(|c| c.policy_id == p.policy_id)
            {
                deleted.push(p);
            }
            ("deleted", Vec::new())
        } else {
            let spec = payload
                .get("spec")
                .cloned()
                .unwrap_or(serde_json::Value::Null);
            let before = last_spec.insert(policy_id.clone(), spec.clone());
            let created = payload["created"].as_bool().unwrap_or(false) || before.is_none();
            let mut diff = Vec::new();
            spec_diff(
                "",
                before.as_ref().unwrap_or(&serde_json::Value::Null),
                &spec,
                &mut diff,
            );
            (if created { "created" } else { "updated" }, diff)
        };
        if window.contains(at) {
            changes.push(PolicyChange {
                event_id: row.try_get("event_id")?,
                chain_seq: row.try_get("chain_seq")?,
                at,
                operator: text("operator"),
                policy_id,
                name: text("name"),
                action: action.to_string(),
                changes: diff,
            });
        }
    }
    Ok((current, changes, deleted))
}

/// Leaf fields of two spec objects that differ (`from`/`to` null when absent).
pub fn spec_diff(
    prefix: &str,
    a: &serde_json::Value,
    b: &serde_json::Value,
    out: &mut Vec<FieldChange>,
) {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                spec_diff(
                    &path,
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        // A created policy: every field is new.
        (Value::Null, Value::Object(_)) => {
            spec_diff(prefix, &Value::Object(Default::default()), b, out)
        }
        (x, y) if x != y => out.push(FieldChange {
            field: prefix.to_string(),
            from: x.clone(),
            to: y.clone(),
        }),
        _ => {}
    }
}

/// A deleted policy as its last `policy_updated` described it (proto field names; 0 = unset).
fn policy_from_spec(
    deleted: &serde_json::Value,
    spec: &serde_json::Value,
    at: DateTime<Utc>,
) -> Option<Policy> {
    let num = |v: &serde_json::Value| v.as_i64().filter(|n| *n > 0);
    let s = |k: &str| spec[k].as_str().unwrap_or_default().to_string();
    let r = &spec["retention"];
    Some(Policy {
        policy_id: deleted["policy_id"].as_str()?.parse().ok()?,
        name: deleted["name"].as_str().unwrap_or_default().to_string(),
        tier: s("tier"),
        schedule: s("schedule"),
        timezone: Some(s("timezone"))
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| "UTC".into()),
        enabled: !spec["disabled"].as_bool().unwrap_or(false),
        rpo_seconds: num(&spec["rpo_seconds"]),
        rto_seconds: num(&spec["rto_seconds"]),
        retention: Retention {
            keep_last: num(&r["keep_last"]),
            keep_daily: num(&r["keep_daily"]),
            keep_weekly: num(&r["keep_weekly"]),
            keep_monthly: num(&r["keep_monthly"]),
            keep_yearly: num(&r["keep_yearly"]),
            keep_within_seconds: num(&r["keep_within_seconds"]),
        },
        verify_cycle_seconds: num(&spec["verify_cycle_seconds"]),
        drill_schedule: Some(s("drill_schedule")).filter(|d| !d.is_empty()),
        created_at: None,
        updated_at: None,
        updated_by: deleted["operator"].as_str().unwrap_or_default().to_string(),
        deleted_at: Some(at),
    })
}

#[derive(sqlx::FromRow)]
struct BackupRow {
    id: Uuid,
    policy_id: String,
    tier: String,
    status: String,
    snapshot_at: Option<DateTime<Utc>>,
    started_at: DateTime<Utc>,
    completed_at: Option<DateTime<Utc>>,
    byte_size: Option<i64>,
    checksum_sha256: Option<String>,
    key_id: Option<String>,
    verify_status: Option<String>,
    last_verified_at: Option<DateTime<Utc>>,
    verify_error_code: Option<String>,
    legal_hold: bool,
    deleted_at: Option<DateTime<Utc>>,
    retention_reason: Option<String>,
    error_code: Option<String>,
}

/// Backups started in the window, and the recovery points from before it that still existed
/// when it began (the controls read them).
async fn backups(pool: &PgPool, org: Uuid, window: Window) -> Result<Vec<Backup>, Error> {
    let mut rows = sqlx::query_as::<_, BackupRow>(
        "SELECT id, policy_id, tier, status, snapshot_at, started_at, completed_at, byte_size, \
           checksum_sha256, key_id, verify_status, last_verified_at, verify_error_code, legal_hold, \
           deleted_at, retention_reason, error_code \
         FROM pf_backup_records \
         WHERE organization_id = $1 AND started_at < $3 \
           AND (started_at >= $2 OR (completed_at IS NOT NULL AND (deleted_at IS NULL OR deleted_at >= $2))) \
         ORDER BY started_at, id",
    )
    .bind(org)
    .bind(window.from)
    .bind(window.to)
    .fetch(pool);
    let mut out = Vec::new();
    while let Some(r) = rows.try_next().await? {
        let retention_status = match r.status.as_str() {
            "completed" if r.legal_hold => "held",
            "completed" => "retained",
            "started" => "in_progress",
            other => other,
        }
        .to_string();
        out.push(Backup {
            backup_record_id: r.id,
            policy_id: r.policy_id,
            tier: r.tier,
            status: r.status,
            snapshot_at: r.snapshot_at,
            started_at: r.started_at,
            completed_at: r.completed_at,
            byte_size: r.byte_size,
            checksum_sha256: r.checksum_sha256,
            key_id: r.key_id,
            verify_status: r.verify_status,
            last_verified_at: r.last_verified_at,
            verify_error_code: r.verify_error_code,
            retention_status,
            legal_hold: r.legal_hold,
            deleted_at: r.deleted_at,
            deletion_reason: r.retention_reason,
            error_code: r.error_code,
        });
    }
    Ok(out)
}

#[derive(sqlx::FromRow)]
struct RestoreRow {
    id: Uuid,
    backup_record_id: Uuid,
    operator: String,
    mode: String,
    target: String,
    status: String,
    started_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    error_code: Option<String>,
}

async fn restores(pool: &PgPool, org: Uuid, window: Window) -> Result<Vec<Restore>, Error> {
    let rows: Vec<RestoreRow> = sqlx::query_as(
        "SELECT id, backup_record_id, operator, mode, target, status, started_at, finished_at, error_code \
         FROM pf_restore_jobs WHERE organization_id = $1 AND started_at >= $2 AND started_at < $3 \
         ORDER BY started_at, id",
    )
    .bind(org)
    .bind(window.from)
    .bind(window.to)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Restore {
            restore_job_id: r.id,
            backup_record_id: r.backup_record_id,
            operator: r.operator,
            mode: r.mode,
            target: r.target,
            status: r.status,
            started_at: r.started_at,
            finished_at: r.finished_at,
            error_code: r.error_code,
        })
        .collect())
}

#[derive(sqlx::FromRow)]
struct DrillRow {
    id: Uuid,
    backup_record_id: Option<Uuid>,
    policy_id: Option<Uuid>,
    tier: String,
    selection: String,
    target: String,
    passed: Option<bool>,
    started_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    snapshot_at: Option<DateTime<Utc>>,
    measured_rto_ms: Option<i64>,
    rto_objective_ms: Option<i64>,
    measured_rpo_ms: Option<i64>,
    rpo_objective_ms: Option<i64>,
    checks: serde_json::Value,
    phases: serde_json::Value,
    error_code: Option<String>,
}

/// Drills started in the window, those of the `drill_max_age_days` before its end, and the
/// latest one that measured a restore time before its end (the controls read them).
async fn drills(
    pool: &PgPool,
    org: Uuid,
    window: Window,
    params: &Parameters,
) -> Result<Vec<Drill>, Error> {
    let since = window
        .from
        .min(window.to - Duration::days(i64::from(params.drill_max_age_days)));
    let rows: Vec<DrillRow> = sqlx::query_as(
        "SELECT id, backup_record_id, policy_id, tier, selection, target, passed, started_at, \
           finished_at, snapshot_at, measured_rto_ms, rto_objective_ms, measured_rpo_ms, \
           rpo_objective_ms, checks, phases, error_code \
         FROM pf_dr_drill_reports \
         WHERE organization_id = $1 AND started_at < $3 AND (started_at >= $2 OR id = ( \
           SELECT id FROM pf_dr_drill_reports WHERE organization_id = $1 \
             AND measured_rto_ms IS NOT NULL AND finished_at < $3 \
           ORDER BY finished_at DESC, id DESC LIMIT 1)) \
         ORDER BY started_at, id",
    )
    .bind(org)
    .bind(since)
    .bind(window.to)
    .fetch_all(pool)
    .await?;
    let met = |m: Option<i64>, o: Option<i64>| m.zip(o).map(|(m, o)| m <= o);
    Ok(rows
        .into_iter()
        .map(|r| Drill {
            drill_report_id: r.id,
            backup_record_id: r.backup_record_id,
            policy_id: r.policy_id,
            tier: r.tier,
            selection: r.selection,
            target: r.target,
            passed: r.passed,
            started_at: r.started_at,
            finished_at: r.finished_at,
            snapshot_at: r.snapshot_at,
            measured_rto_ms: r.measured_rto_ms,
            rto_objective_ms: r.rto_objective_ms,
            rto_met: met(r.measured_rto_ms, r.rto_objective_ms),
            measured_rpo_ms: r.measured_rpo_ms,
            rpo_objective_ms: r.rpo_objective_ms,
            rpo_met: met(r.measured_rpo_ms, r.rpo_objective_ms),
            checks: r
                .checks
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| DrillCheck {
                    name: c["name"].as_str().unwrap_or_default().to_string(),
                    passed: c["passed"].as_bool().unwrap_or(false),
                    detail: c["detail"]
                        .as_str()
                        .unwrap_or_default()
                        .chars()
                        .take(MAX_DETAIL)
                        .collect(),
                })
                .collect(),
            phases: r
                .phases
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| Phase {
                    name: p["name"].as_str().unwrap_or_default().to_string(),
                    ms: p["ms"].as_i64().unwrap_or(0),
                })
                .collect(),
            error_code: r.error_code,
        })
        .collect())
}

#[derive(sqlx::FromRow)]
struct AlertRow {
    id: Uuid,
    kind: String,
    severity: String,
    policy_id: Uuid,
    backup_record_id: Option<Uuid>,
    code: String,
    raised_at: DateTime<Utc>,
    resolved_at: Option<DateTime<Utc>>,
}

/// Alerts open at some time in the window.
async fn alerts(
    pool: &PgPool,
    org: Uuid,
    window: Window,
    now: DateTime<Utc>,
) -> Result<Vec<Alert>, Error> {
    let rows: Vec<AlertRow> = sqlx::query_as(
        "SELECT id, kind, severity, policy_id, backup_record_id, code, raised_at, resolved_at \
         FROM pf_alerts WHERE organization_id = $1 AND raised_at < $3 \
           AND (resolved_at IS NULL OR resolved_at >= $2) ORDER BY raised_at, id",
    )
    .bind(org)
    .bind(window.from)
    .bind(window.to)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Alert {
            duration_seconds: (r.resolved_at.unwrap_or(now) - r.raised_at)
                .num_seconds()
                .max(0),
            alert_id: r.id,
            kind: r.kind,
            severity: r.severity,
            policy_id: r.policy_id,
            backup_record_id: r.backup_record_id,
            code: r.code,
            raised_at: r.raised_at,
            resolved_at: r.resolved_at,
        })
        .collect())
}
