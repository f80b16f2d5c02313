//! Warnings and errors of the node daemon rate-limited per call site.
//!
//! Many warnings are written once per connection or handshake (a refused
//! tunnel, a failed accept, a connection over its pod's limit). A hostile or
//! broken peer decides how often those happen: without a limit one pod could
//! make the daemon write hundreds of megabytes of log a minute and spend its
//! CPU doing it. Each call site may write [`PER_SECOND`] warnings or errors a
//! second; the rest are counted in `ztunnel_log_lines_suppressed_total`
//! ([`SUPPRESSED`]) and, every few seconds, in one warning naming each call
//! site and how many of its lines were dropped ([`RateLimit::report`]), so a
//! flood reads as a count per interval in the log too; the metrics that count the events themselves (tunnel
//! failures, limit refusals, accept errors) still count every one.
//! Informational lines (one per connection when it closes) are not limited:
//! they are the connection log, and what causes them is a connection the
//! limits already admitted.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::{Arc, LazyLock, Mutex},
    time::{Duration, Instant},
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
/// call site and second (everything else passes untouched). Clones share
/// their counts, so one can be kept to [`report`](Self::report) them.
#[derive(Clone, Debug, Default)]
pub struct RateLimit {
    windows: Arc<Windows<Identifier>>,
}

impl RateLimit {
    /// Every `interval`, writes one warning naming each call site that had
    /// lines suppressed since the last one, with how many: a flood shows up
    /// in the log as a count per interval, not as silence. Runs forever.
    pub async fn report(self, interval: Duration) {
        let mut ticks = tokio::time::interval(interval);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let suppressed = self.windows.take_suppressed();
            if suppressed.is_empty() {
                continue;
            }
            let total: u64 = suppressed.iter().map(|(_, count)| count).sum();
            let sites: Vec<String> = suppressed
                .iter()
                .map(|(site, count)| format!("{site} x{count}"))
                .collect();
            tracing::warn!(
                suppressed = total,
                interval_secs = interval.as_secs(),
                "repeated warnings suppressed: {}",
                sites.join(", ")
            );
        }
    }
}

/// Per key (a call site, a fixed set, so the map never grows past the
/// program's size): its current one-second window and what it suppressed.
#[derive(Debug)]
struct Windows<K>(Mutex<HashMap<K, Window>>);

#[derive(Debug)]
struct Window {
    /// Where the call site is, for the report.
    site: String,
    started: Instant,
    written: u32,
    /// Lines suppressed since the last report.
    suppressed: u64,
}

impl<K> Default for Windows<K> {
    fn default() -> Self {
        Self(Mutex::new(HashMap::new()))
    }
}

impl<K: Hash + Eq> Windows<K> {
    /// Whether one more line of `key` (at `site`) may be written at `now`.
    fn admit(&self, key: K, now: Instant, site: impl FnOnce() -> String) -> bool {
        let mut windows = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let window = windows.entry(key).or_insert_with(|| Window {
            site: site(),
            started: now,
            written: 0,
            suppressed: 0,
        });
        if now.duration_since(window.started).as_secs() >= 1 {
            (window.started, window.written) = (now, 0);
        }
        window.written = window.written.saturating_add(1);
        let admitted = window.written <= PER_SECOND;
        if !admitted {
            window.suppressed += 1;
        }
        admitted
    }

    /// The sites that suppressed lines since the last call and how many,
    /// by site; their counts start again from zero.
    fn take_suppressed(&self) -> Vec<(String, u64)> {
        let mut windows = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut taken: Vec<(String, u64)> = windows
            .values_mut()
            .filter(|window| window.suppressed > 0)
            .map(|window| (window.site.clone(), std::mem::take(&mut window.suppressed)))
            .collect();
        taken.sort();
        taken
    }
}

/// Whether `meta` is a warning or error event, the lines that are limited.
fn limited(meta: &Metadata<'_>) -> bool {
    meta.is_event() && *meta.level() <= Level::WARN
}

/// Where `meta`'s call site is in the source.
fn site(meta: &Metadata<'_>) -> String {
    format!(
        "{}:{}",
        meta.file().unwrap_or(meta.target()),
        meta.line().unwrap_or_default()
    )
}

impl<S> Filter<S> for RateLimit {
    fn enabled(&self, meta: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        if !limited(meta)
            || self
                .windows
                .admit(meta.callsite(), Instant::now(), || site(meta))
        {
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

    #[tokio::test(start_paused = true)]
    async fn a_report_counts_what_each_interval_suppressed() {
        let lines = Lines::default();
        let writer = lines.clone();
        let limit = RateLimit::default();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .with_filter(limit.clone()),
        );
        let _default = tracing::subscriber::set_default(subscriber);
        let reporter = tokio::spawn(limit.report(Duration::from_secs(10)));
        for n in 0..100 {
            tracing::warn!(n, "tunnel refused");
        }
        tokio::time::sleep(Duration::from_secs(11)).await;
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let reports: Vec<&str> = text
            .lines()
            .filter(|line| line.contains("repeated warnings suppressed"))
            .collect();
        assert_eq!(reports.len(), 1, "{text}");
        assert!(
            reports[0].contains("suppressed=95") && reports[0].contains("src/log_rate.rs:"),
            "{}",
            reports[0]
        );
        // Nothing more suppressed: no more reports.
        tokio::time::sleep(Duration::from_secs(20)).await;
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.matches("repeated warnings suppressed").count(), 1);
        reporter.abort();
    }

    #[test]
    fn a_call_site_gets_its_share_again_each_second() {
        let windows = Windows::default();
        let start = Instant::now();
        let admit = |key: &'static str, at| windows.admit(key, at, || format!("{key}.rs:1"));
        let admitted = (0..20).filter(|_| admit("site", start)).count();
        assert_eq!(admitted, PER_SECOND as usize);
        assert!(admit("other", start), "another site has its own share");
        let later = start + Duration::from_millis(1001);
        assert!(admit("site", later), "a new second, a new share");
    }

    #[test]
    fn suppressed_lines_are_counted_per_site_until_reported() {
        let windows = Windows::default();
        let start = Instant::now();
        for key in ["a", "b", "a"] {
            for _ in 0..10 {
                windows.admit(key, start, || format!("{key}.rs:7"));
            }
        }
        assert_eq!(
            windows.take_suppressed(),
            [("a.rs:7".to_owned(), 15), ("b.rs:7".to_owned(), 5)]
        );
        assert!(windows.take_suppressed().is_empty(), "counts start again");
    }
}
