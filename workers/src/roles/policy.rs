//! The policy role: apply a `PolicyCommand` to `pf_backup_policies`, the table the scheduler
//! reads. UPSERT inserts or replaces the organization's policy of that name (its id is kept
//! across updates); DELETE removes it (its backups stay, unmanaged). The row change and its
//! `policy_updated` / `policy_deleted` event commit in one transaction; a redelivered command
//! is a duplicate at intake, so an accepted change has exactly one event.
//!
//! Admission (in the intake's transaction) refuses what can be known up front: an unknown tier
//! (INVALID_ARGUMENT) and a DELETE of a policy that neither exists nor has a change queued
//! (NOT_FOUND). What only the run can see — a DELETE whose policy an earlier queued DELETE
//! removed — fails the job with `policy_failed` `POLICY_NOT_FOUND`; nothing is changed.
//!
//! `next_due_at` (the scheduler's next slot) is the schedule's first slot after now for a new
//! policy, a changed schedule or time zone, and a re-enabled one; otherwise it is kept, so an
//! edit of, say, the RPO does not move the scheduler's slot. A changed schedule also clears
//! `last_slot_at`. A disabled policy has no next slot.

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use sqlx::PgConnection;

use drfleet_infra::auth::Actor;
use drfleet_protocol::policy::Schedule;
use drfleet_protocol::topology::CommandKind;
use drfleet_protocol::v1::{self, event_envelope::Event};
use drfleet_protocol::validate::{
    CommandBody, PolicyChange, PolicyChangeSpec, PolicySpec, ReasonCode, Rejection, ValidCommand,
};

use crate::handler::{Admission, AdmitError, Job, JobCtx, JobError, JobHandler};
use crate::outbox;

/// The one answer for a policy that does not exist (in this organization).
const NOT_FOUND_MESSAGE: &str = "policy not found";

pub struct PolicyHandler;

fn spec(job: &Job) -> Result<&PolicyChangeSpec, JobError> {
    match &job.spec {
        CommandBody::Policy(p) => Ok(p),
        _ => Err(JobError::permanent("SPEC_MISMATCH", "job is not a policy")),
    }
}

/// Jobs changing one policy run one at a time, in order of arrival.
fn concurrency_key(org: &impl std::fmt::Display, name: &str) -> String {
    format!("policy:{org}:{name}")
}

/// Whether the organization can use a tier of that name (its own or a global one).
async fn tier_exists(
    conn: &mut PgConnection,
    org: uuid::Uuid,
    tier: &str,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pf_backup_tiers WHERE name = $2 \
           AND (organization_id = $1 OR organization_id IS NULL))",
    )
    .bind(org)
    .bind(tier)
    .fetch_one(&mut *conn)
    .await
}

/// The stored time zone: the IANA name, `UTC` when none was given.
fn stored_timezone(spec: &PolicySpec) -> &str {
    if spec.timezone.is_empty() {
        "UTC"
    } else {
        &spec.timezone
    }
}

/// What the row holds before an UPSERT.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Current {
    pub id: uuid::Uuid,
    pub schedule: String,
    pub timezone: String,
    pub enabled: bool,
    pub next_due_at: Option<DateTime<Utc>>,
}

/// Slot bookkeeping after an UPSERT: `(next_due_at, clear last_slot_at)`.
pub fn slots_after(
    spec: &PolicySpec,
    schedule: &Schedule,
    current: Option<&Current>,
    now: DateTime<Utc>,
) -> (Option<DateTime<Utc>>, bool) {
    let same_schedule = current.is_some_and(|c| {
        c.schedule.trim() == spec.schedule.trim() && c.timezone == stored_timezone(spec)
    });
    let clear_last_slot = current.is_some() && !same_schedule;
    if spec.disabled {
        return (None, clear_last_slot);
    }
    let kept = current
        .filter(|c| same_schedule && c.enabled)
        .and_then(|c| c.next_due_at);
    (kept.or_else(|| schedule.next_after(now)), clear_last_slot)
}

