//! Connections the daemon opens on a pod's behalf, from inside the pod's
//! network namespace, on sockets the eBPF programs leave alone.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use tokio::net::{TcpSocket, TcpStream};

use crate::redirect::{
    abi::{DAEMON_MARK, DELIVER_MARK},
    netns::PodNetns,
    socket_options,
};

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to `destination` from inside `netns`: the connection carries the
/// pod's address, and its mark keeps it from being captured again.
pub async fn from_pod(netns: &PodNetns, destination: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = netns.run(|| -> std::io::Result<socket2::Socket> {
        let socket = socket(destination)?;
        socket.set_mark(DAEMON_MARK)?;
        Ok(socket)
    })??;
    connect(socket, destination).await
}

/// Connects to `destination` (an application in the pod of `netns`) from
/// `client`, an address that is not the pod's (`IP_TRANSPARENT`), so the
/// application sees who the connection came from. The pod must have been
/// prepared by [`crate::redirect::transparent::install`], which routes the
/// replies on such connections back to this socket. `sock_ops` files the
/// connection (the daemon's, with [`DELIVER_MARK`]) as it is made, so
/// `sk_lookup` lets it through to the application. The port is chosen by
/// `connect()` for the whole four-tuple (`IP_BIND_ADDRESS_NO_PORT`), so one
/// client address can have as many connections as it would without the mesh.
pub async fn as_client(
    netns: &PodNetns,
    client: IpAddr,
    destination: SocketAddr,
) -> std::io::Result<TcpStream> {
    let socket = netns.run(|| -> std::io::Result<socket2::Socket> {
        let socket = socket(destination)?;
        if client.is_ipv4() {
            socket.set_ip_transparent_v4(true)?;
        } else {
            socket.set_ip_transparent_v6(true)?;
        }
        socket.set_mark(DELIVER_MARK)?;
        socket_options::set_bind_address_no_port(&socket)?;
        socket.bind(&SocketAddr::new(client, 0).into())?;
        Ok(socket)
    })??;
    connect(socket, destination).await
}

fn socket(destination: SocketAddr) -> std::io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(destination),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

async fn connect(socket: socket2::Socket, destination: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::from_std_stream(socket.into());
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(destination))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}
