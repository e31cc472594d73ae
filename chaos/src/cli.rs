//! Flags (each also a `DR_CHAOS_*` env var) and the run plan they make.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::faults::FaultKind;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "drfleet-chaos",
    about = "Runs real drfleet workers and schedulers under a workload while injecting faults, then audits lost, duplicated and leaked work"
)]
pub struct Cli {
    /// Seed of every random choice (tenants, workload, fault moments); printed by every run.
    /// Default: a random one.
    #[arg(long, env = "DR_CHAOS_SEED")]
    pub seed: Option<u64>,

    /// How long the workload and the faults run (`90s`, `5m`, `2h`).
    #[arg(long, env = "DR_CHAOS_DURATION", default_value = "150s")]
    pub duration: String,

    /// A long run by hand: sets the duration (e.g. `--soak 2h`), and more tenants and data.
    #[arg(long, env = "DR_CHAOS_SOAK", conflicts_with = "duration")]
    pub soak: Option<String>,

    /// Where drfleet-worker and drfleet-scheduler are (`cargo build --release -p
    /// drfleet-workers -p drfleet-scheduler`; target/debug works for quick iterations).
    #[arg(long, env = "DR_CHAOS_BIN_DIR", default_value = "target/release")]
    pub bin_dir: PathBuf,

    /// Tenants (20 or more).
    #[arg(long, env = "DR_CHAOS_TENANTS", default_value_t = 24, value_parser = clap::value_parser!(u32).range(20..=1000))]
    pub tenants: u32,

    /// Worker processes of the backup, restore and drill roles; the light roles (verify,
    /// policy, retention and audit, together in each process) get one less (at least one).
    #[arg(long, env = "DR_CHAOS_WORKERS_PER_ROLE", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=8))]
    pub workers_per_role: u32,

    /// Scheduler processes.
    #[arg(long, env = "DR_CHAOS_SCHEDULERS", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=4))]
    pub schedulers: u32,

    /// Fault kinds to inject (comma-separated); default all except broker-restart.
    #[arg(long, env = "DR_CHAOS_FAULTS", value_delimiter = ',')]
    pub faults: Vec<FaultKind>,

    /// Milliseconds between two faults: a random pause in this range (`LO..HI`).
    #[arg(long, env = "DR_CHAOS_FAULT_GAP_MS", default_value = "500..1500")]
    pub fault_gap_ms: String,

    /// Also stop and start the whole RabbitMQ application (`rabbitmqctl stop_app/start_app`).
    /// It hurts every user of the broker: run this profile alone.
    #[arg(long, env = "DR_CHAOS_BROKER_RESTART")]
    pub broker_restart: bool,

    /// How long to wait after the workload for everything to finish before auditing.
    #[arg(long, env = "DR_CHAOS_SETTLE_TIMEOUT", default_value = "240s")]
    pub settle_timeout: String,

    /// How long the workload waits for one command's outcome before moving on (the audit
    /// then counts it lost if it never finishes).
    #[arg(long, env = "DR_CHAOS_WAIT_TIMEOUT", default_value = "120s")]
    pub wait_timeout: String,

    /// JSON report path (default `<run dir>/report.json`).
    #[arg(long, env = "DR_CHAOS_REPORT")]
    pub report: Option<PathBuf>,

    /// Directory for the run's logs and report (default `target/chaos/<run id>`).
    #[arg(long, env = "DR_CHAOS_RUN_DIR")]
    pub run_dir: Option<PathBuf>,

    /// Keep the run's databases, vhost and logs afterwards (for investigation).
    #[arg(long, env = "DR_CHAOS_KEEP")]
    pub keep: bool,

    /// PostgreSQL admin URL (creates and drops the run's databases).
    #[arg(
        long,
        env = "DR_CHAOS_PG_ADMIN_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub pg_admin_url: String,

