//! Traffic capture: the eBPF programs that steer enrolled pods' TCP
//! connections into the node daemon, and their lifecycle in userspace.
//!
//! The programs themselves live in `ebpf/programs`; the types they share
//! with this module live in `ebpf/common` (re-exported here as [`abi`]).

pub mod program;

pub use ztunnel_ebpf_common as abi;
