//! Socket acceleration: the bytes of the hops inside a pod (the application
//! to the daemon's outbound listener, the daemon's delivery to the
//! application) move from the sending socket straight into the receiving
//! socket's queue, without loopback TCP.
//!
//! Both ends of such a connection join `ACCELERATED` when they become
//! established (`sock_ops`, [`join`]); the kernel takes each one out when it
//! closes. `sk_msg`, attached to the map, runs on every send of a member and
//! redirects the bytes into its peer's receive queue. Connection set-up,
//! FIN and RST still travel through TCP, after the bytes sent before them.
//!
//! Two rules keep the receiver's memory bounded and the byte order:
//! - a send is redirected only while the peer holds fewer than
//!   [`MAX_UNREAD`] unread bytes; beyond, it goes through TCP, whose receive
//!   window then slows the sender (the kernel does not bound redirected
//!   bytes by the receive buffer, it only accounts them);
//! - a send is redirected only once the peer has read every byte this
//!   socket sent through TCP (its `write_seq` equals the peer's
//!   `copied_seq`; redirected bytes move neither): the receiver reads its
//!   redirected queue first, so a redirected byte would otherwise overtake
//!   earlier TCP bytes. This covers a peer that joins late, too: the passive
//!   end joins when the handshake's last ACK arrives, which may be after the
//!   active end's first send.
//!
//! Both are checked at each send from the sockets' own state, so there is
//! no per-connection mode to keep (or lose).

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_F_INGRESS, BPF_SOCK_OPS_STATE_CB_FLAG, sk_action},
    helpers::{bpf_get_netns_cookie, bpf_probe_read_kernel, bpf_skc_to_tcp_sock},
    macros::{map, sk_msg},
    maps::{HashMap, PerCpuArray, SockHash},
    programs::{SkMsgContext, SockOpsContext},
};
use ztunnel_ebpf_common::{SockKey, accel_counter};

/// Sockets joined: two per accelerated connection, one per hop end.
const MAX_ACCELERATED: u32 = 131072;

/// The sockets whose sends are redirected to their peer, by their own key.
#[map(name = "ACCELERATED")]
static ACCELERATED: SockHash<SockKey> = SockHash::pinned(MAX_ACCELERATED, 0);

/// Kernel addresses of the members' sockets, by key, for reading a peer's
/// state at a send ([`probe`]): filed when a socket joins, removed when it
/// closes. (A socket map lookup would hand out a reference, which `sk_msg`
/// programs have no helper to release.)
#[map(name = "SOCKETS")]
static SOCKETS: HashMap<SockKey, u64> = HashMap::pinned(MAX_ACCELERATED, 0);

/// What acceleration did ([`accel_counter`]).
#[map(name = "ACCEL_COUNTERS")]
static ACCEL_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(accel_counter::COUNT, 0);

/// Unread bytes a member's peer may hold before the member's sends go
/// through TCP. About what TCP's autotuning lets a loopback receiver buffer.
const MAX_UNREAD: i32 = 4 << 20;

/// Offsets in the kernel's `struct tcp_sock` (which starts with `struct
/// sock`) of `sk_rmem_alloc`, `write_seq` and `copied_seq`: written by the
/// daemon at load time from the kernel's BTF (`/sys/kernel/btf/vmlinux`).
/// Read-only once loaded, so the verifier sees constants.
#[unsafe(no_mangle)]
static SOCK_RMEM_ALLOC_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static TCP_WRITE_SEQ_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static TCP_COPIED_SEQ_OFFSET: u32 = 0;

/// Adds `amount` to counter `index` of this CPU.
fn count(index: u32, amount: u64) {
    if let Some(counter) = ACCEL_COUNTERS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot, only this program run touches it now.
        unsafe { *counter += amount };
    }
}

/// Adds the socket of `ctx`, whose key is `key`, to `ACCELERATED`, and asks
/// for its close (`sock_ops` then calls [`leave`]).
pub fn join(ctx: &SockOpsContext, key: SockKey) {
    // SAFETY: the kernel-provided context, valid for the whole run. The
    // socket's address is kept as a number, only ever read through
    // `bpf_probe_read_kernel`.
    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk } as u64;
    // A full map leaves the connection on TCP, which is always correct.
    if sk == 0 || SOCKETS.insert(&key, &sk, 0).is_err() {
        count(accel_counter::SOCKETS_REFUSED, 1);
        return;
    }
    // SAFETY: the kernel-provided context, valid for the whole run.
    let ops = unsafe { &mut *ctx.ops };
    if ACCELERATED.update(key, ops, 0).is_err() {
        let _ = SOCKETS.remove(&key);
        count(accel_counter::SOCKETS_REFUSED, 1);
        return;
    }
    count(accel_counter::SOCKETS_JOINED, 1);
    let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
}

