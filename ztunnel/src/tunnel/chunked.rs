//! One proxied connection's bytes inside a tunnel that outlives it.
//!
//! A tunnel carries connections one after another (see [`pool`](super::pool)),
//! so the end of one connection's direction cannot be the end of the tunnel's
//! stream. Each direction is sent as chunks, each a 4-byte big-endian length
//! and that many bytes; a zero length ends the direction (the FIN of a
//! proxied connection):
//!
//! ```text
//! len (u32, big endian) | len bytes | ... | 0 (u32)
//! ```
//!
//! [`Chunked`] frames writes and unframes reads so the copy loop sees plain
//! byte streams. A chunk's header and bytes go out in one vectored write, so
//! under TLS they share a record.
//!
//! Both directions having ended is not enough for the source to start the
//! next connection: bytes it sent may still wait at the destination behind an
//! application that stops reading before it closes, and the next connection
//! would wait behind them for good. So the destination, once the connection
//! is over on its side (both directions ended there too), sends one more zero
//! length, [`send_done`]; the source reuses the tunnel only after reading it
//! ([`read_done`]). A tunnel that ends inside a
//! connection (no zero length) is an error, never a clean end: the peer
//! dropped it on purpose (a denial, a failure) and the application must see a
//! reset, not a FIN.

use std::{
    io::{self, IoSlice},
    pin::Pin,
    task::{Context, Poll, ready},
};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::proxy::copy::Resettable;

/// The size of a chunk's length.
const HEADER: usize = 4;

/// The destination's word that a connection is over on its side: one more
/// zero length after the end of its direction.
const DONE: [u8; HEADER] = [0; HEADER];

/// Destination side: says that the connection is over here (both directions
/// ended), leaving the tunnel at a connection boundary.
pub async fn send_done<S: AsyncWrite + Unpin>(tunnel: &mut S) -> io::Result<()> {
    tunnel.write_all(&DONE).await?;
    tunnel.flush().await
}

/// Source side: waits for the destination's word that the connection is
/// over there; the tunnel is then at a connection boundary.
pub async fn read_done<S: AsyncRead + Unpin>(tunnel: &mut S) -> io::Result<()> {
    let mut word = [0u8; HEADER];
    tunnel.read_exact(&mut word).await?;
    if word == DONE {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the destination sent more after the end of a connection",
        ))
    }
}

/// A proxied connection framed inside the tunnel `inner`.
pub struct Chunked<'a, S> {
    inner: &'a mut S,
    read: ReadState,
    write: WriteState,
}

/// The reading side: where we are in the peer's chunks.
#[derive(Default)]
struct ReadState {
    /// Bytes of the current chunk not yet read.
    left: u32,
    /// A length being read, and how much of it has arrived.
    header: [u8; HEADER],
    header_got: usize,
    /// The peer's zero-length chunk arrived: its direction is over.
    ended: bool,
}

/// The writing side: the chunk being sent.
#[derive(Default)]
struct WriteState {
    /// The current chunk's length, and how much of it is sent.
    header: [u8; HEADER],
    header_sent: usize,
    /// Bytes of the current chunk not yet written.
    left: u32,
    /// The zero-length chunk is sent (and flushed): this direction is over.
    ended: bool,
}

impl<'a, S> Chunked<'a, S> {
    /// Frames a new connection inside `inner`, whose preamble was just sent or read.
    pub fn new(inner: &'a mut S) -> Self {
        Self {
            inner,
            read: ReadState::default(),
            write: WriteState {
                header_sent: HEADER,
                ..WriteState::default()
            },
        }
    }

    /// Whether both directions ended cleanly, leaving the tunnel at a
    /// connection boundary (ready for the next preamble).
    pub fn finished(&self) -> bool {
        self.read.ended && self.write.ended && self.write.header_sent == HEADER
    }
}

fn unexpected_end() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the tunnel closed before the connection ended (the peer dropped it)",
    )
}

