//! The controls: pure functions from the collected [`Facts`] and the [`Parameters`] to a
//! [`Control`] verdict each. No I/O: everything a verdict rests on is in the pack.
//!
//! Times are read at the **reference instant** `at` = min(window end, generation time):
//! "now" for a window that is still open, the window's end otherwise. Policies "in force" are
//! the enabled ones not deleted by then; a recovery point is a backup that completed (whatever
//! retention did with it later, unless it was deleted before `at`).

use chrono::{DateTime, Duration, Utc};
use serde_json::json;

use drfleet_protocol::policy::Schedule;

use crate::model::{
    AuditChain, Backup, Control, ControlEvidence, Drill, Parameters, Policy, Status, Window,
};

pub const BACKUP_POLICY_EXISTS: &str = "BACKUP_POLICY_EXISTS";
pub const MIN_FREQUENCY_AND_RETENTION: &str = "MIN_FREQUENCY_AND_RETENTION";
pub const LAST_RECOVERY_POINT_WITHIN_RPO: &str = "LAST_RECOVERY_POINT_WITHIN_RPO";
pub const ACHIEVED_RPO_WITHIN_OBJECTIVE: &str = "ACHIEVED_RPO_WITHIN_OBJECTIVE";
pub const RESTORE_TIME_MEETS_TARGET: &str = "RESTORE_TIME_MEETS_TARGET";
pub const DRILL_WITHIN_90_DAYS: &str = "DRILL_WITHIN_90_DAYS";
pub const ARTIFACTS_ENCRYPTED_AND_CHECKSUMMED: &str = "ARTIFACTS_ENCRYPTED_AND_CHECKSUMMED";
pub const VERIFICATION_COVERAGE: &str = "VERIFICATION_COVERAGE";
pub const AUDIT_CHAIN_INTACT: &str = "AUDIT_CHAIN_INTACT";

/// Every control, in report order.
pub const CONTROLS: [&str; 9] = [
    BACKUP_POLICY_EXISTS,
    MIN_FREQUENCY_AND_RETENTION,
    LAST_RECOVERY_POINT_WITHIN_RPO,
    ACHIEVED_RPO_WITHIN_OBJECTIVE,
    RESTORE_TIME_MEETS_TARGET,
    DRILL_WITHIN_90_DAYS,
    ARTIFACTS_ENCRYPTED_AND_CHECKSUMMED,
    VERIFICATION_COVERAGE,
    AUDIT_CHAIN_INTACT,
];

/// What the controls are evaluated on.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    pub window: Window,
    pub generated_at: DateTime<Utc>,
    pub policies: &'a [Policy],
    pub backups: &'a [Backup],
    pub drills: &'a [Drill],
    pub audit_chain: &'a AuditChain,
}

impl Facts<'_> {
    /// The instant the controls look at: the window's end, or now if that is later.
    pub fn at(&self) -> DateTime<Utc> {
        self.window.to.min(self.generated_at)
    }

    /// Enabled policies not deleted by [`Facts::at`].
    pub fn in_force(&self) -> Vec<&Policy> {
        let at = self.at();
        self.policies
            .iter()
            .filter(|p| p.enabled && p.deleted_at.is_none_or(|d| d > at))
            .collect()
    }

    /// The strictest RPO objective of the policies in force (seconds).
    pub fn rpo_objective(&self) -> Option<(i64, &Policy)> {
        self.in_force()
            .into_iter()
            .filter_map(|p| p.rpo_seconds.map(|r| (r, p)))
            .min_by_key(|(r, _)| *r)
    }

    /// Snapshot times of the recovery points that existed at some time up to `at`, sorted.
    pub fn recovery_points(&self) -> Vec<(DateTime<Utc>, &Backup)> {
        let at = self.at();
        let mut v: Vec<_> = self
            .backups
            .iter()
            .filter(|b| b.completed_at.is_some())
            .filter_map(|b| b.snapshot_at.or(b.completed_at).map(|s| (s, b)))
            .filter(|(s, _)| *s <= at)
            .collect();
        v.sort_by_key(|(s, b)| (*s, b.backup_record_id));
        v
    }
}

