//! The source side of HBONE: HTTP/2 connections to destinations' daemons,
//! each carrying many connections at once as `CONNECT` streams, shared by
//! the connections between the same two workloads.
//!
//! A connection is keyed like a native link ([`PoolKey`]: source pod,
//! both identities, destination daemon) and used only with the TLS
//! configuration it was opened with, so a renewed certificate or a new trust
//! bundle retires it. It takes at most [`MAX_STREAMS`] streams at once (as
//! Istio's ztunnel; the peer's own limit applies too); past that, or once
//! it is older than [`MAX_AGE`], another connection
//! is opened. A connection whose peer closed it (GOAWAY, idle) is forgotten
//! by the next [`HbonePool::take`] or [`HbonePool::sweep`].

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Instant,
};

use tokio::sync::OwnedMutexGuard;

use bytes::Bytes;
use h2::client::SendRequest;
use http::{HeaderValue, Method, Request, StatusCode};
use rustls::ClientConfig;

use super::{
    HANDSHAKE_TIMEOUT, Session, TunnelError, hbone,
    link::Link,
    pool::{MAX_AGE, PoolKey, Pooled},
};

/// Streams one connection carries at once, at most.
pub const MAX_STREAMS: usize = 100;

/// One HTTP/2 connection to a destination's daemon.
#[derive(Clone)]
pub struct Shared {
    requests: SendRequest<Bytes>,
    /// What its TLS handshake established.
    pub session: Session,
    config: Option<Arc<ClientConfig>>,
    opened: Instant,
    streams: Arc<AtomicUsize>,
    closed: Arc<AtomicBool>,
}

/// A stream's place on its connection, given back when dropped.
pub struct StreamSlot(Arc<AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Shared {
    /// Starts HTTP/2 on `tunnel`, a TLS link that negotiated HBONE; its
    /// frames are sent and received by a task of its own.
    pub async fn handshake(tunnel: Pooled) -> Result<Self, TunnelError> {
        let Pooled {
            link,
            session,
            config,
            opened,
        } = tunnel;
        let session = session
            .ok_or_else(|| TunnelError::PeerIdentity("HBONE needs a TLS session".to_owned()))?;
        let handshake = hbone::client().handshake::<Link, Bytes>(link);
        let (requests, connection) = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
            .await
            .map_err(|_| TunnelError::Timeout("HTTP/2 handshake"))?
            .map_err(TunnelError::Http2)?;
        let closed = Arc::new(AtomicBool::new(false));
        tokio::spawn({
            let closed = closed.clone();
            async move {
                if let Err(err) = connection.await {
                    tracing::debug!("HBONE connection ended: {err}");
                }
                closed.store(true, Ordering::Relaxed);
            }
        });
        Ok(Self {
            requests,
            session,
            config,
            opened,
            streams: Arc::new(AtomicUsize::new(0)),
            closed,
        })
    }

    /// Takes a place for one more stream, if the connection has room.
    fn slot(&self) -> Option<StreamSlot> {
        self.streams
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < MAX_STREAMS).then_some(n + 1)
            })
            .ok()
            .map(|_| StreamSlot(self.streams.clone()))
    }

    fn usable(&self, config: Option<&Arc<ClientConfig>>, now: Instant) -> bool {
        let current = match (config, &self.config) {
            (Some(current), Some(opened_with)) => Arc::ptr_eq(current, opened_with),
            _ => false,
        };
        current && !self.closed.load(Ordering::Relaxed) && now.duration_since(self.opened) < MAX_AGE
    }

    /// Opens a stream to `destination` for a connection from `client` (a
    /// workload with `baggage`) and waits for the destination's answer: the
    /// stream once it says 200.
    pub async fn connect(
        &self,
        destination: SocketAddr,
        client: SocketAddr,
        baggage: Option<&HeaderValue>,
    ) -> Result<hbone::Stream, TunnelError> {
        let mut request = Request::builder()
            .method(Method::CONNECT)
            .uri(destination.to_string())
            // Istio's ztunnel says where the connection came from, and who.
            .header("forwarded", format!("for=\"{client}\""))
            .body(())
            .map_err(|err| TunnelError::Preamble(std::io::Error::other(err)))?;
        if let Some(baggage) = baggage {
            request
                .headers_mut()
                .insert(hbone::BAGGAGE, baggage.clone());
        }
        let answered = async {
            let mut requests = self.requests.clone().ready().await?;
            let (response, send) = requests.send_request(request, false)?;
            Ok::<_, h2::Error>((response.await?, send))
        };
        let (response, send) = tokio::time::timeout(HANDSHAKE_TIMEOUT, answered)
            .await
            .map_err(|_| TunnelError::Timeout("HBONE response"))?
            .map_err(|err| {
                if err.is_go_away() || err.is_io() {
                    self.closed.store(true, Ordering::Relaxed);
                }
                TunnelError::Http2(err)
            })?;
        if response.status() != StatusCode::OK {
            return Err(TunnelError::Refused(response.status().as_u16()));
        }
        Ok(hbone::Stream::new(send, response.into_body()))
    }
}

