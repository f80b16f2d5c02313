//! The contract between the in-kernel programs and the node daemon.
//!
//! Everything the eBPF programs and userspace exchange through maps is defined
//! here, once, as `#[repr(C)]` plain data, so that both sides agree on layout by
//! construction. The crate is `no_std` and has no dependencies on the eBPF side;
//! with the `user` feature it also implements [`aya::Pod`] for the map types.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

/// Names of the maps, as the programs declare them and userspace looks them up.
pub mod map_names {
    /// `HashMap<u64, EnrolledPod>`: netns cookie of each enrolled pod on this node.
    pub const ENROLLED: &str = "ENROLLED";
    /// `LruHashMap<u64, OrigDst>`: original destination of a redirected
    /// socket, by socket cookie (written by connect4/6, read by getpeername4/6).
    pub const CONNECTING: &str = "CONNECTING";
    /// `LruHashMap<OrigDstKey, OrigDst>`: original destination of a redirected
    /// connection, by pod netns cookie and client port: what the daemon looks
    /// up for a connection it accepted.
    pub const ORIG_DST: &str = "ORIG_DST";
    /// `SockHash<PodAddr>`: each enrolled pod's inbound plaintext listener, by
    /// pod address (read by `sk_lookup`).
    pub const INBOUND: &str = "INBOUND";
    /// `HashMap<PodAddr, u64>`: the addresses of enrolled pods (value: the
    /// pod's netns cookie). Traffic for such an address whose listener is gone
    /// (the daemon is down) is dropped, never delivered around the mesh.
    pub const ENROLLED_ADDRS: &str = "ENROLLED_ADDRS";
    /// `LruHashMap<DeliveryKey, u8>`: connections `sk_lookup` must leave alone,
    /// filed by `sock_ops` as they are made and removed when they close: the
    /// daemon's deliveries to an application from the original client's
    /// address ([`UNCAPTURED_DELIVERY`](super::UNCAPTURED_DELIVERY):
    /// `sk_lookup` cannot tell them from connections arriving from outside,
    /// both carry a foreign source address) and connections from the node's
    /// own network namespace, the kubelet's probes
    /// ([`UNCAPTURED_NODE`](super::UNCAPTURED_NODE)). The value says which.
    pub const DELIVERING: &str = "DELIVERING";
    /// `Array<Daemon>` of one entry: who the node daemon is
    /// ([`Daemon`](super::Daemon)), written by the daemon right after loading.
    /// Not pinned: each load of the programs knows the daemon that loaded it.
    pub const DAEMON: &str = "DAEMON";
    /// `SockHash<SockKey>`: the sockets whose bytes move socket to socket
    /// ([socket acceleration](super::SockKey)): both ends of each
    /// application-to-daemon connection inside a pod. Pinned, so a restart or
    /// a hand-over never takes a live socket out of it (that would drop what
    /// is queued on it); the kernel removes each socket when it closes.
    pub const ACCELERATED: &str = "ACCELERATED";
    /// `HashMap<SockKey, u64>`: the kernel address of each socket in
    /// `ACCELERATED`, read at a send through `bpf_probe_read_kernel` to learn
    /// how much its peer has not read yet; removed when the socket closes.
    pub const SOCKETS: &str = "SOCKETS";
    /// `PerCpuArray<u64>`: what socket acceleration did, indexed by the
    /// constants of [`accel_counter`](super::accel_counter).
    pub const ACCEL_COUNTERS: &str = "ACCEL_COUNTERS";
}

