//! What `ztunnel-testapp load` reports: requests at a fixed rate, each on a
//! new connection, and long-lived streams whose echoes are checked. One
//! line, `requests ok X failed Y streams ok A broken B`, written and read
//! here so the test app, the tests and the benchmark agree on it.

use std::fmt;

/// The outcome of one load run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LoadTally {
    /// Requests answered `200`.
    pub requests_ok: u64,
    /// Requests that failed (refused, reset, timed out, a wrong answer).
    pub requests_failed: u64,
    /// Streams that ended cleanly with every byte echoed back intact.
    pub streams_ok: u64,
    /// Streams that broke or got a byte wrong.
    pub streams_broken: u64,
}

impl fmt::Display for LoadTally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "requests ok {} failed {} streams ok {} broken {}",
            self.requests_ok, self.requests_failed, self.streams_ok, self.streams_broken
        )
    }
}

impl std::str::FromStr for LoadTally {
    type Err = String;

    fn from_str(line: &str) -> Result<Self, Self::Err> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let shape = [
            "requests", "ok", "", "failed", "", "streams", "ok", "", "broken", "",
        ];
        let fits = words.len() == shape.len()
            && shape
                .iter()
                .zip(&words)
                .all(|(want, got)| want.is_empty() || want == got);
        if !fits {
            return Err(format!("not a load tally: {line:?}"));
        }
        let number = |index: usize| {
            words[index]
                .parse()
                .map_err(|err| format!("{:?} in {line:?}: {err}", words[index]))
        };
        Ok(Self {
            requests_ok: number(2)?,
            requests_failed: number(4)?,
            streams_ok: number(7)?,
            streams_broken: number(9)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_reads_back_as_written_and_nothing_else_does() {
        let tally = LoadTally {
            requests_ok: 443,
            requests_failed: 2,
            streams_ok: 3,
            streams_broken: 1,
        };
        assert_eq!(tally.to_string().parse::<LoadTally>(), Ok(tally));
        for bad in [
            "",
            "requests ok 1 failed 2",
            "requests ok x failed 0 streams ok 0 broken 0",
        ] {
            assert!(bad.parse::<LoadTally>().is_err(), "{bad:?}");
        }
    }
}
