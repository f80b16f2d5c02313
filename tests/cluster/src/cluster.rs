//! A running cluster: creation, access to its pods, and teardown.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use crate::{
    ClusterError, ClusterSpec, PodProcess, mesh, netns,
    status::{PodStatus, Status},
    teardown, topology,
};

/// Where every cluster keeps its state, config and logs (`<dir>/<name>/`).
/// A tmpfs: it goes away on reboot, like the namespaces it describes.
pub const STATE_ROOT: &str = "/run/ztunnel-cluster";

/// A local cluster of network namespaces.
///
/// A cluster made by [`Cluster::create`] belongs to the calling process and
/// is torn down when dropped, on success, failure or panic alike;
/// [`Cluster::persist`] hands it over to `cluster down` instead.
#[derive(Debug)]
pub struct Cluster {
    status: Status,
    /// Whether dropping this value tears the cluster down.
    owned: bool,
    /// Where the `ztunnel` binary is, for a cluster running the mesh.
    bin_dir: Option<PathBuf>,
}

impl Cluster {
    /// Creates the cluster described by `spec`, owned by this process.
    pub fn create(spec: &ClusterSpec) -> Result<Self, ClusterError> {
        spec.validate()?;
        let state_dir = state_dir(&spec.name);
        fs::create_dir_all(STATE_ROOT).map_err(|err| ClusterError::io(STATE_ROOT, err))?;
        if netns::list()?
            .iter()
            .any(|ns| netns::cluster_of(ns) == Some(&spec.name))
        {
            return Err(ClusterError::Exists(spec.name.clone()));
        }
        // The state directory is prepared under a temporary name and renamed
        // into place: the rename is the atomic claim on the name, and no other
        // process (a concurrent `down --stale`) ever sees it without its state.
        let status = topology::plan(spec, &state_dir, Some(std::process::id()));
        let staging = Path::new(STATE_ROOT).join(format!(".{}.{}", spec.name, std::process::id()));
        let _ = fs::remove_dir_all(&staging);
        fs::create_dir(&staging).map_err(|err| ClusterError::io(&staging, err))?;
        write_atomically(&staging.join(STATE_FILE), &status_json(&status))?;
        if let Err(err) = fs::rename(&staging, &state_dir) {
            let _ = fs::remove_dir_all(&staging);
            return Err(match err.kind() {
                std::io::ErrorKind::AlreadyExists | std::io::ErrorKind::DirectoryNotEmpty => {
                    ClusterError::Exists(spec.name.clone())
                }
                _ => ClusterError::io(&state_dir, err),
            });
        }
        // From here on, dropping `cluster` undoes whatever was made.
        let cluster = Self {
            status,
            owned: true,
            bin_dir: spec.mesh.clone(),
        };
        for dir in [cluster.policies_dir(), cluster.logs_dir()] {
            fs::create_dir_all(&dir).map_err(|err| ClusterError::io(&dir, err))?;
        }
        cluster.write_registry()?;
        topology::wire(&cluster.status)?;
        if let Some(bin_dir) = &spec.mesh {
            let mut cluster = cluster;
            mesh::start(&mut cluster.status, bin_dir)?;
            cluster.save()?;
            return Ok(cluster);
        }
        Ok(cluster)
    }

    /// Opens the existing cluster `name` (made by `cluster up`). Dropping the
    /// value leaves the cluster running.
    pub fn open(name: &str) -> Result<Self, ClusterError> {
        let status = read_status(name)?.ok_or_else(|| ClusterError::NotFound(name.to_owned()))?;
        Ok(Self {
            status,
            owned: false,
            bin_dir: None,
        })
    }

    /// Keeps the cluster running after this value is dropped, until
    /// `cluster down`.
    pub fn persist(mut self) -> Result<Status, ClusterError> {
        self.status.owner_pid = None;
        self.save()?;
        self.owned = false;
        Ok(self.status.clone())
    }

    /// Tears the cluster down now, reporting any failure (dropping does the
    /// same but can only print failures).
    pub fn teardown(mut self) -> Result<(), ClusterError> {
        self.owned = false;
        teardown::remove(&self.status.name)
    }

    /// The cluster's description.
    pub fn status(&self) -> &Status {
        &self.status
    }

    /// The pod called `name` (or `namespace/name`).
    pub fn pod(&self, name: &str) -> Result<&PodStatus, ClusterError> {
        self.status
            .pod(name)
            .ok_or_else(|| ClusterError::NoSuchPod {
                pod: name.to_owned(),
                cluster: self.status.name.clone(),
            })
    }

