//! Loading the eBPF programs, attaching them at the cgroup v2 root, and the
//! typed handles of their maps.
//!
//! Maps and links are pinned in the daemon's pin directory on bpffs, so they
//! outlive the daemon: while it is down, enrolled pods fail closed. A new
//! daemon reuses the pinned maps (the enrolled pods stay enrolled across the
//! restart), attaches fresh programs, and then replaces the old pinned links,
//! so programs never pile up. [`uninstall`] removes every pin.

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::unix::fs::MetadataExt,
    path::PathBuf,
    sync::Mutex,
};

use std::{collections::BTreeSet, path::Path};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, SockHash},
    programs::{
        CgroupAttachMode, Program, SkLookup,
        links::{FdLink, PinnedLink},
    },
};

use super::{
    RedirectError,
    abi::{
        AF_INET, AF_INET6, DAEMON_ACCELERATE, DAEMON_PREVIOUS, DAEMON_THIS, Daemon, EnrolledPod,
        OrigDst, OrigDstKey, PodAddr, map_names, program_names,
    },
    acceleration::{self, AccelerationStats},
    netns::netns_cookie,
};

/// The embedded ELF object holding every ztunnel eBPF program and map.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ztunnel-ebpf.o"));

/// The loaded, attached programs and the `ENROLLED` map. Dropping it detaches
/// the programs.
pub struct Programs {
    /// Owns the programs and their links.
    ebpf: Ebpf,
    enrolled: HashMap<MapData, u64, EnrolledPod>,
    inbound: SockHash<MapData, PodAddr>,
    enrolled_addrs: HashMap<MapData, PodAddr, u64>,
    pin_dir: PathBuf,
    /// The connect hooks tell the daemon's sockets by their mark (the
    /// fallback for kernels before 6.10), not by the daemon's process.
    daemon_by_mark: bool,
}

/// The inbound listeners of one pod, by address family.
pub struct InboundListeners<'a> {
    /// Listener for IPv4 connections.
    pub v4: std::os::fd::BorrowedFd<'a>,
    /// Listener for IPv6 connections, if the pod has IPv6.
    pub v6: Option<std::os::fd::BorrowedFd<'a>>,
}

/// What [`Programs::attach`] hands over.
pub struct Attached {
    /// The programs, for enrolling and releasing pods.
    pub programs: Programs,
    /// Original destinations, for the outbound listeners.
    pub orig_dst: OrigDstTable,
    /// Pods (netns cookies) the pinned `ENROLLED` map already held.
    pub inherited: BTreeSet<u64>,
    /// Whether socket acceleration is on, and its counters.
    pub acceleration: AccelerationStats,
}

/// The `ORIG_DST` map, shared by every connection task.
pub struct OrigDstTable {
    // Removal needs `&mut`; each use is one syscall, so the lock is never held long.
    map: Mutex<HashMap<MapData, OrigDstKey, OrigDst>>,
}

