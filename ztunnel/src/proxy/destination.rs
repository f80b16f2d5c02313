//! The destination side's last steps, the same for every path that ends in
//! a pod of this node (plaintext from outside the mesh, tunnels, and the
//! same-node path of `outbound`): decide, deliver to the application, copy,
//! record.

use std::{net::SocketAddr, sync::Arc};

use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};

use super::{
    ProxyContext,
    admitted::Admission,
    authorize::{self, Denied},
    copy::{self, Ending, Meters, Resettable},
    deliver::{self, DeliverError},
    limits::Slot,
    pod::LocalPod,
    record::{ConnectionRecord, Opening, Party, Via},
};
use crate::{
    identity::Identity,
    metrics::{Reporter, ResponseFlags, SecurityPolicy},
    registry::{Registry, Service},
    tunnel::Session,
};

/// An inbound connection whose source is as known as it will be.
pub struct Arrival<'a> {
    /// The peer's address (for a tunnel, the source pod's).
    pub peer: SocketAddr,
    /// The source workload, when it proved one (tunnels, and the same-node
    /// path, where the daemon captured the source itself).
    pub source: Option<&'a Identity>,
    /// Where it was sent: an address and port of the pod.
    pub destination: SocketAddr,
    /// The TLS session it arrived in, if any.
    pub session: Option<&'a Session>,
    /// The path it took.
    pub via: Via,
    /// The service the client addressed, when this daemon knows it (the
    /// same-node path); otherwise it is guessed ([`Registry::service_of`]).
    pub service: Option<&'a Service>,
}

/// Admits `client` by policy, delivers it to the application in `pod`
/// (from the peer's address), copies until either side is done, and
/// records it; a refusal or failure is recorded too, and returned.
pub async fn serve<S, E>(
    client: &mut S,
    arrival: Arrival<'_>,
    pod: &Arc<LocalPod>,
    context: &ProxyContext,
) -> Result<(), E>
where
    S: AsyncRead + AsyncWrite + Resettable + Unpin,
    E: From<Denied> + From<DeliverError>,
{
    let delivered = deliver::<E>(context, pod, arrival).await?;
    delivered.relay(client, context, None).await;
    Ok(())
}

/// A connection admitted and delivered to its application, recorded by the
/// destination reporter.
pub struct Delivered<'a> {
    admission: Admission<'a>,
    app: TcpStream,
    _slot: Slot<'a>,
    record: ConnectionRecord<'a>,
}

/// Decides and connects, the destination's steps of every path (tunnel,
/// plaintext, same node): opens the connection's record, checks the
/// destination is `pod`'s, admits it by policy and connects it to the
/// application in `pod` from the peer's address. A refusal or failure is
/// recorded, and returned.
pub async fn deliver<'a, E>(
    context: &'a ProxyContext,
    pod: &'a Arc<LocalPod>,
    arrival: Arrival<'_>,
) -> Result<Delivered<'a>, E>
where
    E: From<Denied> + From<DeliverError>,
{
    let registry = context.registry.borrow().clone();
    let mut record = ConnectionRecord::open(context, opening(&registry, pod, &arrival));
    drop(registry);
    if let Some(session) = arrival.session {
        record.carried_by(session.clone());
    }
    let (peer, destination) = (arrival.peer.ip(), arrival.destination);
    if let Err(err) = deliver::check_destination(pod, destination) {
        record.failed(ResponseFlags::Connect, &err);
        return Err(err.into());
    }
    let admission = match authorize::admit(context, pod, peer, arrival.source, destination) {
        Ok(admission) => admission,
        Err(denied) => {
            record.failed(ResponseFlags::Deny, &denied);
            return Err(denied.into());
        }
    };
    match deliver::to_app(context, pod, destination, peer).await {
        Ok((app, slot)) => Ok(Delivered {
            admission,
            app,
            _slot: slot,
            record,
        }),
        Err(err) => {
            record.failed(ResponseFlags::Connect, &err);
            Err(err.into())
        }
    }
}

/// What the destination's record knows of an arrival at `pod`: the source
/// workload by its address, kept only if it matches the proven identity.
fn opening<'r>(registry: &'r Registry, pod: &LocalPod, arrival: &Arrival<'r>) -> Opening<'r> {
    let by_address = registry.pod_at(arrival.peer.ip());
    let source = match (by_address, arrival.source) {
        (Some(found), Some(identity))
            if identity.namespace() == found.namespace
                && identity.service_account() == found.service_account =>
        {
            Party::pod(found, Some(identity))
        }
        (_, Some(identity)) => Party::identity(identity),
        (Some(found), None) => Party::pod(found, None),
        (None, None) => Party::unknown(),
    };
    let service = arrival.service.or_else(|| {
        let this = registry.pod_at(arrival.destination.ip())?;
        registry.service_of(this, arrival.destination.port())
    });
    Opening {
        reporter: Reporter::Destination,
        via: arrival.via,
        client: arrival.peer,
        destination: arrival.destination,
        endpoint: arrival.destination,
        source,
        target: Party::local(pod),
        service,
        security: if arrival.source.is_some() {
            SecurityPolicy::MutualTls
        } else {
            SecurityPolicy::Unknown
        },
    }
}

impl Delivered<'_> {
    /// Copies between `client` and the application until either is done
    /// (or policy revokes the connection), counting the bytes also in
    /// `source` (the same-node path's source record), and records it.
    /// Returns how it ended.
    pub async fn relay<S>(
        mut self,
        client: &mut S,
        context: &ProxyContext,
        source: Option<&Meters>,
    ) -> Ending
    where
        S: AsyncRead + AsyncWrite + Resettable + Unpin,
    {
        let revoked = self.admission.revoked();
        let own = self.record.meters();
        let both = [own, source.unwrap_or(own)];
        let meters = if source.is_some() {
            &both[..]
        } else {
            &both[..1]
        };
        let idle = context.idle_timeout;
        let ending = copy::relay(client, &mut self.app, idle, revoked, meters).await;
        self.record.ended(&ending);
        ending
    }
}