    /// RabbitMQ base URL without vhost; the run adds its own vhost.
    #[arg(
        long,
        env = "DR_CHAOS_AMQP_BASE",
        default_value = "amqp://guest:guest@127.0.0.1:5672"
    )]
    pub amqp_base: String,

    #[arg(long, env = "DR_CHAOS_RABBITMQCTL", default_value = "rabbitmqctl")]
    pub rabbitmqctl: String,

    /// moto's S3 server (`scripts/s3-test-server.sh` installs it in .venv-moto).
    #[arg(
        long,
        env = "DR_CHAOS_MOTO_SERVER",
        default_value = ".venv-moto/bin/moto_server"
    )]
    pub moto_server: PathBuf,

    /// TEST ONLY, proves the suite can fail: runs the workers with the deliberately broken
    /// intake (`DRFLEET_FAULT_ACK_BEFORE_DURABLE=N`: ack before the job is durable, drop one
    /// delivery in N). Needs binaries built with the `fault-injection` feature (the debug
    /// binaries `cargo test` builds have it). The run must then report lost > 0.
    #[arg(long, env = "DR_CHAOS_BROKEN_ACK_ONE_IN")]
    pub broken_ack_one_in: Option<u32>,
}

/// Parse `90s`, `15m`, `2h`, `1d` (or plain seconds).
pub fn duration(name: &str, s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 'h')) => (&s[..i], 3600),
        Some((i, 'd')) => (&s[..i], 86400),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .map(|n| Duration::from_secs(n * mult))
        .ok_or_else(|| format!("{name}: expected a duration like 90s, 15m or 2h, got {s:?}"))
}

/// The run plan: flags checked and turned into numbers.
#[derive(Debug, Clone)]
pub struct Plan {
    pub seed: u64,
    pub duration: Duration,
    pub soak: bool,
    pub settle_timeout: Duration,
    pub wait_timeout: Duration,
    pub faults: Vec<FaultKind>,
    pub fault_gap: (u64, u64),
}

impl Plan {
    pub fn from_cli(cli: &Cli) -> Result<Self, String> {
        let (duration, soak) = match &cli.soak {
            Some(s) => (self::duration("--soak", s)?, true),
            None => (self::duration("--duration", &cli.duration)?, false),
        };
        let settle_timeout = self::duration("--settle-timeout", &cli.settle_timeout)?;
        let wait_timeout = self::duration("--wait-timeout", &cli.wait_timeout)?;
        let (lo, hi) = cli
            .fault_gap_ms
            .split_once("..")
            .and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)))
            .filter(|(a, b): &(u64, u64)| a <= b && *b > 0)
            .ok_or_else(|| {
                format!(
                    "--fault-gap-ms: expected LO..HI milliseconds, got {:?}",
                    cli.fault_gap_ms
                )
            })?;
        let mut faults = if cli.faults.is_empty() {
            FaultKind::ALL
                .iter()
                .copied()
                .filter(|k| *k != FaultKind::BrokerRestart)
                .collect()
        } else {
            cli.faults.clone()
        };
        if cli.broker_restart && !faults.contains(&FaultKind::BrokerRestart) {
            faults.push(FaultKind::BrokerRestart);
        }
        if faults.contains(&FaultKind::BrokerRestart) && !cli.broker_restart {
            return Err(
                "broker-restart faults need --broker-restart (it stops the whole broker)".into(),
            );
        }
        let seed = cli.seed.unwrap_or_else(|| {
            let u = uuid::Uuid::new_v4().as_u128();
            (u as u64) ^ ((u >> 64) as u64)
        });
        Ok(Self {
            seed,
            duration,
            soak,
            settle_timeout,
            wait_timeout,
            faults,
            fault_gap: (lo, hi),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration("x", "90s").unwrap(), Duration::from_secs(90));
        assert_eq!(duration("x", "2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(duration("x", "15").unwrap(), Duration::from_secs(15));
        assert!(duration("x", "0s").is_err());
        assert!(duration("x", "soon").is_err());
    }

    #[test]
    fn broker_restart_needs_its_flag() {
        let cli = Cli::try_parse_from(["c", "--faults", "broker-restart"]).unwrap();
        assert!(Plan::from_cli(&cli).is_err());
        let cli = Cli::try_parse_from(["c", "--broker-restart", "--seed", "5"]).unwrap();
        let plan = Plan::from_cli(&cli).unwrap();
        assert!(plan.faults.contains(&FaultKind::BrokerRestart));
        assert_eq!(plan.seed, 5);
        let cli = Cli::try_parse_from(["c"]).unwrap();
        assert!(
            !Plan::from_cli(&cli)
                .unwrap()
                .faults
                .contains(&FaultKind::BrokerRestart)
        );
    }
}