/// The open HBONE connections of a node, by key.
#[derive(Default)]
pub struct HbonePool {
    connections: Mutex<HashMap<PoolKey, Vec<Shared>>>,
    /// Per key, held while a tunnel that may turn out HBONE is opened: the
    /// connections arriving meanwhile wait for it and share it, instead of
    /// each opening its own (a burst of 200 would open 90).
    opening: Mutex<HashMap<PoolKey, Arc<tokio::sync::Mutex<()>>>>,
    /// Keys whose peer chose the native protocol: one tunnel per connection,
    /// opened without waiting for each other. Forgotten at each sweep.
    native: Mutex<HashSet<PoolKey>>,
}

impl HbonePool {
    /// A connection for `key` opened with `config` (the current TLS
    /// configuration for the key's identities) with room for a stream.
    pub fn take(
        &self,
        key: &PoolKey,
        config: Option<&Arc<ClientConfig>>,
    ) -> Option<(Shared, StreamSlot)> {
        let now = Instant::now();
        let mut connections = self.lock();
        let shared = connections.get_mut(key)?;
        shared.retain(|shared| shared.usable(config, now));
        let found = shared
            .iter()
            .find_map(|shared| shared.slot().map(|slot| (shared.clone(), slot)));
        if shared.is_empty() {
            connections.remove(key);
        }
        found
    }

    /// Waits for the tunnel being opened for `key` (if any) and holds the
    /// right to open the next until the guard is dropped; `None` at once
    /// when the key's peer speaks the native protocol.
    pub async fn opening(&self, key: &PoolKey) -> Option<OwnedMutexGuard<()>> {
        if lock(&self.native).contains(key) {
            return None;
        }
        let turn = lock(&self.opening).entry(key.clone()).or_default().clone();
        let guard = turn.lock_owned().await;
        // The tunnel waited for may have been native: then no more waiting.
        (!lock(&self.native).contains(key)).then_some(guard)
    }

    /// Notes that `key`'s peer chose the native protocol.
    pub fn spoke_native(&self, key: &PoolKey) {
        lock(&self.native).insert(key.clone());
    }

    /// Shares `shared` for `key`; returns a place on it for the caller's stream.
    pub fn add(&self, key: PoolKey, shared: Shared) -> StreamSlot {
        let slot = StreamSlot(shared.streams.clone());
        shared.streams.fetch_add(1, Ordering::Relaxed);
        self.lock().entry(key).or_default().push(shared);
        slot
    }

    /// Forgets connections their peers closed or too old to reuse, and what
    /// was learnt of peers' protocols; returns how many connections stay.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        lock(&self.native).clear();
        lock(&self.opening).retain(|_, turn| Arc::strong_count(turn) > 1);
        let mut connections = self.lock();
        connections.retain(|_, shared| {
            shared.retain(|shared| {
                !shared.closed.load(Ordering::Relaxed)
                    && now.duration_since(shared.opened) < MAX_AGE
            });
            !shared.is_empty()
        });
        connections.values().map(Vec::len).sum()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<PoolKey, Vec<Shared>>> {
        lock(&self.connections)
    }
}

/// Locks `mutex`. Every change under these locks is a single insert,
/// push or retain: a poisoned one is consistent, and used as is.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
