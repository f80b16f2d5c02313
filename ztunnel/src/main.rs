//! The `ztunnel` command line.

use clap::Parser;

/// Node-level ambient zero-trust proxy for Kubernetes.
///
/// The node daemon (`node`), the CA (`ca`) and the troubleshooting client
/// (`ctl`) arrive as subcommands of this binary; see README.md for what is
/// available in this version.
#[derive(Parser)]
#[command(name = "ztunnel", version, about)]
struct Cli {}

fn main() {
    let Cli {} = Cli::parse();
}
