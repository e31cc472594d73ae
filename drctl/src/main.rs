//! `drctl`: see the library crate for the layout and exit codes.

use std::process::ExitCode;

use drfleet_infra::config::{exit_config_error, parse_cli};

const PROGRAM: &str = "drctl";

fn main() -> ExitCode {
    let cli: drctl::Cli = parse_cli(PROGRAM);
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
