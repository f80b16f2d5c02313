//! What keeps one pod, or one peer, from exhausting the daemon.
//!
//! Every proxied connection costs the daemon two file descriptors on each
//! node it crosses, and a descriptor is what runs out first: when the
//! process's limit is reached every listener of the node fails to accept,
//! and every pod's traffic stops, not just the greedy one's. Two limits
//! bound what one party can hold:
//! - **connections per pod and direction** (`--max-connections-per-pod`): a
//!   pod's outbound connections (through its outbound listener) and its
//!   inbound ones (delivered to it, plaintext or tunnelled). The excess is
//!   refused with a reset at once. The default is a quarter of the daemon's
//!   open-file limit, so one pod can hold at most half the descriptors
//!   ([`connections_per_pod_for`]);
//! - **pending tunnel handshakes**, on the node and per source address:
//!   anyone who can reach a pod's port 15008 can open a TCP connection and
//!   send nothing. Handshakes beyond the caps are refused at once (the
//!   source's excess, never an honest peer's handshake in progress), and
//!   each handshake still ends within [`crate::tunnel::HANDSHAKE_TIMEOUT`].

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use tokio::net::TcpStream;

use super::copy::Resettable;
use crate::metrics::{LimitLabels, Metrics};

/// The limits in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections one pod may have open at once, in each direction.
    pub connections_per_pod: usize,
    /// Tunnel handshakes in progress at once on this node.
    pub pending_handshakes: usize,
    /// Tunnel handshakes in progress at once from one source address.
    pub pending_handshakes_per_source: usize,
}

/// Default cap of pending handshakes on the node: a fifth of the usual
/// 20,000-descriptor floor of these machines, and about four seconds of
/// handshakes for a 2-core node, so an honest burst this large completes.
pub const PENDING_HANDSHAKES: usize = 4096;

/// Default cap of pending handshakes from one address. A tunnel carries one
/// connection at a time, so a pod that opens a thousand connections at once
/// to one destination opens a thousand tunnels (later ones reuse them); a
/// flood is tens of thousands.
pub const PENDING_HANDSHAKES_PER_SOURCE: usize = 1024;

/// The default per-pod limit for a daemon that may open `open_files`
/// descriptors: a quarter of them in each direction (each connection costs
/// two), at least 1024. With the 1,048,576 descriptors a container usually
/// has that is 262,144 per pod and direction, above what a workload opens in
/// practice; Istio's ztunnel has no such cap.
pub fn connections_per_pod_for(open_files: u64) -> usize {
    usize::try_from(open_files / 4)
        .unwrap_or(usize::MAX)
        .max(1024)
}

/// Which way a pod's connection goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the pod (its outbound listener).
    Outbound,
    /// To the pod (delivered to its application).
    Inbound,
}

impl Direction {
    /// The metric label of the per-pod limit in this direction.
    pub fn limit_label(self) -> &'static str {
        match self {
            Self::Outbound => "outbound_per_pod",
            Self::Inbound => "inbound_per_pod",
        }
    }
}

/// A pod's connections open now, by direction.
#[derive(Debug, Default)]
pub struct PodConnections {
    outbound: AtomicUsize,
    inbound: AtomicUsize,
}

impl PodConnections {
    /// Counts one more connection in `direction`, unless `limit` are open.
    pub fn open(&self, direction: Direction, limit: usize) -> Option<Slot<'_>> {
        let counter = match direction {
            Direction::Outbound => &self.outbound,
            Direction::Inbound => &self.inbound,
        };
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < limit).then_some(open + 1)
            })
            .ok()
            .map(|_| Slot(counter))
    }

    /// Connections open now in `direction`.
    pub fn count(&self, direction: Direction) -> usize {
        match direction {
            Direction::Outbound => self.outbound.load(Ordering::Acquire),
            Direction::Inbound => self.inbound.load(Ordering::Acquire),
        }
    }
}

/// One counted connection of a pod, uncounted when dropped.
#[derive(Debug)]
pub struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a handshake was refused before it began.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeRefused {
    /// The node has as many handshakes in progress as it allows.
    #[error("{0} tunnel handshakes are already in progress on this node")]
    Node(usize),
    /// The source address has as many handshakes in progress as it may.
    #[error("{0} tunnel handshakes from this address are already in progress")]
    Source(usize),
}

impl HandshakeRefused {
    /// The metric label of the limit that refused it.
    pub fn limit_label(self) -> &'static str {
        match self {
            Self::Node(_) => "pending_handshakes",
            Self::Source(_) => "pending_handshakes_per_source",
        }
    }
}

