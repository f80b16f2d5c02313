//! A stand-in Kubernetes API server, for tests: no real one runs on these
//! machines. It speaks the real wire format, so the code under test is the
//! code that talks to a real cluster:
//!
//! - `GET` of a cluster-wide collection lists it: a `<Kind>List` with the
//!   store's `resourceVersion`, paged with `limit` and `continue`;
//! - with `watch=true&resourceVersion=N` it streams newline-delimited watch
//!   events after N (`ADDED`, `MODIFIED`, `DELETED`), `BOOKMARK`s when asked
//!   for, and a `410 Gone` `ERROR` event when N is older than the history it
//!   keeps ([`ApiServer::compact`]);
//! - `POST` of an `events.k8s.io/v1` Event keeps it (and `PATCH` updates a
//!   series), for tests to read ([`ApiServer::events`]);
//! - `PATCH` of a pod with a JSON merge patch changes it (and its watchers
//!   see `MODIFIED`), as a node agent annotating pods does;
//! - `POST` of a `TokenReview` answers from the tokens it was given
//!   ([`ApiServer::add_token`]): authenticated with the token's user and pod
//!   claims, or not, with the `audiences` checked as the real server does;
//! - discovery (`/api`, `/apis`, `/api/v1`, `/apis/<group>/<version>`) for
//!   the kinds the project's manifests use, and `404 NotFound` for any
//!   single object it does not hold, so `kubectl apply --dry-run=client` runs
//!   against it.
//!
//! Tests change objects directly ([`ApiServer::apply`], [`ApiServer::delete`])
//! and break things on purpose ([`ApiServer::compact`],
//! [`ApiServer::close_watches`]). Serving is plain HTTP: the tests reach it
//! on addresses inside their own network namespaces.

