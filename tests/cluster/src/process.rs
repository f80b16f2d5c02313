//! Programs running inside pods, owned by the test or tool that started them.

use std::{
    path::{Path, PathBuf},
    process::{Child, ExitStatus},
    time::{Duration, Instant},
};

use crate::ClusterError;

/// A process started in a pod's network namespace. Dropping it kills it and
/// reaps it, so a failing test leaves nothing running.
#[derive(Debug)]
pub struct PodProcess {
    child: Child,
    log: PathBuf,
}

impl PodProcess {
    pub(crate) fn new(child: Child, log: PathBuf) -> Self {
        Self { child, log }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The file its stdout and stderr go to.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// What it has written to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits up to `timeout` for it to exit by itself.
    pub fn wait(&mut self, timeout: Duration) -> Result<ExitStatus, ClusterError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Ok(None) => {
                    return Err(ClusterError::Timeout(format!(
                        "process {} did not exit",
                        self.pid()
                    )));
                }
                Err(err) => return Err(ClusterError::io(&self.log, err)),
            }
        }
    }
}

impl Drop for PodProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