/// Indices of the `ACCEL_COUNTERS` map (each a per-CPU `u64`, summed by the daemon).
pub mod accel_counter {
    /// Sockets added to `ACCELERATED`.
    pub const SOCKETS_JOINED: u32 = 0;
    /// Sockets that should have been added but the map refused (full).
    pub const SOCKETS_REFUSED: u32 = 1;
    /// Bytes moved straight into the peer socket's receive queue.
    pub const BYTES_REDIRECTED: u32 = 2;
    /// Bytes members sent through TCP (their peer was not a member, held
    /// too many unread bytes, or had not read all they sent through TCP).
    pub const BYTES_THROUGH_TCP: u32 = 3;
    /// Members that closed (and were forgotten).
    pub const SOCKETS_LEFT: u32 = 4;
    /// Number of counters.
    pub const COUNT: u32 = 5;
}

/// Value in `DELIVERING`: a delivery by the daemon to an application.
pub const UNCAPTURED_DELIVERY: u8 = 1;
/// Value in `DELIVERING`: a connection from the node's network namespace.
pub const UNCAPTURED_NODE: u8 = 2;

/// Names of the programs in the eBPF object.
pub mod program_names {
    /// `cgroup/connect4`: steers an enrolled pod's IPv4 TCP connect to the daemon.
    pub const CONNECT4: &str = "ztunnel_connect4";
    /// `cgroup/connect6`: the same for IPv6 (and IPv4-mapped) connects.
    pub const CONNECT6: &str = "ztunnel_connect6";
    /// `cgroup/getpeername4`: shows the application its original destination.
    pub const GETPEERNAME4: &str = "ztunnel_getpeername4";
    /// `cgroup/getpeername6`: the same for IPv6 sockets.
    pub const GETPEERNAME6: &str = "ztunnel_getpeername6";
    /// `sockops`: at TCP connect, files the original destination under the
    /// client's netns cookie and port, where the daemon finds it on accept.
    pub const SOCK_OPS: &str = "ztunnel_sock_ops";
    /// Every cgroup program, in the order they are attached.
    pub const ALL: [&str; 5] = [CONNECT4, CONNECT6, GETPEERNAME4, GETPEERNAME6, SOCK_OPS];
    /// What to attach in place of a program of [`ALL`] when the kernel
    /// refuses it: `connect4`/`connect6` that recognise the daemon's sockets
    /// by their mark, for kernels without `bpf_get_ns_current_pid_tgid` in
    /// these hooks (before Linux 6.10).
    pub const FALLBACKS: [(&str, &str); 2] = [
        (CONNECT4, "ztunnel_connect4_by_mark"),
        (CONNECT6, "ztunnel_connect6_by_mark"),
    ];
    /// `sk_lookup`, attached to each enrolled pod's network namespace: TCP
    /// arriving at the pod goes to the daemon's inbound listener in it.
    pub const SK_LOOKUP: &str = "ztunnel_sk_lookup";
    /// `sk_msg`, attached to the `ACCELERATED` map: a send on one of its
    /// sockets goes straight into its peer's receive queue.
    pub const SK_MSG: &str = "ztunnel_sk_msg";
}

/// `SO_MARK` of the daemon's own sockets inside pods (Istio's ztunnel marks
/// its sockets the same way). It is a label for routing and packet captures
/// only: the programs recognise the daemon by its process ([`Daemon`]),
/// since any pod with `CAP_NET_ADMIN` can set a mark.
pub const DAEMON_MARK: u32 = 0x539;

/// `SO_MARK` of the daemon's sockets delivering to an application inside its
/// pod from the original client's address (`IP_TRANSPARENT`): the pod routes
/// the application's replies on them (and the kernel's resets, with
/// `fwmark_reflect`) back to its loopback with a rule on this mark.
/// `sock_ops` files the daemon's sockets with this mark in `DELIVERING`.
pub const DELIVER_MARK: u32 = 0x53a;

/// The loopback interface's index, the same in every network namespace.
pub const LOOPBACK_IFINDEX: u32 = 1;

/// `AF_INET`.
pub const AF_INET: u16 = 2;
/// `AF_INET6`.
pub const AF_INET6: u16 = 10;

