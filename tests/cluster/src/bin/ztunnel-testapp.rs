//! A small application for pods: an HTTP/1.1 server whose responses can be
//! verified byte for byte.
//!
//! - `GET /` answers `hello from <name>`.
//! - `GET /peer` answers the client's address as the server sees it.
//! - `GET /bytes/<n>` answers the `n`-byte [`Payload`], whose SHA-256 the
//!   checker computes on its side.
//!
//! It prints `listening on <addr>` once bound, and serves until killed.
//!
//! Raw TCP servers, for what HTTP cannot show:
//! - `echo` reads until the client shuts down writing, then sends back
//!   everything it read and closes (half-close);
//! - `reset` reads one chunk, then closes with a reset (RST);
//! - `deaf` shuts down writing at once and never reads, holding the
//!   connection open for a minute;
//! - `mirror` sends back everything as it arrives, until the client ends;
//! - `stall --seconds S` reads nothing for S seconds, then reads to the end,
//!   checks every byte against what `push` sends, and answers `ok N` (or
//!   where the bytes first differ).
//!
//! As a client:
//! - `probe <addr> [--mark M]` connects (from a socket with `SO_MARK` M) and
//!   prints what `getpeername()` and `getsockname()` say
//!   (`peer=<addr> local=<addr>`);
//! - `hold <addr> --connections N` opens N connections (256 at a time), prints
//!   `held X failed Y` and keeps them, sending nothing, until stdin closes;
//! - `burst <addr> --connections N --concurrency C` sends `GET /` on N
//!   short connections, C at a time, each shut down for writing after the
//!   request, and prints `ok X failed Y` (the first errors on stderr);
//! - `fetch <addr> --bytes N --connections C` opens C connections at once,
//!   fetches `/bytes/N` on each, checks every body, and prints `ok C`;
//! - `half-close <addr> --bytes N` sends N payload bytes to an `echo`
//!   server, shuts down writing, reads the whole reply, checks it, and prints
//!   `ok N`;
//! - `send <addr>` sends a line and waits for the reply; prints `reset` if the
//!   connection is reset, `closed` on a clean end;
//! - `flood <addr> --bytes N` sends N bytes whether or not the peer reads
//!   them (within 5 s), shuts down writing, waits for the end and prints
//!   `sent N`;
//! - `push <addr> --seconds T` sends an endless payload for T seconds, as
//!   fast as the way takes it, shuts down writing, and prints `accepted X`
//!   and the server's answer (to a `stall` server: `ok X` if every byte
//!   arrived intact);
//! - `hbone <daemon addr> --server <spiffe id> --cert C --key K --roots R
//!   --echo <authority>... [--flood <authority>]` opens one HBONE connection
//!   (mutual TLS, ALPN `h2`) as Istio's ztunnel would, a `CONNECT` stream per
//!   `--echo` authority (payload, half-close, whole reply) and one sending
//!   without reading to `--flood`, all at once; prints `echo <authority>
//!   200 <bytes> <sha256> <baggage>` | `refused <status>` | `reset` per stream, and
//!   `flood <authority> stalled <bytes>`;
//! - `waypoint --name N --cert C --key K --roots R` plays an Istio waypoint
//!   on port 15008: answers every HBONE `CONNECT` with 200 and an HTTP reply
//!   `via waypoint N to <authority> from <client identity> baggage <baggage>`;
//! - `load <http addr> <mirror addr> --rate R --streams S` sends `GET /` on a
//!   new connection R times a second and keeps S streams to a `mirror`
//!   server, checking every echoed byte, until stdin closes; then prints
//!   `requests ok X failed Y streams ok A broken B`.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use ztunnel_cluster::{
    credentials::Credentials,
    fake_waypoint,
    hbone_client::{self, Outcome},
    load_tally::LoadTally,
    payload::Payload,
};

