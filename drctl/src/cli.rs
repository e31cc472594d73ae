//! The command line: clap derive structs. Every setting is a flag and a `DR_*` env var;
//! secrets (`DR_AUTH_JWT_SECRET`, `DR_ACTOR_TOKEN`, `DR_DATABASE_URL`, `DR_AMQP_URL`) hide
//! their env values in `--help`.

use chrono::{DateTime, Utc};
use clap::builder::PossibleValuesParser;

use drfleet_infra::config::BrokerArgs;
use drfleet_protocol::events::EVENT_TYPES;
use drfleet_protocol::tenant::TenantKey;
use drfleet_protocol::{BackupRecordId, RestoreJobId};

/// Longest token lifetime `drctl token` mints: 30 days.
pub const MAX_TTL_SECS: u64 = 30 * 24 * 3600;

/// `drctl`: operator CLI for drfleet.
///
/// Exit codes: 0 success; 1 the command failed, was rejected, or the audit chain is broken;
/// 2 configuration or invalid input; 3 timed out waiting for the outcome; 4 broker or
/// database error.
#[derive(clap::Parser, Debug, Clone)]
#[command(name = "drctl", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum Cmd {
    /// Mint an actor token (HS256 JWT) with DR_AUTH_JWT_SECRET and print it.
    Token(TokenArgs),
    /// Request a backup of one organization.
    Backup(BackupArgs),
    /// Restore one backup (into a staging schema, or promoted over the live rows);
    /// `restore discard` drops a kept staging schema now.
    Restore(RestoreArgs),
    /// Verify one backup's artifact (checksum, decryption, manifest).
    Verify(VerifyArgs),
    /// Run a DR drill for one organization: restore a backup into a scratch schema of the
    /// drill target, validate it, measure RTO/RPO; prints the pass/fail matrix, exit 1 when
    /// the drill did not pass.
    Drill(Box<crate::drill::DrillArgs>),
    /// The organization's drill reports, newest first.
    Drills(crate::drill::DrillsArgs),
    /// Retention: `plan` (what a sweep would keep and delete, and why), `run` (sweep now).
    #[command(subcommand)]
    Retention(RetentionCmd),
    /// Put a legal hold on one backup: retention never deletes it until released.
    Hold(HoldArgs),
    /// Release the legal hold of one backup.
    Release(ReleaseArgs),
    /// Tenant keys: `rotate-master` (re-wrap every tenant key under the current master key),
    /// `rotate` (a new key for the organization's next backups), `list`, `certificate`.
    #[command(subcommand)]
    Keys(crate::keys::KeysCmd),
    /// Crypto-shred the organization: every tenant key destroyed, so none of its backups can
    /// be decrypted again. Takes effect when two different subjects request it within 24 hours.
    Shred(Box<crate::keys::ShredArgs>),
    /// Tail dr.events, one JSON line per event, until Ctrl-C / SIGTERM or --limit.
    Events(EventsArgs),
    /// The audit log (pf_audit_events).
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Backup tiers: which tables they cover and how each belongs to a tenant.
    #[command(subcommand)]
    Tiers(TiersCmd),
    /// Backup policies: `set` and `rm` change one by command, `list` reads them.
    #[command(subcommand)]
    Policy(crate::policy::PolicyCmd),
    /// The open alerts (RPO breached, backups failing, verify failed, drill alerts), oldest
    /// first.
    Alerts(crate::alerts::AlertsArgs),
    /// One organization's backups, newest first: tier, policy, status, snapshot, size,
    /// verify and retention status.
    Backups(crate::listings::BackupsArgs),
    /// Queued and running jobs, running first, with their progress.
    Jobs(crate::listings::JobsArgs),
    /// One screen: queues, workers running jobs, jobs by kind, open alerts, each policy's
    /// newest backup against its RPO.
    Status(crate::status::StatusArgs),
    /// Compliance evidence pack (evidence.json, report.html, SHA256SUMS, CHAIN_HEAD) of one
    /// organization or of every one; `evidence check DIR` checks a pack against the audit
    /// chain.
    Evidence(crate::evidence::EvidenceArgs),
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum TiersCmd {
    /// Every table of a tier and how it is reached (tenant column, tenant root, or the key
    /// path), one JSON line each, then the tenant schema's global tables.
    Show(TiersShowArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct TiersShowArgs {
    /// Tier name; `full` is every member table of the tenant schema.
    #[arg(default_value = "full")]
    pub name: String,
    /// Organization whose own tier of that name shadows the global one.
    #[arg(long)]
    pub org: Option<TenantKey>,
    /// Tenant data database (its catalog is read); default DR_DATABASE_URL.
    #[arg(long, env = "DR_SOURCE_DATABASE_URL", hide_env_values = true)]
    pub source_database_url: Option<String>,
    /// Metadata database (named tiers).
    #[arg(long, env = "DR_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Tenant column, as the workers' DR_TENANT_COLUMN.
    #[arg(long, env = "DR_TENANT_COLUMN", default_value = "organization_id")]
    pub tenant_column: String,
    /// Schema of the tenant tables, as the workers' DR_TENANT_SCHEMA.
    #[arg(long, env = "DR_TENANT_SCHEMA", default_value = "public")]
    pub tenant_schema: String,
    /// Tenant root table, schema.table(column), as the workers' DR_TENANT_ROOT.
    #[arg(long, env = "DR_TENANT_ROOT")]
    pub tenant_root: Option<String>,
}

/// The key tokens are minted with: the HS256 secret shared with the workers, or a private
/// key whose public half the workers hold (DR_AUTH_JWT_PUBLIC_KEY).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct SecretArgs {
    /// HS256 secret for actor tokens (at least 32 bytes).
    #[arg(long, env = "DR_AUTH_JWT_SECRET", hide_env_values = true)]
    pub auth_jwt_secret: Option<String>,
    /// PEM private key (RSA or EC P-256) to mint RS256/ES256 tokens with; wins over the secret.
    #[arg(long, env = "DR_AUTH_JWT_PRIVATE_KEY", hide_env_values = true)]
    pub auth_jwt_private_key: Option<String>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct TokenArgs {
    /// Organization (tenant) the token acts in: its id, a UUID.
    #[arg(long, value_name = "UUID")]
    pub org: TenantKey,
    /// Permission key to grant (repeat, or comma-separate), e.g. pf.backup.* or pf.dr-drill.run.
    #[arg(long = "perm", required = true, value_delimiter = ',')]
    pub perms: Vec<String>,
    /// Subject (the actor) recorded by workers.
    #[arg(long, env = "DR_ACTOR_SUB", default_value = "drctl")]
    pub sub: String,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=MAX_TTL_SECS))]
    pub ttl: u64,
    #[command(flatten)]
    pub secret: SecretArgs,
}