/// Port of the daemon's outbound listener inside every enrolled pod's netns.
pub const OUTBOUND_PORT: u16 = 15001;
/// Port of the daemon's inbound plaintext listener inside every enrolled pod's netns.
pub const INBOUND_PLAINTEXT_PORT: u16 = 15006;
/// Port of the daemon's inbound mTLS listener inside every enrolled pod's netns.
pub const INBOUND_MTLS_PORT: u16 = 15008;

/// Value of the `ENROLLED` map: what the programs need to know about one pod.
///
/// The key is the pod's network-namespace cookie (`SO_NETNS_COOKIE`), which the
/// kernel assigns and a pod cannot forge.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EnrolledPod {
    /// Port (host byte order) of the daemon's outbound listener on the pod's loopback.
    pub outbound_port: u16,
    /// Explicit padding so the layout has no implicit holes.
    pub _pad: [u8; 6],
}

impl EnrolledPod {
    /// An entry that steers outbound connections to `outbound_port`.
    pub const fn new(outbound_port: u16) -> Self {
        Self {
            outbound_port,
            _pad: [0; 6],
        }
    }
}

/// Where a redirected connection was going, as the application asked.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrigDst {
    /// The address in network byte order: IPv4 in `addr[0]`, IPv6 in all four
    /// words (as in `bpf_sock_addr.user_ip6`, IPv4-mapped addresses included).
    pub addr: [u32; 4],
    /// The port, in network byte order.
    pub port: u16,
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u16,
    /// Explicit padding.
    pub _pad: [u8; 4],
}

/// A pod address, key of the `INBOUND` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PodAddr {
    /// The address in network byte order: IPv4 in `addr[0]`, IPv6 in all four words.
    pub addr: [u32; 4],
    /// [`AF_INET`] or [`AF_INET6`] (as a `u32`, like `bpf_sk_lookup.family`).
    pub family: u32,
}

/// Key of the `DELIVERING` map: a connection's four-tuple as `sk_lookup` sees it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DeliveryKey {
    /// Source address (the original client's), network byte order as in [`PodAddr`].
    pub remote: [u32; 4],
    /// Destination address (the application's, in the pod).
    pub local: [u32; 4],
    /// Source port, host byte order.
    pub remote_port: u32,
    /// Destination port, host byte order.
    pub local_port: u32,
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u32,
}

/// The value of the `DAEMON` map: how the programs recognise the node daemon's
/// own sockets and the node's network namespace.
///
/// Slots of the `DAEMON` map.
pub const DAEMON_SLOTS: u32 = 2;
/// The `DAEMON` slot of the daemon that loaded the programs.
pub const DAEMON_THIS: u32 = 0;
/// The `DAEMON` slot of the daemon it took over from, while that one drains
/// (its connections are the mesh's own too); empty otherwise.
pub const DAEMON_PREVIOUS: u32 = 1;

/// The daemon is the process whose thread group id is `tgid` in the pid
/// namespace `(pidns_dev, pidns_ino)` (`bpf_get_ns_current_pid_tgid`): a pod
/// cannot be that process, whatever it sets on its sockets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Daemon {
    /// Device of the daemon's pid namespace file, in the kernel's encoding
    /// (`major << 20 | minor`), as the helper compares it.
    pub pidns_dev: u64,
    /// Inode of the daemon's pid namespace file (`/proc/self/ns/pid`).
    pub pidns_ino: u64,
    /// Netns cookie of the node's network namespace (the daemon's own):
    /// connections made there to an enrolled pod are the node's (kubelet
    /// probes) and reach the application directly.
    pub node_netns: u64,
    /// The daemon's process id in that pid namespace; 0 matches nothing.
    pub tgid: u32,
    /// What the daemon asks of the programs: [`DAEMON_ACCELERATE`].
    pub flags: u32,
}

/// [`Daemon::flags`]: add the application-to-daemon sockets to
/// `ACCELERATED` (socket acceleration is on).
pub const DAEMON_ACCELERATE: u32 = 1;

