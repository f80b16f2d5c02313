//! Which network namespace on this node holds a pod: found by address.
//!
//! containerd and CRI-O create each pod sandbox's network namespace as a file
//! under `/var/run/netns` (`cni-<uuid>`, or the sandbox id). The daemon, with
//! that directory mounted from the host, enters each namespace once, reads
//! its interface addresses, and maps them to the file; a pod from the API is
//! then found by its `podIPs`. Pod addresses are unique on a node, so the
//! match is exact; files already read (same inode) are not entered again.

use std::{
    collections::HashMap,
    net::IpAddr,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use crate::redirect::netns::PodNetns;

/// Addresses to namespace files, for one directory.
pub struct NetnsIndex {
    dir: PathBuf,
    /// Each file read: its inode and its addresses.
    files: HashMap<PathBuf, (u64, Vec<IpAddr>)>,
    /// The same, by address.
    by_ip: HashMap<IpAddr, PathBuf>,
}

impl NetnsIndex {
    /// An index of the namespaces under `dir` (nothing is read yet).
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            files: HashMap::new(),
            by_ip: HashMap::new(),
        }
    }

    /// The namespace file holding all of `ips`, if one is known.
    pub fn find(&self, ips: &[IpAddr]) -> Option<PathBuf> {
        let (first, rest) = ips.split_first()?;
        let path = self.by_ip.get(first)?;
        rest.iter()
            .all(|ip| self.by_ip.get(ip) == Some(path))
            .then(|| path.clone())
    }

    /// Reads the directory again: new files are entered, gone ones dropped.
    /// Returns whether anything changed.
    pub fn rescan(&mut self) -> bool {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(err) => {
                tracing::warn!(dir = %self.dir.display(), "cannot list pod network namespaces: {err}");
                return false;
            }
        };
        let mut seen = HashMap::new();
        for path in entries.filter_map(|entry| entry.ok().map(|entry| entry.path())) {
            // Follows symbolic links: the inode is the namespace's own.
            let Ok(inode) = std::fs::metadata(&path).map(|meta| meta.ino()) else {
                continue;
            };
            // A namespace read before the CNI plugin gave it an address is read again.
            let known = self.files.get(&path).filter(|(ino, addresses)| {
                *ino == inode && addresses.iter().any(|ip| !ip.is_loopback())
            });
            let addresses = match known {
                Some((_, addresses)) => addresses.clone(),
                None => match read_addresses(&path) {
                    Ok(addresses) => addresses,
                    Err(err) => {
                        tracing::debug!(path = %path.display(), "not a readable network namespace: {err}");
                        continue;
                    }
                },
            };
            seen.insert(path, (inode, addresses));
        }
        if seen == self.files {
            return false;
        }
        self.by_ip = seen
            .iter()
            .flat_map(|(path, (_, addresses))| addresses.iter().map(move |ip| (*ip, path.clone())))
            .collect();
        self.files = seen;
        true
    }
}

fn read_addresses(path: &Path) -> std::io::Result<Vec<IpAddr>> {
    PodNetns::open(path)?.addresses()
}
