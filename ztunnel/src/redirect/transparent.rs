//! What a pod's network namespace needs so the daemon can deliver to an
//! application from the original client's address.
//!
//! The daemon connects to the application from inside the pod on a socket
//! bound (`IP_TRANSPARENT`) to the client's address and marked
//! [`DELIVER_MARK`]. The application's replies go to
//! that address, which the pod would route out of its interface; two settings
//! bring them back to the daemon's socket instead, for that mark only:
//! - `net.ipv4.tcp_fwmark_accept=1`: a connection accepted from a marked SYN
//!   carries the mark, so the application's replies are marked too;
//! - `net.ipv4.fwmark_reflect=1` and `net.ipv6.fwmark_reflect=1`: a reset the
//!   kernel sends for a marked SYN to a closed port carries the mark, so the
//!   daemon's `connect()` is refused at once (without them the reset left
//!   the pod for the client's address and the connect timed out);
//! - a routing rule `fwmark DELIVER_MARK lookup TABLE` and, in `TABLE`, a
//!   `local` default route on loopback (IPv4 and IPv6).
//!
//! Nothing else in the pod changes: unmarked traffic never meets the rule.
//! Routes and rules are written with rtnetlink messages built here (a few
//! fixed-layout structs), so no `ip` binary and no netlink dependency is needed.

use std::io::{self, Read};

use socket2::{Domain, Protocol, Socket, Type};

use super::{
    abi::{AF_INET, AF_INET6, DELIVER_MARK, LOOPBACK_IFINDEX},
    netns::PodNetns,
};

/// The routing table holding the `local` default routes (and the rule's priority).
pub const TABLE: u32 = DELIVER_MARK;

/// The sysctls set to 1 in the pod (see the module's documentation).
const SYSCTLS: [&str; 3] = [
    "/proc/sys/net/ipv4/tcp_fwmark_accept",
    "/proc/sys/net/ipv4/fwmark_reflect",
    "/proc/sys/net/ipv6/fwmark_reflect",
];

// rtnetlink message types and flags (linux/rtnetlink.h, linux/netlink.h).
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_NEWRULE: u16 = 32;
const RTM_DELRULE: u16 = 33;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
// Attributes.
const FRA_PRIORITY: u16 = 6;
const FRA_FWMARK: u16 = 10;
const FRA_TABLE: u16 = 15;
const FRA_FWMASK: u16 = 16;
const RTA_OIF: u16 = 4;
const RTA_TABLE: u16 = 15;
// Values.
const FR_ACT_TO_TBL: u8 = 1;
const RTN_LOCAL: u8 = 2;
const RT_SCOPE_HOST: u8 = 254;
const RTPROT_STATIC: u8 = 4;

/// Sets up `netns` for transparent delivery. Idempotent: what exists is kept.
pub fn install(netns: &PodNetns) -> io::Result<()> {
    let socket = netns.run(|| -> io::Result<Socket> {
        for sysctl in SYSCTLS {
            std::fs::write(sysctl, "1")
                .map_err(|err| io::Error::new(err.kind(), format!("setting {sysctl}: {err}")))?;
        }
        rtnetlink_socket()
    })??;
    for family in [AF_INET, AF_INET6] {
        request(
            &socket,
            RTM_NEWRULE,
            NLM_F_CREATE | NLM_F_EXCL,
            &rule(family),
        )?;
        request(
            &socket,
            RTM_NEWROUTE,
            NLM_F_CREATE | NLM_F_EXCL,
            &route(family),
        )?;
    }
    Ok(())
}

/// Removes what [`install`] added (the sysctls stay: they change nothing for
/// unmarked connections). What is already gone is fine.
pub fn remove(netns: &PodNetns) -> io::Result<()> {
    let socket = netns.run(rtnetlink_socket)??;
    for family in [AF_INET, AF_INET6] {
        request(&socket, RTM_DELRULE, 0, &rule(family))?;
        request(&socket, RTM_DELROUTE, 0, &route(family))?;
    }
    Ok(())
}

fn rtnetlink_socket() -> io::Result<Socket> {
    Socket::new(
        Domain::from(libc::AF_NETLINK),
        Type::RAW,
        Some(Protocol::from(libc::NETLINK_ROUTE)),
    )
}

/// `fib_rule_hdr` + attributes: `fwmark DELIVER_MARK/0xffffffff lookup TABLE`.
fn rule(family: u16) -> Vec<u8> {
    let mut body = vec![family as u8, 0, 0, 0, 0, 0, 0, FR_ACT_TO_TBL, 0, 0, 0, 0];
    attribute(&mut body, FRA_PRIORITY, TABLE);
    attribute(&mut body, FRA_FWMARK, DELIVER_MARK);
    attribute(&mut body, FRA_FWMASK, u32::MAX);
    attribute(&mut body, FRA_TABLE, TABLE);
    body
}

/// `rtmsg` + attributes: `local default dev lo table TABLE`.
fn route(family: u16) -> Vec<u8> {
    let mut body = vec![
        family as u8,
        0, // dst_len: the default route
        0,
        0,
        0, // table: in RTA_TABLE (it does not fit a byte)
        RTPROT_STATIC,
        RT_SCOPE_HOST,
        RTN_LOCAL,
        0,
        0,
        0,
        0,
    ];
    attribute(&mut body, RTA_OIF, LOOPBACK_IFINDEX);
    attribute(&mut body, RTA_TABLE, TABLE);
    body
}

/// Appends a `u32` attribute (`rtattr` header, native endian, 4-byte aligned).
fn attribute(body: &mut Vec<u8>, kind: u16, value: u32) {
    body.extend_from_slice(&8u16.to_ne_bytes());
    body.extend_from_slice(&kind.to_ne_bytes());
    body.extend_from_slice(&value.to_ne_bytes());
}

/// Sends one request and waits for its acknowledgement. "Exists" on create
/// and "not found" on delete count as success.
fn request(socket: &Socket, kind: u16, flags: u16, body: &[u8]) -> io::Result<()> {
    const HEADER: usize = 16;
    let mut message = Vec::with_capacity(HEADER + body.len());
    message.extend_from_slice(&((HEADER + body.len()) as u32).to_ne_bytes());
    message.extend_from_slice(&kind.to_ne_bytes());
    message.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK | flags).to_ne_bytes());
    message.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    message.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel assigns it
    message.extend_from_slice(body);
    socket.send(&message)?;

    let mut reply = [0u8; 1024];
    let n = (&*socket).read(&mut reply)?;
    // nlmsghdr, then for NLMSG_ERROR an i32 errno (0: acknowledged).
    let reply = &reply[..n];
    let field = |at: usize, len: usize| reply.get(at..at + len);
    let reply_kind = field(4, 2).map(|b| u16::from_ne_bytes([b[0], b[1]]));
    let errno = field(HEADER, 4).map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
    let creating = matches!(kind, RTM_NEWROUTE | RTM_NEWRULE);
    match (reply_kind, errno) {
        (Some(NLMSG_ERROR), Some(0)) => Ok(()),
        (Some(NLMSG_ERROR), Some(e)) if creating && e == -libc::EEXIST => Ok(()),
        (Some(NLMSG_ERROR), Some(e)) if !creating && (e == -libc::ENOENT || e == -libc::ESRCH) => {
            Ok(())
        }
        (Some(NLMSG_ERROR), Some(e)) => Err(io::Error::from_raw_os_error(-e)),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "unexpected rtnetlink reply",
        )),
    }
}
