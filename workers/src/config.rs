//! Worker settings: clap flags / `DR_*` env vars ([`WorkerCli`]) validated into [`WorkerConfig`].

use std::net::SocketAddr;
use std::time::Duration;

use drfleet_infra::auth::TokenVerifier;
use drfleet_infra::config::{
    self as cfg, BrokerArgs, ConfigError, LogArgs, LogFormat, ObjectStoreLocation, Secret,
};

/// What a worker process does. Production runs one role per process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Backup,
    Restore,
    Drill,
    Verify,
    Policy,
    Retention,
    Keys,
    Audit,
}

impl Role {
    pub const ALL: [Role; 8] = [
        Role::Backup,
        Role::Restore,
        Role::Drill,
        Role::Verify,
        Role::Policy,
        Role::Retention,
        Role::Keys,
        Role::Audit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Backup => "backup",
            Role::Restore => "restore",
            Role::Drill => "drill",
            Role::Verify => "verify",
            Role::Policy => "policy",
            Role::Retention => "retention",
            Role::Keys => "keys",
            Role::Audit => "audit",
        }
    }

    /// Roles that touch artifacts or keys (retention and shredding delete artifacts; the keys
    /// role re-wraps tenant keys), and so get the artifact store and the master keys.
    pub fn needs_master_key(self) -> bool {
        matches!(
            self,
            Role::Backup
                | Role::Restore
                | Role::Drill
                | Role::Verify
                | Role::Retention
                | Role::Keys
        )
    }

    /// Roles that consume commands (and so verify tokens).
    pub fn command_kind(self) -> Option<drfleet_protocol::topology::CommandKind> {
        use drfleet_protocol::topology::CommandKind as K;
        match self {
            Role::Backup => Some(K::Backup),
            Role::Restore => Some(K::Restore),
            Role::Drill => Some(K::Drill),
            Role::Verify => Some(K::Verify),
            Role::Policy => Some(K::Policy),
            Role::Retention => Some(K::Retention),
            Role::Keys => Some(K::Keys),
            Role::Audit => None,
        }
    }
}

/// `drfleet-worker`: consumes drfleet commands (or events, for the audit role).
#[derive(clap::Parser, Debug, Clone)]
#[command(name = "drfleet-worker", version, about)]
pub struct WorkerCli {
    /// Role(s) to run: backup, restore, drill, verify, policy, retention, keys, audit, or all
    /// (development: every role this build has).
    /// Repeat the flag, or comma-separate in DR_ROLE.
    #[arg(long = "role", env = "DR_ROLE", value_delimiter = ',', required = true)]
    pub roles: Vec<String>,

    #[command(flatten)]
    pub broker: BrokerArgs,

