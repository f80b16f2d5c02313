//! The destination side's last steps, the same for both inbound paths
//! (plaintext from outside the mesh, and tunnels): decide, deliver to the
//! application, copy, record.

use std::{net::SocketAddr, sync::Arc, time::Instant};

use tokio::io::{AsyncRead, AsyncWrite};

use super::{
    ProxyContext,
    authorize::{self, Denied},
    copy::{self, Relayed, Resettable},
    deliver::{self, DeliverError},
    pod::LocalPod,
    record,
};
use crate::{access_log::Addresses, identity::Identity, metrics::TcpRecord, tunnel::Session};

/// An inbound connection whose source is as known as it will be.
pub struct Arrival<'a> {
    /// The peer's address (for a tunnel, the source pod's).
    pub peer: SocketAddr,
    /// The source workload, when it proved one (tunnels).
    pub source: Option<&'a Identity>,
    /// Where it was sent: an address and port of the pod.
    pub destination: SocketAddr,
    /// The TLS session it arrived in, if any.
    pub session: Option<&'a Session>,
    /// The access log's name for the path it took.
    pub route: &'static str,
    /// When it was accepted.
    pub started: Instant,
}

/// Admits `client` by policy, delivers it to the application in `pod`
/// (from the peer's address), copies until either side is done, and records
/// the metrics and the access-log line. Returns what was copied.
pub async fn serve<S, E>(
    client: &mut S,
    arrival: Arrival<'_>,
    pod: &Arc<LocalPod>,
    context: &ProxyContext,
) -> Result<Relayed, E>
where
    S: AsyncRead + AsyncWrite + Resettable + Unpin,
    E: From<Denied> + From<DeliverError>,
{
    let Arrival {
        peer,
        source,
        destination,
        session,
        route,
        started,
    } = arrival;
    let mut admission = authorize::admit(context, pod, peer.ip(), source, destination)?;
    let (mut app, _slot) = deliver::to_app(context, pod, destination, peer.ip()).await?;
    let registry = context.registry.borrow().clone();
    let labels = record::destination_reporter(&registry, pod, peer.ip(), source);
    let mut tcp = TcpRecord::open(&context.metrics, labels);
    let relayed = copy::relay(client, &mut app, context.idle_timeout, admission.revoked()).await;
    (tcp.sent, tcp.received) = (relayed.received, relayed.sent);
    let addresses = Addresses {
        src: peer,
        dst: destination,
        endpoint: destination,
    };
    record::access_log(
        context,
        tcp.labels(),
        route,
        addresses,
        &relayed,
        started.elapsed(),
        session,
    );
    Ok(relayed)
}
