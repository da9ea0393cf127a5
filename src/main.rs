//! The `causeseg` command line: a thin layer over the library.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(if args.verbose { "debug" } else { "info" }))
        .format_timestamp_millis()
        .init();
    match cli::dispatch(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", cli::one_line(&error));
            ExitCode::FAILURE
        }
    }
}
