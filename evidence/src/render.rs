//! `report.html`: one self-contained page (inline CSS, inline SVG, no script, no font or
//! image fetched) rendered with askama from `templates/report.html`. The view is built here
//! as plain strings so the template only lays them out.

use askama::Template;
use chrono::{DateTime, Utc};

use crate::charts;
use crate::controls::{Facts, coverage};
use crate::model::{Evidence, Status};

pub struct Cell {
    pub text: String,
    pub class: &'static str,
}

fn cell(text: impl Into<String>) -> Cell {
    Cell {
        text: text.into(),
        class: "",
    }
}

fn flag(ok: Option<bool>, yes: &str, no: &str) -> Cell {
    match ok {
        Some(true) => Cell {
            text: yes.into(),
            class: "ok",
        },
        Some(false) => Cell {
            text: no.into(),
            class: "bad",
        },
        None => cell("–"),
    }
}

pub struct Table {
    pub id: &'static str,
    pub title: &'static str,
    pub note: String,
    pub headers: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
}

pub struct ControlRow {
    pub name: String,
    pub status: &'static str,
    pub class: &'static str,
    pub summary: String,
    pub parameters: String,
}

pub struct Chart {
    pub title: &'static str,
    pub caption: String,
    pub svg: String,
}

#[derive(Template)]
#[template(path = "report.html")]
pub struct Report {
    pub organization_id: String,
    pub from: String,
    pub to: String,
    pub generated_at: String,
    pub schema_version: u32,
    pub head_seq: i64,
    pub head_hash: String,
    pub chain_intact: bool,
    pub compliant: usize,
    pub non_compliant: usize,
    pub not_applicable: usize,
    pub controls: Vec<ControlRow>,
    pub charts: Vec<Chart>,
    pub tables: Vec<Table>,
}

pub fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

fn opt_time(t: Option<DateTime<Utc>>) -> String {
    t.map(time).unwrap_or_else(|| "–".into())
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "–".into())
}

fn ms(v: Option<i64>) -> String {
    v.map(|v| charts::seconds(v as f64 / 1000.0))
        .unwrap_or_else(|| "–".into())
}

fn status_class(s: Status) -> &'static str {
    match s {
        Status::Compliant => "compliant",
        Status::NonCompliant => "non-compliant",
        Status::NotApplicable => "not-applicable",
    }
}

/// Render the page of an evaluated pack.
pub fn render(e: &Evidence) -> Result<String, askama::Error> {
    let facts = Facts {
        window: e.window,
        generated_at: e.generated_at,
        policies: &e.policies,
        backups: &e.backups,
        drills: &e.drills,
        audit_chain: &e.audit_chain,
    };
    let count = |s: Status| e.controls.iter().filter(|c| c.status == s).count();
    let controls = e
        .controls
        .iter()
        .map(|c| ControlRow {
            name: c.control.clone(),
            status: c.status.as_str(),
            class: status_class(c.status),
            summary: c.evidence.summary.clone(),
            parameters: serde_json::to_string(&c.parameters).unwrap_or_default(),
        })
        .collect();

    let snapshots: Vec<(DateTime<Utc>, i64)> = facts
        .recovery_points()
        .into_iter()
        .filter(|(t, _)| e.window.contains(*t))
        .map(|(t, b)| (t, b.byte_size.unwrap_or(0)))
        .collect();
    let rpo = facts.rpo_objective().map(|(r, _)| r);
    let rto_policy_ms = facts
        .in_force()
        .iter()
        .filter_map(|p| p.rto_seconds)
        .min()
        .map(|s| s.saturating_mul(1000));
    let measured: Vec<_> = e
        .drills
        .iter()
        .filter(|d| d.measured_rto_ms.is_some())
        .filter(|d| e.window.contains(d.finished_at.unwrap_or(d.started_at)))
        .collect();
    let cov = coverage(&facts);
    let charts = vec![
        Chart {
            title: "Backup timeline",
            caption: format!(
                "{} recovery points in the window, by snapshot time and size",
                snapshots.len()
            ),
            svg: charts::backup_timeline(&e.window, &snapshots),
        },
        Chart {
            title: "Achieved RPO vs objective",
            caption: format!(
                "gap before each recovery point; objective {}",
                rpo.map(|r| charts::seconds(r as f64))
                    .unwrap_or_else(|| "not set".into())
            ),
            svg: charts::achieved_rpo(&e.window, &e.achieved_rpo, rpo),
        },
        Chart {
            title: "Drill RTO trend vs objective",
            caption: format!(
                "{} drills measured a restore time in the window",
                measured.len()
            ),
            svg: charts::drill_rto(&e.window, &measured, rto_policy_ms),
        },
        Chart {
            title: "Verification coverage",
            caption: "retained backups of policies with a verify cycle".into(),
            svg: charts::verification(&cov),
        },
    ];

    Report {
        organization_id: e.organization_id.to_string(),
        from: time(e.window.from),
        to: time(e.window.to),
        generated_at: time(e.generated_at),
        schema_version: e.schema_version,
        head_seq: e.audit_chain.head_seq,
        head_hash: e.audit_chain.head_hash.clone(),
        chain_intact: e.audit_chain.intact,
        compliant: count(Status::Compliant),
        non_compliant: count(Status::NonCompliant),
        not_applicable: count(Status::NotApplicable),
        controls,
        charts,
        tables: tables(e),
    }
    .render()
}

