//! What rustls' buffered API costs on the receive side of a tunnel, next to
//! its unbuffered API, in one process (issue 19: "measure whether the
//! unbuffered API or larger reads remove the memmove").
//!
//! Both variants receive the same TLS 1.3 stream (16 KiB AES-GCM records,
//! produced in memory by a rustls client) the way a daemon receives a
//! tunnel: the socket's bytes arrive in [`SOCKET_READ`]-sized reads (here a
//! `memcpy` from the recorded stream stands in for the kernel's copy, the
//! same in both), and the plaintext ends up in a slice the daemon would hand
//! to `write(2)`:
//!
//! - `buffered` is today's path (the daemon's `tunnel::read_ahead` feeding
//!   `ServerConnection::read_tls`, then `Reader::read` into the copy loop's
//!   buffer): rustls copies the bytes into its deframer buffer (4 KiB per
//!   `read_tls`), moves each decrypted record into its plaintext queue and
//!   copies it out again;
//! - `buffered_fill_buf` is the same, but the plaintext is borrowed with
//!   `BufRead::fill_buf` instead of copied out;
//! - `unbuffered` decrypts each record in place in the read buffer
//!   (`UnbufferedServerConnection`) and borrows the plaintext from there.
//!
//! Rounds are interleaved; the report is CPU time per GB received, each
//! variant as a ratio to `buffered`. Run with
//! `cargo run --release -p ztunnel-bench --bin ztunnel-tls-receive`.

use std::{
    hint::black_box,
    io::{BufRead, Read, Write},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use rustls::{
    ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName},
    server::UnbufferedServerConnection,
    unbuffered::{ConnectionState, EncodeError, UnbufferedStatus},
};

/// How many bytes one `read(2)` of the tunnel socket returns (the daemon's
/// read-ahead buffer size).
const SOCKET_READ: usize = 64 * 1024;
/// Plaintext sent per connection.
const STREAM: usize = 64 * 1024 * 1024;
/// Interleaved rounds; each variant receives one stream per round.
const ROUNDS: usize = 15;

fn main() -> anyhow::Result<()> {
    let (client_config, server_config) = configs()?;
    let mut seconds = [Vec::new(), Vec::new(), Vec::new()];
    let names = ["buffered", "buffered_fill_buf", "unbuffered"];
    for _ in 0..ROUNDS {
        for (variant, times) in seconds.iter_mut().enumerate() {
            let elapsed = match variant {
                0 | 1 => {
                    let (mut server, wire) = buffered_pair(&client_config, &server_config)?;
                    receive_buffered(&mut server, &wire, variant == 1)?
                }
                _ => {
                    let (mut server, wire) = unbuffered_pair(&client_config, &server_config)?;
                    receive_unbuffered(&mut server, wire)?
                }
            };
            times.push(elapsed.as_secs_f64());
        }
    }
    let per_gb = |times: &mut Vec<f64>| {
        times.sort_by(f64::total_cmp);
        times[times.len() / 2] * 1e9 / STREAM as f64
    };
    let baseline = per_gb(&mut seconds[0].clone());
    println!(
        "receive side of a TLS 1.3 tunnel, {} MiB per stream, {ROUNDS} rounds (median):",
        STREAM >> 20
    );
    for (name, times) in names.iter().zip(seconds.iter_mut()) {
        let cost = per_gb(times);
        println!(
            "  {name:<18} {cost:.3} CPU-s/GB  {:.2}x buffered",
            cost / baseline
        );
    }
    Ok(())
}

/// A self-signed server certificate and configurations that trust it; no
/// session tickets, so the stream after the handshake is application data
/// only.
fn configs() -> anyhow::Result<(Arc<ClientConfig>, Arc<ServerConfig>)> {
    let certified = rcgen::generate_simple_self_signed(vec!["tunnel.local".to_owned()])?;
    let cert = CertificateDer::from(certified.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let mut roots = RootCertStore::empty();
    roots.add(cert.clone())?;
    let client = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut server = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)?;
    server.send_tls13_tickets = 0;
    Ok((Arc::new(client), Arc::new(server)))
}

fn client(config: &Arc<ClientConfig>) -> anyhow::Result<ClientConnection> {
    Ok(ClientConnection::new(
        config.clone(),
        ServerName::try_from("tunnel.local")?,
    )?)
}

/// [`STREAM`] bytes of plaintext written by `client` in 64 KiB writes, as
/// TLS records on the wire.
fn record_stream(client: &mut ClientConnection) -> anyhow::Result<Vec<u8>> {
    let chunk = vec![0x5a; 64 * 1024];
    let mut wire = Vec::with_capacity(STREAM + STREAM / 512);
    for _ in 0..STREAM / chunk.len() {
        client.writer().write_all(&chunk)?;
        while client.wants_write() {
            client.write_tls(&mut wire)?;
        }
    }
    Ok(wire)
}

