//! Handing the daemon's listening sockets to the daemon that replaces it, so
//! a rolling update refuses no connection.
//!
//! The two daemons of a node overlap (the DaemonSet surges by one). The old
//! one listens on a unix socket (`--handover-socket`, root only); the new
//! one connects to it at start and:
//!
//! 1. receives the old daemon's identity as the programs know it ([`Daemon`]),
//!    so its freshly loaded programs keep treating the old daemon's sockets as
//!    a daemon's while it drains;
//! 2. receives every listening socket the old daemon holds (in each captured
//!    pod: outbound, inbound plaintext, tunnel; on the node: admin, metrics)
//!    with `SCM_RIGHTS`. They are the same sockets, not copies of their
//!    addresses: connections waiting in their accept queues are never lost;
//! 3. when it can serve (pods captured, certificates held) says so; the old
//!    daemon stops accepting, answers, and drains its open connections.
//!
//! The connection stays open until the old daemon exits, which tells the new
//! one when to forget the old one's process id. Each socket describes itself
//! (its network namespace cookie and local address), so the messages carry no
//! table a newer version could misread; a version mismatch is refused and the
//! new daemon starts as after a crash.
//!
//! Wire format, all integers little-endian: the old daemon sends the magic
//! `ZTHO`, the protocol version (u32), the [`Daemon`] record (three u64 and a
//! u32), its pin directory (u32 length, UTF-8: a daemon takes over only from
//! its own predecessor, never from another daemon sharing the socket by
//! mistake) and the number of sockets (u32), then batches of at most
//! [`FDS_PER_MESSAGE`] sockets, each a u32 count with the descriptors as
//! `SCM_RIGHTS`. The new daemon answers `A` (accepting); the old one `R`
//! (released).

// Passing descriptors (`sendmsg`/`recvmsg` with `SCM_RIGHTS`) and reading
// the peer's credentials are the kernel boundary; each block says why it is
// sound.
#![allow(unsafe_code)]

use std::{
    io::{Read, Write},
    os::{
        fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
        unix::{
            fs::PermissionsExt,
            net::{UnixListener, UnixStream},
        },
    },
    path::{Path, PathBuf},
    time::Duration,
};

use super::abi::Daemon;

/// The protocol version; both daemons must speak the same.
pub const VERSION: u32 = 1;
/// Sockets per message (the kernel allows 253).
pub const FDS_PER_MESSAGE: usize = 200;
const MAGIC: &[u8; 4] = b"ZTHO";
const ACCEPTING: u8 = b'A';
const RELEASED: u8 = b'R';
/// How long a step of the exchange may take before it is given up.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a hand-over failed.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    /// The socket could not be used.
    #[error("hand-over socket {}: {source}", path.display())]
    Socket {
        /// The socket's path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The exchange broke off or timed out.
    #[error("hand-over exchange: {0}")]
    Exchange(#[from] std::io::Error),
    /// The peer speaks something else.
    #[error("hand-over refused: {0}")]
    Protocol(String),
    /// The daemon listening there is another daemon's predecessor (another
    /// pin directory), not this one's.
    #[error(
        "the daemon on this hand-over socket keeps its programs in {0}, not here: give each daemon its own --handover-socket"
    )]
    OtherInstance(String),
}

/// What the previous daemon handed over.
#[derive(Debug)]
pub struct Inherited {
    /// The previous daemon, as the programs recognise it.
    pub previous: Daemon,
    /// Its listening sockets, not yet taken.
    sockets: Vec<OwnedFd>,
    connection: UnixStream,
}

/// Connects to the daemon serving `path` and takes its sockets, if it is
/// this daemon's predecessor: the daemon of the same `instance` (the pin
/// directory). `Ok(None)` when no daemon listens there (a first start, or
/// after a crash).
pub fn take_over(path: &Path, instance: &Path) -> Result<Option<Inherited>, HandoverError> {
    let connection = match UnixStream::connect(path) {
        Ok(connection) => connection,
        Err(err)
            if matches!(
                err.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(source) => {
            return Err(HandoverError::Socket {
                path: path.to_owned(),
                source,
            });
        }
    };
    connection.set_read_timeout(Some(STEP_TIMEOUT))?;
    let mut header = [0u8; 4 + 4 + 28];
    (&connection).read_exact(&mut header)?;
    if &header[..4] != MAGIC {
        return Err(HandoverError::Protocol("not a ztunnel daemon".to_owned()));
    }
    let word = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().expect("4 bytes"));
    let long = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().expect("8 bytes"));
    if word(4) != VERSION {
        return Err(HandoverError::Protocol(format!(
            "the running daemon speaks hand-over version {}, this one {VERSION}",
            word(4)
        )));
    }
    let previous = Daemon {
        pidns_dev: long(8),
        pidns_ino: long(16),
        node_netns: long(24),
        tgid: word(32),
        flags: 0,
    };
    let theirs = read_text(&connection)?;
    if Path::new(&theirs) != instance {
        return Err(HandoverError::OtherInstance(theirs));
    }
    let mut count = [0u8; 4];
    (&connection).read_exact(&mut count)?;
    let expected = u32::from_le_bytes(count) as usize;
    let mut sockets = Vec::with_capacity(expected);
    while sockets.len() < expected {
        let (count, fds) = receive_fds(&connection)?;
        if count as usize != fds.len() || fds.is_empty() {
            return Err(HandoverError::Protocol(format!(
                "a batch announced {count} sockets and carried {}",
                fds.len()
            )));
        }
        sockets.extend(fds);
    }
    Ok(Some(Inherited {
        previous,
        sockets,
        connection,
    }))
}

