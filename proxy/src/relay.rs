//! Byte relay between the TLS side and the plaintext side, with an idle
//! timeout and byte counts, buffers that grow only under load, and no
//! per-chunk allocation.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::buffers;

/// Activity shared by both directions of one connection.
#[derive(Debug)]
struct Activity {
    start: Instant,
    /// Milliseconds since `start` of the last read or write.
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

/// Wraps the plaintext side: every read or write marks activity.
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// How a relay ended.
#[derive(Debug)]
pub struct Relayed {
    /// Bytes from the TLS side to the plaintext side.
    pub tls_to_plain: u64,
    /// Bytes from the plaintext side to the TLS side.
    pub plain_to_tls: u64,
    /// `None` when both sides closed; otherwise why the relay stopped.
    pub ended_by: Option<String>,
}

/// One direction of the relay: read, write it all out, repeat; at end of
/// input flush and shut the writer down.
///
/// It takes a buffer from this thread's spares when it reads and keeps it
/// while data keeps coming (what the writer does not take at once stays in
/// it, and the next read waits until it is written); once the reader would
/// wait, the buffer goes back. So ten thousand idle connections hold no
/// relay buffers at all while a bulk transfer moves 256 KiB a read, and
/// nothing is copied twice.
#[derive(Debug)]
struct Pipe {
    /// Empty, or a `buffers::SIZE` buffer while data keeps coming.
    held: Vec<u8>,
    /// Read but not yet written: `held[pos..end]`.
    pos: usize,
    end: usize,
    need_flush: bool,
    /// How the input ended, seen while gathering after some data: acted on
    /// once that data is written.
    ended: Option<io::Result<()>>,
    state: PipeState,
    moved: u64,
}

impl Drop for Pipe {
    fn drop(&mut self) {
        buffers::give_back(std::mem::take(&mut self.held));
    }
}

#[derive(Debug, PartialEq, Eq)]
enum PipeState {
    Copying,
    ShuttingDown,
    Done,
}

/// What one read (and the gathering after it) gave.
enum Read {
    Data,
    End,
    Wait,
}

impl Pipe {
    fn new() -> Pipe {
        Pipe {
            held: Vec::new(),
            pos: 0,
            end: 0,
            need_flush: false,
            ended: None,
            state: PipeState::Copying,
            moved: 0,
        }
    }

    /// Writes `data` until the writer pushes back; returns how much it took.
    fn write_some<W: AsyncWrite + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        writer: &mut Pin<&mut W>,
        data: &[u8],
    ) -> io::Result<usize> {
        let mut done = 0;
        while done < data.len() {
            match writer.as_mut().poll_write(cx, &data[done..]) {
                Poll::Pending => break,
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => {
                    done += n;
                    self.moved += n as u64;
                    self.need_flush = true;
                }
            }
        }
        Ok(done)
    }

    /// Reads into `read`, then adds what the reader has ready, until it is
    /// full or the reader would wait: a TLS stream hands out one record
    /// (<= 16 KiB) a read, and writing each alone would cost the plaintext
    /// side many times the system calls of one large write. An end of
    /// input or error met after data is kept for after the data is written.
    fn read<R: AsyncRead + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        read: &mut ReadBuf<'_>,
    ) -> io::Result<Read> {
        match reader.as_mut().poll_read(cx, read) {
            Poll::Pending => return Ok(Read::Wait),
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Ready(Ok(())) if read.filled().is_empty() => return Ok(Read::End),
            Poll::Ready(Ok(())) => {}
        }
        while read.remaining() > 0 {
            let before = read.filled().len();
            match reader.as_mut().poll_read(cx, read) {
                Poll::Pending => break,
                Poll::Ready(Ok(())) if read.filled().len() == before => {
                    self.ended = Some(Ok(()));
                    break;
                }
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => {
                    self.ended = Some(Err(e));
                    break;
                }
            }
        }
        Ok(Read::Data)
    }

    /// The reader would wait: give the held buffer back and flush what was
    /// written.
    fn quiet<W: AsyncWrite + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        writer: &mut Pin<&mut W>,
    ) -> Poll<io::Result<()>> {
        buffers::give_back(std::mem::take(&mut self.held));
        if self.need_flush {
            std::task::ready!(writer.as_mut().poll_flush(cx))?;
            self.need_flush = false;
        }
        Poll::Pending
    }

    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            match self.state {
                PipeState::Done => return Poll::Ready(Ok(())),
                PipeState::ShuttingDown => {
                    std::task::ready!(writer.as_mut().poll_flush(cx))?;
                    std::task::ready!(writer.as_mut().poll_shutdown(cx))?;
                    self.state = PipeState::Done;
                }
                PipeState::Copying => {
                    if self.pos < self.end {
                        let held = std::mem::take(&mut self.held);
                        let wrote = self.write_some(cx, &mut writer, &held[self.pos..self.end]);
                        self.held = held;
                        self.pos += wrote?;
                        if self.pos < self.end {
                            return Poll::Pending;
                        }
                    }
                    (self.pos, self.end) = (0, 0);
                    match self.ended.take() {
                        Some(Ok(())) => {
                            self.state = PipeState::ShuttingDown;
                            continue;
                        }
                        Some(Err(e)) => return Poll::Ready(Err(e)),
                        None => {}
                    }
                    // Under load the buffer is kept from read to read; a
                    // quiet direction gives it back (see `quiet`).
                    if self.held.is_empty() {
                        self.held = buffers::take();
                    }
                    let mut held = std::mem::take(&mut self.held);
                    let mut read = ReadBuf::new(&mut held);
                    let got = self.read(cx, reader.as_mut(), &mut read);
                    let n = read.filled().len();
                    self.held = held;
                    match got? {
                        Read::Wait => return self.quiet(cx, &mut writer),
                        Read::End => {
                            buffers::give_back(std::mem::take(&mut self.held));
                            self.state = PipeState::ShuttingDown;
                        }
                        // Written at the top of the loop.
                        Read::Data => (self.pos, self.end) = (0, n),
                    }
                }
            }
        }
    }
}

