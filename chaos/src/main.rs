use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = drfleet_chaos::cli::Cli::parse();
    match drfleet_chaos::run(cli).await {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("drfleet-chaos: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
