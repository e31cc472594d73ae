//! The drill's report row (`pf_dr_drill_reports`, one per drill command), its outcome event
//! and its alerts — the outcome, the event and the alerts commit in one transaction.
//!
//! The row is written when the drill starts (with the chosen backup and the scratch schema,
//! so a drill killed mid-way leaves a row naming what to clean up and which backup a later
//! attempt reuses) and completed at the end: `dr_drill_completed` (passed or not) or, for a
//! drill that could not run, `dr_drill_failed` ([`failed`]).

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::PgConnection;

use drfleet_protocol::events::timestamp;
use drfleet_protocol::v1::{self, event_envelope::Event};
use drfleet_protocol::validate::DrillSpec;
use drfleet_runtime::alerts::{self, Condition, Origin, Severity};

use super::suite::{self, Row};
use crate::handler::{Job, JobError};
use crate::outbox;

/// The policy a drill measures against.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub id: uuid::Uuid,
    pub tier: String,
    pub enabled: bool,
    /// 0 = not set.
    pub rto_objective_ms: u64,
    pub rpo_objective_ms: u64,
    pub assertions: Vec<drfleet_protocol::validate::DrillAssertion>,
}

/// `tier, enabled, rto_seconds, rpo_seconds, drill_assertions` of a policy.
type PolicyRow = (String, bool, Option<i64>, Option<i64>, serde_json::Value);

/// The organization's policy `id`, if it exists.
pub async fn policy(
    conn: &mut PgConnection,
    org: uuid::Uuid,
    id: uuid::Uuid,
) -> Result<Option<Policy>, JobError> {
    let row: Option<PolicyRow> = sqlx::query_as(
        "SELECT tier, enabled, rto_seconds, rpo_seconds, drill_assertions \
           FROM pf_backup_policies WHERE id = $1 AND organization_id = $2",
    )
    .bind(id)
    .bind(org)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((tier, enabled, rto, rpo, asserts)) = row else {
        return Ok(None);
    };
    let assertions = serde_json::from_value(asserts).map_err(|_| {
        JobError::permanent(
            "POLICY_INVALID",
            "the policy's drill assertions are unreadable",
        )
    })?;
    let ms = |s: Option<i64>| s.map_or(0, |s| s.max(0) as u64 * 1000);
    Ok(Some(Policy {
        id,
        tier,
        enabled,
        rto_objective_ms: ms(rto),
        rpo_objective_ms: ms(rpo),
        assertions,
    }))
}

/// A drill's row as started.
#[derive(Debug, Clone)]
pub struct Started {
    pub id: uuid::Uuid,
    pub backup_record_id: uuid::Uuid,
    pub tier: String,
    pub snapshot_at: Option<DateTime<Utc>>,
}

/// id, backup_record_id, tier, snapshot_at of a report row.
type StartedRow = (
    uuid::Uuid,
    Option<uuid::Uuid>,
    String,
    Option<DateTime<Utc>>,
);

/// The report row of this drill command, if an earlier attempt started one with a backup.
pub async fn existing(conn: &mut PgConnection, job: &Job) -> Result<Option<Started>, JobError> {
    let row: Option<StartedRow> = sqlx::query_as(
        "SELECT id, backup_record_id, tier, snapshot_at FROM pf_dr_drill_reports \
              WHERE command_id = $1 AND organization_id = $2",
    )
    .bind(job.command_id.as_uuid())
    .bind(job.organization_id.as_uuid())
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.and_then(|(id, b, tier, snapshot_at)| {
        b.map(|backup_record_id| Started {
            id,
            backup_record_id,
            tier,
            snapshot_at,
        })
    }))
}

/// What a drill records when it starts.
pub struct Start<'a> {
    pub job: &'a Job,
    pub selection: &'a str,
    pub target: &'a str,
    pub scratch: &'a str,
    pub policy: Option<&'a Policy>,
    pub backup_record_id: uuid::Uuid,
    pub tier: &'a str,
    pub snapshot_at: Option<DateTime<Utc>>,
}

