//! `drctl`: see the library crate for the layout and exit codes.

use std::process::ExitCode;

use drfleet_infra::config::{exit_config_error, parse_cli};
use drfleet_infra::telemetry::{self, Logs, OtelConfig};

const PROGRAM: &str = "drctl";

fn main() -> ExitCode {
    let cli: drctl::Cli = parse_cli(PROGRAM);
    // Traces only (stdout and stderr are drctl's interface): when the `OTEL_*` variables ask,
    // a command drctl publishes starts a trace that the workers continue.
    let telemetry = match OtelConfig::from_env(PROGRAM)
        .and_then(|otel| telemetry::start(Logs::Off, otel.as_ref()))
    {
        Ok(t) => t,
        Err(e) => exit_config_error(PROGRAM, &e),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "{PROGRAM}: error: {:#}",
                anyhow::Error::from(e).context("starting the async runtime")
            );
            return ExitCode::from(drctl::EXIT_ERROR);
        }
    };
    let result = runtime.block_on(drctl::run(cli));
    drop(runtime);
    telemetry.shutdown();
    match result {
        Ok(outcome) => ExitCode::from(outcome.exit_code()),
        Err(drctl::Error::Config(e)) => exit_config_error(PROGRAM, &e),
        Err(e @ drctl::Error::InvalidCommand(_)) => {
            eprintln!("{PROGRAM}: {e}");
            ExitCode::from(e.exit_code())
        }
        Err(e) => {
            let code = e.exit_code();
            eprintln!("{PROGRAM}: error: {:#}", anyhow::Error::from(e));
            ExitCode::from(code)
        }
    }
}
