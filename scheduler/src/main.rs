//! `drfleet-scheduler`: parse settings, start telemetry, run until SIGTERM/SIGINT.
//!
//! Exit codes: 0 after SIGTERM/SIGINT; 2 for bad configuration or a permanent start-up error
//! (one line on stderr naming the cause).

use drfleet_infra::config::{exit_config_error, parse_cli};
use drfleet_scheduler::config::{SchedulerCli, SchedulerConfig};
use tokio_util::sync::CancellationToken;

const PROGRAM: &str = "drfleet-scheduler";

#[tokio::main]
async fn main() {
    let cli: SchedulerCli = parse_cli(PROGRAM);
    let config = SchedulerConfig::from_cli(cli).unwrap_or_else(|e| exit_config_error(PROGRAM, &e));
    drfleet_infra::telemetry::init(config.log_format);

    let shutdown = CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::info!("signal received");
        trigger.cancel();
    });
    if let Err(e) = drfleet_scheduler::run(config, shutdown).await {
        eprintln!("{PROGRAM}: start-up error: {e}");
        std::process::exit(2);
    }
}
