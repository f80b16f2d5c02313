//! ztunnel's in-kernel programs.
//!
//! They are attached once per node daemon at the cgroup v2 root, so they run
//! for every socket on the machine. Each one therefore starts with the same
//! gate: act only for a TCP socket in the network namespace of a pod that this
//! daemon enrolled (its netns cookie is a key of `ENROLLED`), never for the
//! daemon's own sockets (recognised by the calling process, see [`Daemon`]:
//! a mark can be set by any pod with `CAP_NET_ADMIN`); for every other
//! socket, return "allow" untouched.
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
//! `sock_ops` also files, for `sk_lookup`, the connections that must reach an
//! enrolled pod's application directly (`DELIVERING`, for as long as they
//! live): the daemon's own deliveries, and connections from the node's
//! network namespace (the kubelet's probes, as Istio's ambient mode exempts
//! them).
//!
//! The maps are pinned by name (and the daemon pins the links), so the
//! programs and the set of enrolled pods outlive the daemon: while it is down,
//! enrolled pods' connects are still steered to its (absent) listener and are
//! refused, never sent around the mesh.
#![no_std]
#![no_main]

/// The four words of the IPv6 address field `$field` of the context that
/// `$ctx` (a raw pointer) points to, read one word per load: the verifier
/// refuses context loads through a pointer derived from the context, which
/// a copy of the whole array may compile to. Expands to an `unsafe` read of
/// context fields at constant offsets.
macro_rules! ip6_words {
    ($ctx:expr, $field:ident) => {
        // SAFETY: reads of the kernel-provided context's fields at constant offsets.
        unsafe {
            [
                core::ptr::read_volatile(core::ptr::addr_of!((*$ctx).$field[0])),
                core::ptr::read_volatile(core::ptr::addr_of!((*$ctx).$field[1])),
                core::ptr::read_volatile(core::ptr::addr_of!((*$ctx).$field[2])),
                core::ptr::read_volatile(core::ptr::addr_of!((*$ctx).$field[3])),
            ]
        }
    };
}