/// The tunnel handshakes in progress on this node, by source address.
#[derive(Debug, Default)]
pub struct PendingHandshakes {
    /// Handshakes by source; entries are removed at zero, so the map holds
    /// only the addresses with a handshake in progress.
    by_source: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

impl PendingHandshakes {
    /// Counts a handshake from `source` as in progress, unless a cap of
    /// `limits` is reached; it ends when the returned guard is dropped.
    pub fn begin(
        &self,
        source: IpAddr,
        limits: &Limits,
    ) -> Result<Handshake<'_>, HandshakeRefused> {
        let mut guard = self.lock();
        let (total, by_source) = &mut *guard;
        if *total >= limits.pending_handshakes {
            return Err(HandshakeRefused::Node(*total));
        }
        let from_source = by_source.entry(source).or_default();
        if *from_source >= limits.pending_handshakes_per_source {
            return Err(HandshakeRefused::Source(*from_source));
        }
        *from_source += 1;
        *total += 1;
        Ok(Handshake {
            table: self,
            source,
        })
    }

    /// Handshakes in progress now.
    pub fn count(&self) -> usize {
        self.lock().0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, HashMap<IpAddr, usize>)> {
        // Never held across an await; a panic while held leaves consistent counts.
        self.by_source
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A handshake in progress, counted until dropped.
#[derive(Debug)]
pub struct Handshake<'a> {
    table: &'a PendingHandshakes,
    source: IpAddr,
}

impl Drop for Handshake<'_> {
    fn drop(&mut self) {
        let mut guard = self.table.lock();
        let (total, by_source) = &mut *guard;
        *total = total.saturating_sub(1);
        if let Some(count) = by_source.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                by_source.remove(&self.source);
            }
        }
    }
}

/// Refuses `stream` (from `peer`, for pod `pod`), over the limit named
/// `limit`: a reset at once, so its descriptor is freed now and the client
/// knows; counted, and logged (rate-limited like every warning).
pub fn refuse(
    stream: TcpStream,
    peer: SocketAddr,
    pod: &str,
    limit: &'static str,
    why: &dyn std::fmt::Display,
    metrics: &Metrics,
) {
    stream.reset_on_close(true);
    drop(stream);
    count_refusal(metrics, limit);
    tracing::warn!(pod, %peer, limit, "connection refused: {why}");
}

/// Counts a refusal by the limit named `limit` (`ztunnel_limit_refusals_total`).
pub fn count_refusal(metrics: &Metrics, limit: &'static str) {
    metrics
        .limit_refusals
        .get_or_create(&LimitLabels { limit })
        .inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        connections_per_pod: 2,
        pending_handshakes: 3,
        pending_handshakes_per_source: 2,
    };

    #[test]
    fn a_pod_holds_at_most_its_limit_in_each_direction() {
        let pod = PodConnections::default();
        let first = pod.open(Direction::Outbound, 2).expect("first");
        let _second = pod.open(Direction::Outbound, 2).expect("second");
        assert!(
            pod.open(Direction::Outbound, 2).is_none(),
            "the third is refused"
        );
        let _inbound = pod
            .open(Direction::Inbound, 2)
            .expect("the other direction has its own count");
        drop(first);
        assert!(
            pod.open(Direction::Outbound, 2).is_some(),
            "a closed one frees a slot"
        );
        assert_eq!(
            pod.count(Direction::Outbound),
            1,
            "the temporary was dropped"
        );
    }

    #[test]
    fn handshakes_are_capped_per_source_and_on_the_node() {
        let table = PendingHandshakes::default();
        let a: IpAddr = "10.244.1.5".parse().unwrap();
        let b: IpAddr = "10.244.2.5".parse().unwrap();
        let a1 = table.begin(a, &LIMITS).unwrap();
        let _a2 = table.begin(a, &LIMITS).unwrap();
        assert_eq!(
            table.begin(a, &LIMITS).unwrap_err(),
            HandshakeRefused::Source(2)
        );
        let _b1 = table
            .begin(b, &LIMITS)
            .expect("another source has its own share");
        assert_eq!(
            table.begin(b, &LIMITS).unwrap_err(),
            HandshakeRefused::Node(3)
        );
        drop(a1);
        assert_eq!(table.count(), 2);
        let _b2 = table
            .begin(b, &LIMITS)
            .expect("a finished handshake frees a place");
    }

    #[test]
    fn finished_handshakes_leave_no_entry_behind() {
        let table = PendingHandshakes::default();
        for last in 0..1000u32 {
            let _handshake = table
                .begin(IpAddr::from(last.to_be_bytes()), &LIMITS)
                .unwrap();
        }
        assert_eq!(table.count(), 0);
        assert!(table.lock().1.is_empty(), "no address is remembered");
    }

    #[test]
    fn the_default_per_pod_cap_leaves_half_the_descriptors_to_others() {
        assert_eq!(connections_per_pod_for(1_048_576), 262_144);
        assert_eq!(connections_per_pod_for(20_000), 5_000);
        assert_eq!(connections_per_pod_for(1024), 1024);
    }
}
