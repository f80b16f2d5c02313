//! Inbound plaintext: connections arriving at an enrolled pod's address,
//! handed by `sk_lookup` to the daemon's inbound listener in the pod.
//!
//! Until policy exists (PERMISSIVE/STRICT), they are delivered to the
//! application at the address and port they were sent to, from inside the pod.

use std::{net::SocketAddr, sync::Arc, time::Instant};

use tokio::net::{TcpListener, TcpStream};

use super::{connect, outbound::SourcePod};
use crate::redirect::abi::{INBOUND_MTLS_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT};

/// Why one inbound connection failed.
#[derive(Debug, thiserror::Error)]
pub enum InboundError {
    /// It was addressed to one of the daemon's own ports: refusing it avoids a loop.
    #[error("addressed to the daemon's own port {0}")]
    OwnPort(u16),
    /// The local address could not be read.
    #[error("reading the original destination: {0}")]
    LocalAddr(std::io::Error),
    /// The application could not be reached.
    #[error("connecting to the application at {destination}: {source}")]
    Connect {
        /// Where.
        destination: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Copying failed mid-way.
    #[error("relaying: {0}")]
    Copy(std::io::Error),
}

/// Accepts connections on `listener` for `pod` until the task is dropped.
pub async fn serve(listener: TcpListener, pod: Arc<SourcePod>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!(pod = %pod.name, "inbound accept failed: {err}");
                continue;
            }
        };
        let pod = pod.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            match handle(stream, &pod).await {
                Ok((destination, sent, received)) => tracing::info!(
                    dst.pod = %pod.name,
                    dst.namespace = %pod.namespace,
                    dst.service_account = %pod.service_account,
                    src.addr = %peer,
                    dst.addr = %destination,
                    sent,
                    received,
                    duration_ms = started.elapsed().as_millis() as u64,
                    "inbound connection closed"
                ),
                Err(err) => {
                    tracing::warn!(dst.pod = %pod.name, %peer, "inbound connection failed: {err}")
                }
            }
        });
    }
}

/// One connection: its destination is the local address it arrived at
/// (`sk_lookup` keeps it); deliver there, copy. Returns the destination and
/// the bytes sent to and received from the application.
async fn handle(
    mut client: TcpStream,
    pod: &SourcePod,
) -> Result<(SocketAddr, u64, u64), InboundError> {
    let destination = client.local_addr().map_err(InboundError::LocalAddr)?;
    if [OUTBOUND_PORT, INBOUND_PLAINTEXT_PORT, INBOUND_MTLS_PORT].contains(&destination.port()) {
        return Err(InboundError::OwnPort(destination.port()));
    }
    let mut app = connect::from_pod(&pod.netns, destination)
        .await
        .map_err(|source| InboundError::Connect {
            destination,
            source,
        })?;
    let _ = client.set_nodelay(true);
    let (received, sent) = tokio::io::copy_bidirectional(&mut client, &mut app)
        .await
        .map_err(InboundError::Copy)?;
    Ok((destination, sent, received))
}