    /// Metadata database (records, jobs, audit log).
    #[arg(long, env = "DR_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Tenant data database; default DR_DATABASE_URL.
    #[arg(long, env = "DR_SOURCE_DATABASE_URL", hide_env_values = true)]
    pub source_database_url: Option<String>,
    /// Named databases a restore (`RestoreCommand.target`) or a drill may write instead of
    /// the source: `name=postgres://…,name2=postgres://…`; names `[a-z0-9_-]{1,32}`. Never
    /// echoed.
    #[arg(
        long = "restore-targets",
        env = "DR_RESTORE_TARGETS",
        hide_env_values = true,
        default_value = ""
    )]
    pub restore_targets: String,

    /// Artifact store: file://<path> (default ./var/objects) or s3://bucket/prefix
    /// (credentials and endpoint from AWS_* variables, e.g. AWS_ENDPOINT_URL).
    #[arg(long, env = "DR_OBJECT_STORE_URL", default_value = "")]
    pub object_store_url: String,

    /// Master key wrapping artifact data keys: base64 of 32 bytes.
    #[arg(long, env = "DR_MASTER_KEY", hide_env_values = true)]
    pub master_key: Option<String>,

    /// Id recorded with artifacts wrapped by DR_MASTER_KEY.
    #[arg(long, env = "DR_MASTER_KEY_ID")]
    pub master_key_id: Option<String>,

    /// Older master keys still accepted for unwrapping: id:base64,id:base64.
    #[arg(
        long,
        env = "DR_PREVIOUS_MASTER_KEYS",
        hide_env_values = true,
        default_value = ""
    )]
    pub previous_master_keys: String,

    /// HS256 secret for actor tokens (at least 32 bytes).
    #[arg(long, env = "DR_AUTH_JWT_SECRET", hide_env_values = true)]
    pub auth_jwt_secret: Option<String>,

    /// PEM public key (RSA or EC P-256) for RS256/ES256 actor tokens.
    #[arg(long, env = "DR_AUTH_JWT_PUBLIC_KEY", hide_env_values = true)]
    pub auth_jwt_public_key: Option<String>,

    /// Tenant column. Tables without it belong to a tenant through their foreign keys
    /// (see docs/architecture.md, "Tenant membership").
    #[arg(long, env = "DR_TENANT_COLUMN", default_value = "organization_id")]
    pub tenant_column: String,

    /// Schema holding the tenant tables.
    #[arg(long, env = "DR_TENANT_SCHEMA", default_value = "public")]
    pub tenant_schema: String,

    /// The table whose primary key is the tenant id, as schema.table(column), e.g.
    /// public.organizations(id); a table of DR_TENANT_SCHEMA. Its row is backed up and
    /// restored with the tenant's rows.
    #[arg(long, env = "DR_TENANT_ROOT")]
    pub tenant_root: Option<String>,

    /// Health, readiness and metrics listener. The default port 0 picks a free port (logged
    /// at start), so processes on one host never clash; set a fixed one for probes.
    #[arg(long, env = "DR_HTTP_ADDR", default_value = "127.0.0.1:0")]
    pub http_addr: String,

    #[command(flatten)]
    pub log: LogArgs,

    /// Jobs each role runs at once in this process.
    #[arg(long, env = "DR_JOB_CONCURRENCY", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub job_concurrency: u16,

    /// Most connections this process holds to the metadata database (its pool). Lower it
    /// when many processes share one PostgreSQL (e.g. its default 100 connections).
    #[arg(long, env = "DR_DATABASE_POOL_SIZE", default_value_t = 16, value_parser = clap::value_parser!(u32).range(4..=256))]
    pub database_pool_size: u32,

    /// Most connections this process holds to the source database, and to each restore
    /// target (a restore's or drill's checks read in parallel up to this many).
    #[arg(long, env = "DR_TENANT_POOL_SIZE", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub tenant_pool_size: u32,

    /// COPY text (MiB) per loading transaction of a large table in a restore or a drill: each
    /// committed segment is read back and checked while the next one loads.
    #[arg(long, env = "DR_RESTORE_SEGMENT_MIB", default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub restore_segment_mib: u32,

    /// How long a completed STAGING restore keeps its schema unless promoted or discarded:
    /// a duration such as 90s, 15m, 24h or 7d. The restore role's sweep drops expired ones.
    #[arg(long, env = "DR_STAGING_TTL", default_value = "24h")]
    pub staging_ttl: String,

    /// Drill role: the restore target (a name of DR_RESTORE_TARGETS) a drill restores into
    /// when the command names none. Never the source database. Unset: drills must name a
    /// target, else they are rejected.
    #[arg(long, env = "DR_DRILL_TARGET")]
    pub drill_target: Option<String>,

    /// Drill role: statement timeout of each drill assertion (a duration such as 30s or 5m).
    #[arg(long, env = "DR_DRILL_ASSERTION_TIMEOUT", default_value = "30s")]
    pub drill_assertion_timeout: String,

    /// Retention: a failed backup's leftover objects, and objects no backup record references
    /// (orphans), are removed by a sweep once older than this (a duration such as 12h or 7d).
    #[arg(long, env = "DR_RETENTION_ORPHAN_GRACE", default_value = "7d")]
    pub retention_orphan_grace: String,

    /// Seconds a job lease lasts without a heartbeat before another worker may take the job.
    #[arg(long, env = "DR_JOB_LEASE_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(3..=3600))]
    pub job_lease_secs: u64,

    /// Seconds a running job may go without progress (rows, bytes, a finished phase) before
    /// it is ended and retried or failed, however alive its heartbeat keeps its lease.
    #[arg(long, env = "DR_JOB_STALL_SECS", default_value_t = 1800, value_parser = clap::value_parser!(u64).range(2..=86400))]
    pub job_stall_secs: u64,

    /// Seconds shutdown waits for in-flight jobs before handing them back.
    #[arg(long, env = "DR_SHUTDOWN_GRACE_SECS", default_value_t = 20, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub shutdown_grace_secs: u64,

    /// Name of this worker in leases and logs; default host-pid.
    #[arg(long, env = "DR_WORKER_ID")]
    pub worker_id: Option<String>,
}

