//! ztunnel's in-kernel programs.
//!
//! They are attached once per node daemon at the cgroup v2 root, so they run
//! for every socket on the machine. Each one therefore starts with the same
//! gate: act only for a TCP socket in the network namespace of a pod that this
//! daemon enrolled (its netns cookie is a key of `ENROLLED`), never for the
//! daemon's own sockets (marked [`DAEMON_MARK`]); for every other socket,
//! return "allow" untouched.
//!
//! The path of one outbound connection:
//! 1. `connect4`/`connect6` records the destination the application asked for
//!    under the socket's cookie (`CONNECTING`) and rewrites the connect to the
//!    daemon's outbound listener on the pod's own loopback.
//! 2. `sock_ops` (at `TCP_CONNECT_CB`, when the client port is known and before
//!    the SYN leaves) files that record under `{netns cookie, client port}`
//!    (`ORIG_DST`), which the daemon looks up when it accepts the connection.
//! 3. `getpeername4`/`getpeername6` show the application its original
//!    destination, so it never sees the proxy.
//!
//! The maps are pinned by name (and the daemon pins the links), so the
//! programs and the set of enrolled pods outlive the daemon: while it is down,
//! enrolled pods' connects are still steered to its (absent) listener and are
//! refused, never sent around the mesh.
#![no_std]
#![no_main]

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_SOCK_OPS_TCP_CONNECT_CB, bpf_sock_addr, sk_action},
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::{cgroup_sock_addr, map, sk_lookup, sock_ops},
    maps::{HashMap, LruHashMap, SockHash},
    programs::{SkLookupContext, SockAddrContext, SockOpsContext},
};
use ztunnel_ebpf_common::{
    AF_INET, AF_INET6, DAEMON_MARK, DELIVER_MARK, DeliveryKey, EnrolledPod, INBOUND_MTLS_PORT,
    INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT, OrigDst, OrigDstKey, PodAddr,
};

/// Verdict that lets the syscall proceed (cgroup programs return 1 to allow).
const ALLOW: i32 = 1;
/// Verdict that fails the syscall with EPERM: used when a connection of an
/// enrolled pod cannot be steered, so it never bypasses the mesh.
const DENY: i32 = 0;
/// Upper bound of pods one node daemon can enrol.
const MAX_ENROLLED_PODS: u32 = 4096;
/// Connections being set up at once (entries are small; LRU evicts old ones).
const MAX_CONNECTING: u32 = 65536;
/// `IPPROTO_TCP`: only TCP is steered; UDP (DNS) passes untouched.
const IPPROTO_TCP: u32 = 6;
/// 127.0.0.1 in host byte order.
const LOOPBACK_V4: u32 = 0x7f00_0001;

/// Enrolled pods of this node, keyed by netns cookie; filled by the daemon.
#[map(name = "ENROLLED")]
static ENROLLED: HashMap<u64, EnrolledPod> = HashMap::pinned(MAX_ENROLLED_PODS, 0);

/// Original destinations of redirected sockets, by socket cookie.
#[map(name = "CONNECTING")]
static CONNECTING: LruHashMap<u64, OrigDst> = LruHashMap::pinned(MAX_CONNECTING, 0);

/// Original destinations of redirected connections, by pod and client port.
#[map(name = "ORIG_DST")]
static ORIG_DST: LruHashMap<OrigDstKey, OrigDst> = LruHashMap::pinned(MAX_CONNECTING, 0);

/// Inbound plaintext listeners of the enrolled pods, by pod address.
#[map(name = "INBOUND")]
static INBOUND: SockHash<PodAddr> = SockHash::pinned(2 * MAX_ENROLLED_PODS, 0);

/// Addresses of the enrolled pods (value: netns cookie), filled by the daemon.
#[map(name = "ENROLLED_ADDRS")]
static ENROLLED_ADDRS: HashMap<PodAddr, u64> = HashMap::pinned(2 * MAX_ENROLLED_PODS, 0);

/// Connections the daemon is opening to applications from their clients'
/// addresses, filled by the daemon for the length of each `connect()`.
#[map(name = "DELIVERING")]
static DELIVERING: LruHashMap<DeliveryKey, u8> = LruHashMap::pinned(MAX_CONNECTING, 0);

/// The enrolled pod a TCP socket of an application belongs to, if any.
fn enrolled_app_socket(ctx: &SockAddrContext) -> Option<EnrolledPod> {
    let sock_addr: *mut bpf_sock_addr = ctx.sock_addr;
    // SAFETY: `sock_addr` is the kernel-provided context, valid for the whole run.
    let (protocol, sk) = unsafe { ((*sock_addr).protocol, (*sock_addr).__bindgen_anon_1.sk) };
    if protocol != IPPROTO_TCP {
        return None;
    }
    // SAFETY: the helper accepts this program type's context.
    let netns = unsafe { bpf_get_netns_cookie(sock_addr as *mut c_void) };
    // SAFETY: the map value is copied out; the map holds plain data.
    let pod = unsafe { ENROLLED.get(&netns) }.copied()?;
    // SAFETY: `sk` comes from the context; the verifier checks the field read.
    if !sk.is_null() && matches!(unsafe { (*sk).mark }, DAEMON_MARK | DELIVER_MARK) {
        return None;
    }
    Some(pod)
}

