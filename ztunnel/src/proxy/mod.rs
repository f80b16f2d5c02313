//! The proxy: what happens to a connection once the daemon has accepted it.
//!
//! Each path reads top to bottom in one function: accept, identify, decide,
//! connect, copy, record.
//! - [`outbound`]: a pod's own connections, from its outbound listener; by
//!   [`route`] to the tunnel, a pod of this node, or plain passthrough.
//! - [`inbound_tunnel`]: mutual TLS from another node's daemon.
//! - [`inbound`]: plaintext arriving at a pod.
//! - [`authorize`]: the destination side's policy check, on every inbound path.
//! - [`deliver`]: the last hop of every inbound path, to the application.
//! - [`copy`]: the byte copy all of them end with.

pub mod admitted;
pub mod authorize;
pub mod connect;
pub mod copy;
pub mod deliver;
pub mod inbound;
pub mod inbound_tunnel;
pub mod outbound;
pub mod pod;
pub mod record;
pub mod route;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
};

use crate::{
    access_log::AccessLog,
    identity::TrustDomain,
    metrics::Metrics,
    policy::PolicySet,
    registry::{Enrolment, Registry},
    tunnel::configs::TunnelConfigs,
};

/// What every connection of the node needs, shared by all of them.
pub struct ProxyContext {
    /// This node's name.
    pub node: String,
    /// Which pods are in the mesh.
    pub enrolment: Enrolment,
    /// Trust domain of workload identities.
    pub trust_domain: TrustDomain,
    /// The current registry.
    pub registry: watch::Receiver<Arc<Registry>>,
    /// The tunnel's TLS configurations.
    pub tunnel: TunnelConfigs,
    /// The policies in force.
    pub policies: watch::Receiver<Arc<PolicySet>>,
    /// The captured pods of this node.
    pub pods: pod::LocalPods,
    /// Connections policy admitted that are still open.
    pub connections: admitted::OpenConnections,
    /// Where connections and decisions are counted.
    pub metrics: Arc<Metrics>,
    /// Where each connection is recorded when it closes.
    pub access_log: AccessLog,
    /// A connection on which nothing moves this long is closed.
    pub idle_timeout: Duration,
    /// Spreads service connections over endpoints.
    pub endpoints: RoundRobin,
}

/// Round-robin choice among service endpoints.
#[derive(Debug, Default)]
pub struct RoundRobin(AtomicUsize);

impl RoundRobin {
    /// Picks one of `n` endpoints.
    pub fn pick(&self, n: usize) -> usize {
        self.0.fetch_add(1, Ordering::Relaxed) % n.max(1)
    }
}

/// Accepts connections on `listener` (a listener of pod `pod`) until the
/// task is dropped, running `handle` on each in a task of its own. `what`
/// names the listener in logs.
pub(crate) async fn accept_each<F, Fut>(listener: TcpListener, pod: &str, what: &str, handle: F)
where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                tokio::spawn(handle(stream, peer));
            }
            Err(err) => tracing::warn!(pod, "{what} accept failed: {err}"),
        }
    }
}
