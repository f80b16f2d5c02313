//! Connections the daemon opens on a pod's behalf, from inside the pod's
//! network namespace, on sockets the eBPF programs leave alone.

use std::{net::SocketAddr, time::Duration};

use tokio::net::{TcpSocket, TcpStream};

use crate::redirect::{abi::DAEMON_MARK, netns::PodNetns};

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to `destination` from inside `netns`: the connection carries the
/// pod's address, and its mark keeps it from being captured again.
pub async fn from_pod(netns: &PodNetns, destination: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = netns.run(|| -> std::io::Result<socket2::Socket> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(destination),
            socket2::Type::STREAM,
            None,
        )?;
        socket.set_mark(DAEMON_MARK)?;
        socket.set_nonblocking(true)?;
        Ok(socket)
    })??;
    let socket = TcpSocket::from_std_stream(socket.into());
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(destination))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}
