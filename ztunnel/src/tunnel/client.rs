//! The source side: the TLS handshake as the source workload, requiring the
//! destination workload's identity, then the preamble.

use std::{net::SocketAddr, sync::Arc};

use rustls::{ClientConfig, pki_types::ServerName};
use tokio::{io::AsyncWriteExt, net::TcpStream};
use tokio_rustls::{TlsConnector, client::TlsStream};

use super::{HANDSHAKE_TIMEOUT, Session, TunnelError, preamble::Preamble, read_ahead::ReadAhead};

/// Opens the tunnel over `tcp` (connected to the destination's daemon) with
/// `config` (which names the identity the server must prove), and announces
/// `destination`. The stream is ready for the connection's bytes.
pub async fn open(
    tcp: TcpStream,
    config: Arc<ClientConfig>,
    destination: SocketAddr,
) -> Result<(TlsStream<ReadAhead<TcpStream>>, Session), TunnelError> {
    // The verifier checks the SPIFFE identity, not this name; an IP name
    // also keeps SNI out of the ClientHello.
    let name = ServerName::IpAddress(destination.ip().into());
    let mut tls = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        TlsConnector::from(config).connect(name, ReadAhead::new(tcp)),
    )
    .await
    .map_err(|_| TunnelError::Timeout("TLS handshake"))?
    .map_err(|err| TunnelError::handshake(&err))?;
    let session = Session::of(tls.get_ref().1)?;
    let preamble = Preamble { destination }.encode();
    let sent = async {
        tls.write_all(&preamble).await?;
        tls.flush().await
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, sent)
        .await
        .map_err(|_| TunnelError::Timeout("preamble"))?
        .map_err(TunnelError::Preamble)?;
    Ok((tls, session))
}