/// Evaluate every control, in [`CONTROLS`] order.
pub fn evaluate(f: &Facts, p: &Parameters) -> Vec<Control> {
    vec![
        backup_policy_exists(f),
        min_frequency_and_retention(f, p),
        last_recovery_point_within_rpo(f),
        achieved_rpo_within_objective(f),
        restore_time_meets_target(f),
        drill_within_days(f, p),
        artifacts_encrypted_and_checksummed(f),
        verification_coverage(f, p),
        audit_chain_intact(f),
    ]
}

fn control(
    f: &Facts,
    name: &str,
    status: Status,
    parameters: serde_json::Value,
    summary: String,
    records: Vec<String>,
) -> Control {
    Control {
        control: name.to_string(),
        status,
        parameters,
        evaluated_at: f.generated_at,
        evidence: ControlEvidence {
            summary,
            records,
            measured: serde_json::Map::new(),
        },
    }
}

fn measured(mut c: Control, v: serde_json::Value) -> Control {
    if let serde_json::Value::Object(m) = v {
        c.evidence.measured = m;
    }
    c
}

fn status_of(ok: bool) -> Status {
    if ok {
        Status::Compliant
    } else {
        Status::NonCompliant
    }
}

pub fn backup_policy_exists(f: &Facts) -> Control {
    let live = f.in_force();
    let records = live.iter().map(|p| p.policy_id.to_string()).collect();
    let summary = if live.is_empty() {
        format!(
            "no enabled policy at {} ({} policies known)",
            f.at().to_rfc3339(),
            f.policies.len()
        )
    } else {
        format!("{} enabled policies at {}", live.len(), f.at().to_rfc3339())
    };
    control(
        f,
        BACKUP_POLICY_EXISTS,
        status_of(!live.is_empty()),
        json!({"at": f.at()}),
        summary,
        records,
    )
}

/// The longest interval between consecutive slots of `schedule` over the 8 days after `from`
/// (a week and a day: every pattern that repeats weekly shows its longest gap). `None` when
/// the schedule cannot be read; a pattern firing less than twice in that span answers the span.
pub fn schedule_max_interval(schedule: &str, timezone: &str, from: DateTime<Utc>) -> Option<i64> {
    let s = Schedule::parse("schedule", schedule, timezone).ok()?;
    let span = Duration::days(8);
    let end = from + span;
    let mut prev = s.next_after(from)?;
    let mut longest: Option<i64> = None;
    // At most one slot a minute is 11,520 over 8 days; seconds-level patterns stop early.
    for _ in 0..12_000 {
        match s.next_after(prev) {
            Some(n) if n <= end => {
                let gap = (n - prev).num_seconds();
                longest = Some(longest.map_or(gap, |l| l.max(gap)));
                prev = n;
            }
            _ => break,
        }
    }
    Some(longest.unwrap_or(span.num_seconds()))
}

/// Days of daily recovery points the rules keep: the longest of keep_daily, keep_within and
/// keep_last × the schedule's longest interval. `None` = no rule: everything is kept.
pub fn retention_days(p: &Policy, max_interval_secs: i64) -> Option<i64> {
    let r = &p.retention;
    if r.is_empty() {
        return None;
    }
    let daily = r.keep_daily.unwrap_or(0);
    let within = r.keep_within_seconds.unwrap_or(0) / 86_400;
    let last = r.keep_last.unwrap_or(0).saturating_mul(max_interval_secs) / 86_400;
    Some(daily.max(within).max(last))
}

