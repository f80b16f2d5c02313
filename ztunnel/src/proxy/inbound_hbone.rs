//! Inbound through an HBONE tunnel: Istio's tunnel protocol, negotiated by
//! ALPN (`h2`) on the pod's tunnel listener once mutual TLS has proven the
//! peer's identity ([`super::inbound_tunnel`]).
//!
//! The session is an HTTP/2 connection; each `CONNECT` stream carries one
//! connection to this pod. A stream is answered only once the connection
//! is decided and delivered: 200 when the application accepted it, 400 for
//! a request that is not a `CONNECT` to an address and port of this pod,
//! 401 when policy denies it, 503 when the application cannot be reached,
//! as Istio's ztunnel answers. Every stream then goes the way of any
//! inbound connection ([`destination::deliver`]): the same checks, policy,
//! metrics and access log as the native protocol.

use std::{net::SocketAddr, sync::Arc};

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use h2::{RecvStream, server::SendResponse};
use http::{Request, Response};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{
    ProxyContext,
    destination::{self, Arrival},
    inbound_tunnel::InboundTunnelError,
    pod::LocalPod,
    record::Via,
};
use crate::tunnel::{
    HANDSHAKE_TIMEOUT, Session, TunnelError,
    hbone::{self, Refusal},
    pool,
};

/// Serves the HBONE connection `tls` from `peer` (whose TLS session is
/// `session`) for `pod`: its streams concurrently, until the peer closes it,
/// it carries nothing for [`pool::SERVER_IDLE`], or the daemon drains (then
/// it sends GOAWAY: the peer opens no new stream here, and those open
/// finish).
pub async fn carry<S>(
    tls: S,
    peer: SocketAddr,
    session: Session,
    pod: &Arc<LocalPod>,
    context: &ProxyContext,
) -> Result<(), InboundTunnelError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let handshake = hbone::server().handshake::<_, Bytes>(tls);
    let mut connection = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| TunnelError::Timeout("HTTP/2 handshake"))?
        .map_err(TunnelError::Http2)?;
    let mut streams = FuturesUnordered::new();
    let mut carried = 0_u64;
    let draining = context.active.draining();
    tokio::pin!(draining);
    let mut going_away = false;
    loop {
        tokio::select! {
            request = connection.accept() => match request {
                Some(Ok((request, respond))) => {
                    // Each stream after the first rode an open tunnel.
                    let session = Session {
                        reused: carried > 0,
                        ..session.clone()
                    };
                    carried += 1;
                    streams.push(serve_stream(request, respond, peer, session, pod, context));
                }
                Some(Err(err)) => {
                    if !err.is_go_away() && !err.is_reset() {
                        tracing::debug!(dst.pod = %pod.name, src.addr = %peer, "HBONE connection ended: {err}");
                    }
                    break;
                }
                None => break,
            },
            Some(()) = streams.next(), if !streams.is_empty() => {}
            () = &mut draining, if !going_away => {
                connection.graceful_shutdown();
                going_away = true;
            }
            () = tokio::time::sleep(pool::SERVER_IDLE), if streams.is_empty() && !going_away => {
                connection.graceful_shutdown();
                going_away = true;
            }
        }
    }
    // The connection is over: what its streams still hold ends with it.
    while streams.next().await.is_some() {}
    Ok(())
}

/// One `CONNECT` stream: decided and delivered, answered, then relayed and
/// recorded like any inbound connection.
async fn serve_stream(
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    peer: SocketAddr,
    session: Session,
    pod: &Arc<LocalPod>,
    context: &ProxyContext,
) {
    let _running = context.active.enter();
    let destination = match hbone::destination_of(&request) {
        Ok(destination) => destination,
        Err(err) => {
            answer(&mut respond, Refusal::BadRequest);
            tracing::warn!(dst.pod = %pod.name, src.addr = %peer, "HBONE request refused: {err}");
            return;
        }
    };
    let arrival = Arrival {
        peer,
        source: Some(&session.peer),
        destination,
        session: Some(&session),
        via: Via::InboundTunnel,
        service: None,
    };
    // A refusal or failure is in the connection's record.
    let delivered = match destination::deliver::<InboundTunnelError>(context, pod, arrival).await {
        Ok(delivered) => delivered,
        Err(err) => {
            answer(&mut respond, refusal(&err));
            return;
        }
    };
    // Who answered, as Istio's ztunnel says it.
    let mut response = Response::new(());
    if let Some(baggage) = &pod.baggage {
        response
            .headers_mut()
            .insert(hbone::BAGGAGE, baggage.clone());
    }
    let Ok(send) = respond.send_response(response, false) else {
        // The peer reset the stream meanwhile.
        return;
    };
    let mut stream = hbone::Stream::new(send, request.into_body());
    delivered.relay(&mut stream, context, None).await;
}

/// How a refused or failed stream is answered.
fn refusal(err: &InboundTunnelError) -> Refusal {
    match err {
        InboundTunnelError::Denied(_) => Refusal::Denied,
        InboundTunnelError::Deliver(err) if err.is_bad_request() => Refusal::BadRequest,
        _ => Refusal::Unreachable,
    }
}

/// Answers a stream with `refusal`'s status and ends it.
fn answer(respond: &mut SendResponse<Bytes>, refusal: Refusal) {
    let mut response = Response::new(());
    *response.status_mut() = refusal.status();
    // Nothing to do if the peer has gone: the stream is over either way.
    let _ = respond.send_response(response, true);
}