/// Master keys, validated.
#[derive(Debug, Clone)]
pub struct MasterKeys {
    pub current_id: String,
    pub current: Secret<[u8; 32]>,
    pub previous: Vec<drfleet_infra::config::NamedKey>,
}

/// Validated settings of one worker process.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub roles: Vec<Role>,
    pub amqp_url: String,
    pub database_url: Secret<String>,
    pub source_database_url: Secret<String>,
    /// DR_RESTORE_TARGETS: name → database URL, by name.
    pub restore_targets: std::collections::BTreeMap<String, Secret<String>>,
    pub object_store: ObjectStoreLocation,
    /// Present whenever a role that touches artifacts runs.
    pub master_keys: Option<MasterKeys>,
    /// Present whenever a command role runs.
    pub token_verifier: Option<TokenVerifier>,
    pub tenant_column: String,
    pub tenant_schema: String,
    /// DR_TENANT_ROOT.
    pub tenant_root: Option<crate::engine::membership::TenantRoot>,
    pub http_addr: SocketAddr,
    pub log_format: LogFormat,
    pub job_concurrency: usize,
    /// DR_DATABASE_POOL_SIZE.
    pub database_pool_size: u32,
    /// DR_TENANT_POOL_SIZE.
    pub tenant_pool_size: u32,
    pub job_lease: Duration,
    /// DR_JOB_STALL_SECS.
    pub job_stall: Duration,
    /// Bytes of COPY text per restore loading transaction (DR_RESTORE_SEGMENT_MIB).
    pub restore_segment_bytes: usize,
    /// Lifetime of a kept STAGING schema (DR_STAGING_TTL).
    pub staging_ttl: Duration,
    /// DR_RETENTION_ORPHAN_GRACE.
    pub retention_orphan_grace: Duration,
    /// DR_DRILL_TARGET and DR_DRILL_ASSERTION_TIMEOUT.
    pub drill: DrillSettings,
    pub shutdown_grace: Duration,
    pub worker_id: String,
    /// Poll interval of job runners and the outbox relay when no notification arrives.
    pub poll_interval: Duration,
}

