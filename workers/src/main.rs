//! `drfleet-worker`: parse settings, start telemetry (logs; traces when the `OTEL_*` variables
//! ask for them), run until SIGTERM/SIGINT.
//!
//! Exit codes: 0 after SIGTERM/SIGINT (also during start-up retries); 2 for bad
//! configuration or a permanent start-up error (one line on stderr naming the cause).

use drfleet_infra::config::{exit_config_error, parse_cli};
use drfleet_infra::telemetry::{self, Logs, OtelConfig};
use drfleet_workers::config::{WorkerCli, WorkerConfig};
use tokio_util::sync::CancellationToken;

const PROGRAM: &str = "drfleet-worker";

#[tokio::main]
async fn main() {
    let cli: WorkerCli = parse_cli(PROGRAM);
    let config = WorkerConfig::from_cli(cli).unwrap_or_else(|e| exit_config_error(PROGRAM, &e));
    let otel = OtelConfig::from_env(PROGRAM).unwrap_or_else(|e| exit_config_error(PROGRAM, &e));
    let telemetry = telemetry::start(Logs::Format(config.log_format), otel.as_ref())
        .unwrap_or_else(|e| exit_config_error(PROGRAM, &e));

    let shutdown = CancellationToken::new();
    drfleet_runtime::process::cancel_on_signals(shutdown.clone());
    let result = drfleet_workers::run(config, shutdown).await;
    // Buffered spans leave before the process does (blocking, bounded).
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    if let Err(e) = result {
        // Permanent by construction (transient trouble is retried inside `run`).
        eprintln!("{PROGRAM}: start-up error: {e}");
        std::process::exit(2);
    }
}
