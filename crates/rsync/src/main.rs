//! The `keep-rsync` binary: parse flags, set up logging, run, exit with the run's code.
//! Everything else lives in the library (start at `keep_rsync::run`).

use std::process::ExitCode;

use clap::Parser as _;
use keep_rsync::cli::{Cli, go_style_args};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    if std::env::args_os().nth(1).as_deref() == Some(std::ffi::OsStr::new("merge-reports")) {
        let args: Vec<String> = std::env::args_os()
            .skip(2)
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        return ExitCode::from(keep_rsync::merge::main(&args));
    }
    let cli = match Cli::try_parse_from(go_style_args(std::env::args_os())) {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help and version to stdout (exit 0); usage errors go to
            // stderr as one line, like every other error (exit 2, our usage code).
            if !e.use_stderr() {
                let _ = e.print();
                return ExitCode::from(0);
            }
            eprintln!("{}", one_line(&e));
            return ExitCode::from(keep_rsync::cli::exit::FATAL);
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
    // Run on a worker, not on this thread: the HTTP connection tasks live on the
    // workers, and a request handed between threads costs a wake-up each way.
    let code = runtime.block_on(async {
        tokio::spawn(keep_rsync::run(cli))
            .await
            .unwrap_or(keep_rsync::cli::exit::FATAL)
    });
    ExitCode::from(code)
}

/// A clap usage error on one line: its message without the usage block and the
/// "For more information" hint, which a script's log would otherwise split up.
fn one_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let parts: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more information")
        })
        .collect();
    format!("keep-rsync: {} (see keep-rsync --help)", parts.join(" "))
}
