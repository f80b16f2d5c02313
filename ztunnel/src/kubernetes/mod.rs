//! The Kubernetes source: the registry and the policies from the API server.
//!
//! The daemon lists and watches namespaces, pods, services, EndpointSlices
//! and Istio's PeerAuthentication and AuthorizationPolicy (kube-runtime's
//! watcher: paged lists, watches from the list's resourceVersion with
//! bookmarks, a fresh list after `410 Gone` or a broken watch, with backoff).
//! One task owns every object; after each burst of events it rebuilds the
//! same [`Registry`] and [`PolicySet`] the file sources produce
//! ([`convert`], `policies`) and publishes them when they changed.
//!
//! Pods are watched cluster-wide, not only this node's: the client end of a
//! tunnel verifies the server against the destination pod's ServiceAccount,
//! and no node-scoped object names a remote pod's ServiceAccount. Which pods
//! this node captures is still decided by `spec.nodeName`.
//!
//! Nothing is published until every kind has been listed once, so a daemon
//! restarting never applies a partial view (which would release pods). The
//! policy kinds count as listed when their CRDs are not installed.
//!
//! A node daemon posts a Kubernetes Event on each policy object it does not
//! apply as written (`events`), and keeps Istio's redirection annotation on
//! the pods it captures ([`redirection`]).

pub mod convert;
mod events;
mod netns_index;
mod policies;
pub mod redirection;
mod store;

use std::{collections::BTreeSet, path::PathBuf, sync::Arc, time::Duration};

use futures_util::{
    StreamExt,
    stream::{BoxStream, SelectAll},
};
use k8s_openapi::api::{
    core::v1::{Namespace, Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, GroupVersionKind},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt, watcher, watcher::Event},
};
use tokio::sync::{oneshot, watch};

use crate::{
    policy::{Loader, PolicySet},
    registry::{self, Patched, PodChange, Registry},
    reload::Watched,
};
use convert::PodRecord;
use netns_index::NetnsIndex;
use store::Store;

/// How long the events after a first one are gathered before the views are
/// rebuilt, at least: a rebuild costs in proportion to the cluster (see
/// docs/scale.md), so a burst of changes (a rollout, a node draining) is
/// one rebuild, not one per pod. istiod waits as long before a push
/// (`PILOT_DEBOUNCE_AFTER`, 100 ms), but extends the wait while changes keep
/// coming (up to `PILOT_DEBOUNCE_MAX`, 10 s); here the window does not
/// extend, so no change waits longer than one window. When the last rebuild
/// took longer than 100 ms, the window is that long, so rebuilding takes at
/// most about half of a CPU however fast the cluster changes.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// How often pods of this node whose network namespace was not found yet
/// are looked for again.
const NETNS_RETRY: Duration = Duration::from_millis(500);

/// How to reach the API server and find pods on this node.
#[derive(Clone, Debug)]
pub struct KubeConfig {
    /// A kubeconfig file; none: the in-cluster configuration (the pod's
    /// ServiceAccount token and `KUBERNETES_SERVICE_HOST`).
    pub kubeconfig: Option<PathBuf>,
    /// Where the container runtime creates pod network namespaces; none:
    /// they are not looked for (the CA, which captures nothing).
    pub netns_dir: Option<PathBuf>,
    /// Whether to watch Istio's policy kinds (the CA does not need them).
    pub policies: bool,
}

/// Why the source could not start.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// No usable client configuration.
    #[error("Kubernetes client configuration: {0}")]
    Config(String),
    /// The watching task ended before the first complete list.
    #[error("the Kubernetes watches stopped before the first complete list")]
    Stopped,
}

/// The registry and the policies, kept current from the API server.
pub struct KubeSource {
    /// The registry (its task also feeds `policies`); empty until `synced`.
    pub registry: Watched<Registry>,
    /// The policies in force; none until `synced`.
    pub policies: watch::Receiver<Arc<PolicySet>>,
    /// Completes with the first complete view.
    pub synced: Synced,
    /// Keeps Istio's redirection annotation on the captured pods (node
    /// daemons only).
    pub annotator: Option<redirection::Annotator>,
}

