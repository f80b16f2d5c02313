//! The destination side: the TLS handshake as the destination workload,
//! requiring a client certificate with a workload identity, then the preamble.

use std::sync::Arc;

use rustls::ServerConfig;
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, server::TlsStream};

use super::{HANDSHAKE_TIMEOUT, Session, TunnelError, preamble::Preamble, read_ahead::ReadAhead};

/// Accepts a tunnel on `tcp` with `config` and reads its preamble. The
/// stream is ready for the connection's bytes.
pub async fn accept(
    tcp: TcpStream,
    config: Arc<ServerConfig>,
) -> Result<(TlsStream<ReadAhead<TcpStream>>, Session, Preamble), TunnelError> {
    let mut tls = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        TlsAcceptor::from(config).accept(ReadAhead::new(tcp)),
    )
    .await
    .map_err(|_| TunnelError::Timeout("TLS handshake"))?
    .map_err(|err| TunnelError::handshake(&err))?;
    let session = Session::of(tls.get_ref().1)?;
    let preamble = tokio::time::timeout(HANDSHAKE_TIMEOUT, Preamble::read_from(&mut tls))
        .await
        .map_err(|_| TunnelError::Timeout("preamble"))?
        .map_err(TunnelError::Preamble)?;
    Ok((tls, session, preamble))
}
