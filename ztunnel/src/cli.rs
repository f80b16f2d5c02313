//! Subcommands of the `ztunnel` binary. Parsing and process set-up only:
//! each subcommand hands validated settings to its module.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context;
use clap::{Parser, Subcommand};
use ztunnel::{
    admin::LogControl,
    ca::{Ca, CaConfig, NodeSource},
    identity::{CaClientConfig, CaToken, ManagerConfig, TrustDomain},
    kubernetes::KubeConfig,
    node::{self, NodeConfig, Source},
    proxy::limits::{self, Limits},
    registry::{Enrolment, LabelSelector},
    tls::{CipherSuites, TunnelTls},
    tunnel::plaintext::Transport,
};

/// How often the node daemon writes how many warnings it suppressed.
const REPORT_SUPPRESSED_EVERY: Duration = Duration::from_secs(10);

/// Node-level ambient zero-trust proxy for Kubernetes.
#[derive(Parser)]
#[command(name = "ztunnel", version, about)]
pub struct Cli {
    /// Log filter (tracing's `RUST_LOG` syntax), for example `info` or `ztunnel=debug`.
    #[arg(long, global = true, default_value = "info")]
    log: String,
    /// How log lines are written: `text` (for people) or `json` (one object
    /// per line, for log pipelines; the access log is JSON either way).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// The format of the daemon's log lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines, coloured on a terminal.
    Text,
    /// One JSON object per line, fields at the top level.
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the certificate authority (Istio's CA API over TLS).
    Ca(Box<CaArgs>),
    /// Generate a new root of trust in Istio's `cacerts` layout, for the CA
    /// in Kubernetes (`kubectl create secret generic cacerts --from-file=DIR`).
    CaInit(CaInitArgs),
    /// Run the node daemon.
    Node(Box<NodeArgs>),
    /// Troubleshoot a node through its daemon's admin endpoint.
    Ctl(CtlArgs),
    /// Detach every eBPF program of a (stopped) node daemon and remove its
    /// pins and maps: pods return to plain networking.
    Uninstall(UninstallArgs),
}

#[derive(clap::Args)]
struct CaInitArgs {
    /// Directory to write ca-cert.pem, ca-key.pem, cert-chain.pem and
    /// root-cert.pem to (created 0700; an existing key is never overwritten).
    #[arg(long)]
    out: PathBuf,
    /// Trust domain named in the root.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: TrustDomain,
}

#[derive(clap::Args)]
struct NodeArgs {
    /// This node's name (pods name their node with it).
    #[arg(long)]
    node: String,
    /// The workload registry file (standalone mode), reloaded on change.
    #[arg(
        long,
        required_unless_present = "kubernetes",
        conflicts_with = "kubernetes"
    )]
    registry: Option<PathBuf>,
    /// Read namespaces, pods, services and policies from the Kubernetes API
    /// server (in-cluster configuration, or --kubeconfig) instead of
    /// --registry and --policies.
    #[arg(long)]
    kubernetes: bool,
    /// kubeconfig file for --kubernetes outside a cluster.
    #[arg(long, requires = "kubernetes")]
    kubeconfig: Option<PathBuf>,
    /// With --kubernetes: the host directory where the container runtime
    /// creates pod network namespaces (pods are found there by address).
    #[arg(long, default_value = "/var/run/netns")]
    netns_dir: PathBuf,
    /// Namespace label that enrols a namespace's pods.
    #[arg(long, default_value = "istio.io/dataplane-mode=ambient")]
    enrol_label: LabelSelector,
    /// Trust domain of workload identities.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: TrustDomain,
    /// The CA, as host:port.
    #[arg(long)]
    ca_address: String,
    /// Name (DNS or IP) to verify in the CA's certificate; default: the host of --ca-address.
    #[arg(long)]
    ca_server_name: Option<String>,
    /// Root certificate(s) of the CA's serving certificate; default: the trust bundle.
    #[arg(long)]
    ca_root: Option<PathBuf>,
    /// File holding this node's bearer token for the CA (read again for
    /// every request: in Kubernetes, the projected ServiceAccount token).
    #[arg(long)]
    ca_token_file: PathBuf,
    /// The cluster this node is in (Istio's CLUSTER_ID): sent to the CA as
    /// `clusterid` (istiod reviews the token with that cluster's API server)
    /// and named in HBONE's `baggage`.
    #[arg(long, default_value = "Kubernetes")]
    cluster_id: String,
    /// Trusted roots for peers (PEM), reloaded on change.
    #[arg(long)]
    trust_bundle: PathBuf,
    /// Certificate validity to ask the CA for, in seconds.
    #[arg(long, default_value_t = 24 * 3600)]
    cert_validity_secs: u64,
    /// Longest delay between retries when the CA fails, in seconds.
    #[arg(long, default_value_t = 30)]
    ca_retry_max_secs: u64,
    /// On SIGTERM, or once a successor has taken over: stop accepting, let
    /// open connections finish for this long (seconds), then close them.
    #[arg(long, default_value_t = 20)]
    drain_timeout_secs: u64,
    /// Unix socket where a daemon hands its listening sockets to the daemon
    /// replacing it (a rolling update: the new one takes over before the
    /// old one lets go). Root only; one per node daemon, outside bpffs.
    #[arg(long, default_value = "/run/ztunnel/handover.sock")]
    handover_socket: PathBuf,
    /// Access log, one JSON line per connection: `-` (stdout), `off`, or a file.
    #[arg(long, default_value = "-")]
    access_log: String,
    /// Prometheus metrics endpoint (`/metrics`, and Istio's `/stats/prometheus`).
    #[arg(long, default_value = "127.0.0.1:15020")]
    metrics: SocketAddr,
    /// Readiness endpoint where Istio's probes look (`/healthz/ready`).
    #[arg(long, default_value = "127.0.0.1:15021")]
    readiness: SocketAddr,
    /// Admin endpoint (readiness, certificates).
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin: SocketAddr,
    /// Directory on bpffs where the eBPF links and maps are pinned, so pods
    /// fail closed while the daemon is down and a new daemon takes over.
    #[arg(long, default_value = "/sys/fs/bpf/ztunnel")]
    bpf_pin_dir: PathBuf,
    /// The host's cgroup v2 root, where the programs attach so they see
    /// every pod (in a container: the host's /sys/fs/cgroup, mounted).
    /// Default: the first cgroup2 mount in /proc/mounts.
    #[arg(long)]
    cgroup_root: Option<PathBuf>,
    /// Close a proxied connection on which no byte moved for this long, in seconds.
    #[arg(long, default_value_t = 3600)]
    idle_timeout_secs: u64,
    /// Connections one pod may have open through the daemon at once, in each
    /// direction; the excess is reset at once. Default: a quarter of the
    /// daemon's open-file limit (each connection costs two descriptors), at
    /// least 1024.
    #[arg(long)]
    max_connections_per_pod: Option<usize>,
    /// Tunnel handshakes in progress at once on this node; the excess is
    /// refused at once.
    #[arg(long, default_value_t = limits::PENDING_HANDSHAKES)]
    max_pending_handshakes: usize,
    /// Tunnel handshakes in progress at once from one source address.
    #[arg(long, default_value_t = limits::PENDING_HANDSHAKES_PER_SOURCE)]
    max_pending_handshakes_per_source: usize,
    /// Directory of Istio policy YAML (PeerAuthentication, AuthorizationPolicy),
    /// reloaded on change.
    #[arg(long, conflicts_with = "kubernetes")]
    policies: Option<PathBuf>,
    /// The namespace whose policies apply to the whole mesh.
    #[arg(long, default_value = ztunnel::policy::DEFAULT_ROOT_NAMESPACE)]
    root_namespace: String,
    /// Also offer ChaCha20-Poly1305 in the tunnel, after AES-GCM (for peers
    /// without AES hardware). Off by default: AES-GCM only.
    #[arg(long)]
    tls_chacha20_fallback: bool,
    /// Never resume tunnel TLS sessions: every connection does a full
    /// handshake (for benchmarks and troubleshooting; slower).
    #[arg(long)]
    no_tls_resumption: bool,
    /// Open a new tunnel for every connection instead of reusing an idle one
    /// between the same two workloads (for benchmarks and troubleshooting;
    /// slower).
    #[arg(long)]
    no_tunnel_reuse: bool,
    /// Speak only HBONE between nodes, as Istio's ztunnel does (ALPN `h2`):
    /// by default this daemon prefers its own, faster protocol and speaks
    /// HBONE with peers that speak only that.
    #[arg(long)]
    no_native_tunnel: bool,
    /// Move the bytes of the hops inside pods (application to daemon, daemon
    /// to application) socket to socket with sockmap instead of through
    /// loopback TCP, where the kernel can (see docs/acceleration.md). Off by
    /// default: measured, it lowers latency and same-node costs but not
    /// cross-node throughput or CPU.
    #[arg(long, overrides_with = "no_socket_acceleration")]
    socket_acceleration: bool,
    /// Carry the hops inside pods through loopback TCP (the default; the
    /// last of the two flags wins). Connections already accelerated stay so
    /// until they close.
    #[arg(long, overrides_with = "socket_acceleration")]
    no_socket_acceleration: bool,
    /// INSECURE, for benchmarks only: carry tunnels as plain TCP (no TLS, no
    /// identity proof) to measure the proxy hops apart from cryptography.
    /// Both nodes' daemons must run with it.
    #[arg(long)]
    benchmark_plaintext_tunnel: bool,
}