/// The first complete view of the cluster, to wait for.
pub struct Synced(oneshot::Receiver<()>);

impl Synced {
    /// Waits until every kind has been listed once and the first complete
    /// view is published, however long the API server takes (the watches
    /// log why they retry).
    pub async fn wait(self) -> Result<(), KubeError> {
        self.0.await.map_err(|_| KubeError::Stopped)
    }
}

/// Builds the client and starts listing and watching for the daemon of
/// `node` (none: the CA); returns at once. The view is complete once
/// [`KubeSource::synced`] is.
pub async fn start(
    config: &KubeConfig,
    node: Option<&str>,
    root_namespace: &str,
) -> Result<KubeSource, KubeError> {
    let client = client(config).await?;
    let (registry_tx, registry_rx) = watch::channel(Arc::new(Registry::default()));
    let (policies_tx, policies_rx) = watch::channel(Arc::new(PolicySet::default()));
    // Node daemons (which look for pods' network namespaces) capture pods,
    // so they annotate them; the CA does not.
    let (annotated, annotator) = match node {
        Some(_) if config.netns_dir.is_some() => {
            let (annotated, view) = watch::channel(BTreeSet::new());
            let annotator = redirection::Annotator::start(client.clone(), view);
            (Some(annotated), Some(annotator))
        }
        _ => (None, None),
    };
    let mut state = State {
        node: node.map(str::to_owned),
        namespaces: Store::default(),
        pods: Store::default(),
        services: Store::default(),
        slices: Store::default(),
        policies: Default::default(),
        loader: Loader::new(root_namespace),
        netns: config.netns_dir.clone().map(NetnsIndex::new),
        missing_netns: false,
        registry: registry_tx,
        policy_set: policies_tx,
        annotated,
        events: node
            .filter(|_| config.policies)
            .map(|node| events::PolicyEvents::new(client.clone(), node)),
        shrinks: Default::default(),
        pod_changes: None,
        left_out: false,
        annotated_here: BTreeSet::new(),
    };
    if !config.policies {
        // Not watched: complete, and empty, from the start.
        state.policies.iter_mut().for_each(|store| {
            store.mark_absent();
        });
    }
    tracing::info!(
        policies = config.policies,
        "listing namespaces, pods, services and EndpointSlices from the Kubernetes API"
    );
    let (ready_tx, ready_rx) = oneshot::channel();
    let task = tokio::spawn(run(watches(&client, config.policies), state, ready_tx));
    Ok(KubeSource {
        registry: Watched::fed_by(registry_rx, task),
        policies: policies_rx,
        synced: Synced(ready_rx),
        annotator,
    })
}

/// A client for the API server `config` names.
pub async fn client(config: &KubeConfig) -> Result<Client, KubeError> {
    let kube_config = match &config.kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path).map_err(|err| {
                KubeError::Config(format!("reading kubeconfig {}: {err}", path.display()))
            })?;
            kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(|err| {
                    KubeError::Config(format!("using kubeconfig {}: {err}", path.display()))
                })?
        }
        None => kube::Config::incluster().map_err(|err| {
            KubeError::Config(format!(
                "in-cluster configuration (KUBERNETES_SERVICE_HOST and the ServiceAccount token; \
                 outside a cluster give --kubeconfig): {err}"
            ))
        })?,
    };
    Client::try_from(kube_config)
        .map_err(|err| KubeError::Config(format!("building the client: {err}")))
}

/// One event of one watch.
enum Update {
    Namespace(Event<Namespace>),
    // Boxed: pods and services are several times the size of the rest.
    Pod(Box<Event<PodRecord>>),
    Service(Box<Event<Service>>),
    Slice(Event<EndpointSlice>),
    /// An event of the policy kind `policies::KINDS[index]`.
    Policy(usize, Event<DynamicObject>),
    /// A watch failed; it is retried with backoff.
    Failed {
        kind: &'static str,
        policy: Option<usize>,
        error: watcher::Error,
    },
}

