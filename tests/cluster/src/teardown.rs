//! Removing clusters, including what a killed run left behind.
//!
//! A cluster is found two ways: by its state directory and by the names of
//! its network namespaces (`ztc-<name>-...`). Either is enough, so a run
//! killed at any point (even before it saved its state) can be cleaned up.

use std::{collections::BTreeSet, fs};

use crate::{
    ClusterError,
    cluster::{STATE_ROOT, read_status, state_dir},
    netns,
};

/// Which clusters `cluster down` removes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    /// Every cluster of the project on this machine.
    All,
    /// The cluster with this name.
    Named(String),
    /// Leftovers only: clusters whose owning process is gone, and namespaces
    /// with no state. Live clusters (a running test's, or one made by
    /// `cluster up`) are kept.
    Stale,
}

/// Removes the selected clusters; returns their names.
pub fn down(selection: &Selection) -> Result<Vec<String>, ClusterError> {
    remove_abandoned_staging()?;
    let mut removed = Vec::new();
    for name in known_clusters()? {
        let selected = match selection {
            Selection::All => true,
            Selection::Named(wanted) => *wanted == name,
            Selection::Stale => is_stale(&name)?,
        };
        if selected {
            remove(&name)?;
            removed.push(name);
        }
    }
    Ok(removed)
}

/// Removes cluster `name`: kills every process in its namespaces, deletes
/// the namespaces (and with them every veth), then its state directory.
pub fn remove(name: &str) -> Result<(), ClusterError> {
    let mut failures = Vec::new();
    for ns in netns::list()?
        .iter()
        .filter(|ns| netns::cluster_of(ns) == Some(name))
    {
        if let Err(err) = netns::remove(ns) {
            failures.push(err.to_string());
        }
    }
    // Unlinking the pinned links detaches the daemons' programs.
    for dir in [crate::mesh::bpf_pin_dir(name), state_dir(name)] {
        if let Err(err) = fs::remove_dir_all(&dir)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            failures.push(ClusterError::io(&dir, err).to_string());
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(ClusterError::Teardown(failures.join("; ")))
    }
}

/// Names of every cluster with a state directory or a network namespace.
fn known_clusters() -> Result<BTreeSet<String>, ClusterError> {
    let mut names: BTreeSet<String> = netns::list()?
        .iter()
        .filter_map(|ns| netns::cluster_of(ns).map(str::to_owned))
        .collect();
    names.extend(
        state_entries()?
            .into_iter()
            .filter(|name| !name.starts_with('.')),
    );
    Ok(names)
}

/// Removes `.<name>.<pid>` staging directories of creations that died before
/// claiming their name (see `Cluster::create`).
fn remove_abandoned_staging() -> Result<(), ClusterError> {
    for entry in state_entries()? {
        let pid = entry
            .strip_prefix('.')
            .and_then(|rest| rest.rsplit_once('.'))
            .and_then(|(_, pid)| pid.parse().ok());
        if pid.is_some_and(|pid: u32| !netns::is_alive(pid)) {
            let path = std::path::Path::new(STATE_ROOT).join(&entry);
            fs::remove_dir_all(&path).map_err(|err| ClusterError::io(&path, err))?;
        }
    }
    Ok(())
}

/// Names of the entries of the state root.
fn state_entries() -> Result<Vec<String>, ClusterError> {
    match fs::read_dir(STATE_ROOT) {
        Ok(entries) => Ok(entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(err) => Err(ClusterError::io(STATE_ROOT, err)),
    }
}

fn is_stale(name: &str) -> Result<bool, ClusterError> {
    // An unreadable state file is a leftover too: nothing can drive that cluster.
    Ok(match read_status(name) {
        Ok(Some(status)) => status.owner_pid.is_some_and(|pid| !netns::is_alive(pid)),
        Ok(None) | Err(ClusterError::State { .. }) => true,
        Err(err) => return Err(err),
    })
}
