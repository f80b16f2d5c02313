//! Idle tunnels, kept for the next connection between the same two workloads.
//!
//! Opening a tunnel costs a TCP handshake between the daemons and a TLS
//! handshake (an X25519 exchange even when resumed); carrying a short
//! connection costs far less. So a tunnel whose connection ended cleanly on
//! both sides (see [`chunked`](super::chunked)) goes back to the pool, and the next connection
//! from the same source pod to the same destination daemon and workload
//! takes it instead of opening one. One connection at a time per tunnel: no
//! multiplexing, so TCP's own flow control still applies to each connection
//! and a slow reader never holds up another connection.
//!
//! The key holds everything the tunnel proved or was bound to: the source pod
//! (its network namespace, whose address the tunnel comes from), both
//! identities and the destination's daemon. A link is reused only with the
//! TLS configuration it was opened with, so a renewed source certificate or a
//! changed trust bundle retires it at once; a renewed destination certificate
//! reaches tunnels within [`MAX_AGE`], past which links are not reused. Links
//! are closed after [`IDLE_TIMEOUT`]
//! unused, well before the destination gives up on them ([`SERVER_IDLE`]): a
//! source never picks a link its peer is closing.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use prometheus_client::metrics::gauge::Gauge;
use rustls::ClientConfig;

use super::{Session, link::Link};
use crate::identity::Identity;

/// How long an unused link stays in the pool.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the destination waits for the next connection on a link.
pub const SERVER_IDLE: Duration = Duration::from_secs(60);
/// How long a source waits, after a connection ended on its side, for the
/// destination to say it is over there too; past it the link is closed.
pub const DONE_TIMEOUT: Duration = Duration::from_secs(5);
/// Links older than this are not reused.
pub const MAX_AGE: Duration = Duration::from_secs(300);
/// At most this many idle links per key; more are closed.
pub const MAX_IDLE_PER_KEY: usize = 64;

/// What a link is bound to: only a connection with the same key may reuse it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The source pod's network namespace (its cookie).
    pub source_netns: u64,
    /// The source workload, which the link's certificate proved.
    pub source: Identity,
    /// The destination daemon's tunnel address.
    pub daemon: SocketAddr,
    /// The destination workload, which the peer's certificate proved.
    pub destination: Identity,
}

/// A link and what its handshake established.
pub struct Pooled {
    /// The link, at a connection boundary.
    pub link: Link,
    /// Its TLS session (none in the benchmark relay).
    pub session: Option<Session>,
    /// The TLS configuration it was opened with.
    pub config: Option<Arc<ClientConfig>>,
    /// When the link was opened.
    pub opened: Instant,
}

struct Idle {
    pooled: Pooled,
    since: Instant,
}

impl Idle {
    fn expired(&self, now: Instant) -> bool {
        now.duration_since(self.since) >= IDLE_TIMEOUT
            || now.duration_since(self.pooled.opened) >= MAX_AGE
    }
}

/// The idle links of a node, by key.
#[derive(Default)]
pub struct Pool {
    disabled: bool,
    idle: Mutex<HashMap<PoolKey, Vec<Idle>>>,
    /// How many links are idle (`ztunnel_tunnel_idle`), kept exact.
    count: Gauge,
}

impl Pool {
    /// A pool that counts its idle links in `count`; a disabled one keeps
    /// nothing (every connection opens its own tunnel: `--no-tunnel-reuse`).
    pub fn new(enabled: bool, count: Gauge) -> Self {
        Self {
            disabled: !enabled,
            idle: Mutex::default(),
            count,
        }
    }

    /// The most recently used open link for `key` opened with `config` (the
    /// current TLS configuration for the key's identities), if any.
    pub fn take(&self, key: &PoolKey, config: Option<&Arc<ClientConfig>>) -> Option<Pooled> {
        let now = Instant::now();
        let mut closed = Vec::new();
        let found = {
            let mut idle = self.lock();
            let links = idle.get_mut(key)?;
            let found = loop {
                let Some(candidate) = links.pop() else {
                    break None;
                };
                self.count.dec();
                let current = match (config, &candidate.pooled.config) {
                    (Some(current), Some(opened_with)) => Arc::ptr_eq(current, opened_with),
                    (None, None) => true,
                    _ => false,
                };
                if !current || candidate.expired(now) || !candidate.pooled.link.is_open() {
                    closed.push(candidate);
                } else {
                    break Some(candidate.pooled);
                }
            };
            if links.is_empty() {
                idle.remove(key);
            }
            found
        };
        // Closing sockets happens outside the lock.
        drop(closed);
        found
    }