/// 0 is "not set" on the wire and NULL in the table. Values are bounded by validation.
fn opt_secs(v: u64) -> Option<i64> {
    (v > 0).then(|| i64::try_from(v).unwrap_or(i64::MAX))
}

fn opt_count(v: u32) -> Option<i32> {
    (v > 0).then(|| i32::try_from(v).unwrap_or(i32::MAX))
}

#[tracing::instrument(skip_all, fields(policy = %name))]
async fn upsert(
    tx: &mut PgConnection,
    job: &Job,
    name: &str,
    spec: &PolicySpec,
) -> Result<(), JobError> {
    let org = job.organization_id.as_uuid();
    if !tier_exists(tx, org, &spec.tier).await? {
        // Admission checked it; the tier was removed since.
        return Err(JobError::permanent(
            "TIER_NOT_FOUND",
            "policy.spec.tier names no known tier",
        ));
    }
    let schedule = spec
        .parsed_schedule()
        .map_err(|_| JobError::permanent("POLICY_INVALID", "policy.spec.schedule is invalid"))?;
    let current: Option<Current> = sqlx::query_as(
        "SELECT id, schedule, timezone, enabled, next_due_at FROM pf_backup_policies \
         WHERE organization_id = $1 AND name = $2 FOR UPDATE",
    )
    .bind(org)
    .bind(name)
    .fetch_optional(&mut *tx)
    .await?;
    let (next_due_at, clear_last_slot) = slots_after(spec, &schedule, current.as_ref(), Utc::now());
    let r = &spec.retention;
    // The id is new on insert and kept on update (the conflict arm does not touch it).
    let id: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO pf_backup_policies (id, organization_id, name, tier, schedule, timezone, \
           rpo_seconds, rto_seconds, keep_last, keep_daily, keep_weekly, keep_monthly, \
           keep_yearly, keep_within_seconds, verify_cycle_seconds, drill_schedule, enabled, \
           tenant_key, next_due_at, updated_by, drill_assertions) \
         VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19,$20,$22) \
         ON CONFLICT (organization_id, name) DO UPDATE SET \
           tier = EXCLUDED.tier, schedule = EXCLUDED.schedule, timezone = EXCLUDED.timezone, \
           rpo_seconds = EXCLUDED.rpo_seconds, rto_seconds = EXCLUDED.rto_seconds, \
           keep_last = EXCLUDED.keep_last, keep_daily = EXCLUDED.keep_daily, \
           keep_weekly = EXCLUDED.keep_weekly, keep_monthly = EXCLUDED.keep_monthly, \
           keep_yearly = EXCLUDED.keep_yearly, keep_within_seconds = EXCLUDED.keep_within_seconds, \
           verify_cycle_seconds = EXCLUDED.verify_cycle_seconds, \
           drill_schedule = EXCLUDED.drill_schedule, enabled = EXCLUDED.enabled, \
           drill_assertions = EXCLUDED.drill_assertions, \
           tenant_key = EXCLUDED.tenant_key, next_due_at = EXCLUDED.next_due_at, \
           last_slot_at = CASE WHEN $21 THEN NULL ELSE pf_backup_policies.last_slot_at END, \
           updated_by = EXCLUDED.updated_by, updated_at = now() \
         RETURNING id",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(org)
    .bind(name)
    .bind(&spec.tier)
    .bind(spec.schedule.trim())
    .bind(stored_timezone(spec))
    .bind(opt_secs(spec.rpo_seconds))
    .bind(opt_secs(spec.rto_seconds))
    .bind(opt_count(r.keep_last))
    .bind(opt_count(r.keep_daily))
    .bind(opt_count(r.keep_weekly))
    .bind(opt_count(r.keep_monthly))
    .bind(opt_count(r.keep_yearly))
    .bind(opt_secs(r.keep_within_seconds))
    .bind(opt_secs(spec.verify_cycle_seconds))
    .bind((!spec.drill_schedule.is_empty()).then(|| spec.drill_schedule.trim()))
    .bind(!spec.disabled)
    // The tenant key as it travels on the wire: the scheduler publishes with it.
    .bind(job.tenant_key.as_str())
    .bind(next_due_at)
    .bind(&job.actor)
    .bind(clear_last_slot)
    .bind(serde_json::json!(spec.drill_assertions))
    .fetch_one(&mut *tx)
    .await?;
    // The spec as stored (time zone named, crons trimmed), so the audit log says what the
    // scheduler reads.
    let mut stored = spec.to_wire();
    stored.timezone = stored_timezone(spec).to_string();
    stored.schedule = spec.schedule.trim().to_string();
    stored.drill_schedule = spec.drill_schedule.trim().to_string();
    let ev = job.event(Event::PolicyUpdated(v1::PolicyUpdated {
        policy_id: id.to_string(),
        name: name.to_string(),
        spec: Some(stored),
        operator: job.actor.clone(),
        created: current.is_none(),
        next_due_at: next_due_at.map(drfleet_protocol::events::timestamp),
    }));
    outbox::enqueue(tx, &ev).await?;
    tracing::info!(policy_id = %id, created = current.is_none(), "policy updated");
    Ok(())
}

