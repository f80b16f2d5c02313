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
}

/// Names of the programs in the eBPF object.
pub mod program_names {
    /// `cgroup/connect4`: steers an enrolled pod's IPv4 TCP connect to the daemon.
    pub const CONNECT4: &str = "ztunnel_connect4";
}

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

#[cfg(feature = "user")]
mod pod_impls {
    #[allow(unsafe_code)]
    // SAFETY: `EnrolledPod` is `#[repr(C)]`, `Copy`, has only integer fields and
    // explicit padding, so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::EnrolledPod {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enrolled_pod_layout_is_stable() {
        // The eBPF side reads this struct by offset: its size must not drift.
        assert_eq!(core::mem::size_of::<EnrolledPod>(), 8);
        assert_eq!(core::mem::align_of::<EnrolledPod>(), 2);
    }
}