/// An HBONE stream's outcome as `hbone` prints it: `200 <bytes> <sha256>`,
/// `refused <status>`, `reset` or `stalled <bytes>`.
fn describe(outcome: Outcome) -> String {
    match outcome {
        Outcome::Echoed {
            received,
            sha256,
            baggage,
        } => format!("200 {received} {sha256} {baggage}"),
        Outcome::Refused(status) => format!("refused {status}"),
        Outcome::Reset => "reset".to_owned(),
        Outcome::Stalled { sent } => format!("stalled {sent}"),
    }
}

#[derive(Parser)]
#[command(
    name = "ztunnel-testapp",
    about = "Test application for pods of the local cluster"
)]
struct Cli {
    #[command(subcommand)]
    app: App,
}

#[derive(Subcommand)]
enum App {
    /// HTTP/1.1 server (`GET /`, `GET /bytes/<n>`).
    Http {
        /// Address to listen on; `[::]` accepts IPv4 and IPv6.
        #[arg(long, default_value = "[::]:8080")]
        listen: SocketAddr,
        /// Name to answer `GET /` with.
        #[arg(long, default_value = "testapp")]
        name: String,
    },
    /// Raw TCP: read until end-of-stream, then send everything back.
    Echo {
        /// Address to listen on.
        #[arg(long, default_value = "[::]:9000")]
        listen: SocketAddr,
    },
    /// Raw TCP: send back everything as it arrives, until the client ends.
    Mirror {
        /// Address to listen on.
        #[arg(long, default_value = "[::]:9003")]
        listen: SocketAddr,
    },
    /// Raw TCP: read one chunk, then close with a reset.
    Reset {
        /// Address to listen on.
        #[arg(long, default_value = "[::]:9001")]
        listen: SocketAddr,
    },
    /// Raw TCP: shut down writing at once, never read, close after a minute.
    Deaf {
        /// Address to listen on.
        #[arg(long, default_value = "[::]:9002")]
        listen: SocketAddr,
    },
    /// Raw TCP: read nothing for a while, then read to the end, check every
    /// byte against `push`'s payload and answer `ok N`.
    Stall {
        /// Address to listen on.
        #[arg(long, default_value = "[::]:9004")]
        listen: SocketAddr,
        /// Seconds before reading.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
    /// Send an endless payload for T seconds, shut down writing, print how
    /// much the way took and the server's answer.
    Push {
        /// `host:port` of a `stall` test app.
        address: SocketAddr,
        /// Seconds to send for.
        #[arg(long, default_value_t = 3)]
        seconds: u64,
    },
    /// Send N bytes (the peer need not read them), shut down writing, wait
    /// for the end.
    Flood {
        /// `host:port` to connect to.
        address: SocketAddr,
        /// Bytes to send.
        #[arg(long, default_value_t = 256 * 1024)]
        bytes: u64,
    },
    /// Send N bytes to an `echo` server, shut down writing, check the reply.
    HalfClose {
        /// `host:port` of an `echo` test app.
        address: SocketAddr,
        /// Bytes to send.
        #[arg(long, default_value_t = 1024 * 1024)]
        bytes: u64,
    },
    /// Send a line, then report how the connection ended: `reset` or `closed`.
    Send {
        /// `host:port` to connect to.
        address: SocketAddr,
    },
    /// Connect to an address and print the socket's peer and local addresses.
    Probe {
        /// `host:port` to connect to.
        address: SocketAddr,
        /// `SO_MARK` of the socket (decimal or `0x` hex; needs CAP_NET_ADMIN).
        #[arg(long, value_parser = parse_mark)]
        mark: Option<u32>,
    },
    /// Open many connections and keep them idle until stdin closes.
    Hold {
        /// `host:port` to connect to.
        address: SocketAddr,
        /// Connections to open.
        #[arg(long, default_value_t = 1000)]
        connections: usize,
    },
    /// `GET /` on many short connections, a few at a time; count failures.
    Burst {
        /// `host:port` of an `http` test app.
        address: SocketAddr,
        /// Connections in all, one request each.
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// Connections open at once.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
    /// Until stdin closes: `GET /` on a new connection at a fixed rate, and
    /// long-lived streams to a `mirror` server whose echoes are checked byte
    /// for byte; then the tally.
    Load {
        /// `host:port` of an `http` test app.
        http: SocketAddr,
        /// `host:port` of a `mirror` test app.
        mirror: SocketAddr,
        /// Requests per second, each on a new connection.
        #[arg(long, default_value_t = 50)]
        rate: u32,
        /// Long-lived streams.
        #[arg(long, default_value_t = 3)]
        streams: usize,
    },
    /// As Istio's ztunnel would: one HBONE connection to a daemon's tunnel
    /// port, `CONNECT` streams on it all at once; one line per stream.
    Hbone {
        /// The daemon's tunnel address (`<pod ip>:15008`).
        daemon: SocketAddr,
        /// The SPIFFE identity the daemon must prove.
        #[arg(long)]
        server: String,
        /// This client's certificate, key and trusted roots.
        #[command(flatten)]
        credentials: Credentials,
        /// A stream to an `echo` app at this authority (repeatable).
        #[arg(long)]
        echo: Vec<String>,
        /// Payload bytes per echo stream.
        #[arg(long, default_value_t = 100_000)]
        bytes: u64,
        /// A stream sending to this authority without reading (a `deaf` app).
        #[arg(long)]
        flood: Option<String>,
    },
    /// A stand-in for an Istio waypoint: an HBONE server answering each
    /// `CONNECT` with which waypoint, authority and client it saw.
    Waypoint {
        /// Where to listen.
        #[arg(long, default_value = "[::]:15008")]
        listen: SocketAddr,
        /// The waypoint's name, in its answers.
        #[arg(long)]
        name: String,
        /// Its certificate, key and the roots it trusts for clients.
        #[command(flatten)]
        credentials: Credentials,
    },
    /// Fetch `/bytes/<n>` over many concurrent connections and verify each body.
    Fetch {
        /// `host:port` of an `http` test app.
        address: SocketAddr,
        /// Body size per connection.
        #[arg(long, default_value_t = 1024)]
        bytes: u64,
        /// Connections, all open at once.
        #[arg(long, default_value_t = 100)]
        connections: usize,
    },
}

/// Largest request head accepted.
const MAX_HEAD: usize = 8 * 1024;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    // Many concurrent connections need more than the usual 1024 descriptors.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    match Cli::parse().app {
        App::Http { listen, name } => http(listen, name).await,
        App::Probe { address, mark } => {
            let socket = socket2::Socket::new(
                socket2::Domain::for_address(address),
                socket2::Type::STREAM,
                None,
            )?;
            if let Some(mark) = mark {
                socket.set_mark(mark).context("setting SO_MARK")?;
            }
            socket
                .connect(&address.into())
                .with_context(|| format!("connecting to {address}"))?;
            let stream = std::net::TcpStream::from(socket);
            println!(
                "peer={} local={}",
                stream.peer_addr()?,
                stream.local_addr()?
            );
            Ok(())
        }
        App::Burst {
            address,
            connections,
            concurrency,
        } => burst(address, connections, concurrency).await,
        App::Hold {
            address,
            connections,
        } => hold(address, connections).await,
        App::Hbone {
            daemon,
            server,
            credentials,
            echo,
            bytes,
            flood,
        } => {
            let client = hbone_client::Client::connect(daemon, &credentials, &server).await?;
            let flooding = async {
                match &flood {
                    Some(authority) => Some(client.flood(authority, 1 << 30).await),
                    None => None,
                }
            };
            let echoes = futures_util::future::join_all(
                echo.iter().map(|authority| client.echo(authority, bytes)),
            );
            let (flooded, echoed) = tokio::join!(flooding, echoes);
            for (authority, outcome) in echo.iter().zip(echoed) {
                println!("echo {authority} {}", describe(outcome?));
            }
            if let Some(outcome) = flooded {
                println!("flood {} {}", flood.unwrap_or_default(), describe(outcome?));
            }
            Ok(())
        }
        App::Waypoint {
            listen,
            name,
            credentials,
        } => fake_waypoint::serve(listen, name, &credentials).await,
        App::Fetch {
            address,
            bytes,
            connections,
        } => fetch(address, bytes, connections).await,
        App::Echo { listen } => raw_server(listen, echo).await,
        App::Mirror { listen } => raw_server(listen, mirror).await,
        App::Load {
            http,
            mirror,
            rate,
            streams,
        } => load(http, mirror, rate, streams).await,
        App::Reset { listen } => raw_server(listen, reset).await,
        App::HalfClose { address, bytes } => half_close(address, bytes).await,
        App::Send { address } => send(address).await,
        App::Deaf { listen } => raw_server(listen, deaf).await,
        App::Flood { address, bytes } => flood(address, bytes).await,
        App::Stall { listen, seconds } => {
            raw_server(listen, move |stream| stall(stream, seconds)).await
        }
        App::Push { address, seconds } => push(address, seconds).await,
    }
}