/// Key of the `ACCELERATED` map: one end of a TCP connection, as that end
/// sees it, in its network namespace.
///
/// Both ends of a connection inside a pod's network namespace are in the map
/// under their own keys; a send on one is redirected to the socket under
/// [`SockKey::peer`]. A four-tuple is unique among the live connections of a
/// namespace, so the peer found is always the other end of the same
/// connection, never another pod's socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockKey {
    /// Netns cookie of the namespace the socket lives in.
    pub netns: u64,
    /// Local address, network byte order (IPv4 in `local[0]`).
    pub local: [u32; 4],
    /// Remote address, network byte order (IPv4 in `remote[0]`).
    pub remote: [u32; 4],
    /// Local port, host byte order.
    pub local_port: u32,
    /// Remote port, host byte order.
    pub remote_port: u32,
    /// [`AF_INET`] or [`AF_INET6`]; IPv4-mapped IPv6 addresses are keyed as
    /// IPv4, so an IPv6 socket meets its peer on an IPv4 listener.
    pub family: u32,
    /// Explicit padding.
    pub _pad: u32,
}

impl SockKey {
    /// The key of a socket with these addresses (IPv6 ones as the kernel
    /// gives them, IPv4-mapped ones included).
    pub fn new(
        netns: u64,
        family: u32,
        local: [u32; 4],
        local_port: u32,
        remote: [u32; 4],
        remote_port: u32,
    ) -> Self {
        let (family, local, remote) =
            if family == AF_INET6 as u32 && is_v4_mapped(&local) && is_v4_mapped(&remote) {
                (AF_INET as u32, [local[3], 0, 0, 0], [remote[3], 0, 0, 0])
            } else {
                (family, local, remote)
            };
        Self {
            netns,
            local,
            remote,
            local_port,
            remote_port,
            family,
            _pad: 0,
        }
    }

    /// The key of the other end of the same connection.
    pub const fn peer(&self) -> Self {
        Self {
            netns: self.netns,
            local: self.remote,
            remote: self.local,
            local_port: self.remote_port,
            remote_port: self.local_port,
            family: self.family,
            _pad: 0,
        }
    }

    /// Whether the local end is the daemon's outbound listener's address
    /// (`127.0.0.1:15001` or `[::1]:15001`): a socket the daemon accepted
    /// from an application of the pod.
    pub fn is_outbound_listener_end(&self) -> bool {
        self.local_port == OUTBOUND_PORT as u32 && is_loopback(self.family, &self.local)
    }
}

/// Whether an IPv6 address (network byte order words) is IPv4-mapped (`::ffff:a.b.c.d`).
pub fn is_v4_mapped(ip: &[u32; 4]) -> bool {
    ip[0] == 0 && ip[1] == 0 && ip[2] == 0xffff_u32.to_be()
}

/// Whether `ip` (network byte order words, IPv4 in `ip[0]`) is a loopback
/// address of `family`: `127.0.0.0/8` or `::1`.
pub fn is_loopback(family: u32, ip: &[u32; 4]) -> bool {
    if family == AF_INET as u32 {
        u32::from_be(ip[0]) >> 24 == 127
    } else {
        *ip == [0, 0, 0, 1_u32.to_be()]
    }
}

/// Key of the `ORIG_DST` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct OrigDstKey {
    /// Netns cookie of the pod the connection came from.
    pub netns_cookie: u64,
    /// The client's (the application's) local port, host byte order.
    pub port: u16,
    /// Explicit padding.
    pub _pad: [u8; 6],
}

impl OrigDstKey {
    /// The key of the connection from `port` in the pod with `netns_cookie`.
    pub const fn new(netns_cookie: u64, port: u16) -> Self {
        Self {
            netns_cookie,
            port,
            _pad: [0; 6],
        }
    }
}