mod accelerate;

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB,
        BPF_TCP_CLOSE, bpf_pidns_info, bpf_sock_addr, sk_action,
    },
    helpers::{bpf_get_netns_cookie, bpf_get_ns_current_pid_tgid, bpf_get_socket_cookie},
    macros::{cgroup_sock_addr, map, sk_lookup, sock_ops},
    maps::{Array, HashMap, LruHashMap, SockHash},
    programs::{SkLookupContext, SockAddrContext, SockOpsContext},
};
use ztunnel_ebpf_common::{
    AF_INET, AF_INET6, DAEMON_ACCELERATE, DAEMON_MARK, DAEMON_PREVIOUS, DAEMON_SLOTS, DAEMON_THIS,
    DELIVER_MARK, Daemon, DeliveryKey, EnrolledPod, INBOUND_MTLS_PORT, INBOUND_PLAINTEXT_PORT,
    OUTBOUND_PORT, OrigDst, OrigDstKey, PodAddr, SockKey, UNCAPTURED_DELIVERY, UNCAPTURED_NODE,
    is_v4_mapped,
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

/// Connections `sk_lookup` leaves alone (the daemon's deliveries, the node's
/// connections), filed by `sock_ops` while they live.
#[map(name = "DELIVERING")]
static DELIVERING: LruHashMap<DeliveryKey, u8> = LruHashMap::pinned(MAX_CONNECTING, 0);

/// Who the daemons are: slot [`DAEMON_THIS`] the one that loaded these
/// programs, slot [`DAEMON_PREVIOUS`] the one it took over from while that
/// one drains (written by the loader; 0 when there is none).
#[map(name = "DAEMON")]
static DAEMON: Array<Daemon> = Array::with_max_entries(DAEMON_SLOTS, 0);

/// The daemon in `slot`, once it has been written.
fn daemon_in(slot: u32) -> Option<Daemon> {
    DAEMON.get(slot).copied().filter(|daemon| daemon.tgid != 0)
}

/// The daemon that loaded these programs, once it has said who it is.
fn daemon() -> Option<Daemon> {
    daemon_in(DAEMON_THIS)
}

/// Whether the current task is one of the daemons' processes.
fn called_by_a_daemon() -> bool {
    daemon().is_some_and(|daemon| called_by(&daemon))
        || daemon_in(DAEMON_PREVIOUS).is_some_and(|daemon| called_by(&daemon))
}

/// Whether the current task belongs to the node daemon's process (called
/// from `connect()`, in the caller's context).
fn called_by(daemon: &Daemon) -> bool {
    let mut current = bpf_pidns_info { pid: 0, tgid: 0 };
    // SAFETY: `current` is a valid, writable `bpf_pidns_info` of the size given.
    let found = unsafe {
        bpf_get_ns_current_pid_tgid(
            daemon.pidns_dev,
            daemon.pidns_ino,
            &mut current,
            core::mem::size_of::<bpf_pidns_info>() as u32,
        )
    };
    // A task outside the daemon's pid namespace gets an error, never a match.
    found == 0 && current.tgid == daemon.tgid
}

/// How the connect hooks recognise the daemon's own sockets.
#[derive(Clone, Copy)]
enum DaemonBy {
    /// By the calling process ([`called_by`]): a pod cannot pass for it.
    /// Needs `bpf_get_ns_current_pid_tgid` in these hooks (Linux 6.10+).
    Process,
    /// By the socket's mark, for older kernels: a pod with `CAP_NET_ADMIN`
    /// can set the mark and skip capture (the daemon warns at load).
    Mark,
}

/// The enrolled pod a TCP socket of an application belongs to, if any.
#[inline(always)]
fn enrolled_app_socket(ctx: &SockAddrContext, by: DaemonBy) -> Option<EnrolledPod> {
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
    // The daemon's own connections from inside the pod (tunnels, passthrough,
    // deliveries) are never captured again.
    let daemons = match by {
        DaemonBy::Process => called_by_a_daemon(),
        // SAFETY: `sk` comes from the context; the verifier checks the field read.
        DaemonBy::Mark => {
            !sk.is_null() && matches!(unsafe { (*sk).mark }, DAEMON_MARK | DELIVER_MARK)
        }
    };
    if daemons {
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
    connect4(&ctx, DaemonBy::Process)
}

/// `cgroup/connect4` for kernels before 6.10 (see [`DaemonBy::Mark`]).
#[cgroup_sock_addr(connect4)]
pub fn ztunnel_connect4_by_mark(ctx: SockAddrContext) -> i32 {
    connect4(&ctx, DaemonBy::Mark)
}

#[inline(always)]
fn connect4(ctx: &SockAddrContext, by: DaemonBy) -> i32 {
    let Some(pod) = enrolled_app_socket(ctx, by) else {
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
    if !record(ctx, &orig) {
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
    connect6(&ctx, DaemonBy::Process)
}

/// `cgroup/connect6` for kernels before 6.10 (see [`DaemonBy::Mark`]).
#[cgroup_sock_addr(connect6)]
pub fn ztunnel_connect6_by_mark(ctx: SockAddrContext) -> i32 {
    connect6(&ctx, DaemonBy::Mark)
}

#[inline(always)]
fn connect6(ctx: &SockAddrContext, by: DaemonBy) -> i32 {
    let Some(pod) = enrolled_app_socket(ctx, by) else {
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
    if !record(ctx, &orig) {
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

/// `sockops`, at `TCP_CONNECT_CB` (the client port is known, the SYN has not
/// left): files a redirected socket's original destination where the daemon
/// will look for it, or files a connection `sk_lookup` must leave alone. At
/// `STATE_CB` (asked for only by the latter): forgets it once it closes. At
/// `ACTIVE_ESTABLISHED_CB` and `PASSIVE_ESTABLISHED_CB`: a socket of a hop
/// inside a pod joins socket acceleration ([`accelerate`]).
#[sock_ops]
pub fn ztunnel_sock_ops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => on_connect(&ctx),
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => on_established(&ctx, true),
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => on_established(&ctx, false),
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == BPF_TCP_CLOSE => {
            // Asked for by sockets filed in `DELIVERING` or accelerated.
            if let Some(key) = arrival_key(&ctx) {
                let _ = DELIVERING.remove(&key);
            }
            accelerate::leave(&sock_key(&ctx));
        }
        _ => {}
    }
    0
}

fn on_connect(ctx: &SockOpsContext) {
    // SAFETY: the helper accepts this program type's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops as *mut c_void) };
    // SAFETY: the helper accepts this program type's context.
    let netns = unsafe { bpf_get_netns_cookie(ctx.ops as *mut c_void) };
    // SAFETY: the map value is copied out; the map holds plain data.
    if let Some(orig) = (unsafe { CONNECTING.get(&cookie) }).copied() {
        let key = OrigDstKey::new(netns, ctx.local_port() as u16);
        // A failed insert leaves the daemon without a destination: it then
        // closes the connection (fail closed) rather than guess.
        let _ = ORIG_DST.insert(&key, &orig, 0);
        return;
    }
    let Some(key) = arrival_key(ctx) else {
        return;
    };
    let pod = PodAddr {
        addr: key.local,
        family: key.family,
    };
    // SAFETY: the map value is read by copy; the map holds plain data.
    let Some(owner) = (unsafe { ENROLLED_ADDRS.get(&pod) }).copied() else {
        // Not to an enrolled pod of this node: nothing for `sk_lookup`.
        return;
    };
    let kind = if daemon().is_some_and(|daemon| netns == daemon.node_netns) {
        // The node's own connection (a kubelet probe) to one of this node's
        // enrolled pods: the application answers it directly.
        UNCAPTURED_NODE
    } else if netns == owner && socket_mark(ctx) == Some(DELIVER_MARK) {
        // The daemon delivering inside the pod. Made in the pod's own
        // namespace: another pod cannot file a connection to this one, and
        // what the pod files for itself only reaches itself.
        UNCAPTURED_DELIVERY
    } else {
        return;
    };
    // Without the entry `sk_lookup` would take the connection for one from
    // outside: a delivery would loop, a probe would meet the pod's policy.
    if DELIVERING.insert(&key, &kind, 0).is_ok() {
        let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
    }
}

/// A socket just established joins socket acceleration when the daemon asks
/// for it and the socket is one end of a hop inside a pod: an application's
/// connection steered to the daemon (`active`) or the daemon's socket that
/// accepted it, the daemon's delivery to an application (`active`) or the
/// application's socket that accepted it.
fn on_established(ctx: &SockOpsContext, active: bool) {
    if !daemon().is_some_and(|daemon| daemon.flags & DAEMON_ACCELERATE != 0) {
        return;
    }
    let key = sock_key(ctx);
    let netns = key.netns;
    let delivery = |key: Option<DeliveryKey>| {
        // SAFETY: the map value is read by copy; the map holds plain data.
        key.is_some_and(|key| unsafe { DELIVERING.get(&key) } == Some(&UNCAPTURED_DELIVERY))
    };
    let hop = if active {
        // SAFETY: the helper accepts this program type's context.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.ops as *mut c_void) };
        // SAFETY: the map value is read by copy; the map holds plain data.
        (unsafe { CONNECTING.get(&cookie) }).is_some() || delivery(arrival_key(ctx))
    } else {
        // SAFETY: the map value is read by copy; the map holds plain data.
        (key.is_outbound_listener_end() && unsafe { ENROLLED.get(&netns) }.is_some())
            || delivery(Some(DeliveryKey {
                remote: key.remote,
                local: key.local,
                remote_port: key.remote_port,
                local_port: key.local_port,
                family: key.family,
            }))
    };
    if hop {
        accelerate::join(ctx, key);
    }
}

/// The key of the socket of `ctx` in socket acceleration's maps.
fn sock_key(ctx: &SockOpsContext) -> SockKey {
    // SAFETY: the helper accepts this program type's context.
    let netns = unsafe { bpf_get_netns_cookie(ctx.ops as *mut c_void) };
    let (local, remote) = addresses(ctx);
    SockKey::new(
        netns,
        ctx.family(),
        local,
        ctx.local_port(),
        remote,
        // `remote_port` holds the network-order port in its upper 16 bits.
        u32::from_be(ctx.remote_port()),
    )
}

/// The local and remote addresses of the socket of `ctx`, in network byte
/// order (IPv4 in the first word).
fn addresses(ctx: &SockOpsContext) -> ([u32; 4], [u32; 4]) {
    let ops = ctx.ops;
    if ctx.family() == u32::from(AF_INET) {
        return ([ctx.local_ip4(), 0, 0, 0], [ctx.remote_ip4(), 0, 0, 0]);
    }
    (ip6_words!(ops, local_ip6), ip6_words!(ops, remote_ip6))
}

/// The mark of the socket `ctx` is about.
fn socket_mark(ctx: &SockOpsContext) -> Option<u32> {
    // SAFETY: the kernel-provided context; `sk` is checked for null before use.
    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk };
    if sk.is_null() {
        return None;
    }
    // SAFETY: a non-null `sk` of this context is a full socket the verifier lets us read.
    Some(unsafe { (*sk).mark })
}

/// The key under which `sk_lookup` will see the connection of `ctx` arrive:
/// its own addresses swapped (this socket's local end is the remote one
/// there). IPv4-mapped addresses of an IPv6 socket arrive as IPv4.
fn arrival_key(ctx: &SockOpsContext) -> Option<DeliveryKey> {
    let (remote, local, family) = if ctx.family() == u32::from(AF_INET) {
        (
            [ctx.local_ip4(), 0, 0, 0],
            [ctx.remote_ip4(), 0, 0, 0],
            AF_INET,
        )
    } else if ctx.family() == u32::from(AF_INET6) {
        let (remote, local) = addresses(ctx);
        if is_v4_mapped(&local) {
            ([remote[3], 0, 0, 0], [local[3], 0, 0, 0], AF_INET)
        } else {
            (remote, local, AF_INET6)
        }
    } else {
        return None;
    };
    Some(DeliveryKey {
        remote,
        local,
        remote_port: ctx.local_port(),
        // `remote_port` holds the network-order port in its upper 16 bits.
        local_port: u32::from_be(ctx.remote_port()),
        family: u32::from(family),
    })
}

/// `sk_lookup`, attached to an enrolled pod's network namespace: a TCP
/// connection arriving at the pod's address is handed to the daemon's inbound
/// listener in the pod, which delivers it to the application. While the
/// daemon is down (its listener gone) such connections are dropped.
///
/// Left alone: connections to the daemon's own ports, connections made inside
/// the pod (from its own address or loopback), and those `sock_ops` filed in
/// `DELIVERING`: the daemon's deliveries to the application from the original
/// client's address, and connections from the node (kubelet probes).
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
    let (remote, local) = if lookup.family == u32::from(AF_INET) {
        ([lookup.remote_ip4, 0, 0, 0], [lookup.local_ip4, 0, 0, 0])
    } else {
        (
            ip6_words!(ctx.lookup, remote_ip6),
            ip6_words!(ctx.lookup, local_ip6),
        )
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
    // The daemon delivering to the application from the client's address, or
    // the node probing the application.
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