impl Programs {
    /// Loads every program, attaches it at the cgroup v2 root (`cgroup_root`,
    /// or the first cgroup2 mount) and pins it (and the maps) under
    /// `pin_dir`, replacing what an earlier daemon left there. Also returns
    /// the pods (netns cookies) the pinned `ENROLLED` map already holds, for
    /// the caller to reconcile.
    ///
    /// `previous` is the daemon this one takes over from (see
    /// [`crate::redirect::handover`]): its sockets are recognised as a
    /// daemon's too until [`Programs::forget_previous_daemon`]. With
    /// `accelerate`, the hops inside pods move their bytes socket to socket
    /// where the kernel can ([`Attached::acceleration`] says whether it could).
    pub fn attach(
        pin_dir: &Path,
        cgroup_root: Option<&Path>,
        previous: Option<Daemon>,
        accelerate: bool,
    ) -> Result<Attached, RedirectError> {
        let io = |context: String| move |source| RedirectError::Io { context, source };
        mount_bpffs(pin_dir)?;
        std::fs::create_dir_all(pin_dir).map_err(io(format!("creating {}", pin_dir.display())))?;
        let root = match cgroup_root {
            Some(root) => root.to_owned(),
            None => cgroup2_root()?,
        };
        let cgroup = File::open(&root)
            .map_err(io(format!("opening the cgroup v2 root {}", root.display())))?;
        let prepared = acceleration::prepare(accelerate);
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(pin_dir);
        prepared.configure(&mut loader);
        let mut ebpf = loader
            .load(OBJECT)
            .map_err(|err| RedirectError::Load(err.to_string()))?;
        let acceleration = prepared.start(&mut ebpf);
        // Before any program runs: they tell the daemon's sockets by it.
        let mut daemon =
            this_daemon().map_err(io("finding this process's namespaces".to_owned()))?;
        if acceleration.is_on() {
            daemon.flags |= DAEMON_ACCELERATE;
        }
        let mut daemon_map: Array<&mut MapData, Daemon> = Array::try_from(
            ebpf.map_mut(map_names::DAEMON)
                .ok_or_else(|| missing_map(map_names::DAEMON))?,
        )
        .map_err(map_error(map_names::DAEMON))?;
        daemon_map
            .set(DAEMON_THIS, daemon, 0)
            .map_err(map_error(map_names::DAEMON))?;
        if let Some(previous) = previous {
            daemon_map
                .set(DAEMON_PREVIOUS, previous, 0)
                .map_err(map_error(map_names::DAEMON))?;
        }
        let mut daemon_by_mark = false;
        for name in program_names::ALL {
            let link = match attach_program(&mut ebpf, name, &cgroup) {
                Ok(link) => link,
                Err(refused) => {
                    daemon_by_mark = true;
                    attach_fallback(&mut ebpf, name, &cgroup, refused)?
                }
            };
            // Pinned under the program's own name whichever variant runs, so
            // the next daemon replaces it.
            replace_pin(link, &pin_dir.join(format!("link_{name}")), name)?;
        }
        sk_lookup(&mut ebpf)?
            .load()
            .map_err(|err| RedirectError::Attach {
                program: program_names::SK_LOOKUP,
                message: err.to_string(),
            })?;
        let inbound = SockHash::try_from(
            ebpf.take_map(map_names::INBOUND)
                .ok_or_else(|| missing_map(map_names::INBOUND))?,
        )
        .map_err(|err| RedirectError::Map(format!("{}: {err}", map_names::INBOUND)))?;
        let enrolled_addrs = take_map(&mut ebpf, map_names::ENROLLED_ADDRS)?;
        let enrolled: HashMap<MapData, u64, EnrolledPod> =
            take_map(&mut ebpf, map_names::ENROLLED)?;
        let previously_enrolled = enrolled.keys().filter_map(Result::ok).collect();
        let orig_dst = take_map(&mut ebpf, map_names::ORIG_DST)?;
        let counters = PerCpuArray::try_from(
            ebpf.take_map(map_names::ACCEL_COUNTERS)
                .ok_or_else(|| missing_map(map_names::ACCEL_COUNTERS))?,
        )
        .map_err(map_error(map_names::ACCEL_COUNTERS))?;
        tracing::info!(
            cgroup = %root.display(),
            pins = %pin_dir.display(),
            programs = program_names::ALL.len(),
            socket_acceleration = acceleration.is_on(),
            "eBPF programs attached"
        );
        Ok(Attached {
            programs: Self {
                ebpf,
                enrolled,
                inbound,
                enrolled_addrs,
                pin_dir: pin_dir.to_owned(),
                daemon_by_mark,
            },
            orig_dst: OrigDstTable {
                map: Mutex::new(orig_dst),
            },
            inherited: previously_enrolled,
            acceleration: AccelerationStats::new(acceleration, counters),
        })
    }