impl Inherited {
    /// Takes the sockets `wanted` picks (by network namespace cookie and
    /// local address, say).
    pub fn take(&mut self, mut wanted: impl FnMut(BorrowedFd<'_>) -> bool) -> Vec<OwnedFd> {
        let (taken, kept) = std::mem::take(&mut self.sockets)
            .into_iter()
            .partition(|fd| wanted(std::os::fd::AsFd::as_fd(fd)));
        self.sockets = kept;
        taken
    }

    /// Tells the previous daemon this one accepts now, and waits until it
    /// has stopped accepting. Returns the connection, which ends when the
    /// previous daemon exits. Sockets nobody took are closed.
    pub fn accepting(self) -> Result<Previous, HandoverError> {
        drop(self.sockets);
        (&self.connection).write_all(&[ACCEPTING])?;
        let mut answer = [0u8];
        (&self.connection).read_exact(&mut answer)?;
        if answer[0] != RELEASED {
            return Err(HandoverError::Protocol(format!(
                "unexpected answer {:?}",
                answer[0]
            )));
        }
        Ok(Previous(self.connection))
    }
}

/// The connection to a previous daemon that has released its sockets.
#[derive(Debug)]
pub struct Previous(UnixStream);

impl Previous {
    /// Blocks until the previous daemon has exited.
    pub fn wait_exit(self) {
        let _ = self.0.set_read_timeout(None);
        let mut byte = [0u8];
        // Anything but data ends the wait: end of stream when it exits.
        while matches!((&self.0).read(&mut byte), Ok(n) if n > 0) {}
    }
}

/// The old daemon's side: waits for a successor.
#[derive(Debug)]
pub struct Handover {
    listener: UnixListener,
    path: PathBuf,
}

impl Handover {
    /// Listens on `path`, replacing a socket file left there (a crashed
    /// daemon's, or one that handed over). The directory is made if missing;
    /// the socket is readable by root only.
    pub fn listen(path: &Path) -> Result<Self, HandoverError> {
        let failed = |source| HandoverError::Socket {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(failed)?;
        }
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(failed(err)),
        }
        let listener = UnixListener::bind(path).map_err(failed)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(failed)?;
        Ok(Self {
            listener,
            path: path.to_owned(),
        })
    }

