//! Outbound: connections an enrolled pod's applications open, accepted on the
//! pod's outbound listener.
//!
//! The source workload is the pod whose listener accepted the connection; the
//! destination is what the application asked for (recorded by the eBPF
//! programs). [`route`](super::route) decides where it goes: through the
//! mutual TLS tunnel to an enrolled pod on another node, straight into an
//! enrolled pod of this node, or as plain TCP to anything outside the mesh.
//! Upstream sockets are made inside the source pod's network namespace (so
//! they leave with the pod's address) and marked so the programs do not
//! capture them again.

use std::{net::SocketAddr, pin::Pin, sync::Arc, time::Instant};

use http::HeaderValue;
use rustls::ClientConfig;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
};

use super::{
    Listener, ProxyContext, accept_each,
    authorize::Denied,
    connect,
    copy::{self, Ending, Meters, Resettable},
    deliver::DeliverError,
    destination::{self, Arrival},
    limits::{self, Direction},
    pod::LocalPod,
    record::{self, ConnectionRecord, Opening, Party, Via},
    route::{Route, route},
};
use crate::{
    identity::{Identity, SpiffeError},
    metrics::{Reporter, ResponseFlags, SecurityPolicy},
    redirect::{abi::INBOUND_MTLS_PORT, programs::OrigDstTable},
    registry::{Pod, Service},
    tunnel::{
        self, Protocol, TunnelError,
        chunked::{self, Chunked},
        hbone,
        hbone_pool::{Shared, StreamSlot},
        link::Link,
        plaintext::Transport,
        pool::{self, PoolKey, Pooled},
    },
};