pub fn min_frequency_and_retention(f: &Facts, p: &Parameters) -> Control {
    let params = json!({"min_frequency_hours": p.min_frequency_hours,
        "min_retention_days": p.min_retention_days});
    let live = f.in_force();
    if live.is_empty() {
        return control(
            f,
            MIN_FREQUENCY_AND_RETENTION,
            Status::NotApplicable,
            params,
            "no enabled policy".into(),
            vec![],
        );
    }
    let mut failing = Vec::new();
    let mut per_policy = Vec::new();
    for pol in &live {
        let interval = schedule_max_interval(&pol.schedule, &pol.timezone, f.at());
        let days = retention_days(pol, interval.unwrap_or(i64::MAX / 2));
        let freq_ok = interval.is_some_and(|i| i <= i64::from(p.min_frequency_hours) * 3600);
        let ret_ok = days.is_none_or(|d| d >= i64::from(p.min_retention_days));
        per_policy.push(json!({"policy_id": pol.policy_id, "name": pol.name,
            "max_interval_seconds": interval, "retention_days": days,
            "frequency_ok": freq_ok, "retention_ok": ret_ok}));
        if !(freq_ok && ret_ok) {
            failing.push(pol.name.clone());
        }
    }
    let summary = if failing.is_empty() {
        format!(
            "all {} enabled policies back up at least every {} h and keep dailies for at least {} days",
            live.len(),
            p.min_frequency_hours,
            p.min_retention_days
        )
    } else {
        format!(
            "{} of {} enabled policies back up less often than every {} h or keep dailies for fewer than {} days: {}",
            failing.len(),
            live.len(),
            p.min_frequency_hours,
            p.min_retention_days,
            failing.join(", ")
        )
    };
    measured(
        control(
            f,
            MIN_FREQUENCY_AND_RETENTION,
            status_of(failing.is_empty()),
            params,
            summary,
            live.iter().map(|p| p.policy_id.to_string()).collect(),
        ),
        json!({"policies": per_policy}),
    )
}

pub fn last_recovery_point_within_rpo(f: &Facts) -> Control {
    let at = f.at();
    let Some((rpo, pol)) = f.rpo_objective() else {
        return control(
            f,
            LAST_RECOVERY_POINT_WITHIN_RPO,
            Status::NotApplicable,
            json!({"at": at}),
            "no enabled policy with an RPO objective".into(),
            vec![],
        );
    };
    let params = json!({"rpo_seconds": rpo, "policy_id": pol.policy_id, "at": at});
    // Still present at `at`: not deleted before it.
    let last = f
        .recovery_points()
        .into_iter()
        .rev()
        .find(|(_, b)| b.deleted_at.is_none_or(|d| d > at));
    match last {
        None => control(
            f,
            LAST_RECOVERY_POINT_WITHIN_RPO,
            Status::NonCompliant,
            params,
            format!("no recovery point at {}", at.to_rfc3339()),
            vec![],
        ),
        Some((snap, b)) => {
            let age = (at - snap).num_seconds();
            measured(
                control(
                    f,
                    LAST_RECOVERY_POINT_WITHIN_RPO,
                    status_of(age <= rpo),
                    params,
                    format!(
                        "newest recovery point {} is {age} s old at the window's end (objective {rpo} s)",
                        b.backup_record_id
                    ),
                    vec![b.backup_record_id.to_string()],
                ),
                json!({"age_seconds": age}),
            )
        }
    }
}

/// Gaps between consecutive snapshot times (sorted input): `(time, gap to the one before)`.
pub fn gaps(times: &[DateTime<Utc>]) -> Vec<(DateTime<Utc>, i64)> {
    times
        .windows(2)
        .map(|w| (w[1], (w[1] - w[0]).num_seconds()))
        .collect()
}