#[derive(clap::Args)]
struct CtlArgs {
    /// The daemon's admin endpoint.
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin: SocketAddr,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Subcommand)]
enum CtlCommand {
    /// The certificates the daemon holds (identity, serial, validity, issuer).
    Certs,
    /// The pods of the registry, and which this node captures.
    Workloads,
    /// The policies in force, as written, and the state of every object
    /// found (applied, applied_l4_only, skipped, refused, ignored, with why).
    Policies,
    /// What policy decides for a connection, and why: `check client-1 web-2:8080`.
    /// Exits with status 1 when the connection would be denied.
    Check {
        /// Source pod: `name`, `namespace/name` or its address.
        source: String,
        /// Destination and port: a pod or a Service (`name`, `namespace/name`,
        /// an address or a Service VIP), then `:port` (`demo/web:80`,
        /// `10.96.0.10:80`, `[fd00::1]:80`). A Service's every endpoint is checked.
        destination: String,
    },
    /// Likely policy mistakes.
    Analyze,
}

#[derive(clap::Args)]
struct UninstallArgs {
    /// The pin directory of the daemon to remove.
    #[arg(long, default_value = "/sys/fs/bpf/ztunnel")]
    bpf_pin_dir: PathBuf,
}

#[derive(clap::Args)]
struct CaArgs {
    /// Address to serve on.
    #[arg(long, default_value = "0.0.0.0:15012")]
    listen: SocketAddr,
    /// Trust domain of the identities it signs.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: TrustDomain,
    /// Directory for the generated root of trust (created 0700; the key is 0600).
    #[arg(long, default_value = "/var/lib/ztunnel-ca")]
    state_dir: PathBuf,
    /// Istio `cacerts` directory (ca-cert.pem, ca-key.pem, cert-chain.pem, root-cert.pem)
    /// holding an intermediate to sign with, instead of a generated root.
    #[arg(long)]
    cacerts: Option<PathBuf>,
    /// The workload registry file: a node may only get identities of its own pods.
    #[arg(
        long,
        required_unless_present = "kubernetes",
        conflicts_with = "kubernetes",
        requires = "node_tokens"
    )]
    registry: Option<PathBuf>,
    /// YAML map of node name to bearer token.
    #[arg(long, conflicts_with = "kubernetes")]
    node_tokens: Option<PathBuf>,
    /// Authenticate node daemons by TokenReview of their projected
    /// ServiceAccount tokens, and learn which pods run where from the
    /// Kubernetes API (in-cluster configuration, or --kubeconfig).
    #[arg(long)]
    kubernetes: bool,
    /// kubeconfig file for --kubernetes outside a cluster.
    #[arg(long, requires = "kubernetes")]
    kubeconfig: Option<PathBuf>,
    /// With --kubernetes: an audience node proxies' tokens may be issued for
    /// (repeat for several; `istio-ca` is the one Istio's ztunnel uses).
    #[arg(long = "token-audience", default_value = "ztunnel-ca")]
    token_audiences: Vec<String>,
    /// With --kubernetes: a ServiceAccount (`namespace/name`) of node proxies
    /// that may ask for their pods' identities (repeat for several, e.g.
    /// `istio-system/ztunnel` too while Istio's ztunnel runs on some nodes);
    /// tokens of any other account are refused.
    #[arg(
        long = "node-service-account",
        default_value = "ztunnel-system/ztunnel"
    )]
    node_service_accounts: Vec<String>,
    /// Longest certificate validity issued, in seconds.
    #[arg(long, default_value_t = 24 * 3600)]
    max_validity_secs: u64,
    /// DNS names and IP addresses in the CA's serving certificate (repeatable).
    #[arg(long = "server-name", default_value = "ztunnel-ca.ztunnel-system.svc")]
    server_names: Vec<String>,
    /// File to publish the root certificate to (the trust bundle node daemons read).
    #[arg(long)]
    publish_root: Option<PathBuf>,
    /// The cluster served: requests whose `clusterid` names another are
    /// refused, as istiod refuses a cluster it does not know.
    #[arg(long, default_value = "Kubernetes")]
    cluster_id: String,
}

