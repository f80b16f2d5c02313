//! ztunnel's in-kernel programs.
//!
//! They are attached once per node daemon at the cgroup v2 root, so they run
//! for every socket on the machine. Each one therefore starts with the same
//! gate: act only when the socket lives in the network namespace of a pod that
//! this daemon enrolled (its netns cookie is a key of `ENROLLED`); for every
//! other socket, return "allow" untouched.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::bpf_get_netns_cookie,
    macros::{cgroup_sock_addr, map},
    maps::HashMap,
    programs::SockAddrContext,
};
use ztunnel_ebpf_common::EnrolledPod;

/// Verdict that lets the syscall proceed (cgroup programs return 1 to allow).
const ALLOW: i32 = 1;
/// Upper bound of pods one node daemon can enrol.
const MAX_ENROLLED_PODS: u32 = 4096;
/// `IPPROTO_TCP`: only TCP is steered; UDP (DNS) passes untouched.
const IPPROTO_TCP: u32 = 6;
/// 127.0.0.0/8, in host byte order, masked.
const LOOPBACK_NET: u32 = 0x7f00_0000;
/// 127.0.0.1 in host byte order.
const LOOPBACK_ADDR: u32 = 0x7f00_0001;

/// Enrolled pods of this node, keyed by netns cookie; filled by the daemon.
#[map(name = "ENROLLED")]
static ENROLLED: HashMap<u64, EnrolledPod> = HashMap::with_max_entries(MAX_ENROLLED_PODS, 0);

/// `cgroup/connect4`: an enrolled pod's IPv4 TCP connect goes to the daemon's
/// outbound listener on the pod's own loopback.
#[cgroup_sock_addr(connect4)]
pub fn ztunnel_connect4(ctx: SockAddrContext) -> i32 {
    // SAFETY: `ctx.sock_addr` is the kernel-provided `bpf_sock_addr` context
    // pointer, valid for the whole program run.
    let sock_addr = unsafe { &mut *ctx.sock_addr };
    if sock_addr.protocol != IPPROTO_TCP {
        return ALLOW;
    }
    // SAFETY: the helper accepts the `bpf_sock_addr` context of this program type.
    let cookie = unsafe { bpf_get_netns_cookie(ctx.sock_addr as *mut _) };
    // SAFETY: the map value is read by copy; the map holds plain data.
    let Some(pod) = (unsafe { ENROLLED.get(&cookie) }).copied() else {
        return ALLOW;
    };
    // Connections to the pod's own loopback (including the daemon's listener) stay local.
    if u32::from_be(sock_addr.user_ip4) & 0xff00_0000 == LOOPBACK_NET {
        return ALLOW;
    }
    sock_addr.user_ip4 = LOOPBACK_ADDR.to_be();
    // `user_port` holds the port in network byte order in its low 16 bits.
    sock_addr.user_port = u32::from(pod.outbound_port.to_be());
    ALLOW
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
