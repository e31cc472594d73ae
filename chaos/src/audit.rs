//! The audit after settling, read from outside the workers: the metadata database (commands,
//! jobs, records, drill reports, the outbox, the audit sink's table and its hash chains), the
//! source database (tenant rows, staging and scratch schemas, the drill-write guard's notes),
//! the drill target (scratch schemas), the object store listing, the dead letters and the
//! harness's own ledger and event tap.

use std::collections::{HashMap, HashSet};

use futures::TryStreamExt;
use sqlx::PgPool;
use uuid::Uuid;

use crate::report::Figures;
use crate::tenants::{self, Tenant};
use crate::workload::{Ledger, SUCCESS, TERMINAL};

pub struct Inputs<'a> {
    pub meta: &'a PgPool,
    pub src: &'a PgPool,
    /// The drill target database.
    pub drill: &'a PgPool,
    pub store: &'a dyn object_store::ObjectStore,
    pub ledger: &'a Ledger,
    pub tenants: &'a [Tenant],
    pub tapped: &'a HashSet<Uuid>,
    /// Command ids RabbitMQ or the intake dead-lettered at the delivery limit.
    pub delivery_limit: &'a HashSet<Uuid>,
}

/// Every figure of the report that the database and the store can tell.
pub async fn audit(i: Inputs<'_>, f: &mut Figures) -> anyhow::Result<()> {
    let terminal: Vec<String> = TERMINAL.iter().map(|s| s.to_string()).collect();
    // (causation, event type) → count, over every event the sink stored.
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT causation_id, event_type, count(*) FROM pf_audit_events WHERE causation_id <> '' GROUP BY 1, 2",
    )
    .fetch_all(i.meta)
    .await?;
    let mut by_cmd: HashMap<Uuid, HashMap<String, i64>> = HashMap::new();
    for (c, t, n) in rows {
        if let Ok(c) = Uuid::parse_str(&c) {
            by_cmd.entry(c).or_default().insert(t, n);
        }
    }
    let finished = |c: &Uuid| {
        by_cmd
            .get(c)
            .is_some_and(|m| m.keys().any(|t| terminal.contains(t)))
    };

    // --- lost: accepted (or published by us, or by a scheduler) and never finished.
    let accepted: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT command_id, kind FROM pf_commands WHERE outcome = 'accepted'")
            .fetch_all(i.meta)
            .await?;
    let slots: Vec<Uuid> = sqlx::query_scalar("SELECT command_id FROM pf_schedule_slots")
        .fetch_all(i.meta)
        .await?;
    let sent = i.ledger.sent.lock().await;
    let mut expected: HashSet<Uuid> = accepted.iter().map(|(c, _)| *c).collect();
    expected.extend(slots.iter().copied());
    expected.extend(sent.iter().filter(|(_, s)| s.valid).map(|(c, _)| *c));
    let mut lost: Vec<Uuid> = expected
        .iter()
        .filter(|c| !finished(c) && !i.delivery_limit.contains(c))
        .copied()
        .collect();
    lost.sort();
    f.commands_expected_to_finish = expected.len() as u64;
    f.commands_accepted = accepted.len() as u64;
    f.scheduled_commands = slots.len() as u64;
    f.dead_lettered_at_delivery_limit = expected
        .iter()
        .filter(|c| i.delivery_limit.contains(c))
        .count() as u64;
    f.lost = lost.len() as u64;
    f.lost_ids = lost.iter().take(50).map(|c| c.to_string()).collect();

    // --- duplicated effects.
    let mut dups: Vec<String> = Vec::new();
    for (c, types) in &by_cmd {
        for (t, n) in types {
            let allowed = if t == "command_rejected" {
                // Refused once, plus each later CONFLICT reuse of the id by a poison message.
                sent.get(c).map_or(1, |s| s.rejections_allowed.max(1)) as i64
            } else if t.starts_with("alert_") || t == "backup_expired" {
                // Not keyed by a command.
                i64::MAX
            } else {
                1
            };
            if *n > allowed {
                dups.push(format!("{c}: {n} × {t}"));
            }
        }
        let terminal_non_rejection = types
            .iter()
            .filter(|(t, _)| terminal.contains(t) && t.as_str() != "command_rejected")
            .count();
        if terminal_non_rejection > 1 {
            dups.push(format!("{c}: {terminal_non_rejection} different outcomes"));
        }
    }
    for (what, q) in [
        (
            "backup records",
            "SELECT command_id::text, count(*) FROM pf_backup_records WHERE status <> 'failed' GROUP BY 1 HAVING count(*) > 1",
        ),
        (
            "completed restores",
            "SELECT command_id::text, count(*) FROM pf_restore_jobs WHERE status = 'completed' GROUP BY 1 HAVING count(*) > 1",
        ),
        (
            "drill reports",
            "SELECT command_id::text, count(*) FROM pf_dr_drill_reports GROUP BY 1 HAVING count(*) > 1",
        ),
        (
            "jobs",
            "SELECT command_id::text, count(*) FROM pf_jobs GROUP BY 1 HAVING count(*) > 1",
        ),
    ] {
        let rows: Vec<(String, i64)> = sqlx::query_as(q).fetch_all(i.meta).await?;
        dups.extend(rows.into_iter().map(|(c, n)| format!("{c}: {n} {what}")));
    }
    // Two promotions of one command would be two completed promote rows: counted above.
    dups.sort();
    f.duplicated_effects = dups.len() as u64;
    f.duplicated_examples = dups.into_iter().take(30).collect();

    // --- poison: none may become a job; each readable one answered once.
    let poison: Vec<(Uuid, u32)> = sent
        .iter()
        .filter(|(_, s)| !s.valid)
        .map(|(c, s)| (*c, s.rejections_allowed))
        .collect();
    let poison_ids: Vec<Uuid> = poison.iter().map(|(c, _)| *c).collect();
    f.poison_accepted =
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM pf_jobs WHERE command_id = ANY($1)")
            .bind(&poison_ids)
            .fetch_one(i.meta)
            .await? as u64;
    f.poison_unanswered = poison
        .iter()
        .filter(|(c, allowed)| {
            *allowed > 0
                && by_cmd
                    .get(c)
                    .and_then(|m| m.get("command_rejected"))
                    .is_none()
        })
        .count() as u64;
    drop(sent);

    // --- events: outbox drained, everything published stored once, chains intact.
    f.events_unpublished = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM pf_outbox")
        .fetch_one(i.meta)
        .await? as u64;
    let stored: Vec<Uuid> = sqlx::query_scalar("SELECT event_id FROM pf_audit_events")
        .fetch_all(i.meta)
        .await?;
    let stored_set: HashSet<Uuid> = stored.iter().copied().collect();
    f.events_stored = stored.len() as u64;
    f.events_published = i.tapped.len() as u64;
    f.events_missing_in_sink = i.tapped.difference(&stored_set).count() as u64;
    f.events_stored_twice = (stored.len() - stored_set.len()) as u64;
    f.events_stored_not_published = stored_set.difference(i.tapped).count() as u64;
    match drfleet_workers::audit::verify_chains(i.meta, None).await? {
        Ok(n) => {
            f.chain_rows_verified = n;
            f.chains_broken = 0;
        }
        Err(b) => {
            f.chains_broken = 1;
            f.chain_problem = Some(format!(
                "chain {} at {}: {}",
                b.chain_org, b.chain_seq, b.problem
            ));
        }
    }

    // --- tenants: torn promotions and tenants changed by anything but the harness.
    let torn = i.ledger.torn.lock().await;
    f.torn_promotions = torn.len() as u64;
    f.torn = torn.clone();
    drop(torn);
    let mut changed = Vec::new();
    for t in i.tenants {
        let now = tenants::digest(i.src, t.org).await?;
        if now != t.expected && t.alternative.as_ref() != Some(&now) {
            changed.push(t.org.to_string());
        }
    }
    f.tenants_changed = changed.len() as u64;
    f.tenants_changed_ids = changed;

    // --- leftovers.
    f.leftover_staging_schemas = sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'dr\\_restore\\_%'",
    )
    .fetch_one(i.src)
    .await? as u64;
    f.leftover_scratch_schemas = sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'dr\\_drill\\_%' OR nspname LIKE 'dr\\_scratch\\_%'",
    )
    .fetch_one(i.src)
    .await? as u64;
    f.unfinished_jobs = sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM pf_jobs WHERE state IN ('queued', 'running')",
    )
    .fetch_one(i.meta)
    .await? as u64;
    leaked_objects(i.meta, i.store, f).await?;
    drills(&i, f).await?;
    let codes: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT event_type, coalesce(payload->>'error_code', payload->>'reason_code', payload->>'code', ''), count(*) \
         FROM pf_audit_events WHERE event_type LIKE '%\\_failed' OR event_type = 'command_rejected' GROUP BY 1, 2",
    )
    .fetch_all(i.meta)
    .await?;
    f.failures_by_code = codes
        .into_iter()
        .map(|(t, c, n)| (format!("{t} {c}"), n as u64))
        .collect();
    Ok(())
}