pub fn achieved_rpo_within_objective(f: &Facts) -> Control {
    let Some((rpo, pol)) = f.rpo_objective() else {
        return control(
            f,
            ACHIEVED_RPO_WITHIN_OBJECTIVE,
            Status::NotApplicable,
            json!({}),
            "no enabled policy with an RPO objective".into(),
            vec![],
        );
    };
    let params = json!({"rpo_seconds": rpo, "policy_id": pol.policy_id});
    let points: Vec<_> = f
        .recovery_points()
        .into_iter()
        .filter(|(s, _)| f.window.contains(*s))
        .collect();
    let times: Vec<_> = points.iter().map(|(s, _)| *s).collect();
    let g = gaps(&times);
    let window_secs = (f.at() - f.window.from).num_seconds();
    let Some(worst) = g.iter().enumerate().max_by_key(|(_, (_, gap))| *gap) else {
        // Fewer than two recovery points: no gap to measure inside the window.
        let ok = !points.is_empty() && window_secs <= rpo;
        return control(
            f,
            ACHIEVED_RPO_WITHIN_OBJECTIVE,
            status_of(ok),
            params,
            format!(
                "{} recovery points in the window ({window_secs} s long; objective {rpo} s)",
                points.len()
            ),
            points
                .iter()
                .map(|(_, b)| b.backup_record_id.to_string())
                .collect(),
        );
    };
    let (i, (_, gap)) = worst;
    let (before, after) = (points[i].1, points[i + 1].1);
    measured(
        control(
            f,
            ACHIEVED_RPO_WITHIN_OBJECTIVE,
            status_of(*gap <= rpo),
            params,
            format!(
                "longest gap between consecutive recovery points in the window: {gap} s, between {} and {} (objective {rpo} s; {} points)",
                before.backup_record_id,
                after.backup_record_id,
                points.len()
            ),
            vec![
                before.backup_record_id.to_string(),
                after.backup_record_id.to_string(),
            ],
        ),
        json!({"longest_gap_seconds": gap, "recovery_points": points.len(),
            "gaps_over_objective": g.iter().filter(|(_, x)| *x > rpo).count()}),
    )
}

/// The RTO objective of a drill: its own, else the strictest of the policies in force.
fn rto_objective_ms(f: &Facts, d: &Drill) -> Option<i64> {
    d.rto_objective_ms.or_else(|| {
        f.in_force()
            .iter()
            .filter_map(|p| p.rto_seconds)
            .min()
            .map(|s| s.saturating_mul(1000))
    })
}

pub fn restore_time_meets_target(f: &Facts) -> Control {
    let at = f.at();
    let latest = f
        .drills
        .iter()
        .filter(|d| d.measured_rto_ms.is_some() && d.finished_at.is_some_and(|t| t <= at))
        .max_by_key(|d| (d.finished_at, d.drill_report_id));
    let policy_rto = f.in_force().iter().filter_map(|p| p.rto_seconds).min();
    match latest {
        None if policy_rto.is_none() => control(
            f,
            RESTORE_TIME_MEETS_TARGET,
            Status::NotApplicable,
            json!({}),
            "no RTO objective and no drill measured one".into(),
            vec![],
        ),
        None => control(
            f,
            RESTORE_TIME_MEETS_TARGET,
            Status::NonCompliant,
            json!({"rto_ms": policy_rto.map(|s| s.saturating_mul(1000))}),
            "no drill measured a restore time".into(),
            vec![],
        ),
        Some(d) => {
            let measured_ms = d.measured_rto_ms.unwrap_or_default();
            match rto_objective_ms(f, d) {
                None => control(
                    f,
                    RESTORE_TIME_MEETS_TARGET,
                    Status::NotApplicable,
                    json!({}),
                    format!(
                        "latest drill {} measured {measured_ms} ms; no RTO objective",
                        d.drill_report_id
                    ),
                    vec![d.drill_report_id.to_string()],
                ),
                Some(obj) => measured(
                    control(
                        f,
                        RESTORE_TIME_MEETS_TARGET,
                        status_of(measured_ms <= obj),
                        json!({"rto_ms": obj}),
                        format!(
                            "latest drill {} restored in {measured_ms} ms (objective {obj} ms)",
                            d.drill_report_id
                        ),
                        vec![d.drill_report_id.to_string()],
                    ),
                    json!({"measured_rto_ms": measured_ms}),
                ),
            }
        }
    }
}

