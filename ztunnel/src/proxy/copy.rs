//! The byte copy between the two sides of a proxied connection.
//!
//! Both directions run in the connection's task. A direction holds a buffer
//! only while a chunk is in flight: buffers come from a per-thread pool and
//! go back to it whenever a read would wait, so idle connections (the many)
//! cost no buffer memory and busy ones allocate none per chunk. A direction that
//! reads end-of-stream shuts down writing on the other side (half-close: the
//! FIN travels on, the other direction keeps flowing). Backpressure is the
//! write: a direction reads again only once the other side took the last
//! chunk. Until both directions have ended cleanly, both sides are set to be
//! reset when closed (`SO_LINGER` 0): if either side fails (a reset, a broken
//! TLS stream), policy revokes the connection, it idles out, the daemon
//! gives up at its drain deadline or the daemon process dies, the
//! application on each end sees a reset, never an end of stream that would
//! make a cut-short response look complete.

use std::{
    io,
    pin::Pin,
    sync::atomic::{AtomicU64, Ordering},
    task::{Context, Poll, ready},
    time::Duration,
};

use prometheus_client::metrics::counter::Counter;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

use crate::{
    buffers::{self, Buffer},
    tunnel::read_ahead::ReadAhead,
};

/// How a relayed connection ended.
#[derive(Debug)]
pub enum Ending {
    /// Both sides finished writing (each direction saw end-of-stream).
    Closed,
    /// No byte moved in either direction for the idle timeout; both sides
    /// were reset.
    Idle,
    /// A policy change denied the connection; both sides were reset.
    Revoked(String),
    /// A side failed; both were reset.
    Failed(Failure),
}

impl std::fmt::Display for Ending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Closed => f.write_str("closed"),
            Self::Idle => f.write_str("idle timeout"),
            Self::Revoked(reason) => write!(f, "closed by a policy change: {reason}"),
            Self::Failed(failure) => failure.fmt(f),
        }
    }
}

/// Which side of a relay failed, and how.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Reading from the downstream side (the one that connected to us) failed.
    #[error("reading from the downstream side: {0}")]
    ReadDownstream(io::Error),
    /// Writing to the downstream side failed.
    #[error("writing to the downstream side: {0}")]
    WriteDownstream(io::Error),
    /// Reading from the upstream side (the one we connected to) failed.
    #[error("reading from the upstream side: {0}")]
    ReadUpstream(io::Error),
    /// Writing to the upstream side failed.
    #[error("writing to the upstream side: {0}")]
    WriteUpstream(io::Error),
}

/// Counts the bytes one direction of a connection delivers, as it
/// delivers them: the connection's own total and, when set, a counter it
/// shares with other connections (the metric it is reported under), so a
/// long-lived connection shows in the metrics before it ends.
#[derive(Debug, Default)]
pub struct Meter {
    total: AtomicU64,
    shared: Option<Counter>,
}

impl Meter {
    /// A meter that also adds to `shared`.
    pub fn sharing(shared: Counter) -> Self {
        Self {
            total: AtomicU64::new(0),
            shared: Some(shared),
        }
    }

    /// The bytes counted so far.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    pub(crate) fn add(&self, bytes: u64) {
        self.total.fetch_add(bytes, Ordering::Relaxed);
        if let Some(shared) = &self.shared {
            shared.inc_by(bytes);
        }
    }
}

/// Both directions of a connection, named from its client's side as Istio
/// names them: bytes received from the client, bytes sent to it. The
/// downstream side of a [`relay`] is always the client's.
#[derive(Debug, Default)]
pub struct Meters {
    /// Downstream to upstream.
    pub from_client: Meter,
    /// Upstream to downstream.
    pub to_client: Meter,
}

/// A stream over TCP that can be reset (closed with RST instead of FIN).
pub trait Resettable {
    /// Makes closing the stream (by the daemon, or by the kernel when the
    /// daemon's process ends) send a reset (`true`) or end it normally.
    fn reset_on_close(&self, reset: bool);
}

