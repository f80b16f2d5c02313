//! Accepting connections, for every listener of the daemon and the CA.
//!
//! A failed accept is most often the open-file limit: the connection waits
//! in the backlog and every retry fails again at once. Retried in a loop,
//! that is a busy CPU and a line of log per try (a CA out of descriptors
//! once wrote 11 GB of log in five minutes). So after a failure the next
//! try waits, 5 ms doubled up to 1 s while failures go on.

use std::{io, net::SocketAddr, time::Duration};

use tokio::net::{TcpListener, TcpStream};

/// First pause after a failed accept; doubled up to [`BACKOFF_MAX`] while
/// accepts keep failing.
pub const BACKOFF: Duration = Duration::from_millis(5);
/// Longest pause after failed accepts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Accepts connections from one listener, pausing after failures.
pub struct Acceptor {
    listener: TcpListener,
    backoff: Duration,
}

impl Acceptor {
    /// Accepts from `listener`.
    pub fn new(listener: TcpListener) -> Self {
        Self {
            listener,
            backoff: BACKOFF,
        }
    }

    /// The next connection. Each failure is told to `failed` with the pause
    /// before the next try (to log or count it), then waited out.
    pub async fn accept(
        &mut self,
        mut failed: impl FnMut(&io::Error, Duration),
    ) -> (TcpStream, SocketAddr) {
        loop {
            match self.listener.accept().await {
                Ok(accepted) => {
                    self.backoff = BACKOFF;
                    return accepted;
                }
                Err(err) => {
                    failed(&err, self.backoff);
                    tokio::time::sleep(self.backoff).await;
                    self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listening socket shut down for reading fails every accept at once
    /// (`EINVAL`), as a process out of descriptors does.
    #[tokio::test(start_paused = true)]
    async fn failed_accepts_are_retried_after_a_doubling_pause() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        socket2::SockRef::from(&listener)
            .shutdown(std::net::Shutdown::Read)
            .unwrap();
        let mut acceptor = Acceptor::new(listener);
        let mut pauses = Vec::new();
        let accepted = tokio::time::timeout(
            Duration::from_secs(4),
            acceptor.accept(|_, pause| pauses.push(pause.as_millis())),
        )
        .await;
        assert!(accepted.is_err(), "nothing to accept");
        assert_eq!(
            pauses,
            [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000],
            "4 s of failures"
        );
    }
}