use std::{
    collections::{BTreeMap, HashMap},
    convert::Infallible,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::{Method, Request, Response, StatusCode, body::Frame, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::{StreamExt, wrappers::ReceiverStream};

/// How often an open watch that asked for them gets a `BOOKMARK`.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);

/// A kind of object the stand-in knows: where it lives in the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Resource {
    /// API group (`""` for the core group).
    pub group: &'static str,
    /// API version.
    pub version: &'static str,
    /// `kind` of its objects.
    pub kind: &'static str,
    /// The collection's name in URLs.
    pub plural: &'static str,
    /// Whether its objects live in namespaces.
    pub namespaced: bool,
}

impl Resource {
    const fn new(
        group: &'static str,
        kind: &'static str,
        plural: &'static str,
        namespaced: bool,
    ) -> Self {
        Self {
            group,
            version: "v1",
            kind,
            plural,
            namespaced,
        }
    }

    /// `apiVersion` of its objects (`v1`, `apps/v1`).
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Path of the cluster-wide collection, such as `/api/v1/pods`.
    pub fn path(&self) -> String {
        let root = if self.group.is_empty() { "api" } else { "apis" };
        format!("/{root}/{}/{}", self.api_version(), self.plural)
    }
}

/// Namespaces.
pub const NAMESPACES: Resource = Resource::new("", "Namespace", "namespaces", false);
/// Pods.
pub const PODS: Resource = Resource::new("", "Pod", "pods", true);
/// Services.
pub const SERVICES: Resource = Resource::new("", "Service", "services", true);
/// EndpointSlices.
pub const ENDPOINT_SLICES: Resource =
    Resource::new("discovery.k8s.io", "EndpointSlice", "endpointslices", true);
/// Istio PeerAuthentications.
pub const PEER_AUTHENTICATIONS: Resource = Resource::new(
    "security.istio.io",
    "PeerAuthentication",
    "peerauthentications",
    true,
);
/// Istio AuthorizationPolicies.
pub const AUTHORIZATION_POLICIES: Resource = Resource::new(
    "security.istio.io",
    "AuthorizationPolicy",
    "authorizationpolicies",
    true,
);
/// Every collection listed and watched.
pub const RESOURCES: [Resource; 6] = [
    NAMESPACES,
    PODS,
    SERVICES,
    ENDPOINT_SLICES,
    PEER_AUTHENTICATIONS,
    AUTHORIZATION_POLICIES,
];

/// The kinds discovery lists besides [`RESOURCES`]: those of the project's
/// manifests (so `kubectl apply` can map them) and TokenReview.
const ALSO_DISCOVERED: [Resource; 11] = [
    Resource::new("", "ServiceAccount", "serviceaccounts", true),
    Resource::new("", "ConfigMap", "configmaps", true),
    Resource::new("", "Secret", "secrets", true),
    Resource::new("apps", "Deployment", "deployments", true),
    Resource::new("apps", "DaemonSet", "daemonsets", true),
    Resource::new(
        "rbac.authorization.k8s.io",
        "ClusterRole",
        "clusterroles",
        false,
    ),
    Resource::new(
        "rbac.authorization.k8s.io",
        "ClusterRoleBinding",
        "clusterrolebindings",
        false,
    ),
    Resource::new(
        "apiextensions.k8s.io",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        false,
    ),
    Resource::new(
        "authentication.k8s.io",
        "TokenReview",
        "tokenreviews",
        false,
    ),
    Resource::new("monitoring.coreos.com", "PodMonitor", "podmonitors", true),
    Resource::new(
        "monitoring.coreos.com",
        "PrometheusRule",
        "prometheusrules",
        true,
    ),
];

/// The discovery document at `path`, if it is one.
fn discovery(path: &str) -> Option<Value> {
    let known = || RESOURCES.iter().chain(&ALSO_DISCOVERED);
    if path == "/api" {
        return Some(
            json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}),
        );
    }
    if path == "/apis" {
        let groups: std::collections::BTreeSet<(&str, &str)> = known()
            .filter(|r| !r.group.is_empty())
            .map(|r| (r.group, r.version))
            .collect();
        let groups: Vec<Value> = groups
            .into_iter()
            .map(|(group, version)| {
                let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
                json!({"name": group, "versions": [gv], "preferredVersion": gv})
            })
            .collect();
        return Some(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}));
    }
    let requested = path
        .strip_prefix("/api/")
        .or_else(|| path.strip_prefix("/apis/"))?;
    let resources: Vec<Value> = known()
        .filter(|r| r.api_version() == requested)
        .map(|r| {
            json!({"name": r.plural, "singularName": r.kind.to_lowercase(), "namespaced": r.namespaced,
                   "kind": r.kind, "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]})
        })
        .collect();
    (!resources.is_empty()).then(|| {
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": requested, "resources": resources})
    })
}

/// A token the TokenReview endpoint knows.
#[derive(Clone, Debug)]
pub struct TokenInfo {
    /// `system:serviceaccount:<ns>:<sa>`.
    pub username: String,
    /// Audiences the token was issued for.
    pub audiences: Vec<String>,
    /// The pod it is bound to: name and uid.
    pub pod: Option<(String, String)>,
    /// The node named in the token's claims.
    pub node: Option<String>,
    /// When it stops being valid.
    pub expires: Instant,
}

/// The stand-in's state, shared with its connections.
struct Store {
    /// Last resourceVersion handed out.
    revision: u64,
    /// Objects by resource, then `namespace/name`.
    objects: BTreeMap<Resource, BTreeMap<String, Value>>,
    /// Every change since `history_start`, in order.
    history: Vec<(u64, Resource, &'static str, Value)>,
    /// Watches from before this revision get `410 Gone`.
    history_start: u64,
    tokens: HashMap<String, TokenInfo>,
    /// Bumped to end every open watch.
    watch_generation: u64,
    /// While false every request gets `503 Service Unavailable`.
    available: bool,
    requests: Vec<String>,
    /// Events posted, by name.
    events: BTreeMap<String, Value>,
    /// What was served.
    traffic: Traffic,
}

/// What the stand-in served, for the scale benchmark.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// List requests (each page counts).
    pub lists: u64,
    /// Bytes of list responses.
    pub list_bytes: u64,
    /// Watch requests.
    pub watches: u64,
    /// Watch events sent (`ADDED`, `MODIFIED`, `DELETED`; not bookmarks),
    /// over all watches.
    pub watch_events: u64,
    /// Bytes of those events.
    pub watch_bytes: u64,
}

/// A running stand-in API server.
pub struct ApiServer {
    store: Arc<Mutex<Store>>,
    changes: broadcast::Sender<()>,
    address: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl ApiServer {
    /// Serves on `listener` (bound by the caller, in whichever network
    /// namespace the test needs) from the current tokio runtime.
    pub fn serve(listener: std::net::TcpListener) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        let address = listener.local_addr()?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let store = Arc::new(Mutex::new(Store {
            revision: 1,
            objects: BTreeMap::new(),
            history: Vec::new(),
            history_start: 1,
            tokens: HashMap::new(),
            watch_generation: 0,
            available: true,
            requests: Vec::new(),
            events: BTreeMap::new(),
            traffic: Traffic::default(),
        }));
        let (changes, _) = broadcast::channel(1024);
        let (shared, notify) = (store.clone(), changes.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (store, changes) = (shared.clone(), notify.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let (store, changes) = (store.clone(), changes.clone());
                        async move { Ok::<_, Infallible>(handle(request, store, changes).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self {
            store,
            changes,
            address,
            task,
        })
    }

    /// The address it serves on.
    pub fn address(&self) -> std::net::SocketAddr {
        self.address
    }

    /// Creates or replaces an object (by `metadata.namespace` and `name`), as
    /// `kubectl apply` would: a new resourceVersion, an `ADDED` or
    /// `MODIFIED` event.
    pub fn apply(&self, resource: Resource, object: Value) {
        put(&mut lock(&self.store), resource, object);
        let _ = self.changes.send(());
    }

    /// Deletes an object; a `DELETED` event if it existed.
    pub fn delete(&self, resource: Resource, namespace: &str, name: &str) {
        let mut store = lock(&self.store);
        let Some(mut object) = store
            .objects
            .entry(resource)
            .or_default()
            .remove(&format!("{namespace}/{name}"))
        else {
            return;
        };
        store.revision += 1;
        let revision = store.revision;
        object["metadata"]["resourceVersion"] = revision.to_string().into();
        store.history.push((revision, resource, "DELETED", object));
        drop(store);
        let _ = self.changes.send(());
    }

    /// Creates the namespaces, pods and services of `registry` as the API
    /// objects Kubernetes would hold for them (running pods with their
    /// addresses, services with cluster IPs).
    pub fn seed(&self, registry: &ztunnel::registry::Registry) {
        for ns in &registry.namespaces {
            self.apply(
                NAMESPACES,
                json!({"metadata": {"name": ns.name, "labels": ns.labels}, "status": {"phase": "Active"}}),
            );
        }
        for pod in &registry.pods {
            let ips: Vec<Value> = pod
                .ips
                .iter()
                .map(|ip| json!({"ip": ip.to_string()}))
                .collect();
            // A pod of a workload is a Deployment's: its ReplicaSet controls it.
            let mut metadata =
                json!({"name": pod.name, "namespace": pod.namespace, "labels": pod.labels});
            if let Some(workload) = &pod.workload {
                let hash = "5f7b9c";
                metadata["generateName"] = json!(format!("{workload}-{hash}-"));
                metadata["labels"]["pod-template-hash"] = json!(hash);
                metadata["ownerReferences"] = json!([{
                    "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{workload}-{hash}"),
                    "uid": format!("uid-rs-{workload}"), "controller": true
                }]);
            }
            self.apply(
                PODS,
                json!({
                    "metadata": metadata,
                    "spec": {
                        "nodeName": pod.node, "serviceAccountName": pod.service_account,
                        "containers": [{"name": "app", "image": "ztunnel-testapp"}]
                    },
                    "status": {"phase": "Running", "podIP": ips[0]["ip"], "podIPs": ips}
                }),
            );
        }
        for svc in &registry.services {
            let vips: Vec<String> = svc.vips.iter().map(ToString::to_string).collect();
            let ports: Vec<Value> = svc
                .ports
                .iter()
                .map(|p| json!({"name": format!("tcp-{}", p.port), "port": p.port, "targetPort": p.target_port, "protocol": "TCP"}))
                .collect();
            self.apply(
                SERVICES,
                json!({
                    "metadata": {"name": svc.name, "namespace": svc.namespace, "labels": svc.labels},
                    "spec": {"type": "ClusterIP", "clusterIP": vips[0], "clusterIPs": vips,
                             "selector": svc.selector, "ports": ports}
                }),
            );
        }
    }

    /// An object as stored, if it exists.
    pub fn get(&self, resource: Resource, namespace: &str, name: &str) -> Option<Value> {
        lock(&self.store)
            .objects
            .get(&resource)?
            .get(&format!("{namespace}/{name}"))
            .cloned()
    }

    /// Forgets the event history, as etcd compaction does: every watch that
    /// resumes from an earlier resourceVersion gets `410 Gone`.
    pub fn compact(&self) {
        let mut store = lock(&self.store);
        store.history.clear();
        store.history_start = store.revision + 1;
    }

    /// Ends every open watch, as an API server restart does.
    pub fn close_watches(&self) {
        lock(&self.store).watch_generation += 1;
        let _ = self.changes.send(());
    }

    /// Takes the server down (`false`: open watches end, every request gets
    /// `503 Service Unavailable`, as while an API server restarts behind its
    /// load balancer) or brings it back (`true`).
    pub fn set_available(&self, available: bool) {
        let mut store = lock(&self.store);
        store.available = available;
        if !available {
            store.watch_generation += 1;
        }
        drop(store);
        let _ = self.changes.send(());
    }

    /// Makes `token` known to TokenReview.
    pub fn add_token(&self, token: &str, info: TokenInfo) {
        lock(&self.store).tokens.insert(token.to_owned(), info);
    }

    /// Writes a kubeconfig for this server at `path` (the token is not
    /// checked: the stand-in authorises everyone).
    pub fn write_kubeconfig(&self, path: &std::path::Path) -> std::io::Result<()> {
        std::fs::write(
            path,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: stand-in\n\
                 clusters: [{{name: stand-in, cluster: {{server: 'http://{}'}}}}]\n\
                 users: [{{name: client, user: {{token: not-checked}}}}]\n\
                 contexts: [{{name: stand-in, context: {{cluster: stand-in, user: client, namespace: default}}}}]\n",
                self.address
            ),
        )
    }

    /// The Events posted so far (`events.k8s.io/v1`), in name order.
    pub fn events(&self) -> Vec<Value> {
        lock(&self.store).events.values().cloned().collect()
    }

    /// What was served so far.
    pub fn traffic(&self) -> Traffic {
        lock(&self.store).traffic
    }

    /// Every request line served so far (`GET /api/v1/pods?watch=true...`).
    pub fn requests(&self) -> Vec<String> {
        lock(&self.store).requests.clone()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(store: &Mutex<Store>) -> MutexGuard<'_, Store> {
    store
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Stores `object` as the store's next revision, with its watch event;
/// returns it as stored.
fn put(store: &mut Store, resource: Resource, mut object: Value) -> Value {
    store.revision += 1;
    let revision = store.revision;
    object["apiVersion"] = resource.api_version().into();
    object["kind"] = resource.kind.into();
    object["metadata"]["resourceVersion"] = revision.to_string().into();
    let key = key(&object);
    if object["metadata"]["uid"].is_null() {
        object["metadata"]["uid"] = format!("uid-{revision}").into();
    }
    let objects = store.objects.entry(resource).or_default();
    let kind = if objects.insert(key, object.clone()).is_some() {
        "MODIFIED"
    } else {
        "ADDED"
    };
    store
        .history
        .push((revision, resource, kind, object.clone()));
    object
}

/// Applies a JSON merge patch (RFC 7386) to `target`: objects merge
/// recursively, `null` removes a key, anything else replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(patch) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let target = target.as_object_mut().expect("an object");
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

fn key(object: &Value) -> String {
    format!(
        "{}/{}",
        object["metadata"]["namespace"].as_str().unwrap_or_default(),
        object["metadata"]["name"].as_str().unwrap_or_default()
    )
}

type Body = BoxBody<Bytes, Infallible>;

/// The request's body as JSON, or the `400 Bad Request` to answer.
async fn json_body(request: Request<hyper::body::Incoming>) -> Result<Value, Response<Body>> {
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    serde_json::from_slice(&body).map_err(|err| {
        json_response(
            StatusCode::BAD_REQUEST,
            &status(400, "BadRequest", &err.to_string()),
        )
    })
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(value.to_string())).boxed())
        .expect("a valid response")
}

/// A `Status` object, as the API server returns errors.
fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code
    })
}