fn watches(client: &Client, policies: bool) -> SelectAll<BoxStream<'static, Update>> {
    fn watch<K>(
        api: Api<K>,
        kind: &'static str,
        policy: Option<usize>,
        wrap: impl Fn(Event<K>) -> Update + Send + 'static,
    ) -> BoxStream<'static, Update>
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    {
        watcher(api, watcher::Config::default())
            .default_backoff()
            .map(move |result| match result {
                Ok(event) => wrap(event),
                Err(error) => Update::Failed {
                    kind,
                    policy,
                    error,
                },
            })
            .boxed()
    }
    let mut all = SelectAll::new();
    all.push(watch(
        Api::all(client.clone()),
        "namespaces",
        None,
        Update::Namespace,
    ));
    all.push(watch(Api::all(client.clone()), "pods", None, |event| {
        Update::Pod(Box::new(record_pods(event)))
    }));
    all.push(watch(Api::all(client.clone()), "services", None, |event| {
        Update::Service(Box::new(event))
    }));
    all.push(watch(
        Api::all(client.clone()),
        "endpointslices",
        None,
        Update::Slice,
    ));
    let kinds = if policies { &policies::KINDS[..] } else { &[] };
    for (index, kind) in kinds.iter().enumerate() {
        let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(
            policies::GROUP,
            policies::VERSION,
            kind,
        ));
        let api = Api::<DynamicObject>::all_with(client.clone(), &resource);
        all.push(watch(api, kind, Some(index), move |event| {
            Update::Policy(index, event)
        }));
    }
    all
}

/// Every object, and where the views built from them go.
struct State {
    /// This node; none for the CA, which captures nothing.
    node: Option<String>,
    namespaces: Store<Namespace>,
    pods: Store<PodRecord>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    policies: [Store<DynamicObject>; 2],
    loader: Loader,
    netns: Option<NetnsIndex>,
    /// A pod of this node had no network namespace at the last rebuild.
    missing_netns: bool,
    registry: watch::Sender<Arc<Registry>>,
    policy_set: watch::Sender<Arc<PolicySet>>,
    /// This node's pods that carry Istio's redirection annotation (node
    /// daemons only).
    annotated: Option<watch::Sender<BTreeSet<String>>>,
    /// Events on the policy objects not applied as written (node daemons).
    events: Option<events::PolicyEvents>,
    /// When the cluster shrank enough to give memory back.
    shrinks: crate::memory::Surges,
    /// The pods changed since the registry was last published, to patch it
    /// with ([`Registry::patched`]); none when anything else changed too,
    /// and the registry is rebuilt whole.
    pod_changes: Option<Vec<PodChange>>,
    /// The last rebuild left a pod or Service out over an address another
    /// holds: a patch could not tell which takes the address when it is
    /// freed, so changes rebuild until none is left out.
    left_out: bool,
    /// This node's pods that carry the redirection annotation, kept as
    /// their events arrive (a scan of every pod per change cost a third of
    /// the daemon's CPU at 100,000 pods) and published with the registry.
    annotated_here: BTreeSet<String>,
}

/// What an update changed.
#[derive(Default)]
struct Changed {
    registry: bool,
    policies: bool,
}

async fn run(
    mut updates: SelectAll<BoxStream<'static, Update>>,
    mut state: State,
    ready: oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    let mut retry = tokio::time::interval(NETNS_RETRY);
    let mut last_rebuild = Duration::ZERO;
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut changed = Changed::default();
        tokio::select! {
            update = updates.next() => {
                let Some(update) = update else { return };
                state.apply(update, &mut changed);
                // Whatever else arrives within the window: one rebuild per
                // burst, not one per event.
                let window = tokio::time::sleep(DEBOUNCE.max(last_rebuild));
                tokio::pin!(window);
                loop {
                    tokio::select! {
                        biased;
                        update = updates.next() => match update {
                            Some(update) => state.apply(update, &mut changed),
                            None => return,
                        },
                        () = &mut window => break,
                    }
                }
            }
            // Rebuilt only when the netns directory changed.
            _ = retry.tick(), if state.missing_netns => changed.registry = state.rescan_netns(),
        }
        if !state.synced() {
            continue;
        }
        let first = ready.is_some();
        // Policies first: publishing them is cheap, a registry rebuild
        // costs in proportion to the cluster.
        if changed.policies || first {
            state.publish_policies();
        }
        if changed.registry || first {
            let started = std::time::Instant::now();
            state.publish_registry();
            last_rebuild = started.elapsed();
        }
        if let Some(ready) = ready.take() {
            tracing::info!("the Kubernetes view is complete");
            // Listing the cluster (pages of pod JSON, parsed and dropped)
            // leaves freed memory in the allocator's arenas: give it back.
            crate::memory::trim();
            let _ = ready.send(());
        }
    }
}

