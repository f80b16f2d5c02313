//! The load generator that runs inside pods: a request/response server and
//! three clients.
//!
//! Every exchange is a fixed-size request answered by a response of the same
//! size (1 KiB by default), so the bytes on the wire are the same in every
//! scenario and only the path between the pods differs.
//!
//! - [`server`]: answers requests on every connection it accepts.
//! - [`latency`]: requests at a fixed rate over persistent connections,
//!   recording each one's latency (fortio's method).
//! - [`connrate`]: new connections as fast as they complete.
//! - [`hold`]: many idle connections, held open.

pub mod connrate;
pub mod hold;
pub mod latency;
pub mod server;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a response may take before its exchange fails: a path that
/// loses a request must fail the run, not hang it.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// One request and its response on `stream`, both `buf.len()` bytes (the
/// response is read into `buf`), within [`EXCHANGE_TIMEOUT`].
pub async fn exchange<S>(stream: &mut S, buf: &mut [u8]) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let round_trip = async {
        stream.write_all(buf).await?;
        stream.read_exact(buf).await?;
        Ok(())
    };
    tokio::time::timeout(EXCHANGE_TIMEOUT, round_trip)
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no response within {EXCHANGE_TIMEOUT:?}"),
            )
        })?
}

/// A TCP connection to `target` with Nagle off (requests are small and
/// must leave at once).
pub async fn connect(target: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let stream = tokio::net::TcpStream::connect(target).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}