    /// Stops recognising the previous daemon's sockets (it has exited: its
    /// process id may be reused).
    pub fn forget_previous_daemon(&mut self) -> Result<(), RedirectError> {
        let mut daemon_map: Array<&mut MapData, Daemon> = Array::try_from(
            self.ebpf
                .map_mut(map_names::DAEMON)
                .ok_or_else(|| missing_map(map_names::DAEMON))?,
        )
        .map_err(map_error(map_names::DAEMON))?;
        daemon_map
            .set(DAEMON_PREVIOUS, Daemon::default(), 0)
            .map_err(map_error(map_names::DAEMON))
    }

    /// Whether the connect hooks tell the daemon's own sockets by their mark
    /// (kernels before 6.10), which a pod with `CAP_NET_ADMIN` can set too.
    pub fn daemon_by_mark(&self) -> bool {
        self.daemon_by_mark
    }

    /// Steers the TCP connections of the pod whose netns cookie is `cookie`.
    pub fn enrol(&mut self, cookie: u64, pod: EnrolledPod) -> Result<(), RedirectError> {
        self.enrolled
            .insert(cookie, pod, 0)
            .map_err(|err| RedirectError::Map(err.to_string()))
    }

    /// Hands TCP arriving at `addresses` inside the namespace `netns` of the
    /// pod with netns cookie `cookie` to `listeners` (one per address family):
    /// attaches `sk_lookup` there, pinned, replacing a link an earlier daemon
    /// pinned for the same pod.
    pub fn steer_inbound(
        &mut self,
        cookie: u64,
        netns: &File,
        addresses: &[IpAddr],
        listeners: &InboundListeners<'_>,
    ) -> Result<(), RedirectError> {
        for address in addresses {
            let (key, fd) = match address {
                IpAddr::V4(ip) => (
                    PodAddr {
                        addr: [u32::from(*ip).to_be(), 0, 0, 0],
                        family: u32::from(AF_INET),
                    },
                    listeners.v4,
                ),
                IpAddr::V6(ip) => {
                    let Some(fd) = listeners.v6 else { continue };
                    let key = PodAddr {
                        addr: ipv6_words(*ip),
                        family: u32::from(AF_INET6),
                    };
                    (key, fd)
                }
            };
            self.inbound
                .insert(key, fd, 0)
                .map_err(map_error(map_names::INBOUND))?;
            self.enrolled_addrs
                .insert(key, cookie, 0)
                .map_err(map_error(map_names::ENROLLED_ADDRS))?;
        }
        let program = sk_lookup(&mut self.ebpf)?;
        let failed = |message: String| RedirectError::Attach {
            program: program_names::SK_LOOKUP,
            message,
        };
        let id = program
            .attach(netns)
            .map_err(|err| failed(err.to_string()))?;
        let link = FdLink::from(
            program
                .take_link(id)
                .map_err(|err| failed(err.to_string()))?,
        );
        replace_pin(link, &self.sk_lookup_pin(cookie), program_names::SK_LOOKUP)
    }

    /// Stops steering TCP arriving at the pod with netns cookie `cookie` (see
    /// [`Programs::steer_inbound`]).
    pub fn stop_inbound(&mut self, cookie: u64) -> Result<(), RedirectError> {
        let addresses: Vec<PodAddr> = self
            .enrolled_addrs
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, owner)| *owner == cookie)
            .map(|(address, _)| address)
            .collect();
        for address in addresses {
            let _ = self.enrolled_addrs.remove(&address);
        }
        // Unlinking the pin releases the link: `sk_lookup` leaves the pod.
        // (The listeners leave the socket map by themselves when they close.)
        let pin = self.sk_lookup_pin(cookie);
        match std::fs::remove_file(&pin) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(RedirectError::Io {
                context: format!("removing {}", pin.display()),
                source,
            }),
        }
    }

    fn sk_lookup_pin(&self, cookie: u64) -> PathBuf {
        self.pin_dir
            .join(format!("link_{}_{cookie}", program_names::SK_LOOKUP))
    }

    /// Stops steering the pod whose netns cookie is `cookie`.
    pub fn unenrol(&mut self, cookie: u64) -> Result<(), RedirectError> {
        match self.enrolled.remove(&cookie) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(err) => Err(RedirectError::Map(err.to_string())),
        }
    }
}