/// The network namespace of this node's pod at `ips`, from `netns`; the
/// directory is read again for a pod not found (it may be new), once while
/// `rescanned` is false.
fn netns_of(
    netns: &mut Option<NetnsIndex>,
    rescanned: &mut bool,
    ips: &[std::net::IpAddr],
) -> Option<PathBuf> {
    let netns = netns.as_mut()?;
    netns.find(ips).or_else(|| {
        if !std::mem::replace(rescanned, true) {
            netns.rescan();
        }
        netns.find(ips)
    })
}

impl State {
    fn apply(&mut self, update: Update, changed: &mut Changed) {
        match update {
            Update::Namespace(event) => {
                let applied = self.namespaces.apply(event);
                self.rebuild_if(applied, changed);
            }
            Update::Pod(event) => {
                let here = |record: &PodRecord| {
                    record.annotated && record.node.is_some() && record.node == self.node
                };
                let (change, annotated) = match &*event {
                    Event::Apply(record) => {
                        (Some(record.change()), Some((record.key(), here(record))))
                    }
                    Event::Delete(record) => (Some(record.removal()), Some((record.key(), false))),
                    // A list: everything may have changed.
                    Event::Init | Event::InitApply(_) | Event::InitDone => (None, None),
                };
                match annotated {
                    Some((key, true)) => {
                        self.annotated_here.insert(key.to_owned());
                    }
                    Some((key, false)) => {
                        self.annotated_here.remove(key);
                    }
                    None => {}
                }
                let listed = matches!(*event, Event::InitDone);
                if self.pods.apply(*event) {
                    changed.registry = true;
                    match (change, &mut self.pod_changes) {
                        (Some(change), Some(changes)) => changes.push(change),
                        _ => self.pod_changes = None,
                    }
                }
                if let (true, Some(node)) = (listed, self.node.as_deref()) {
                    self.annotated_here =
                        redirection::annotated_on(self.pods.objects().map(|(_, pod)| pod), node);
                }
            }
            Update::Service(event) => {
                let applied = self.services.apply(*event);
                self.rebuild_if(applied, changed);
            }
            Update::Slice(event) => {
                let applied = self.slices.apply(event);
                self.rebuild_if(applied, changed);
            }
            Update::Policy(index, event) => changed.policies |= self.policies[index].apply(event),
            Update::Failed {
                kind,
                policy,
                error,
            } => {
                if let (Some(index), true) = (policy, is_not_found(&error)) {
                    if self.policies[index].mark_absent() {
                        tracing::warn!(
                            "{kind} is not served by the API server (its CRD is not installed): \
                             no {kind} is enforced until it is"
                        );
                        changed.policies = true;
                    }
                } else {
                    tracing::warn!("watching {kind}: {error}; retrying");
                }
            }
        }
    }

    /// Marks the registry for a rebuild if `applied` changed its objects.
    fn rebuild_if(&mut self, applied: bool, changed: &mut Changed) {
        if applied {
            changed.registry = true;
            self.pod_changes = None;
        }
    }

    fn synced(&self) -> bool {
        self.namespaces.synced()
            && self.pods.synced()
            && self.services.synced()
            && self.slices.synced()
            && self.policies.iter().all(Store::synced)
    }

