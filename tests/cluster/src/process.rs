//! Programs running inside pods, owned by the test or tool that started them.

use std::{
    path::{Path, PathBuf},
    process::Child,
};

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

    /// Whether it has exited.
    pub fn has_exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for PodProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