impl OrigDstTable {
    /// The original destination of the connection from `port` in the pod
    /// with netns cookie `cookie`, removed from the table as it is read.
    pub fn take(&self, cookie: u64, port: u16) -> Option<SocketAddr> {
        let key = OrigDstKey::new(cookie, port);
        let mut map = self
            .map
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let orig = map.get(&key, 0).ok()?;
        let _ = map.remove(&key);
        Some(to_socket_addr(&orig))
    }
}

/// The error of a map missing from the embedded object.
pub(super) fn missing_map(name: &str) -> RedirectError {
    RedirectError::Load(format!("map {name} missing from the object"))
}

/// Names the map in a map error.
pub(super) fn map_error(name: &'static str) -> impl Fn(aya::maps::MapError) -> RedirectError {
    move |err| RedirectError::Map(format!("{name}: {err}"))
}

/// Who this process is, as the programs recognise it: its process id in its
/// own pid namespace (`bpf_get_ns_current_pid_tgid` compares the namespace's
/// device in the kernel's `major << 20 | minor` encoding), and the network
/// namespace it runs in, the node's.
pub fn this_daemon() -> std::io::Result<Daemon> {
    let pidns = std::fs::metadata("/proc/self/ns/pid")?;
    let dev = pidns.dev();
    let probe = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    Ok(Daemon {
        pidns_dev: (u64::from(libc::major(dev)) << 20) | u64::from(libc::minor(dev)),
        pidns_ino: pidns.ino(),
        node_netns: netns_cookie(&probe)?,
        tgid: std::process::id(),
        flags: 0,
    })
}

/// The address an [`OrigDst`] record names; IPv4-mapped IPv6 becomes IPv4.
pub fn to_socket_addr(orig: &OrigDst) -> SocketAddr {
    let port = u16::from_be(orig.port);
    let ip = if orig.family == AF_INET {
        IpAddr::V4(Ipv4Addr::from(u32::from_be(orig.addr[0])))
    } else {
        let mut octets = [0u8; 16];
        for (chunk, word) in octets.chunks_mut(4).zip(orig.addr) {
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        let v6 = Ipv6Addr::from(octets);
        v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
    };
    SocketAddr::new(ip, port)
}

/// Loads program `name` and attaches it at `cgroup`; returns its link.
fn attach_program(
    ebpf: &mut Ebpf,
    name: &'static str,
    cgroup: &File,
) -> Result<FdLink, RedirectError> {
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| RedirectError::Load(format!("program {name} missing from the object")))?;
    let failed = |message: String| RedirectError::Attach {
        program: name,
        message,
    };
    match program {
        Program::CgroupSockAddr(program) => {
            program.load().map_err(|err| failed(err.to_string()))?;
            let id = program
                .attach(cgroup, CgroupAttachMode::Single)
                .map_err(|err| failed(err.to_string()))?;
            let link = program
                .take_link(id)
                .map_err(|err| failed(err.to_string()))?;
            FdLink::try_from(link).map_err(|err| failed(err.to_string()))
        }
        Program::SockOps(program) => {
            program.load().map_err(|err| failed(err.to_string()))?;
            let id = program
                .attach(cgroup, CgroupAttachMode::Single)
                .map_err(|err| failed(err.to_string()))?;
            let link = program
                .take_link(id)
                .map_err(|err| failed(err.to_string()))?;
            FdLink::try_from(link).map_err(|err| failed(err.to_string()))
        }
        _ => Err(RedirectError::Load(format!(
            "program {name} has an unexpected type"
        ))),
    }
}

