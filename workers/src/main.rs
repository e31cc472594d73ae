//! `drfleet-worker`: parse settings, start telemetry, run until SIGTERM/SIGINT.
//!
//! Exit codes: 0 after SIGTERM/SIGINT (also during start-up retries); 2 for bad
//! configuration or a permanent start-up error (one line on stderr naming the cause).

use drfleet_infra::config::{exit_config_error, parse_cli};
use drfleet_workers::config::{WorkerCli, WorkerConfig};
use tokio_util::sync::CancellationToken;

const PROGRAM: &str = "drfleet-worker";

#[tokio::main]
async fn main() {
    let cli: WorkerCli = parse_cli(PROGRAM);
    let config = WorkerConfig::from_cli(cli).unwrap_or_else(|e| exit_config_error(PROGRAM, &e));
    drfleet_infra::telemetry::init(config.log_format);

    let shutdown = CancellationToken::new();
    drfleet_runtime::process::cancel_on_signals(shutdown.clone());
    if let Err(e) = drfleet_workers::run(config, shutdown).await {
        // Permanent by construction (transient trouble is retried inside `run`).
        eprintln!("{PROGRAM}: start-up error: {e}");
        std::process::exit(2);
    }
}