pub fn drill_within_days(f: &Facts, p: &Parameters) -> Control {
    let at = f.at();
    let since = at - Duration::days(i64::from(p.drill_max_age_days));
    let params = json!({"max_age_days": p.drill_max_age_days, "since": since, "at": at});
    if f.in_force().is_empty() {
        return control(
            f,
            DRILL_WITHIN_90_DAYS,
            Status::NotApplicable,
            params,
            "no enabled policy".into(),
            vec![],
        );
    }
    let passing = f
        .drills
        .iter()
        .filter(|d| d.passed == Some(true))
        .filter(|d| d.finished_at.is_some_and(|t| t > since && t <= at))
        .max_by_key(|d| (d.finished_at, d.drill_report_id));
    match passing {
        Some(d) => control(
            f,
            DRILL_WITHIN_90_DAYS,
            Status::Compliant,
            params,
            format!(
                "drill {} passed at {}",
                d.drill_report_id,
                d.finished_at.map(|t| t.to_rfc3339()).unwrap_or_default()
            ),
            vec![d.drill_report_id.to_string()],
        ),
        None => control(
            f,
            DRILL_WITHIN_90_DAYS,
            Status::NonCompliant,
            params,
            format!(
                "no passing drill in the {} days before {}",
                p.drill_max_age_days,
                at.to_rfc3339()
            ),
            vec![],
        ),
    }
}

/// Objects of the backup exist at `at`: completed or being expired, not deleted.
fn retained(b: &Backup, at: DateTime<Utc>) -> bool {
    matches!(b.status.as_str(), "completed" | "expiring") && b.started_at <= at
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|c| c.is_ascii_hexdigit())
}

pub fn artifacts_encrypted_and_checksummed(f: &Facts) -> Control {
    let at = f.at();
    let kept: Vec<&Backup> = f.backups.iter().filter(|b| retained(b, at)).collect();
    if kept.is_empty() {
        return control(
            f,
            ARTIFACTS_ENCRYPTED_AND_CHECKSUMMED,
            Status::NotApplicable,
            json!({}),
            "no retained artifact".into(),
            vec![],
        );
    }
    let bad: Vec<String> = kept
        .iter()
        .filter(|b| {
            b.key_id.as_deref().is_none_or(str::is_empty)
                || b.checksum_sha256
                    .as_deref()
                    .is_none_or(|c| !is_sha256_hex(c))
        })
        .map(|b| b.backup_record_id.to_string())
        .collect();
    let summary = if bad.is_empty() {
        format!(
            "all {} retained artifacts have a key id and a SHA-256 checksum",
            kept.len()
        )
    } else {
        format!(
            "{} of {} retained artifacts lack a key id or a checksum",
            bad.len(),
            kept.len()
        )
    };
    let ok = bad.is_empty();
    let records = if ok {
        kept.iter()
            .map(|b| b.backup_record_id.to_string())
            .collect()
    } else {
        bad.clone()
    };
    measured(
        control(
            f,
            ARTIFACTS_ENCRYPTED_AND_CHECKSUMMED,
            status_of(ok),
            json!({"checksum": "sha256", "encryption": "key id recorded"}),
            summary,
            records,
        ),
        json!({"retained": kept.len(), "without_key_or_checksum": bad.len()}),
    )
}

/// How the retained backups of policies with a verify cycle stand at `at`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Coverage {
    /// Verified ok within the cycle.
    pub verified: Vec<uuid::Uuid>,
    /// Last verify ok but older than the cycle.
    pub stale: Vec<uuid::Uuid>,
    /// Last verify failed.
    pub failed: Vec<uuid::Uuid>,
    /// Older than a cycle and never verified.
    pub never: Vec<uuid::Uuid>,
    /// Younger than a cycle and not verified yet: not due.
    pub not_due: Vec<uuid::Uuid>,
}

impl Coverage {
    pub fn due(&self) -> usize {
        self.verified.len() + self.stale.len() + self.failed.len() + self.never.len()
    }