/// The payload `push` sends: endless (its length never reached).
fn endless_payload() -> Payload {
    Payload::new(u64::MAX)
}

async fn stall(mut stream: TcpStream, seconds: u64) -> Result<()> {
    tokio::time::sleep(std::time::Duration::from_secs(seconds)).await;
    let mut expected = endless_payload();
    let (mut got, mut want) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    let mut total: u64 = 0;
    let verdict = loop {
        let n = stream.read(&mut got).await?;
        if n == 0 {
            break format!("ok {total}");
        }
        expected.fill(&mut want[..n]);
        if let Some(at) = got[..n].iter().zip(&want[..n]).position(|(a, b)| a != b) {
            break format!("differs at byte {}", total + at as u64);
        }
        total += n as u64;
    };
    stream.write_all(verdict.as_bytes()).await?;
    stream.shutdown().await?;
    Ok(())
}

async fn push(address: SocketAddr, seconds: u64) -> Result<()> {
    let mut stream = TcpStream::connect(address)
        .await
        .with_context(|| format!("connecting to {address}"))?;
    let mut payload = endless_payload();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut accepted: u64 = 0;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(seconds);
    'sending: loop {
        payload.fill(&mut chunk);
        let mut sent = 0;
        while sent < chunk.len() {
            // Each write counts exactly what the socket took before the deadline.
            match tokio::time::timeout_at(deadline, stream.write(&chunk[sent..])).await {
                Ok(written) => sent += written?,
                Err(_) => {
                    accepted += sent as u64;
                    break 'sending;
                }
            }
        }
        accepted += sent as u64;
    }
    stream.shutdown().await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    println!("accepted {accepted} {answer}");
    Ok(())
}