    /// A command running `program` inside the network namespace of pod `pod`
    /// or, given a node's name, of that node: what runs there (the kubelet,
    /// host-network pods) is the node itself to the mesh.
    pub fn command(&self, pod: &str, program: &str) -> Result<Command, ClusterError> {
        if let Some(node) = self.status.node(pod) {
            return Ok(netns::exec(&node.netns, program));
        }
        Ok(netns::exec(&self.pod(pod)?.netns, program))
    }

    /// Runs `program args...` in pod (or node) `pod` to completion; returns its stdout,
    /// or an error carrying its stderr if it fails.
    pub fn run(&self, pod: &str, program: &str, args: &[&str]) -> Result<String, ClusterError> {
        netns::output(self.command(pod, program)?.args(args))
    }

    /// Starts `program args...` in pod `pod`, its output going to a log file
    /// in the cluster's state directory.
    pub fn spawn(
        &self,
        pod: &str,
        program: &str,
        args: &[&str],
    ) -> Result<PodProcess, ClusterError> {
        let mut cmd = self.command(pod, program)?;
        cmd.args(args);
        let program_name = Path::new(program)
            .file_name()
            .map_or(program.into(), |name| name.to_string_lossy());
        let log = self
            .logs_dir()
            .join(format!("{pod}-{program_name}-{}.log", unique_suffix()));
        let child = netns::spawn_logged(&mut cmd, &log)?;
        Ok(PodProcess::new(child, log))
    }

    /// Sets (`Some`) or removes (`None`) label `key` on Kubernetes namespace
    /// `namespace`, like `kubectl label namespace`; the registry the daemons
    /// watch is rewritten at once.
    pub fn label_namespace(
        &mut self,
        namespace: &str,
        key: &str,
        value: Option<&str>,
    ) -> Result<(), ClusterError> {
        let ns = self
            .status
            .namespaces
            .iter_mut()
            .find(|ns| ns.name == namespace)
            .ok_or_else(|| {
                ClusterError::Spec(format!(
                    "no namespace {namespace} in cluster {}",
                    self.status.name
                ))
            })?;
        set_label(&mut ns.labels, key, value);
        self.registry_changed()
    }

    /// Sets (`Some`) or removes (`None`) label `key` on pod `pod`, like
    /// `kubectl label pod`.
    pub fn label_pod(
        &mut self,
        pod: &str,
        key: &str,
        value: Option<&str>,
    ) -> Result<(), ClusterError> {
        let name = self.pod(pod)?.name.clone();
        let pod = self
            .status
            .pods
            .iter_mut()
            .find(|p| p.name == name)
            .expect("found above");
        set_label(&mut pod.labels, key, value);
        self.registry_changed()
    }

    /// Sets (`Some`) or removes (`None`) label `key` on Service `service`
    /// (`name` or `namespace/name`), like `kubectl label service`.
    pub fn label_service(
        &mut self,
        service: &str,
        key: &str,
        value: Option<&str>,
    ) -> Result<(), ClusterError> {
        let (namespace, name) = match service.split_once('/') {
            Some((namespace, name)) => (Some(namespace), name),
            None => (None, service),
        };
        let cluster = self.status.name.clone();
        let service = self
            .status
            .services
            .iter_mut()
            .find(|s| s.name == name && namespace.is_none_or(|ns| ns == s.namespace))
            .ok_or_else(|| {
                ClusterError::Spec(format!("no Service {service} in cluster {cluster}"))
            })?;
        set_label(&mut service.labels, key, value);
        self.registry_changed()
    }

    fn registry_changed(&mut self) -> Result<(), ClusterError> {
        topology::refresh_enrolment(&mut self.status);
        self.write_registry()?;
        self.save()
    }

    /// Kills node `node`'s daemon with SIGKILL, as a crash would, and waits
    /// until it is gone. Its pinned programs stay attached.
    pub fn kill_daemon(&mut self, node: &str) -> Result<(), ClusterError> {
        let daemon = self.node_daemon(node)?;
        let _ = Command::new("kill")
            .args(["-KILL", &daemon.to_string()])
            .status();
        netns::wait_gone(&[daemon], Duration::from_secs(10)).map_err(|alive| {
            ClusterError::Teardown(format!("daemon {alive:?} of {node} survived SIGKILL"))
        })
    }