fn headers(h: &[&str]) -> Vec<String> {
    h.iter().map(|s| s.to_string()).collect()
}

fn tables(e: &Evidence) -> Vec<Table> {
    let mut out = Vec::new();
    out.push(Table {
        id: "policies",
        title: "Policies in force",
        note: "as stored now; deleted ones as their last change described them".into(),
        headers: headers(&[
            "Policy",
            "Name",
            "Enabled",
            "Schedule",
            "RPO",
            "RTO",
            "Retention",
            "Verify cycle",
            "Drills",
            "Updated",
            "Deleted",
        ]),
        rows: e
            .policies
            .iter()
            .map(|p| {
                let r = &p.retention;
                let rules: Vec<String> = [
                    ("last", r.keep_last),
                    ("daily", r.keep_daily),
                    ("weekly", r.keep_weekly),
                    ("monthly", r.keep_monthly),
                    ("yearly", r.keep_yearly),
                ]
                .iter()
                .filter_map(|(n, v)| v.map(|v| format!("{n} {v}")))
                .chain(
                    r.keep_within_seconds
                        .map(|s| format!("within {}", charts::seconds(s as f64))),
                )
                .collect();
                vec![
                    cell(p.policy_id.to_string()),
                    cell(p.name.clone()),
                    flag(Some(p.enabled), "yes", "no"),
                    cell(format!("{} ({})", p.schedule, p.timezone)),
                    cell(opt(p.rpo_seconds.map(|s| charts::seconds(s as f64)))),
                    cell(opt(p.rto_seconds.map(|s| charts::seconds(s as f64)))),
                    cell(if rules.is_empty() {
                        "keep all".into()
                    } else {
                        rules.join(", ")
                    }),
                    cell(opt(p
                        .verify_cycle_seconds
                        .map(|s| charts::seconds(s as f64)))),
                    cell(opt(p.drill_schedule.clone())),
                    cell(format!("{} {}", opt_time(p.updated_at), p.updated_by)),
                    cell(opt_time(p.deleted_at)),
                ]
            })
            .collect(),
    });
    out.push(Table {
        id: "policy-changes",
        title: "Policy changes",
        note: "from the audit log (policy_updated, policy_deleted)".into(),
        headers: headers(&[
            "When",
            "Who",
            "Policy",
            "Action",
            "What changed",
            "Audit position",
        ]),
        rows: e
            .policy_changes
            .iter()
            .map(|c| {
                let what: Vec<String> = c
                    .changes
                    .iter()
                    .map(|f| format!("{}: {} → {}", f.field, f.from, f.to))
                    .collect();
                vec![
                    cell(time(c.at)),
                    cell(c.operator.clone()),
                    cell(format!("{} ({})", c.name, c.policy_id)),
                    cell(c.action.clone()),
                    cell(if what.is_empty() {
                        "–".into()
                    } else {
                        what.join("; ")
                    }),
                    cell(c.chain_seq.to_string()),
                ]
            })
            .collect(),
    });
    out.push(Table {
        id: "drills",
        title: "Drills",
        note: "RTO and RPO against the objectives, and the phases".into(),
        headers: headers(&[
            "Drill",
            "Finished",
            "Backup",
            "Result",
            "RTO",
            "RTO objective",
            "RPO",
            "RPO objective",
            "Phases",
            "Error",
        ]),
        rows: e
            .drills
            .iter()
            .map(|d| {
                let phases: Vec<String> = d
                    .phases
                    .iter()
                    .map(|p| format!("{} {} ms", p.name, p.ms))
                    .collect();
                vec![
                    cell(d.drill_report_id.to_string()),
                    cell(opt_time(d.finished_at)),
                    cell(opt(d.backup_record_id)),
                    flag(d.passed, "passed", "failed"),
                    Cell {
                        text: ms(d.measured_rto_ms),
                        class: match d.rto_met {
                            Some(true) => "ok",
                            Some(false) => "bad",
                            None => "",
                        },
                    },
                    cell(ms(d.rto_objective_ms)),
                    Cell {
                        text: ms(d.measured_rpo_ms),
                        class: match d.rpo_met {
                            Some(true) => "ok",
                            Some(false) => "bad",
                            None => "",
                        },
                    },
                    cell(ms(d.rpo_objective_ms)),
                    cell(if phases.is_empty() {
                        "–".into()
                    } else {
                        phases.join(" · ")
                    }),
                    cell(opt(d.error_code.clone())),
                ]
            })
            .collect(),
    });
    // The check matrix: one row per drill, one column per check name.
    let mut names: Vec<String> = e
        .drills
        .iter()
        .flat_map(|d| d.checks.iter().map(|c| c.name.clone()))
        .collect();
    names.sort();
    names.dedup();
    let mut h = vec!["Drill".to_string()];
    h.extend(names.iter().cloned());
    out.push(Table {
        id: "drill-checks",
        title: "Drill check matrix",
        note: "✓ passed, ✗ failed, – not run".into(),
        headers: h,
        rows: e
            .drills
            .iter()
            .map(|d| {
                let mut row = vec![cell(d.drill_report_id.to_string())];
                for n in &names {
                    row.push(match d.checks.iter().find(|c| &c.name == n) {
                        Some(c) if c.passed => Cell {
                            text: "✓".into(),
                            class: "ok",
                        },
                        Some(_) => Cell {
                            text: "✗".into(),
                            class: "bad",
                        },
                        None => cell("–"),
                    });
                }
                row
            })
            .collect(),
    });
    out.push(Table {
        id: "restores",
        title: "Restores performed",
        note: String::new(),
        headers: headers(&[
            "Restore", "Started", "Finished", "Operator", "Mode", "Target", "Backup", "Status",
            "Error",
        ]),
        rows: e
            .restores
            .iter()
            .map(|r| {
                vec![
                    cell(r.restore_job_id.to_string()),
                    cell(time(r.started_at)),
                    cell(opt_time(r.finished_at)),
                    cell(r.operator.clone()),
                    cell(r.mode.clone()),
                    cell(if r.target.is_empty() {
                        "(source)".into()
                    } else {
                        r.target.clone()
                    }),
                    cell(r.backup_record_id.to_string()),
                    flag(
                        match r.status.as_str() {
                            "completed" => Some(true),
                            "failed" => Some(false),
                            _ => None,
                        },
                        "completed",
                        "failed",
                    ),
                    cell(opt(r.error_code.clone())),
                ]
            })
            .collect(),
    });
    out.push(Table {
        id: "alerts",
        title: "Alerts",
        note: "raised or open in the window; an open alert's duration runs to generation".into(),
        headers: headers(&[
            "Alert", "Kind", "Severity", "Raised", "Resolved", "Duration", "Code",
        ]),
        rows: e
            .alerts
            .iter()
            .map(|a| {
                vec![
                    cell(a.alert_id.to_string()),
                    cell(a.kind.clone()),
                    cell(a.severity.clone()),
                    cell(time(a.raised_at)),
                    cell(opt_time(a.resolved_at)),
                    cell(charts::seconds(a.duration_seconds as f64)),
                    cell(a.code.clone()),
                ]
            })
            .collect(),
    });
    out.push(Table {
        id: "backups",
        title: "Backups",
        note: "started in the window, and earlier recovery points still present in it".into(),
        headers: headers(&[
            "Backup",
            "Snapshot",
            "Size",
            "Checksum (SHA-256)",
            "Key id",
            "Verify",
            "Retention",
            "Deleted",
            "Reason",
        ]),
        rows: e
            .backups
            .iter()
            .map(|b| {
                vec![
                    cell(b.backup_record_id.to_string()),
                    cell(opt_time(b.snapshot_at)),
                    cell(opt(b.byte_size.map(|s| charts::bytes(s as f64)))),
                    Cell {
                        text: opt(b.checksum_sha256.clone()),
                        class: "hash",
                    },
                    cell(opt(b.key_id.clone())),
                    flag(
                        b.verify_status.as_deref().map(|v| v == "ok"),
                        "ok",
                        "failed",
                    ),
                    cell(b.retention_status.clone()),
                    cell(opt_time(b.deleted_at)),
                    cell(opt(b.deletion_reason.clone().or(b.error_code.clone()))),
                ]
            })
            .collect(),
    });
    out
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, TimeZone, Utc};
    use uuid::Uuid;

    use crate::collect::Collected;
    use crate::model::{AuditChain, Backup, Parameters, Window};

    fn backup(h: i64, id: u128) -> Backup {
        let t = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + Duration::hours(h);
        Backup {
            backup_record_id: Uuid::from_u128(id),
            policy_id: String::new(),
            tier: "full".into(),
            status: "completed".into(),
            snapshot_at: Some(t),
            started_at: t,
            completed_at: Some(t),
            byte_size: Some(2048),
            checksum_sha256: Some("0".repeat(64)),
            key_id: Some("k".into()),
            verify_status: None,
            last_verified_at: None,
            verify_error_code: None,
            retention_status: "retained".into(),
            legal_hold: false,
            deleted_at: None,
            deletion_reason: None,
            error_code: Some("<script>alert(1)</script>".into()),
        }
    }

    /// The page is self-contained (nothing to fetch, no script), escapes what it shows, and
    /// draws one mark per data point.
    #[test]
    fn the_page_is_self_contained_and_escaped() {
        let from = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let window = Window {
            from,
            to: from + Duration::days(2),
        };
        let c = Collected {
            policies: vec![],
            policy_changes: vec![],
            backups: vec![backup(1, 1), backup(7, 2), backup(20, 3)],
            restores: vec![],
            drills: vec![],
            alerts: vec![],
            audit_chain: AuditChain {
                intact: true,
                head_seq: 0,
                head_hash: "0".repeat(64),
                events_verified: 0,
                broken_at: None,
            },
        };
        let e = crate::assemble(
            Uuid::from_u128(9),
            window,
            Parameters::default(),
            from + Duration::days(3),
            c,
        );
        let html = super::render(&e).unwrap();
        assert!(
            !html.contains("<script"),
            "no script, and shown text is escaped"
        );
        assert!(html.contains("&lt;script&gt;") || html.contains("&#60;script&#62;"));
        for fetch in ["src=", "href=", "url(", "@import", "<link", "<img"] {
            assert!(!html.contains(fetch), "{fetch}");
        }
        assert_eq!(html.matches("class=\"control\"").count(), 9);
        assert!(html.contains("id=\"chart-backups\" class=\"chart\" data-points=\"3\""));
        assert!(html.contains("id=\"chart-rpo\" class=\"chart\" data-points=\"2\""));
        assert_eq!(e.achieved_rpo.len(), 2);
    }
}