/// A drill's report row as the audit reads it.
struct DrillReport<'a> {
    id: &'a str,
    passed: Option<bool>,
    error_code: Option<&'a str>,
    finished: bool,
}

/// What is wrong between an accepted drill command's terminal event (type, payload) and
/// its report, if anything. No event: the command is lost, and counted there.
fn drill_report_problem(
    outcome: Option<(&str, &serde_json::Value)>,
    report: Option<&DrillReport<'_>>,
) -> Option<&'static str> {
    let (event, payload) = outcome?;
    let Some(r) = report else {
        return Some("an outcome without a report");
    };
    let field = |k: &str| payload.get(k).cloned();
    if !r.finished {
        Some("an outcome, the report unfinished")
    } else if field("drill_report_id") != Some(r.id.into()) {
        Some("the outcome names another report")
    } else if event == "dr_drill_completed"
        && (r.error_code.is_some() || r.passed.map(serde_json::Value::Bool) != field("passed"))
    {
        Some("completed, the report says otherwise")
    } else if event == "dr_drill_failed"
        && (r.passed != Some(false)
            || r.error_code.map(serde_json::Value::from) != field("error_code"))
    {
        Some("failed, the report says otherwise")
    } else {
        None
    }
}

/// Drills: every report agrees with its command's outcome, no scratch schema is left in the
/// drill target but those kept on purpose, and no drill wrote the source.
async fn drills(i: &Inputs<'_>, f: &mut Figures) -> anyhow::Result<()> {
    let d = &mut f.drills;
    d.published = i
        .ledger
        .sent
        .lock()
        .await
        .values()
        .filter(|s| s.valid && s.kind == "drill")
        .count() as u64;
    let count = |q: &'static str| async move {
        sqlx::query_scalar::<_, i64>(q)
            .fetch_one(i.meta)
            .await
            .map(|n| n as u64)
    };
    d.scheduled = count("SELECT count(*) FROM pf_schedule_slots WHERE kind = 'drill'").await?;
    d.rejected =
        count("SELECT count(*) FROM pf_commands WHERE kind = 'drill' AND outcome = 'rejected'")
            .await?;
    d.reports = count("SELECT count(*) FROM pf_dr_drill_reports").await?;
    d.passed = count("SELECT count(*) FROM pf_dr_drill_reports WHERE passed AND finished_at IS NOT NULL AND error_code IS NULL").await?;
    d.not_passed = count("SELECT count(*) FROM pf_dr_drill_reports WHERE NOT passed AND finished_at IS NOT NULL AND error_code IS NULL").await?;
    d.failed =
        count("SELECT count(*) FROM pf_dr_drill_reports WHERE error_code IS NOT NULL").await?;

    // Each accepted drill's report against its terminal event; a report of no accepted
    // command. (A drill without a terminal event is lost; two are duplicated: counted above.)
    type Row = (
        String,
        bool,
        Option<String>,
        Option<serde_json::Value>,
        Option<String>,
        Option<bool>,
        Option<String>,
        bool,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT c.command_id::text, true, e.event_type, e.payload, r.id::text, r.passed, \
                    r.error_code, r.finished_at IS NOT NULL \
               FROM pf_commands c \
               LEFT JOIN pf_dr_drill_reports r ON r.command_id = c.command_id \
               LEFT JOIN pf_audit_events e ON e.causation_id = c.command_id::text \
                    AND e.event_type IN ('dr_drill_completed', 'dr_drill_failed') \
              WHERE c.kind = 'drill' AND c.outcome = 'accepted' \
             UNION ALL \
             SELECT r.command_id::text, false, NULL, NULL, r.id::text, r.passed, r.error_code, \
                    r.finished_at IS NOT NULL \
               FROM pf_dr_drill_reports r WHERE NOT EXISTS (SELECT 1 FROM pf_commands c \
                    WHERE c.command_id = r.command_id AND c.outcome = 'accepted')",
    )
    .fetch_all(i.meta)
    .await?;
    let mut mismatched = Vec::new();
    for (cmd, accepted, event, payload, id, passed, error_code, finished) in rows {
        let outcome = event.as_deref().zip(payload.as_ref());
        let report = id.as_deref().map(|id| DrillReport {
            id,
            passed,
            error_code: error_code.as_deref(),
            finished,
        });
        let problem = if accepted {
            drill_report_problem(outcome, report.as_ref())
        } else {
            Some("a report of no accepted command")
        };
        if let Some(p) = problem {
            mismatched.push(format!("{cmd}: {p}"));
        }
    }
    mismatched.sort();
    f.drill_reports_mismatched = mismatched.len() as u64;
    f.drill_mismatch_examples = mismatched.into_iter().take(20).collect();

    // Scratch schemas left in the target (a scratch schema and its `_parts` one count once),
    // except those a drill keeps on purpose until its keep_until.
    let kept: HashSet<String> = sqlx::query_scalar(
        "SELECT scratch_schema FROM pf_dr_drill_reports WHERE scratch_schema IS NOT NULL \
           AND scratch_dropped_at IS NULL AND keep_until > now()",
    )
    .fetch_all(i.meta)
    .await?
    .into_iter()
    .collect();
    let present: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'dr\\_drill\\_%' ORDER BY 1",
    )
    .fetch_all(i.drill)
    .await?;
    let present: std::collections::BTreeSet<String> = present
        .into_iter()
        .map(|n| n.strip_suffix("_parts").map_or(n.clone(), str::to_string))
        .collect();
    f.drills.scratch_kept = present.iter().filter(|n| kept.contains(*n)).count() as u64;
    let leaked: Vec<String> = present.into_iter().filter(|n| !kept.contains(n)).collect();
    f.leaked_scratch_schemas = leaked.len() as u64;
    f.leaked_scratch_examples = leaked.into_iter().take(20).collect();

    let writes = tenants::drill_writes(i.src).await?;
    f.source_writes_by_drills = writes.len() as u64;
    f.source_writes_examples = writes.into_iter().take(20).collect();
    // A passed drill built its scratch copy: the target's guard must have seen that.
    f.drills.ddl_seen_in_target = tenants::drill_writes(i.drill).await?.len() as u64;
    f.drill_guard_blind = u64::from(f.drills.passed > 0 && f.drills.ddl_seen_in_target == 0);
    Ok(())
}

