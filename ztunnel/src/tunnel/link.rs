//! The source side's connection to a destination's daemon, which carries
//! tunnelled connections one after another: mutual TLS, or plain TCP in the
//! benchmark relay.

use std::{
    io::{self, IoSlice},
    pin::Pin,
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::client::TlsStream;

use super::read_ahead::ReadAhead;
use crate::proxy::copy::Resettable;

/// A connection to a destination's tunnel listener.
pub enum Link {
    /// Mutual TLS (boxed: the TLS state is large and links sit in the pool).
    Tls(Box<TlsStream<ReadAhead<TcpStream>>>),
    /// Plain TCP, benchmark relay only.
    Plain(TcpStream),
}

impl Link {
    fn tcp(&self) -> &TcpStream {
        match self {
            Self::Tls(tls) => tls.get_ref().0.get_ref(),
            Self::Plain(tcp) => tcp,
        }
    }

    /// Whether the link is still usable at a connection boundary: the peer
    /// sends nothing there, so anything readable (its close, an alert, stray
    /// bytes) means the link is done. Reads (and so discards) what is there.
    pub fn is_open(&self) -> bool {
        if let Self::Tls(tls) = self
            && tls.get_ref().0.has_unread()
        {
            return false;
        }
        let mut probe = [0u8; 1];
        matches!(self.tcp().try_read(&mut probe), Err(err) if err.kind() == io::ErrorKind::WouldBlock)
    }
}

impl AsyncRead for Link {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
            Self::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Link {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
            Self::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
            Self::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
            Self::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
            Self::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
        }
    }
}

impl Resettable for Link {
    fn reset_on_close(&self, reset: bool) {
        self.tcp().reset_on_close(reset);
    }
}