/// Write the report row (once per command: a later attempt finds it and keeps its backup).
pub async fn start(conn: &mut PgConnection, s: Start<'_>) -> Result<Started, JobError> {
    let objective = |f: fn(&Policy) -> u64| s.policy.map(f).filter(|v| *v > 0).map(|v| v as i64);
    let (id, backup_record_id, tier, snapshot_at): (
        uuid::Uuid,
        Option<uuid::Uuid>,
        String,
        Option<DateTime<Utc>>,
    ) = sqlx::query_as(
        "INSERT INTO pf_dr_drill_reports (id, organization_id, command_id, job_id, \
           backup_record_id, tier, policy_id, selection, target, scratch_schema, snapshot_at, \
           tenant_key, rto_objective_ms, rpo_objective_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
         ON CONFLICT (command_id) DO UPDATE SET job_id = EXCLUDED.job_id, \
           backup_record_id = COALESCE(pf_dr_drill_reports.backup_record_id, EXCLUDED.backup_record_id), \
           tier = CASE WHEN pf_dr_drill_reports.backup_record_id IS NULL THEN EXCLUDED.tier ELSE pf_dr_drill_reports.tier END, \
           snapshot_at = COALESCE(pf_dr_drill_reports.snapshot_at, EXCLUDED.snapshot_at), \
           scratch_schema = EXCLUDED.scratch_schema, scratch_dropped_at = NULL \
         WHERE pf_dr_drill_reports.organization_id = EXCLUDED.organization_id \
         RETURNING id, backup_record_id, tier, snapshot_at",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(s.job.organization_id.as_uuid())
    .bind(s.job.command_id.as_uuid())
    .bind(s.job.id.as_uuid())
    .bind(s.backup_record_id)
    .bind(s.tier)
    .bind(s.policy.map(|p| p.id))
    .bind(s.selection)
    .bind(s.target)
    .bind(s.scratch)
    .bind(s.snapshot_at)
    .bind(s.job.tenant_key.as_str())
    .bind(objective(|p| p.rto_objective_ms))
    .bind(objective(|p| p.rpo_objective_ms))
    .fetch_one(&mut *conn)
    .await?;
    Ok(Started {
        id,
        backup_record_id: backup_record_id.unwrap_or(s.backup_record_id),
        tier,
        snapshot_at,
    })
}

/// One timed phase.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Phase {
    pub name: &'static str,
    pub ms: u64,
}

/// A drill that ran to the end.
pub struct Outcome<'a> {
    pub job: &'a Job,
    pub report: &'a Started,
    pub selection: &'a str,
    pub target: &'a str,
    pub scratch: &'a str,
    pub policy: Option<&'a Policy>,
    pub matrix: Vec<Row>,
    pub phases: Vec<Phase>,
    pub rto_ms: u64,
    pub rpo_ms: u64,
    /// The scratch schema was dropped (false: kept until `keep_until`, or the drop failed
    /// and the sweeper retries it now).
    pub dropped: bool,
    pub keep_until: Option<DateTime<Utc>>,
}

impl Outcome<'_> {
    pub fn passed(&self) -> bool {
        self.matrix.iter().all(|r| r.passed)
    }
}

