//! Exponential backoff with jitter, for retrying the CA.

use std::time::Duration;

/// Delays that double from `initial` up to `max`, each spread by ±20% so
/// that daemons which failed together do not retry together.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// A backoff starting at `initial`, capped at `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            next: initial.min(max),
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        base.mul_f64(rand::random_range(0.8..=1.2))
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        self.next = self.initial.min(self.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_bounded_jitter_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let bases = [100u64, 200, 400, 800, 1000, 1000, 1000];
        for base in bases {
            let delay = backoff.next_delay().as_secs_f64() * 1000.0;
            let base = base as f64;
            assert!(
                delay >= base * 0.8 - 1e-6 && delay <= base * 1.2 + 1e-6,
                "{delay} ms for base {base}"
            );
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(120));
    }
}