/// Objects no completed record points at, in two figures:
/// - `leaked_objects` (must be 0): objects of no record, or of a record retention marked
///   `deleted` — nothing will ever remove them;
/// - `stray_attempt_objects` (reported): objects of an earlier or failed attempt under a known
///   record's prefix (a worker killed or cut off after uploading, before its commit). The
///   design removes them with the record when it expires, or after
///   DR_RETENTION_ORPHAN_GRACE for a failed policy backup — never for a manual backup, which
///   no policy expires.
async fn leaked_objects(
    meta: &PgPool,
    store: &dyn object_store::ObjectStore,
    f: &mut Figures,
) -> anyhow::Result<()> {
    let records: Vec<(Uuid, String, Option<String>, Option<String>)> =
        sqlx::query_as("SELECT id, status, object_key, manifest_key FROM pf_backup_records")
            .fetch_all(meta)
            .await?;
    let by_id: HashMap<Uuid, (String, HashSet<String>)> = records
        .into_iter()
        .map(|(id, status, o, m)| (id, (status, o.into_iter().chain(m).collect())))
        .collect();
    let prefix = object_store::path::Path::from("artifacts");
    let objects: Vec<object_store::ObjectMeta> = store.list(Some(&prefix)).try_collect().await?;
    f.objects = objects.len() as u64;
    let (mut leaked, mut stray) = (Vec::new(), Vec::new());
    for o in objects {
        let key = o
            .location
            .as_ref()
            .strip_prefix("artifacts/")
            .unwrap_or(o.location.as_ref())
            .to_string();
        let rec = drfleet_storage::keys::parse(&key)
            .ok()
            .and_then(|p| drfleet_storage::keys::record_of(&p));
        match rec.and_then(|r| by_id.get(&r)) {
            Some((status, keys)) if status == "completed" || status == "expiring" => {
                if !keys.contains(&key) {
                    stray.push(format!("{key} ({status})"));
                }
            }
            Some((status, _)) if status == "failed" || status == "started" => {
                stray.push(format!("{key} ({status})"))
            }
            Some((status, _)) => leaked.push(format!("{key} ({status})")),
            None => leaked.push(format!("{key} (no record)")),
        }
    }
    f.leaked_objects = leaked.len() as u64;
    f.leaked_examples = leaked.into_iter().take(20).collect();
    f.stray_attempt_objects = stray.len() as u64;
    f.stray_examples = stray.into_iter().take(20).collect();
    Ok(())
}

