//! The `ztunnel` command line.

mod cli;

use std::process::ExitCode;

use clap::Parser;

/// Errors are printed as one line, the cause chain joined by `: `, without
/// a backtrace even when `RUST_BACKTRACE` is set (Istio's chart sets it for
/// its ztunnel, and every error then printed dozens of frames).
fn main() -> ExitCode {
    match cli::Cli::parse().run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
