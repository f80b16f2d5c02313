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
    /// Explicit padding.
    pub _pad: u32,
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
    }
}