impl WorkerConfig {
    /// Validate every setting; the first bad one is returned.
    pub fn from_cli(cli: WorkerCli) -> Result<Self, ConfigError> {
        let mut roles = Vec::new();
        for r in &cli.roles {
            match r.trim() {
                "all" => roles.extend(Role::ALL),
                s => {
                    let role = Role::ALL.into_iter().find(|x| x.as_str() == s).ok_or_else(
                        || {
                            ConfigError::new(
                                "DR_ROLE",
                                "roles are backup, restore, drill, verify, policy, retention, audit or all",
                            )
                        },
                    )?;
                    roles.push(role);
                }
            }
        }
        roles.sort();
        roles.dedup();
        if roles.is_empty() {
            return Err(ConfigError::new("DR_ROLE", "is required"));
        }
        let commands = roles.iter().any(|r| r.command_kind().is_some());

        let database_url = cfg::postgres_url(
            "DR_DATABASE_URL",
            cli.database_url
                .as_deref()
                .ok_or_else(|| ConfigError::new("DR_DATABASE_URL", "is required"))?,
        )?;
        let source_database_url = match cli.source_database_url.as_deref() {
            Some(u) => cfg::postgres_url("DR_SOURCE_DATABASE_URL", u)?,
            None => database_url.clone(),
        };
        let master_keys = if roles.iter().any(|r| r.needs_master_key()) {
            let key = cli.master_key.as_deref().ok_or_else(|| {
                ConfigError::new(
                    "DR_MASTER_KEY",
                    "is required for the backup, restore, drill and verify roles",
                )
            })?;
            let id = cli.master_key_id.as_deref().ok_or_else(|| {
                ConfigError::new("DR_MASTER_KEY_ID", "is required with DR_MASTER_KEY")
            })?;
            let previous =
                cfg::previous_keys("DR_PREVIOUS_MASTER_KEYS", &cli.previous_master_keys)?;
            let current_id = cfg::key_id("DR_MASTER_KEY_ID", id)?;
            if previous.iter().any(|(pid, _)| *pid == current_id) {
                return Err(ConfigError::new(
                    "DR_PREVIOUS_MASTER_KEYS",
                    "must not repeat DR_MASTER_KEY_ID",
                ));
            }
            Some(MasterKeys {
                current: cfg::key32("DR_MASTER_KEY", key)?,
                current_id,
                previous,
            })
        } else {
            None
        };
        let token_verifier = if commands {
            let secret = cli.auth_jwt_secret.map(Secret::new);
            Some(TokenVerifier::new(
                secret.as_ref(),
                cli.auth_jwt_public_key.as_deref(),
            )?)
        } else {
            None
        };
        let worker_id = match cli.worker_id {
            Some(id) => cfg::key_id("DR_WORKER_ID", &id)?,
            None => {
                let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
                let host: String = host
                    .trim()
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .take(40)
                    .collect();
                format!(
                    "{}-{}",
                    if host.is_empty() { "worker" } else { &host },
                    std::process::id()
                )
            }
        };
        let tenant_schema = cfg::sql_ident("DR_TENANT_SCHEMA", &cli.tenant_schema)?;
        let tenant_root = tenant_root(cli.tenant_root.as_deref(), &tenant_schema)?;
        let restore_targets = restore_targets(&cli.restore_targets)?;
        let drill = DrillSettings {
            target: drill_target(cli.drill_target.as_deref(), &restore_targets)?,
            sources: same_database_targets(&restore_targets, &source_database_url),
            assertion_timeout: human_duration(
                "DR_DRILL_ASSERTION_TIMEOUT",
                &cli.drill_assertion_timeout,
            )?,
        };
        Ok(Self {
            roles,
            amqp_url: cfg::amqp_url("DR_AMQP_URL", &cli.broker.amqp_url)?,
            database_url,
            source_database_url,
            drill,
            restore_targets,
            object_store: cfg::object_store_url("DR_OBJECT_STORE_URL", &cli.object_store_url)?,
            master_keys,
            token_verifier,
            tenant_column: cfg::sql_ident("DR_TENANT_COLUMN", &cli.tenant_column)?,
            tenant_schema,
            tenant_root,
            http_addr: cfg::socket_addr("DR_HTTP_ADDR", &cli.http_addr)?,
            log_format: cli.log.format()?,
            job_concurrency: cli.job_concurrency as usize,
            database_pool_size: cli.database_pool_size,
            tenant_pool_size: cli.tenant_pool_size,
            job_lease: Duration::from_secs(cli.job_lease_secs),
            job_stall: Duration::from_secs(cli.job_stall_secs),
            restore_segment_bytes: (cli.restore_segment_mib as usize) << 20,
            staging_ttl: human_duration("DR_STAGING_TTL", &cli.staging_ttl)?,
            retention_orphan_grace: human_duration(
                "DR_RETENTION_ORPHAN_GRACE",
                &cli.retention_orphan_grace,
            )?,
            shutdown_grace: Duration::from_secs(cli.shutdown_grace_secs),
            worker_id,
            poll_interval: Duration::from_secs(1),
        })
    }
}