impl Resettable for TcpStream {
    fn reset_on_close(&self, reset: bool) {
        // Linger 0: close discards unsent data and sends RST. Failing to set
        // it changes only how a cut connection ends, so it is not an error.
        let _ = if reset {
            self.set_zero_linger()
        } else {
            // Linger off (tokio deprecates setting it: a non-zero linger
            // would block on close; off never does).
            socket2::SockRef::from(self).set_linger(None)
        };
    }
}

impl Resettable for tokio_rustls::client::TlsStream<ReadAhead<TcpStream>> {
    fn reset_on_close(&self, reset: bool) {
        self.get_ref().0.get_ref().reset_on_close(reset);
    }
}

impl Resettable for tokio_rustls::server::TlsStream<ReadAhead<TcpStream>> {
    fn reset_on_close(&self, reset: bool) {
        self.get_ref().0.get_ref().reset_on_close(reset);
    }
}

/// Copies between `downstream` (the client's side) and `upstream` until
/// both directions end, one fails, nothing moves for `idle`, or `revoked`
/// completes (with the reason), counting the bytes in each of `meters` (a
/// connection one node reports as source and as destination has two).
/// Both streams are set to reset when closed unless both directions ended
/// cleanly, and stay so while the copy runs (the daemon may die meanwhile).
pub async fn relay<D, U>(
    downstream: &mut D,
    upstream: &mut U,
    idle: Duration,
    revoked: impl Future<Output = String>,
    meters: &[&Meters],
) -> Ending
where
    D: AsyncRead + AsyncWrite + Resettable + Unpin,
    U: AsyncRead + AsyncWrite + Resettable + Unpin,
{
    downstream.reset_on_close(true);
    upstream.reset_on_close(true);
    let ending = {
        let (mut down_read, mut down_write) = tokio::io::split(&mut *downstream);
        let (mut up_read, mut up_write) = tokio::io::split(&mut *upstream);
        let both = async {
            tokio::try_join!(
                one_way(
                    &mut down_read,
                    &mut up_write,
                    Direction {
                        meters,
                        meter: |m| &m.from_client,
                        read: Failure::ReadDownstream,
                        write: Failure::WriteUpstream,
                    },
                ),
                one_way(
                    &mut up_read,
                    &mut down_write,
                    Direction {
                        meters,
                        meter: |m| &m.to_client,
                        read: Failure::ReadUpstream,
                        write: Failure::WriteDownstream,
                    },
                ),
            )
        };
        tokio::select! {
            result = both => match result {
                Ok(_) => Ending::Closed,
                Err(failure) => Ending::Failed(failure),
            },
            () = idle_for(idle, meters) => Ending::Idle,
            reason = revoked => Ending::Revoked(reason),
        }
    };
    if matches!(ending, Ending::Closed) {
        downstream.reset_on_close(false);
        upstream.reset_on_close(false);
    }
    ending
}

/// One direction of a relay: where its bytes are counted and how its
/// failures are named (by which side they happened on).
struct Direction<'a> {
    meters: &'a [&'a Meters],
    meter: fn(&Meters) -> &Meter,
    read: fn(io::Error) -> Failure,
    write: fn(io::Error) -> Failure,
}

/// Copies `from` into `to` until end-of-stream, then shuts `to` down.
fn one_way<'a, R, W>(from: &'a mut R, to: &'a mut W, direction: Direction<'a>) -> OneWay<'a, R, W> {
    OneWay {
        from,
        to,
        direction,
        chunk: None,
        state: State::Reading,
    }
}

/// The copy of one direction, written as a state machine so that its
/// buffer is held only while a chunk is in flight: a read that would wait
/// hands the buffer back to the thread's pool. An idle connection holds no
/// buffer at all.
struct OneWay<'a, R, W> {
    from: &'a mut R,
    to: &'a mut W,
    direction: Direction<'a>,
    /// The chunk being written: the buffer, and the range still to write.
    chunk: Option<(Buffer, std::ops::Range<usize>)>,
    state: State,
}

enum State {
    Reading,
    Writing,
    Flushing,
    ShuttingDown,
}

