//! `drctl policy set|rm|list`: backup policies. `set` and `rm` publish a `PolicyCommand` and
//! wait for `policy_updated` / `policy_deleted` (or the rejection) like every command;
//! `list` reads `pf_backup_policies` from the metadata database (DR_DATABASE_URL).
//!
//! Durations are human (`90s`, `15m`, `6h`, `30d`, `2w`); a bad one is a usage error (exit 2)
//! naming the flag.

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde_json::{Value, json};
use sqlx::Row;

use drfleet_infra::config::{ConfigError, postgres_url};
use drfleet_protocol::policy::{format_duration, parse_duration};
use drfleet_protocol::tenant::TenantKey;
use drfleet_protocol::v1::{self, command_envelope::Command};

use crate::cli::{CommandOpts, DbArgs, OutputFormat};
use crate::error::{Error, Outcome};
use crate::output::{instant, print_record};

#[derive(clap::Subcommand, Debug, Clone)]
pub enum PolicyCmd {
    /// Create or replace one named policy of an organization; waits for policy_updated.
    Set(Box<SetArgs>),
    /// Delete one named policy (its backups are kept); waits for policy_deleted.
    Rm(RmArgs),
    /// The policies in the metadata database, with their next slot and newest backup.
    List(ListArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct SetArgs {
    /// Organization (tenant): its key (a UUID, or the integer/text key of the tenant column).
    #[arg(long, value_name = "KEY")]
    pub org: TenantKey,
    /// Policy name, unique per organization: 1 to 100 characters of [A-Za-z0-9._-].
    #[arg(long)]
    pub name: String,
    /// Tier the backups take (see `drctl tiers show`).
    #[arg(long)]
    pub tier: String,
    /// Cron: 5 fields (minute first) or 6 (seconds first), read in --timezone.
    #[arg(long, value_name = "CRON")]
    pub schedule: String,
    /// IANA time zone of the schedule and the retention calendar.
    #[arg(long, default_value = "UTC")]
    pub timezone: String,
    /// Recovery point objective: the newest backup must be younger than this.
    #[arg(long, value_name = "DUR")]
    pub rpo: Option<String>,
    /// Recovery time objective (drills measure against it).
    #[arg(long, value_name = "DUR")]
    pub rto: Option<String>,
    #[arg(long, value_name = "N", value_parser = keep_count())]
    pub keep_last: Option<u32>,
    #[arg(long, value_name = "N", value_parser = keep_count())]
    pub keep_daily: Option<u32>,
    #[arg(long, value_name = "N", value_parser = keep_count())]
    pub keep_weekly: Option<u32>,
    #[arg(long, value_name = "N", value_parser = keep_count())]
    pub keep_monthly: Option<u32>,
    #[arg(long, value_name = "N", value_parser = keep_count())]
    pub keep_yearly: Option<u32>,
    /// Keep every backup younger than this.
    #[arg(long, value_name = "DUR")]
    pub keep_within: Option<String>,
    /// Re-verify every retained backup at least once per this period.
    #[arg(long, value_name = "DUR")]
    pub verify_cycle: Option<String>,
    /// Cron of the DR drills (same syntax as --schedule).
    #[arg(long, value_name = "CRON")]
    pub drill_schedule: Option<String>,
    /// Keep the policy but schedule nothing and raise no alerts.
    #[arg(long)]
    pub disabled: bool,
    /// A drill assertion, NAME=SQL (repeat for several): a query that must return no rows
    /// against the drill's scratch copy (e.g. `no_orphans=SELECT 1 FROM orders o WHERE …`).
    #[arg(long = "drill-assert", value_name = "NAME=SQL")]
    pub drill_assert: Vec<String>,
    #[command(flatten)]
    pub opts: CommandOpts,
}

/// `NAME=SQL` of `--drill-assert`; the validation proper is the wire contract's.
fn assertion(s: &str) -> Result<v1::DrillAssertion, ConfigError> {
    match s.split_once('=') {
        Some((name, sql)) if !name.trim().is_empty() && !sql.trim().is_empty() => {
            Ok(v1::DrillAssertion {
                name: name.trim().to_string(),
                sql: sql.to_string(),
            })
        }
        _ => Err(ConfigError::new("--drill-assert", "must be NAME=SQL")),
    }
}

fn keep_count() -> clap::builder::RangedI64ValueParser<u32> {
    clap::value_parser!(u32).range(1..=i64::from(drfleet_protocol::validate::MAX_KEEP_COUNT))
}

#[derive(clap::Args, Debug, Clone)]
pub struct RmArgs {
    /// Organization (tenant) key.
    #[arg(long, value_name = "KEY")]
    pub org: TenantKey,
    #[arg(long)]
    pub name: String,
    #[command(flatten)]
    pub opts: CommandOpts,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ListArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// Only this organization's policies (its key).
    #[arg(long, value_name = "KEY")]
    pub org: Option<TenantKey>,
    /// `text` (one line per policy) or `json` (one object per line).
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

/// A human duration flag in seconds; 0 when not given (= not set on the wire).
fn secs(flag: &'static str, v: &Option<String>) -> Result<u64, ConfigError> {
    match v {
        None => Ok(0),
        Some(s) => parse_duration(flag, s).map_err(|e| ConfigError::new(flag, e.what)),
    }
}

/// The `PolicyCommand` UPSERT of `drctl policy set`.
pub fn set_body(a: &SetArgs) -> Result<Command, Error> {
    let spec = v1::PolicySpec {
        tier: a.tier.clone(),
        schedule: a.schedule.clone(),
        timezone: a.timezone.clone(),
        rpo_seconds: secs("--rpo", &a.rpo)?,
        rto_seconds: secs("--rto", &a.rto)?,
        retention: Some(v1::RetentionRules {
            keep_last: a.keep_last.unwrap_or(0),
            keep_daily: a.keep_daily.unwrap_or(0),
            keep_weekly: a.keep_weekly.unwrap_or(0),
            keep_monthly: a.keep_monthly.unwrap_or(0),
            keep_yearly: a.keep_yearly.unwrap_or(0),
            keep_within_seconds: secs("--keep-within", &a.keep_within)?,
        }),
        verify_cycle_seconds: secs("--verify-cycle", &a.verify_cycle)?,
        drill_schedule: a.drill_schedule.clone().unwrap_or_default(),
        disabled: a.disabled,
        drill_assertions: a
            .drill_assert
            .iter()
            .map(|s| assertion(s))
            .collect::<Result<_, _>>()?,
    };
    Ok(Command::Policy(v1::PolicyCommand {
        name: a.name.clone(),
        action: v1::PolicyAction::Upsert as i32,
        spec: Some(spec),
    }))
}

pub fn rm_body(a: &RmArgs) -> Command {
    Command::Policy(v1::PolicyCommand {
        name: a.name.clone(),
        action: v1::PolicyAction::Delete as i32,
        spec: None,
    })
}

fn human(secs: Option<i64>) -> Value {
    match secs.and_then(|s| u64::try_from(s).ok()) {
        Some(s) => Value::String(format_duration(s)),
        None => Value::Null,
    }
}

fn when(t: Option<DateTime<Utc>>) -> Value {
    t.map(instant).unwrap_or(Value::Null)
}

/// One object per policy: identity, schedule, objectives and retention as human durations,
/// the next slot and the newest completed backup of the policy.
fn policy_json(row: &sqlx::postgres::PgRow) -> Result<Value, sqlx::Error> {
    let keep = |c: &str| -> Result<Value, sqlx::Error> {
        Ok(row
            .try_get::<Option<i32>, _>(c)?
            .map_or(Value::Null, |n| json!(n)))
    };
    Ok(json!({
        "id": row.try_get::<uuid::Uuid, _>("id")?.to_string(),
        // The organization as on the wire (its tenant key), like every event drctl prints.
        "organization_id": row.try_get::<String, _>("tenant_key")?,
        "name": row.try_get::<String, _>("name")?,
        "tier": row.try_get::<String, _>("tier")?,
        "schedule": row.try_get::<String, _>("schedule")?,
        "timezone": row.try_get::<String, _>("timezone")?,
        "enabled": row.try_get::<bool, _>("enabled")?,
        "rpo": human(row.try_get("rpo_seconds")?),
        "rto": human(row.try_get("rto_seconds")?),
        "retention": {
            "keep_last": keep("keep_last")?,
            "keep_daily": keep("keep_daily")?,
            "keep_weekly": keep("keep_weekly")?,
            "keep_monthly": keep("keep_monthly")?,
            "keep_yearly": keep("keep_yearly")?,
            "keep_within": human(row.try_get("keep_within_seconds")?),
        },
        "verify_cycle": human(row.try_get("verify_cycle_seconds")?),
        "drill_schedule": row.try_get::<Option<String>, _>("drill_schedule")?,
        // Names only: the SQL is in the audit log's policy_updated.
        "drill_assertions": row
            .try_get::<Value, _>("drill_assertions")?
            .as_array()
            .map(|a| a.iter().map(|x| x["name"].clone()).collect::<Vec<_>>())
            .unwrap_or_default(),
        "next_due_at": when(row.try_get("next_due_at")?),
        "last_slot_at": when(row.try_get("last_slot_at")?),
        "newest_backup_at": when(row.try_get("newest_backup_at")?),
        "updated_by": row.try_get::<String, _>("updated_by")?,
        "updated_at": when(Some(row.try_get("updated_at")?)),
    }))
}

/// `org name tier schedule (tz) enabled|disabled next=… newest_backup=…`
fn text_line(v: &Value) -> String {
    let s = |k: &str| match &v[k] {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    format!(
        "{} {} tier={} schedule=\"{}\" tz={} {} rpo={} next_due_at={} newest_backup_at={}",
        s("organization_id"),
        s("name"),
        s("tier"),
        s("schedule"),
        s("timezone"),
        if v["enabled"] == json!(true) {
            "enabled"
        } else {
            "disabled"
        },
        s("rpo"),
        s("next_due_at"),
        s("newest_backup_at"),
    )
}

/// `drctl policy list`: every policy (of `--org`), by organization and name.
pub async fn list(a: &ListArgs) -> Result<Outcome, Error> {
    let url = postgres_url(
        "DR_DATABASE_URL",
        a.db.database_url.as_deref().unwrap_or(""),
    )?;
    let pool = drfleet_infra::db::connect(&url, "drctl", 2).await?;
    let result = print_policies(&pool, a).await;
    pool.close().await;
    result.map(|()| Outcome::Success)
}

async fn print_policies(pool: &sqlx::PgPool, a: &ListArgs) -> Result<(), Error> {
    // Backups carry the policy id as text (`BackupCommand.policy_id`).
    let mut rows = sqlx::query(
        "SELECT p.*, (SELECT max(r.completed_at) FROM pf_backup_records r \
                      WHERE r.organization_id = p.organization_id AND r.policy_id = p.id::text \
                        AND r.status = 'completed') AS newest_backup_at \
         FROM pf_backup_policies p \
         WHERE $1::uuid IS NULL OR p.organization_id = $1 \
         ORDER BY p.organization_id, p.name",
    )
    .bind(a.org.as_ref().map(|o| o.organization_id().as_uuid()))
    .fetch(pool);
    while let Some(row) = rows.try_next().await? {
        let v = policy_json(&row)?;
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

    fn parse(args: &[&str]) -> Result<SetArgs, clap::Error> {
        let org = drfleet_protocol::OrganizationId::new().to_string();
        let mut v = vec!["drctl", "policy", "set", "--org", &org, "--name", "n"];
        v.extend(["--tier", "full", "--schedule", "0 */6 * * *"]);
        v.extend(args);
        match Cli::try_parse_from(v)?.command {
            Cmd::Policy(PolicyCmd::Set(a)) => Ok(*a),
            other => panic!("parsed {other:?}"),
        }
    }

    #[test]
    fn set_builds_the_upsert_with_human_durations() {
        let a = parse(&[
            "--rpo",
            "6h",
            "--rto",
            "90m",
            "--keep-last",
            "10",
            "--keep-within",
            "30d",
            "--verify-cycle",
            "2w",
            "--drill-schedule",
            "0 4 * * 0",
            "--timezone",
            "Europe/Berlin",
            "--disabled",
        ])
        .unwrap();
        let Command::Policy(p) = set_body(&a).unwrap() else {
            panic!("not a policy");
        };
        assert_eq!(p.action, v1::PolicyAction::Upsert as i32);
        let s = p.spec.unwrap();
        assert_eq!((s.rpo_seconds, s.rto_seconds), (21_600, 5400));
        assert_eq!(s.verify_cycle_seconds, 1_209_600);
        let r = s.retention.unwrap();
        assert_eq!((r.keep_last, r.keep_daily), (10, 0));
        assert_eq!(r.keep_within_seconds, 2_592_000);
        assert_eq!(s.drill_schedule, "0 4 * * 0");
        assert_eq!(s.timezone, "Europe/Berlin");
        assert!(s.disabled);
    }

    #[test]
    fn drill_assertions_are_repeatable_name_sql_pairs() {
        let a = parse(&[
            "--drill-assert",
            "no_orphans=SELECT 1 FROM orders o WHERE o.customer_id = 0",
            "--drill-assert",
            "eq=SELECT 1 WHERE 1 = 2",
        ])
        .unwrap();
        let Command::Policy(p) = set_body(&a).unwrap() else {
            panic!("not a policy");
        };
        let names: Vec<(String, String)> = p
            .spec
            .unwrap()
            .drill_assertions
            .into_iter()
            .map(|a| (a.name, a.sql))
            .collect();
        assert_eq!(
            names,
            [
                (
                    "no_orphans".to_string(),
                    "SELECT 1 FROM orders o WHERE o.customer_id = 0".to_string()
                ),
                ("eq".to_string(), "SELECT 1 WHERE 1 = 2".to_string()),
            ]
        );
        for bad in ["noequals", "=SELECT 1", "name="] {
            let a = parse(&["--drill-assert", bad]).unwrap();
            match set_body(&a) {
                Err(Error::Config(e)) => assert_eq!(e.setting, "--drill-assert"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_bad_duration_names_its_flag() {
        for (flag, bad) in [
            ("--rpo", "6x"),
            ("--keep-within", "0d"),
            ("--verify-cycle", "1.5h"),
        ] {
            let a = parse(&[flag, bad]).unwrap();
            match set_body(&a) {
                Err(Error::Config(e)) => {
                    assert_eq!(e.setting, flag);
                    assert!(!e.problem.contains(bad), "{e}");
                }
                other => panic!("{flag} {bad}: {other:?}"),
            }
        }
        assert!(parse(&["--keep-last", "0"]).is_err());
        assert!(parse(&["--keep-daily", "10001"]).is_err());
    }

    #[test]
    fn text_lines_show_the_essentials() {
        let v = json!({"organization_id": "o", "name": "n", "tier": "full",
            "schedule": "0 * * * *", "timezone": "UTC", "enabled": true, "rpo": "6h",
            "next_due_at": "2026-12-02T11:00:00Z", "newest_backup_at": null});
        assert_eq!(
            text_line(&v),
            "o n tier=full schedule=\"0 * * * *\" tz=UTC enabled rpo=6h \
             next_due_at=2026-12-02T11:00:00Z newest_backup_at=-"
        );
    }
}
