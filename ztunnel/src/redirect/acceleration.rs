//! Socket acceleration, seen from userspace: setting it up when the programs
//! load, whether it is on, and what the programs did
//! (`ebpf/programs/src/accelerate.rs` does the work), exported as metrics at
//! each scrape. See docs/acceleration.md.

use std::path::Path;

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, Map, MapData, PerCpuArray, SockHash},
    programs::SkMsg,
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
};

use super::{
    RedirectError,
    abi::{SockKey, accel_counter, map_names, program_names},
    kernel_layout::{SocketLayout, release_refusal, running_release},
    programs::{map_error, missing_map},
};

/// Socket acceleration between asking for it and the programs loading: the
/// running kernel's socket layout, or why it cannot run.
pub struct Prepared(Option<Result<SocketLayout, String>>);

/// Checks whether this kernel can run socket acceleration (when asked for)
/// and finds its socket layout.
pub fn prepare(accelerate: bool) -> Prepared {
    Prepared(
        accelerate.then(|| match release_refusal(&running_release()) {
            Some(refusal) => Err(refusal),
            None => SocketLayout::of_running_kernel().map_err(|err| err.to_string()),
        }),
    )
}

impl Prepared {
    /// Hands the socket layout to the programs as load-time constants.
    pub fn configure<'a>(&'a self, loader: &mut EbpfLoader<'a>) {
        if let Some(Ok(layout)) = &self.0 {
            loader
                .override_global("SOCK_RMEM_ALLOC_OFFSET", &layout.rmem_alloc, true)
                .override_global("TCP_WRITE_SEQ_OFFSET", &layout.write_seq, true)
                .override_global("TCP_COPIED_SEQ_OFFSET", &layout.copied_seq, true);
        }
    }

    /// Attaches `sk_msg` to the socket map of the loaded `ebpf`, if
    /// acceleration was asked for and can run; says whether it runs, and
    /// logs why not when it was asked for.
    pub fn start(self, ebpf: &mut Ebpf) -> Acceleration {
        let Some(layout) = self.0 else {
            return Acceleration::Off;
        };
        match layout.and_then(|_| attach_sk_msg(ebpf).map_err(|err| err.to_string())) {
            Ok(()) => Acceleration::On,
            Err(reason) => {
                tracing::warn!(
                    "socket acceleration is unavailable, the hops inside pods go through loopback \
                     TCP: {reason}"
                );
                Acceleration::Unavailable(reason)
            }
        }
    }
}

/// Loads `sk_msg` and attaches it to the `ACCELERATED` map. The attachment
/// lives in the pinned map: sockets that joined keep their program across a
/// restart, and the next daemon's attachment replaces this one.
fn attach_sk_msg(ebpf: &mut Ebpf) -> Result<(), RedirectError> {
    let failed = |message: String| RedirectError::Attach {
        program: program_names::SK_MSG,
        message,
    };
    let map = SockHash::<_, SockKey>::try_from(
        ebpf.map(map_names::ACCELERATED)
            .ok_or_else(|| missing_map(map_names::ACCELERATED))?,
    )
    .map_err(map_error(map_names::ACCELERATED))?;
    let map = map
        .fd()
        .try_clone()
        .map_err(|err| failed(err.to_string()))?;
    let program: &mut SkMsg = ebpf
        .program_mut(program_names::SK_MSG)
        .ok_or_else(|| RedirectError::Load(format!("program {} missing", program_names::SK_MSG)))?
        .try_into()
        .map_err(|err: aya::programs::ProgramError| failed(err.to_string()))?;
    program.load().map_err(|err| failed(err.to_string()))?;
    program
        .attach(&map)
        .map_err(|err| failed(err.to_string()))?;
    Ok(())
}

/// The entries of the pinned acceleration maps under a daemon's pin
/// directory, counted by walking their keys (for inspection and tests: once
/// the connections have closed, all are gone).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PinnedEntries {
    /// Sockets in `ACCELERATED` (the kernel removes each as it closes).
    pub accelerated: usize,
    /// Socket addresses in `SOCKETS` (removed by `sock_ops` at close).
    pub sockets: usize,
}

impl PinnedEntries {
    /// Counts the maps pinned in `pin_dir`.
    pub fn count(pin_dir: &Path) -> Result<Self, RedirectError> {
        let open =
            |name: &'static str| MapData::from_pin(pin_dir.join(name)).map_err(map_error(name));
        let accelerated: SockHash<MapData, SockKey> =
            SockHash::try_from(Map::SockHash(open(map_names::ACCELERATED)?))
                .map_err(map_error(map_names::ACCELERATED))?;
        let sockets: HashMap<MapData, SockKey, u64> =
            HashMap::try_from(Map::HashMap(open(map_names::SOCKETS)?))
                .map_err(map_error(map_names::SOCKETS))?;
        Ok(Self {
            accelerated: accelerated.keys().filter(Result::is_ok).count(),
            sockets: sockets.keys().filter(Result::is_ok).count(),
        })
    }
}

