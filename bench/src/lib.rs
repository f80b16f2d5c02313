//! Benchmarks of the mesh: what it costs next to the same pods without it,
//! measured in one run so machine drift cancels out.
//!
//! - [`loadgen`]: the load generator run inside pods (`ztunnel-loadgen`).
//! - [`harness`]: the scenarios, the measurements and the report
//!   (`ztunnel-bench`, run by `cargo xtask bench`).
//! - [`scale`]: cost as the cluster grows (`ztunnel-bench scale`, run by
//!   `cargo xtask bench scale`).

pub mod harness;
pub mod loadgen;
pub mod scale;
