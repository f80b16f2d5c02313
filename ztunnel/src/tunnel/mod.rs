//! The tunnel between node daemons: a mutual TLS 1.3 session that carries
//! proxied connections one after another, each opened with a [`preamble`]
//! naming its original destination and framed by [`chunked`] so that its end
//! leaves the session ready for the next.
//!
//! The protocol is chosen by ALPN ([`Protocol`]): `ztunnel-native/2` is this
//! one; HBONE (HTTP/2 CONNECT, `h2`, [`hbone`]), Istio's, shares the port
//! (15008).
//!
//! - [`configs`]: the TLS configurations per identity, following rotations.
//! - [`client`]: the source side's handshake.
//! - [`server`]: the destination side's handshake.
//! - [`link`]: the source side's connection, TLS or plain.
//! - [`pool`]: idle links kept for the next connection.
//! - [`chunked`]: one connection's bytes inside a link.
//! - [`hbone`]: HBONE's HTTP/2 settings, requests and streams.
//! - [`hbone_pool`]: the source side's HBONE connections, shared by streams.
//! - [`plaintext`]: the same without TLS, for benchmarks only.
//! - [`read_ahead`]: large socket reads under TLS.

pub mod chunked;
pub mod client;
pub mod configs;
pub mod hbone;
pub mod hbone_pool;
pub mod link;
pub mod plaintext;
pub mod pool;
pub mod preamble;
pub mod read_ahead;
pub mod server;

use std::{net::SocketAddr, time::Duration};

use rustls::{CommonState, HandshakeKind};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::{
    identity::Identity,
    tls::{HBONE_ALPN, TUNNEL_ALPN, verifier::identity_of},
    tunnel::preamble::Preamble,
};

/// How long a TLS handshake, or sending or reading a preamble once started, may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a tunnel could not be opened or accepted.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// No configuration: no certificate for the identity, or a bad bundle.
    #[error(transparent)]
    Config(#[from] configs::ConfigError),
    /// The TLS handshake failed; the reason is put in words.
    #[error("TLS handshake failed: {reason}")]
    Handshake {
        /// A bounded category ([`crate::tls::classify_io`]).
        kind: &'static str,
        /// The reason in words.
        reason: String,
    },
    /// The handshake or preamble did not finish in time.
    #[error("the peer did not finish the {0} within {HANDSHAKE_TIMEOUT:?}")]
    Timeout(&'static str),
    /// The peer negotiated another protocol (or none) through ALPN.
    #[error("the peer speaks {0}, not a tunnel protocol (ALPN ztunnel-native/2 or h2)")]
    Protocol(String),
    /// A waypoint chose the native protocol: waypoints are reached over
    /// HBONE only.
    #[error(
        "the waypoint chose the native protocol; a waypoint is reached over HBONE (ALPN h2) only"
    )]
    NotHbone,
    /// The peer's certificate carries no usable identity.
    #[error("the peer's identity is unreadable: {0}")]
    PeerIdentity(String),
    /// The preamble (or HBONE's `CONNECT` request) could not be made, sent
    /// or was refused.
    #[error("tunnel preamble: {0}")]
    Preamble(std::io::Error),
    /// HBONE's HTTP/2 connection failed or was refused.
    #[error("HTTP/2: {0}")]
    Http2(h2::Error),
    /// The destination answered an HBONE `CONNECT` with this status
    /// (401: policy denied it; 400, 503: it could not be delivered).
    #[error("the destination answered {0}")]
    Refused(u16),
}

impl TunnelError {
    /// A bounded category for metrics: `local_certificate` when this node
    /// holds no valid certificate (or trust bundle) to open or accept it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Handshake { kind, .. } => kind,
            Self::Timeout(_) => "timeout",
            Self::Protocol(_) | Self::NotHbone => "alpn",
            Self::PeerIdentity(_) => "identity",
            Self::Preamble(_) => "preamble",
            Self::Http2(_) => "http2",
            Self::Refused(_) => "refused",
            Self::Config(_) => "local_certificate",
        }
    }

    /// The failed handshake of `err`, classified and put in words.
    fn handshake(err: &std::io::Error) -> Self {
        Self::Handshake {
            kind: crate::tls::classify_io(err),
            reason: crate::tls::explain_io(err),
        }
    }
}

/// The protocol a tunnel speaks inside its TLS session, chosen by ALPN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// This project's own: connections one after another ([`preamble`],
    /// [`chunked`]).
    Native,
    /// Istio's HBONE: an HTTP/2 `CONNECT` stream per connection ([`hbone`]).
    Hbone,
}

impl Protocol {
    /// The name in logs and the access log: `native` or `hbone`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Hbone => "hbone",
        }
    }
}

/// What a tunnel's TLS session established, for logs and metrics.
#[derive(Clone, Debug)]
pub struct Session {
    /// The protocol negotiated.
    pub protocol: Protocol,
    /// The peer's workload identity, proven by its certificate.
    pub peer: Identity,
    /// The negotiated cipher suite (for example `TLS13_AES_128_GCM_SHA256`).
    pub cipher: String,
    /// Whether the session was resumed from a ticket (no certificate
    /// signatures; the identity is the one verified when it was issued).
    pub resumed: bool,
    /// Per connection: whether the session was opened by an earlier
    /// connection, this one riding it without a handshake of its own.
    pub reused: bool,
}

impl Session {
    /// Reads the session of a finished handshake, checking it speaks a
    /// tunnel protocol.
    fn of(tls: &CommonState) -> Result<Self, TunnelError> {
        let protocol = match tls.alpn_protocol() {
            Some(TUNNEL_ALPN) => Protocol::Native,
            Some(HBONE_ALPN) => Protocol::Hbone,
            Some(other) => {
                return Err(TunnelError::Protocol(String::from_utf8_lossy(other).into()));
            }
            None => return Err(TunnelError::Protocol("no ALPN protocol".to_owned())),
        };
        let leaf = tls
            .peer_certificates()
            .and_then(|chain| chain.first())
            .ok_or_else(|| TunnelError::PeerIdentity("no certificate".to_owned()))?;
        let peer = identity_of(leaf).map_err(|err| TunnelError::PeerIdentity(err.to_string()))?;
        Ok(Self {
            protocol,
            peer,
            cipher: tls
                .negotiated_cipher_suite()
                .map(|suite| format!("{:?}", suite.suite()))
                .unwrap_or_default(),
            resumed: tls.handshake_kind() == Some(HandshakeKind::Resumed),
            reused: false,
        })
    }
}

/// Announces a connection to `destination` on `tunnel`, at a connection
/// boundary; its bytes follow, [`chunked`].
pub async fn announce<S>(tunnel: &mut S, destination: SocketAddr) -> Result<(), TunnelError>
where
    S: AsyncWrite + Unpin,
{
    let preamble = Preamble { destination }.encode();
    let sent = async {
        tunnel.write_all(&preamble).await?;
        tunnel.flush().await
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, sent)
        .await
        .map_err(|_| TunnelError::Timeout("preamble"))?
        .map_err(TunnelError::Preamble)
}

/// Waits up to `wait` for the next connection on `tunnel`, at a connection
/// boundary: its preamble, or `None` when the source closes the tunnel or
/// sends nothing in time.
pub async fn next_connection<S>(
    tunnel: &mut S,
    wait: Duration,
) -> Result<Option<Preamble>, TunnelError>
where
    S: AsyncRead + Unpin,
{
    match tokio::time::timeout(wait, Preamble::read_next(tunnel)).await {
        Err(_) => Ok(None),
        Ok(read) => read.map_err(TunnelError::Preamble),
    }
}
