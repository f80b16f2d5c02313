//! Large socket reads under TLS.
//!
//! rustls reads its records from the transport at most 4 KiB at a time, so a
//! 16 KiB record costs four or more `read` syscalls. [`ReadAhead`] reads the
//! socket in [`buffers::SIZE`] chunks into a pooled buffer and serves
//! rustls's small reads from it. The buffer is held only while it has unread
//! bytes: an idle tunnel holds none.

use std::{
    io::{self, IoSlice},
    ops::Range,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::buffers::{self, Buffer};

/// A transport whose reads go through a pooled read-ahead buffer; writes
/// pass straight through.
pub struct ReadAhead<S> {
    inner: S,
    /// Bytes read from `inner` and not yet handed out.
    unread: Option<(Buffer, Range<usize>)>,
}

impl<S> ReadAhead<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            unread: None,
        }
    }

    /// The transport.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Whether bytes read from the transport are waiting to be handed out.
    pub fn has_unread(&self) -> bool {
        self.unread.is_some()
    }

    /// Copies unread bytes into `out`; releases the buffer once empty.
    fn hand_out(&mut self, out: &mut ReadBuf<'_>) {
        if let Some((buffer, range)) = &mut self.unread {
            let n = out.remaining().min(range.len());
            out.put_slice(&buffer[range.start..range.start + n]);
            range.start += n;
            if range.start == range.end
                && let Some((buffer, _)) = self.unread.take()
            {
                buffers::give(buffer);
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.unread.is_some() {
            this.hand_out(out);
            return Poll::Ready(Ok(()));
        }
        let mut buffer = buffers::take();
        let mut read = ReadBuf::new(&mut buffer);
        match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
            Poll::Ready(Ok(())) if !read.filled().is_empty() => {
                let n = read.filled().len();
                this.unread = Some((buffer, 0..n));
                this.hand_out(out);
                Poll::Ready(Ok(()))
            }
            // End of stream, an error, or nothing yet: hold no buffer.
            other => {
                buffers::give(buffer);
                other
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S> Drop for ReadAhead<S> {
    fn drop(&mut self) {
        if let Some((buffer, _)) = self.unread.take() {
            buffers::give(buffer);
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn small_reads_see_every_byte_in_order_and_no_buffer_is_held_after() {
        let (mut writer, reader) = tokio::io::duplex(256 * 1024);
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        writer.write_all(&data).await.unwrap();
        drop(writer);
        let mut reader = ReadAhead::new(reader);
        let mut got = Vec::new();
        let mut small = [0u8; 4096];
        loop {
            let n = reader.read(&mut small).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&small[..n]);
        }
        assert_eq!(got, data);
        assert!(reader.unread.is_none(), "a drained reader holds no buffer");
    }
}