/// Records `orig` for this socket; false if it could not be recorded.
fn record(ctx: &SockAddrContext, orig: &OrigDst) -> bool {
    // SAFETY: the helper accepts this program type's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr as *mut c_void) };
    CONNECTING.insert(&cookie, orig, 0).is_ok()
}

/// The recorded original destination of this socket, if it was redirected.
fn recorded(ctx: &SockAddrContext) -> Option<OrigDst> {
    // SAFETY: the helper accepts this program type's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr as *mut c_void) };
    // SAFETY: the map value is copied out; the map holds plain data.
    unsafe { CONNECTING.get(&cookie) }.copied()
}

/// `cgroup/connect4`: an enrolled pod's IPv4 TCP connect goes to the daemon's
/// outbound listener on the pod's own loopback.
#[cgroup_sock_addr(connect4)]
pub fn ztunnel_connect4(ctx: SockAddrContext) -> i32 {
    let Some(pod) = enrolled_app_socket(&ctx) else {
        return ALLOW;
    };
    // SAFETY: the kernel-provided context, valid and writable for this program type.
    let sock_addr = unsafe { &mut *ctx.sock_addr };
    // Connections to the pod's own loopback (the daemon's listener included) stay local.
    if u32::from_be(sock_addr.user_ip4) >> 24 == 127 {
        return ALLOW;
    }
    let orig = OrigDst {
        addr: [sock_addr.user_ip4, 0, 0, 0],
        // `user_port` holds the network-order port in its low 16 bits.
        port: sock_addr.user_port as u16,
        family: AF_INET,
        _pad: [0; 4],
    };
    if !record(&ctx, &orig) {
        return DENY;
    }
    sock_addr.user_ip4 = LOOPBACK_V4.to_be();
    sock_addr.user_port = u32::from(pod.outbound_port.to_be());
    ALLOW
}

/// `cgroup/connect6`: the same for IPv6, including IPv4-mapped destinations
/// (`::ffff:a.b.c.d` on an IPv6 socket reaches only this hook).
#[cgroup_sock_addr(connect6)]
pub fn ztunnel_connect6(ctx: SockAddrContext) -> i32 {
    let Some(pod) = enrolled_app_socket(&ctx) else {
        return ALLOW;
    };
    // SAFETY: the kernel-provided context, valid and writable for this program type.
    let sock_addr = unsafe { &mut *ctx.sock_addr };
    let ip = [
        sock_addr.user_ip6[0],
        sock_addr.user_ip6[1],
        sock_addr.user_ip6[2],
        sock_addr.user_ip6[3],
    ];
    let mapped = ip[0] == 0 && ip[1] == 0 && ip[2] == 0xffff_u32.to_be();
    let loopback = if mapped {
        u32::from_be(ip[3]) >> 24 == 127
    } else {
        ip[0] == 0 && ip[1] == 0 && ip[2] == 0 && ip[3] == 1_u32.to_be()
    };
    if loopback {
        return ALLOW;
    }
    let orig = OrigDst {
        addr: ip,
        port: sock_addr.user_port as u16,
        family: AF_INET6,
        _pad: [0; 4],
    };
    if !record(&ctx, &orig) {
        return DENY;
    }
    // IPv4-mapped destinations go to the IPv4 listener, through its mapped form.
    sock_addr.user_ip6[0] = 0;
    sock_addr.user_ip6[1] = 0;
    if mapped {
        sock_addr.user_ip6[2] = 0xffff_u32.to_be();
        sock_addr.user_ip6[3] = LOOPBACK_V4.to_be();
    } else {
        sock_addr.user_ip6[2] = 0;
        sock_addr.user_ip6[3] = 1_u32.to_be();
    }
    sock_addr.user_port = u32::from(pod.outbound_port.to_be());
    ALLOW
}

/// `cgroup/getpeername4`: a redirected IPv4 socket reports its original peer.
#[cgroup_sock_addr(getpeername4)]
pub fn ztunnel_getpeername4(ctx: SockAddrContext) -> i32 {
    if let Some(orig) = recorded(&ctx).filter(|orig| orig.family == AF_INET) {
        // SAFETY: the kernel-provided context, valid and writable for this program type.
        let sock_addr = unsafe { &mut *ctx.sock_addr };
        sock_addr.user_ip4 = orig.addr[0];
        sock_addr.user_port = u32::from(orig.port);
    }
    ALLOW
}