/// Whether the hops inside pods move their bytes socket to socket, and if
/// not, why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Acceleration {
    /// On: new connections' hops inside pods are accelerated.
    On,
    /// Turned off (`--no-socket-acceleration`).
    Off,
    /// Asked for, but this kernel cannot do it (the reason): the hops go
    /// through loopback TCP.
    Unavailable(String),
}

impl Acceleration {
    /// Whether new connections are accelerated.
    pub fn is_on(&self) -> bool {
        *self == Self::On
    }
}

/// What socket acceleration did since the programs were loaded, summed over
/// CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AccelerationCounts {
    /// Sockets that joined.
    pub sockets_joined: u64,
    /// Sockets that could not join: the map was full.
    pub sockets_refused: u64,
    /// Members that closed.
    pub sockets_left: u64,
    /// Bytes moved socket to socket.
    pub bytes_redirected: u64,
    /// Bytes members sent through TCP.
    pub bytes_through_tcp: u64,
}

/// The state of acceleration and the programs' counters.
pub struct AccelerationStats {
    state: Acceleration,
    counters: PerCpuArray<MapData, u64>,
}

impl std::fmt::Debug for AccelerationStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccelerationStats")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl AccelerationStats {
    /// The stats of `state`, read from the `ACCEL_COUNTERS` map.
    pub fn new(state: Acceleration, counters: PerCpuArray<MapData, u64>) -> Self {
        Self { state, counters }
    }

    /// The counters now.
    pub fn counts(&self) -> Result<AccelerationCounts, RedirectError> {
        let sum = |index: u32| -> Result<u64, RedirectError> {
            let values = self.counters.get(&index, 0).map_err(|err| {
                RedirectError::Map(format!("{}: {err}", map_names::ACCEL_COUNTERS))
            })?;
            Ok(values.iter().sum())
        };
        Ok(AccelerationCounts {
            sockets_joined: sum(accel_counter::SOCKETS_JOINED)?,
            sockets_refused: sum(accel_counter::SOCKETS_REFUSED)?,
            sockets_left: sum(accel_counter::SOCKETS_LEFT)?,
            bytes_redirected: sum(accel_counter::BYTES_REDIRECTED)?,
            bytes_through_tcp: sum(accel_counter::BYTES_THROUGH_TCP)?,
        })
    }
}

impl Collector for AccelerationStats {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let enabled = ConstGauge::new(i64::from(self.state.is_on()));
        enabled.encode(encoder.encode_descriptor(
            "ztunnel_socket_acceleration_enabled",
            "Whether the hops inside pods move their bytes socket to socket (1) or through \
             loopback TCP (0: turned off, or the kernel cannot)",
            None,
            enabled.metric_type(),
        )?)?;
        // A map that cannot be read leaves the counters out of this scrape.
        let Ok(counts) = self.counts() else {
            return Ok(());
        };
        let members = ConstGauge::new(
            i64::try_from(counts.sockets_joined.saturating_sub(counts.sockets_left))
                .unwrap_or(i64::MAX),
        );
        members.encode(encoder.encode_descriptor(
            "ztunnel_socket_acceleration_members",
            "Open sockets of hops inside pods whose sends are redirected socket to socket",
            None,
            members.metric_type(),
        )?)?;
        let mut sockets = encoder.encode_descriptor(
            "ztunnel_socket_acceleration_sockets",
            "Sockets of hops inside pods, by event: joined acceleration, refused (the map was \
             full: the connection stays on TCP), left (closed)",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (event, value) in [
            ("joined", counts.sockets_joined),
            ("refused", counts.sockets_refused),
            ("left", counts.sockets_left),
        ] {
            ConstCounter::new(value).encode(sockets.encode_family(&[("event", event)])?)?;
        }
        let mut bytes = encoder.encode_descriptor(
            "ztunnel_socket_acceleration_bytes",
            "Bytes sent by accelerated sockets, by path: redirected (socket to socket) or tcp \
             (the peer had not joined, held too many unread bytes, or had TCP bytes to read first)",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (path, value) in [
            ("redirected", counts.bytes_redirected),
            ("tcp", counts.bytes_through_tcp),
        ] {
            ConstCounter::new(value).encode(bytes.encode_family(&[("path", path)])?)?;
        }
        Ok(())
    }
}
