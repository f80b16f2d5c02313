//! A `ztunnel ca` process on loopback, outside any cluster: what the CA
//! tests and the CA's cold-start benchmark talk to.

use std::{
    io::BufRead,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use crate::ClusterError;

/// A `ztunnel ca` process, killed when dropped.
pub struct CaProcess {
    child: Child,
    /// The address it serves on.
    pub address: SocketAddr,
    /// Its log (stderr).
    pub log: PathBuf,
}

impl CaProcess {
    /// Starts `binary ca` listening on `listen` (a loopback address; port 0
    /// for a free one) with `args`, logging to `log`, and waits until it
    /// listens (in Kubernetes mode: until it has listed the cluster).
    pub fn start(
        binary: &Path,
        listen: &str,
        args: &[&str],
        log: PathBuf,
    ) -> Result<Self, ClusterError> {
        let failed = |message: String| ClusterError::Command {
            command: format!(
                "{} ca --listen {listen} {}",
                binary.display(),
                args.join(" ")
            ),
            message,
        };
        let stderr = std::fs::File::create(&log).map_err(|err| ClusterError::io(&log, err))?;
        let mut child = Command::new(binary)
            .args(["ca", "--listen", listen, "--server-name", "127.0.0.1"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|err| failed(err.to_string()))?;
        let mut line = String::new();
        if let Some(stdout) = child.stdout.take() {
            // An error leaves the line empty: reported below with the log.
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        }
        let Some(address) = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|addr| addr.parse().ok())
        else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(failed(format!(
                "it did not start ({line:?}):\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )));
        };
        Ok(Self {
            child,
            address,
            log,
        })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the CA has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the CA (as a crash would) and waits for it to be gone.
    pub fn kill(self) {
        drop(self);
    }
}

impl Drop for CaProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
