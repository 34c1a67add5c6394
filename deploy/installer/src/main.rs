//! The `scoregate-ext` command: parse, run, report. No logic lives here.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = scoregate_ext::cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("scoregate-ext: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    match runtime.block_on(scoregate_ext::cli::run(cli, &mut stdout, &mut stderr)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("scoregate-ext: {e:#}");
            ExitCode::FAILURE
        }
    }
}