impl Cli {
    /// Runs the chosen subcommand to completion.
    pub fn run(self) -> anyhow::Result<()> {
        use tracing_subscriber::{Layer, layer::SubscriberExt, util::SubscriberInitExt};
        let filter = tracing_subscriber::EnvFilter::try_new(&self.log).context("parsing --log")?;
        let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
        let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
        let lines = match self.log_format {
            LogFormat::Text => lines
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .boxed(),
            LogFormat::Json => lines.json().flatten_event(true).boxed(),
        };
        // The node daemon's warnings are paced by what pods and peers do;
        // the CA's refusals stay an exhaustive record.
        let rate_limit =
            matches!(self.command, Command::Node(_)).then(ztunnel::log_rate::RateLimit::default);
        tracing_subscriber::registry()
            .with(filter)
            .with(lines.with_filter(rate_limit.clone()))
            .init();
        let log = Arc::new(ReloadableFilter {
            handle,
            current: Mutex::new(self.log.clone()),
        });
        // Every proxied connection holds two sockets: take all the file
        // descriptors the hard limit allows (the soft default is often 1024).
        let open_files = match rlimit::increase_nofile_limit(u64::MAX) {
            Ok(limit) => limit,
            Err(err) => {
                tracing::warn!("cannot raise the open-file limit: {err}");
                rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
            }
        };
        ztunnel::memory::limit_arenas();
        let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
        if let Some(rate_limit) = rate_limit {
            runtime.spawn(rate_limit.report(REPORT_SUPPRESSED_EVERY));
        }
        runtime.block_on(async {
            match self.command {
                Command::Ca(args) => run_ca(*args).await,
                Command::Node(args) => run_node(*args, log, open_files).await,
                Command::CaInit(args) => {
                    ztunnel::ca::authority::Authority::init_cacerts(&args.out, &args.trust_domain)?;
                    println!("wrote a new root of trust to {}", args.out.display());
                    Ok(())
                }
                Command::Ctl(args) => run_ctl(args),
                Command::Uninstall(args) => {
                    ztunnel::redirect::programs::uninstall(&args.bpf_pin_dir)?;
                    tracing::info!(pins = %args.bpf_pin_dir.display(), "uninstalled");
                    Ok(())
                }
            }
        })
    }
}