    fn publish_registry(&mut self) {
        // A pod not found in the netns index may be new: the directory is
        // read again, once per publish at most.
        let mut rescanned = false;
        let patched = match self.pod_changes.replace(Vec::new()) {
            Some(changes) if !self.left_out => {
                let (node, netns) = (self.node.as_deref(), &mut self.netns);
                // This node's pods (a few of the cluster's) get their netns.
                let changes = changes.into_iter().map(|change| match change {
                    PodChange::Set(pod) if node == Some(pod.node.as_str()) => {
                        let mut local = registry::Pod::clone(&pod);
                        local.netns = netns_of(netns, &mut rescanned, &pod.ips);
                        PodChange::Set(Arc::new(local))
                    }
                    other => other,
                });
                let current = self.registry.borrow().clone();
                current.patched(changes)
            }
            _ => Patched::Rebuild("objects other than pods changed".to_owned()),
        };
        let registry = match patched {
            Patched::Unchanged => None,
            Patched::Changed(registry) => Some(*registry),
            Patched::Rebuild(why) => {
                tracing::debug!("rebuilding the registry: {why}");
                self.rebuild(&mut rescanned)
            }
        };
        if let Some(annotated) = &self.annotated {
            annotated.send_if_modified(|current| {
                let modified = *current != self.annotated_here;
                if modified {
                    current.clone_from(&self.annotated_here);
                }
                modified
            });
        }
        let Some(registry) = registry else { return };
        self.missing_netns = self
            .node
            .as_deref()
            .is_some_and(|node| registry.pods_on(node).any(|pod| pod.netns.is_none()));
        // Here, not on the first connection after the change (and outside
        // the channel's lock, which connections read).
        registry.build_index();
        tracing::info!(
            namespaces = registry.namespaces.len(),
            pods = registry.pods.len(),
            services = registry.services.len(),
            "registry updated from the Kubernetes API"
        );
        let pods = registry.pods.len();
        // The previous registry is freed here, unless a connection still
        // holds it.
        drop(self.registry.send_replace(Arc::new(registry)));
        if self.shrinks.trim_now(pods) {
            crate::memory::trim();
            tracing::info!(
                pods,
                "the cluster shrank to half: freed memory given back to the system"
            );
        }
    }

    /// The registry built whole from the objects, if it differs from the
    /// current one and passes its checks.
    fn rebuild(&mut self, rescanned: &mut bool) -> Option<Registry> {
        let objects = convert::Objects {
            namespaces: self.namespaces.objects().map(|(_, o)| o).collect(),
            pods: self.pods.objects().map(|(_, o)| o).collect(),
            services: self.services.objects().map(|(_, o)| o).collect(),
            slices: self.slices.objects().map(|(_, o)| o).collect(),
        };
        let netns = &mut self.netns;
        let (registry, left_out) = convert::registry(&objects, self.node.as_deref(), |ips| {
            netns_of(netns, rescanned, ips)
        });
        self.left_out = left_out > 0;
        match registry.validated() {
            // Only this task sends: what it compared with is still current.
            Ok(registry) if **self.registry.borrow() != registry => Some(registry),
            Ok(_) => None,
            Err(err) => {
                tracing::warn!("keeping the previous registry: {err}");
                None
            }
        }
    }

    /// Reads the netns directory again; true when it changed (the registry
    /// is then rebuilt: any pod of this node may have found its netns).
    fn rescan_netns(&mut self) -> bool {
        let changed = self.netns.as_mut().is_some_and(NetnsIndex::rescan);
        if changed {
            self.pod_changes = None;
        }
        changed
    }

    fn publish_policies(&mut self) {
        let set = self
            .loader
            .load_objects(policies::documents(&self.policies));
        tracing::info!(
            authorization = set.authorization.len(),
            peer_authentication = set.peer_authentication.len(),
            "policies updated from the Kubernetes API"
        );
        if let Some(events) = &mut self.events {
            events.post(&set, &self.policies);
        }
        self.policy_set.send_replace(Arc::new(set));
    }
}

/// A pod event with the pod as kept ([`PodRecord`]): converted once, here.
fn record_pods(event: Event<Pod>) -> Event<PodRecord> {
    match event {
        Event::Init => Event::Init,
        Event::InitApply(pod) => Event::InitApply(PodRecord::new(&pod)),
        Event::InitDone => Event::InitDone,
        Event::Apply(pod) => Event::Apply(PodRecord::new(&pod)),
        Event::Delete(pod) => Event::Delete(PodRecord::new(&pod)),
    }
}

/// Whether the API server answered that the resource does not exist.
fn is_not_found(error: &watcher::Error) -> bool {
    match error {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status)) => status.code == 404,
        _ => false,
    }
}
