//! Workload identity: SPIFFE IDs, and (in this module's other files) the
//! certificates that prove them.

mod spiffe;

pub use spiffe::{Identity, SpiffeError, TrustDomain};