/// Forgets a closed socket (the kernel has taken it out of `ACCELERATED`).
pub fn leave(key: &SockKey) {
    if SOCKETS.remove(key).is_ok() {
        count(accel_counter::SOCKETS_LEFT, 1);
    }
}

/// `sk_msg`, attached to `ACCELERATED`: a member's send goes into its
/// peer's receive queue, or through TCP when the peer is not a member.
#[sk_msg]
pub fn ztunnel_sk_msg(ctx: SkMsgContext) -> u32 {
    let size = u64::from(ctx.size());
    let key = key_of(&ctx);
    let peer_key = key.peer();
    // SAFETY: the map value is read by copy; the map holds plain data.
    let Some(peer) = (unsafe { SOCKETS.get(&peer_key) }).copied() else {
        return through_tcp(size);
    };
    // SAFETY: the context's own socket, valid for the whole run.
    let own =
        unsafe { bpf_skc_to_tcp_sock((*ctx.msg).__bindgen_anon_3.sk as *mut c_void) } as *const u8;
    if own.is_null() {
        return through_tcp(size);
    }
    let room = peer_unread(peer).is_some_and(|unread| unread < MAX_UNREAD);
    let caught_up = peer_copied_seq(peer) == Some(own_write_seq(own));
    if room
        && caught_up
        && ACCELERATED.redirect_msg(&ctx, peer_key, u64::from(BPF_F_INGRESS))
            == i64::from(sk_action::SK_PASS)
    {
        count(accel_counter::BYTES_REDIRECTED, size);
        return sk_action::SK_PASS;
    }
    // No room, TCP bytes still unread, or the peer closed.
    through_tcp(size)
}

/// Lets this message go through TCP.
fn through_tcp(size: u64) -> u32 {
    count(accel_counter::BYTES_THROUGH_TCP, size);
    sk_action::SK_PASS
}

/// The `u32` at the load-time constant `offset` of the kernel socket at
/// address `sock`, read with `bpf_probe_read_kernel`: the address came from
/// `sock_ops` and the socket may have been freed since, which that helper
/// survives (it fails instead).
fn probe(sock: u64, offset: &u32) -> Option<u32> {
    // SAFETY: a read of the offset constant; the helper checks the kernel
    // address it reads 4 bytes at.
    unsafe {
        let offset = u64::from(core::ptr::read_volatile(offset));
        bpf_probe_read_kernel(sock.wrapping_add(offset) as *const u32).ok()
    }
}

/// Bytes queued at the peer socket and not read yet (redirected ones included).
fn peer_unread(peer: u64) -> Option<i32> {
    probe(peer, &SOCK_RMEM_ALLOC_OFFSET).map(|unread| unread as i32)
}

/// The peer's `copied_seq`: after the last TCP byte it read.
fn peer_copied_seq(peer: u64) -> Option<u32> {
    probe(peer, &TCP_COPIED_SEQ_OFFSET)
}

/// This socket's `write_seq`: after the last byte it wrote to TCP. Both
/// sequence numbers count in this socket's sequence space, and redirected
/// bytes move neither.
fn own_write_seq(own: *const u8) -> u32 {
    // SAFETY: the offset is a load-time constant from the kernel's BTF, so
    // the verifier checks this load against the socket's BTF type.
    unsafe {
        let offset = core::ptr::read_volatile(&TCP_WRITE_SEQ_OFFSET) as usize;
        core::ptr::read_volatile(own.add(offset) as *const u32)
    }
}

/// The key of the socket sending `ctx`'s message.
fn key_of(ctx: &SkMsgContext) -> SockKey {
    // SAFETY: the kernel-provided context, valid for the whole run.
    let md = unsafe { &*ctx.msg };
    // SAFETY: the helper accepts this program type's context (Linux 5.15+).
    let netns = unsafe { bpf_get_netns_cookie(ctx.msg as *mut c_void) };
    let family = md.family;
    let (local, remote) = if family == u32::from(ztunnel_ebpf_common::AF_INET) {
        ([md.local_ip4, 0, 0, 0], [md.remote_ip4, 0, 0, 0])
    } else {
        (
            ip6_words!(ctx.msg, local_ip6),
            ip6_words!(ctx.msg, remote_ip6),
        )
    };
    SockKey::new(
        netns,
        family,
        local,
        md.local_port,
        remote,
        // The network-order port sits in the upper 16 bits.
        u32::from_be(md.remote_port),
    )
}