/// Accepts on `listen` forever, running `serve` on each connection.
async fn raw_server<F>(listen: SocketAddr, serve: impl Fn(TcpStream) -> F) -> Result<()>
where
    F: Future<Output = Result<()>> + Send + 'static,
{
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (stream, peer) = listener.accept().await?;
        let served = serve(stream);
        tokio::spawn(async move {
            if let Err(err) = served.await {
                eprintln!("{peer}: {err:#}");
            }
        });
    }
}

async fn echo(mut stream: TcpStream) -> Result<()> {
    let mut received = Vec::new();
    stream.read_to_end(&mut received).await?;
    stream.write_all(&received).await?;
    stream.shutdown().await?;
    Ok(())
}

async fn mirror(mut stream: TcpStream) -> Result<()> {
    let (mut from, mut to) = stream.split();
    tokio::io::copy(&mut from, &mut to).await?;
    to.shutdown().await?;
    Ok(())
}

async fn reset(mut stream: TcpStream) -> Result<()> {
    let mut buf = [0u8; 1024];
    let _ = stream.read(&mut buf).await?;
    // Linger 0: closing sends RST instead of FIN.
    stream.set_zero_linger()?;
    drop(stream);
    Ok(())
}

async fn deaf(mut stream: TcpStream) -> Result<()> {
    stream.shutdown().await?;
    tokio::time::sleep(std::time::Duration::from_secs(60)).await;
    Ok(())
}

