//! The tunnel between node daemons: mutual TLS 1.3 (configured in
//! [`crate::tls`]) carrying one proxied connection, announced by a
//! [`preamble`]. Wiring into the proxy comes next.

pub mod preamble;
