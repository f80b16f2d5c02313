//! Giving memory back to the system after a surge of connections, and
//! keeping the allocator from holding more than it needs.
//!
//! glibc's allocator keeps what a surge freed inside its per-thread arenas:
//! after 5,000 idle connections opened and closed, the daemon's resident
//! memory stayed at 48 MiB instead of falling back to 18 MiB, where one
//! `malloc_trim(0)` brought it. So when the number of open connections has
//! fallen to half its peak (a peak of at least [`SURGE`]), the daemon trims
//! once. A trim costs a walk over the free lists (milliseconds at most) and
//! happens at most once per surge, checked every [`CHECK_EVERY`].
#![allow(unsafe_code)]

use std::time::Duration;

use crate::proxy::Active;

/// Open connections that make a surge worth trimming after.
pub const SURGE: usize = 1024;

/// How often the connection count is checked: often enough to see a surge
/// of a few seconds (at 5 s one could fall between two checks and its
/// memory was never given back); a check is one atomic read.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Decides when to trim, from a count seen again and again: open
/// connections at each check, or the registry's pods at each update (a
/// cluster that shrank leaves the memory of its rebuilds in the arenas).
#[derive(Debug, Default)]
pub struct Surges {
    /// The highest count seen since the last trim.
    peak: usize,
}

impl Surges {
    /// Records a count (`open` connections); true if memory should be
    /// trimmed now: a surge of at least [`SURGE`] has fallen to half.
    pub fn trim_now(&mut self, open: usize) -> bool {
        self.peak = self.peak.max(open);
        if self.peak >= SURGE && open <= self.peak / 2 {
            self.peak = open;
            return true;
        }
        false
    }
}

/// Checks the open connections every [`CHECK_EVERY`] and trims after each
/// surge, until dropped.
pub async fn trim_after_surges(active: &Active) {
    let mut surges = Surges::default();
    let mut ticks = tokio::time::interval(CHECK_EVERY);
    loop {
        ticks.tick().await;
        let open = active.count();
        if surges.trim_now(open) {
            trim();
            tracing::info!(
                open,
                "a surge of connections is over: freed memory given back to the system"
            );
        }
    }
}

/// Caps glibc's allocator at one arena per CPU (its default is eight),
/// unless `MALLOC_ARENA_MAX` says otherwise.
///
/// A thread allocating while another holds its arena moves to a new one;
/// the registry is built on whichever worker ran the rebuild and freed on
/// another, so with many arenas each one ends up holding free pages of its
/// own. Measured with 100,000 pods (`cargo xtask bench scale`): 197 MiB
/// resident with the default, 179 MiB with two arenas on two CPUs. One per
/// CPU keeps the runtime's workers (one per CPU) each on an arena of its
/// own, so allocation stays uncontended.
pub fn limit_arenas() {
    #[cfg(target_env = "gnu")]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        let cpus = std::thread::available_parallelism().map_or(2, usize::from);
        let arenas = libc::c_int::try_from(cpus.max(2)).unwrap_or(libc::c_int::MAX);
        // SAFETY: `mallopt` changes a tunable of the allocator under its own
        // lock; it touches no memory the program owns. Called before the
        // runtime's threads start.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
}

/// Returns the allocator's free memory to the system.
pub fn trim() {
    #[cfg(target_env = "gnu")]
    // SAFETY: `malloc_trim` only releases free memory of the allocator's own
    // arenas; it takes the arenas' locks, so it is safe alongside other
    // threads allocating, and touches no memory the program owns.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_when_a_surge_falls_to_half() {
        let mut surges = Surges::default();
        let decisions: Vec<bool> = [10, 3000, 5000, 4000, 2600, 2500, 2400, 100, 50]
            .into_iter()
            .map(|open| surges.trim_now(open))
            .collect();
        assert_eq!(
            decisions,
            [false, false, false, false, false, true, false, true, false],
            "at 2500 of a 5000 peak; the peak restarts there, so at 100 again; \
             100 is no surge (under {SURGE}), so never at 50"
        );
    }

    #[test]
    fn small_peaks_never_trim() {
        let mut surges = Surges::default();
        assert!((0..100).all(|n| !surges.trim_now(if n % 2 == 0 { 1000 } else { 0 })));
    }

    #[test]
    fn a_second_surge_trims_again() {
        let mut surges = Surges::default();
        assert!(!surges.trim_now(2000));
        assert!(surges.trim_now(0));
        assert!(!surges.trim_now(3000));
        assert!(surges.trim_now(1000));
    }
}