#[tracing::instrument(skip_all, fields(policy = %name))]
async fn delete(tx: &mut PgConnection, job: &Job, name: &str) -> Result<(), JobError> {
    let id: Option<uuid::Uuid> = sqlx::query_scalar(
        "DELETE FROM pf_backup_policies WHERE organization_id = $1 AND name = $2 RETURNING id",
    )
    .bind(job.organization_id.as_uuid())
    .bind(name)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(id) = id else {
        return Err(JobError::permanent("POLICY_NOT_FOUND", NOT_FOUND_MESSAGE));
    };
    let ev = job.event(Event::PolicyDeleted(v1::PolicyDeleted {
        policy_id: id.to_string(),
        name: name.to_string(),
        operator: job.actor.clone(),
    }));
    outbox::enqueue(tx, &ev).await?;
    tracing::info!(policy_id = %id, "policy deleted");
    Ok(())
}

impl JobHandler for PolicyHandler {
    fn kind(&self) -> CommandKind {
        CommandKind::Policy
    }

    fn admit<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        cmd: &'a ValidCommand,
        _actor: &'a Actor,
    ) -> BoxFuture<'a, Result<Admission, AdmitError>> {
        Box::pin(async move {
            let CommandBody::Policy(p) = &cmd.body else {
                return Err(AdmitError::Reject(Rejection::new(
                    ReasonCode::InvalidArgument,
                    "not a policy command",
                )));
            };
            let org = cmd.organization_id.as_uuid();
            let key = concurrency_key(&cmd.organization_id, &p.name);
            match &p.change {
                PolicyChange::Upsert(s) => {
                    if !tier_exists(tx, org, &s.tier).await? {
                        return Err(AdmitError::Reject(Rejection::new(
                            ReasonCode::InvalidArgument,
                            "policy.spec.tier names no known tier",
                        )));
                    }
                }
                PolicyChange::Delete => {
                    // A change of this policy still queued may create it before we run.
                    let known: bool = sqlx::query_scalar(
                        "SELECT EXISTS (SELECT 1 FROM pf_backup_policies \
                                        WHERE organization_id = $1 AND name = $2) \
                             OR EXISTS (SELECT 1 FROM pf_jobs WHERE concurrency_key = $3 \
                                        AND state IN ('queued', 'running'))",
                    )
                    .bind(org)
                    .bind(&p.name)
                    .bind(&key)
                    .fetch_one(&mut *tx)
                    .await?;
                    if !known {
                        return Err(AdmitError::Reject(Rejection::new(
                            ReasonCode::NotFound,
                            NOT_FOUND_MESSAGE,
                        )));
                    }
                }
            }
            Ok(Admission {
                concurrency_key: key,
            })
        })
    }

    fn run<'a>(&'a self, ctx: &'a JobCtx) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(async move {
            let job = &ctx.job;
            let p = spec(job)?;
            let mut tx = ctx.pool.begin().await?;
            match &p.change {
                PolicyChange::Upsert(s) => upsert(&mut tx, job, &p.name, s).await?,
                PolicyChange::Delete => delete(&mut tx, job, &p.name).await?,
            }
            ctx.finish_in(&mut tx).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn on_failed<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        job: &'a Job,
        err: &'a JobError,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(async move {
            let name = spec(job).map(|p| p.name.clone()).unwrap_or_default();
            let ev = job.event(Event::PolicyFailed(v1::PolicyFailed {
                name,
                error_code: err.code.to_string(),
                message: err.message.to_string(),
            }));
            outbox::enqueue(tx, &ev).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use drfleet_protocol::validate::RetentionRules;

    fn spec(schedule: &str, tz: &str, disabled: bool) -> PolicySpec {
        PolicySpec {
            tier: "full".into(),
            schedule: schedule.into(),
            timezone: tz.into(),
            rpo_seconds: 0,
            rto_seconds: 0,
            retention: RetentionRules::default(),
            verify_cycle_seconds: 0,
            drill_schedule: String::new(),
            disabled,
            drill_assertions: Vec::new(),
        }
    }

    fn current(schedule: &str, tz: &str, enabled: bool, next: Option<DateTime<Utc>>) -> Current {
        Current {
            id: uuid::Uuid::now_v7(),
            schedule: schedule.into(),
            timezone: tz.into(),
            enabled,
            next_due_at: next,
        }
    }

    #[test]
    fn next_due_follows_the_schedule_and_is_kept_when_it_does_not_change() {
        let now = Utc.with_ymd_and_hms(2026, 3, 10, 7, 30, 0).unwrap();
        let six_h = spec("0 */6 * * *", "", false);
        let sched = six_h.parsed_schedule().unwrap();
        let next = Utc.with_ymd_and_hms(2026, 3, 10, 12, 0, 0).unwrap();
        // New policy: the first slot after now.
        assert_eq!(slots_after(&six_h, &sched, None, now), (Some(next), false));
        // Unchanged schedule (UTC spelled either way): the scheduler's slot is kept.
        let kept = Utc.with_ymd_and_hms(2026, 3, 10, 6, 0, 0).unwrap();
        let c = current("0 */6 * * *", "UTC", true, Some(kept));
        assert_eq!(
            slots_after(&six_h, &sched, Some(&c), now),
            (Some(kept), false)
        );
        // Changed schedule: from now, and last_slot_at is cleared.
        let c = current("0 1 * * *", "UTC", true, Some(kept));
        assert_eq!(
            slots_after(&six_h, &sched, Some(&c), now),
            (Some(next), true)
        );
        // Changed time zone counts as a changed schedule.
        let berlin = spec("0 */6 * * *", "Europe/Berlin", false);
        let bs = berlin.parsed_schedule().unwrap();
        let c = current("0 */6 * * *", "UTC", true, Some(kept));
        // 12:00 Berlin (CET, UTC+1) = 11:00 UTC.
        let berlin_next = Utc.with_ymd_and_hms(2026, 3, 10, 11, 0, 0).unwrap();
        assert_eq!(
            slots_after(&berlin, &bs, Some(&c), now),
            (Some(berlin_next), true)
        );
        // Re-enabled: from now, not the stale slot of before.
        let c = current("0 */6 * * *", "UTC", false, None);
        assert_eq!(
            slots_after(&six_h, &sched, Some(&c), now),
            (Some(next), false)
        );
        // Disabled: no slot.
        let off = spec("0 */6 * * *", "", true);
        let c = current("0 */6 * * *", "UTC", true, Some(kept));
        assert_eq!(slots_after(&off, &sched, Some(&c), now), (None, false));
        assert_eq!(slots_after(&off, &sched, None, now), (None, false));
    }
}
