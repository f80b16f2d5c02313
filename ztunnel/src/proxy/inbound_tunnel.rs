//! Inbound through the tunnel: mutual TLS from another node's daemon,
//! accepted on the pod's tunnel listener (`<pod IP>:15008`).
//!
//! The daemon presents the pod's workload certificate and requires the
//! client's (chained to the trust bundle, a workload identity of the trust
//! domain); the preamble names the destination, which must be this pod; then
//! the connection is delivered to the application from inside the pod.

use std::{net::SocketAddr, sync::Arc, time::Instant};

use tokio::net::{TcpListener, TcpStream};

use super::{
    ProxyContext, accept_each,
    authorize::{self, Denied},
    copy::{self, Relayed},
    deliver::{self, DeliverError},
    pod::LocalPod,
    record,
};
use crate::tunnel::{self, Session, TunnelError};
use crate::{access_log::Addresses, metrics::TcpRecord};

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
                Ok((destination, session, relayed)) => tracing::info!(
                    dst.pod = %pod.name,
                    dst.namespace = %pod.namespace,
                    dst.service_account = %pod.service_account,
                    src.addr = %peer,
                    src.identity = %session.peer,
                    dst.addr = %destination,
                    tls = true,
                    tls.cipher = %session.cipher,
                    tls.resumed = session.resumed,
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

/// One tunnel: handshake, preamble, deliver, copy.
async fn handle(
    tcp: TcpStream,
    peer: SocketAddr,
    pod: &Arc<LocalPod>,
    context: &ProxyContext,
) -> Result<(SocketAddr, Session, Relayed), InboundTunnelError> {
    let started = Instant::now();
    let _ = tcp.set_nodelay(true);
    let config = context
        .tunnel
        .server(&pod.identity)
        .map_err(TunnelError::from)?;
    let (mut tls, session, preamble) = tunnel::server::accept(tcp, config).await?;
    let destination = preamble.destination;
    let mut admission =
        authorize::admit(context, pod, peer.ip(), Some(&session.peer), destination)?;
    // The tunnel comes from the source pod's address (its daemon connects
    // from inside the source pod): the application sees that address.
    let mut app = deliver::to_app(pod, destination, peer.ip()).await?;
    let registry = context.registry.borrow().clone();
    let labels = record::destination_reporter(&registry, pod, peer.ip(), Some(&session.peer));
    let mut tcp = TcpRecord::open(&context.metrics, labels);
    let relayed = copy::relay(
        &mut tls,
        &mut app,
        context.idle_timeout,
        admission.revoked(),
    )
    .await;
    (tcp.sent, tcp.received) = (relayed.received, relayed.sent);
    let addresses = Addresses {
        src: peer,
        dst: destination,
        endpoint: destination,
    };
    let (labels, duration) = (tcp.labels(), started.elapsed());
    let tls = Some(&session);
    record::access_log(
        context,
        labels,
        "inbound_tunnel",
        addresses,
        &relayed,
        duration,
        tls,
    );
    Ok((destination, session, relayed))
}
