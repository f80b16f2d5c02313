//! `ztunnel-loadgen`: the benchmark's load generator, run inside pods by
//! `ztunnel-bench` (or by hand). Results are JSON on stdout.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tokio::io::AsyncReadExt;
use ztunnel_bench::loadgen::{connrate, hold, latency, server};

/// Request/response load for the mesh benchmarks.
#[derive(Parser)]
#[command(name = "ztunnel-loadgen")]
struct Cli {
    /// Request and response size in bytes.
    #[arg(long, global = true, default_value_t = 1024)]
    size: usize,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Answer each request with as many bytes.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "0.0.0.0:9100")]
        listen: SocketAddr,
    },
    /// Requests at a fixed rate over persistent connections; prints every latency.
    Latency {
        /// The server.
        target: SocketAddr,
        /// Requests per second over all connections.
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        /// Persistent connections.
        #[arg(long, default_value_t = 16)]
        connections: usize,
        /// Seconds to run.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
    /// New connections (connect, one exchange, close) as fast as they complete.
    Connrate {
        /// The server.
        target: SocketAddr,
        /// Connections in flight at once.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Seconds to run.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
    },
    /// Open connections (one exchange each), print `{"held": N}`, and keep
    /// them open and idle until standard input closes.
    Hold {
        /// The server.
        target: SocketAddr,
        /// How many.
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// How many to open at once.
        #[arg(long, default_value_t = 64)]
        parallel: usize,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    // Thousands of sockets: take the hard limit.
    let _ = rlimit_nofile_to_hard();
    match cli.command {
        Command::Serve { listen } => server::serve(listen, cli.size)
            .await
            .with_context(|| format!("serving on {listen}")),
        Command::Latency {
            target,
            rate,
            connections,
            seconds,
        } => {
            let options = latency::Options {
                target,
                rate,
                connections,
                duration: Duration::from_secs_f64(seconds),
                size: cli.size,
            };
            let run = latency::run(&options)
                .await
                .with_context(|| format!("connecting to {target}"))?;
            println!("{}", serde_json::to_string(&run)?);
            Ok(())
        }
        Command::Connrate {
            target,
            concurrency,
            seconds,
        } => {
            let options = connrate::Options {
                target,
                concurrency,
                duration: Duration::from_secs_f64(seconds),
                size: cli.size,
            };
            let run = connrate::run(&options).await;
            println!("{}", serde_json::to_string(&run)?);
            Ok(())
        }
        Command::Hold {
            target,
            connections,
            parallel,
        } => {
            let held = hold::open(target, connections, parallel, cli.size)
                .await
                .with_context(|| format!("opening {connections} connections to {target}"))?;
            println!("{}", serde_json::json!({ "held": held.len() }));
            let mut rest = Vec::new();
            let _ = tokio::io::stdin().read_to_end(&mut rest).await;
            drop(held);
            Ok(())
        }
    }
}

/// Raises the soft limit on open files to the hard limit.
fn rlimit_nofile_to_hard() -> std::io::Result<()> {
    let (_, hard) = rlimit::Resource::NOFILE.get()?;
    rlimit::Resource::NOFILE.set(hard, hard)
}