/// Complete the report, publish `dr_drill_completed` and raise or resolve the policy's
/// drill alerts, in `tx`.
pub async fn completed(tx: &mut PgConnection, o: &Outcome<'_>) -> Result<(), JobError> {
    let passed = o.passed();
    sqlx::query(
        "UPDATE pf_dr_drill_reports SET passed = $2, measured_rto_ms = $3, measured_rpo_ms = $4, \
           checks = $5, phases = $6, finished_at = now(), error_code = NULL, \
           scratch_dropped_at = CASE WHEN $7 THEN now() END, keep_until = $8 \
         WHERE id = $1",
    )
    .bind(o.report.id)
    .bind(passed)
    .bind(o.rto_ms as i64)
    .bind(o.rpo_ms as i64)
    .bind(json!(o.matrix))
    .bind(json!(o.phases))
    .bind(o.dropped)
    .bind(o.keep_until)
    .execute(&mut *tx)
    .await?;
    let policy = o.policy;
    let ev = o.job.event(Event::DrDrillCompleted(v1::DrillCompleted {
        drill_report_id: o.report.id.to_string(),
        backup_record_id: o.report.backup_record_id.to_string(),
        passed,
        measured_rto_ms: o.rto_ms,
        measured_rpo_ms: o.rpo_ms,
        checks: o
            .matrix
            .iter()
            .map(|r| v1::DrillCheck {
                name: r.name.clone(),
                passed: r.passed,
                detail: r.detail.clone(),
            })
            .collect(),
        target: o.target.to_string(),
        policy_id: policy.map(|p| p.id.to_string()).unwrap_or_default(),
        phases: o
            .phases
            .iter()
            .map(|p| v1::DrillPhase {
                name: p.name.into(),
                ms: p.ms,
            })
            .collect(),
        rto_objective_ms: policy.map_or(0, |p| p.rto_objective_ms),
        rpo_objective_ms: policy.map_or(0, |p| p.rpo_objective_ms),
        selection: o.selection.to_string(),
        tier: o.report.tier.clone(),
        snapshot_at: o.report.snapshot_at.map(timestamp),
        scratch_schema: o.scratch.to_string(),
        scratch_dropped: o.dropped,
    }));
    outbox::enqueue(tx, &ev).await?;
    if let Some(p) = policy.filter(|p| p.enabled) {
        let failing: Vec<&str> = o
            .matrix
            .iter()
            .filter(|r| !r.passed)
            .map(|r| r.name.as_str())
            .collect();
        let report = (o.report.id, Some(o.report.backup_record_id));
        drill_alerts(tx, o.job, p, report, &failing, Some(o.rto_ms)).await?;
    }
    Ok(())
}

/// Longest alert code (a list of failing check names may be long).
const CODE_MAX: usize = 200;

