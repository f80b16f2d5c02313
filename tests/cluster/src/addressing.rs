//! The cluster's address plan, like a flat CNI with per-node pod ranges.
//!
//! | what | IPv4 | IPv6 |
//! |---|---|---|
//! | node `n` on the fabric | `10.10.0.n/24` | `fd00:10:10::n/64` |
//! | pod range of node `n` | `10.244.n.0/24` | `fd00:10:244:n::/64` |
//! | pod `k` (0-based) of node `n` | `10.244.n.(k+2)` | `fd00:10:244:n::(k+2)` |
//! | pods' gateway (node side of each pod veth) | `10.244.n.1` | `fe80::1` |
//! | service `s` (0-based, one per app) | `10.96.0.(s+10)` | `fd00:10:96::(s+10)` |
//!
//! All of it exists only inside the cluster's own network namespaces.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Prefix length of the fabric subnet the nodes share.
pub const FABRIC_PREFIX_V4: u8 = 24;
/// Prefix length of the fabric subnet the nodes share (IPv6).
pub const FABRIC_PREFIX_V6: u8 = 64;
/// The pods' IPv6 default gateway: a link-local address on every node-side veth.
pub const POD_GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// A node's address on the fabric.
pub fn node_v4(node: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 10, 0, node)
}

/// A node's IPv6 address on the fabric.
pub fn node_v6(node: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x10, 0x10, 0, 0, 0, 0, u16::from(node))
}

/// The IPv4 pod range of a node, as `(network, prefix length)`.
pub fn pod_cidr_v4(node: u8) -> (Ipv4Addr, u8) {
    (Ipv4Addr::new(10, 244, node, 0), 24)
}

/// The IPv6 pod range of a node, as `(network, prefix length)`.
pub fn pod_cidr_v6(node: u8) -> (Ipv6Addr, u8) {
    (
        Ipv6Addr::new(0xfd00, 0x10, 0x244, u16::from(node), 0, 0, 0, 0),
        64,
    )
}

/// The IPv4 virtual IP of the `index`-th service (0-based).
pub fn service_v4(index: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 96, 0, index + 10)
}

/// The IPv6 virtual IP of the `index`-th service (0-based).
pub fn service_v6(index: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, u16::from(index) + 0x10)
}

/// The pods' IPv4 gateway on a node.
pub fn pod_gateway_v4(node: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, node, 1)
}

/// The IPv4 address of the `slot`-th pod (0-based) of a node.
pub fn pod_v4(node: u8, slot: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, node, slot + 2)
}

/// The IPv6 address of the `slot`-th pod (0-based) of a node.
pub fn pod_v6(node: u8, slot: u8) -> Ipv6Addr {
    Ipv6Addr::new(
        0xfd00,
        0x10,
        0x244,
        u16::from(node),
        0,
        0,
        0,
        u16::from(slot) + 2,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_v4(ip: Ipv4Addr, (net, len): (Ipv4Addr, u8)) -> bool {
        let mask = u32::MAX << (32 - len);
        u32::from(ip) & mask == u32::from(net)
    }

    fn in_v6(ip: Ipv6Addr, (net, len): (Ipv6Addr, u8)) -> bool {
        let mask = u128::MAX << (128 - len);
        u128::from(ip) & mask == u128::from(net)
    }

    #[test]
    fn pods_fall_in_their_node_range_and_nowhere_else() {
        for node in [1u8, 2, 250] {
            for slot in [0u8, 1, 252] {
                assert!(in_v4(pod_v4(node, slot), pod_cidr_v4(node)));
                assert!(in_v6(pod_v6(node, slot), pod_cidr_v6(node)));
                assert!(!in_v4(
                    pod_v4(node, slot),
                    pod_cidr_v4(node.wrapping_add(1))
                ));
                assert_ne!(pod_v4(node, slot), pod_gateway_v4(node));
            }
        }
    }

    #[test]
    fn everything_is_private_or_unique_local() {
        assert!(node_v4(1).is_private() && pod_v4(1, 0).is_private());
        assert!(node_v6(1).is_unique_local() && pod_v6(1, 0).is_unique_local());
        assert!(POD_GATEWAY_V6.is_unicast_link_local());
    }
}
