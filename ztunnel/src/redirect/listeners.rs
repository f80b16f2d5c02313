//! The daemon's listening sockets inside an enrolled pod's network namespace.
//!
//! Outbound and inbound plaintext are bound to the pod's loopback only: an
//! address reachable from the network would let anyone reach "outbound" and
//! be taken for the pod. (`sk_lookup` hands the inbound listener connections
//! for any local address, whatever it is bound to.) The tunnel listener is
//! bound to the pod's own addresses, where peer daemons reach it; it speaks
//! only mutual TLS.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsFd, BorrowedFd, OwnedFd},
};

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
    /// Where peer daemons open tunnels: one per pod address.
    pub tunnel: Vec<TcpListener>,
}

/// The ports of the daemon's listeners in a pod.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    /// Outbound (loopback).
    pub outbound: u16,
    /// Inbound plaintext (loopback).
    pub inbound_plaintext: u16,
    /// Inbound mutual TLS (the pod's addresses).
    pub tunnel: u16,
}

/// Opens the daemon's listeners inside `netns`, the tunnel listener on each
/// of `pod_ips`: for each address a socket of `inherited` (listening sockets
/// a previous daemon handed over, all of this namespace) bound to it, else a
/// new one. Must run within a Tokio runtime.
pub fn open(
    netns: &PodNetns,
    ports: Ports,
    pod_ips: &[IpAddr],
    inherited: Vec<OwnedFd>,
) -> std::io::Result<PodListeners> {
    let mut inherited: Vec<(Option<SocketAddr>, OwnedFd)> = inherited
        .into_iter()
        .map(|fd| (local_address(&fd), fd))
        .collect();
    let mut take = |address: SocketAddr| {
        let position = inherited.iter().position(|(at, _)| *at == Some(address))?;
        Some(socket2::Socket::from(inherited.swap_remove(position).1))
    };
    let loopback = [ports.outbound, ports.inbound_plaintext].map(|port| {
        (
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
        )
    });
    let loopback = loopback.map(|(v4, v6)| ((v4, take(v4)), (v6, take(v6))));
    let tunnel: Vec<_> = pod_ips
        .iter()
        .map(|ip| {
            let address = SocketAddr::new(*ip, ports.tunnel);
            (address, take(address))
        })
        .collect();
    // Only the sockets not handed over are made, inside the pod.
    let open = |(address, socket): (SocketAddr, Option<socket2::Socket>)| {
        socket.map_or_else(
            || listen(address),
            |socket| socket.set_nonblocking(true).map(|()| socket),
        )
    };
    let (sockets, tunnel) = netns.run(|| {
        let loopback = loopback.map(|(v4, v6)| (open(v4), open(v6)));
        let tunnel: Vec<_> = tunnel.into_iter().map(open).collect();
        (loopback, tunnel)
    })?;
    let tunnel = tunnel
        .into_iter()
        .map(|socket| TcpListener::from_std(socket?.into()))
        .collect::<std::io::Result<_>>()?;
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
        tunnel,
    })
}

/// The address a socket is bound to, if it is an IP socket.
pub fn local_address(socket: &impl AsFd) -> Option<SocketAddr> {
    socket2::SockRef::from(socket)
        .local_addr()
        .ok()?
        .as_socket()
}

impl PodListeners {
    /// Every listener's socket, for handing over to a successor.
    pub fn sockets(&self) -> Vec<BorrowedFd<'_>> {
        let stacks = [&self.outbound, &self.inbound_plaintext];
        stacks
            .into_iter()
            .flat_map(|stack| [Some(&stack.v4), stack.v6.as_ref()])
            .flatten()
            .chain(&self.tunnel)
            .map(AsFd::as_fd)
            .collect()
    }
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
        // A pod's IPv6 address may still be tentative (duplicate address
        // detection) when the pod is enrolled.
        socket.set_freebind_v6(true)?;
    } else {
        socket.set_freebind_v4(true)?;
    }
    socket.bind(&address.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// A free loopback port (bound, then released).
    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[tokio::test]
    async fn a_handed_over_socket_is_used_as_it_is_and_the_rest_are_made() {
        // This process's own namespace stands in for a pod's.
        let netns = PodNetns::open(std::path::Path::new("/proc/self/ns/net")).unwrap();
        let ports = Ports {
            outbound: free_port(),
            inbound_plaintext: free_port(),
            tunnel: free_port(),
        };
        let outbound = std::net::TcpListener::bind(("127.0.0.1", ports.outbound)).unwrap();
        // A client waits in its queue, as one would while daemons change.
        let mut client = std::net::TcpStream::connect(("127.0.0.1", ports.outbound)).unwrap();
        let unrelated = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let inherited = vec![OwnedFd::from(outbound), OwnedFd::from(unrelated)];
        let listeners = open(&netns, ports, &["127.0.0.1".parse().unwrap()], inherited).unwrap();

        let (mut accepted, _) = listeners.outbound.v4.accept().await.unwrap();
        client.write_all(b"x").unwrap();
        let mut got = [0u8];
        tokio::io::AsyncReadExt::read_exact(&mut accepted, &mut got)
            .await
            .unwrap();
        assert_eq!(
            &got, b"x",
            "the queued connection came through the same socket"
        );
        // The others were made here, on the addresses asked for.
        let plain = local_address(&listeners.inbound_plaintext.v4).unwrap();
        assert_eq!(
            plain,
            SocketAddr::from((Ipv4Addr::LOCALHOST, ports.inbound_plaintext))
        );
        assert_eq!(listeners.tunnel.len(), 1);
        assert_eq!(
            local_address(&listeners.tunnel[0]).unwrap().port(),
            ports.tunnel
        );
        // Every listener is offered to a successor; the unrelated socket was dropped.
        let expected = 2
            + usize::from(listeners.outbound.v6.is_some())
            + usize::from(listeners.inbound_plaintext.v6.is_some())
            + 1;
        assert_eq!(listeners.sockets().len(), expected);
    }
}
