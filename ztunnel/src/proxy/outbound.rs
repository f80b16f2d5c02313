//! Outbound: connections an enrolled pod's applications open, accepted on the
//! pod's outbound listener.
//!
//! Until the mTLS tunnel exists, a captured connection is relayed as plain TCP
//! to its original destination, from inside the pod's network namespace (so it
//! leaves with the pod's address), on a socket marked so the programs do not
//! capture it again.

use std::{net::SocketAddr, sync::Arc, time::Instant};

use tokio::net::{TcpListener, TcpStream};

use super::connect;
use crate::redirect::{netns::PodNetns, programs::OrigDstTable};

/// Who a pod is, for the connections it opens.
#[derive(Debug)]
pub struct SourcePod {
    /// Pod name.
    pub name: String,
    /// Kubernetes namespace.
    pub namespace: String,
    /// ServiceAccount.
    pub service_account: String,
    /// Its network namespace.
    pub netns: PodNetns,
}

/// Why one outbound connection failed.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// The eBPF programs left no original destination for it: it was not
    /// steered by them (or the record was lost), so it is closed.
    #[error("no original destination recorded for client port {0}")]
    NoOriginalDestination(u16),
    /// The destination could not be reached.
    #[error("connecting to {destination}: {source}")]
    Connect {
        /// The destination.
        destination: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Copying failed mid-way.
    #[error("relaying: {0}")]
    Copy(std::io::Error),
}

/// Accepts connections on `listener` for `pod` until the task is dropped.
pub async fn serve(listener: TcpListener, pod: Arc<SourcePod>, orig_dst: Arc<OrigDstTable>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!(pod = %pod.name, "outbound accept failed: {err}");
                continue;
            }
        };
        let (pod, orig_dst) = (pod.clone(), orig_dst.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            match handle(stream, peer, &pod, &orig_dst).await {
                Ok((destination, sent, received)) => tracing::info!(
                    src.pod = %pod.name,
                    src.namespace = %pod.namespace,
                    src.service_account = %pod.service_account,
                    dst.addr = %destination,
                    sent,
                    received,
                    duration_ms = started.elapsed().as_millis() as u64,
                    "outbound connection closed"
                ),
                Err(err) => {
                    tracing::warn!(src.pod = %pod.name, %peer, "outbound connection failed: {err}")
                }
            }
        });
    }
}

/// One connection: identify its destination, connect, copy. Returns the
/// destination and the bytes sent to it and received from it.
async fn handle(
    mut client: TcpStream,
    peer: SocketAddr,
    pod: &SourcePod,
    orig_dst: &OrigDstTable,
) -> Result<(SocketAddr, u64, u64), OutboundError> {
    // Identify: the source is the pod whose listener accepted; the
    // destination is what its application asked for.
    let destination = orig_dst
        .take(pod.netns.cookie(), peer.port())
        .ok_or(OutboundError::NoOriginalDestination(peer.port()))?;
    let connect_error = |source| OutboundError::Connect {
        destination,
        source,
    };
    let mut upstream = connect::from_pod(&pod.netns, destination)
        .await
        .map_err(connect_error)?;
    let _ = client.set_nodelay(true);
    let (sent, received) = tokio::io::copy_bidirectional(&mut client, &mut upstream)
        .await
        .map_err(OutboundError::Copy)?;
    Ok((destination, sent, received))
}
