//! `drctl evidence`: the compliance evidence pack of one organization (`--org`) or of every
//! one (`--all-orgs`, a pack per organization in `DIR/<org>/` plus `fleet-summary.json`), and
//! `drctl evidence check DIR`. Reads the metadata database only: no broker, no master key.
//! The pack itself is `drfleet-evidence`; docs/evidence.md documents it.

use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::PgPool;

use drfleet_evidence::pack::{self, Verdict};
use drfleet_evidence::{Parameters, Status, Window};
use drfleet_infra::config::ConfigError;
use drfleet_protocol::tenant::TenantKey;

use crate::cli::DbArgs;
use crate::error::{Error, Outcome};

#[derive(clap::Args, Debug, Clone)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct EvidenceArgs {
    #[command(subcommand)]
    pub action: Option<EvidenceAction>,
    /// Organization (tenant) key.
    #[arg(
        long,
        required_unless_present = "all_orgs",
        conflicts_with = "all_orgs"
    )]
    pub org: Option<TenantKey>,
    /// One pack per organization in DIR/<org>/, plus DIR/fleet-summary.json.
    #[arg(long)]
    pub all_orgs: bool,
    /// Window start: RFC 3339, or YYYY-MM-DD (that day's 00:00 UTC).
    #[arg(long, required = true, value_name = "DATE", value_parser = parse_from)]
    pub from: Option<DateTime<Utc>>,
    /// Window end (exclusive): RFC 3339, or YYYY-MM-DD (through that whole day, UTC).
    #[arg(long, required = true, value_name = "DATE", value_parser = parse_to)]
    pub to: Option<DateTime<Utc>>,
    /// Directory the pack is written into (created if missing).
    #[arg(long, required = true, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// MIN_FREQUENCY_AND_RETENTION: a backup at least every N hours.
    #[arg(long, env = "DR_EVIDENCE_MIN_FREQUENCY_HOURS", default_value_t = 6,
        value_parser = clap::value_parser!(u32).range(1..=8784))]
    pub min_frequency_hours: u32,
    /// MIN_FREQUENCY_AND_RETENTION: dailies kept for at least M days.
    #[arg(long, env = "DR_EVIDENCE_MIN_RETENTION_DAYS", default_value_t = 30,
        value_parser = clap::value_parser!(u32).range(1..=36600))]
    pub min_retention_days: u32,
    /// DRILL_WITHIN_90_DAYS: how old the latest passing drill may be, in days.
    #[arg(long, env = "DR_EVIDENCE_DRILL_MAX_AGE_DAYS", default_value_t = 90,
        value_parser = clap::value_parser!(u32).range(1..=3660))]
    pub drill_max_age_days: u32,
    /// VERIFICATION_COVERAGE: the share (0..=1) of due backups that must be verified.
    #[arg(long, env = "DR_EVIDENCE_MIN_VERIFICATION_COVERAGE", default_value_t = 1.0,
        value_parser = parse_share)]
    pub min_verification_coverage: f64,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum EvidenceAction {
    /// Check a pack (or a fleet of packs) against its SHA256SUMS and the organization's
    /// audit chain in the metadata database: exit 0 when everything matches, 1 otherwise.
    Check {
        /// The pack's directory (or the fleet's, with fleet-summary.json).
        dir: PathBuf,
        #[command(flatten)]
        db: DbArgs,
    },
}

const DATE_HELP: &str = "must be an RFC 3339 timestamp or a date YYYY-MM-DD";

fn parse_date(s: &str, end_of_day: bool) -> Result<DateTime<Utc>, &'static str> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let d = NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| DATE_HELP)?;
    let d = if end_of_day {
        d.succ_opt().ok_or(DATE_HELP)?
    } else {
        d
    };
    Ok(d.and_hms_opt(0, 0, 0).ok_or(DATE_HELP)?.and_utc())
}

/// `--from`: a date is that day's start (UTC).
pub fn parse_from(s: &str) -> Result<DateTime<Utc>, &'static str> {
    parse_date(s, false)
}

/// `--to`: a date includes that whole day (the window ends at the next midnight, UTC).
pub fn parse_to(s: &str) -> Result<DateTime<Utc>, &'static str> {
    parse_date(s, true)
}

fn parse_share(s: &str) -> Result<f64, &'static str> {
    s.parse::<f64>()
        .ok()
        .filter(|v| (0.0..=1.0).contains(v))
        .ok_or("must be a number from 0 to 1")
}

use crate::db::pool;

fn evidence_error(e: drfleet_evidence::Error) -> Error {
    match e {
        drfleet_evidence::Error::Db(e) => Error::Sql(e),
        drfleet_evidence::Error::Io { source, .. } => Error::Io(source),
        other => Error::Io(std::io::Error::other(other.to_string())),
    }
}

