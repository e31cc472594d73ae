//! `drctl drill` (run one DR drill, wait, print its pass/fail matrix; exit 1 when it did not
//! pass) and `drctl drills` (the drill reports in the metadata database).
//!
//! The matrix (`--output text`, the default) is one line per check and objective, then the
//! phases and the measured RTO/RPO; `--output json` prints the events as every command does.

use std::io::Write;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde_json::{Value, json};
use sqlx::Row;

use drfleet_infra::config::ConfigError;
use drfleet_protocol::BackupRecordId;
use drfleet_protocol::policy::parse_duration;
use drfleet_protocol::tenant::TenantKey;
use drfleet_protocol::v1::{self, command_envelope::Command};

use crate::cli::{CommandOpts, DbArgs, OutputFormat};
use crate::error::{Error, Outcome};
use crate::output::{instant, print_record};

#[derive(clap::Args, Debug, Clone)]
#[command(group(clap::ArgGroup::new("selection").args(["record", "latest", "random_within"])))]
pub struct DrillArgs {
    /// Organization (tenant) key.
    #[arg(long, value_name = "KEY")]
    pub org: TenantKey,
    /// Drill this backup record.
    #[arg(long, value_name = "ID", alias = "backup")]
    pub record: Option<BackupRecordId>,
    /// Drill the newest completed backup (the default).
    #[arg(long)]
    pub latest: bool,
    /// Drill a backup picked uniformly among the completed ones of this window (e.g. 30d,
    /// 2w; whole days, rounded up).
    #[arg(long, value_name = "DUR")]
    pub random_within: Option<String>,
    /// Only backups of this tier (--latest, --random-within).
    #[arg(long)]
    pub tier: Option<String>,
    /// The policy whose objectives and assertions apply (and whose backups are chosen
    /// from): its name (looked up in DR_DATABASE_URL) or id.
    #[arg(long)]
    pub policy: Option<String>,
    /// Restore target (a name of the workers' DR_RESTORE_TARGETS); default the workers'
    /// DR_DRILL_TARGET.
    #[arg(long, value_name = "NAME")]
    pub target: Option<String>,
    /// Keep the scratch schema this long after the drill (e.g. 2h; whole hours, rounded up,
    /// at most 168h); default drop it at once.
    #[arg(long, value_name = "DUR")]
    pub keep: Option<String>,
    /// `text`: the pass/fail matrix; `json`: the command's events, one JSON line each.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub opts: CommandOpts,
}

#[derive(clap::Args, Debug, Clone)]
pub struct DrillsArgs {
    /// Organization (tenant) key.
    #[arg(long, value_name = "KEY")]
    pub org: TenantKey,
    /// At most this many reports, newest first.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..=100_000))]
    pub limit: i64,
    /// `text` (one line per report) or `json` (one object per line).
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    #[command(flatten)]
    pub db: DbArgs,
}

/// A duration flag in whole `unit`s, rounded up.
fn whole(flag: &'static str, s: &str, unit: u64) -> Result<u32, ConfigError> {
    let secs = parse_duration(flag, s).map_err(|e| ConfigError::new(flag, e.what))?;
    u32::try_from(secs.div_ceil(unit)).map_err(|_| ConfigError::new(flag, "is too long"))
}

/// The `DrillCommand` of `drctl drill`; `policy_id` already resolved from `--policy`.
pub fn drill_body(a: &DrillArgs, policy_id: Option<uuid::Uuid>) -> Result<Command, Error> {
    let (selection, window_days) = match (&a.record, &a.random_within) {
        (Some(_), _) => (v1::DrillSelection::Record, 0),
        (None, Some(w)) => (
            v1::DrillSelection::RandomWithinWindow,
            whole("--random-within", w, 86_400)?,
        ),
        (None, None) => (v1::DrillSelection::Latest, 0),
    };
    let keep_hours = match &a.keep {
        None => 0,
        Some(k) => whole("--keep", k, 3600)?,
    };
    Ok(Command::Drill(v1::DrillCommand {
        backup_record_id: a.record.map(|r| r.to_string()).unwrap_or_default(),
        tier: a.tier.clone().unwrap_or_default(),
        selection: selection as i32,
        window_days,
        target: a.target.clone().unwrap_or_default(),
        keep_hours,
        policy_id: policy_id.map(|p| p.to_string()).unwrap_or_default(),
        scheduled_for: None,
    }))
}

