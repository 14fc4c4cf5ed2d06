//! The `keep-rsync` binary: parse flags, set up logging, run, exit with the run's code.
//! Everything else lives in the library (start at `keep_rsync::run`).

use std::process::ExitCode;

use clap::Parser as _;
use keep_rsync::cli::{Cli, go_style_args};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = match Cli::try_parse_from(go_style_args(std::env::args_os())) {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help and version to stdout (exit 0) and usage errors to
            // stderr (exit 2, our usage code).
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                keep_rsync::cli::exit::FATAL
            } else {
                0
            });
        }
    };
    let default_level = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        (false, _) => "trace",
    };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keep-rsync: cannot start the async runtime: {e}");
            return ExitCode::from(keep_rsync::cli::exit::FATAL);
        }
    };
    ExitCode::from(runtime.block_on(keep_rsync::run(cli)))
}