/// Attaches the fallback of program `name` after the kernel `refused` it, and
/// says why; without a fallback, `refused` is the error.
fn attach_fallback(
    ebpf: &mut Ebpf,
    name: &'static str,
    cgroup: &File,
    refused: RedirectError,
) -> Result<FdLink, RedirectError> {
    let Some(&(_, fallback)) = program_names::FALLBACKS
        .iter()
        .find(|(program, _)| *program == name)
    else {
        return Err(refused);
    };
    let link = attach_program(ebpf, fallback, cgroup)?;
    tracing::warn!(
        program = name,
        "this kernel cannot tell the daemon's own connections by process in the connect hook \
         (Linux 6.10 or later can): using {fallback}, which tells them by their socket mark, so a \
         pod with CAP_NET_ADMIN could set the mark and skip capture ({refused})"
    );
    Ok(link)
}

/// Detaches every program and removes every map pinned under `pin_dir`:
/// pods return to plain networking. Run it with the daemon stopped.
pub fn uninstall(pin_dir: &Path) -> Result<(), RedirectError> {
    match std::fs::remove_dir_all(pin_dir) {
        // Unlinking a link's pin releases the link, which detaches its program.
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(RedirectError::Io {
            context: format!("removing {}", pin_dir.display()),
            source,
        }),
    }
}

/// Mounts bpffs at `/sys/fs/bpf` when `pin_dir` lies under it and nothing is
/// mounted there yet (some hosts do not mount it at boot).
fn mount_bpffs(pin_dir: &Path) -> Result<(), RedirectError> {
    const BPFFS: &str = "/sys/fs/bpf";
    if !pin_dir.starts_with(BPFFS) {
        return Ok(());
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if mounts
        .lines()
        .any(|line| line.split_whitespace().nth(1) == Some(BPFFS) && line.contains(" bpf "))
    {
        return Ok(());
    }
    let status = std::process::Command::new("mount")
        .args(["-t", "bpf", "bpf", BPFFS])
        .status()
        .map_err(|source| RedirectError::Io {
            context: format!("mounting bpffs at {BPFFS}"),
            source,
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(RedirectError::Load(format!(
            "mounting bpffs at {BPFFS} failed ({status})"
        )))
    }
}

/// Pins `link` at `pin`, releasing the link an earlier daemon pinned there.
/// The new link is attached before the old one goes, so there is no gap
/// (both running briefly is harmless: they share the maps).
fn replace_pin(link: FdLink, pin: &Path, program: &'static str) -> Result<(), RedirectError> {
    if pin.exists() {
        match PinnedLink::from_pin(pin) {
            Ok(old) => drop(old.unpin()),
            Err(_) => std::fs::remove_file(pin).map_err(|source| RedirectError::Io {
                context: format!("removing {}", pin.display()),
                source,
            })?,
        }
    }
    link.pin(pin)
        .map(drop)
        .map_err(|err| RedirectError::Attach {
            program,
            message: format!("pinning the link at {}: {err}", pin.display()),
        })
}

/// The `sk_lookup` program of `ebpf`.
fn sk_lookup(ebpf: &mut Ebpf) -> Result<&mut SkLookup, RedirectError> {
    let missing = || RedirectError::Load(format!("program {} missing", program_names::SK_LOOKUP));
    ebpf.program_mut(program_names::SK_LOOKUP)
        .ok_or_else(missing)?
        .try_into()
        .map_err(|_| missing())
}

/// An IPv6 address as the kernel's four network-order words (`user_ip6`, `local_ip6`).
fn ipv6_words(ip: Ipv6Addr) -> [u32; 4] {
    let o = ip.octets();
    [0, 4, 8, 12].map(|i| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]))
}

fn take_map<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &str,
) -> Result<HashMap<MapData, K, V>, RedirectError> {
    let map = ebpf.take_map(name).ok_or_else(|| missing_map(name))?;
    HashMap::try_from(map).map_err(|err| RedirectError::Map(format!("{name}: {err}")))
}

