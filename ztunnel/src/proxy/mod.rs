//! The proxy: what happens to a connection once the daemon has accepted it.
//!
//! Each path reads top to bottom in one function: accept, identify, decide,
//! connect, copy, record.
//! - [`outbound`]: a pod's own connections, from its outbound listener; by
//!   [`route`] to the tunnel, a pod of this node, or plain passthrough.
//! - [`inbound_tunnel`]: mutual TLS from another node's daemon; with HBONE,
//!   [`inbound_hbone`] serves its streams.
//! - [`inbound`]: plaintext arriving at a pod.
//! - [`destination`]: what both inbound paths end with once the source is
//!   known: decide, deliver, copy, record.
//! - [`authorize`]: the destination side's policy check, on every inbound path.
//! - [`deliver`]: the last hop of every inbound path, to the application.
//! - [`copy`]: the byte copy all of them end with.
//! - [`limits`]: what keeps one pod or peer from exhausting the daemon.

pub mod admitted;
pub mod authorize;
pub mod connect;
pub mod copy;
pub mod deliver;
pub mod destination;
pub mod inbound;
pub mod inbound_hbone;
pub mod inbound_tunnel;
pub mod limits;
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
    accept::Acceptor,
    access_log::AccessLog,
    identity::TrustDomain,
    metrics::{ListenerLabels, Metrics, Reporter},
    policy::PolicySet,
    registry::{Enrolment, Registry},
    tunnel::{configs::TunnelConfigs, hbone_pool::HbonePool, plaintext::Transport, pool::Pool},
};

/// What every connection of the node needs, shared by all of them.
pub struct ProxyContext {
    /// This node's name.
    pub node: String,
    /// The cluster it is in (Istio's CLUSTER_ID), as HBONE's baggage names it.
    pub cluster: String,
    /// Which pods are in the mesh.
    pub enrolment: Enrolment,
    /// Trust domain of workload identities.
    pub trust_domain: TrustDomain,
    /// The current registry.
    pub registry: watch::Receiver<Arc<Registry>>,
    /// The tunnel's TLS configurations.
    pub tunnel: TunnelConfigs,
    /// How tunnels are carried: mutual TLS, except in benchmarks.
    pub transport: Transport,
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
    /// What one pod or peer may hold of the daemon.
    pub limits: limits::Limits,
    /// Tunnel handshakes in progress, by source address.
    pub handshakes: limits::PendingHandshakes,
    /// Spreads service connections over endpoints.
    pub endpoints: RoundRobin,
    /// The connections being proxied.
    pub active: Active,
    /// Idle tunnels to other nodes, for the next connection.
    pub pool: Pool,
    /// HBONE connections to other nodes' daemons, shared by their streams.
    pub hbone: HbonePool,
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

/// A pod's listeners.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// Its applications' connections out.
    Outbound,
    /// Plaintext arriving at it.
    Inbound,
    /// Tunnels from other nodes.
    Tunnel,
}

impl Listener {
    /// Its name in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::Outbound => "outbound",
            Self::Inbound => "inbound",
            Self::Tunnel => "tunnel",
        }
    }

    /// The side a connection accepted on it is reported as.
    pub fn reporter(self) -> Reporter {
        match self {
            Self::Outbound => Reporter::Source,
            Self::Inbound | Self::Tunnel => Reporter::Destination,
        }
    }
}

