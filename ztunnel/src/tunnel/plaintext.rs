//! The benchmark relay: the tunnel's preamble and bytes over plain TCP,
//! without TLS.
//!
//! It exists to measure what the proxy hops cost apart from cryptography
//! (`ztunnel node --benchmark-plaintext-tunnel`, used by `cargo xtask bench`).
//! It proves nothing: the destination takes the source's identity from the
//! registry entry of the address the connection comes from. Never for real
//! traffic; the daemon says so loudly when it runs in this mode.

use std::net::SocketAddr;

use tokio::{io::AsyncWriteExt, net::TcpStream};

use super::{HANDSHAKE_TIMEOUT, TunnelError, preamble::Preamble};

/// How connections between daemons are carried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Transport {
    /// Mutual TLS 1.3 with verified workload identities (always, outside
    /// benchmarks).
    #[default]
    MutualTls,
    /// Plain TCP with the same preamble: for benchmarks only.
    PlaintextForBenchmarks,
}

/// Announces `destination` on `tcp` (connected to the destination's daemon).
pub async fn open(tcp: &mut TcpStream, destination: SocketAddr) -> Result<(), TunnelError> {
    let preamble = Preamble { destination }.encode();
    tokio::time::timeout(HANDSHAKE_TIMEOUT, tcp.write_all(&preamble))
        .await
        .map_err(|_| TunnelError::Timeout("preamble"))?
        .map_err(TunnelError::Preamble)
}

/// Reads the preamble from `tcp`.
pub async fn accept(tcp: &mut TcpStream) -> Result<Preamble, TunnelError> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, Preamble::read_from(tcp))
        .await
        .map_err(|_| TunnelError::Timeout("preamble"))?
        .map_err(TunnelError::Preamble)
}