/// What the drill role needs beyond the shared settings.
#[derive(Debug, Clone, Default)]
pub struct DrillSettings {
    /// DR_DRILL_TARGET: the default restore target of drills.
    pub target: Option<String>,
    /// Names of DR_RESTORE_TARGETS that point at the source database: a drill never writes
    /// there, whatever target it names.
    pub sources: std::collections::BTreeSet<String>,
    /// DR_DRILL_ASSERTION_TIMEOUT.
    pub assertion_timeout: Duration,
}

/// DR_DRILL_TARGET, validated: a name of DR_RESTORE_TARGETS.
pub fn drill_target(
    value: Option<&str>,
    targets: &std::collections::BTreeMap<String, Secret<String>>,
) -> Result<Option<String>, ConfigError> {
    let Some(name) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    if !targets.contains_key(name) {
        return Err(ConfigError::new(
            "DR_DRILL_TARGET",
            "must name one of DR_RESTORE_TARGETS",
        ));
    }
    Ok(Some(name.to_string()))
}

/// The targets whose URL names the source's database (same host, port and database): a
/// drill refuses them, so the source is never written by a drill.
pub fn same_database_targets(
    targets: &std::collections::BTreeMap<String, Secret<String>>,
    source: &Secret<String>,
) -> std::collections::BTreeSet<String> {
    use sqlx::postgres::PgConnectOptions;
    let key = |url: &str| {
        url.parse::<PgConnectOptions>().ok().map(|o| {
            (
                o.get_host().to_string(),
                o.get_port(),
                o.get_database().map(str::to_string),
            )
        })
    };
    let source = key(source.expose());
    targets
        .iter()
        .filter(|(_, url)| source.is_none() || key(url.expose()) == source)
        .map(|(name, _)| name.clone())
        .collect()
}

/// DR_TENANT_ROOT, validated: `schema.table(column)` of the tenant schema.
pub fn tenant_root(
    value: Option<&str>,
    tenant_schema: &str,
) -> Result<Option<crate::engine::membership::TenantRoot>, ConfigError> {
    let Some(v) = value.filter(|v| !v.trim().is_empty()) else {
        return Ok(None);
    };
    let root = crate::engine::membership::TenantRoot::parse(v)
        .map_err(|e| ConfigError::new("DR_TENANT_ROOT", e))?;
    if root.schema != tenant_schema {
        return Err(ConfigError::new(
            "DR_TENANT_ROOT",
            "must be a table of DR_TENANT_SCHEMA",
        ));
    }
    Ok(Some(root))
}

/// DR_RESTORE_TARGETS: `name=postgres://…` entries separated by commas (a comma not followed
/// by `name=` belongs to the URL, as in multi-host URLs). Errors name the entry's position,
/// never a name or URL: a malformed entry may be a password.
pub fn restore_targets(
    value: &str,
) -> Result<std::collections::BTreeMap<String, Secret<String>>, ConfigError> {
    const SETTING: &str = "DR_RESTORE_TARGETS";
    let mut out = std::collections::BTreeMap::new();
    let value = value.trim();
    if value.is_empty() {
        return Ok(out);
    }
    // Entry starts: the beginning, and every comma followed by a valid `name=`.
    let mut starts = vec![0];
    for (i, _) in value.match_indices(',') {
        let rest = &value[i + 1..];
        if rest
            .split_once('=')
            .is_some_and(|(n, _)| valid_target_name(n.trim()))
        {
            starts.push(i + 1);
        }
    }
    starts.push(value.len() + 1);
    for (n, w) in starts.windows(2).enumerate() {
        let entry = value[w[0]..w[1] - 1].trim();
        let bad = |problem: &str| ConfigError::new(SETTING, format!("entry {}: {problem}", n + 1));
        let Some((name, url)) = entry.split_once('=') else {
            return Err(bad("must be name=postgres://…"));
        };
        let name = name.trim();
        if !valid_target_name(name) {
            return Err(bad("the name must be 1 to 32 of a-z, 0-9, _ and -"));
        }
        let url = cfg::postgres_url(SETTING, url.trim())
            .map_err(|e| bad(e.to_string().rsplit(": ").next().unwrap_or("is invalid")))?;
        if out.insert(name.to_string(), url).is_some() {
            return Err(bad("repeats a name"));
        }
    }
    Ok(out)
}

