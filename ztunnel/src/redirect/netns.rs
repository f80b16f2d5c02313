//! Pod network namespaces: entering one briefly to create sockets there.
//!
//! A socket belongs to the network namespace it was created in, for life, so
//! the daemon creates its in-pod listeners and its upstream sockets by
//! entering the pod's namespace on the current thread (`setns`), making the
//! socket, and returning at once. This module holds the project's only
//! `setns` and `getsockopt` calls.
#![allow(unsafe_code)]

use std::{
    fs::File,
    io,
    net::IpAddr,
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
};

/// `SO_NETNS_COOKIE` (Linux 5.14+): the kernel's unique id of a socket's netns.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// A pod's network namespace, held open so it cannot disappear under us.
#[derive(Debug)]
pub struct PodNetns {
    file: File,
    path: PathBuf,
    cookie: u64,
}

impl PodNetns {
    /// Opens the namespace at `path` (for example `/run/netns/<name>`).
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        let cookie = in_netns(&file, || {
            let probe = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            netns_cookie(&probe)
        })??;
        Ok(Self {
            file,
            path: path.to_owned(),
            cookie,
        })
    }

    /// The namespace's cookie, the key the eBPF programs know the pod by.
    pub fn cookie(&self) -> u64 {
        self.cookie
    }

    /// The open namespace file (what `sk_lookup` attaches to).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Where the namespace was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The IP addresses of every interface inside this namespace.
    pub fn addresses(&self) -> io::Result<Vec<IpAddr>> {
        self.run(interface_addresses)?
    }

    /// Runs `f` inside this namespace, on the current thread, and comes back.
    /// `f` must be short and must not block: it runs on an async worker.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> io::Result<T> {
        in_netns(&self.file, f)
    }
}

/// Runs `f` with the current thread in the namespace `target`, then restores
/// the thread's own namespace.
fn in_netns<T>(target: &File, f: impl FnOnce() -> T) -> io::Result<T> {
    // Opened once: every thread is in the process's own namespace whenever
    // it is outside this function, so the first caller's is everyone's.
    static HOME: std::sync::OnceLock<File> = std::sync::OnceLock::new();
    let home = match HOME.get() {
        Some(home) => home,
        None => {
            let home = File::open("/proc/thread-self/ns/net")?;
            HOME.get_or_init(|| home)
        }
    };
    setns(target)?;
    let result = f();
    if let Err(err) = setns(home) {
        // A thread left in a pod's namespace would make every later socket of
        // this process on it a pod socket: never continue from there.
        eprintln!("fatal: cannot return to the daemon's network namespace: {err}");
        std::process::abort();
    }
    Ok(result)
}

fn setns(netns: &File) -> io::Result<()> {
    // SAFETY: `netns` is an open file descriptor of a network namespace (or
    // setns fails with EINVAL); setns only changes the calling thread's namespace.
    let rc = unsafe { libc::setns(netns.as_fd().as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The addresses of the current thread's network namespace (glibc's
/// `getifaddrs` asks the kernel over netlink, in the caller's namespace).
fn interface_addresses() -> io::Result<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: `head` is valid for writes; on success getifaddrs stores a list
    // that stays valid until it is passed to freeifaddrs below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut addresses = Vec::new();
    let mut cursor = head;
    while !cursor.is_null() {
        // SAFETY: `cursor` is a node of the list getifaddrs returned, not yet freed.
        let entry = unsafe { &*cursor };
        cursor = entry.ifa_next;
        if entry.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: a non-null `ifa_addr` points to a sockaddr whose
        // `sa_family` tells which larger structure it is the start of.
        let address = unsafe {
            match i32::from((*entry.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let sin = &*entry.ifa_addr.cast::<libc::sockaddr_in>();
                    IpAddr::from(u32::from_be(sin.sin_addr.s_addr).to_be_bytes())
                }
                libc::AF_INET6 => {
                    let sin6 = &*entry.ifa_addr.cast::<libc::sockaddr_in6>();
                    IpAddr::from(sin6.sin6_addr.s6_addr)
                }
                _ => continue,
            }
        };
        addresses.push(address);
    }
    // SAFETY: `head` came from a successful getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(addresses)
}

/// The netns cookie of the namespace `socket` was created in.
pub fn netns_cookie(socket: &impl AsRawFd) -> io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` and `len` are valid for writes of the sizes given, and
    // the kernel writes at most `len` bytes to `cookie`.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(cookie)
    } else {
        Err(io::Error::last_os_error())
    }
}
