//! The `causeseg` command line: a thin layer over the library.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    // The DDS stack of `--ros2` logs every discovery event at info level;
    // only its warnings (and ros2-client's errors) are ours to show.
    let filter = if args.verbose { "debug" } else { "info,rustdds=warn,ros2_client=error" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(filter))
        .format_timestamp_millis()
        .init();
    match cli::dispatch(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", causeseg::errors::one_line(&error));
            ExitCode::FAILURE
        }
    }
}
