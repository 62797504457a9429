//! The `zerostate` binary: parse the command line and hand over to the library.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = zerostate::cli::Cli::parse();
    match zerostate::commands::run(cli.command).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // A followed task that failed or was canceled: the client already said so.
        Err(err) if err.is::<zerostate::client::Exit>() => {
            let code = err
                .downcast_ref::<zerostate::client::Exit>()
                .map_or(1, |e| e.code());
            std::process::ExitCode::from(code)
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