/// Recovery time of each fault: until the next successful outcome after it was restored.
pub async fn recovery(meta: &PgPool, faults: &mut [crate::faults::Injected]) -> anyhow::Result<()> {
    let success: Vec<String> = SUCCESS.iter().map(|s| s.to_string()).collect();
    let times: Vec<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
        "SELECT occurred_at FROM pf_audit_events WHERE event_type = ANY($1) ORDER BY occurred_at",
    )
    .bind(&success)
    .fetch_all(meta)
    .await?;
    for f in faults.iter_mut() {
        let i = times.partition_point(|t| *t <= f.restored_at);
        f.recovery_ms = times
            .get(i)
            .map(|t| (*t - f.restored_at).num_milliseconds());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn report(passed: Option<bool>, error_code: Option<&str>, finished: bool) -> DrillReport<'_> {
        DrillReport {
            id: "r1",
            passed,
            error_code,
            finished,
        }
    }

    #[test]
    fn a_drill_report_must_agree_with_its_outcome() {
        let completed = json!({"drill_report_id": "r1", "passed": true});
        let failed = json!({"drill_report_id": "r1", "error_code": "NO_BACKUP_TO_DRILL"});
        let ok = |e, p: &serde_json::Value, r| drill_report_problem(Some((e, p)), Some(&r));
        assert_eq!(
            ok(
                "dr_drill_completed",
                &completed,
                report(Some(true), None, true)
            ),
            None
        );
        assert_eq!(
            ok(
                "dr_drill_failed",
                &failed,
                report(Some(false), Some("NO_BACKUP_TO_DRILL"), true)
            ),
            None
        );
        // Disagreements.
        assert!(
            ok(
                "dr_drill_completed",
                &completed,
                report(Some(false), None, true)
            )
            .is_some()
        );
        assert!(
            ok(
                "dr_drill_completed",
                &completed,
                report(Some(true), Some("X"), true)
            )
            .is_some()
        );
        assert!(ok("dr_drill_completed", &completed, report(None, None, false)).is_some());
        assert!(
            ok(
                "dr_drill_failed",
                &failed,
                report(Some(false), Some("OTHER"), true)
            )
            .is_some()
        );
        let elsewhere = json!({"drill_report_id": "r2", "passed": true});
        assert!(
            ok(
                "dr_drill_completed",
                &elsewhere,
                report(Some(true), None, true)
            )
            .is_some()
        );
        assert!(drill_report_problem(Some(("dr_drill_completed", &completed)), None).is_some());
        // No outcome: lost, and counted there.
        assert_eq!(
            drill_report_problem(None, Some(&report(None, None, false))),
            None
        );
        assert_eq!(drill_report_problem(None, None), None);
    }
}