    /// Keeps `pooled`, whose last connection ended cleanly, for `key`.
    pub fn put(&self, key: PoolKey, pooled: Pooled) {
        let now = Instant::now();
        if self.disabled || now.duration_since(pooled.opened) >= MAX_AGE {
            return;
        }
        let surplus = {
            let mut idle = self.lock();
            let links = idle.entry(key).or_default();
            links.push(Idle { pooled, since: now });
            self.count.inc();
            let surplus = (links.len() > MAX_IDLE_PER_KEY).then(|| links.remove(0));
            if surplus.is_some() {
                self.count.dec();
            }
            surplus
        };
        drop(surplus);
    }

    /// Closes expired links; returns how many stay idle.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let mut closed = Vec::new();
        let remaining = {
            let mut idle = self.lock();
            idle.retain(|_, links| {
                let (expired, kept) = std::mem::take(links)
                    .into_iter()
                    .partition(|link| link.expired(now));
                closed.push(expired);
                *links = kept;
                !links.is_empty()
            });
            let remaining: usize = idle.values().map(Vec::len).sum();
            self.count.set(remaining as i64);
            remaining
        };
        drop(closed);
        remaining
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PoolKey, Vec<Idle>>> {
        // A panic while holding the lock leaves the map consistent (every
        // change is a single push, pop or retain), so a poisoned lock is used as is.
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::identity::TrustDomain;

    fn key(port: u16) -> PoolKey {
        let td = TrustDomain::new("cluster.local").unwrap();
        PoolKey {
            source_netns: 7,
            source: Identity::new(td.clone(), "demo", "client").unwrap(),
            daemon: SocketAddr::from(([127, 0, 0, 1], port)),
            destination: Identity::new(td, "demo", "web").unwrap(),
        }
    }

    /// A plain link to `listener` and the accepted peer.
    async fn link(listener: &TcpListener) -> (Pooled, TcpStream) {
        let addr = listener.local_addr().unwrap();
        let (tcp, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let pooled = Pooled {
            link: Link::Plain(tcp.unwrap()),
            session: None,
            config: None,
            opened: Instant::now(),
        };
        (pooled, accepted.unwrap().0)
    }

    #[tokio::test]
    async fn a_link_is_reused_only_under_its_own_key_and_only_while_open() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let idle = Gauge::default();
        let pool = Pool::new(true, idle.clone());
        let (first, _peer1) = link(&listener).await;
        let (second, peer2) = link(&listener).await;
        pool.put(key(1), first);
        pool.put(key(1), second);
        assert_eq!(idle.get(), 2, "counted as they come");
        assert!(
            pool.take(&key(2), None).is_none(),
            "another key gets nothing"
        );
        // The most recently returned link's peer closes: it is skipped.
        drop(peer2);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let taken = pool.take(&key(1), None).expect("the older, open link");
        assert!(taken.link.is_open());
        assert!(pool.take(&key(1), None).is_none(), "both links are gone");
        assert_eq!(idle.get(), 0, "counted as they go, used or closed");
        assert_eq!(pool.sweep(), 0);
    }

    #[tokio::test]
    async fn a_disabled_pool_keeps_nothing_and_old_links_are_not_kept() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let disabled = Pool::new(false, Gauge::default());
        let (fresh, _peer) = link(&listener).await;
        disabled.put(key(1), fresh);
        assert!(disabled.take(&key(1), None).is_none());

        let pool = Pool::new(true, Gauge::default());
        let (mut old, _peer) = link(&listener).await;
        old.opened = Instant::now() - MAX_AGE;
        pool.put(key(1), old);
        assert!(pool.take(&key(1), None).is_none(), "too old to reuse");
    }

    #[tokio::test]
    async fn surplus_links_are_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::new(true, Gauge::default());
        let mut peers = Vec::new();
        for _ in 0..MAX_IDLE_PER_KEY + 3 {
            let (pooled, peer) = link(&listener).await;
            pool.put(key(1), pooled);
            peers.push(peer);
        }
        assert_eq!(pool.sweep(), MAX_IDLE_PER_KEY);
    }
}