/// The cgroup v2 mount point (`/sys/fs/cgroup` on pure v2 hosts, often
/// `/sys/fs/cgroup/unified` on hybrid ones), read from /proc/mounts.
fn cgroup2_root() -> Result<PathBuf, RedirectError> {
    let mounts = std::fs::read_to_string("/proc/mounts").map_err(|source| RedirectError::Io {
        context: "reading /proc/mounts".to_owned(),
        source,
    })?;
    mounts
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|fields| fields.get(2) == Some(&"cgroup2"))
        .and_then(|fields| fields.get(1).map(PathBuf::from))
        .ok_or(RedirectError::NoCgroup2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redirect::abi::AF_INET6;

    #[test]
    fn embedded_object_holds_the_programs_and_maps_userspace_expects() {
        let object =
            aya_obj::Object::parse(OBJECT).expect("the embedded object is a valid eBPF ELF");
        let fallbacks = program_names::FALLBACKS.map(|(_, fallback)| fallback);
        let attached_elsewhere = [program_names::SK_LOOKUP, program_names::SK_MSG];
        for name in program_names::ALL
            .into_iter()
            .chain(fallbacks)
            .chain(attached_elsewhere)
        {
            assert!(object.programs.contains_key(name), "program {name} missing");
        }
        for name in [
            map_names::ENROLLED,
            map_names::CONNECTING,
            map_names::ORIG_DST,
            map_names::INBOUND,
            map_names::ENROLLED_ADDRS,
            map_names::DELIVERING,
            map_names::DAEMON,
            map_names::ACCELERATED,
            map_names::SOCKETS,
            map_names::ACCEL_COUNTERS,
        ] {
            assert!(object.maps.contains_key(name), "map {name} missing");
        }
    }

    #[test]
    fn the_fallback_connect_hooks_call_no_helper_older_kernels_lack() {
        // `bpf_get_ns_current_pid_tgid` (helper 120) is what kernels before
        // 6.10 refuse in these hooks: the fallbacks must not call it, even in
        // code that never runs (the verifier checks every call).
        const BPF_CALL: u8 = 0x85;
        const GET_NS_CURRENT_PID_TGID: i32 = 120;
        let object =
            aya_obj::Object::parse(OBJECT).expect("the embedded object is a valid eBPF ELF");
        let calls = |name: &str| {
            let function = object
                .functions
                .values()
                .find(|function| function.name == name)
                .unwrap_or_else(|| panic!("{name} is in the object"));
            function
                .instructions
                .iter()
                .filter(|insn| insn.code == BPF_CALL && insn.imm == GET_NS_CURRENT_PID_TGID)
                .count()
        };
        for (program, fallback) in program_names::FALLBACKS {
            assert!(
                calls(program) > 0,
                "{program} tells the daemon by its process"
            );
            assert_eq!(calls(fallback), 0, "{fallback}");
        }
    }

    #[test]
    fn orig_dst_records_decode_to_the_addresses_the_application_used() {
        let v4 = OrigDst {
            addr: [u32::from(Ipv4Addr::new(10, 244, 2, 2)).to_be(), 0, 0, 0],
            port: 8080u16.to_be(),
            family: AF_INET,
            _pad: [0; 4],
        };
        assert_eq!(to_socket_addr(&v4), "10.244.2.2:8080".parse().unwrap());
        let v6 = OrigDst {
            addr: ipv6_words("fd00:10:244:2::2".parse().unwrap()),
            port: 443u16.to_be(),
            family: AF_INET6,
            _pad: [0; 4],
        };
        assert_eq!(
            to_socket_addr(&v6),
            "[fd00:10:244:2::2]:443".parse().unwrap()
        );
        let mapped = OrigDst {
            addr: ipv6_words("::ffff:10.244.2.2".parse().unwrap()),
            ..v6
        };
        assert_eq!(to_socket_addr(&mapped), "10.244.2.2:443".parse().unwrap());
    }
}