async fn handle(
    request: Request<hyper::body::Incoming>,
    store: Arc<Mutex<Store>>,
    changes: broadcast::Sender<()>,
) -> Response<Body> {
    let path = request.uri().path().to_owned();
    let query: HashMap<String, String> = request
        .uri()
        .query()
        .map(|q| {
            q.split('&')
                .filter_map(|pair| pair.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.replace("%2F", "/").replace("%3D", "=")))
                .collect()
        })
        .unwrap_or_default();
    let available = {
        let mut store = lock(&store);
        store
            .requests
            .push(format!("{} {}", request.method(), request.uri()));
        store.available
    };
    if !available {
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &status(503, "ServiceUnavailable", "the API server is shutting down"),
        );
    }
    if request.method() == Method::POST && path == "/apis/authentication.k8s.io/v1/tokenreviews" {
        return match json_body(request).await {
            Ok(review) => json_response(StatusCode::CREATED, &token_review(&store, review)),
            Err(refused) => refused,
        };
    }
    if path.starts_with("/apis/events.k8s.io/v1/namespaces/")
        && matches!(*request.method(), Method::POST | Method::PATCH)
    {
        let method = request.method().clone();
        let event = match json_body(request).await {
            Ok(event) => event,
            Err(refused) => return refused,
        };
        let name = event["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let mut store = lock(&store);
        let kept = store.events.entry(name).or_insert(Value::Null);
        // A merge patch of the fields a recorder changes (a series) is a
        // replacement of those top-level fields.
        match (
            method == Method::PATCH,
            kept.as_object_mut(),
            event.as_object(),
        ) {
            (true, Some(kept), Some(patch)) => kept.extend(patch.clone()),
            _ => *kept = event,
        }
        let code = if method == Method::POST {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        return json_response(code, &kept.clone());
    }
    if request.method() == Method::PATCH
        && let Some((namespace, name)) = path
            .strip_prefix("/api/v1/namespaces/")
            .and_then(|rest| rest.split_once("/pods/"))
    {
        let key = format!("{namespace}/{name}");
        let merge = request
            .headers()
            .get("content-type")
            .is_some_and(|t| t.as_bytes().starts_with(b"application/merge-patch+json"));
        if !merge {
            return json_response(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                &status(
                    415,
                    "UnsupportedMediaType",
                    "the stand-in takes merge patches only",
                ),
            );
        }
        let patch = match json_body(request).await {
            Ok(patch) => patch,
            Err(refused) => return refused,
        };
        let mut store = lock(&store);
        let Some(mut pod) = store
            .objects
            .get(&PODS)
            .and_then(|pods| pods.get(&key))
            .cloned()
        else {
            return json_response(
                StatusCode::NOT_FOUND,
                &status(404, "NotFound", &format!("pods \"{name}\" not found")),
            );
        };
        merge_patch(&mut pod, &patch);
        let stored = put(&mut store, PODS, pod);
        drop(store);
        let _ = changes.send(());
        return json_response(StatusCode::OK, &stored);
    }
    if let Some(document) = discovery(&path) {
        return json_response(StatusCode::OK, &document);
    }
    let Some(resource) = RESOURCES.into_iter().find(|r| r.path() == path) else {
        return json_response(
            StatusCode::NOT_FOUND,
            &status(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ),
        );
    };
    if request.method() != Method::GET {
        return json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &status(
                405,
                "MethodNotAllowed",
                "the stand-in only lists and watches",
            ),
        );
    }
    if query.get("watch").is_some_and(|w| w == "true" || w == "1") {
        let since = query
            .get("resourceVersion")
            .and_then(|rv| rv.parse().ok())
            .unwrap_or(0);
        lock(&store).traffic.watches += 1;
        let bookmarks = query
            .get("allowWatchBookmarks")
            .is_some_and(|b| b == "true");
        let timeout = query
            .get("timeoutSeconds")
            .and_then(|t| t.parse().ok())
            .map_or(Duration::from_secs(1800), Duration::from_secs);
        return watch(store, changes, resource, since, bookmarks, timeout);
    }
    list(&store, resource, &query)
}

