//! The access log: one JSON object per line, per proxied connection, written
//! when the connection closes (`--access-log`: `-` for stdout, a file path,
//! or `off`).

use std::{
    fs::OpenOptions,
    io::{self, Write},
    net::SocketAddr,
    path::Path,
    sync::Mutex,
    time::{Duration, SystemTime},
};

use serde::Serialize;

use crate::{metrics::TcpLabels, tunnel::Session};

/// Where access-log lines go.
pub struct AccessLog {
    out: Option<Mutex<Box<dyn Write + Send>>>,
}

impl AccessLog {
    /// Opens the log named by `target`: `-` (stdout), `off`, or a file
    /// (appended to, created 0640).
    pub fn open(target: &str) -> io::Result<Self> {
        let out: Option<Box<dyn Write + Send>> = match target {
            "off" => None,
            "-" => Some(Box::new(io::stdout())),
            path => {
                use std::os::unix::fs::OpenOptionsExt;
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o640)
                    .open(Path::new(path))?;
                Some(Box::new(io::LineWriter::new(file)))
            }
        };
        Ok(Self {
            out: out.map(Mutex::new),
        })
    }

    /// Writes `entry` as one line. A failed write is reported on the daemon's
    /// log, never to the connection.
    pub fn write(&self, entry: &Entry<'_>) {
        let Some(out) = &self.out else { return };
        let mut line = match serde_json::to_vec(entry) {
            Ok(line) => line,
            Err(err) => {
                tracing::warn!("cannot encode an access-log entry: {err}");
                return;
            }
        };
        line.push(b'\n');
        let mut out = out.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(err) = out.write_all(&line).and_then(|()| out.flush()) {
            tracing::warn!("cannot write the access log: {err}");
        }
    }
}

/// One connection, as the access log records it.
#[derive(Debug, Serialize)]
pub struct Entry<'a> {
    /// When it closed (RFC 3339, UTC).
    pub time: String,
    /// `source` (the client's node) or `destination` (the server's).
    pub reporter: &'static str,
    /// `tunnel`, `local`, `passthrough` (source side) or `inbound_tunnel`,
    /// `inbound_plaintext` (destination side).
    pub route: &'static str,
    /// The client's address.
    pub src_addr: SocketAddr,
    /// Source workload, namespace and identity (`unknown` when not known).
    pub src_workload: &'a str,
    /// Source namespace.
    pub src_namespace: &'a str,
    /// Source SPIFFE identity.
    pub src_identity: &'a str,
    /// The destination the client asked for.
    pub dst_addr: SocketAddr,
    /// Where it was sent (a service VIP resolves to an endpoint).
    pub dst_endpoint: SocketAddr,
    /// Destination workload.
    pub dst_workload: &'a str,
    /// Destination namespace.
    pub dst_namespace: &'a str,
    /// Destination SPIFFE identity.
    pub dst_identity: &'a str,
    /// Destination service host, or `unknown`.
    pub dst_service: &'a str,
    /// `TLSv1.3` for tunnelled connections.
    pub tls_version: Option<&'static str>,
    /// The negotiated cipher suite.
    pub tls_cipher: Option<&'a str>,
    /// Whether the TLS session was resumed.
    pub tls_resumed: Option<bool>,
    /// Whether the connection rode a tunnel an earlier connection opened
    /// (no handshake of its own).
    pub tunnel_reused: Option<bool>,
    /// Bytes sent to the client.
    pub bytes_sent: u64,
    /// Bytes received from the client.
    pub bytes_received: u64,
    /// How long it was open, in milliseconds.
    pub duration_ms: u64,
    /// The policy decision (`allow`; the destination side decides, so the
    /// source side of a tunnel records `-`).
    pub decision: &'static str,
    /// Why it ended.
    pub end: String,
}

/// A connection's addresses.
#[derive(Clone, Copy, Debug)]
pub struct Addresses {
    /// The client's.
    pub src: SocketAddr,
    /// What the client asked for.
    pub dst: SocketAddr,
    /// Where it was sent.
    pub endpoint: SocketAddr,
}

impl<'a> Entry<'a> {
    /// An entry with the workload fields of `labels`; `bytes` are (sent to,
    /// received from) the client.
    pub fn new(
        labels: &'a TcpLabels,
        route: &'static str,
        addresses: Addresses,
        bytes: (u64, u64),
        duration: Duration,
        end: String,
    ) -> Self {
        let Addresses {
            src: src_addr,
            dst: dst_addr,
            endpoint: dst_endpoint,
        } = addresses;
        Self {
            time: rfc3339(SystemTime::now()),
            reporter: labels.reporter,
            route,
            src_addr,
            src_workload: &labels.source_workload,
            src_namespace: &labels.source_workload_namespace,
            src_identity: &labels.source_principal,
            dst_addr,
            dst_endpoint,
            dst_workload: &labels.destination_workload,
            dst_namespace: &labels.destination_workload_namespace,
            dst_identity: &labels.destination_principal,
            dst_service: &labels.destination_service,
            tls_version: None,
            tls_cipher: None,
            tls_resumed: None,
            tunnel_reused: None,
            bytes_sent: bytes.0,
            bytes_received: bytes.1,
            duration_ms: duration.as_millis() as u64,
            decision: if labels.reporter == "destination" || route == "local" {
                "allow"
            } else {
                "-"
            },
            end,
        }
    }

    /// Adds the facts of the TLS session that carried the connection.
    pub fn with_tls(mut self, session: &'a Session) -> Self {
        self.tls_version = Some("TLSv1.3");
        self.tls_cipher = Some(&session.cipher);
        self.tls_resumed = Some(session.resumed);
        self.tunnel_reused = Some(session.reused);
        self
    }
}

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