/// `--policy` as an id: a UUID as given, a name looked up among the organization's policies.
pub async fn policy_id(a: &DrillArgs) -> Result<Option<uuid::Uuid>, Error> {
    let Some(p) = &a.policy else {
        return Ok(None);
    };
    if let Ok(id) = p.parse::<uuid::Uuid>() {
        return Ok(Some(id));
    }
    let pool = pool(&a.db).await?;
    let id: Option<uuid::Uuid> = sqlx::query_scalar(
        "SELECT id FROM pf_backup_policies WHERE organization_id = $1 AND name = $2",
    )
    .bind(a.org.organization_id().as_uuid())
    .bind(p)
    .fetch_optional(&pool)
    .await?;
    pool.close().await;
    id.map(Some)
        .ok_or_else(|| ConfigError::new("--policy", "names no policy of this organization").into())
}

use crate::db::pool;

/// The pass/fail matrix of a completed drill, as printed by `drctl drill`.
pub fn matrix(d: &v1::DrillCompleted) -> String {
    let mut out = format!(
        "drill {} of backup {} into target {}: {}\n",
        d.drill_report_id,
        d.backup_record_id,
        if d.target.is_empty() { "-" } else { &d.target },
        if d.passed { "PASSED" } else { "FAILED" }
    );
    let width = d.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    for c in &d.checks {
        out.push_str(&format!(
            "  {}  {:width$}  {}\n",
            if c.passed { "PASS" } else { "FAIL" },
            c.name,
            c.detail
        ));
    }
    let phases: Vec<String> = d
        .phases
        .iter()
        .map(|p| format!("{} {} ms", p.name, p.ms))
        .collect();
    out.push_str(&format!("phases: {}\n", phases.join(", ")));
    let objective = |ms: u64| {
        if ms == 0 {
            "none".to_string()
        } else {
            format!("{ms} ms")
        }
    };
    out.push_str(&format!(
        "RTO {} ms (objective {}), RPO {} ms (objective {})\n",
        d.measured_rto_ms,
        objective(d.rto_objective_ms),
        d.measured_rpo_ms,
        objective(d.rpo_objective_ms)
    ));
    out
}

/// Print the matrix to stdout.
pub fn print_matrix(d: &v1::DrillCompleted) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(matrix(d).as_bytes())?;
    out.flush()
}

/// One report: `drill_report_id`, `backup_record_id`, `passed`, `measured_rto_ms`,
/// `measured_rpo_ms`, `checks` (`[{name, passed, detail}]`), and what else the report holds.
fn report_json(row: &sqlx::postgres::PgRow) -> Result<Value, sqlx::Error> {
    let checks: Value = row.try_get("checks")?;
    let checks: Vec<Value> = checks
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| json!({"name": c["name"], "passed": c["passed"], "detail": c["detail"]}))
                .collect()
        })
        .unwrap_or_default();
    Ok(json!({
        "drill_report_id": row.try_get::<uuid::Uuid, _>("id")?.to_string(),
        "backup_record_id": row.try_get::<Option<uuid::Uuid>, _>("backup_record_id")?
            .map(|u| u.to_string()),
        "passed": row.try_get::<Option<bool>, _>("passed")?,
        "measured_rto_ms": row.try_get::<Option<i64>, _>("measured_rto_ms")?,
        "measured_rpo_ms": row.try_get::<Option<i64>, _>("measured_rpo_ms")?,
        "checks": checks,
        "rto_objective_ms": row.try_get::<Option<i64>, _>("rto_objective_ms")?,
        "rpo_objective_ms": row.try_get::<Option<i64>, _>("rpo_objective_ms")?,
        "phases": row.try_get::<Value, _>("phases")?,
        "selection": row.try_get::<String, _>("selection")?,
        "tier": row.try_get::<String, _>("tier")?,
        "target": row.try_get::<String, _>("target")?,
        "policy_id": row.try_get::<Option<uuid::Uuid>, _>("policy_id")?.map(|u| u.to_string()),
        "error_code": row.try_get::<Option<String>, _>("error_code")?,
        "started_at": instant(row.try_get::<DateTime<Utc>, _>("started_at")?),
        "finished_at": row.try_get::<Option<DateTime<Utc>>, _>("finished_at")?.map(instant),
    }))
}