impl<R, W> Future for OneWay<'_, R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    type Output = Result<(), Failure>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            match this.state {
                State::Reading => {
                    let mut buffer = buffers::take();
                    let mut read = ReadBuf::new(&mut buffer[..]);
                    match Pin::new(&mut *this.from).poll_read(cx, &mut read) {
                        Poll::Pending => {
                            buffers::give(buffer);
                            return Poll::Pending;
                        }
                        Poll::Ready(Err(err)) => {
                            buffers::give(buffer);
                            return Poll::Ready(Err((this.direction.read)(err)));
                        }
                        Poll::Ready(Ok(())) => {
                            let n = read.filled().len();
                            if n == 0 {
                                buffers::give(buffer);
                                this.state = State::ShuttingDown;
                            } else {
                                this.chunk = Some((buffer, 0..n));
                                this.state = State::Writing;
                            }
                        }
                    }
                }
                State::Writing => {
                    let (buffer, range) = this.chunk.as_mut().expect("a chunk is in flight");
                    while range.start < range.end {
                        let written =
                            ready!(Pin::new(&mut *this.to).poll_write(cx, &buffer[range.clone()]))
                                .map_err(this.direction.write)?;
                        if written == 0 {
                            let zero = io::ErrorKind::WriteZero.into();
                            return Poll::Ready(Err((this.direction.write)(zero)));
                        }
                        range.start += written;
                    }
                    this.state = State::Flushing;
                }
                State::Flushing => {
                    // A TLS writer may hold encrypted bytes back until
                    // flushed; a plain socket's flush does nothing.
                    ready!(Pin::new(&mut *this.to).poll_flush(cx)).map_err(this.direction.write)?;
                    let (buffer, range) = this.chunk.take().expect("a chunk is in flight");
                    for meters in this.direction.meters {
                        (this.direction.meter)(meters).add(range.end as u64);
                    }
                    buffers::give(buffer);
                    this.state = State::Reading;
                }
                State::ShuttingDown => {
                    return Poll::Ready(
                        ready!(Pin::new(&mut *this.to).poll_shutdown(cx))
                            .map_err(this.direction.write),
                    );
                }
            }
        }
    }
}

