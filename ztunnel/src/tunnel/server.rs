//! The destination side: the TLS handshake as the destination workload,
//! requiring a client certificate with a workload identity.

use std::sync::Arc;

use rustls::ServerConfig;
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, server::TlsStream};

use super::{HANDSHAKE_TIMEOUT, Session, TunnelError, read_ahead::ReadAhead};

/// Accepts a tunnel on `tcp` with `config`. The stream is ready for the
/// first connection's [preamble](super::next_connection).
pub async fn accept(
    tcp: TcpStream,
    config: Arc<ServerConfig>,
) -> Result<(TlsStream<ReadAhead<TcpStream>>, Session), TunnelError> {
    let tls = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        TlsAcceptor::from(config).accept(ReadAhead::new(tcp)),
    )
    .await
    .map_err(|_| TunnelError::Timeout("TLS handshake"))?
    .map_err(|err| TunnelError::handshake(&err))?;
    let session = Session::of(tls.get_ref().1)?;
    Ok((tls, session))
}
