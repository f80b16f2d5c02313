//! Latency at a fixed request rate, as fortio measures it: the total rate is
//! split evenly over persistent connections, each sends on a uniform
//! schedule (the connections' schedules staggered across one interval), and
//! a connection that falls behind does not catch up: its next request is
//! one interval after the late one, so a slow stretch is never followed by
//! a burst. Every request's latency is recorded, from just before the
//! request is written to the last byte of the response. Connections are
//! warmed by one unrecorded exchange each before the clock starts.

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
    /// Requests per second, over all connections.
    pub rate: f64,
    /// Persistent connections.
    pub connections: usize,
    /// How long to send for.
    pub duration: Duration,
    /// Request and response size in bytes.
    pub size: usize,
}

/// What one run measured.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Run {
    /// Each completed request's latency in microseconds, in completion order
    /// per connection.
    pub latencies_us: Vec<f64>,
    /// Requests that failed (the connection broke).
    pub errors: u64,
    /// Requests sent later than scheduled because the previous response on
    /// their connection had not arrived in time.
    pub late: u64,
    /// Wall time of the run in seconds.
    pub seconds: f64,
}

/// Runs the load; fails only if a connection cannot be opened or its first
/// exchange gets no response.
pub async fn run(options: &Options) -> std::io::Result<Run> {
    // Each connection makes one unrecorded exchange first: through the mesh
    // that opens its tunnel, so the run measures connections in use, not
    // their set-up.
    let mut streams = Vec::with_capacity(options.connections);
    let mut buf = vec![0u8; options.size];
    for _ in 0..options.connections {
        let mut stream = connect(options.target).await?;
        exchange(&mut stream, &mut buf).await?;
        streams.push(stream);
    }
    let interval = Duration::from_secs_f64(options.connections as f64 / options.rate);
    let started = Instant::now();
    let end = started + options.duration;
    let tasks: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(index, mut stream)| {
            // Stagger the connections evenly over one interval.
            let first = started + interval.mul_f64(index as f64 / options.connections as f64);
            let size = options.size;
            tokio::spawn(async move {
                let mut buf = vec![0u8; size];
                let mut latencies = Vec::new();
                let (mut errors, mut late) = (0u64, 0u64);
                let mut next = first;
                while next < end {
                    tokio::time::sleep_until(next.into()).await;
                    let sent = Instant::now();
                    match exchange(&mut stream, &mut buf).await {
                        Ok(()) => latencies.push(sent.elapsed().as_secs_f64() * 1e6),
                        Err(_) => {
                            errors += 1;
                            break;
                        }
                    }
                    next += interval;
                    let now = Instant::now();
                    if next < now {
                        late += 1;
                        next = now;
                    }
                }
                (latencies, errors, late)
            })
        })
        .collect();
    let mut run = Run {
        latencies_us: Vec::new(),
        errors: 0,
        late: 0,
        seconds: 0.0,
    };
    for task in tasks {
        let (latencies, errors, late) = task.await.map_err(std::io::Error::other)?;
        run.latencies_us.extend(latencies);
        run.errors += errors;
        run.late += late;
    }
    run.seconds = started.elapsed().as_secs_f64();
    Ok(run)
}