async fn flood(address: SocketAddr, bytes: u64) -> Result<()> {
    let mut stream = TcpStream::connect(address)
        .await
        .with_context(|| format!("connecting to {address}"))?;
    let sent = async {
        write_payload(&mut stream, bytes).await?;
        stream.shutdown().await?;
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await?;
        anyhow::Ok(())
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), sent)
        .await
        .context("the buffers on the way did not take every byte within 5 s")??;
    println!("sent {bytes}");
    Ok(())
}

async fn half_close(address: SocketAddr, bytes: u64) -> Result<()> {
    let mut stream = TcpStream::connect(address)
        .await
        .with_context(|| format!("connecting to {address}"))?;
    write_payload(&mut stream, bytes).await?;
    stream.shutdown().await.context("shutting down writing")?;
    let mut reply = Vec::new();
    stream
        .read_to_end(&mut reply)
        .await
        .context("reading the reply after shutting down writing")?;
    let got = ztunnel_cluster::payload::sha256_hex(&reply);
    anyhow::ensure!(
        got == Payload::sha256_hex(bytes),
        "the reply ({} bytes) differs from the {bytes} bytes sent",
        reply.len()
    );
    println!("ok {bytes}");
    Ok(())
}

async fn send(address: SocketAddr) -> Result<()> {
    let mut stream = TcpStream::connect(address)
        .await
        .with_context(|| format!("connecting to {address}"))?;
    stream.write_all(b"hello\n").await?;
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => {
                println!("closed");
                return Ok(());
            }
            Ok(_) => continue,
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => {
                println!("reset");
                return Ok(());
            }
            Err(err) => return Err(err.into()),
        }
    }
}

async fn http(listen: SocketAddr, name: String) -> Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    println!("listening on {}", listener.local_addr()?);
    let name: &'static str = Box::leak(name.into_boxed_str());
    loop {
        let (stream, peer) = listener.accept().await?;
        tokio::spawn(async move {
            if let Err(err) = serve(stream, name).await {
                eprintln!("{peer}: {err:#}");
            }
        });
    }
}

/// Opens `connections` connections to `address`, 256 at a time, reports how
/// many connected, and keeps them (sending nothing) until stdin closes.
/// Unlike the benchmark load generator's `hold`, which proves each
/// connection with an exchange and stops at the first failure, a flood sends
/// nothing and expects most of its connections to be refused.
async fn hold(address: SocketAddr, connections: usize) -> Result<()> {
    // `main` raised the soft limit to the hard one; more takes several holders.
    let limit = rlimit::getrlimit(rlimit::Resource::NOFILE)?.0;
    anyhow::ensure!(
        connections as u64 + 64 <= limit,
        "{connections} connections do not fit the open-file limit of {limit}: use several holders"
    );
    let mut held = Vec::with_capacity(connections);
    let mut failed = 0;
    let mut opened = 0;
    while opened < connections {
        let batch = (connections - opened).min(256);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..batch {
            tasks.spawn(TcpStream::connect(address));
        }
        while let Some(result) = tasks.join_next().await {
            match result? {
                Ok(stream) => held.push(stream),
                Err(_) => failed += 1,
            }
        }
        opened += batch;
    }
    println!("held {} failed {failed}", held.len());
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    while stdin.read(&mut buf).await.unwrap_or(0) > 0 {}
    drop(held);
    Ok(())
}

/// `0x`-prefixed hexadecimal or decimal.
fn parse_mark(text: &str) -> Result<u32, std::num::ParseIntError> {
    match text.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => text.parse(),
    }
}

