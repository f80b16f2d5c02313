//! The daemon's listening sockets inside an enrolled pod's network namespace.
//!
//! They are bound to the pod's loopback only: an address reachable from the
//! network would let anyone reach "outbound" and be taken for the pod.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::net::TcpListener;

use super::netns::PodNetns;

/// Connection backlog of each listener.
const BACKLOG: i32 = 1024;

/// The outbound listeners of one pod: IPv4 and, where the pod has it, IPv6.
pub struct PodListeners {
    /// `127.0.0.1:<outbound port>`.
    pub outbound_v4: TcpListener,
    /// `[::1]:<outbound port>`, unless IPv6 is disabled in the pod.
    pub outbound_v6: Option<TcpListener>,
}

/// Binds the outbound listeners inside `netns`. Must run within a Tokio runtime.
pub fn bind(netns: &PodNetns, port: u16) -> std::io::Result<PodListeners> {
    let (v4, v6) = netns.run(|| {
        let v4 = listen(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
        let v6 = listen(SocketAddr::from((Ipv6Addr::LOCALHOST, port)));
        (v4, v6)
    })?;
    Ok(PodListeners {
        outbound_v4: TcpListener::from_std(v4?.into())?,
        outbound_v6: v6
            .ok()
            .map(|socket| TcpListener::from_std(socket.into()))
            .transpose()?,
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
