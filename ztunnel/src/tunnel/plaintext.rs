//! The benchmark relay: the tunnel's preambles and chunks over plain TCP,
//! without TLS.
//!
//! It exists to measure what the proxy hops cost apart from cryptography
//! (`ztunnel node --benchmark-plaintext-tunnel`, used by `cargo xtask bench`).
//! It proves nothing: the destination takes the source's identity from the
//! registry entry of the address the connection comes from. Never for real
//! traffic; the daemon says so loudly when it runs in this mode.

/// How connections between daemons are carried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Transport {
    /// Mutual TLS 1.3 with verified workload identities (always, outside
    /// benchmarks).
    #[default]
    MutualTls,
    /// Plain TCP with the same preambles and chunks: for benchmarks only.
    PlaintextForBenchmarks,
}
