//! The source side: the TLS handshake as the source workload, requiring the
//! destination workload's identity.

use std::{net::IpAddr, sync::Arc};

use rustls::{ClientConfig, pki_types::ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::{HANDSHAKE_TIMEOUT, Session, TunnelError, link::Link, read_ahead::ReadAhead};

/// Opens a tunnel over `tcp` (connected to the destination's daemon at
/// `daemon`) with `config`, which names the identity the server must prove.
/// The link is ready for a connection's [preamble](super::announce).
pub async fn open(
    tcp: TcpStream,
    config: Arc<ClientConfig>,
    daemon: IpAddr,
) -> Result<(Link, Session), TunnelError> {
    // The verifier checks the SPIFFE identity, not this name; an IP name
    // also keeps SNI out of the ClientHello.
    let name = ServerName::IpAddress(daemon.into());
    let tls = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        TlsConnector::from(config).connect(name, ReadAhead::new(tcp)),
    )
    .await
    .map_err(|_| TunnelError::Timeout("TLS handshake"))?
    .map_err(|err| TunnelError::handshake(&err))?;
    let session = Session::of(tls.get_ref().1)?;
    Ok((Link::Tls(Box::new(tls)), session))
}
