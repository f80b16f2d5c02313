//! The proxy: what happens to a connection once the daemon has accepted it.
//!
//! Each direction reads top to bottom in one function: accept, identify,
//! decide, connect, copy, record.

pub mod connect;
pub mod inbound;
pub mod outbound;
pub mod route;
