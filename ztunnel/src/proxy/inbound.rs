//! Inbound plaintext: connections arriving at an enrolled pod's address from
//! outside the mesh, handed by `sk_lookup` to the daemon's inbound listener
//! in the pod. They carry no identity.
//!
//! Unless policy refuses them (STRICT, or an AuthorizationPolicy), they are
//! delivered to the application at the address and port they were sent to,
//! from inside the pod.

use std::{net::SocketAddr, sync::Arc};

use tokio::net::{TcpListener, TcpStream};

use super::{
    Listener, ProxyContext, accept_each,
    authorize::Denied,
    copy::Resettable,
    deliver::DeliverError,
    destination::{self, Arrival},
    pod::LocalPod,
    record::Via,
};

/// Why one inbound connection failed.
#[derive(Debug, thiserror::Error)]
pub enum InboundError {
    /// The local address could not be read.
    #[error("reading the original destination: {0}")]
    LocalAddr(std::io::Error),
    /// The application could not be reached (recorded).
    #[error(transparent)]
    Deliver(#[from] DeliverError),
    /// Policy refused it (recorded).
    #[error("denied: {0}")]
    Denied(#[from] Denied),
}

/// Accepts connections on `listener` for `pod` until the task is dropped.
pub async fn serve(listener: TcpListener, pod: Arc<LocalPod>, context: Arc<ProxyContext>) {
    let name = pod.name.clone();
    accept_each(
        listener,
        &context,
        &name,
        Listener::Inbound,
        |stream, peer, running| {
            let (pod, context) = (pod.clone(), context.clone());
            async move {
                let _running = running;
                // Refusals and failures after the arrival are in its record.
                if let Err(InboundError::LocalAddr(err)) =
                    handle(stream, peer, &pod, &context).await
                {
                    tracing::warn!(dst.pod = %pod.name, %peer, "inbound connection failed: {err}")
                }
            }
        },
    )
    .await;
}

/// One connection: its destination is the local address it arrived at
/// (`sk_lookup` keeps it); decide, deliver there, copy, record.
async fn handle(
    mut client: TcpStream,
    peer: SocketAddr,
    pod: &Arc<LocalPod>,
    context: &ProxyContext,
) -> Result<(), InboundError> {
    let destination = client.local_addr().map_err(InboundError::LocalAddr)?;
    let _ = client.set_nodelay(true);
    // Until it ends cleanly, a cut reaches the client as a reset.
    client.reset_on_close(true);
    let arrival = Arrival {
        peer,
        source: None,
        destination,
        session: None,
        via: Via::InboundPlaintext,
        service: None,
    };
    destination::serve::<_, InboundError>(&mut client, arrival, pod, context).await
}