/// A handshaken buffered server and the application data its client sent.
fn buffered_pair(
    client_config: &Arc<ClientConfig>,
    server_config: &Arc<ServerConfig>,
) -> anyhow::Result<(ServerConnection, Vec<u8>)> {
    let mut client = client(client_config)?;
    let mut server = ServerConnection::new(server_config.clone())?;
    while client.is_handshaking() || server.is_handshaking() {
        let mut flight = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut flight)?;
        }
        server.read_tls(&mut flight.as_slice())?;
        server.process_new_packets()?;
        let mut flight = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut flight)?;
        }
        client.read_tls(&mut flight.as_slice())?;
        client.process_new_packets()?;
    }
    let wire = record_stream(&mut client)?;
    Ok((server, wire))
}

/// Receives `wire` as the daemon does today; with `borrow`, takes the
/// plaintext with `fill_buf` instead of `read`.
fn receive_buffered(
    server: &mut ServerConnection,
    wire: &[u8],
    borrow: bool,
) -> anyhow::Result<Duration> {
    let mut socket_buffer = vec![0u8; SOCKET_READ];
    let mut copy_buffer = vec![0u8; SOCKET_READ];
    let mut received = 0;
    let started = Instant::now();
    for arrived in wire.chunks(SOCKET_READ) {
        // The kernel's copy into the read-ahead buffer.
        socket_buffer[..arrived.len()].copy_from_slice(arrived);
        let mut unread = &socket_buffer[..arrived.len()];
        while !unread.is_empty() {
            server.read_tls(&mut unread)?;
            server.process_new_packets()?;
            let mut reader = server.reader();
            loop {
                let taken = if borrow {
                    match reader.fill_buf() {
                        Ok(plaintext) if !plaintext.is_empty() => {
                            let len = black_box(plaintext).len();
                            reader.consume(len);
                            len
                        }
                        _ => break,
                    }
                } else {
                    match reader.read(&mut copy_buffer) {
                        Ok(len) if len > 0 => black_box(&copy_buffer[..len]).len(),
                        _ => break,
                    }
                };
                received += taken;
            }
        }
    }
    let elapsed = started.elapsed();
    if received != STREAM {
        bail!("buffered: received {received} of {STREAM} bytes");
    }
    Ok(elapsed)
}

/// A handshaken unbuffered server and the application data its client sent.
fn unbuffered_pair(
    client_config: &Arc<ClientConfig>,
    server_config: &Arc<ServerConfig>,
) -> anyhow::Result<(UnbufferedServerConnection, Vec<u8>)> {
    let mut client = client(client_config)?;
    let mut server = UnbufferedServerConnection::new(server_config.clone())?;
    let mut incoming = Vec::new();
    let mut outgoing = vec![0u8; 16 * 1024];
    let mut outgoing_used = 0;
    loop {
        while client.wants_write() {
            client.write_tls(&mut incoming)?;
        }
        let UnbufferedStatus { discard, state } = server.process_tls_records(&mut incoming);
        let state = state.context("unbuffered handshake")?;
        let mut blocked = false;
        let mut done = false;
        match state {
            ConnectionState::EncodeTlsData(mut state) => {
                match state.encode(&mut outgoing[outgoing_used..]) {
                    Ok(written) => outgoing_used += written,
                    Err(EncodeError::InsufficientSize(size)) => {
                        bail!("handshake flight needs {} bytes", size.required_size)
                    }
                    Err(err) => return Err(err.into()),
                }
            }
            ConnectionState::TransmitTlsData(state) => {
                client.read_tls(&mut &outgoing[..outgoing_used])?;
                client.process_new_packets()?;
                outgoing_used = 0;
                state.done();
            }
            ConnectionState::BlockedHandshake => blocked = true,
            ConnectionState::WriteTraffic(_) => done = true,
            other => bail!("unexpected state during the handshake: {other:?}"),
        }
        incoming.drain(..discard);
        if done && !client.is_handshaking() {
            break;
        }
        if blocked && !client.wants_write() {
            bail!("the handshake stalled");
        }
    }
    let wire = record_stream(&mut client)?;
    Ok((server, wire))
}

/// Receives `wire` decrypting in place in the read buffer.
fn receive_unbuffered(
    server: &mut UnbufferedServerConnection,
    wire: Vec<u8>,
) -> anyhow::Result<Duration> {
    // Room for a socket read beside a partial record.
    let mut buffer = vec![0u8; SOCKET_READ + 17 * 1024];
    let mut used = 0;
    let mut received = 0;
    let started = Instant::now();
    for arrived in wire.chunks(SOCKET_READ) {
        buffer[used..used + arrived.len()].copy_from_slice(arrived);
        used += arrived.len();
        let mut discard = 0;
        loop {
            let UnbufferedStatus {
                discard: handled,
                state,
            } = server.process_tls_records(&mut buffer[discard..used]);
            discard += handled;
            match state? {
                ConnectionState::ReadTraffic(mut records) => {
                    while let Some(record) = records.next_record() {
                        let record = record?;
                        discard += record.discard;
                        received += black_box(record.payload).len();
                    }
                }
                // Nothing more to decrypt until more bytes arrive.
                ConnectionState::WriteTraffic(_) => break,
                other => bail!("unexpected state receiving: {other:?}"),
            }
        }
        buffer.copy_within(discard..used, 0);
        used -= discard;
    }
    let elapsed = started.elapsed();
    if received != STREAM {
        bail!("unbuffered: received {received} of {STREAM} bytes");
    }
    Ok(elapsed)
}
