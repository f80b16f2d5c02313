//! Inbound through the tunnel: mutual TLS from another node's daemon,
//! accepted on the pod's tunnel listener (`<pod IP>:15008`).
//!
//! The daemon presents the pod's workload certificate and requires the
//! client's (chained to the trust bundle, a workload identity of the trust
//! domain). With the native protocol the tunnel then carries connections one
//! after another: each preamble names a destination, which must be this pod,
//! and the connection is delivered to the application from inside the pod.
//! With HBONE, [`inbound_hbone`] takes the session over.

use std::{net::SocketAddr, pin::Pin, sync::Arc};

use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
};

use super::{
    Listener, ProxyContext, Running, accept_each,
    authorize::Denied,
    copy::Resettable,
    deliver::DeliverError,
    destination::{self, Arrival},
    inbound_hbone,
    limits::{self, Handshake},
    pod::LocalPod,
    record::{self, Via},
};
use crate::{
    identity::Identity,
    tunnel::{
        self, HANDSHAKE_TIMEOUT, Protocol, Session, TunnelError,
        chunked::{self, Chunked},
        plaintext::Transport,
        pool,
    },
};

/// Why one tunnelled connection was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum InboundTunnelError {
    /// The handshake or preamble failed: refused.
    #[error(transparent)]
    Tunnel(#[from] TunnelError),
    /// The application could not be reached, or the preamble named another
    /// pod (recorded).
    #[error(transparent)]
    Deliver(#[from] DeliverError),
    /// Policy refused it (recorded).
    #[error("denied: {0}")]
    Denied(#[from] Denied),
    /// Benchmark relay only: no pod of the registry has the source address.
    #[error("no pod has source address {0} (benchmark plaintext tunnel)")]
    UnknownSource(SocketAddr),
}

/// Accepts tunnels on `listener` for `pod` until the task is dropped.
pub async fn serve(listener: TcpListener, pod: Arc<LocalPod>, context: Arc<ProxyContext>) {
    let name = pod.name.clone();
    accept_each(
        listener,
        &context,
        &name,
        Listener::Tunnel,
        |stream, peer, running| {
            let (pod, context) = (pod.clone(), context.clone());
            async move {
                // Counted from accept to the end of the handshake.
                let handshake = match context.handshakes.begin(peer.ip(), &context.limits) {
                    Ok(handshake) => handshake,
                    Err(refused) => {
                        let label = refused.limit_label();
                        limits::refuse(stream, peer, &pod.name, label, &refused, &context.metrics);
                        return;
                    }
                };
                let err = match handle(stream, peer, &pod, &context, handshake, running).await {
                    // A connection's refusal or failure is in its record.
                    Ok(())
                    | Err(InboundTunnelError::Deliver(_) | InboundTunnelError::Denied(_)) => {
                        return;
                    }
                    Err(err) => err,
                };
                if let InboundTunnelError::Tunnel(failure) = &err {
                    record::tunnel_failure(&context, "server", failure, peer);
                }
                tracing::warn!(
                    dst.pod = %pod.name,
                    src.addr = %peer,
                    "inbound tunnel refused: {err}"
                )
            }
        },
    )
    .await;
}

/// One tunnel: the handshake, then the connections it carries.
///
/// The handshake is boxed: awaited in place, its state would stay in this
/// future, allocated for the whole life of the tunnel.
async fn handle(
    tcp: TcpStream,
    peer: SocketAddr,
    pod: &Arc<LocalPod>,
    context: &ProxyContext,
    handshake: Handshake<'_>,
    running: Running,
) -> Result<(), InboundTunnelError> {
    let _ = tcp.set_nodelay(true);
    match context.transport {
        Transport::MutualTls => {
            context.tunnel.first_certificate(&pod.identity).await;
            let config = context
                .tunnel
                .server(&pod.identity)
                .map_err(TunnelError::from)?;
            let (tls, session) = Box::pin(tunnel::server::accept(tcp, config)).await?;
            drop(handshake);
            if session.protocol == Protocol::Hbone {
                // Its streams count as running connections, each on its own.
                drop(running);
                return Box::pin(inbound_hbone::carry(tls, peer, session, pod, context)).await;
            }
            let tunnel = Accepted {
                stream: tls,
                peer,
                source: session.peer.clone(),
                session: Some(session),
            };
            carry(tunnel, pod, context, running).await
        }
        Transport::PlaintextForBenchmarks => {
            drop(handshake);
            let tunnel = Accepted {
                stream: tcp,
                peer,
                source: source_by_address(context, peer)?,
                session: None,
            };
            carry(tunnel, pod, context, running).await
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

/// A tunnel past its handshake.
struct Accepted<S> {
    stream: S,
    /// The source daemon's address (the source pod's).
    peer: SocketAddr,
    /// The source workload.
    source: Identity,
    /// The TLS session; none in the benchmark relay.
    session: Option<Session>,
}

/// Carries the connections of `tunnel` one after another: each announced by
/// its preamble, then decided, delivered, copied and recorded. Between
/// connections the tunnel counts as no running connection and closes when
/// the source sends nothing for [`pool::SERVER_IDLE`]; while the daemon
/// drains it is not offered again, and counts as running until its source
/// lets it go; a connection that does not end cleanly ends the tunnel
/// (boxed, see [`handle`]).
fn carry<'a, S>(
    tunnel: Accepted<S>,
    pod: &'a Arc<LocalPod>,
    context: &'a ProxyContext,
    running: Running,
) -> Pin<Box<impl Future<Output = Result<(), InboundTunnelError>> + 'a>>
where
    S: AsyncRead + AsyncWrite + Resettable + Unpin + 'a,
{
    Box::pin(async move {
        let Accepted {
            mut stream,
            peer,
            source,
            mut session,
        } = tunnel;
        let mut running = Some(running);
        loop {
            let first = running.is_some();
            let wait = if first {
                HANDSHAKE_TIMEOUT
            } else {
                pool::SERVER_IDLE
            };
            // Draining after a hand-over, a tunnel idle between connections is
            // kept: its source may have taken it from its pool already, and
            // closing it now would fail that connection. Counted as idle, so
            // the drain waits for the source to send one more connection
            // (served, then the tunnel closes) or to close it (idle links
            // within `pool::IDLE_TIMEOUT`); the read is never cancelled midway.
            // On a plain stop it closes at once (the pods fail closed anyway).
            let next = {
                let _idle = (!first).then(|| context.active.enter_idle());
                let next = tunnel::next_connection(&mut stream, wait);
                tokio::pin!(next);
                let mut kept_while_draining = false;
                loop {
                    tokio::select! {
                        next = &mut next => break next?,
                        () = context.active.draining(), if !first && !kept_while_draining => {
                            if !context.active.handed_over() {
                                break None;
                            }
                            kept_while_draining = true;
                        }
                    }
                }
            };
            let Some(preamble) = next else {
                return if first {
                    let why = "no connection was announced: the source closed the tunnel \
                               or sent nothing in time";
                    let err = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, why);
                    Err(TunnelError::Preamble(err).into())
                } else {
                    Ok(())
                };
            };
            let _running = running.take().unwrap_or_else(|| context.active.enter());
            // The tunnel comes from the source pod's address (its daemon
            // connects from inside the source pod): the application sees it.
            let arrival = Arrival {
                peer,
                source: Some(&source),
                destination: preamble.destination,
                session: session.as_ref(),
                via: Via::InboundTunnel,
                service: None,
            };
            let mut connection = Chunked::new(&mut stream);
            destination::serve::<_, InboundTunnelError>(&mut connection, arrival, pod, context)
                .await?;
            let reusable = connection.finished();
            // Draining: no "done", so the source does not offer it again.
            if !reusable || context.active.is_draining() {
                return Ok(());
            }
            // Over on this side: say so, so the source may send the next connection.
            let done = tokio::time::timeout(HANDSHAKE_TIMEOUT, chunked::send_done(&mut stream));
            if !matches!(done.await, Ok(Ok(()))) {
                return Ok(());
            }
            if let Some(session) = &mut session {
                session.reused = true;
            }
        }
    })
}
