//! The connections policy admitted and that are still open, kept so that a
//! policy change applies to them too: those the new policies deny are closed
//! (reset on both sides) and logged.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::sync::oneshot;

use super::{authorize, pod::LocalPod};
use crate::{identity::Identity, metrics::Metrics, policy::PolicySet};

/// What an admitted connection was checked on.
struct Open {
    pod: Arc<LocalPod>,
    source: IpAddr,
    identity: Option<Identity>,
    destination: SocketAddr,
    revoke: oneshot::Sender<String>,
}

/// The open admitted connections of the node.
#[derive(Default)]
pub struct OpenConnections {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Open>>,
}

/// An admitted connection's place in [`OpenConnections`], released on drop.
pub struct Admission<'a> {
    table: &'a OpenConnections,
    id: u64,
    revoked: Option<oneshot::Receiver<String>>,
}

impl OpenConnections {
    /// Records an admitted connection until the returned guard is dropped.
    pub fn track(
        &self,
        pod: Arc<LocalPod>,
        source: IpAddr,
        identity: Option<Identity>,
        destination: SocketAddr,
    ) -> Admission<'_> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (revoke, revoked) = oneshot::channel();
        self.lock().insert(
            id,
            Open {
                pod,
                source,
                identity,
                destination,
                revoke,
            },
        );
        Admission {
            table: self,
            id,
            revoked: Some(revoked),
        }
    }

    /// Checks every open connection against `policies`; closes (and logs)
    /// those now denied. Returns how many were closed.
    pub fn revoke_denied(&self, policies: &PolicySet, metrics: &Metrics) -> usize {
        let mut open = self.lock();
        let denied: Vec<(u64, String)> = open
            .iter()
            .filter_map(|(id, c)| {
                authorize::decide(
                    policies,
                    &c.pod,
                    c.source,
                    c.identity.as_ref(),
                    c.destination,
                    metrics,
                )
                .err()
                .map(|denied| (*id, denied.to_string()))
            })
            .collect();
        for (id, reason) in &denied {
            if let Some(connection) = open.remove(id) {
                tracing::warn!(
                    dst.pod = %connection.pod.name,
                    src.addr = %connection.source,
                    src.identity = connection.identity.as_ref().map(tracing::field::display),
                    destination = %connection.destination,
                    "open connection closed by a policy change: {reason}"
                );
                let _ = connection.revoke.send(reason.clone());
            }
        }
        denied.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Open>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Admission<'_> {
    /// Completes with the reason when a policy change denies the connection.
    pub async fn revoked(&mut self) -> String {
        match self.revoked.take() {
            Some(receiver) => match receiver.await {
                Ok(reason) => reason,
                // Never revoked (the table forgot it): wait forever.
                Err(_) => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        self.table.lock().remove(&self.id);
    }
}