async fn run_ca(args: CaArgs) -> anyhow::Result<()> {
    let config = CaConfig {
        listen: args.listen,
        trust_domain: args.trust_domain,
        state_dir: args.state_dir,
        cacerts: args.cacerts,
        nodes: match (args.registry, args.node_tokens) {
            (Some(registry), Some(node_tokens)) => NodeSource::Files {
                registry,
                node_tokens,
            },
            _ => NodeSource::Kubernetes {
                api: KubeConfig {
                    kubeconfig: args.kubeconfig,
                    netns_dir: None,
                    policies: false,
                },
                audiences: args.token_audiences,
                node_service_accounts: args.node_service_accounts,
            },
        },
        max_validity: Duration::from_secs(args.max_validity_secs),
        cluster_id: args.cluster_id,
        server_names: args.server_names,
        publish_root: args.publish_root,
    };
    let ca = Ca::bind(config).await?;
    let address = ca.local_addr()?;
    tracing::info!(%address, "CA serving");
    // The readiness signal for whoever started us: the address actually bound.
    println!("listening on {address}");
    ca.serve(shutdown_signal()).await?;
    tracing::info!("CA stopped");
    Ok(())
}

fn run_ctl(args: CtlArgs) -> anyhow::Result<()> {
    use ztunnel::ctl;
    let pretty = |value: &serde_json::Value| format!("{value:#}");
    let out = match args.command {
        CtlCommand::Certs => pretty(&ctl::get_json(args.admin, "/certs")?),
        CtlCommand::Workloads => ctl::workloads(&ctl::get_json(args.admin, "/config_dump")?),
        CtlCommand::Policies => pretty(&ctl::get_json(args.admin, "/config_dump")?["policies"]),
        CtlCommand::Check {
            source,
            destination,
        } => {
            let (pod, port) = destination
                .rsplit_once(':')
                .context("the destination is <pod>:<port>")?;
            let port: u16 = port.parse().context("the destination port is a number")?;
            let path = format!("/check?src={source}&dst={pod}&port={port}");
            let answer = ctl::get_json(args.admin, &path)?;
            let out = ctl::explain_check(&answer);
            if answer["decision"] == "deny" {
                print!("{out}");
                anyhow::bail!("the connection would be denied");
            }
            out
        }
        CtlCommand::Analyze => {
            let answer = ctl::get_json(args.admin, "/analyze")?;
            let findings: Vec<&str> = answer["findings"]
                .as_array()
                .map(|f| f.iter().filter_map(serde_json::Value::as_str).collect())
                .unwrap_or_default();
            if findings.is_empty() {
                "no problems found\n".to_owned()
            } else {
                findings.iter().map(|f| format!("{f}\n")).collect()
            }
        }
    };
    print!("{out}");
    if !out.ends_with('\n') {
        println!();
    }
    Ok(())
}