    /// Waits (blocking) for the next successor of the same user.
    pub fn next(&self) -> Result<Successor, HandoverError> {
        loop {
            let (connection, _) = self.listener.accept()?;
            match peer_uid(&connection) {
                Ok(uid) if uid == current_uid() => return Ok(Successor(connection)),
                Ok(uid) => tracing::warn!(uid, "hand-over refused to another user"),
                Err(err) => tracing::warn!("hand-over refused: no peer credentials: {err}"),
            }
        }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A daemon taking over from this one.
#[derive(Debug)]
pub struct Successor(UnixStream);

impl Successor {
    /// Sends this daemon's identity and `sockets`, then waits (up to
    /// `ready_within`) until the successor accepts on them. On success the
    /// caller stops accepting and calls [`Successor::released`].
    pub fn hand_over(
        &mut self,
        daemon: &Daemon,
        instance: &Path,
        sockets: &[BorrowedFd<'_>],
        ready_within: Duration,
    ) -> Result<(), HandoverError> {
        let mut header = Vec::with_capacity(40);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&VERSION.to_le_bytes());
        header.extend_from_slice(&daemon.pidns_dev.to_le_bytes());
        header.extend_from_slice(&daemon.pidns_ino.to_le_bytes());
        header.extend_from_slice(&daemon.node_netns.to_le_bytes());
        header.extend_from_slice(&daemon.tgid.to_le_bytes());
        let instance = instance.to_string_lossy();
        let length = u32::try_from(instance.len())
            .ok()
            .filter(|length| *length <= MAX_TEXT)
            .ok_or_else(|| {
                HandoverError::Protocol("the pin directory's name is too long".to_owned())
            })?;
        header.extend_from_slice(&length.to_le_bytes());
        header.extend_from_slice(instance.as_bytes());
        let count = u32::try_from(sockets.len())
            .map_err(|_| HandoverError::Protocol("too many sockets".to_owned()))?;
        header.extend_from_slice(&count.to_le_bytes());
        self.0.set_write_timeout(Some(STEP_TIMEOUT))?;
        (&self.0).write_all(&header)?;
        for batch in sockets.chunks(FDS_PER_MESSAGE) {
            send_fds(&self.0, batch)?;
        }
        self.0.set_read_timeout(Some(ready_within))?;
        let mut answer = [0u8];
        (&self.0).read_exact(&mut answer)?;
        if answer[0] != ACCEPTING {
            return Err(HandoverError::Protocol(format!(
                "unexpected answer {:?}",
                answer[0]
            )));
        }
        Ok(())
    }

    /// Tells the successor this daemon no longer accepts. Keep the returned
    /// connection until the process exits: its end tells the successor.
    pub fn released(self) -> Result<UnixStream, HandoverError> {
        (&self.0).write_all(&[RELEASED])?;
        Ok(self.0)
    }
}

/// Longest text field (the pin directory) accepted.
const MAX_TEXT: u32 = 4096;

/// A u32 length, then that many bytes of UTF-8.
fn read_text(stream: &UnixStream) -> Result<String, HandoverError> {
    let mut length = [0u8; 4];
    (&*stream).read_exact(&mut length)?;
    let length = u32::from_le_bytes(length);
    if length > MAX_TEXT {
        return Err(HandoverError::Protocol(format!("a text of {length} bytes")));
    }
    let mut text = vec![0u8; length as usize];
    (&*stream).read_exact(&mut text)?;
    String::from_utf8(text)
        .map_err(|_| HandoverError::Protocol("text that is not UTF-8".to_owned()))
}

/// A message of one data buffer (`iov`) and a control buffer (`control`);
/// both must outlive its use in `sendmsg`/`recvmsg`.
fn message(iov: &mut libc::iovec, control: &mut [u8]) -> libc::msghdr {
    // SAFETY: an all-zero msghdr is a valid, empty message.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = iov;
    message.msg_iovlen = 1;
    message.msg_control = control.as_mut_ptr().cast();
    message.msg_controllen = control.len() as _;
    message
}

/// Sends `fds` in one message whose data is their count.
fn send_fds(stream: &UnixStream, fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
    let count = (fds.len() as u32).to_le_bytes();
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let payload = std::mem::size_of_val(raw.as_slice());
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(payload as u32) } as usize;
    let mut control = vec![0u8; space];
    let mut iov = libc::iovec {
        iov_base: count.as_ptr() as *mut libc::c_void,
        iov_len: count.len(),
    };
    let message = message(&mut iov, &mut control);
    // SAFETY: `control` has CMSG_SPACE(payload) bytes, so the first header
    // and its `payload` bytes of data fit; CMSG_FIRSTHDR is non-null for a
    // buffer that large.
    unsafe {
        let header = libc::CMSG_FIRSTHDR(&message);
        (*header).cmsg_level = libc::SOL_SOCKET;
        (*header).cmsg_type = libc::SCM_RIGHTS;
        (*header).cmsg_len = libc::CMSG_LEN(payload as u32) as _;
        std::ptr::copy_nonoverlapping(raw.as_ptr().cast::<u8>(), libc::CMSG_DATA(header), payload);
    }
    // SAFETY: `message` is fully initialised and points at live buffers.
    let sent = unsafe { libc::sendmsg(stream.as_raw_fd(), &message, libc::MSG_NOSIGNAL) };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if sent as usize != count.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::WriteZero,
            "a short hand-over message",
        ));
    }
    Ok(())
}

