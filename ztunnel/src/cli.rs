//! Subcommands of the `ztunnel` binary. Parsing and process set-up only:
//! each subcommand hands validated settings to its module.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context;
use clap::{Parser, Subcommand};
use ztunnel::{
    ca::{Ca, CaConfig},
    identity::TrustDomain,
};

/// Node-level ambient zero-trust proxy for Kubernetes.
#[derive(Parser)]
#[command(name = "ztunnel", version, about)]
pub struct Cli {
    /// Log filter (tracing's `RUST_LOG` syntax), for example `info` or `ztunnel=debug`.
    #[arg(long, global = true, default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the certificate authority (Istio's CA API over TLS).
    Ca(CaArgs),
}

#[derive(clap::Args)]
struct CaArgs {
    /// Address to serve on.
    #[arg(long, default_value = "0.0.0.0:15012")]
    listen: SocketAddr,
    /// Trust domain of the identities it signs.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: TrustDomain,
    /// Directory for the generated root of trust (created 0700; the key is 0600).
    #[arg(long, default_value = "/var/lib/ztunnel-ca")]
    state_dir: PathBuf,
    /// Istio `cacerts` directory (ca-cert.pem, ca-key.pem, cert-chain.pem, root-cert.pem)
    /// holding an intermediate to sign with, instead of a generated root.
    #[arg(long)]
    cacerts: Option<PathBuf>,
    /// The workload registry file: a node may only get identities of its own pods.
    #[arg(long)]
    registry: PathBuf,
    /// YAML map of node name to bearer token.
    #[arg(long)]
    node_tokens: PathBuf,
    /// Longest certificate validity issued, in seconds.
    #[arg(long, default_value_t = 24 * 3600)]
    max_validity_secs: u64,
    /// DNS names and IP addresses in the CA's serving certificate (repeatable).
    #[arg(long = "server-name", default_value = "ztunnel-ca.ztunnel-system.svc")]
    server_names: Vec<String>,
    /// File to publish the root certificate to (the trust bundle node daemons read).
    #[arg(long)]
    publish_root: Option<PathBuf>,
}

impl Cli {
    /// Runs the chosen subcommand to completion.
    pub fn run(self) -> anyhow::Result<()> {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_new(&self.log).context("parsing --log")?,
            )
            .with_writer(std::io::stderr)
            .init();
        let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
        runtime.block_on(async {
            match self.command {
                Command::Ca(args) => run_ca(args).await,
            }
        })
    }
}

async fn run_ca(args: CaArgs) -> anyhow::Result<()> {
    let config = CaConfig {
        listen: args.listen,
        trust_domain: args.trust_domain,
        state_dir: args.state_dir,
        cacerts: args.cacerts,
        registry: args.registry,
        node_tokens: args.node_tokens,
        max_validity: Duration::from_secs(args.max_validity_secs),
        server_names: args.server_names,
        publish_root: args.publish_root,
    };
    let ca = Ca::bind(config).await?;
    let address = ca.local_addr()?;
    tracing::info!(%address, "CA serving");
    // The readiness signal for whoever started us: the address actually bound.
    println!("listening on {address}");
    ca.serve(shutdown_signal()).await?;
    tracing::info!("CA stopped");
    Ok(())
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
