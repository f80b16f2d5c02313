//! ztunnel: a node-level "ambient" zero-trust proxy.
//!
//! One daemon per node holds a SPIFFE identity for every ServiceAccount with a
//! pod on the node and carries every TCP connection between enrolled pods
//! inside mutual TLS 1.3. In-kernel eBPF programs steer the pods' traffic to
//! it; policy is Istio's YAML, enforced at L4.
//!
//! The crate is organised by concern, in the order a connection meets them
//! (see `ARCHITECTURE.md` for the whole path):
//!
//! - [`redirect`]: the eBPF programs that capture enrolled pods' connections.
//! - [`proxy`]: what happens to a captured connection.
//! - [`buffers`]: the copy buffers connections borrow while bytes move.
//! - [`identity`]: SPIFFE workload identities and their certificates.
//! - [`ca`]: the certificate authority (`ztunnel ca`), speaking Istio's CA API.
//! - [`tls`]: every rustls configuration, in one place.
//! - [`tunnel`]: what travels between node daemons inside TLS.
//! - [`reload`]: files reloaded when they change.
//! - [`policy`]: Istio PeerAuthentication and AuthorizationPolicy at L4.
//! - [`node`]: the node daemon (`ztunnel node`), wiring the parts together.
//! - [`admin`]: the admin endpoint (readiness, certificates).
//! - [`ctl`]: `ztunnel ctl`, troubleshooting through the admin endpoint.
//! - [`metrics`]: Prometheus metrics with Istio's names.
//! - [`access_log`]: one JSON line per connection.
//! - [`registry`]: the workloads, namespaces and services the daemon acts on.
//! - [`kubernetes`]: the registry and the policies from the Kubernetes API.

// The daemon never unwraps: bad input gets a typed error, never a panic.
// `unsafe` only at the kernel boundary (`redirect::netns`), where it is allowed explicitly.
#![deny(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod accept;
pub mod access_log;
pub mod admin;
pub mod buffers;
pub mod ca;
pub mod ctl;
pub mod identity;
pub mod kubernetes;
pub mod log_rate;
pub mod memory;
pub mod metrics;
pub mod node;
pub mod policy;
pub mod proxy;
pub mod redirect;
pub mod registry;
pub mod reload;
pub mod tls;
pub mod tunnel;
