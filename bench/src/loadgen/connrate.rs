//! Connection rate: workers that each, in a loop, connect, exchange one
//! request and response, and close, as fast as that completes.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use serde::Serialize;

use super::{connect, exchange};

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// The server.
    pub target: SocketAddr,
    /// Connections in flight at once.
    pub concurrency: usize,
    /// How long to run.
    pub duration: Duration,
    /// Request and response size in bytes.
    pub size: usize,
}

/// What one run measured.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Run {
    /// Connections that completed their exchange.
    pub completed: u64,
    /// Connections that failed (to connect, or during the exchange).
    pub errors: u64,
    /// Wall time of the run in seconds.
    pub seconds: f64,
}

/// Runs the load.
pub async fn run(options: &Options) -> Run {
    let started = Instant::now();
    let end = started + options.duration;
    let workers: Vec<_> = (0..options.concurrency)
        .map(|_| {
            let (target, size) = (options.target, options.size);
            tokio::spawn(async move {
                let mut buf = vec![0u8; size];
                let (mut completed, mut errors) = (0u64, 0u64);
                while Instant::now() < end {
                    let done = async {
                        let mut stream = connect(target).await?;
                        exchange(&mut stream, &mut buf).await
                    };
                    match done.await {
                        Ok(()) => completed += 1,
                        Err(_) => errors += 1,
                    }
                }
                (completed, errors)
            })
        })
        .collect();
    let mut run = Run {
        completed: 0,
        errors: 0,
        seconds: 0.0,
    };
    for worker in workers {
        if let Ok((completed, errors)) = worker.await {
            run.completed += completed;
            run.errors += errors;
        }
    }
    run.seconds = started.elapsed().as_secs_f64();
    run
}
