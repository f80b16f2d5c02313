//! The destination side's last steps, the same for every path that ends in
//! a pod of this node (plaintext from outside the mesh, tunnels, and the
//! same-node path of `outbound`): decide, deliver to the application, copy,
//! record.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Instant,
};

use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};

use super::{
    ProxyContext,
    admitted::Admission,
    authorize::{self, Denied},
    copy::{self, Relayed, Resettable},
    deliver::{self, DeliverError},
    limits::Slot,
    pod::LocalPod,
    record,
};
use crate::{
    access_log::Addresses,
    identity::Identity,
    metrics::{TcpLabels, TcpRecord},
    tunnel::Session,
};

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
    let delivered = deliver::<E>(context, pod, peer.ip(), source, destination).await?;
    let (relayed, labels) = delivered.relay(client, context).await;
    let addresses = Addresses {
        src: peer,
        dst: destination,
        endpoint: destination,
    };
    record::access_log(
        context,
        &labels,
        route,
        addresses,
        &relayed,
        started.elapsed(),
        session,
    );
    Ok(relayed)
}

/// A connection admitted and delivered to its application, counted by the
/// destination reporter until it is dropped.
pub struct Delivered<'a> {
    admission: Admission<'a>,
    app: TcpStream,
    _slot: Slot<'a>,
    record: TcpRecord<'a>,
}

/// Decides and connects, the destination's steps of every path (tunnel,
/// plaintext, same node): admits a connection from `peer` (proven as
/// `source`, if it is) to `destination` in `pod` by policy, and connects it
/// to the application from the peer's address.
pub async fn deliver<'a, E>(
    context: &'a ProxyContext,
    pod: &'a Arc<LocalPod>,
    peer: IpAddr,
    source: Option<&Identity>,
    destination: SocketAddr,
) -> Result<Delivered<'a>, E>
where
    E: From<Denied> + From<DeliverError>,
{
    let admission = authorize::admit(context, pod, peer, source, destination)?;
    let (app, slot) = deliver::to_app(context, pod, destination, peer).await?;
    let registry = context.registry.borrow().clone();
    let labels = record::destination_reporter(&registry, pod, peer, source);
    Ok(Delivered {
        admission,
        app,
        _slot: slot,
        record: TcpRecord::open(&context.metrics, labels),
    })
}

impl Delivered<'_> {
    /// Copies between `client` and the application until either is done
    /// (or policy revokes the connection); returns what was copied and the
    /// labels the destination reporter counted it under.
    pub async fn relay<S>(mut self, client: &mut S, context: &ProxyContext) -> (Relayed, TcpLabels)
    where
        S: AsyncRead + AsyncWrite + Resettable + Unpin,
    {
        let revoked = self.admission.revoked();
        let relayed = copy::relay(client, &mut self.app, context.idle_timeout, revoked).await;
        (self.record.sent, self.record.received) = (relayed.received, relayed.sent);
        (relayed, self.record.labels().clone())
    }
}