/// Copies both ways until both directions reach end of input (each
/// shutting its writer down in turn); returns the bytes moved `a -> b` and
/// `b -> a`.
async fn copy_both_ways<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let (mut a_to_b, mut b_to_a) = (Pipe::new(), Pipe::new());
    std::future::poll_fn(|cx| {
        let forward = a_to_b.poll_copy(cx, Pin::new(&mut *a), Pin::new(&mut *b))?;
        let back = b_to_a.poll_copy(cx, Pin::new(&mut *b), Pin::new(&mut *a))?;
        match (forward, back) {
            (Poll::Ready(()), Poll::Ready(())) => Poll::Ready(Ok((a_to_b.moved, b_to_a.moved))),
            _ => Poll::Pending,
        }
    })
    .await
}

/// Copies both ways until both sides close, either errors, nothing moves
/// for `idle`, or `stop` resolves.
pub async fn relay<T, P>(
    tls: &mut T,
    plain: P,
    idle: Duration,
    stop: impl std::future::Future<Output = ()>,
) -> Relayed
where
    T: AsyncRead + AsyncWrite + Unpin,
    P: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Arc::new(Activity {
        start: Instant::now(),
        last_ms: AtomicU64::new(0),
    });
    let mut plain = Tracked {
        inner: plain,
        activity: activity.clone(),
    };
    let copy = copy_both_ways(tls, &mut plain);
    let watchdog = async {
        loop {
            let idle_for = activity.idle_for();
            if idle_for >= idle {
                return;
            }
            tokio::time::sleep(idle - idle_for).await;
        }
    };
    tokio::select! {
        r = copy => match r {
            Ok((a, b)) => Relayed { tls_to_plain: a, plain_to_tls: b, ended_by: None },
            Err(e) => Relayed { tls_to_plain: 0, plain_to_tls: 0, ended_by: Some(format!("i/o error: {e}")) },
        },
        () = watchdog => Relayed { tls_to_plain: 0, plain_to_tls: 0, ended_by: Some(format!("idle for {idle:?}")) },
        () = stop => Relayed { tls_to_plain: 0, plain_to_tls: 0, ended_by: Some("shutting down".into()) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffers::SIZE as READ_SIZE;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn copies_both_ways_and_counts() {
        let (mut a_client, mut a_server) = tokio::io::duplex(1024);
        let (b_client, mut b_server) = tokio::io::duplex(1024);
        let task = tokio::spawn(async move {
            relay(
                &mut a_server,
                b_client,
                Duration::from_secs(60),
                std::future::pending(),
            )
            .await
        });
        a_client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        b_server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        b_server.write_all(b"pong!").await.unwrap();
        let mut buf = [0u8; 5];
        a_client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong!");
        drop(a_client);
        drop(b_server);
        let r = task.await.unwrap();
        assert_eq!((r.tls_to_plain, r.plain_to_tls), (4, 5));
        assert!(r.ended_by.is_none(), "{:?}", r.ended_by);
    }

    /// A bulk transfer through a tiny pipe grows the buffer and loses,
    /// reorders or duplicates nothing, both ways at once, and each side
    /// sees the other's end of input.
    #[tokio::test]
    async fn bulk_both_ways_arrives_intact() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let (a_client, mut a_server) = tokio::io::duplex(1000);
        let (b_client, b_server) = tokio::io::duplex(70_000);
        let relay = tokio::spawn(async move {
            relay(
                &mut a_server,
                b_client,
                Duration::from_secs(60),
                std::future::pending(),
            )
            .await
        });
        let sent = data.clone();
        let b_side = tokio::spawn(async move {
            let (mut r, mut w) = tokio::io::split(b_server);
            let echo = tokio::spawn(async move {
                w.write_all(&sent).await.unwrap();
                w.shutdown().await.unwrap();
            });
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.unwrap();
            echo.await.unwrap();
            got
        });
        let (mut r, mut w) = tokio::io::split(a_client);
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            w.write_all(&sent).await.unwrap();
            w.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        assert!(got == data, "b -> a corrupted ({} bytes)", got.len());
        let got = b_side.await.unwrap();
        assert!(got == data, "a -> b corrupted ({} bytes)", got.len());
        let r = relay.await.unwrap();
        assert_eq!((r.tls_to_plain, r.plain_to_tls), (3_000_000, 3_000_000));
        assert!(r.ended_by.is_none(), "{:?}", r.ended_by);
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed() {
        let (_a_client, mut a_server) = tokio::io::duplex(1024);
        let (b_client, _b_server) = tokio::io::duplex(1024);
        let r = relay(
            &mut a_server,
            b_client,
            Duration::from_millis(200),
            std::future::pending(),
        )
        .await;
        assert_eq!(r.ended_by.as_deref(), Some("idle for 200ms"));
    }

    #[test]
    fn a_quiet_pipe_holds_no_buffer_and_a_blocked_one_keeps_its_bytes() {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let (mut client, mut server) = tokio::io::duplex(4 * READ_SIZE);
        let mut pipe = Pipe::new();

        // Data the writer takes at once: relayed, nothing kept.
        let n = READ_SIZE + READ_SIZE / 2;
        let data = vec![5u8; n];
        assert!(matches!(
            Pin::new(&mut client).poll_write(&mut cx, &data),
            Poll::Ready(Ok(w)) if w == n
        ));
        let mut out = Vec::new();
        let r = pipe.poll_copy(&mut cx, Pin::new(&mut server), Pin::new(&mut out));
        assert!(r.is_pending());
        assert_eq!(out, data);
        assert_eq!(pipe.held.capacity(), 0);

        // A writer that pushes back: what it did not take is kept, in order.
        assert!(matches!(
            Pin::new(&mut client).poll_write(&mut cx, &data),
            Poll::Ready(Ok(w)) if w == n
        ));
        let (mut small_in, mut small_out) = tokio::io::duplex(1000);
        let r = pipe.poll_copy(&mut cx, Pin::new(&mut server), Pin::new(&mut small_in));
        assert!(r.is_pending());
        assert_eq!(pipe.moved, n as u64 + 1000);
        assert_eq!(pipe.end - pipe.pos, READ_SIZE - 1000);
        assert_eq!(pipe.held.len(), READ_SIZE);
        let mut first = vec![0u8; 1000];
        assert!(matches!(
            Pin::new(&mut small_out).poll_read(&mut cx, &mut ReadBuf::new(&mut first)),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(first, vec![5u8; 1000]);

        // Room again: the held bytes go out from the same buffer.
        let held_at = pipe.held.as_ptr();
        let r = pipe.poll_copy(&mut cx, Pin::new(&mut server), Pin::new(&mut small_in));
        assert!(r.is_pending());
        assert_eq!(pipe.held.as_ptr(), held_at);
        assert_eq!(pipe.end - pipe.pos, READ_SIZE - 2000);
    }

    /// Reads like a TLS stream: at most one 16 KiB record a read; then
    /// `end` (end of input, or an error).
    struct Records {
        left: usize,
        end: Option<io::Error>,
    }

    impl AsyncRead for Records {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if self.left == 0 {
                return Poll::Ready(self.end.take().map_or(Ok(()), Err));
            }
            let n = self.left.min(16 * 1024).min(buf.remaining());
            buf.put_slice(&vec![1u8; n]);
            self.left -= n;
            Poll::Ready(Ok(()))
        }
    }

    /// Takes everything, noting the size of each write.
    #[derive(Default)]
    struct Writes(Vec<usize>);

    impl AsyncWrite for Writes {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.0.push(buf.len());
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn records_ready_together_go_out_in_one_write_and_the_end_follows_them() {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut reader = Records {
            left: 3 * READ_SIZE + 20_000,
            end: None,
        };
        let mut out = Writes::default();
        let mut pipe = Pipe::new();
        let r = pipe.poll_copy(&mut cx, Pin::new(&mut reader), Pin::new(&mut out));
        assert!(matches!(r, Poll::Ready(Ok(()))), "{r:?}");
        assert_eq!(out.0, [READ_SIZE, READ_SIZE, READ_SIZE, 20_000]);
        assert_eq!(pipe.moved, 3 * READ_SIZE as u64 + 20_000);
        assert_eq!(pipe.state, PipeState::Done);

        // An error after data: the data is written first, then the error.
        let mut reader = Records {
            left: 20_000,
            end: Some(io::Error::new(io::ErrorKind::InvalidData, "bad record")),
        };
        let mut out = Writes::default();
        let mut pipe = Pipe::new();
        let r = pipe.poll_copy(&mut cx, Pin::new(&mut reader), Pin::new(&mut out));
        assert!(
            matches!(&r, Poll::Ready(Err(e)) if e.to_string() == "bad record"),
            "{r:?}"
        );
        assert_eq!(out.0, [20_000]);
    }
}