/// Why one outbound connection failed.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// The eBPF programs left no original destination for it: it was not
    /// steered by them (or the record was lost), so it is closed.
    #[error("no original destination recorded for client port {0}")]
    NoOriginalDestination(u16),
    /// A service with no endpoint to send to.
    #[error("service {0} has no endpoint")]
    NoEndpoint(String),
    /// The destination pod has no valid workload identity.
    #[error("the destination pod has no valid identity: {0}")]
    DestinationIdentity(#[from] SpiffeError),
    /// An enrolled pod of this node that is not (yet) captured: refusing keeps
    /// it from being reached around the mesh.
    #[error("{0} is an enrolled pod of this node that is not captured")]
    NotCaptured(SocketAddr),
    /// The destination (or its daemon) could not be reached.
    #[error("connecting to {destination}: {source}")]
    Connect {
        /// The address.
        destination: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The tunnel could not be opened.
    #[error("tunnel to {endpoint}: {source}")]
    Tunnel {
        /// The destination daemon's tunnel address.
        endpoint: SocketAddr,
        /// Why.
        source: TunnelError,
    },
    /// A pod of this node could not be reached.
    #[error(transparent)]
    Deliver(#[from] DeliverError),
    /// The destination's policy refused it (same node).
    #[error("denied: {0}")]
    Denied(#[from] Denied),
}

impl OutboundError {
    /// Istio's `response_flags` for the failure.
    fn response_flags(&self) -> ResponseFlags {
        match self {
            Self::Denied(_) => ResponseFlags::Deny,
            Self::DestinationIdentity(_) => ResponseFlags::IdentityError,
            Self::Tunnel { source, .. } => match source {
                TunnelError::Config(_) | TunnelError::PeerIdentity(_) => {
                    ResponseFlags::IdentityError
                }
                TunnelError::Handshake { .. }
                | TunnelError::Timeout(_)
                | TunnelError::Protocol(_)
                | TunnelError::NotHbone => ResponseFlags::TlsFailure,
                TunnelError::Refused(401) => ResponseFlags::Deny,
                TunnelError::Preamble(_) | TunnelError::Http2(_) | TunnelError::Refused(_) => {
                    ResponseFlags::Connect
                }
            },
            Self::NoOriginalDestination(_)
            | Self::NoEndpoint(_)
            | Self::NotCaptured(_)
            | Self::Connect { .. }
            | Self::Deliver(_) => ResponseFlags::Connect,
        }
    }
}

/// Where the connection goes, decided from the registry (owned, so the
/// registry snapshot is not held for the connection's life).
enum Upstream {
    Tunnel {
        endpoint: SocketAddr,
        identity: Identity,
    },
    /// Through a waypoint pod (`daemon`, its HBONE address, proving
    /// `identity`), asking it for `target`.
    Waypoint {
        daemon: SocketAddr,
        identity: Identity,
        target: SocketAddr,
    },
    Local {
        endpoint: SocketAddr,
    },
    Passthrough {
        endpoint: SocketAddr,
    },
}

impl Upstream {
    fn endpoint(&self) -> SocketAddr {
        match self {
            Self::Tunnel { endpoint, .. }
            | Self::Local { endpoint }
            | Self::Passthrough { endpoint } => *endpoint,
            Self::Waypoint { daemon, .. } => *daemon,
        }
    }
}

/// A tunnel whose connection ended cleanly on this side, to keep once the
/// destination says it is over there too.
type Reusable = (PoolKey, Pooled);

/// Accepts connections on `listener` for `pod` until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    pod: Arc<LocalPod>,
    context: Arc<ProxyContext>,
    orig_dst: Arc<OrigDstTable>,
) {
    let name = pod.name.clone();
    accept_each(listener, &context, &name, Listener::Outbound, |stream, peer, running| {
        let (pod, context, orig_dst) = (pod.clone(), context.clone(), orig_dst.clone());
        async move {
            let _running = running;
            let limit = context.limits.connections_per_pod;
            let Some(_slot) = pod.connections.open(Direction::Outbound, limit) else {
                let why = format!("the pod has {limit} outbound connections open");
                let label = Direction::Outbound.limit_label();
                limits::refuse(stream, peer, &pod.name, label, &why, &context.metrics);
                return;
            };
            match handle(stream, peer, &pod, &context, &orig_dst).await {
                Ok(Some((key, tunnel))) => keep_when_done(&context, key, tunnel).await,
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(src.pod = %pod.name, %peer, "outbound connection failed: {err}")
                }
            }
        }
    })
    .await;
}

/// One connection: identify, decide, connect, copy, record. Returns the
/// tunnel to keep, if any; a failure before the connection could be
/// recorded (its destination is not known) is returned, every later one is
/// recorded.
async fn handle(
    mut client: TcpStream,
    peer: SocketAddr,
    pod: &LocalPod,
    context: &ProxyContext,
    orig_dst: &OrigDstTable,
) -> Result<Option<Reusable>, OutboundError> {
    // Identify: the source is the pod whose listener accepted; the
    // destination is what its application asked for.
    let original = orig_dst
        .take(pod.netns.cookie(), peer.port())
        .ok_or(OutboundError::NoOriginalDestination(peer.port()))?;
    let _ = client.set_nodelay(true);
    // From here until it ends cleanly: a connection the mesh cuts (the
    // daemon dies while the tunnel is set up, or later) reaches the
    // application as a reset.
    client.reset_on_close(true);

    let source_ip = pod
        .ips
        .iter()
        .copied()
        .find(|ip| ip.is_ipv4() == original.is_ipv4())
        .unwrap_or(peer.ip());
    let source = SocketAddr::new(source_ip, peer.port());
    let (upstream, target, service) = decide(context, original)?;
    let mut record = ConnectionRecord::open(
        context,
        Opening {
            reporter: Reporter::Source,
            via: match upstream {
                Upstream::Tunnel { .. } => Via::Tunnel,
                Upstream::Waypoint { .. } => Via::Waypoint,
                Upstream::Local { .. } => Via::Local,
                Upstream::Passthrough { .. } => Via::Passthrough,
            },
            client: source,
            destination: original,
            endpoint: upstream.endpoint(),
            source: Party::local(pod),
            target,
            service: service.as_ref(),
            security: match upstream {
                Upstream::Tunnel { .. } | Upstream::Waypoint { .. }
                    if context.transport == Transport::MutualTls =>
                {
                    SecurityPolicy::MutualTls
                }
                // One node: the daemon captured the source itself.
                Upstream::Local { .. } => SecurityPolicy::MutualTls,
                _ => SecurityPolicy::Unknown,
            },
        },
    );
    let proxied = proxy(
        &mut client,
        source,
        pod,
        upstream,
        service.as_ref(),
        context,
        &mut record,
    );
    match proxied.await {
        Ok((ending, reusable)) => {
            record.ended(&ending);
            Ok(reusable)
        }
        Err(err) => {
            if let OutboundError::Tunnel { endpoint, source } = &err {
                record::tunnel_failure(context, "client", source, *endpoint);
            }
            record.failed(err.response_flags(), &err);
            Ok(None)
        }
    }
}

/// Connect and copy: `client` (from `source`, in `pod`) to `upstream`
/// (dialled as `service`, if it was), counted in `record`.
///
/// The tunnel's set-up and the relays are boxed: awaited in place, their
/// states add up in this future, which lives (and holds its memory) as long
/// as the connection. Boxed, the memory of an idle tunnelled connection fell
/// from 15.4 to 14.3 KiB here and from 17.9 to 14.2 KiB on the destination
/// (daemon RSS with 9,000 held open).
async fn proxy(
    client: &mut TcpStream,
    source: SocketAddr,
    pod: &LocalPod,
    upstream: Upstream,
    service: Option<&Service>,
    context: &ProxyContext,
    record: &mut ConnectionRecord<'_>,
) -> Result<(Ending, Option<Reusable>), OutboundError> {
    match upstream {
        // The destination's daemon decides policy for tunnelled connections.
        Upstream::Tunnel { endpoint, identity } => {
            let hop = Hop {
                daemon: SocketAddr::new(endpoint.ip(), INBOUND_MTLS_PORT),
                identity: &identity,
                target: endpoint,
                waypoint: false,
            };
            tunnelled(client, source, pod, &hop, context, record).await
        }
        // The waypoint decides policy (L7 included) and forwards.
        Upstream::Waypoint {
            daemon,
            identity,
            target,
        } => {
            let hop = Hop {
                daemon,
                identity: &identity,
                target,
                waypoint: true,
            };
            tunnelled(client, source, pod, &hop, context, record).await
        }
        Upstream::Local { endpoint } => {
            let destination = context
                .pods
                .get(endpoint.ip())
                .ok_or(OutboundError::NotCaptured(endpoint))?;
            // The application sees the source pod's address (of the same
            // family: a VIP resolves to an endpoint of the VIP's family).
            // Same node: the destination's steps run here, with the proven
            // source, and this node reports as source and as destination.
            let arrival = Arrival {
                peer: source,
                source: Some(&pod.identity),
                destination: endpoint,
                session: None,
                via: Via::Local,
                service,
            };
            let delivered =
                destination::deliver::<OutboundError>(context, &destination, arrival).await?;
            let relay = delivered.relay(client, context, Some(record.meters()));
            Ok((Box::pin(relay).await, None))
        }
        Upstream::Passthrough { endpoint } => {
            let mut upstream = connect::from_pod(&pod.netns, endpoint)
                .await
                .map_err(|source| OutboundError::Connect {
                    destination: endpoint,
                    source,
                })?;
            let ending = relay(client, &mut upstream, context, record.meters()).await;
            Ok((ending, None))
        }
    }
}

/// Connect and copy through a tunnel to `hop`.
async fn tunnelled(
    client: &mut TcpStream,
    source: SocketAddr,
    pod: &LocalPod,
    hop: &Hop<'_>,
    context: &ProxyContext,
    record: &mut ConnectionRecord<'_>,
) -> Result<(Ending, Option<Reusable>), OutboundError> {
    // Boxed (see `proxy`): HBONE's handshake holds a whole TLS session; in
    // place, it made each connection's future 4,880 bytes instead of 3,240.
    match Box::pin(connect_tunnel(context, pod, source, hop)).await? {
        Carrier::Native {
            key,
            mut tunnel,
            reused,
        } => {
            if let Some(session) = &tunnel.session {
                record.carried_by(tunnel::Session {
                    reused,
                    ..session.clone()
                });
            }
            let mut connection = Chunked::new(&mut tunnel.link);
            let ending = relay(client, &mut connection, context, record.meters()).await;
            let finished = connection.finished();
            Ok((ending, finished.then_some((key, tunnel))))
        }
        Carrier::Hbone {
            mut stream,
            slot: _slot,
            session,
        } => {
            record.carried_by(session);
            let ending = relay(client, &mut stream, context, record.meters()).await;
            Ok((ending, None))
        }
    }
}

/// The far end of a tunnel.
struct Hop<'a> {
    /// Its tunnel address: `<pod ip>:15008` of the destination (its daemon
    /// answers there) or of a waypoint pod.
    daemon: SocketAddr,
    /// The workload identity it must prove.
    identity: &'a Identity,
    /// The connection's destination as announced to it (HBONE's
    /// `:authority`): the pod's address, or for a waypoint what was dialled.
    target: SocketAddr,
    /// A waypoint: reached over HBONE only.
    waypoint: bool,
}

