//! Settings: `DR_*` env vars, each also a flag. A missing or bad one fails at start with one
//! line naming it (exit 2); secrets are never printed.

use std::net::SocketAddr;
use std::time::Duration;

use drfleet_infra::auth::TokenMinter;
use drfleet_infra::config::{
    BrokerArgs, ConfigError, LogArgs, LogFormat, Secret, amqp_url, postgres_url, socket_addr,
};

#[derive(clap::Parser, Debug, Clone)]
#[command(name = "drfleet-scheduler", version, about)]
pub struct SchedulerCli {
    #[command(flatten)]
    pub broker: BrokerArgs,

    /// Metadata database (policies, records, jobs, alerts).
    #[arg(long, env = "DR_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// HS256 secret the workers verify actor tokens with (at least 32 bytes); the scheduler
    /// mints its own short-lived tokens with it.
    #[arg(long, env = "DR_AUTH_JWT_SECRET", hide_env_values = true)]
    pub auth_jwt_secret: Option<String>,

    /// Instead of the secret: a PEM private key (RSA or EC P-256) matching the workers'
    /// DR_AUTH_JWT_PUBLIC_KEY; tokens are then RS256/ES256.
    #[arg(long, env = "DR_AUTH_JWT_PRIVATE_KEY", hide_env_values = true)]
    pub auth_jwt_private_key: Option<String>,

    /// Seconds between two evaluations of what is due.
    #[arg(long, env = "DR_SCHEDULER_TICK_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub tick_secs: u64,

    /// Scheduled jobs of each kind (backups, verifies, drills) queued or running at once,
    /// fleet-wide; due slots wait beyond it.
    #[arg(long, env = "DR_SCHEDULER_MAX_IN_FLIGHT", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=100000))]
    pub max_in_flight: u32,

    /// Seconds between two retention sweeps of each enabled policy (one RetentionCommand per
    /// policy per interval boundary).
    #[arg(long, env = "DR_RETENTION_INTERVAL_SECS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(60..=604800))]
    pub retention_interval_secs: u64,

    /// Health, readiness and metrics listener (port 0: a free port, logged at start).
    #[arg(long, env = "DR_HTTP_ADDR", default_value = "127.0.0.1:0")]
    pub http_addr: String,

    /// Name of this scheduler in logs; default host-pid.
    #[arg(long, env = "DR_SCHEDULER_ID")]
    pub scheduler_id: Option<String>,

    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub amqp_url: String,
    pub database_url: Secret<String>,
    pub minter: TokenMinter,
    pub tick: Duration,
    pub max_in_flight: u32,
    pub retention_interval: Duration,
    pub http_addr: SocketAddr,
    pub scheduler_id: String,
    pub log_format: LogFormat,
    /// Lifetime of a minted token: long enough to wait in the outbox and the queue (the
    /// in-flight cap keeps queues short), short enough to be useless if leaked.
    pub token_ttl: Duration,
    /// A published command whose job never appeared (lost, or refused before any record)
    /// stops counting against the in-flight cap after this long.
    pub settle_after: Duration,
}

impl SchedulerConfig {
    pub fn from_cli(cli: SchedulerCli) -> Result<Self, ConfigError> {
        let database_url = match cli.database_url.as_deref() {
            None | Some("") => return Err(ConfigError::new("DR_DATABASE_URL", "is required")),
            Some(u) => postgres_url("DR_DATABASE_URL", u)?,
        };
        let minter = match (
            cli.auth_jwt_private_key.as_deref(),
            cli.auth_jwt_secret.as_deref(),
        ) {
            (Some(pem), _) if !pem.is_empty() => {
                TokenMinter::from_private_pem(pem, "DR_AUTH_JWT_PRIVATE_KEY")?
            }
            (_, Some(secret)) if !secret.is_empty() => TokenMinter::from_secret(secret)?,
            _ => {
                return Err(ConfigError::new(
                    "DR_AUTH_JWT_SECRET",
                    "is required (or DR_AUTH_JWT_PRIVATE_KEY)",
                ));
            }
        };
        Ok(Self {
            amqp_url: amqp_url("DR_AMQP_URL", &cli.broker.amqp_url)?,
            database_url,
            minter,
            tick: Duration::from_secs(cli.tick_secs),
            max_in_flight: cli.max_in_flight,
            retention_interval: Duration::from_secs(cli.retention_interval_secs),
            http_addr: socket_addr("DR_HTTP_ADDR", &cli.http_addr)?,
            scheduler_id: cli.scheduler_id.unwrap_or_else(|| {
                let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "scheduler".into());
                format!("{host}-{}", std::process::id())
            }),
            log_format: cli.log.format()?,
            token_ttl: Duration::from_secs(20 * 60),
            settle_after: Duration::from_secs(6 * 3600),
        })
    }
}
