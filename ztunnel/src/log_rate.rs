//! Warnings and errors of the node daemon rate-limited per call site.
//!
//! Many warnings are written once per connection or handshake (a refused
//! tunnel, a failed accept, a connection over its pod's limit). A hostile or
//! broken peer decides how often those happen: without a limit one pod could
//! make the daemon write hundreds of megabytes of log a minute and spend its
//! CPU doing it. Each call site may write [`PER_SECOND`] warnings or errors a
//! second; the rest are counted in `ztunnel_log_lines_suppressed_total`
//! ([`SUPPRESSED`]), and the metrics that count the events themselves (tunnel
//! failures, limit refusals, accept errors) still count every one.
//! Informational lines (one per connection when it closes) are not limited:
//! they are the connection log, and what causes them is a connection the
//! limits already admitted.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::{LazyLock, Mutex},
    time::Instant,
};

use prometheus_client::metrics::counter::Counter;
use tracing::{Level, Metadata, callsite::Identifier, subscriber::Interest};
use tracing_subscriber::layer::{Context, Filter};

/// Warnings and errors one call site may write per second.
pub const PER_SECOND: u32 = 5;

/// Lines not written because their call site had written its share
/// (registered by [`crate::metrics::Metrics`]).
pub static SUPPRESSED: LazyLock<Counter> = LazyLock::new(Counter::default);

/// A per-layer filter passing at most [`PER_SECOND`] warnings and errors per
/// call site and second (everything else passes untouched).
#[derive(Debug, Default)]
pub struct RateLimit {
    windows: Windows<Identifier>,
}

/// Per key: the second its count started, and the count. Keys are call
/// sites, a fixed set, so the map never grows past the program's size.
#[derive(Debug)]
struct Windows<K>(Mutex<HashMap<K, (Instant, u32)>>);

impl<K> Default for Windows<K> {
    fn default() -> Self {
        Self(Mutex::new(HashMap::new()))
    }
}

impl<K: Hash + Eq> Windows<K> {
    /// Whether one more line of `key` may be written at `now`.
    fn admit(&self, key: K, now: Instant) -> bool {
        let mut windows = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (started, count) = windows.entry(key).or_insert((now, 0));
        if now.duration_since(*started).as_secs() >= 1 {
            (*started, *count) = (now, 0);
        }
        *count = count.saturating_add(1);
        *count <= PER_SECOND
    }
}

/// Whether `meta` is a warning or error event, the lines that are limited.
fn limited(meta: &Metadata<'_>) -> bool {
    meta.is_event() && *meta.level() <= Level::WARN
}

impl<S> Filter<S> for RateLimit {
    fn enabled(&self, meta: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        if !limited(meta) || self.windows.admit(meta.callsite(), Instant::now()) {
            return true;
        }
        SUPPRESSED.inc();
        false
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        // Limited call sites are asked every time; the others never.
        if limited(meta) {
            Interest::sometimes()
        } else {
            Interest::always()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io,
        sync::{Arc, Mutex},
        time::Duration,
    };

    use tracing_subscriber::{Layer, layer::SubscriberExt};

    use super::*;

    /// A writer collecting what the subscriber writes.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_flood_of_one_warning_writes_a_few_lines_and_counts_the_rest() {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_writer(move || writer.clone())
                .with_filter(RateLimit::default()),
        );
        let suppressed_before = SUPPRESSED.get();
        tracing::subscriber::with_default(subscriber, || {
            for n in 0..10_000 {
                tracing::warn!(n, "accept failed");
                tracing::info!(n, "connection closed");
            }
            tracing::warn!("another warning");
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let count = |what: &str| text.lines().filter(|line| line.contains(what)).count();
        assert!(
            (1..=2 * PER_SECOND as usize).contains(&count("accept failed")),
            "{} warnings written",
            count("accept failed")
        );
        assert_eq!(
            count("connection closed"),
            10_000,
            "info lines are not limited"
        );
        assert_eq!(
            count("another warning"),
            1,
            "each call site has its own share"
        );
        // Other tests may log concurrently: at least ours are counted.
        assert!(SUPPRESSED.get() - suppressed_before >= 10_000 - 2 * u64::from(PER_SECOND));
    }

    #[test]
    fn a_call_site_gets_its_share_again_each_second() {
        let windows = Windows::default();
        let start = Instant::now();
        let admitted = (0..20).filter(|_| windows.admit("site", start)).count();
        assert_eq!(admitted, PER_SECOND as usize);
        assert!(
            windows.admit("other", start),
            "another site has its own share"
        );
        let later = start + Duration::from_millis(1001);
        assert!(windows.admit("site", later), "a new second, a new share");
    }
}