/// What carries a tunnelled connection.
enum Carrier {
    /// A native link of its own (an idle one reused, or a new one), the
    /// connection announced on it; it goes back to the pool under `key`
    /// when the connection ends cleanly.
    Native {
        key: PoolKey,
        tunnel: Pooled,
        reused: bool,
    },
    /// A stream of a shared HBONE connection, answered 200.
    Hbone {
        stream: hbone::Stream,
        slot: StreamSlot,
        session: tunnel::Session,
    },
}

/// Connect: a tunnel from `pod` to `hop`, carrying the connection of
/// `client`: a stream on a shared HBONE connection when there is one with
/// room, else an idle native link between the same two workloads, else a
/// new tunnel in whichever protocol the far end chooses (HBONE only, for a
/// waypoint).
async fn connect_tunnel(
    context: &ProxyContext,
    pod: &LocalPod,
    client: SocketAddr,
    hop: &Hop<'_>,
) -> Result<Carrier, OutboundError> {
    let daemon = hop.daemon;
    let failed = |source| OutboundError::Tunnel {
        endpoint: daemon,
        source,
    };
    let key = PoolKey {
        source_netns: pod.netns.cookie(),
        source: pod.identity.clone(),
        daemon,
        destination: hop.identity.clone(),
    };
    // Asked for every connection, not only new tunnels: it also checks that
    // the source still holds a valid certificate.
    let config = match context.transport {
        Transport::MutualTls => Some({
            context.tunnel.first_certificate(&pod.identity).await;
            context
                .tunnel
                .client(&pod.identity, hop.identity)
                .map_err(|source| failed(source.into()))?
        }),
        Transport::PlaintextForBenchmarks => None,
    };
    let baggage = pod.baggage.as_ref();
    let shared = || shared_stream(context, &key, config.as_ref(), hop.target, client, baggage);
    if let Some(carrier) = shared().await.map_err(failed)? {
        return Ok(carrier);
    }
    let (mut tunnel, reused) = match context.pool.take(&key, config.as_ref()) {
        Some(pooled) => {
            context.metrics.tunnel_reuses.inc();
            (pooled, true)
        }
        None => {
            // Unless the peer is known to choose the native protocol, wait
            // for a tunnel being opened to it: if it is HBONE, share it.
            let turn = context.hbone.opening(&key).await;
            if turn.is_some()
                && let Some(carrier) = shared().await.map_err(failed)?
            {
                return Ok(carrier);
            }
            let tunnel = Box::pin(open_tunnel(pod, daemon, config)).await?;
            if tunnel.session.as_ref().map(|s| s.protocol) == Some(Protocol::Hbone) {
                let shared = Shared::handshake(tunnel).await.map_err(failed)?;
                let slot = context.hbone.add(key, shared.clone());
                drop(turn);
                return hbone_stream(shared, slot, false, hop.target, client, baggage)
                    .await
                    .map_err(failed);
            }
            if hop.waypoint {
                return Err(failed(TunnelError::NotHbone));
            }
            context.hbone.spoke_native(&key);
            (tunnel, false)
        }
    };
    tunnel::announce(&mut tunnel.link, hop.target)
        .await
        .map_err(failed)?;
    Ok(Carrier::Native {
        key,
        tunnel,
        reused,
    })
}