/// Accepts connections on `listener` (pod `pod`'s listener `what`) until
/// the task is dropped, running `handle` on each in a task of its own, with
/// the guard that counts it in `active` (a handler that waits between
/// connections, as a tunnel does, drops it meanwhile); each accepted socket
/// is counted open until its task ends.
///
/// A failed accept is counted and retried after a pause
/// ([`crate::accept`]).
pub(crate) async fn accept_each<F, Fut>(
    listener: TcpListener,
    context: &ProxyContext,
    pod: &str,
    what: Listener,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr, Running) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut acceptor = Acceptor::new(listener);
    context.active.accepting().await;
    loop {
        let (stream, peer) = acceptor
            .accept(|err, backoff| {
                let name = what.name();
                let labels = ListenerLabels { listener: name };
                context.metrics.accept_errors.get_or_create(&labels).inc();
                tracing::warn!(pod, "{name} accept failed, retrying in {backoff:?}: {err}");
            })
            .await;
        let open = context.metrics.socket_opened(what.reporter());
        let handled = handle(stream, peer, context.active.enter());
        tokio::spawn(async move {
            let _open = open;
            handled.await
        });
    }
}

/// How many connections are being proxied, whether the daemon accepts yet
/// (a daemon taking over holds its listeners until it can serve) and
/// whether it is draining: what start-up and shutdown wait for.
#[derive(Debug)]
pub struct Active {
    count: Arc<watch::Sender<usize>>,
    /// Tunnels waiting between connections.
    idle: Arc<watch::Sender<usize>>,
    accepting: watch::Sender<bool>,
    draining: watch::Sender<bool>,
    handed_over: std::sync::atomic::AtomicBool,
}

impl Default for Active {
    fn default() -> Self {
        Self {
            count: Arc::new(watch::Sender::new(0)),
            idle: Arc::new(watch::Sender::new(0)),
            accepting: watch::Sender::new(true),
            draining: watch::Sender::new(false),
            handed_over: Default::default(),
        }
    }
}

/// One running connection, counted in [`Active`] until dropped.
pub struct Running(Arc<watch::Sender<usize>>);

impl Active {
    /// Counts a connection until the returned guard is dropped.
    pub fn enter(&self) -> Running {
        self.count.send_modify(|n| *n += 1);
        Running(self.count.clone())
    }

    /// Counts a tunnel waiting between connections until the returned guard
    /// is dropped.
    pub fn enter_idle(&self) -> Running {
        self.idle.send_modify(|n| *n += 1);
        Running(self.idle.clone())
    }

    /// The number of running connections.
    pub fn count(&self) -> usize {
        *self.count.borrow()
    }

    /// Holds every listener's accepting until [`Active::accept`]: the
    /// daemon it takes over from still serves them.
    pub fn hold(&self) {
        self.accepting.send_replace(false);
    }

    /// Lets the listeners accept.
    pub fn accept(&self) {
        self.accepting.send_replace(true);
    }

    /// Completes once the listeners may accept (not tied to `self`, so a
    /// task started before the proxy can wait for it).
    pub fn accepting(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut accepting = self.accepting.subscribe();
        async move {
            // Closed only when the daemon stops: then nothing waits anyway.
            let _ = accepting.wait_for(|accepting| *accepting).await;
        }
    }

    /// Starts draining: tunnels are not offered for another connection,
    /// and those waiting between connections close (after a hand-over they
    /// wait for their source to let them go).
    pub fn drain(&self) {
        self.draining.send_replace(true);
    }

    /// Marks that a successor accepts now (before [`Active::drain`]).
    pub fn hand_over(&self) {
        self.handed_over
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether a successor accepts now.
    pub fn handed_over(&self) -> bool {
        self.handed_over.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether draining has started.
    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Completes once draining has started.
    pub async fn draining(&self) {
        let mut draining = self.draining.subscribe();
        // The sender lives in `self`, so the channel never closes here.
        let _ = draining.wait_for(|draining| *draining).await;
    }

    /// Completes when no connection is running (and, after a hand-over, no
    /// tunnel waits between connections: its source may still send one).
    pub async fn drained(&self) {
        let mut count = self.count.subscribe();
        let _ = count.wait_for(|n| *n == 0).await;
        if self.handed_over() {
            let mut idle = self.idle.subscribe();
            let _ = idle.wait_for(|n| *n == 0).await;
            // A connection that arrived on an idle tunnel meanwhile.
            let _ = count.wait_for(|n| *n == 0).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}