    /// Replaces node `node`'s daemon the way a DaemonSet's rolling update
    /// does (`maxSurge: 1, maxUnavailable: 0`): starts `ztunnel` beside the
    /// running daemon with the same arguments, waits until it has taken over
    /// (the old one no longer accepts), then stops the old one with SIGTERM:
    /// it drains its open connections (up to its drain deadline) and exits.
    /// Returns the old daemon's process id. Without a running daemon, starts
    /// one and waits until it is ready.
    pub fn replace_daemon(
        &mut self,
        node: &str,
        ztunnel: &Path,
    ) -> Result<Option<u32>, ClusterError> {
        let old = self
            .node_daemon(node)
            .ok()
            .filter(|pid| netns::is_alive(*pid));
        let log = mesh::daemon_log(&self.status, node);
        let mark = std::fs::read(&log).map_or(0, |text| text.len());
        mesh::spawn_daemon(&mut self.status, node, ztunnel)?;
        self.save()?;
        let Some(old) = old else {
            return mesh::wait_daemon_ready(&self.status, node).map(|()| None);
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read(&log).unwrap_or_default();
            let new = String::from_utf8_lossy(text.get(mark..).unwrap_or_default());
            if new.contains("took over from the previous daemon") {
                break;
            }
            if new.contains("starting without taking over") || std::time::Instant::now() > deadline
            {
                return Err(ClusterError::Timeout(format!(
                    "the new daemon of {node} did not take over; its log ends:\n{}",
                    mesh::tail(&log)
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = Command::new("kill")
            .args(["-TERM", &old.to_string()])
            .status();
        Ok(Some(old))
    }

    /// Starts node `node`'s daemon again and waits until it is ready.
    pub fn start_daemon(&mut self, node: &str) -> Result<(), ClusterError> {
        let bin_dir = self
            .bin_dir
            .clone()
            .ok_or_else(|| ClusterError::Spec("this cluster runs no mesh".to_owned()))?;
        mesh::spawn_daemon(&mut self.status, node, &bin_dir.join("ztunnel"))?;
        self.save()?;
        mesh::wait_daemon_ready(&self.status, node)
    }

    /// Restarts every node daemon with `args` appended to its command line
    /// (replacing the extra arguments of every daemon; a node's own stay),
    /// and waits until all are ready.
    pub fn restart_daemons(&mut self, args: &[String]) -> Result<(), ClusterError> {
        self.status.config.daemon_args = args.to_vec();
        let nodes: Vec<String> = self.status.nodes.iter().map(|n| n.name.clone()).collect();
        for node in &nodes {
            self.kill_daemon(node)?;
            self.start_daemon(node)?;
        }
        Ok(())
    }

    fn node_daemon(&self, node: &str) -> Result<u32, ClusterError> {
        self.status
            .node(node)
            .and_then(|n| n.daemon.as_ref())
            .map(|d| d.pid)
            .ok_or_else(|| ClusterError::Spec(format!("node {node} runs no daemon")))
    }

    /// Waits until something listens on TCP `port` in pod `pod`.
    pub fn wait_listening(
        &self,
        pod: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<(), ClusterError> {
        netns::wait_listening(&self.pod(pod)?.netns, port, timeout)
    }

    fn policies_dir(&self) -> PathBuf {
        self.status.state_dir.join("policies")
    }

    fn logs_dir(&self) -> PathBuf {
        self.status.state_dir.join("logs")
    }

    fn save(&self) -> Result<(), ClusterError> {
        write_atomically(
            &self.status.state_dir.join(STATE_FILE),
            &status_json(&self.status),
        )
    }

    fn write_registry(&self) -> Result<(), ClusterError> {
        let path = self
            .status
            .config
            .registry
            .as_ref()
            .expect("planned clusters have a registry");
        write_atomically(path, topology::registry(&self.status).to_yaml().as_bytes())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.owned
            && let Err(err) = teardown::remove(&self.status.name)
        {
            eprintln!("tearing down cluster {}: {err}", self.status.name);
        }
    }
}

fn set_label(labels: &mut ztunnel::registry::Labels, key: &str, value: Option<&str>) {
    match value {
        Some(value) => labels.insert(key.to_owned(), value.to_owned()),
        None => labels.remove(key),
    };
}

/// The state file inside a cluster's state directory.
const STATE_FILE: &str = "state.json";

/// The state directory of cluster `name`.
pub fn state_dir(name: &str) -> PathBuf {
    Path::new(STATE_ROOT).join(name)
}

/// The saved status of cluster `name`, if it has one.
pub(crate) fn read_status(name: &str) -> Result<Option<Status>, ClusterError> {
    let path = state_dir(name).join(STATE_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(ClusterError::io(&path, err)),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|err| ClusterError::State {
            path,
            message: err.to_string(),
        })
}

fn status_json(status: &Status) -> Vec<u8> {
    serde_json::to_vec_pretty(status).expect("status always serialises")
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a reader
/// (a daemon watching the registry) never sees half a file.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ClusterError> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes).map_err(|err| ClusterError::io(&tmp, err))?;
    fs::rename(&tmp, path).map_err(|err| ClusterError::io(path, err))
}

/// A suffix that makes log names unique within this process.
fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