/// `GET /` on `connections` new connections, `concurrency` at a time: each
/// must answer `200` and end cleanly. Prints `ok X failed Y`.
async fn burst(address: SocketAddr, connections: usize, concurrency: usize) -> Result<()> {
    let (mut ok, mut failed) = (0, 0);
    let mut tally = |result: Result<()>| match result {
        Ok(()) => ok += 1,
        Err(err) => {
            failed += 1;
            if failed <= 5 {
                eprintln!("{err:#}");
            }
        }
    };
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        if tasks.len() >= concurrency {
            tally(tasks.join_next().await.context("a task")??);
        }
        tasks.spawn(get(address));
    }
    while let Some(result) = tasks.join_next().await {
        tally(result?);
    }
    println!("ok {ok} failed {failed}");
    Ok(())
}

/// The byte at `offset` of a load stream: a pattern a shifted, dropped or
/// repeated chunk cannot match.
fn pattern(offset: u64) -> u8 {
    (offset.wrapping_mul(31) ^ (offset >> 9)) as u8
}

/// `load`: requests at `rate` per second and `streams` mirrored streams
/// until stdin closes; prints `requests ok X failed Y streams ok A broken B`.
async fn load(http: SocketAddr, mirror: SocketAddr, rate: u32, streams: usize) -> Result<()> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut rest = Vec::new();
        let _ = tokio::io::stdin().read_to_end(&mut rest).await;
        let _ = stop.send(true);
    });
    let mut stream_tasks = tokio::task::JoinSet::new();
    for _ in 0..streams {
        stream_tasks.spawn(mirrored_stream(mirror, stopped.clone()));
    }
    let mut requests = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1) / rate.max(1));
    let mut stopping = stopped.clone();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                requests.spawn(async move {
                    tokio::time::timeout(std::time::Duration::from_secs(10), get(http))
                        .await
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")))
                });
            }
            () = until(&mut stopping) => break,
        }
    }
    let tally = |mut set: tokio::task::JoinSet<Result<()>>, what: &'static str| async move {
        let (mut ok, mut failed) = (0, 0);
        while let Some(result) = set.join_next().await {
            match result.map_err(anyhow::Error::from).and_then(|r| r) {
                Ok(()) => ok += 1,
                Err(err) => {
                    failed += 1;
                    eprintln!("{what}: {err:#}");
                }
            }
        }
        (ok, failed)
    };
    let (requests_ok, requests_failed) = tally(requests, "request").await;
    let (streams_ok, streams_broken) = tally(stream_tasks, "stream").await;
    let tally = LoadTally {
        requests_ok,
        requests_failed,
        streams_ok,
        streams_broken,
    };
    println!("{tally}");
    Ok(())
}

/// Completes once `stop` says so (or its sender is gone).
async fn until(stop: &mut tokio::sync::watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// One `GET /` on a new connection.
async fn get(address: SocketAddr) -> Result<()> {
    let mut stream = TcpStream::connect(address).await.context("connecting")?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .context("sending")?;
    // The client ends first (as most clients of short requests do): on
    // each hop the side that connected closes first, and its socket, the
    // destination daemon's included, waits in TIME_WAIT holding its port.
    stream.shutdown().await.context("shutting down writing")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.context("reading")?;
    anyhow::ensure!(
        response.starts_with(b"HTTP/1.1 200"),
        "answered {:?}",
        String::from_utf8_lossy(&response[..response.len().min(40)])
    );
    Ok(())
}

/// A stream to a `mirror` server: 4 KiB of [`pattern`] every 10 ms until
/// `stopped`, every echoed byte checked; then a clean end both ways.
async fn mirrored_stream(
    address: SocketAddr,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) -> Result<()> {
    let stream = TcpStream::connect(address).await.context("connecting")?;
    let (mut reader, mut writer) = stream.into_split();
    let send = async move {
        let mut sent = 0u64;
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(10));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let chunk: Vec<u8> = (sent..sent + 4096).map(pattern).collect();
                    writer.write_all(&chunk).await.context("sending")?;
                    sent += 4096;
                }
                () = until(&mut stopped) => break,
            }
        }
        writer.shutdown().await.context("ending")?;
        anyhow::Ok(sent)
    };
    let receive = async move {
        let mut received = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = reader.read(&mut buf).await.context("receiving")?;
            if n == 0 {
                return anyhow::Ok(received);
            }
            for (i, byte) in buf[..n].iter().enumerate() {
                let offset = received + i as u64;
                anyhow::ensure!(*byte == pattern(offset), "byte {offset} differs");
            }
            received += n as u64;
        }
    };
    let (sent, received) = tokio::try_join!(send, receive)?;
    anyhow::ensure!(sent == received, "sent {sent} bytes, {received} came back");
    Ok(())
}

