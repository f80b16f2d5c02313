//! HBONE, Istio's tunnel: inside the mutual TLS session (ALPN `h2`), one
//! HTTP/2 `CONNECT` stream per proxied connection, its `:authority` the
//! destination workload's `ip:port`. See `docs/hbone.md` for what is
//! implemented and why.
//!
//! This module holds the protocol: the HTTP/2 settings, reading a request's
//! destination, the status codes, and [`Stream`], one connection's bytes
//! over a stream. What a connection is allowed to do stays in `proxy`.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::atomic::{AtomicBool, Ordering},
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream};
use http::{HeaderValue, Method, Request, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::proxy::copy::Resettable;

/// A stream's receive window: how much a destination may have in flight
/// towards a reader that is slow (4 MiB, as Istio's ztunnel).
pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;

/// The connection's receive window, shared by its streams (16 MiB, as
/// Istio's ztunnel): four streams at full speed before one waits for another.
pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;

/// The largest DATA frame accepted (1 MiB, as Istio's ztunnel): a large
/// frame costs less framing per byte.
pub const MAX_FRAME_SIZE: u32 = 1024 * 1024;

/// Streams a peer may open at once on one connection towards this server
/// (Istio's ztunnel allows 200 and opens at most 100).
pub const MAX_CONCURRENT_STREAMS: u32 = 200;

/// The largest header block accepted from a client (64 KiB, as Istio's ztunnel).
pub const MAX_HEADER_LIST_SIZE: u32 = 64 * 1024;

/// Buffered per stream before a writer waits for the connection to send it
/// (400 KiB, Istio's ztunnel's server setting).
pub const MAX_SEND_BUFFER: usize = 400 * 1024;

/// The largest header block accepted from a server (16 KiB, as Istio's ztunnel).
pub const CLIENT_MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;

/// Buffered per stream on the client side before a writer waits (4 MiB, as
/// Istio's ztunnel's client).
pub const CLIENT_MAX_SEND_BUFFER: usize = 4 * 1024 * 1024;

/// The header naming a workload to its peer (W3C baggage), sent by the
/// client on each `CONNECT` and by the server on its 200, as Istio's ztunnel
/// does: Istio's waypoints and telemetry read who is at the other end from it.
pub const BAGGAGE: &str = "baggage";

/// A workload's baggage as Istio's ztunnel writes it: its cluster, namespace,
/// workload name (under `k8s.pod.name`: istiod calls every Kubernetes
/// workload a pod), canonical service and revision.
/// Kubernetes names and label values are valid header text, so the value
/// is too; one that is not (an unusual cluster name) is left out.
pub fn baggage(
    cluster: &str,
    namespace: &str,
    workload: &str,
    service: &str,
    revision: &str,
) -> Option<HeaderValue> {
    HeaderValue::try_from(format!(
        "k8s.cluster.name={cluster},k8s.namespace.name={namespace},k8s.pod.name={workload},\
         service.name={service},service.version={revision}"
    ))
    .ok()
}

/// The client side's HTTP/2 settings.
pub fn client() -> h2::client::Builder {
    let mut builder = h2::client::Builder::new();
    builder
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_header_list_size(CLIENT_MAX_HEADER_LIST_SIZE)
        .max_send_buffer_size(CLIENT_MAX_SEND_BUFFER)
        .enable_push(false);
    builder
}

/// The server side's HTTP/2 settings.
pub fn server() -> h2::server::Builder {
    let mut builder = h2::server::Builder::new();
    builder
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST_SIZE)
        .max_send_buffer_size(MAX_SEND_BUFFER);
    builder
}

/// Why a request is not a tunnelled connection (answered 400).
#[derive(Debug, thiserror::Error)]
pub enum BadRequest {
    /// Only `CONNECT` opens a connection.
    #[error("method {0} is not CONNECT")]
    Method(Method),
    /// The `:authority` is missing or not an `ip:port`.
    #[error("authority {0:?} is not an ip:port")]
    Authority(String),
}

/// The destination a `CONNECT` request names in its `:authority`
/// (`10.0.0.1:8080`, `[fd00::1]:8080`).
pub fn destination_of<B>(request: &Request<B>) -> Result<SocketAddr, BadRequest> {
    if request.method() != Method::CONNECT {
        return Err(BadRequest::Method(request.method().clone()));
    }
    let authority = request
        .uri()
        .authority()
        .map(|authority| authority.as_str())
        .unwrap_or_default();
    authority
        .parse()
        .map_err(|_| BadRequest::Authority(authority.to_owned()))
}

/// How the server answers a `CONNECT` it refuses or cannot serve, as
/// Istio's ztunnel answers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not a `CONNECT` to an address and port of this pod, or to one of the
    /// daemon's own ports.
    BadRequest,
    /// Policy denied it.
    Denied,
    /// The application could not be reached (or the pod is at its limit).
    Unreachable,
}

