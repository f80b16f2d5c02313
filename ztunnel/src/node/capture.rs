//! Which pods of this node are captured, kept in step with the registry.
//!
//! Enrolling a pod: open its network namespace, bind the daemon's listeners
//! in it, steer plaintext arriving at the pod to the inbound listener
//! (`sk_lookup`), start accepting, and only then add it to the `ENROLLED` map,
//! so a steered connection always finds a listener. Releasing a pod: remove it from
//! the map first, then stop accepting; connections already open carry on.

use std::{
    collections::{BTreeSet, HashMap},
    path::Path,
    sync::Arc,
};

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use tokio::task::JoinHandle;

use crate::{
    identity::Identity,
    proxy::{ProxyContext, inbound, inbound_tunnel, outbound, pod::LocalPod},
    redirect::{
        RedirectError,
        abi::{Daemon, EnrolledPod, INBOUND_MTLS_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT},
        listeners::{self, PodListeners, Ports},
        netns::{PodNetns, netns_cookie},
        programs::{Attached, InboundListeners, OrigDstTable, Programs},
        transparent,
    },
    registry::Pod,
    tunnel::hbone,
};

/// Why a pod could not be captured.
#[derive(Debug, thiserror::Error)]
enum CaptureError {
    /// Its namespace and ServiceAccount make no valid SPIFFE identity.
    #[error("the pod has no valid workload identity: {0}")]
    Identity(#[from] crate::identity::SpiffeError),
    /// Its network namespace is not known (yet).
    #[error("its network namespace is not known yet")]
    NoNetns,
    /// Its namespace could not be entered, or the programs refused it.
    #[error(transparent)]
    Redirect(#[from] RedirectError),
}

/// A pod's identity in the registry: namespace and name.
type PodKey = (String, String);

/// A captured pod.
struct CapturedPod {
    pod: Arc<LocalPod>,
    accept_tasks: Vec<JoinHandle<()>>,
    /// Its listening sockets (the accept tasks own them too), kept for
    /// handing over to a successor; dropped when it stops accepting.
    sockets: Vec<OwnedFd>,
}

/// The captured pods of this node and the programs that steer them.
pub struct Capture {
    programs: Programs,
    context: Arc<ProxyContext>,
    orig_dst: Arc<OrigDstTable>,
    pods: HashMap<PodKey, CapturedPod>,
    /// Pods an earlier daemon enrolled (in the pinned map), until the first
    /// [`Capture::set_pods`] decides which of them are still wanted.
    inherited: BTreeSet<u64>,
    /// Listening sockets a previous daemon handed over, until their pods
    /// are enrolled (then they are used instead of new ones).
    handed_over: Vec<OwnedFd>,
}

impl Capture {
    /// Loads and attaches the programs at `cgroup_root` (default: the first
    /// cgroup2 mount), pinned under `pin_dir`. Pods an
    /// earlier daemon enrolled stay steered (failing closed) until the first
    /// [`Capture::set_pods`] takes them over or releases them. Captured
    /// pods' connections are served with `context`.
    ///
    /// `previous` is the daemon this one takes over from, and `handed_over`
    /// the listening sockets it handed over ([`crate::redirect::handover`]).
    /// With `accelerate`, the hops inside pods move their bytes socket to
    /// socket where the kernel can (reported in the metrics).
    pub fn start(
        pin_dir: &Path,
        cgroup_root: Option<&Path>,
        context: Arc<ProxyContext>,
        previous: Option<Daemon>,
        handed_over: Vec<OwnedFd>,
        accelerate: bool,
    ) -> Result<Self, RedirectError> {
        let Attached {
            programs,
            orig_dst,
            inherited,
            acceleration,
        } = Programs::attach(pin_dir, cgroup_root, previous, accelerate)?;
        context.metrics.install(acceleration);
        if !inherited.is_empty() {
            tracing::info!(
                pods = inherited.len(),
                "taking over pods enrolled by the previous daemon"
            );
        }
        Ok(Self {
            programs,
            context,
            orig_dst: Arc::new(orig_dst),
            pods: HashMap::new(),
            inherited,
            handed_over,
        })
    }

    /// Every captured pod's listening sockets, for a successor.
    pub fn sockets(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        self.pods
            .values()
            .flat_map(|captured| captured.sockets.iter().map(AsFd::as_fd))
    }

    /// Stops recognising the previous daemon's sockets: it has exited.
    pub fn forget_previous_daemon(&mut self) {
        if let Err(err) = self.programs.forget_previous_daemon() {
            tracing::warn!("cannot forget the previous daemon: {err}");
        }
    }

    /// Whether the programs tell the daemon's own sockets by their mark
    /// (kernels before 6.10), which a pod with `CAP_NET_ADMIN` can set too.
    pub fn daemon_by_mark(&self) -> bool {
        self.programs.daemon_by_mark()
    }

    /// Captures exactly `wanted`: enrols the new pods, releases the others.
    /// A pod that cannot be enrolled is logged, returned (`namespace/name`),
    /// and tried again on the next call.
    pub fn set_pods<'a>(&mut self, wanted: impl IntoIterator<Item = &'a Pod>) -> Vec<String> {
        let mut failed = Vec::new();
        let wanted: HashMap<PodKey, &Pod> = wanted
            .into_iter()
            .map(|pod| ((pod.namespace.clone(), pod.name.clone()), pod))
            .collect();
        let released: Vec<PodKey> = self
            .pods
            .keys()
            .filter(|key| !wanted.contains_key(*key))
            .cloned()
            .collect();
        for key in released {
            self.release(&key);
        }
        for (key, pod) in wanted {
            if self.pods.contains_key(&key) {
                continue;
            }
            match self.enrol(pod) {
                Ok(captured) => {
                    tracing::info!(pod = %pod.name, namespace = %pod.namespace, netns_cookie = captured.pod.netns.cookie(), "pod captured");
                    self.pods.insert(key, captured);
                }
                Err(err) => {
                    tracing::warn!(pod = %pod.name, namespace = %pod.namespace, "cannot capture pod: {err}");
                    failed.push(format!("{}/{}", pod.namespace, pod.name));
                }
            }
        }
        // Inherited pods that were not taken over are gone from the registry.
        let taken: BTreeSet<u64> = self
            .pods
            .values()
            .map(|captured| captured.pod.netns.cookie())
            .collect();
        for cookie in std::mem::take(&mut self.inherited) {
            if taken.contains(&cookie) {
                continue;
            }
            let released = self
                .programs
                .unenrol(cookie)
                .and_then(|()| self.programs.stop_inbound(cookie));
            if let Err(err) = released {
                tracing::error!(
                    netns_cookie = cookie,
                    "cannot release an inherited pod: {err}"
                );
            }
        }
        failed
    }

    /// Stops accepting new connections in every pod (a graceful shutdown's
    /// first step). The pods stay enrolled: their new connections are
    /// refused until a daemon listens again.
    pub fn stop_accepting(&mut self) {
        for captured in self.pods.values_mut() {
            captured.accept_tasks.iter().for_each(JoinHandle::abort);
            captured.sockets.clear();
        }
    }

    fn enrol(&mut self, pod: &Pod) -> Result<CapturedPod, CaptureError> {
        let netns_path = pod.netns.as_ref().ok_or(CaptureError::NoNetns)?;
        let io = |context: &str| {
            let context = format!(
                "{context} of pod {}/{} ({})",
                pod.namespace,
                pod.name,
                netns_path.display()
            );
            move |source| RedirectError::Io { context, source }
        };
        let identity = Identity::new(
            self.context.trust_domain.clone(),
            &pod.namespace,
            &pod.service_account,
        )?;
        let netns = PodNetns::open(netns_path).map_err(io("opening the network namespace"))?;
        // Without it, applications see the pod's own address as every peer's.
        let transparent = match transparent::install(&netns) {
            Ok(()) => true,
            Err(err) => {
                tracing::warn!(pod = %pod.name, namespace = %pod.namespace, "applications will not see client addresses: cannot set up transparent delivery: {err}");
                false
            }
        };
        let ports = Ports {
            outbound: OUTBOUND_PORT,
            inbound_plaintext: INBOUND_PLAINTEXT_PORT,
            tunnel: INBOUND_MTLS_PORT,
        };
        let cookie = netns.cookie();
        let (handed_over, others) = std::mem::take(&mut self.handed_over)
            .into_iter()
            .partition(|fd| netns_cookie(fd).is_ok_and(|of| of == cookie));
        self.handed_over = others;
        let listeners = listeners::open(&netns, ports, &pod.ips, handed_over)
            .map_err(io("opening the listeners"))?;
        let sockets = listeners
            .sockets()
            .iter()
            .map(|fd| fd.try_clone_to_owned())
            .collect::<Result<Vec<_>, _>>()
            .map_err(io("keeping the listeners"))?;
        {
            let fds = InboundListeners {
                v4: listeners.inbound_plaintext.v4.as_fd(),
                v6: listeners.inbound_plaintext.v6.as_ref().map(AsFd::as_fd),
            };
            self.programs
                .steer_inbound(cookie, netns.file(), &pod.ips, &fds)?;
        }
        let local = Arc::new(LocalPod {
            name: pod.name.clone(),
            namespace: pod.namespace.clone(),
            service_account: pod.service_account.clone(),
            identity,
            ips: pod.ips.clone(),
            labels: pod.labels.clone(),
            workload: pod.workload().to_owned(),
            baggage: hbone::baggage(
                &self.context.cluster,
                &pod.namespace,
                pod.workload(),
                pod.canonical_service(),
                pod.canonical_revision(),
            ),
            netns,
            transparent,
            connections: Default::default(),
        });
        let PodListeners {
            outbound: out,
            inbound_plaintext: plain,
            tunnel,
        } = listeners;
        let context = &self.context;
        let mut accept_tasks: Vec<JoinHandle<()>> = Vec::new();
        for listener in [Some(out.v4), out.v6].into_iter().flatten() {
            accept_tasks.push(tokio::spawn(outbound::serve(
                listener,
                local.clone(),
                context.clone(),
                self.orig_dst.clone(),
            )));
        }
        for listener in [Some(plain.v4), plain.v6].into_iter().flatten() {
            let task = inbound::serve(listener, local.clone(), context.clone());
            accept_tasks.push(tokio::spawn(task));
        }
        for listener in tunnel {
            let task = inbound_tunnel::serve(listener, local.clone(), context.clone());
            accept_tasks.push(tokio::spawn(task));
        }
        if let Err(err) = self.programs.enrol(cookie, EnrolledPod::new(OUTBOUND_PORT)) {
            accept_tasks.iter().for_each(JoinHandle::abort);
            let _ = self.programs.stop_inbound(cookie);
            return Err(err.into());
        }
        context.pods.insert(local.clone());
        Ok(CapturedPod {
            pod: local,
            accept_tasks,
            sockets,
        })
    }

    fn release(&mut self, key: &PodKey) {
        let Some(captured) = self.pods.remove(key) else {
            return;
        };
        self.context.pods.remove(&captured.pod);
        let cookie = captured.pod.netns.cookie();
        if let Err(err) = self.programs.unenrol(cookie) {
            tracing::error!(pod = %key.1, namespace = %key.0, "cannot release pod from capture: {err}");
        }
        if let Err(err) = self.programs.stop_inbound(cookie) {
            tracing::error!(pod = %key.1, namespace = %key.0, "cannot stop steering inbound traffic: {err}");
        }
        captured.accept_tasks.iter().for_each(JoinHandle::abort);
        if captured.pod.transparent
            && let Err(err) = transparent::remove(&captured.pod.netns)
        {
            tracing::warn!(pod = %key.1, namespace = %key.0, "cannot remove the transparent delivery routes: {err}");
        }
        tracing::info!(pod = %key.1, namespace = %key.0, "pod released");
    }
}