/// Receives one message of [`send_fds`]: the count it states and the
/// descriptors it carried (owned from here on).
fn receive_fds(stream: &UnixStream) -> std::io::Result<(u32, Vec<OwnedFd>)> {
    let mut count = [0u8; 4];
    let payload = FDS_PER_MESSAGE * std::mem::size_of::<RawFd>();
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(payload as u32) } as usize;
    let mut control = vec![0u8; space];
    let mut iov = libc::iovec {
        iov_base: count.as_mut_ptr().cast(),
        iov_len: count.len(),
    };
    let mut message = message(&mut iov, &mut control);
    // SAFETY: `message` points at live, writable buffers of the sizes given;
    // MSG_CMSG_CLOEXEC makes the received descriptors close-on-exec.
    let received =
        unsafe { libc::recvmsg(stream.as_raw_fd(), &mut message, libc::MSG_CMSG_CLOEXEC) };
    if received < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: the kernel filled `control` up to msg_controllen; the CMSG_*
    // macros walk only within it, and each SCM_RIGHTS payload is an array of
    // descriptors now open in this process, each owned exactly once here.
    unsafe {
        let mut header = libc::CMSG_FIRSTHDR(&message);
        while !header.is_null() {
            if (*header).cmsg_level == libc::SOL_SOCKET && (*header).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(header);
                let bytes = (*header).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for index in 0..bytes / std::mem::size_of::<RawFd>() {
                    let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(index));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            header = libc::CMSG_NXTHDR(&message, header);
        }
    }
    if received as usize != count.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the hand-over connection closed",
        ));
    }
    if message.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(std::io::Error::other("sockets were cut off in transit"));
    }
    Ok((u32::from_le_bytes(count), fds))
}

/// The user id of the process at the other end of `stream`.
fn peer_uid(stream: &UnixStream) -> std::io::Result<u32> {
    let mut credentials = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut length = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `credentials` is a writable ucred and `length` its size.
    let found = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut credentials as *mut libc::ucred).cast(),
            &mut length,
        )
    };
    if found < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(credentials.uid)
}

fn current_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn listening_sockets_move_to_the_successor_with_their_queued_connections() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("handover.sock");
        let pins = Path::new("/sys/fs/bpf/ztunnel");
        assert!(
            take_over(&path, pins).unwrap().is_none(),
            "nobody listens yet"
        );
        let handover = Handover::listen(&path).unwrap();
        // More sockets than one message carries.
        let listeners: Vec<TcpListener> = (0..FDS_PER_MESSAGE + 3)
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        // A client waits in the first listener's accept queue.
        let mut client = std::net::TcpStream::connect(listeners[0].local_addr().unwrap()).unwrap();
        let daemon = Daemon {
            pidns_dev: 1 << 20 | 7,
            pidns_ino: 4026531836,
            node_netns: 4096,
            tgid: 4242,
            flags: 0,
        };
        let old = std::thread::spawn({
            let fds: Vec<OwnedFd> = listeners
                .iter()
                .map(|l| l.as_fd().try_clone_to_owned().unwrap())
                .collect();
            move || {
                let mut successor = handover.next().unwrap();
                let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
                successor
                    .hand_over(&daemon, pins, &borrowed, Duration::from_secs(5))
                    .unwrap();
                successor.released().unwrap()
            }
        });
        let mut inherited = take_over(&path, pins).unwrap().expect("a daemon listens");
        assert_eq!(inherited.previous, daemon);
        let first = listeners[0].local_addr().unwrap();
        let taken = inherited.take(|fd| {
            socket2::SockRef::from(&fd)
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                == Some(first)
        });
        assert_eq!(taken.len(), 1);
        assert_eq!(inherited.sockets.len(), FDS_PER_MESSAGE + 2);
        let previous = inherited.accepting().unwrap();
        let connection = old.join().unwrap();
        drop(listeners); // the old daemon's copies are gone
        let listener = TcpListener::from(taken.into_iter().next().unwrap());
        let (mut accepted, _) = listener.accept().unwrap();
        client.write_all(b"hi").unwrap();
        let mut got = [0u8; 2];
        accepted.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hi", "the queued connection reached the successor");
        drop(connection);
        previous.wait_exit();
    }

    #[test]
    fn a_daemon_of_another_pin_directory_is_not_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("handover.sock");
        let handover = Handover::listen(&path).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let old = std::thread::spawn(move || {
            let mut successor = handover.next().unwrap();
            let fd = listener.as_fd();
            successor.hand_over(
                &Daemon::default(),
                Path::new("/sys/fs/bpf/ztunnel-node1"),
                &[fd],
                Duration::from_secs(5),
            )
        });
        let err = take_over(&path, Path::new("/sys/fs/bpf/ztunnel-node2")).unwrap_err();
        assert!(matches!(err, HandoverError::OtherInstance(_)), "{err}");
        assert!(
            old.join().unwrap().is_err(),
            "the old daemon hears that nobody took over, and serves on"
        );
    }

    #[test]
    fn another_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("handover.sock");
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut header = vec![0u8; 40];
            header[..4].copy_from_slice(MAGIC);
            header[4..8].copy_from_slice(&99u32.to_le_bytes());
            stream.write_all(&header).unwrap();
        });
        let err = take_over(&path, Path::new("/sys/fs/bpf/ztunnel")).unwrap_err();
        assert!(err.to_string().contains("version 99"), "{err}");
    }
}
