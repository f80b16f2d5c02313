//! Traffic capture: the eBPF programs that steer enrolled pods' TCP
//! connections into the node daemon, and the daemon's sockets inside pods.
//!
//! The programs live in `ebpf/programs`; the types they share with this
//! module live in `ebpf/common` (re-exported here as [`abi`]).

pub mod acceleration;
pub mod handover;
pub mod kernel_layout;
pub mod listeners;
pub mod netns;
pub mod programs;
pub mod socket_options;
pub mod transparent;

pub use ztunnel_ebpf_common as abi;

/// Why capture could not be set up or changed.
#[derive(Debug, thiserror::Error)]
pub enum RedirectError {
    /// The eBPF object could not be loaded (the verifier's log is in the message).
    #[error("loading the eBPF programs: {0}")]
    Load(String),
    /// A program could not be loaded or attached.
    #[error("attaching eBPF program {program}: {message}")]
    Attach {
        /// The program.
        program: &'static str,
        /// The kernel's or aya's explanation.
        message: String,
    },
    /// A map update failed.
    #[error("updating an eBPF map: {0}")]
    Map(String),
    /// No cgroup v2 hierarchy is mounted.
    #[error("no cgroup2 filesystem is mounted (see /proc/mounts): the programs attach at its root")]
    NoCgroup2,
    /// A file or socket operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        source: std::io::Error,
    },
}
