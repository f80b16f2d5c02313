//! The pods of this node the proxy serves, as it knows them: who they are
//! and where their network namespace is.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, RwLock},
};

use super::limits::PodConnections;
use crate::{identity::Identity, redirect::netns::PodNetns, registry::Labels};

/// An enrolled pod of this node.
#[derive(Debug)]
pub struct LocalPod {
    /// Pod name.
    pub name: String,
    /// Kubernetes namespace.
    pub namespace: String,
    /// ServiceAccount.
    pub service_account: String,
    /// Its workload identity (from namespace and ServiceAccount).
    pub identity: Identity,
    /// Its addresses.
    pub ips: Vec<IpAddr>,
    /// Its labels (policy selectors).
    pub labels: Labels,
    /// The workload it belongs to, as metrics name it
    /// ([`crate::registry::Pod::workload`]).
    pub workload: String,
    /// Its W3C baggage for HBONE peers ([`crate::tunnel::hbone::baggage`]).
    pub baggage: Option<http::HeaderValue>,
    /// Its network namespace.
    pub netns: PodNetns,
    /// Whether its namespace is set up for delivery from the original
    /// client's address ([`crate::redirect::transparent`]).
    pub transparent: bool,
    /// Its connections open now, counted against its limits.
    pub connections: PodConnections,
}

/// The captured pods of this node by address, for same-node delivery.
#[derive(Debug, Default)]
pub struct LocalPods {
    by_ip: RwLock<HashMap<IpAddr, Arc<LocalPod>>>,
}

impl LocalPods {
    /// Adds `pod` under each of its addresses.
    pub fn insert(&self, pod: Arc<LocalPod>) {
        let mut by_ip = self.by_ip.write().unwrap_or_else(|p| p.into_inner());
        for ip in &pod.ips {
            by_ip.insert(*ip, pod.clone());
        }
    }

    /// Removes `pod`'s addresses (those still pointing at it).
    pub fn remove(&self, pod: &Arc<LocalPod>) {
        let mut by_ip = self.by_ip.write().unwrap_or_else(|p| p.into_inner());
        for ip in &pod.ips {
            if by_ip.get(ip).is_some_and(|held| Arc::ptr_eq(held, pod)) {
                by_ip.remove(ip);
            }
        }
    }

    /// The captured pod with address `ip`.
    pub fn get(&self, ip: IpAddr) -> Option<Arc<LocalPod>> {
        self.by_ip
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&ip)
            .cloned()
    }
}