    /// verified / due; `None` when nothing is due.
    pub fn share(&self) -> Option<f64> {
        let due = self.due();
        (due > 0).then(|| self.verified.len() as f64 / due as f64)
    }
}

/// Classify the retained backups whose policy (in force) has a verify cycle.
pub fn coverage(f: &Facts) -> Coverage {
    let at = f.at();
    let mut c = Coverage::default();
    let cycles: Vec<(String, i64)> = f
        .in_force()
        .iter()
        .filter_map(|p| p.verify_cycle_seconds.map(|s| (p.policy_id.to_string(), s)))
        .collect();
    for b in f.backups.iter().filter(|b| retained(b, at)) {
        let Some((_, cycle)) = cycles.iter().find(|(id, _)| *id == b.policy_id) else {
            continue;
        };
        let since = at - Duration::seconds(*cycle);
        let snap = b.snapshot_at.unwrap_or(b.started_at);
        let id = b.backup_record_id;
        match (b.verify_status.as_deref(), b.last_verified_at) {
            (Some("ok"), Some(t)) if t >= since => c.verified.push(id),
            (Some("failed"), _) => c.failed.push(id),
            _ if snap > since => c.not_due.push(id),
            (Some("ok"), _) => c.stale.push(id),
            _ => c.never.push(id),
        }
    }
    c
}

pub fn verification_coverage(f: &Facts, p: &Parameters) -> Control {
    let c = coverage(f);
    let params = json!({"min_share": p.min_verification_coverage});
    let with_cycle = f
        .in_force()
        .iter()
        .any(|p| p.verify_cycle_seconds.is_some());
    let Some(share) = c.share().filter(|_| with_cycle) else {
        return control(
            f,
            VERIFICATION_COVERAGE,
            Status::NotApplicable,
            params,
            if with_cycle {
                "no retained backup is due for verification yet".into()
            } else {
                "no enabled policy has a verify cycle".into()
            },
            vec![],
        );
    };
    let ok = share + 1e-9 >= p.min_verification_coverage;
    let records = if ok {
        c.verified.iter().map(|u| u.to_string()).collect()
    } else {
        c.stale
            .iter()
            .chain(&c.failed)
            .chain(&c.never)
            .map(|u| u.to_string())
            .collect()
    };
    measured(
        control(
            f,
            VERIFICATION_COVERAGE,
            status_of(ok),
            params,
            format!(
                "{} of {} due backups verified ok within their policy's cycle ({:.1}%): {} stale, {} failed, {} never verified",
                c.verified.len(),
                c.due(),
                share * 100.0,
                c.stale.len(),
                c.failed.len(),
                c.never.len()
            ),
            records,
        ),
        json!({"share": share, "verified": c.verified.len(), "stale": c.stale.len(),
            "failed": c.failed.len(), "never_verified": c.never.len(),
            "not_yet_due": c.not_due.len()}),
    )
}

pub fn audit_chain_intact(f: &Facts) -> Control {
    let a = f.audit_chain;
    let params = json!({"algorithm": "sha256(prev_hash || canonical)"});
    if a.head_seq == 0 && a.intact {
        return control(
            f,
            AUDIT_CHAIN_INTACT,
            Status::NotApplicable,
            params,
            "the organization has no audit event".into(),
            vec![],
        );
    }
    let (summary, records) = match &a.broken_at {
        None => (
            format!(
                "{} events verified up to position {} (head {})",
                a.events_verified, a.head_seq, a.head_hash
            ),
            vec![format!("audit:{}", a.head_seq)],
        ),
        Some(b) => (
            format!("broken at position {}: {}", b.chain_seq, b.problem),
            vec![format!("audit:{}", b.chain_seq)],
        ),
    };
    control(
        f,
        AUDIT_CHAIN_INTACT,
        status_of(a.intact),
        params,
        summary,
        records,
    )
}

#[cfg(test)]
mod tests;
