//! Socket options the socket crates do not offer, set with `setsockopt`.
#![allow(unsafe_code)]

use std::{io, os::fd::AsRawFd};

/// Sets `IP_BIND_ADDRESS_NO_PORT` on `socket`: a later `bind()` to an address
/// with port 0 leaves the port to `connect()`, which picks one unique for the
/// whole four-tuple. Without it `bind()` reserves a port for every
/// destination at once, and a burst of connections from one client address
/// (tens of thousands in `TIME_WAIT`) runs out of ports. The option is an
/// `IPPROTO_IP` one, honoured for IPv6 sockets too.
pub fn set_bind_address_no_port(socket: &impl AsRawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: `on` is a valid `c_int` for the length given, read by the kernel only.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&raw const on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_the_option_bind_leaves_the_port_to_connect() {
        // Without it, bind() to port 0 assigns (and reserves) a port at once.
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        set_bind_address_no_port(&socket).expect("setsockopt");
        socket
            .bind(
                &"127.0.0.1:0"
                    .parse::<std::net::SocketAddr>()
                    .unwrap()
                    .into(),
            )
            .expect("bind");
        let bound = socket.local_addr().unwrap().as_socket().unwrap();
        assert_eq!(bound.port(), 0, "the port is left to connect()");
    }
}