#[cfg(feature = "user")]
mod pod_impls {
    #![allow(unsafe_code)]
    // SAFETY (all of them): `#[repr(C)]`, `Copy`, only integer fields and
    // explicit padding, so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::EnrolledPod {}
    unsafe impl aya::Pod for super::OrigDst {}
    unsafe impl aya::Pod for super::OrigDstKey {}
    unsafe impl aya::Pod for super::PodAddr {}
    unsafe impl aya::Pod for super::DeliveryKey {}
    unsafe impl aya::Pod for super::Daemon {}
    unsafe impl aya::Pod for super::SockKey {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enrolled_pod_layout_is_stable() {
        // The eBPF side reads this struct by offset: its size must not drift.
        assert_eq!(core::mem::size_of::<EnrolledPod>(), 8);
        assert_eq!(core::mem::align_of::<EnrolledPod>(), 2);
        assert_eq!(core::mem::size_of::<OrigDst>(), 24);
        assert_eq!(core::mem::size_of::<OrigDstKey>(), 16);
        assert_eq!(core::mem::size_of::<PodAddr>(), 20);
        assert_eq!(core::mem::size_of::<DeliveryKey>(), 44);
        assert_eq!(core::mem::size_of::<Daemon>(), 32);
        assert_eq!(core::mem::size_of::<SockKey>(), 56);
    }

    fn v4(a: u8, b: u8, c: u8, d: u8) -> u32 {
        u32::from_ne_bytes([a, b, c, d])
    }

    fn mapped(ip: u32) -> [u32; 4] {
        [0, 0, 0xffff_u32.to_be(), ip]
    }

    #[test]
    fn a_peer_key_is_the_same_connection_seen_from_the_other_end() {
        let app = SockKey::new(
            7,
            AF_INET as u32,
            [v4(127, 0, 0, 1), 0, 0, 0],
            40000,
            [v4(127, 0, 0, 1), 0, 0, 0],
            15001,
        );
        let daemon = SockKey::new(
            7,
            AF_INET as u32,
            [v4(127, 0, 0, 1), 0, 0, 0],
            15001,
            [v4(127, 0, 0, 1), 0, 0, 0],
            40000,
        );
        assert_eq!(app.peer(), daemon);
        assert_eq!(daemon.peer(), app);
        assert!(daemon.is_outbound_listener_end());
        assert!(!app.is_outbound_listener_end());
        // Another pod's namespace never matches.
        let elsewhere = SockKey { netns: 8, ..daemon };
        assert_ne!(app.peer(), elsewhere);
    }

    #[test]
    fn an_ipv4_mapped_socket_meets_its_ipv4_peer() {
        let lo = v4(127, 0, 0, 1);
        let app = SockKey::new(7, AF_INET6 as u32, mapped(lo), 40000, mapped(lo), 15001);
        let daemon = SockKey::new(
            7,
            AF_INET as u32,
            [lo, 0, 0, 0],
            15001,
            [lo, 0, 0, 0],
            40000,
        );
        assert_eq!(app.family, AF_INET as u32);
        assert_eq!(app.peer(), daemon);
    }

    #[test]
    fn loopback_addresses() {
        assert!(is_loopback(AF_INET as u32, &[v4(127, 0, 0, 1), 0, 0, 0]));
        assert!(is_loopback(AF_INET as u32, &[v4(127, 9, 9, 9), 0, 0, 0]));
        assert!(!is_loopback(AF_INET as u32, &[v4(10, 0, 0, 1), 0, 0, 0]));
        assert!(is_loopback(AF_INET6 as u32, &[0, 0, 0, 1_u32.to_be()]));
        assert!(!is_loopback(AF_INET6 as u32, &mapped(v4(127, 0, 0, 1))));
        assert!(is_v4_mapped(&mapped(v4(10, 0, 0, 1))));
        assert!(!is_v4_mapped(&[0, 0, 0, 1_u32.to_be()]));
    }
}