/// A stream to `endpoint` for `client` (with `baggage`) on an open HBONE
/// connection of `key`, if there is one with room. A connection its peer closed meanwhile
/// (GOAWAY after a drain or an idle minute) gives none: the caller opens a
/// new one.
async fn shared_stream(
    context: &ProxyContext,
    key: &PoolKey,
    config: Option<&Arc<ClientConfig>>,
    endpoint: SocketAddr,
    client: SocketAddr,
    baggage: Option<&HeaderValue>,
) -> Result<Option<Carrier>, TunnelError> {
    let Some((shared, slot)) = context.hbone.take(key, config) else {
        return Ok(None);
    };
    match hbone_stream(shared, slot, true, endpoint, client, baggage).await {
        Ok(carrier) => {
            context.metrics.tunnel_reuses.inc();
            Ok(Some(carrier))
        }
        Err(TunnelError::Http2(_)) => Ok(None),
        Err(err) => Err(err),
    }
}

/// A stream to `endpoint` on the HBONE connection `shared`, for `client`
/// (with `baggage`).
async fn hbone_stream(
    shared: Shared,
    slot: StreamSlot,
    reused: bool,
    endpoint: SocketAddr,
    client: SocketAddr,
    baggage: Option<&HeaderValue>,
) -> Result<Carrier, TunnelError> {
    let stream = shared.connect(endpoint, client, baggage).await?;
    Ok(Carrier::Hbone {
        stream,
        slot,
        session: tunnel::Session {
            reused,
            ..shared.session
        },
    })
}

