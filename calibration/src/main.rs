//! `causeseg-calibrate`: `causeseg calibrate` as a binary of its own (the
//! same arguments and code, `causeseg::calibrate::command`): converts a
//! model into an int8 model directory from calibration images.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Make an int8 model from calibration images (QDQ graph for TensorRT and
/// ONNX Runtime), with a report of its accuracy against float.
#[derive(Debug, Parser)]
#[command(name = "causeseg-calibrate", version, about)]
struct Cli {
    /// Backbone cache directory [default: $CAUSESEG_CACHE or ~/.cache/causeseg].
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Debug logging (or set RUST_LOG).
    #[arg(short, long)]
    verbose: bool,
    #[command(flatten)]
    args: causeseg::calibrate::command::CalibrateArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(if cli.verbose { "debug" } else { "info" }))
        .format_timestamp_millis()
        .init();
    let cache = causeseg::model::backbone::cache_dir(cli.cache_dir.as_deref());
    match causeseg::calibrate::command::run(cli.args, &cache) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", causeseg::errors::one_line(&error));
            ExitCode::FAILURE
        }
    }
}