impl<S: AsyncRead + Unpin> AsyncRead for Chunked<'_, S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let state = &mut this.read;
        loop {
            if state.ended || out.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if state.left > 0 {
                let limit = out.remaining().min(state.left as usize);
                let mut part = ReadBuf::new(out.initialize_unfilled_to(limit));
                ready!(Pin::new(&mut *this.inner).poll_read(cx, &mut part))?;
                let n = part.filled().len();
                if n == 0 {
                    return Poll::Ready(Err(unexpected_end()));
                }
                out.advance(n);
                state.left -= n as u32;
                return Poll::Ready(Ok(()));
            }
            let mut header = ReadBuf::new(&mut state.header[state.header_got..]);
            ready!(Pin::new(&mut *this.inner).poll_read(cx, &mut header))?;
            let n = header.filled().len();
            if n == 0 {
                return Poll::Ready(Err(unexpected_end()));
            }
            state.header_got += n;
            if state.header_got == HEADER {
                state.header_got = 0;
                state.left = u32::from_be_bytes(state.header);
                state.ended = state.left == 0;
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> Chunked<'_, S> {
    /// Sends what is left of the current chunk's length, then up to
    /// `payload.len()` of its bytes in the same write; returns how many of
    /// the bytes went.
    fn poll_send(&mut self, cx: &mut Context<'_>, payload: &[u8]) -> Poll<io::Result<usize>> {
        let state = &mut self.write;
        let payload = &payload[..payload.len().min(state.left as usize)];
        loop {
            let written = if state.header_sent < HEADER {
                let parts = [
                    IoSlice::new(&state.header[state.header_sent..]),
                    IoSlice::new(payload),
                ];
                ready!(Pin::new(&mut *self.inner).poll_write_vectored(cx, &parts))?
            } else {
                ready!(Pin::new(&mut *self.inner).poll_write(cx, payload))?
            };
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let of_header = written.min(HEADER - state.header_sent);
            state.header_sent += of_header;
            let of_payload = written - of_header;
            state.left -= of_payload as u32;
            if of_payload > 0 || payload.is_empty() && state.header_sent == HEADER {
                return Poll::Ready(Ok(of_payload));
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Chunked<'_, S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.write.ended {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after the connection's end in the tunnel",
            )));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.write.left == 0 && this.write.header_sent == HEADER {
            // A new chunk: as much as is offered (a u32 bounds it).
            let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
            this.write.header = len.to_be_bytes();
            this.write.header_sent = 0;
            this.write.left = len;
        }
        this.poll_send(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_flush(cx)
    }

    /// Ends this direction with a zero-length chunk; the tunnel stays open.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.write.ended {
            if this.write.left > 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "the connection ended inside a chunk",
                )));
            }
            if this.write.header_sent == HEADER {
                this.write.header = [0; HEADER];
                this.write.header_sent = 0;
            }
            ready!(this.poll_send(cx, &[]))?;
            this.write.ended = true;
        }
        Pin::new(&mut *this.inner).poll_flush(cx)
    }
}

impl<S: Resettable> Resettable for Chunked<'_, S> {
    fn reset_on_close(&self, reset: bool) {
        self.inner.reset_on_close(reset);
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn connections_follow_each_other_on_one_stream() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let writer = tokio::spawn(async move {
            for round in 0..3u8 {
                let mut framed = Chunked::new(&mut a);
                let data = vec![round; 5000 + round as usize];
                framed.write_all(&data).await.unwrap();
                framed.shutdown().await.unwrap();
                assert!(!framed.finished(), "its own reading side has not ended");
                a.write_all(b"next").await.unwrap();
            }
            a
        });
        for round in 0..3u8 {
            let mut framed = Chunked::new(&mut b);
            let mut got = Vec::new();
            framed.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, vec![round; 5000 + round as usize]);
            let mut marker = [0u8; 4];
            b.read_exact(&mut marker).await.unwrap();
            assert_eq!(&marker, b"next", "nothing past the end is consumed");
        }
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn the_source_hears_when_the_destination_is_done() {
        let (mut source, mut destination) = tokio::io::duplex(1024);
        send_done(&mut destination).await.unwrap();
        read_done(&mut source).await.unwrap();
        // Anything else where the word should be is refused.
        destination.write_all(b"\0\0\0\x05").await.unwrap();
        let err = read_done(&mut source).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        // A tunnel closed instead is no word either.
        drop(destination);
        assert!(read_done(&mut source).await.is_err());
    }

    #[tokio::test]
    async fn both_ends_make_a_finished_connection() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let mut left = Chunked::new(&mut a);
        let mut right = Chunked::new(&mut b);
        left.write_all(b"ping").await.unwrap();
        left.shutdown().await.unwrap();
        let mut got = Vec::new();
        right.read_to_end(&mut got).await.unwrap();
        right.write_all(b"pong").await.unwrap();
        right.shutdown().await.unwrap();
        let mut back = Vec::new();
        left.read_to_end(&mut back).await.unwrap();
        assert_eq!((&got[..], &back[..]), (&b"ping"[..], &b"pong"[..]));
        assert!(left.finished() && right.finished());
    }

    #[tokio::test]
    async fn a_tunnel_closed_inside_a_connection_is_an_error() {
        // Closed between chunks, inside a length, and inside a chunk.
        for sent in [&b"\0\0\0\x03abc"[..], b"\0\0", b"\0\0\0\x09abc"] {
            let (mut a, mut b) = tokio::io::duplex(1024);
            a.write_all(sent).await.unwrap();
            drop(a);
            let mut framed = Chunked::new(&mut b);
            let mut got = Vec::new();
            let err = framed.read_to_end(&mut got).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{sent:?}");
            assert!(!framed.finished());
        }
    }
}