/// Completes once no byte has moved for `idle` (checked four times per
/// period, so the connection closes between `idle` and 1.25 × `idle`).
async fn idle_for(idle: Duration, meters: &[&Meters]) {
    let tick = idle / 4;
    let mut last = (u64::MAX, u64::MAX);
    let mut quiet = Duration::ZERO;
    loop {
        tokio::time::sleep(tick).await;
        let now = meters
            .first()
            .map_or((0, 0), |m| (m.from_client.total(), m.to_client.total()));
        if now == last {
            quiet += tick;
            if quiet >= idle {
                return;
            }
        } else {
            quiet = Duration::ZERO;
            last = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    use super::*;

    /// A connected pair of loopback TCP streams.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    /// How a relay in a test ended, and the bytes it counted.
    struct Relayed {
        ending: Ending,
        from_client: u64,
        to_client: u64,
    }

    /// Relays between `down` and `up` and counts the bytes.
    async fn counted_relay(mut down: TcpStream, mut up: TcpStream, idle: Duration) -> Relayed {
        let meters = Meters::default();
        let pending = std::future::pending();
        let ending = relay(&mut down, &mut up, idle, pending, &[&meters]).await;
        Relayed {
            ending,
            from_client: meters.from_client.total(),
            to_client: meters.to_client.total(),
        }
    }

    /// `client` <-> [`relay`] <-> `server`, the relay running in a task.
    async fn relayed(idle: Duration) -> (TcpStream, TcpStream, tokio::task::JoinHandle<Relayed>) {
        let (client, down) = pair().await;
        let (up, server) = pair().await;
        let task = tokio::spawn(counted_relay(down, up, idle));
        (client, server, task)
    }

    #[tokio::test]
    async fn half_close_travels_on_and_the_reply_still_arrives() {
        let (mut client, mut server, task) = relayed(Duration::from_secs(30)).await;
        let request = vec![7u8; 300_000];
        client.write_all(&request).await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(
            got, request,
            "the server reads everything, then end-of-stream"
        );
        let reply = vec![9u8; 500_000];
        server.write_all(&reply).await.unwrap();
        drop(server);
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(
            back.len(),
            reply.len(),
            "the half-closed client reads the whole reply"
        );
        let relayed = task.await.unwrap();
        assert!(
            matches!(relayed.ending, Ending::Closed),
            "{:?}",
            relayed.ending
        );
        assert_eq!((relayed.from_client, relayed.to_client), (300_000, 500_000));
    }

    #[tokio::test]
    async fn a_reset_on_one_side_resets_the_other() {
        let (mut client, server, task) = relayed(Duration::from_secs(30)).await;
        client.write_all(b"hello").await.unwrap();
        server.reset_on_close(true);
        drop(server);
        let mut buf = [0u8; 16];
        let err = loop {
            match client.read(&mut buf).await {
                Ok(0) => panic!("the client saw a clean end, not the reset"),
                Ok(_) => continue,
                Err(err) => break err,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        let relayed = task.await.unwrap();
        assert!(
            matches!(relayed.ending, Ending::Failed(_)),
            "{:?}",
            relayed.ending
        );
    }

    /// Reads `stream` until it ends; the error if it ended with one.
    async fn read_until_end(stream: &mut TcpStream) -> Result<usize, io::Error> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0;
        loop {
            match stream.read(&mut buf).await? {
                0 => return Ok(total),
                n => total += n,
            }
        }
    }

    #[tokio::test]
    async fn an_idle_connection_is_reset() {
        let (mut client, mut server, task) = relayed(Duration::from_millis(200)).await;
        client.write_all(b"ping").await.unwrap();
        let relayed = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the idle connection is closed")
            .unwrap();
        assert!(
            matches!(relayed.ending, Ending::Idle),
            "{:?}",
            relayed.ending
        );
        assert_eq!(relayed.from_client, 4);
        for side in [&mut client, &mut server] {
            let err = read_until_end(side).await.expect_err("a reset, not an end");
            assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        }
    }

    #[tokio::test]
    async fn a_relay_dropped_mid_transfer_resets_both_applications() {
        // What the drain deadline does, and what the kernel does to every
        // socket when the daemon's process dies.
        let (mut client, mut server, task) = relayed(Duration::from_secs(30)).await;
        server.write_all(&[1u8; 100_000]).await.unwrap();
        client.write_all(b"partial request").await.unwrap();
        let mut first = [0u8; 1000];
        client.read_exact(&mut first).await.unwrap();
        task.abort();
        let _ = task.await;
        for side in [&mut client, &mut server] {
            let err = read_until_end(side)
                .await
                .expect_err("a cut connection must not end like a complete one");
            assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        }
    }

    #[tokio::test]
    async fn a_clean_end_delivers_what_is_still_queued() {
        // The relay is done once the last bytes are in its socket's send
        // queue; a slow client has not received them yet. Closing with a
        // reset would throw them away: a clean end must close normally.
        const LEN: usize = 1 << 20;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let slow =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        slow.set_recv_buffer_size(4096).unwrap();
        slow.set_nonblocking(true).unwrap();
        let connect = tokio::net::TcpSocket::from_std_stream(slow.into())
            .connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(connect, listener.accept());
        let (mut client, down) = (client.unwrap(), accepted.unwrap().0);
        let (up, mut server) = pair().await;
        let task = tokio::spawn(counted_relay(down, up, Duration::from_secs(30)));
        client.shutdown().await.unwrap();
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            let mut total = 0;
            loop {
                match client.read(&mut buf).await? {
                    0 => return Ok::<_, io::Error>(total),
                    n => total += n,
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        server.write_all(&vec![1u8; LEN]).await.unwrap();
        server.shutdown().await.unwrap();
        assert!(matches!(task.await.unwrap().ending, Ending::Closed));
        assert_eq!(reader.await.unwrap().expect("the end, not a reset"), LEN);
        assert_eq!(read_until_end(&mut server).await.unwrap(), 0);
    }
}