/// What every command-publishing subcommand shares.
#[derive(clap::Args, Debug, Clone)]
pub struct CommandOpts {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// Actor token (JWT) sent with the command. Without it one is minted from
    /// DR_AUTH_JWT_SECRET with exactly the permissions the command needs.
    #[arg(long, env = "DR_ACTOR_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[command(flatten)]
    pub secret: SecretArgs,
    /// Subject of a minted token.
    #[arg(long, env = "DR_ACTOR_SUB", default_value = "drctl")]
    pub sub: String,
    /// Correlation id copied onto every event the command causes; default a fresh UUID.
    #[arg(long)]
    pub correlation_id: Option<String>,
    /// Seconds to wait for the command's outcome (exit 3 when they run out).
    #[arg(long, env = "DR_WAIT_SECS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub wait_secs: u64,
    /// Publish and return without waiting for events.
    #[arg(long)]
    pub no_wait: bool,
}

#[derive(clap::Args, Debug, Clone)]
pub struct BackupArgs {
    /// Organization (tenant) to back up: its id, a UUID.
    #[arg(long, value_name = "UUID")]
    pub org: TenantKey,
    /// Tier (named table set).
    #[arg(long, default_value = "full")]
    pub tier: String,
    /// Policy this backup runs for (free text, recorded).
    #[arg(long, default_value = "")]
    pub policy_id: String,
    /// Why (free text, recorded).
    #[arg(long, default_value = "")]
    pub reason: String,
    #[command(flatten)]
    pub opts: CommandOpts,
    /// With DR_DATABASE_URL, the job's progress is shown while waiting.
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModeArg {
    /// Restore into a fresh staging schema and run the integrity checks.
    Staging,
    /// Staging, then atomically replace the organization's live rows.
    Promote,
}

#[derive(clap::Args, Debug, Clone)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct RestoreArgs {
    #[command(subcommand)]
    pub action: Option<RestoreAction>,
    /// Organization (tenant) id, a UUID.
    #[arg(long, value_name = "UUID", required = true)]
    pub org: Option<TenantKey>,
    /// Backup record to restore.
    #[arg(long, value_name = "UUID", required = true)]
    pub backup: Option<BackupRecordId>,
    #[arg(long, value_enum, default_value_t = ModeArg::Staging)]
    pub mode: ModeArg,
    /// Name of a configured restore target; default the source database.
    #[arg(long)]
    pub target: Option<String>,
    #[command(flatten)]
    pub opts: CommandOpts,
    /// With DR_DATABASE_URL, the job's progress is shown while waiting.
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum RestoreAction {
    /// Drop the staging schema a completed STAGING restore kept, now (instead of when
    /// DR_STAGING_TTL runs out).
    Discard(DiscardArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct DiscardArgs {
    /// Organization (tenant) id, a UUID.
    #[arg(long, value_name = "UUID")]
    pub org: TenantKey,
    /// The STAGING restore's job id (restore_job_id of its restore_completed event).
    #[arg(long, value_name = "UUID")]
    pub job: RestoreJobId,
    #[command(flatten)]
    pub opts: CommandOpts,
}

#[derive(clap::Args, Debug, Clone)]
pub struct VerifyArgs {
    /// Organization (tenant) id, a UUID.
    #[arg(long, value_name = "UUID")]
    pub org: TenantKey,
    /// Backup record to verify.
    #[arg(long)]
    pub backup: BackupRecordId,
    #[command(flatten)]
    pub opts: CommandOpts,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum RetentionCmd {
    /// Every completed backup of the policy (default: of every policy, then the unmanaged
    /// ones) with keep/delete and why, computed as the sweep does. Deletes nothing.
    Plan(RetentionPlanArgs),
    /// Sweep one policy now and wait for the outcome (permission pf.backup.retention).
    Run(RetentionRunArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct RetentionPlanArgs {
    /// Organization (tenant) key.
    #[arg(long)]
    pub org: TenantKey,
    /// Policy name; default every policy of the organization.
    #[arg(long)]
    pub policy: Option<String>,
    /// `text` (one line per backup) or `json` (one JSON object per line: policy, policy_id,
    /// backup_record_id, snapshot_at, keep, reasons).
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(clap::Args, Debug, Clone)]
pub struct RetentionRunArgs {
    /// Organization (tenant) key.
    #[arg(long)]
    pub org: TenantKey,
    /// Policy name (looked up in DR_DATABASE_URL) or policy id.
    #[arg(long)]
    pub policy: String,
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub opts: CommandOpts,
}

#[derive(clap::Args, Debug, Clone)]
pub struct HoldArgs {
    /// Organization (tenant) key.
    #[arg(long)]
    pub org: TenantKey,
    /// Backup record to hold.
    #[arg(long)]
    pub record: BackupRecordId,
    /// Why (e.g. a ticket reference), at most 500 bytes; recorded and published.
    #[arg(long)]
    pub reason: String,
    #[command(flatten)]
    pub opts: CommandOpts,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ReleaseArgs {
    /// Organization (tenant) key.
    #[arg(long)]
    pub org: TenantKey,
    /// Backup record to release.
    #[arg(long)]
    pub record: BackupRecordId,
    #[command(flatten)]
    pub opts: CommandOpts,
}

#[derive(clap::Args, Debug, Clone)]
pub struct EventsArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// Only this organization's events (its id, a UUID).
    #[arg(long, value_name = "UUID")]
    pub org: Option<TenantKey>,
    /// Only events of this type.
    #[arg(long = "type", value_parser = PossibleValuesParser::new(EVENT_TYPES))]
    pub event_type: Option<String>,
    /// Stop after this many events.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
}

/// Metadata database connection.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct DbArgs {
    /// Metadata database holding the audit log.
    #[arg(long, env = "DR_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum AuditCmd {
    /// Check the hash chains; exit 1 at the first broken link.
    Verify {
        #[command(flatten)]
        db: DbArgs,
        /// Only this organization's chain (its id, a UUID).
        #[arg(long, value_name = "UUID")]
        org: Option<TenantKey>,
        /// `text` (one line) or `json` (one JSON object).
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Print one organization's stored events (JSON lines) in chain order.
    List {
        #[command(flatten)]
        db: DbArgs,
        /// Organization (tenant) id, a UUID.
        #[arg(long, value_name = "UUID")]
        org: TenantKey,
        /// Only events that occurred at or after this instant (RFC 3339).
        #[arg(long, value_parser = parse_rfc3339)]
        since: Option<DateTime<Utc>>,
        /// At most this many events.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(i64).range(1..=1_000_000))]
        limit: i64,
    },
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Text,
    Json,
}

/// An RFC 3339 instant. The error never echoes the input.
pub fn parse_rfc3339(s: &str) -> Result<DateTime<Utc>, &'static str> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| "must be an RFC 3339 timestamp, e.g. 2026-01-31T00:00:00Z")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_commands() {
        let org = TenantKey::from(drfleet_protocol::OrganizationId::new());
        let cli = Cli::try_parse_from([
            "drctl",
            "restore",
            "--org",
            &org.to_string(),
            "--backup",
            &BackupRecordId::new().to_string(),
            "--mode",
            "promote",
            "--no-wait",
            "--amqp-url",
            "amqp://x@h/v",
        ])
        .unwrap();
        match cli.command {
            Cmd::Restore(r) => {
                assert_eq!(r.org, Some(org.clone()));
                assert!(r.action.is_none());
                assert_eq!(r.mode, ModeArg::Promote);
                assert!(r.opts.no_wait);
                assert_eq!(r.opts.wait_secs, 600);
                assert_eq!(r.opts.broker.amqp_url, "amqp://x@h/v");
            }
            other => panic!("parsed {other:?}"),
        }
        // Any tenant key's text parses (its type is the worker's check); control characters
        // and the nil UUID do not.
        assert!(Cli::try_parse_from(["drctl", "backup", "--org", "42"]).is_ok());
        assert!(Cli::try_parse_from(["drctl", "backup", "--org", "a\nb"]).is_err());
        assert!(
            Cli::try_parse_from([
                "drctl",
                "backup",
                "--org",
                "00000000-0000-0000-0000-000000000000"
            ])
            .is_err()
        );
        let job = RestoreJobId::new();
        let cli = Cli::try_parse_from([
            "drctl",
            "restore",
            "discard",
            "--org",
            &org.to_string(),
            "--job",
            &job.to_string(),
        ])
        .unwrap();
        match cli.command {
            Cmd::Restore(RestoreArgs {
                action: Some(RestoreAction::Discard(d)),
                ..
            }) => {
                assert_eq!((d.org, d.job), (org.clone(), job));
            }
            other => panic!("parsed {other:?}"),
        }
        // A restore needs --backup; discard needs --job.
        assert!(Cli::try_parse_from(["drctl", "restore", "--org", &org.to_string()]).is_err());
        assert!(
            Cli::try_parse_from(["drctl", "restore", "discard", "--org", &org.to_string()])
                .is_err()
        );
        let cli = Cli::try_parse_from(["drctl", "audit", "verify", "--output", "json"]).unwrap();
        assert!(matches!(
            cli.command,
            Cmd::Audit(AuditCmd::Verify {
                output: OutputFormat::Json,
                ..
            })
        ));
        assert!(Cli::try_parse_from(["drctl", "events", "--type", "nope"]).is_err());
        let cli = Cli::try_parse_from([
            "drctl",
            "retention",
            "plan",
            "--org",
            "42",
            "--policy",
            "daily",
            "--output",
            "json",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Cmd::Retention(RetentionCmd::Plan(RetentionPlanArgs { output: OutputFormat::Json, ref policy, .. }))
                if policy.as_deref() == Some("daily")
        ));
        assert!(Cli::try_parse_from(["drctl", "retention", "run", "--org", "42"]).is_err());
        let rec = BackupRecordId::new().to_string();
        assert!(Cli::try_parse_from(["drctl", "hold", "--org", "42", "--record", &rec]).is_err());
        assert!(
            Cli::try_parse_from([
                "drctl", "hold", "--org", "42", "--record", &rec, "--reason", "LEGAL-1"
            ])
            .is_ok()
        );
        assert!(Cli::try_parse_from(["drctl", "release", "--org", "42", "--record", &rec]).is_ok());
        assert!(parse_rfc3339("2026-01-31T00:00:00+01:00").is_ok());
        assert!(parse_rfc3339("yesterday").is_err());
    }
}
