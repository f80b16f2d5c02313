//! `ztunnel node`: the per-node daemon, wiring its parts together.
//!
//! It watches the registry; from the enrolled pods on this node it derives
//! which pods to capture ([`capture`]) and which identities to hold
//! certificates for (the certificate manager), and keeps both in step.

pub mod capture;
pub mod check;
pub mod handover;
pub mod policies;

use std::{
    collections::BTreeSet,
    future::Future,
    net::SocketAddr,
    os::fd::AsFd,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};

use futures_util::future::BoxFuture;
use tokio::sync::watch;

use crate::{
    access_log::AccessLog,
    admin::{self, AdminState, LogControl},
    identity::TrustDomain,
    identity::{
        CaClient, CaClientConfig, CertManager, Identity, ManagerConfig, TrustBundle,
        WorkloadCertificate, bundle::BundleError, ca_client::CaClientError, manager::Certificates,
    },
    kubernetes::{self, KubeConfig, KubeError},
    metrics::{IdentityLabels, Metrics},
    policy::{LoadError, PolicySet},
    proxy::{ProxyContext, limits::Limits},
    redirect::RedirectError,
    registry::{Enrolment, Pod, Registry, RegistryError},
    reload::Watched,
    tls::TunnelTls,
    tunnel::{configs::TunnelConfigs, plaintext::Transport, pool::Pool},
};

/// Everything `ztunnel node` needs to run.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This node's name, as pods name it.
    pub node: String,
    /// Where the registry and the policies come from.
    pub source: Source,
    /// Which pods are in the mesh.
    pub enrolment: Enrolment,
    /// Trust domain of the workload identities.
    pub trust_domain: TrustDomain,
    /// How to reach the CA.
    pub ca: CaClientConfig,
    /// How certificates are requested and retried.
    pub certificates: ManagerConfig,
    /// The roots peers are verified against (reloaded on change).
    pub trust_bundle: PathBuf,
    /// Address of the admin endpoint.
    pub admin: SocketAddr,
    /// Where the eBPF programs' links and maps are pinned (on bpffs); one
    /// directory per daemon.
    pub bpf_pin_dir: PathBuf,
    /// The cgroup v2 root the programs attach at (in a container: the host's,
    /// mounted); none: the first cgroup2 mount.
    pub cgroup_root: Option<PathBuf>,
    /// A proxied connection on which nothing moves this long is closed.
    pub idle_timeout: Duration,
    /// How tunnel TLS sessions are set up (cipher suites, resumption).
    pub tunnel_tls: TunnelTls,
    /// How tunnels are carried: mutual TLS, or plain TCP in benchmarks.
    pub transport: Transport,
    /// Whether a tunnel carries the next connection between the same two
    /// workloads once its connection ends (off: one tunnel per connection).
    pub tunnel_reuse: bool,
    /// Whether the hops inside pods move their bytes socket to socket
    /// (sockmap) rather than through loopback TCP, where the kernel can.
    pub socket_acceleration: bool,
    /// The namespace whose policies apply mesh-wide.
    pub root_namespace: String,
    /// Address of the Prometheus metrics endpoint (`/metrics`,
    /// `/stats/prometheus`).
    pub metrics: SocketAddr,
    /// Address of the readiness endpoint (`/healthz/ready`, Istio's 15021).
    pub readiness: SocketAddr,
    /// The access log: `-` (stdout), `off`, or a file.
    pub access_log: String,
    /// On SIGTERM, or after handing over, how long open connections may
    /// take to finish.
    pub drain_timeout: Duration,
    /// Where the daemon takes over from its predecessor and hands over to
    /// its successor ([`handover`]).
    pub handover_socket: PathBuf,
    /// What one pod or peer may hold of the daemon.
    pub limits: Limits,
    /// The file descriptors this process may open (reported as a metric).
    pub open_files: u64,
}