fn list(
    store: &Mutex<Store>,
    resource: Resource,
    query: &HashMap<String, String>,
) -> Response<Body> {
    let mut store = lock(store);
    let all: Vec<&Value> = store
        .objects
        .get(&resource)
        .map(|objects| objects.values().collect())
        .unwrap_or_default();
    // `continue` is the offset of the next page, after the revision listed.
    let (revision, offset) = match query.get("continue").and_then(|c| c.split_once('-')) {
        Some((revision, offset)) => (
            revision.parse().unwrap_or(store.revision),
            offset.parse().unwrap_or(0),
        ),
        None => (store.revision, 0),
    };
    let limit = query
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(usize::MAX);
    let page: Vec<&Value> = all.iter().skip(offset).take(limit).copied().collect();
    let mut metadata = json!({"resourceVersion": revision.to_string()});
    if offset + page.len() < all.len() {
        metadata["continue"] = format!("{revision}-{}", offset + page.len()).into();
    }
    let response = json!({
        "kind": format!("{}List", resource.kind),
        "apiVersion": resource.api_version(),
        "metadata": metadata,
        "items": page,
    })
    .to_string();
    store.traffic.lists += 1;
    store.traffic.list_bytes += response.len() as u64;
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(response)).boxed())
        .expect("a valid response")
}

