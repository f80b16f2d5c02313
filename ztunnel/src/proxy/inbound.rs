//! Inbound plaintext: connections arriving at an enrolled pod's address from
//! outside the mesh, handed by `sk_lookup` to the daemon's inbound listener
//! in the pod. They carry no identity.
//!
//! Unless policy refuses them (STRICT, or an AuthorizationPolicy), they are
//! delivered to the application at the address and port they were sent to,
//! from inside the pod.

use std::{net::SocketAddr, sync::Arc, time::Instant};

use tokio::net::{TcpListener, TcpStream};

use super::{
    ProxyContext, accept_each,
    authorize::Denied,
    copy::{Relayed, Resettable},
    deliver::DeliverError,
    destination::{self, Arrival},
    pod::LocalPod,
};

/// Why one inbound connection failed.
#[derive(Debug, thiserror::Error)]
pub enum InboundError {
    /// The local address could not be read.
    #[error("reading the original destination: {0}")]
    LocalAddr(std::io::Error),
    /// The application could not be reached.
    #[error(transparent)]
    Deliver(#[from] DeliverError),
    /// Policy refused it.
    #[error("denied: {0}")]
    Denied(#[from] Denied),
}

/// Accepts connections on `listener` for `pod` until the task is dropped.
pub async fn serve(listener: TcpListener, pod: Arc<LocalPod>, context: Arc<ProxyContext>) {
    let name = pod.name.clone();
    accept_each(listener, &context, &name, "inbound", |stream, peer, running| {
        let (pod, context) = (pod.clone(), context.clone());
        async move {
            let _running = running;
            let started = Instant::now();
            match handle(stream, peer, &pod, &context).await {
                Ok((destination, relayed)) => tracing::info!(
                    dst.pod = %pod.name,
                    dst.namespace = %pod.namespace,
                    dst.service_account = %pod.service_account,
                    src.addr = %peer,
                    dst.addr = %destination,
                    tls = false,
                    sent = relayed.received,
                    received = relayed.sent,
                    duration_ms = started.elapsed().as_millis() as u64,
                    end = %relayed.ending,
                    "inbound connection closed"
                ),
                Err(err) => {
                    tracing::warn!(dst.pod = %pod.name, %peer, "inbound connection failed: {err}")
                }
            }
        }
    })
    .await;
}

/// One connection: its destination is the local address it arrived at
/// (`sk_lookup` keeps it); deliver there, copy. Returns the destination and
/// what was copied.
async fn handle(
    mut client: TcpStream,
    peer: SocketAddr,
    pod: &Arc<LocalPod>,
    context: &ProxyContext,
) -> Result<(SocketAddr, Relayed), InboundError> {
    let started = Instant::now();
    let destination = client.local_addr().map_err(InboundError::LocalAddr)?;
    let _ = client.set_nodelay(true);
    // Until it ends cleanly, a cut reaches the client as a reset.
    client.reset_on_close(true);
    let arrival = Arrival {
        peer,
        source: None,
        destination,
        session: None,
        route: "inbound_plaintext",
        started,
    };
    let relayed = destination::serve::<_, InboundError>(&mut client, arrival, pod, context).await?;
    Ok((destination, relayed))
}
