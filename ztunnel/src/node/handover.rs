//! Rolling updates on a node: taking over from the daemon still running, and
//! handing over to the next one ([`crate::redirect::handover`] has the
//! protocol).
//!
//! A new daemon takes the old one's listening sockets at start and holds
//! them, accepting nothing, while it captures the pods and gets their
//! certificates; the old one serves meanwhile. Once the new one could answer
//! ready it accepts, tells the old one, which stops accepting and drains.
//! No connection waits in a queue nobody serves, and none is refused.

use std::{
    net::SocketAddr,
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::sync::{mpsc, oneshot};

use crate::redirect::{
    abi::Daemon,
    handover::{Handover, HandoverError, Inherited, Previous, Successor, take_over},
    listeners::local_address,
    netns::netns_cookie,
};

/// How long an old daemon waits for its successor to be ready before it
/// gives up and serves on (the successor may be waiting for the CA).
const SUCCESSOR_READY_WITHIN: Duration = Duration::from_secs(600);

/// What this daemon took over, if a daemon was running.
pub struct TakeOver {
    inherited: Option<Inherited>,
    node_netns: u64,
    /// Another daemon (of another pin directory) listens on the socket: it
    /// must keep it.
    socket_in_use: bool,
}

impl TakeOver {
    /// Takes over from the daemon serving `socket`, if it is this daemon's
    /// predecessor (the same pin directory, `instance`); a failed exchange
    /// is logged and the daemon starts as after a crash.
    pub async fn start(socket: &Path, instance: &Path, node_netns: u64) -> Self {
        let (socket, instance) = (socket.to_owned(), instance.to_owned());
        let taken = tokio::task::spawn_blocking(move || take_over(&socket, &instance))
            .await
            .unwrap_or_else(|err| Err(HandoverError::Exchange(err.into())));
        let mut socket_in_use = false;
        let inherited = taken.unwrap_or_else(|err| {
            socket_in_use = matches!(err, HandoverError::OtherInstance(_));
            tracing::warn!("starting without taking over: {err}");
            None
        });
        if let Some(inherited) = &inherited {
            tracing::info!(
                previous_pid = inherited.previous.tgid,
                "taking over from the daemon running on this node"
            );
        }
        Self {
            inherited,
            node_netns,
            socket_in_use,
        }
    }

    /// Whether this daemon may listen for its own successor on the socket
    /// (not when another daemon's predecessor holds it).
    pub fn may_listen(&self) -> bool {
        !self.socket_in_use
    }

    /// Whether a previous daemon handed its sockets over.
    pub fn taking_over(&self) -> bool {
        self.inherited.is_some()
    }

    /// The previous daemon, as the programs recognise it.
    pub fn previous(&self) -> Option<Daemon> {
        self.inherited.as_ref().map(|inherited| inherited.previous)
    }

    /// The node's listening socket bound to `address` (admin, metrics), if
    /// it was handed over.
    pub fn node_listener(&mut self, address: SocketAddr) -> Option<std::net::TcpListener> {
        let node_netns = self.node_netns;
        let inherited = self.inherited.as_mut()?;
        let socket = inherited
            .take(|fd| {
                local_address(&fd) == Some(address)
                    && netns_cookie(&fd).is_ok_and(|cookie| cookie == node_netns)
            })
            .pop()?;
        let listener = std::net::TcpListener::from(socket);
        listener.set_nonblocking(true).ok()?;
        Some(listener)
    }

    /// The pods' listening sockets (all those not taken yet).
    pub fn pod_sockets(&mut self) -> Vec<OwnedFd> {
        self.inherited
            .as_mut()
            .map(|inherited| inherited.take(|_| true))
            .unwrap_or_default()
    }

    /// Tells the previous daemon this one accepts; once it has stopped,
    /// returns a receiver that completes when it exits.
    pub async fn complete(self) -> Option<oneshot::Receiver<()>> {
        let inherited = self.inherited?;
        let previous: Previous = tokio::task::spawn_blocking(move || inherited.accepting())
            .await
            .unwrap_or_else(|err| Err(HandoverError::Exchange(err.into())))
            .inspect_err(|err| {
                tracing::warn!("the previous daemon did not confirm the hand-over: {err}");
            })
            .ok()?;
        tracing::info!("took over from the previous daemon: it no longer accepts");
        // A thread of its own: the runtime waits for its blocking tasks when
        // the daemon stops, and the previous daemon may outlive this one.
        let (exited, wait) = oneshot::channel();
        std::thread::Builder::new()
            .name("handover-previous".to_owned())
            .spawn(move || {
                previous.wait_exit();
                let _ = exited.send(());
            })
            .ok()?;
        Some(wait)
    }
}

/// Listens for a successor on `socket`; each one that connects arrives on
/// the returned channel. `None` (logged) when the socket cannot be made.
pub fn listen(socket: &Path) -> Option<mpsc::Receiver<Successor>> {
    let handover = match Handover::listen(socket) {
        Ok(handover) => handover,
        Err(err) => {
            tracing::warn!("no hand-over to a successor: {err}");
            return None;
        }
    };
    let (successors, receiver) = mpsc::channel(1);
    std::thread::Builder::new()
        .name("handover".to_owned())
        .spawn(move || {
            loop {
                match handover.next() {
                    Ok(successor) => {
                        if successors.blocking_send(successor).is_err() {
                            return;
                        }
                    }
                    Err(err) => {
                        tracing::warn!(socket = %handover.path().display(), "hand-over: {err}");
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            }
        })
        .ok()?;
    Some(receiver)
}

/// Hands `sockets` and this daemon's identity to `successor`; the answer
/// arrives once it accepts (the caller then stops accepting and sends
/// [`Successor::released`]), or the reason it did not. The wait (up to
/// ten minutes) runs on a thread of its own, which a stopping
/// daemon does not wait for.
pub fn hand_over(
    mut successor: Successor,
    daemon: Daemon,
    instance: PathBuf,
    sockets: Vec<OwnedFd>,
) -> oneshot::Receiver<Result<Successor, String>> {
    let (answer, receiver) = oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("handover-successor".to_owned())
        .spawn(move || {
            let borrowed: Vec<_> = sockets.iter().map(AsFd::as_fd).collect();
            let result = successor
                .hand_over(&daemon, &instance, &borrowed, SUCCESSOR_READY_WITHIN)
                .map(|()| successor)
                .map_err(|err| err.to_string());
            let _ = answer.send(result);
        });
    if let Err(err) = spawned {
        tracing::warn!("cannot hand over: {err}");
    }
    receiver
}
