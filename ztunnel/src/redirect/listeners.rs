//! The daemon's listening sockets inside an enrolled pod's network namespace.
//!
//! They are bound to the pod's loopback only: an address reachable from the
//! network would let anyone reach "outbound" and be taken for the pod.
//! (`sk_lookup` hands the inbound listener connections for any local address,
//! whatever it is bound to.)

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::net::TcpListener;

use super::netns::PodNetns;

/// Connection backlog of each listener.
const BACKLOG: i32 = 1024;

/// One listener per address family.
pub struct DualStack {
    /// On `127.0.0.1`.
    pub v4: TcpListener,
    /// On `[::1]`, unless IPv6 is disabled in the pod.
    pub v6: Option<TcpListener>,
}

/// The daemon's listeners in one pod.
pub struct PodListeners {
    /// Where the pod's own connections are steered (`connect4`/`connect6`).
    pub outbound: DualStack,
    /// Where plaintext arriving at the pod is steered (`sk_lookup`).
    pub inbound_plaintext: DualStack,
}

/// Binds the daemon's listeners inside `netns`. Must run within a Tokio runtime.
pub fn bind(
    netns: &PodNetns,
    outbound: u16,
    inbound_plaintext: u16,
) -> std::io::Result<PodListeners> {
    let sockets = netns.run(|| {
        [outbound, inbound_plaintext].map(|port| {
            (
                listen(SocketAddr::from((Ipv4Addr::LOCALHOST, port))),
                listen(SocketAddr::from((Ipv6Addr::LOCALHOST, port))),
            )
        })
    })?;
    let [outbound, inbound_plaintext] = sockets.map(|(v4, v6)| -> std::io::Result<DualStack> {
        Ok(DualStack {
            v4: TcpListener::from_std(v4?.into())?,
            v6: v6
                .ok()
                .map(|socket| TcpListener::from_std(socket.into()))
                .transpose()?,
        })
    });
    Ok(PodListeners {
        outbound: outbound?,
        inbound_plaintext: inbound_plaintext?,
    })
}

fn listen(address: SocketAddr) -> std::io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(address),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&address.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}