/// Where the daemon learns about the cluster and its policies.
#[derive(Clone, Debug)]
pub enum Source {
    /// Files, reloaded when they change (standalone mode).
    Files {
        /// The workload registry file.
        registry: PathBuf,
        /// The directory of Istio policy YAML; none: no policy.
        policies: Option<PathBuf>,
    },
    /// The Kubernetes API server.
    Kubernetes(KubeConfig),
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The registry is unusable.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The trust bundle is unusable.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// The access log cannot be opened.
    #[error("opening the access log {target}: {source}")]
    AccessLog {
        /// What was given.
        target: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The Kubernetes source could not start.
    #[error(transparent)]
    Kubernetes(#[from] KubeError),
    /// The policies are unusable.
    #[error(transparent)]
    Policy(#[from] LoadError),
    /// The CA client could not be set up.
    #[error(transparent)]
    Ca(#[from] CaClientError),
    /// The eBPF programs could not be loaded or attached.
    #[error(transparent)]
    Capture(#[from] RedirectError),
    /// The admin or metrics endpoint could not be bound.
    #[error("binding the admin or metrics endpoint {address}: {source}")]
    Admin {
        /// The address.
        address: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The enrolled pods `registry` places on `node`.
pub fn local_pods<'a>(
    registry: &'a Registry,
    node: &'a str,
    enrolment: &'a Enrolment,
) -> impl Iterator<Item = &'a Pod> + 'a {
    registry
        .pods_on(node)
        .filter(move |pod| enrolment.enrols_in(registry, pod))
}

/// The identities of the enrolled pods `registry` places on `node`.
pub fn local_identities(
    registry: &Registry,
    node: &str,
    enrolment: &Enrolment,
    trust_domain: &TrustDomain,
) -> BTreeSet<Identity> {
    local_pods(registry, node, enrolment)
        .filter_map(|pod| match Identity::new(trust_domain.clone(), &pod.namespace, &pod.service_account) {
            Ok(identity) => Some(identity),
            Err(err) => {
                tracing::warn!(pod = %pod.name, namespace = %pod.namespace, "pod has no valid identity: {err}");
                None
            }
        })
        .collect()
}

/// The daemon's state as the admin endpoint sees it: snapshots only, so
/// reading it never blocks the daemon.
struct NodeState {
    certificates: watch::Receiver<Certificates>,
    /// What the registry asks of this node; `None` until it is first applied.
    applied: watch::Receiver<Option<Arc<Applied>>>,
    trust_bundle: watch::Receiver<Arc<TrustBundle>>,
    registry: watch::Receiver<Arc<Registry>>,
    policies: watch::Receiver<Arc<PolicySet>>,
    log: Arc<dyn LogControl>,
    enrolment: Enrolment,
    trust_domain: TrustDomain,
    /// Deliberate differences from Istio's ztunnel in this configuration,
    /// reported by `analyze`.
    differences: Vec<String>,
    /// Set once the programs are attached, if the kernel made the connect
    /// hooks fall back to telling the daemon's sockets by their mark.
    capture_by_mark: std::sync::OnceLock<()>,
}

/// Where this daemon, as configured, deliberately behaves differently from
/// Istio's ztunnel (each a safer choice, documented in ARCHITECTURE.md).
fn differences_from_istio(limits: &Limits) -> Vec<String> {
    let differs = "differs from Istio's ztunnel:";
    vec![
        format!(
            "{differs} each pod may hold {} connections through the daemon in each direction \
             (--max-connections-per-pod); the excess is reset. Istio's ztunnel sets no such limit",
            limits.connections_per_pod
        ),
        format!(
            "{differs} tunnel handshakes in progress are limited to {} on the node and {} per \
             source address (--max-pending-handshakes, --max-pending-handshakes-per-source); \
             the excess is refused",
            limits.pending_handshakes, limits.pending_handshakes_per_source
        ),
        format!(
            "{differs} kubelet probes are recognised as connections made in the node's network \
             namespace, not SNATed to 169.254.7.127: they keep the node's address, so \
             NetworkPolicies need no rule for 169.254.7.127, and no other host can claim the exemption"
        ),
    ]
}

/// The outcome of applying the registry to this node.
#[derive(Default)]
struct Applied {
    /// Identities the node's enrolled pods need.
    identities: BTreeSet<Identity>,
    /// Enrolled pods that could not be captured (`namespace/name`).
    uncaptured: Vec<String>,
    /// Enrolled pods captured (`namespace/name`).
    captured: Vec<String>,
}

impl AdminState for NodeState {
    fn not_ready(&self) -> Vec<String> {
        let Some(applied) = self.applied.borrow().clone() else {
            return vec![
                "starting: the registry is not applied yet (capture, identities)".to_owned(),
            ];
        };
        let mut reasons = Vec::new();
        if !applied.uncaptured.is_empty() {
            reasons.push(format!(
                "pods not captured: {}",
                applied.uncaptured.join(", ")
            ));
        }
        let pending = self.pending_identities();
        if !pending.is_empty() {
            reasons.push(format!("no certificate yet for {}", pending.join(", ")));
        }
        reasons
    }

    fn certificates(&self) -> Vec<Arc<WorkloadCertificate>> {
        self.certificates.borrow().values().cloned().collect()
    }

    fn pending_identities(&self) -> Vec<String> {
        let now = SystemTime::now();
        let certificates = self.certificates.borrow().clone();
        let Some(applied) = self.applied.borrow().clone() else {
            return Vec::new();
        };
        applied
            .identities
            .iter()
            .filter(|identity| {
                certificates
                    .get(*identity)
                    .is_none_or(|cert| !cert.is_valid_at(now))
            })
            .map(Identity::to_string)
            .collect()
    }

    fn trust_bundle(&self) -> Vec<String> {
        self.trust_bundle.borrow().describe().to_vec()
    }

    fn config_dump(&self) -> serde_json::Value {
        let applied = self.applied.borrow().clone();
        serde_json::json!({
            "registry": *self.registry.borrow().clone(),
            "captured_pods": applied.as_ref().map(|a| a.captured.clone()).unwrap_or_default(),
            "uncaptured_pods": applied.as_ref().map(|a| a.uncaptured.clone()).unwrap_or_default(),
            "identities": applied
                .as_ref()
                .map(|a| a.identities.iter().map(Identity::to_string).collect::<Vec<_>>())
                .unwrap_or_default(),
            "policies": self.policies.borrow().describe(),
        })
    }

    fn log_level(&self) -> String {
        self.log.current()
    }

    fn set_log_level(&self, filter: &str) -> Result<(), String> {
        self.log.set(filter)
    }

    fn check(
        &self,
        source: &str,
        destination: &str,
        port: u16,
    ) -> Result<serde_json::Value, String> {
        let registry = self.registry.borrow().clone();
        let policies = self.policies.borrow().clone();
        check::explain(
            &registry,
            &policies,
            &self.enrolment,
            &self.trust_domain,
            (source, destination, port),
        )
    }

    fn analyze(&self) -> Vec<String> {
        let mut findings = self.policies.borrow().analyze(&self.registry.borrow());
        findings.extend(self.differences.iter().cloned());
        // Istio's in-pod rules let packets marked 0x539 skip redirection
        // (istio/istio cni/pkg/iptables/iptables.go), which is what the
        // fallback does too; by process, a pod's mark changes nothing.
        findings.push(if self.capture_by_mark.get().is_some() {
            "capture: this kernel (before Linux 6.10) lets the connect hooks tell the daemon's \
             sockets only by their mark, so a pod with CAP_NET_ADMIN can set mark 0x539 and skip \
             capture, as it can in Istio's in-pod rules; upgrade the node's kernel"
                .to_owned()
        } else {
            "differs from Istio's ztunnel: the daemon's own connections are recognised by its \
             process, so a pod that sets mark 0x539 on its sockets is still captured (Istio's \
             in-pod rules let such packets skip redirection)"
                .to_owned()
        });
        findings
    }
}

/// Longest sleep between two looks at the certificates' remaining lifetime.
const MAX_EXPIRY_CHECK: Duration = Duration::from_secs(60);

/// Keeps the certificate metrics in step with the certificates held: the
/// expiry of each, and a count of each new one taken into use. A certificate
/// in the last fifth of its life (renewal is due at half) is reported once as
/// an audit event: its renewal is failing. A certificate withdrawn at expiry
/// keeps its (past) expiry in the metrics for as long as its identity is
/// `managed`, so the expiry alerts keep firing while it cannot be renewed.
async fn count_certificates(
    mut certificates: watch::Receiver<Certificates>,
    mut managed: watch::Receiver<BTreeSet<Identity>>,
    metrics: Arc<Metrics>,
) {
    let mut serials: std::collections::BTreeMap<Identity, String> = Default::default();
    let mut warned: BTreeSet<String> = BTreeSet::new();
    loop {
        let now = SystemTime::now();
        // The next moment an unwarned certificate enters its last fifth: the
        // task sleeps until then, so the event is on time for any lifetime.
        let mut next_warning: Option<Duration> = None;
        for cert in certificates.borrow().values() {
            let lifetime = cert
                .not_after()
                .duration_since(cert.not_before())
                .unwrap_or_default();
            let warn_at = cert.not_after() - lifetime / 5;
            match warn_at.duration_since(now) {
                Ok(wait) => {
                    next_warning = Some(next_warning.map_or(wait, |next| next.min(wait)));
                }
                Err(_) if warned.insert(cert.serial().to_owned()) => {
                    let left = cert.not_after().duration_since(now).unwrap_or_default();
                    tracing::warn!(
                        target: "audit",
                        event = "certificate_near_expiry",
                        identity = %cert.identity(),
                        serial = cert.serial(),
                        seconds_left = left.as_secs(),
                        "certificate near expiry: its renewal has not succeeded"
                    );
                }
                Err(_) => {}
            }
        }
        let held = certificates.borrow_and_update().clone();
        warned.retain(|serial| held.values().any(|cert| cert.serial() == serial));
        for (identity, cert) in held.iter() {
            let labels = IdentityLabels {
                identity: identity.to_string(),
            };
            let expiry = cert
                .not_after()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            metrics
                .certificate_expiry
                .get_or_create(&labels)
                .set(expiry);
            if serials.get(identity).map(String::as_str) != Some(cert.serial()) {
                metrics.certificate_renewals.get_or_create(&labels).inc();
                serials.insert(identity.clone(), cert.serial().to_owned());
            }
        }
        let managed_now = managed.borrow_and_update().clone();
        serials.retain(|identity, _| {
            let keep = held.contains_key(identity) || managed_now.contains(identity);
            if !keep {
                metrics.certificate_expiry.remove(&IdentityLabels {
                    identity: identity.to_string(),
                });
            }
            keep
        });
        // Woken at least every minute as well: the wall clock may jump.
        let wake = next_warning.map_or(MAX_EXPIRY_CHECK, |wait| wait.min(MAX_EXPIRY_CHECK));
        tokio::select! {
            changed = certificates.changed() => if changed.is_err() { return },
            changed = managed.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(wake) => {}
        }
    }
}

/// Runs the daemon until `shutdown` completes.
pub async fn run(
    config: NodeConfig,
    log: Arc<dyn LogControl>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), NodeError> {
    // With the API as source, the first complete view is waited for after
    // the admin endpoint is up (it says "starting" meanwhile).
    let mut synced = None;
    let mut annotator = None;
    let (registry, policies) = match &config.source {
        Source::Files { registry, policies } => (
            Watched::start(registry.clone(), "registry", Registry::load)?,
            policies::watch_files(policies.as_ref(), &config.root_namespace)?,
        ),
        Source::Kubernetes(kube) => {
            let source =
                kubernetes::start(kube, Some(&config.node), &config.root_namespace).await?;
            synced = Some(source.synced);
            annotator = source.annotator;
            (source.registry, (None, source.policies))
        }
    };
    let trust_bundle = Watched::start(
        config.trust_bundle.clone(),
        "trust bundle",
        TrustBundle::load,
    )?;
    tracing::info!(
        roots = trust_bundle.current().roots().len(),
        "trust bundle loaded"
    );
    let metrics = Arc::new(Metrics::new());
    metrics
        .open_files_limit
        .set(i64::try_from(config.open_files).unwrap_or(i64::MAX));
    tracing::info!(
        open_files = config.open_files,
        connections_per_pod = config.limits.connections_per_pod,
        pending_handshakes = config.limits.pending_handshakes,
        pending_handshakes_per_source = config.limits.pending_handshakes_per_source,
        "limits"
    );
    let mut manager = CertManager::new(CaClient::new(&config.ca)?, config.certificates.clone())
        .observed_by(metrics.clone());
    let applied = watch::Sender::new(None);
    let state = Arc::new(NodeState {
        certificates: manager.subscribe(),
        applied: applied.subscribe(),
        trust_bundle: trust_bundle.subscribe(),
        registry: registry.subscribe(),
        policies: policies.1.clone(),
        log,
        enrolment: config.enrolment.clone(),
        trust_domain: config.trust_domain.clone(),
        differences: differences_from_istio(&config.limits),
        capture_by_mark: Default::default(),
    });
    // A daemon still running on this node (a rolling update) hands over its
    // listening sockets; they accept nothing here until this one can serve.
    let this_daemon =
        crate::redirect::programs::this_daemon().map_err(|source| RedirectError::Io {
            context: "finding this process's namespaces".to_owned(),
            source,
        })?;
    let mut take_over = handover::TakeOver::start(
        &config.handover_socket,
        &config.bpf_pin_dir,
        this_daemon.node_netns,
    )
    .await;
    let may_listen = take_over.may_listen();
    let active = crate::proxy::Active::default();
    if take_over.taking_over() {
        active.hold();
    }
    let mut bind = |address| {
        let inherited = take_over.node_listener(address);
        async move {
            let listener = match inherited {
                Some(listener) => tokio::net::TcpListener::from_std(listener),
                None => admin::bind(address).await,
            };
            let listener = listener.map_err(|source| NodeError::Admin { address, source })?;
            // Kept to hand over to a successor.
            let socket = listener
                .as_fd()
                .try_clone_to_owned()
                .map_err(|source| NodeError::Admin { address, source })?;
            Ok::<_, NodeError>((listener, socket))
        }
    };
    // Taking over, the predecessor answers until this daemon accepts.
    let when_accepting = |serve: BoxFuture<'static, ()>| {
        let accepting = active.accepting();
        tokio::spawn(async move {
            accepting.await;
            serve.await
        })
    };
    // The node's HTTP endpoints, and their sockets to hand over.
    let (admin_listener, admin_socket) = bind(config.admin).await?;
    let (metrics_listener, metrics_socket) = bind(config.metrics).await?;
    let (readiness_listener, readiness_socket) = bind(config.readiness).await?;
    let node_sockets = [admin_socket, metrics_socket, readiness_socket];
    let http_servers = [
        when_accepting(Box::pin(admin::serve(admin_listener, state.clone()))),
        when_accepting(Box::pin(admin::serve_metrics(
            metrics_listener,
            metrics.clone(),
        ))),
        when_accepting(Box::pin(admin::serve_readiness(
            readiness_listener,
            state.clone(),
        ))),
    ];
    tracing::info!(node = %config.node, admin = %config.admin, "node daemon running");
    if config.transport == Transport::PlaintextForBenchmarks {
        tracing::warn!(
            "INSECURE: tunnels carry plain TCP and trust source addresses \
             (--benchmark-plaintext-tunnel); for benchmarks only"
        );
    }

    let tunnel_idle = metrics.tunnel_idle.clone();
    let context = Arc::new(ProxyContext {
        node: config.node.clone(),
        // One setting names the cluster to the CA and to HBONE peers.
        cluster: config.ca.cluster_id.clone(),
        enrolment: config.enrolment.clone(),
        trust_domain: config.trust_domain.clone(),
        registry: registry.subscribe(),
        tunnel: TunnelConfigs::new(
            manager.subscribe(),
            manager.subscribe_pending(),
            trust_bundle.subscribe(),
            config.trust_domain.clone(),
            config.tunnel_tls,
        ),
        transport: config.transport,
        policies: policies.1,
        pods: Default::default(),
        connections: Default::default(),
        metrics,
        access_log: AccessLog::open(&config.access_log).map_err(|source| NodeError::AccessLog {
            target: config.access_log.clone(),
            source,
        })?,
        idle_timeout: config.idle_timeout,
        limits: config.limits,
        handshakes: Default::default(),
        endpoints: Default::default(),
        active,
        pool: Pool::new(config.tunnel_reuse, tunnel_idle),
        hbone: Default::default(),
    });
    let enforcer = tokio::spawn(crate::proxy::authorize::enforce_changes(context.clone()));
    let sweeper = tokio::spawn(sweep_tunnels(context.clone()));
    let trimmer = tokio::spawn({
        let context = context.clone();
        async move { crate::memory::trim_after_surges(&context.active).await }
    });
    let policy_metrics = tokio::spawn(policies::count(
        context.policies.clone(),
        context.metrics.clone(),
    ));
    let certificate_metrics = tokio::spawn(count_certificates(
        manager.subscribe(),
        manager.subscribe_managed(),
        context.metrics.clone(),
    ));
    if let Some(synced) = synced {
        tracing::info!("waiting for the first complete view from the Kubernetes API");
        synced.wait().await?;
    }
    let mut capture = capture::Capture::start(
        &config.bpf_pin_dir,
        config.cgroup_root.as_deref(),
        context.clone(),
        take_over.previous(),
        take_over.pod_sockets(),
        config.socket_acceleration,
    )?;
    if capture.daemon_by_mark() {
        let _ = state.capture_by_mark.set(());
    }
    let attached = crate::redirect::abi::program_names::ALL.len() as i64;
    context.metrics.ebpf_programs_attached.set(attached);
    let mut changes = registry.subscribe();
    let mut apply = |capture: &mut capture::Capture, registry: &Registry| {
        // Identities first: a newly captured pod's first connection then
        // finds its certificate requested, and waits for it.
        let identities = local_identities(
            registry,
            &config.node,
            &config.enrolment,
            &config.trust_domain,
        );
        manager.set_identities(&identities);
        let uncaptured = capture.set_pods(local_pods(registry, &config.node, &config.enrolment));
        let captured: Vec<String> = local_pods(registry, &config.node, &config.enrolment)
            .map(|pod| format!("{}/{}", pod.namespace, pod.name))
            .filter(|pod| !uncaptured.contains(pod))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        context.metrics.enrolled_pods.set(captured.len() as i64);
        if let Some(annotator) = &annotator {
            annotator.set_captured(&captured);
        }
        applied.send_replace(Some(Arc::new(Applied {
            identities,
            uncaptured,
            captured,
        })));
    };
    apply(&mut capture, &registry.current());
    tokio::pin!(shutdown);
    // Taking over: until this daemon can serve, the previous one does.
    let mut taking_over = take_over.taking_over().then_some(take_over);
    let mut successors = None;
    if taking_over.is_none() && may_listen {
        successors = handover::listen(&config.handover_socket);
    }
    let mut previous_exited = None;
    let mut handing_over = None;
    let mut handed_over = None;
    let mut stopped = false;
    loop {
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    break;
                }
                let current = changes.borrow_and_update().clone();
                apply(&mut capture, &current);
            }
            () = until_ready(&state), if taking_over.is_some() => {
                context.active.accept();
                if let Some(take_over) = taking_over.take() {
                    previous_exited = take_over.complete().await;
                }
                successors = handover::listen(&config.handover_socket);
            }
            Some(_) = wait_some(&mut previous_exited) => {
                tracing::info!("the previous daemon has exited");
                capture.forget_previous_daemon();
                previous_exited = None;
            }
            Some(successor) = next_some(&mut successors), if handing_over.is_none() => {
                tracing::info!("a new daemon is taking over: handing over the listeners");
                let sockets: Vec<std::os::fd::OwnedFd> = capture
                    .sockets()
                    .chain(node_sockets.iter().map(AsFd::as_fd))
                    .filter_map(|fd| fd.try_clone_to_owned().ok())
                    .collect();
                let instance = config.bpf_pin_dir.clone();
                handing_over = Some(handover::hand_over(successor, this_daemon, instance, sockets));
            }
            Some(result) = wait_some(&mut handing_over) => {
                handing_over = None;
                let result = result.unwrap_or_else(|_| Err("the hand-over thread ended".to_owned()));
                match result {
                    Ok(successor) => {
                        // The successor accepts: stop, then tell it.
                        capture.stop_accepting();
                        http_servers.iter().for_each(tokio::task::JoinHandle::abort);
                        match successor.released() {
                            Ok(connection) => handed_over = Some(connection),
                            Err(err) => tracing::warn!("telling the successor: {err}"),
                        }
                        tracing::info!("handed over to the new daemon: draining");
                        break;
                    }
                    Err(err) => tracing::warn!("hand-over failed, still serving: {err}"),
                }
            }
            () = &mut shutdown => {
                stopped = true;
                break;
            }
        }
    }
    // Graceful shutdown: stop accepting (the pinned programs keep the pods
    // failing closed: new connections are refused, never sent around the
    // mesh; after a hand-over the successor accepts them), let open
    // connections finish until the deadline, then close them.
    capture.stop_accepting();
    if handed_over.is_some() {
        context.active.hand_over();
    }
    context.active.drain();
    let open = context.active.count();
    if open > 0 || context.active.handed_over() {
        tracing::info!(
            open,
            deadline_secs = config.drain_timeout.as_secs(),
            "draining open connections"
        );
        match tokio::time::timeout(config.drain_timeout, context.active.drained()).await {
            Ok(()) => tracing::info!("all connections drained"),
            Err(_) => tracing::warn!(
                open = context.active.count(),
                "drain deadline reached: closing the remaining connections"
            ),
        }
    }
    if handed_over.is_some() && !stopped {
        // As a DaemonSet pod, exiting now would have it restarted: wait to
        // be stopped (the rolling update deletes this pod).
        tracing::info!("handed over and drained: waiting to be stopped");
        shutdown.await;
    }
    drop(handed_over);
    http_servers.iter().for_each(tokio::task::JoinHandle::abort);
    enforcer.abort();
    sweeper.abort();
    trimmer.abort();
    certificate_metrics.abort();
    policy_metrics.abort();
    tracing::info!("node daemon stopped");
    Ok(())
}

/// Completes once the daemon would answer ready.
async fn until_ready(state: &NodeState) {
    while !state.not_ready().is_empty() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The next value of `receiver`, if there is one; never completes without.
async fn next_some<T>(receiver: &mut Option<tokio::sync::mpsc::Receiver<T>>) -> Option<T> {
    match receiver {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

/// The output of `future`, if there is one; never completes without.
async fn wait_some<F: Future + Unpin>(future: &mut Option<F>) -> Option<F::Output> {
    match future {
        Some(future) => Some(future.await),
        None => std::future::pending().await,
    }
}

/// Closes idle tunnels past their time, a few times per idle period.
async fn sweep_tunnels(context: Arc<ProxyContext>) {
    let mut tick = tokio::time::interval(crate::tunnel::pool::IDLE_TIMEOUT / 3);
    loop {
        tick.tick().await;
        context.pool.sweep();
        context.hbone.sweep();
    }
}
