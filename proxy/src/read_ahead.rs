//! Read-ahead for the TLS side of a connection.
//!
//! rustls asks its socket for at most 4 KiB a read, so a bulk transfer would
//! cost a system call per 4 KiB. [`ReadAhead`] passes small reads straight
//! through until one comes back full (more is waiting), then reads 256 KiB at
//! a time into a buffer and serves rustls from it. The buffer goes back as
//! soon as the socket runs dry, so idle connections hold none (see
//! [`crate::buffers`]). Writes pass through untouched.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::buffers;

const AHEAD: usize = buffers::SIZE;

/// A stream that reads ahead while data keeps coming.
#[derive(Debug)]
pub struct ReadAhead<S> {
    inner: S,
    /// Read ahead and not yet handed out: `buf[pos..end]`. Empty (no
    /// allocation) unless a bulk read is under way.
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    /// The last direct read filled the caller's buffer.
    bulk: bool,
}

impl<S> ReadAhead<S> {
    pub fn new(inner: S) -> Self {
        ReadAhead {
            inner,
            buf: Vec::new(),
            pos: 0,
            end: 0,
            bulk: false,
        }
    }

    /// Starts by handing out `prefix`: bytes already read from `inner`
    /// (after a PROXY protocol header, the start of the TLS handshake).
    pub fn with_prefix(inner: S, prefix: Vec<u8>) -> Self {
        let end = prefix.len();
        ReadAhead {
            inner,
            buf: prefix,
            pos: 0,
            end,
            bulk: false,
        }
    }

    fn hand_out(&mut self, out: &mut ReadBuf<'_>) {
        let n = out.remaining().min(self.end - self.pos);
        out.put_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
    }

    /// Back to pass-through, giving the buffer back.
    fn quiet(&mut self) {
        buffers::give_back(std::mem::take(&mut self.buf));
        (self.pos, self.end, self.bulk) = (0, 0, false);
    }
}

impl<S> Drop for ReadAhead<S> {
    fn drop(&mut self) {
        buffers::give_back(std::mem::take(&mut self.buf));
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if me.pos < me.end {
            me.hand_out(out);
            if me.pos == me.end && me.buf.len() != AHEAD {
                // A prefix, not a read-ahead buffer: done with it.
                me.buf = Vec::new();
                (me.pos, me.end) = (0, 0);
            }
            return Poll::Ready(Ok(()));
        }
        if !me.bulk || out.remaining() >= AHEAD {
            let (before, want) = (out.filled().len(), out.remaining());
            std::task::ready!(Pin::new(&mut me.inner).poll_read(cx, out))?;
            me.bulk = want > 0 && out.filled().len() - before == want;
            return Poll::Ready(Ok(()));
        }
        if me.buf.is_empty() {
            me.buf = buffers::take();
        }
        let mut ahead = ReadBuf::new(&mut me.buf);
        match Pin::new(&mut me.inner).poll_read(cx, &mut ahead) {
            Poll::Pending => {
                me.quiet();
                Poll::Pending
            }
            Poll::Ready(Err(e)) => {
                me.quiet();
                Poll::Ready(Err(e))
            }
            Poll::Ready(Ok(())) => {
                let n = ahead.filled().len();
                if n == 0 {
                    // End of input.
                    me.quiet();
                } else {
                    (me.pos, me.end) = (0, n);
                    me.hand_out(out);
                }
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader over `data` that answers at most `chunk` bytes a read and
    /// counts its reads; `Pending` once when `dry_at` is reached.
    struct Counting {
        data: Vec<u8>,
        at: usize,
        reads: usize,
        dry_at: Option<usize>,
    }

    impl AsyncRead for Counting {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            out: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if self.dry_at == Some(self.at) {
                self.dry_at = None;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            self.reads += 1;
            let n = out.remaining().min(self.data.len() - self.at);
            let at = self.at;
            out.put_slice(&self.data[at..at + n]);
            self.at += n;
            Poll::Ready(Ok(()))
        }
    }

    fn read_all_4k(stream: &mut ReadAhead<Counting>) -> Vec<u8> {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut got = Vec::new();
        loop {
            let mut chunk = [0u8; 4096];
            let mut out = ReadBuf::new(&mut chunk);
            match Pin::new(&mut *stream).poll_read(&mut cx, &mut out) {
                Poll::Pending => {
                    assert!(stream.buf.is_empty(), "a dry socket frees the buffer");
                    continue;
                }
                Poll::Ready(r) => r.unwrap(),
            }
            if out.filled().is_empty() {
                return got;
            }
            got.extend_from_slice(out.filled());
        }
    }

    #[test]
    fn bulk_reads_go_64k_at_a_time_and_arrive_intact() {
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
        let mut stream = ReadAhead::new(Counting {
            data: data.clone(),
            at: 0,
            reads: 0,
            dry_at: Some(300_000),
        });
        let got = read_all_4k(&mut stream);
        assert!(got == data, "{} bytes back", got.len());
        // 1 MB in 4 KiB reads would be 245 reads; read ahead needs ~20.
        let reads = stream.inner.reads;
        assert!(reads < 40, "{reads} reads of the socket");
        assert!(stream.buf.is_empty(), "given back at end of input");
        // Given back to this thread's spares, bounded.
        assert!(buffers::spares() >= 1, "given back to the spares");
    }

    #[test]
    fn small_reads_pass_through_without_a_buffer() {
        let mut stream = ReadAhead::new(Counting {
            data: vec![1; 1000],
            at: 0,
            reads: 0,
            dry_at: None,
        });
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut chunk = [0u8; 4096];
        let mut out = ReadBuf::new(&mut chunk);
        assert!(matches!(
            Pin::new(&mut stream).poll_read(&mut cx, &mut out),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(out.filled().len(), 1000);
        assert_eq!(stream.buf.capacity(), 0);
        assert!(!stream.bulk);
    }
}