impl Refusal {
    /// The response status.
    pub fn status(self) -> StatusCode {
        match self {
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::Denied => StatusCode::UNAUTHORIZED,
            Self::Unreachable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// One proxied connection's bytes over an HTTP/2 stream.
///
/// Reading returns the peer's DATA frames and gives their room back to the
/// peer's window once read (backpressure: an application that does not read
/// stops its peer after one window). Writing waits for room in the peer's
/// window. Shutting down sends an empty DATA frame with END_STREAM
/// (half-close). A reset (`RST_STREAM`) other than `NO_ERROR` or `CANCEL`
/// reads as a connection reset; dropped while set to reset, the stream is
/// reset with `CONNECT_ERROR`, HTTP/2's code for a tunnelled connection that
/// ended abnormally.
pub struct Stream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// Received and not yet read.
    unread: Bytes,
    /// Reset when dropped ([`Resettable`]).
    reset: AtomicBool,
}

impl Stream {
    /// The stream of a request (`recv`) and its response (`send`).
    pub fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        Self {
            send,
            recv,
            unread: Bytes::new(),
            reset: AtomicBool::new(false),
        }
    }
}

/// `err` as an I/O error: a reset by the peer (`NO_ERROR` and `CANCEL` end
/// the stream normally, and are not errors).
fn reset_error(err: h2::Error) -> io::Error {
    if err.is_io() {
        return err.into_io().unwrap_or_else(|| io::ErrorKind::Other.into());
    }
    io::Error::new(io::ErrorKind::ConnectionReset, err)
}

/// Whether `err` ends a stream normally.
fn ends_normally(err: &h2::Error) -> bool {
    matches!(err.reason(), Some(Reason::NO_ERROR | Reason::CANCEL))
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.unread.is_empty() {
            match ready!(this.recv.poll_data(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Ok(data)) => {
                    // Room for the peer to send as much again.
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    this.unread = data;
                }
                Some(Err(err)) if ends_normally(&err) => return Poll::Ready(Ok(())),
                Some(Err(err)) => return Poll::Ready(Err(reset_error(err))),
            }
        }
        let n = buf.remaining().min(this.unread.len());
        buf.put_slice(&this.unread.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        this.send.reserve_capacity(buf.len());
        match ready!(this.send.poll_capacity(cx)) {
            Some(Ok(room)) => {
                let n = room.min(buf.len());
                this.send
                    .send_data(Bytes::copy_from_slice(&buf[..n]), false)
                    .map_err(reset_error)?;
                Poll::Ready(Ok(n))
            }
            Some(Err(err)) => Poll::Ready(Err(reset_error(err))),
            // The stream is closed for sending: the peer reset it.
            None => match ready!(this.send.poll_reset(cx)) {
                Ok(Reason::NO_ERROR | Reason::CANCEL) | Err(_) => {
                    Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()))
                }
                Ok(reason) => Poll::Ready(Err(reset_error(reason.into()))),
            },
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Data handed to h2 is sent by the connection's task.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        Poll::Ready(this.send.send_data(Bytes::new(), true).map_err(reset_error))
    }
}

impl Resettable for Stream {
    fn reset_on_close(&self, reset: bool) {
        self.reset.store(reset, Ordering::Relaxed);
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if self.reset.load(Ordering::Relaxed) {
            self.send.send_reset(Reason::CONNECT_ERROR);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, uri: &str) -> Request<()> {
        Request::builder().method(method).uri(uri).body(()).unwrap()
    }

    #[test]
    fn a_connect_names_its_destination_in_the_authority() {
        let cases: &[(&str, Method, &str, Option<&str>)] = &[
            (
                "IPv4",
                Method::CONNECT,
                "10.0.0.1:8080",
                Some("10.0.0.1:8080"),
            ),
            (
                "IPv6",
                Method::CONNECT,
                "[fd00::1]:8080",
                Some("[fd00::1]:8080"),
            ),
            (
                "a host name (waypoint form)",
                Method::CONNECT,
                "web.demo:80",
                None,
            ),
            ("no port", Method::CONNECT, "10.0.0.1", None),
            ("not CONNECT", Method::GET, "http://10.0.0.1:8080/", None),
        ];
        for (name, method, uri, want) in cases {
            let got = destination_of(&request(method.clone(), uri)).ok();
            assert_eq!(got, want.map(|w| w.parse().unwrap()), "{name}");
        }
    }

    #[test]
    fn baggage_is_written_as_istios_ztunnel_writes_it() {
        let written = baggage("Kubernetes", "demo", "web", "web", "v2").unwrap();
        assert_eq!(
            written,
            "k8s.cluster.name=Kubernetes,k8s.namespace.name=demo,k8s.pod.name=web,\
             service.name=web,service.version=v2"
        );
        // Not header text: left out rather than failing the connection.
        assert!(baggage("line\nbreak", "demo", "web", "web", "v2").is_none());
    }

    #[test]
    fn refusals_are_answered_as_istios_ztunnel_answers_them() {
        assert_eq!(Refusal::BadRequest.status(), 400);
        assert_eq!(Refusal::Denied.status(), 401);
        assert_eq!(Refusal::Unreachable.status(), 503);
    }
}