fn clip(mut s: String) -> String {
    if s.len() > CODE_MAX {
        let mut end = CODE_MAX;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// Raise or resolve `DRILL_FAILED`, `RTO_OBJECTIVE_MISSED` and `DRILL_RTO_REGRESSED` for the
/// drill just recorded. `failing`: the names of the failed matrix rows (or the error code of a
/// drill that could not run); `rto_ms`: the measured RTO, `None` when nothing was measured.
async fn drill_alerts(
    tx: &mut PgConnection,
    job: &Job,
    p: &Policy,
    (report_id, backup): (uuid::Uuid, Option<uuid::Uuid>),
    failing: &[&str],
    rto_ms: Option<u64>,
) -> Result<(), sqlx::Error> {
    let now = Utc::now();
    let origin = Origin {
        correlation_id: Some(job.correlation_id.clone()),
        causation_id: Some(job.command_id),
    };
    let cond = |code: String| Condition {
        organization_id: job.organization_id.as_uuid(),
        tenant_key: job.tenant_key.as_str().to_string(),
        policy_id: p.id,
        backup_record_id: backup,
        code: clip(code),
    };
    if failing.is_empty() {
        alerts::resolve(tx, alerts::DRILL_FAILED, p.id, now, &origin).await?;
    } else {
        alerts::raise(
            tx,
            alerts::DRILL_FAILED,
            Severity::Critical,
            cond(failing.join(",")),
            now,
            &origin,
        )
        .await?;
    }
    let Some(rto) = rto_ms else {
        return Ok(());
    };
    if p.rto_objective_ms > 0 {
        if rto > p.rto_objective_ms {
            let code = format!("rto_ms={rto} objective_ms={}", p.rto_objective_ms);
            alerts::raise(
                tx,
                alerts::RTO_OBJECTIVE_MISSED,
                Severity::Critical,
                cond(code),
                now,
                &origin,
            )
            .await?;
        } else {
            alerts::resolve(tx, alerts::RTO_OBJECTIVE_MISSED, p.id, now, &origin).await?;
        }
    }
    // A regression is a passing drill's: a failed one's RTO measures a different thing.
    if failing.is_empty() {
        let prior: Vec<i64> = sqlx::query_scalar(
            "SELECT measured_rto_ms FROM pf_dr_drill_reports \
              WHERE policy_id = $1 AND passed AND id <> $2 AND measured_rto_ms IS NOT NULL \
              ORDER BY finished_at DESC LIMIT $3",
        )
        .bind(p.id)
        .bind(report_id)
        .bind(suite::REGRESSION_WINDOW as i64)
        .fetch_all(&mut *tx)
        .await?;
        let prior: Vec<u64> = prior.into_iter().map(|v| v.max(0) as u64).collect();
        match suite::regressed(rto, &prior) {
            Some(median) => {
                alerts::raise(
                    tx,
                    alerts::DRILL_RTO_REGRESSED,
                    Severity::Warning,
                    cond(format!("rto_ms={rto} median_ms={median}")),
                    now,
                    &origin,
                )
                .await?;
            }
            None if prior.len() >= suite::REGRESSION_MIN_BASELINE => {
                alerts::resolve(tx, alerts::DRILL_RTO_REGRESSED, p.id, now, &origin).await?;
            }
            None => {}
        }
    }
    Ok(())
}

/// A drill that could not run: the report row (written now if the drill never got as far),
/// `dr_drill_failed`, and `DRILL_FAILED` for its policy, in `tx`. `dropped`: whether the
/// scratch schema is known to be gone.
pub async fn failed(
    tx: &mut PgConnection,
    job: &Job,
    err: &JobError,
    spec: Option<&DrillSpec>,
    target: &str,
    policy: Option<&Policy>,
    dropped: bool,
) -> Result<(), sqlx::Error> {
    let (id, backup): (uuid::Uuid, Option<uuid::Uuid>) = sqlx::query_as(
        "INSERT INTO pf_dr_drill_reports (id, organization_id, command_id, job_id, policy_id, \
           target, tenant_key, passed, error_code, finished_at, selection, backup_record_id, tier) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, false, $8, now(), $10, $11, $12) \
         ON CONFLICT (command_id) DO UPDATE SET passed = false, error_code = EXCLUDED.error_code, \
           finished_at = now(), \
           scratch_dropped_at = CASE WHEN $9 THEN COALESCE(pf_dr_drill_reports.scratch_dropped_at, now()) \
                                     ELSE pf_dr_drill_reports.scratch_dropped_at END, \
           keep_until = NULL \
         WHERE pf_dr_drill_reports.organization_id = EXCLUDED.organization_id \
         RETURNING id, backup_record_id",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(job.organization_id.as_uuid())
    .bind(job.command_id.as_uuid())
    .bind(job.id.as_uuid())
    .bind(policy.map(|p| p.id))
    .bind(target)
    .bind(job.tenant_key.as_str())
    .bind(err.code.as_ref())
    .bind(dropped)
    .bind(spec.map_or("LATEST", |d| d.selection.as_str()))
    .bind(spec.and_then(|d| d.backup_record_id).map(|b| b.as_uuid()))
    .bind(spec.map_or("", |d| d.tier.as_str()))
    .fetch_one(&mut *tx)
    .await?;
    let ev = job.event(Event::DrDrillFailed(v1::DrillFailed {
        drill_report_id: id.to_string(),
        backup_record_id: backup.map(|b| b.to_string()).unwrap_or_default(),
        error_code: err.code.to_string(),
        message: err.message.to_string(),
        target: target.to_string(),
        policy_id: policy.map(|p| p.id.to_string()).unwrap_or_default(),
    }));
    outbox::enqueue(tx, &ev).await?;
    if let Some(p) = policy.filter(|p| p.enabled) {
        drill_alerts(tx, job, p, (id, backup), &[err.code.as_ref()], None).await?;
    }
    Ok(())
}