/// The log filter, changeable at run time through the admin endpoint.
struct ReloadableFilter {
    handle: tracing_subscriber::reload::Handle<
        tracing_subscriber::EnvFilter,
        tracing_subscriber::Registry,
    >,
    current: Mutex<String>,
}

impl LogControl for ReloadableFilter {
    fn current(&self) -> String {
        self.current.lock().map(|c| c.clone()).unwrap_or_default()
    }

    fn set(&self, filter: &str) -> Result<(), String> {
        let parsed = tracing_subscriber::EnvFilter::try_new(filter)
            .map_err(|err| format!("invalid log filter {filter:?}: {err}"))?;
        self.handle.reload(parsed).map_err(|err| err.to_string())?;
        if let Ok(mut current) = self.current.lock() {
            *current = filter.to_owned();
        }
        Ok(())
    }
}

async fn run_node(args: NodeArgs, log: Arc<dyn LogControl>, open_files: u64) -> anyhow::Result<()> {
    // Read now to fail fast; read again for every request, as projected
    // ServiceAccount tokens are replaced before they expire.
    std::fs::read_to_string(&args.ca_token_file)
        .with_context(|| format!("reading the CA token {}", args.ca_token_file.display()))?;
    let server_name = match args.ca_server_name {
        Some(name) => name,
        None => args
            .ca_address
            .rsplit_once(':')
            .map(|(host, _)| host.trim_matches(['[', ']']).to_owned())
            .context("--ca-address must be host:port")?,
    };
    let config = NodeConfig {
        node: args.node,
        source: match args.registry {
            Some(registry) => Source::Files {
                registry,
                policies: args.policies,
            },
            None => Source::Kubernetes(KubeConfig {
                kubeconfig: args.kubeconfig,
                netns_dir: Some(args.netns_dir),
                policies: true,
            }),
        },
        enrolment: Enrolment {
            namespace_label: args.enrol_label,
            ..Enrolment::default()
        },
        trust_domain: args.trust_domain,
        ca: CaClientConfig {
            address: args.ca_address,
            server_name,
            root_cert: args.ca_root.unwrap_or_else(|| args.trust_bundle.clone()),
            token: CaToken::File(args.ca_token_file),
            cluster_id: args.cluster_id.clone(),
        },
        certificates: ManagerConfig {
            validity: Duration::from_secs(args.cert_validity_secs),
            retry_max: Duration::from_secs(args.ca_retry_max_secs),
            ..ManagerConfig::default()
        },
        trust_bundle: args.trust_bundle,
        admin: args.admin,
        bpf_pin_dir: args.bpf_pin_dir,
        cgroup_root: args.cgroup_root,
        idle_timeout: Duration::from_secs(args.idle_timeout_secs),
        metrics: args.metrics,
        readiness: args.readiness,
        access_log: args.access_log,
        drain_timeout: Duration::from_secs(args.drain_timeout_secs),
        handover_socket: args.handover_socket,
        root_namespace: args.root_namespace,
        tunnel_tls: TunnelTls {
            suites: if args.tls_chacha20_fallback {
                CipherSuites::AesGcmThenChaCha20
            } else {
                CipherSuites::AesGcm
            },
            resumption: !args.no_tls_resumption,
            hbone_only: args.no_native_tunnel,
        },
        tunnel_reuse: !args.no_tunnel_reuse,
        socket_acceleration: args.socket_acceleration && !args.no_socket_acceleration,
        limits: Limits {
            connections_per_pod: args
                .max_connections_per_pod
                .unwrap_or_else(|| limits::connections_per_pod_for(open_files)),
            pending_handshakes: args.max_pending_handshakes,
            pending_handshakes_per_source: args.max_pending_handshakes_per_source,
        },
        open_files,
        transport: if args.benchmark_plaintext_tunnel {
            Transport::PlaintextForBenchmarks
        } else {
            Transport::MutualTls
        },
    };
    node::run(config, log, shutdown_signal()).await?;
    Ok(())
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