/// Opens a tunnel to the destination's daemon at `daemon`, from inside the
/// source pod: mutual TLS with `config` (which proves the source's identity
/// and requires the destination's), or plain TCP in the benchmark relay.
async fn open_tunnel(
    pod: &LocalPod,
    daemon: SocketAddr,
    config: Option<Arc<ClientConfig>>,
) -> Result<Pooled, OutboundError> {
    let tcp = connect::from_pod(&pod.netns, daemon)
        .await
        .map_err(|source| OutboundError::Connect {
            destination: daemon,
            source,
        })?;
    let opened = Instant::now();
    let (link, session) = match &config {
        Some(config) => {
            let (link, session) = tunnel::client::open(tcp, config.clone(), daemon.ip())
                .await
                .map_err(|source| OutboundError::Tunnel {
                    endpoint: daemon,
                    source,
                })?;
            (link, Some(session))
        }
        None => (Link::Plain(tcp), None),
    };
    Ok(Pooled {
        link,
        session,
        config,
        opened,
    })
}

/// Keeps `tunnel` for the next connection once its destination says the
/// last one is over there too; closes it if that does not come in time (an
/// application there may never read what is left of the connection).
async fn keep_when_done(context: &ProxyContext, key: PoolKey, mut tunnel: Pooled) {
    let done = tokio::time::timeout(pool::DONE_TIMEOUT, chunked::read_done(&mut tunnel.link));
    if let Ok(Ok(())) = done.await {
        context.pool.put(key, tunnel);
    }
}

/// Copies between `client` and `upstream` until both sides are done,
/// counted in `meters` (boxed, see [`proxy`]).
fn relay<'a, S>(
    client: &'a mut TcpStream,
    upstream: &'a mut S,
    context: &'a ProxyContext,
    meters: &'a Meters,
) -> Pin<Box<impl Future<Output = Ending> + 'a>>
where
    S: AsyncRead + AsyncWrite + Resettable + Unpin,
{
    let idle = context.idle_timeout;
    Box::pin(
        async move { copy::relay(client, upstream, idle, std::future::pending(), &[meters]).await },
    )
}

/// Decide: where a connection to `original` goes, its destination as the
/// record names it, and the service whose VIP was dialled (owned, so the
/// registry snapshot is not held for the connection's life).
fn decide(
    context: &ProxyContext,
    original: SocketAddr,
) -> Result<(Upstream, Party, Option<Service>), OutboundError> {
    let registry = context.registry.borrow().clone();
    let decision = route(
        &registry,
        &context.enrolment,
        &context.node,
        original,
        &mut |n| context.endpoints.pick(n),
    );
    let identity_of = |dst: &Pod| {
        Identity::new(
            context.trust_domain.clone(),
            &dst.namespace,
            &dst.service_account,
        )
    };
    Ok(match decision {
        Route::Tunnel {
            destination,
            pod: dst,
            service,
        } => {
            let identity = identity_of(dst)?;
            let target = Party::pod(dst, Some(&identity));
            let upstream = Upstream::Tunnel {
                endpoint: destination,
                identity,
            };
            (upstream, target, service.cloned())
        }
        Route::Local {
            destination,
            pod: dst,
            service,
        } => {
            let target = Party::pod(dst, Some(&identity_of(dst)?));
            let upstream = Upstream::Local {
                endpoint: destination,
            };
            (upstream, target, service.cloned())
        }
        // Recorded as Istio's ztunnel records it: the destination workload
        // is the waypoint, the service the one dialled.
        Route::Waypoint {
            address,
            waypoint,
            target,
            service,
        } => {
            let identity = identity_of(waypoint)?;
            let party = Party::pod(waypoint, Some(&identity));
            let upstream = Upstream::Waypoint {
                daemon: SocketAddr::new(address, INBOUND_MTLS_PORT),
                identity,
                target,
            };
            (upstream, party, service.cloned())
        }
        Route::Passthrough { destination } => (
            Upstream::Passthrough {
                endpoint: destination,
            },
            Party::unknown(),
            None,
        ),
        Route::NoEndpoint { service } => return Err(OutboundError::NoEndpoint(service)),
    })
}