/// `[a-z0-9_-]{1,32}`: a restore target's name.
pub fn valid_target_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Longest accepted DR_STAGING_TTL: a year.
const MAX_HUMAN_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

/// A positive whole number with a unit: `90s`, `15m`, `24h`, `7d`.
pub fn human_duration(setting: &'static str, s: &str) -> Result<Duration, ConfigError> {
    let bad = || ConfigError::new(setting, "must be a duration such as 90s, 15m, 24h or 7d");
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    let d = Duration::from_secs(n.checked_mul(unit_secs).ok_or_else(bad)?);
    if d.is_zero() || d > MAX_HUMAN_DURATION {
        return Err(ConfigError::new(
            setting,
            "must be between 1s and 366d, e.g. 90s, 15m, 24h or 7d",
        ));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations() {
        let d = |s| human_duration("DR_STAGING_TTL", s);
        assert_eq!(d("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(d("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(d("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(d("7d").unwrap(), Duration::from_secs(7 * 86_400));
        for bad in [
            "",
            "24",
            "h",
            "1.5h",
            "-1h",
            "0s",
            "10w",
            "24 h",
            "400d",
            "99999999999999999999d",
        ] {
            let e = d(bad).unwrap_err();
            assert_eq!(e.setting, "DR_STAGING_TTL", "{bad}");
        }
    }

    #[test]
    fn restore_targets_parse_and_never_echo() {
        let t = restore_targets(
            " scratch=postgres://u:pw@h/db , dr-site=postgresql://a,b:5433/x?sslmode=disable",
        )
        .unwrap();
        assert_eq!(t.keys().collect::<Vec<_>>(), ["dr-site", "scratch"]);
        assert_eq!(t["scratch"].expose(), "postgres://u:pw@h/db");
        // A comma not followed by `name=` belongs to the URL (multi-host).
        assert_eq!(
            t["dr-site"].expose(),
            "postgresql://a,b:5433/x?sslmode=disable"
        );
        assert!(restore_targets("").unwrap().is_empty());
        for bad in [
            "postgres://u:SECRETPW@h/db",
            "Scratch=postgres://u:SECRETPW@h/db",
            "a=postgres://u:SECRETPW@h/db,a=postgres://u:SECRETPW@h/db2",
            "a=mysql://u:SECRETPW@h/db",
            "=postgres://u:SECRETPW@h/db",
            "x=postgres://u:SECRETPW@h:notaport/db",
            "abcdefghijabcdefghijabcdefghijabc=postgres://u:SECRETPW@h/db",
        ] {
            let e = restore_targets(bad).unwrap_err();
            assert_eq!(e.setting, "DR_RESTORE_TARGETS", "{bad}");
            let line = e.to_string();
            assert!(!line.contains("SECRETPW") && !line.contains("@h"), "{line}");
        }
        assert!(valid_target_name("a_b-9") && !valid_target_name("") && !valid_target_name("a.b"));
    }

    #[test]
    fn pool_sizes_default_and_bounds() {
        use clap::Parser as _;
        let parse = |extra: &[&str]| {
            let mut args = vec!["drfleet-worker", "--role", "backup"];
            args.extend_from_slice(extra);
            WorkerCli::try_parse_from(args)
        };
        let cli = parse(&[]).unwrap();
        assert_eq!((cli.database_pool_size, cli.tenant_pool_size), (16, 8));
        let cli = parse(&["--database-pool-size", "4", "--tenant-pool-size", "1"]).unwrap();
        assert_eq!((cli.database_pool_size, cli.tenant_pool_size), (4, 1));
        // LISTEN keeps one metadata connection: fewer than 4 would starve the rest.
        assert!(parse(&["--database-pool-size", "3"]).is_err());
        assert!(parse(&["--tenant-pool-size", "0"]).is_err());
    }
}
