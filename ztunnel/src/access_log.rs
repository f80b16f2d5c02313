//! The access log: one JSON object per line, per connection (proxied,
//! denied or failed), written when it ends (`--access-log`: `-` for stdout,
//! a file path, or `off`). Entries are made by [`crate::proxy::record`].

use std::{
    fs::OpenOptions,
    io::{self, Write},
    net::SocketAddr,
    path::Path,
    sync::Mutex,
    time::SystemTime,
};

use serde::Serialize;

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
    /// The tunnel protocol (`native` or `hbone`), when it came or went
    /// through a tunnel.
    pub tunnel_protocol: Option<&'static str>,
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
    /// The policy decision: `allow` or `deny` where this node decided (the
    /// destination side, and both sides on one node), else `-`.
    pub decision: &'static str,
    /// Istio's `response_flags`: `-`, or why the connection failed (`DENY`,
    /// `CONNECT`, `TLS_FAILURE`, `IDENTITY_ERROR`).
    pub response_flags: &'static str,
    /// How it ended: `closed`, or the reason it was cut or failed.
    pub end: String,
}

/// `t` as RFC 3339 in UTC, the access log's `time`.
pub fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