fn text_line(v: &Value) -> String {
    let s = |k: &str| match &v[k] {
        Value::String(s) if !s.is_empty() => s.clone(),
        Value::String(_) | Value::Null => "-".into(),
        other => other.to_string(),
    };
    let verdict = match v["passed"] {
        Value::Bool(true) => "PASSED",
        Value::Bool(false) => "FAILED",
        _ => "RUNNING",
    };
    let failing: Vec<String> = v["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["passed"] == json!(false))
        .map(|c| c["name"].as_str().unwrap_or("").to_string())
        .collect();
    format!(
        "{} {} {} backup={} target={} rto_ms={} rpo_ms={} failing={} error={}",
        s("started_at"),
        s("drill_report_id"),
        verdict,
        s("backup_record_id"),
        s("target"),
        s("measured_rto_ms"),
        s("measured_rpo_ms"),
        if failing.is_empty() {
            "-".to_string()
        } else {
            failing.join(",")
        },
        s("error_code"),
    )
}

/// `drctl drills`: the organization's drill reports, newest first.
pub async fn list(a: &DrillsArgs) -> Result<Outcome, Error> {
    let pool = pool(&a.db).await?;
    let result = print_reports(&pool, a).await;
    pool.close().await;
    result.map(|()| Outcome::Success)
}

async fn print_reports(pool: &sqlx::PgPool, a: &DrillsArgs) -> Result<(), Error> {
    let mut rows = sqlx::query(
        "SELECT id, backup_record_id, passed, measured_rto_ms, measured_rpo_ms, checks, \
                rto_objective_ms, rpo_objective_ms, phases, selection, tier, target, policy_id, \
                error_code, started_at, finished_at \
           FROM pf_dr_drill_reports WHERE organization_id = $1 \
          ORDER BY started_at DESC, id DESC LIMIT $2",
    )
    .bind(a.org.organization_id().as_uuid())
    .bind(a.limit)
    .fetch(pool);
    while let Some(row) = rows.try_next().await? {
        let v = report_json(&row)?;
        if !print_record(a.output, &v, text_line)? {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Cmd};
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<DrillArgs, clap::Error> {
        let mut v = vec!["drctl", "drill", "--org", "42"];
        v.extend(args);
        match Cli::try_parse_from(v)?.command {
            Cmd::Drill(a) => Ok(*a),
            other => panic!("parsed {other:?}"),
        }
    }

    fn body(args: &[&str]) -> v1::DrillCommand {
        match drill_body(&parse(args).unwrap(), None).unwrap() {
            Command::Drill(d) => d,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn selections_map_to_the_command() {
        let d = body(&[]);
        assert_eq!(d.selection, v1::DrillSelection::Latest as i32);
        assert_eq!(
            body(&["--latest"]).selection,
            v1::DrillSelection::Latest as i32
        );
        let rec = BackupRecordId::new().to_string();
        let d = body(&["--record", &rec]);
        assert_eq!(
            (d.selection, d.backup_record_id.as_str()),
            (v1::DrillSelection::Record as i32, rec.as_str())
        );
        let d = body(&[
            "--random-within",
            "36h",
            "--target",
            "scratch",
            "--keep",
            "90m",
        ]);
        assert_eq!(d.selection, v1::DrillSelection::RandomWithinWindow as i32);
        assert_eq!((d.window_days, d.keep_hours), (2, 2));
        assert_eq!(d.target, "scratch");
        // One selection at most.
        assert!(parse(&["--latest", "--record", &rec]).is_err());
        assert!(parse(&["--latest", "--random-within", "7d"]).is_err());
        match drill_body(&parse(&["--random-within", "7x"]).unwrap(), None) {
            Err(Error::Config(e)) => assert_eq!(e.setting, "--random-within"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_matrix_lists_every_check_and_the_measures() {
        let d = v1::DrillCompleted {
            drill_report_id: "r1".into(),
            backup_record_id: "b1".into(),
            passed: false,
            measured_rto_ms: 1200,
            measured_rpo_ms: 60_000,
            checks: vec![
                v1::DrillCheck {
                    name: "row_counts".into(),
                    passed: true,
                    detail: String::new(),
                },
                v1::DrillCheck {
                    name: "assertion:no_orphans".into(),
                    passed: false,
                    detail: "3 rows".into(),
                },
            ],
            target: "scratch".into(),
            phases: vec![v1::DrillPhase {
                name: "load".into(),
                ms: 900,
            }],
            rto_objective_ms: 1,
            ..Default::default()
        };
        let m = matrix(&d);
        assert!(
            m.starts_with("drill r1 of backup b1 into target scratch: FAILED\n"),
            "{m}"
        );
        assert!(m.contains("  PASS  row_counts            \n"), "{m}");
        assert!(m.contains("  FAIL  assertion:no_orphans  3 rows\n"), "{m}");
        assert!(m.contains("phases: load 900 ms\n"), "{m}");
        assert!(
            m.contains("RTO 1200 ms (objective 1 ms), RPO 60000 ms (objective none)"),
            "{m}"
        );
    }

    #[test]
    fn report_lines_name_the_failing_checks() {
        let v = json!({"started_at": "2026-12-02T10:00:00Z", "drill_report_id": "r",
            "passed": false, "backup_record_id": "b", "target": "scratch",
            "measured_rto_ms": 5, "measured_rpo_ms": 7, "error_code": null,
            "checks": [{"name": "a", "passed": true, "detail": ""},
                       {"name": "assertion:x", "passed": false, "detail": "1 row"}]});
        assert_eq!(
            text_line(&v),
            "2026-12-02T10:00:00Z r FAILED backup=b target=scratch rto_ms=5 rpo_ms=7 \
             failing=assertion:x error=-"
        );
    }
}
