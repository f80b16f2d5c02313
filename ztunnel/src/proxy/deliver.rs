//! The last hop of every inbound path (plaintext, tunnel, same node): a
//! connection to the application, made from inside its pod's network
//! namespace, from the original client's address when the pod allows it.

use std::net::{IpAddr, SocketAddr};

use tokio::net::TcpStream;

use super::{
    ProxyContext, connect,
    limits::{self, Direction, Slot},
    pod::LocalPod,
};
use crate::redirect::abi::{INBOUND_MTLS_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT};

/// Why a connection could not be delivered to the application.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    /// The destination is not one of the pod's addresses: a peer may only
    /// reach the pod whose listener accepted it.
    #[error("{destination} is not an address of pod {namespace}/{pod}")]
    NotThisPod {
        /// The requested destination.
        destination: SocketAddr,
        /// The pod's namespace.
        namespace: String,
        /// The pod.
        pod: String,
    },
    /// Addressed to one of the daemon's own ports: refusing avoids a loop.
    #[error("{0} is one of the daemon's own ports")]
    OwnPort(u16),
    /// The pod has as many inbound connections open as it may.
    #[error("pod {namespace}/{pod} has {limit} inbound connections open")]
    TooMany {
        /// The pod's namespace.
        namespace: String,
        /// The pod.
        pod: String,
        /// Its limit.
        limit: usize,
    },
    /// The application could not be reached.
    #[error("connecting to the application at {destination}: {source}")]
    Connect {
        /// Where.
        destination: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl DeliverError {
    /// Whether the request itself was wrong (the destination), rather than
    /// the application unreachable.
    pub fn is_bad_request(&self) -> bool {
        matches!(self, Self::NotThisPod { .. } | Self::OwnPort(_))
    }
}

/// Checks that `destination` is an address of `pod` and none of the
/// daemon's own ports: a peer may only reach the pod whose listener accepted
/// it, and never the daemon itself (a loop). Checked before anything else.
pub fn check_destination(pod: &LocalPod, destination: SocketAddr) -> Result<(), DeliverError> {
    if !pod.ips.contains(&destination.ip()) {
        return Err(DeliverError::NotThisPod {
            destination,
            namespace: pod.namespace.clone(),
            pod: pod.name.clone(),
        });
    }
    if [OUTBOUND_PORT, INBOUND_PLAINTEXT_PORT, INBOUND_MTLS_PORT].contains(&destination.port()) {
        return Err(DeliverError::OwnPort(destination.port()));
    }
    Ok(())
}

/// Connects to the application at `destination` in `pod` (checked with
/// [`check_destination`]), on behalf of `client`: the application sees
/// `client` as the peer when the pod is set up for it (and the address is
/// not the pod's own), the pod's address otherwise. The connection counts
/// against the pod's inbound limit for as long as the returned slot lives.
pub async fn to_app<'p>(
    context: &ProxyContext,
    pod: &'p LocalPod,
    destination: SocketAddr,
    client: IpAddr,
) -> Result<(TcpStream, Slot<'p>), DeliverError> {
    let limit = context.limits.connections_per_pod;
    let Some(slot) = pod.connections.open(Direction::Inbound, limit) else {
        limits::count_refusal(&context.metrics, Direction::Inbound.limit_label());
        return Err(DeliverError::TooMany {
            namespace: pod.namespace.clone(),
            pod: pod.name.clone(),
            limit,
        });
    };
    let transparent = pod.transparent
        && client.is_ipv4() == destination.is_ipv4()
        && !client.is_loopback()
        && !pod.ips.contains(&client);
    let connected = if transparent {
        connect::as_client(&pod.netns, client, destination).await
    } else {
        connect::from_pod(&pod.netns, destination).await
    };
    let stream = connected.map_err(|source| DeliverError::Connect {
        destination,
        source,
    })?;
    Ok((stream, slot))
}