pub async fn run(a: &EvidenceArgs) -> Result<Outcome, Error> {
    if let Some(EvidenceAction::Check { dir, db }) = &a.action {
        return check(dir, db).await;
    }
    // clap requires these whenever no subcommand is given.
    let (Some(from), Some(to), Some(out)) = (a.from, a.to, a.out.as_deref()) else {
        return Err(ConfigError::new("--from/--to/--out", "are required").into());
    };
    if from >= to {
        return Err(ConfigError::new("--from", "must be before --to").into());
    }
    let window = Window { from, to };
    let params = Parameters {
        min_frequency_hours: a.min_frequency_hours,
        min_retention_days: a.min_retention_days,
        drill_max_age_days: a.drill_max_age_days,
        min_verification_coverage: a.min_verification_coverage,
    };
    let pool = pool(&a.db).await?;
    let result = match &a.org {
        Some(org) => one(&pool, org.organization_id().as_uuid(), window, &params, out)
            .await
            .map(|_| ()),
        None => fleet(&pool, window, &params, out).await,
    };
    pool.close().await;
    result.map(|()| Outcome::Success)
}

async fn one(
    pool: &PgPool,
    org: uuid::Uuid,
    window: Window,
    params: &Parameters,
    out: &Path,
) -> Result<pack::FleetEntry, Error> {
    let now = Utc::now();
    let e = drfleet_evidence::generate(pool, org, window, params, now)
        .await
        .map_err(evidence_error)?;
    let written = pack::write_pack(out, &e).map_err(evidence_error)?;
    let entry = pack::FleetEntry::new(&e, &written);
    println!(
        "{}: {org}: {} controls: {} {}, {} {}, {} {}; audit chain head {} {}",
        out.display(),
        e.controls.len(),
        entry.compliant,
        Status::Compliant.as_str(),
        entry.non_compliant,
        Status::NonCompliant.as_str(),
        entry.not_applicable,
        Status::NotApplicable.as_str(),
        e.audit_chain.head_seq,
        e.audit_chain.head_hash
    );
    Ok(entry)
}

async fn fleet(
    pool: &PgPool,
    window: Window,
    params: &Parameters,
    out: &Path,
) -> Result<(), Error> {
    let orgs = drfleet_evidence::collect::organizations(pool)
        .await
        .map_err(evidence_error)?;
    let mut entries = Vec::with_capacity(orgs.len());
    for org in orgs {
        entries.push(one(pool, org, window, params, &out.join(org.to_string())).await?);
    }
    // An empty fleet still gets its summary.
    std::fs::create_dir_all(out)?;
    let n = entries.len();
    pack::write_fleet_summary(out, window, *params, Utc::now(), entries).map_err(evidence_error)?;
    println!(
        "{}: fleet summary of {n} organizations",
        out.join(pack::FLEET_SUMMARY).display()
    );
    Ok(())
}

async fn check(dir: &Path, db: &DbArgs) -> Result<Outcome, Error> {
    let pool = pool(db).await?;
    let verdict = pack::check(&pool, dir).await;
    pool.close().await;
    match verdict {
        Ok(Verdict::Ok(line)) => {
            println!("ok: {line}");
            Ok(Outcome::Success)
        }
        Ok(Verdict::Mismatch(line)) => {
            println!("mismatch: {line}");
            Ok(Outcome::Failed)
        }
        // An unreadable pack is a failed check, not a database error.
        Err(e @ (drfleet_evidence::Error::BadPack(_) | drfleet_evidence::Error::Io { .. })) => {
            println!("mismatch: {e}");
            Ok(Outcome::Failed)
        }
        Err(e) => Err(evidence_error(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    #[test]
    fn dates() {
        assert_eq!(
            parse_from("2026-03-01").unwrap().to_rfc3339(),
            "2026-03-01T00:00:00+00:00"
        );
        assert_eq!(
            parse_to("2026-03-01").unwrap().to_rfc3339(),
            "2026-03-02T00:00:00+00:00"
        );
        assert_eq!(
            parse_to("2026-03-01T10:00:00+02:00").unwrap(),
            parse_from("2026-03-01T08:00:00Z").unwrap()
        );
        assert!(parse_from("March").is_err());
        assert!(parse_to("2026-02-30").is_err());
        assert_eq!(
            parse_to("2026-12-31").unwrap() - parse_from("2026-12-31").unwrap(),
            Duration::days(1)
        );
        assert!(parse_share("1.5").is_err());
        assert_eq!(parse_share("0.95"), Ok(0.95));
    }
}