fn watch(
    store: Arc<Mutex<Store>>,
    changes: broadcast::Sender<()>,
    resource: Resource,
    since: u64,
    bookmarks: bool,
    timeout: Duration,
) -> Response<Body> {
    let (lines, body) = mpsc::channel::<Bytes>(64);
    let mut woken = changes.subscribe();
    tokio::spawn(async move {
        let line = |value: Value| Bytes::from(format!("{value}\n"));
        let (mut sent, generation) = {
            let store = lock(&store);
            if since + 1 < store.history_start {
                let gone = status(
                    410,
                    "Expired",
                    &format!(
                        "too old resource version: {since} ({})",
                        store.history_start
                    ),
                );
                let _ = lines.try_send(line(json!({"type": "ERROR", "object": gone})));
                return;
            }
            (since, store.watch_generation)
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let mut bookmark = tokio::time::interval(BOOKMARK_INTERVAL);
        loop {
            let (events, revision, closed) = {
                let mut store = lock(&store);
                // The history is in revision order: only its tail is new.
                let new = store.history.partition_point(|(rv, ..)| *rv <= sent);
                let events: Vec<Bytes> = store.history[new..]
                    .iter()
                    .filter(|(_, r, _, _)| *r == resource)
                    .map(|(_, _, kind, object)| line(json!({"type": kind, "object": object})))
                    .collect();
                store.traffic.watch_events += events.len() as u64;
                store.traffic.watch_bytes += events.iter().map(|e| e.len() as u64).sum::<u64>();
                (events, store.revision, store.watch_generation != generation)
            };
            if closed {
                return;
            }
            for event in events {
                if lines.send(event).await.is_err() {
                    return;
                }
            }
            sent = revision;
            tokio::select! {
                woke = woken.recv() => {
                    if matches!(woke, Err(broadcast::error::RecvError::Closed)) {
                        return;
                    }
                }
                _ = bookmark.tick(), if bookmarks => {
                    let mark = json!({"type": "BOOKMARK", "object": {
                        "kind": resource.kind, "apiVersion": resource.api_version(),
                        "metadata": {"resourceVersion": sent.to_string()}
                    }});
                    if lines.send(line(mark)).await.is_err() {
                        return;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return,
            }
        }
    });
    let frames = ReceiverStream::new(body).map(|bytes| Ok::<_, Infallible>(Frame::data(bytes)));
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .header("transfer-encoding", "chunked")
        .body(StreamBody::new(frames).boxed())
        .expect("a valid response")
}

/// Answers a TokenReview as the real server does: `status.authenticated`,
/// the user, the pod claims as `extra`, and the audiences that matched.
fn token_review(store: &Mutex<Store>, review: Value) -> Value {
    let token = review["spec"]["token"].as_str().unwrap_or_default();
    let wanted: Vec<String> = review["spec"]["audiences"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let store = lock(store);
    let status = match store.tokens.get(token) {
        Some(info) if info.expires <= Instant::now() => {
            json!({"authenticated": false, "error": "[invalid bearer token, service account token has expired]"})
        }
        Some(info) => {
            let matched: Vec<&String> = if wanted.is_empty() {
                info.audiences.iter().collect()
            } else {
                wanted
                    .iter()
                    .filter(|a| info.audiences.contains(a))
                    .collect()
            };
            if matched.is_empty() {
                json!({"authenticated": false, "error": "[invalid bearer token, token audiences don't match the requested audiences]"})
            } else {
                let mut extra = serde_json::Map::new();
                if let Some((name, uid)) = &info.pod {
                    extra.insert(
                        "authentication.kubernetes.io/pod-name".into(),
                        json!([name]),
                    );
                    extra.insert("authentication.kubernetes.io/pod-uid".into(), json!([uid]));
                }
                if let Some(node) = &info.node {
                    extra.insert(
                        "authentication.kubernetes.io/node-name".into(),
                        json!([node]),
                    );
                }
                json!({
                    "authenticated": true,
                    "user": {"username": info.username, "uid": "u", "groups": ["system:serviceaccounts", "system:authenticated"], "extra": extra},
                    "audiences": matched,
                })
            }
        }
        None => json!({"authenticated": false, "error": "[invalid bearer token]"}),
    };
    json!({
        "kind": "TokenReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": null},
        "spec": review["spec"],
        "status": status,
    })
}