/// Opens `connections` connections at once (all connected before any request
/// is sent), fetches `/bytes/<bytes>` on each and checks every body.
async fn fetch(address: SocketAddr, bytes: u64, connections: usize) -> Result<()> {
    let mut streams = Vec::with_capacity(connections);
    for _ in 0..connections {
        streams.push(
            TcpStream::connect(address)
                .await
                .with_context(|| format!("connecting to {address}"))?,
        );
    }
    let want = Payload::sha256_hex(bytes);
    let mut tasks = tokio::task::JoinSet::new();
    for mut stream in streams {
        let want = want.clone();
        tasks.spawn(async move {
            stream
                .write_all(format!("GET /bytes/{bytes} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
                .await?;
            let mut response = Vec::new();
            stream.read_to_end(&mut response).await?;
            let body_at = response
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .context("no response head")?
                + 4;
            let got = ztunnel_cluster::payload::sha256_hex(&response[body_at..]);
            anyhow::ensure!(
                got == want,
                "body of {} bytes differs",
                response.len() - body_at
            );
            Ok(())
        });
    }
    let mut ok = 0;
    while let Some(result) = tasks.join_next().await {
        result??;
        ok += 1;
    }
    println!("ok {ok}");
    Ok(())
}

async fn serve(mut stream: TcpStream, name: &str) -> Result<()> {
    stream.set_nodelay(true)?;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        anyhow::ensure!(
            head.len() < MAX_HEAD,
            "request head larger than {MAX_HEAD} bytes"
        );
        let n = stream.read(&mut buf).await?;
        anyhow::ensure!(
            n > 0,
            "connection closed before the end of the request head"
        );
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    let mut request_line = head.lines().next().unwrap_or_default().split(' ');
    let (method, path) = (request_line.next(), request_line.next().unwrap_or_default());

    if method != Some("GET") {
        return respond(&mut stream, "405 Method Not Allowed", b"only GET\n").await;
    }
    if path == "/peer" {
        let peer = stream.peer_addr()?;
        return respond(&mut stream, "200 OK", format!("{}\n", peer.ip()).as_bytes()).await;
    }
    if path == "/" {
        return respond(
            &mut stream,
            "200 OK",
            format!("hello from {name}\n").as_bytes(),
        )
        .await;
    }
    let Some(len) = path
        .strip_prefix("/bytes/")
        .and_then(|n| n.parse::<u64>().ok())
    else {
        return respond(&mut stream, "404 Not Found", b"try / or /bytes/<n>\n").await;
    };
    let header = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {len}\r\nconnection: close\r\n\r\n"
    );
    stream.write_all(header.as_bytes()).await?;
    write_payload(&mut stream, len).await?;
    stream.shutdown().await?;
    Ok(())
}

/// Writes the `len`-byte [`Payload`] to `stream`.
async fn write_payload(stream: &mut TcpStream, len: u64) -> Result<()> {
    let mut payload = Payload::new(len);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = payload.fill(&mut chunk);
        if n == 0 {
            return Ok(());
        }
        stream.write_all(&chunk[..n]).await?;
    }
}

async fn respond(stream: &mut TcpStream, status: &str, body: &[u8]) -> Result<()> {
    let header = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(header.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.shutdown().await?;
    Ok(())
}
