//! Inbound through the tunnel: mutual TLS from another node's daemon,
//! accepted on the pod's tunnel listener (`<pod IP>:15008`).
//!
//! The daemon presents the pod's workload certificate and requires the
//! client's (chained to the trust bundle, a workload identity of the trust
//! domain); the preamble names the destination, which must be this pod; then
//! the connection is delivered to the application from inside the pod.

use std::{net::SocketAddr, pin::Pin, sync::Arc, time::Instant};

use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
};

use super::{
    ProxyContext, accept_each,
    authorize::Denied,
    copy::{Relayed, Resettable},
    deliver::DeliverError,
    destination::{self, Arrival},
    pod::LocalPod,
    record,
};
use crate::{
    identity::Identity,
    tunnel::{
        self, Session, TunnelError,
        plaintext::{self, Transport},
    },
};

/// Why one tunnelled connection was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum InboundTunnelError {
    /// The handshake or preamble failed: refused.
    #[error(transparent)]
    Tunnel(#[from] TunnelError),
    /// The application could not be reached, or the preamble named another pod.
    #[error(transparent)]
    Deliver(#[from] DeliverError),
    /// Policy refused it.
    #[error("denied: {0}")]
    Denied(#[from] Denied),
    /// Benchmark relay only: no pod of the registry has the source address.
    #[error("no pod has source address {0} (benchmark plaintext tunnel)")]
    UnknownSource(SocketAddr),
}

/// Accepts tunnels on `listener` for `pod` until the task is dropped.
pub async fn serve(listener: TcpListener, pod: Arc<LocalPod>, context: Arc<ProxyContext>) {
    let name = pod.name.clone();
    let active = &context.active;
    accept_each(listener, active, &name, "tunnel", |stream, peer| {
        let (pod, context) = (pod.clone(), context.clone());
        async move {
            let started = Instant::now();
            match handle(stream, peer, &pod, &context).await {
                Ok((destination, source, session, relayed)) => tracing::info!(
                    dst.pod = %pod.name,
                    dst.namespace = %pod.namespace,
                    dst.service_account = %pod.service_account,
                    src.addr = %peer,
                    src.identity = %source,
                    dst.addr = %destination,
                    tls = session.is_some(),
                    tls.cipher = session.as_ref().map(|s| s.cipher.as_str()),
                    tls.resumed = session.as_ref().map(|s| s.resumed),
                    sent = relayed.received,
                    received = relayed.sent,
                    duration_ms = started.elapsed().as_millis() as u64,
                    end = %relayed.ending,
                    "inbound connection closed"
                ),
                Err(err) => {
                    if let InboundTunnelError::Tunnel(failure) = &err {
                        record::tunnel_failure(&context, "server", failure, peer);
                    }
                    tracing::warn!(
                        dst.pod = %pod.name,
                        src.addr = %peer,
                        "inbound tunnel refused: {err}"
                    )
                }
            }
        }
    })
    .await;
}

/// What a finished tunnel did: its destination, the source identity, the
/// TLS session (none in the benchmark relay) and the copy.
type Finished = (SocketAddr, Identity, Option<Session>, Relayed);

/// One tunnel: handshake and preamble, then [`deliver_and_copy`].
///
/// The handshake and the rest are boxed: awaited in place, their states
/// made this future, allocated for the whole life of the connection, 12 KiB
/// (the two together are under 7 KiB, and the handshake's is freed once it
/// is done).
async fn handle(
    mut tcp: TcpStream,
    peer: SocketAddr,
    pod: &Arc<LocalPod>,
    context: &ProxyContext,
) -> Result<Finished, InboundTunnelError> {
    let started = Instant::now();
    let _ = tcp.set_nodelay(true);
    match context.transport {
        Transport::MutualTls => {
            let config = context
                .tunnel
                .server(&pod.identity)
                .map_err(TunnelError::from)?;
            let accepted = Box::pin(tunnel::server::accept(tcp, config));
            let (tls, session, preamble) = accepted.await?;
            let tunnel = Accepted {
                stream: tls,
                peer,
                source: session.peer.clone(),
                session: Some(session),
            };
            deliver_and_copy(tunnel, preamble.destination, pod, context, started).await
        }
        Transport::PlaintextForBenchmarks => {
            let preamble = plaintext::accept(&mut tcp).await?;
            let tunnel = Accepted {
                stream: tcp,
                peer,
                source: source_by_address(context, peer)?,
                session: None,
            };
            deliver_and_copy(tunnel, preamble.destination, pod, context, started).await
        }
    }
}

/// Benchmark relay only: the source is whoever the registry says has the
/// address the connection comes from (nothing proves it).
fn source_by_address(
    context: &ProxyContext,
    peer: SocketAddr,
) -> Result<Identity, InboundTunnelError> {
    let registry = context.registry.borrow().clone();
    registry
        .pod_at(peer.ip())
        .and_then(|source| {
            let trust_domain = context.trust_domain.clone();
            Identity::new(trust_domain, &source.namespace, &source.service_account).ok()
        })
        .ok_or(InboundTunnelError::UnknownSource(peer))
}

/// A tunnel past its handshake and preamble.
struct Accepted<S> {
    stream: S,
    /// The source daemon's address (the source pod's).
    peer: SocketAddr,
    /// The source workload.
    source: Identity,
    /// The TLS session; none in the benchmark relay.
    session: Option<Session>,
}

/// Decide, deliver, copy and record `tunnel`, whose preamble named
/// `destination` (boxed, see [`handle`]).
fn deliver_and_copy<'a, S>(
    tunnel: Accepted<S>,
    destination: SocketAddr,
    pod: &'a Arc<LocalPod>,
    context: &'a ProxyContext,
    started: Instant,
) -> Pin<Box<impl Future<Output = Result<Finished, InboundTunnelError>> + 'a>>
where
    S: AsyncRead + AsyncWrite + Resettable + Unpin + 'a,
{
    Box::pin(async move {
        let Accepted {
            mut stream,
            peer,
            source,
            session,
        } = tunnel;
        // The tunnel comes from the source pod's address (its daemon connects
        // from inside the source pod): the application sees that address.
        let arrival = Arrival {
            peer,
            source: Some(&source),
            destination,
            session: session.as_ref(),
            route: "inbound_tunnel",
            started,
        };
        let relayed =
            destination::serve::<_, InboundTunnelError>(&mut stream, arrival, pod, context).await?;
        Ok((destination, source, session, relayed))
    })
}
