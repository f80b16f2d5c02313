//! Files that are reloaded when they change (the registry, node tokens, the
//! trust bundle).
//!
//! A background task polls the file's metadata (inode, size, mtime) and
//! reloads it when any of them changes; atomic replacement by rename, as
//! Kubernetes does for mounted ConfigMaps, is seen like an in-place edit. A
//! directory (the policies) is watched through the stamps of its entries.
//! A reload that fails is logged and the last good value stays in force.
//! Readers get the current value from a `watch` channel, without locking.

use std::{
    fmt::Display,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::{sync::watch, task::JoinHandle};

/// How often files are checked for changes: well under the one second in
/// which a change must take effect.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// What identifies one version of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    inode: u64,
    size: u64,
    mtime_ns: i128,
}

fn file_stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        inode: meta.ino(),
        size: meta.size(),
        mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
    })
}

/// The stamp of a file, or of each entry of a directory (sorted by name).
fn stamp(path: &Path) -> Option<Vec<(PathBuf, Option<Stamp>)>> {
    let own = file_stamp(path)?;
    let mut stamps = vec![(path.to_owned(), Some(own))];
    if let Ok(entries) = std::fs::read_dir(path) {
        let mut entries: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        entries.sort();
        stamps.extend(entries.into_iter().map(|entry| {
            let stamp = file_stamp(&entry);
            (entry, stamp)
        }));
    }
    Some(stamps)
}

/// A file loaded by `load`, kept current by a background task.
pub struct Watched<T> {
    receiver: watch::Receiver<Arc<T>>,
    task: JoinHandle<()>,
}

impl<T: Send + Sync + 'static> Watched<T> {
    /// Loads `path` now (failing if it cannot be loaded: a process must not
    /// start on a broken file) and watches it from then on.
    pub fn start<E, F>(path: PathBuf, what: &'static str, mut load: F) -> Result<Self, E>
    where
        E: Display + Send + 'static,
        F: FnMut(&Path) -> Result<T, E> + Send + 'static,
    {
        let mut last = stamp(&path);
        let (sender, receiver) = watch::channel(Arc::new(load(&path)?));
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(POLL_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let now = stamp(&path);
                if now == last {
                    continue;
                }
                last = now;
                match load(&path) {
                    Ok(value) => {
                        tracing::info!(path = %path.display(), "reloaded {what}");
                        if sender.send(Arc::new(value)).is_err() {
                            return; // nobody reads it any more
                        }
                    }
                    Err(err) => {
                        tracing::warn!(path = %path.display(), "keeping the previous {what}: {err}")
                    }
                }
            }
        });
        Ok(Self { receiver, task })
    }

    /// A value kept current by `task` (another source, such as the
    /// Kubernetes API), which sends its versions to `receiver`'s channel.
    /// The task stops when this is dropped.
    pub fn fed_by(receiver: watch::Receiver<Arc<T>>, task: JoinHandle<()>) -> Self {
        Self { receiver, task }
    }

    /// The current value.
    pub fn current(&self) -> Arc<T> {
        self.receiver.borrow().clone()
    }

    /// A receiver that is notified of every new value.
    pub fn subscribe(&self) -> watch::Receiver<Arc<T>> {
        self.receiver.clone()
    }
}

impl<T> Drop for Watched<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(path: &Path) -> Result<u32, String> {
        let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
        text.trim().parse().map_err(|e| format!("{text:?}: {e}"))
    }

    #[tokio::test]
    async fn reloads_on_change_and_keeps_the_last_good_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n");
        std::fs::write(&path, "1").unwrap();
        let watched = Watched::start(path.clone(), "number", parse).unwrap();
        let mut changes = watched.subscribe();
        assert_eq!(*watched.current(), 1);

        // Atomic replace, as ConfigMap updates do.
        std::fs::write(dir.path().join("tmp"), "22").unwrap();
        std::fs::rename(dir.path().join("tmp"), &path).unwrap();
        tokio::time::timeout(Duration::from_secs(5), changes.changed())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(*watched.current(), 22);

        // A broken version is ignored; the next good one is taken.
        std::fs::write(&path, "not a number").unwrap();
        std::fs::write(dir.path().join("tmp"), "333").unwrap();
        tokio::time::sleep(POLL_INTERVAL * 3).await;
        assert_eq!(
            *watched.current(),
            22,
            "a broken file must not replace the last good value"
        );
        std::fs::rename(dir.path().join("tmp"), &path).unwrap();
        tokio::time::timeout(Duration::from_secs(5), changes.changed())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(*watched.current(), 333);
    }

    #[tokio::test]
    async fn refuses_to_start_on_a_broken_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n");
        std::fs::write(&path, "x").unwrap();
        assert!(Watched::start(path, "number", parse).is_err());
    }
}