/// `cgroup/getpeername6`: a redirected IPv6 socket reports its original peer.
#[cgroup_sock_addr(getpeername6)]
pub fn ztunnel_getpeername6(ctx: SockAddrContext) -> i32 {
    if let Some(orig) = recorded(&ctx).filter(|orig| orig.family == AF_INET6) {
        // SAFETY: the kernel-provided context, valid and writable for this program type.
        let sock_addr = unsafe { &mut *ctx.sock_addr };
        sock_addr.user_ip6[0] = orig.addr[0];
        sock_addr.user_ip6[1] = orig.addr[1];
        sock_addr.user_ip6[2] = orig.addr[2];
        sock_addr.user_ip6[3] = orig.addr[3];
        sock_addr.user_port = u32::from(orig.port);
    }
    ALLOW
}

/// `sockops`: when a redirected socket connects, its client port is known;
/// file its original destination where the daemon will look for it.
#[sock_ops]
pub fn ztunnel_sock_ops(ctx: SockOpsContext) -> u32 {
    if ctx.op() != BPF_SOCK_OPS_TCP_CONNECT_CB {
        return 0;
    }
    // SAFETY: the helper accepts this program type's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops as *mut c_void) };
    // SAFETY: the map value is copied out; the map holds plain data.
    let Some(orig) = (unsafe { CONNECTING.get(&cookie) }).copied() else {
        return 0;
    };
    // SAFETY: the helper accepts this program type's context.
    let netns = unsafe { bpf_get_netns_cookie(ctx.ops as *mut c_void) };
    let key = OrigDstKey::new(netns, ctx.local_port() as u16);
    // A failed insert leaves the daemon without a destination: it then closes
    // the connection (fail closed) rather than guess.
    let _ = ORIG_DST.insert(&key, &orig, 0);
    0
}

/// `sk_lookup`, attached to an enrolled pod's network namespace: a TCP
/// connection arriving at the pod's address is handed to the daemon's inbound
/// listener in the pod, which delivers it to the application. While the
/// daemon is down (its listener gone) such connections are dropped.
///
/// Left alone: connections to the daemon's own ports, connections made inside
/// the pod (from its own address or loopback), and the daemon's deliveries to
/// the application from the original client's address (in `DELIVERING`).
#[sk_lookup]
pub fn ztunnel_sk_lookup(ctx: SkLookupContext) -> u32 {
    // SAFETY: the kernel-provided context, valid for the whole run.
    let lookup = unsafe { &*ctx.lookup };
    if lookup.protocol != IPPROTO_TCP {
        return sk_action::SK_PASS;
    }
    let port = lookup.local_port as u16;
    if port == OUTBOUND_PORT || port == INBOUND_PLAINTEXT_PORT || port == INBOUND_MTLS_PORT {
        return sk_action::SK_PASS;
    }
    // One load per word: the verifier refuses context reads through a pointer
    // derived from the context (what a whole-array copy compiles to).
    // SAFETY (both): reads of context fields at constant offsets.
    let v6 = |words: &[u32; 4]| unsafe {
        [
            core::ptr::read_volatile(&words[0]),
            core::ptr::read_volatile(&words[1]),
            core::ptr::read_volatile(&words[2]),
            core::ptr::read_volatile(&words[3]),
        ]
    };
    let (remote, local) = if lookup.family == u32::from(AF_INET) {
        ([lookup.remote_ip4, 0, 0, 0], [lookup.local_ip4, 0, 0, 0])
    } else {
        (v6(&lookup.remote_ip6), v6(&lookup.local_ip6))
    };
    // Connections made inside the pod (they come over loopback, but report the
    // pod's interface as ingress, so the addresses tell): the pod's own, to
    // itself or from loopback.
    let from_loopback = if lookup.family == u32::from(AF_INET) {
        u32::from_be(remote[0]) >> 24 == 127
    } else {
        remote == [0, 0, 0, 1_u32.to_be()]
    };
    if from_loopback || remote == local {
        return sk_action::SK_PASS;
    }
    // The daemon delivering to the application from the client's address.
    let delivery = DeliveryKey {
        remote,
        local,
        remote_port: u32::from(u16::from_be(lookup.remote_port)),
        local_port: lookup.local_port,
        family: lookup.family,
    };
    // SAFETY: the map value is read by copy; the map holds plain data.
    if unsafe { DELIVERING.get(&delivery) }.is_some() {
        return sk_action::SK_PASS;
    }
    let key = PodAddr {
        addr: local,
        family: lookup.family,
    };
    if INBOUND.redirect_sk_lookup(&ctx, key, 0).is_ok() {
        return sk_action::SK_PASS;
    }
    // An enrolled pod's address without a listener: the daemon is down.
    // Fail closed rather than deliver around the mesh.
    // SAFETY: the map value is read by copy; the map holds plain data.
    if unsafe { ENROLLED_ADDRS.get(&key) }.is_some() {
        return sk_action::SK_DROP;
    }
    sk_action::SK_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path; this is never called.
    loop {}
}

/// The kernel requires a GPL-compatible license for the helpers used here.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
