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

/// The most one read moves. Reads land in a buffer on the stack; only what
/// the writer does not take at once is kept on the heap, and that is freed
/// when the direction goes quiet, so ten thousand idle connections hold no
/// relay buffers at all while a bulk transfer still moves 64 KiB a read.
const READ_SIZE: usize = 64 * 1024;

/// One direction of the relay: read, write it all out, repeat; at end of
/// input flush and shut the writer down.
#[derive(Debug)]
struct Pipe {
    /// Read but not yet written (the writer pushed back): `pending[pos..]`.
    pending: Vec<u8>,
    pos: usize,
    need_flush: bool,
    state: PipeState,
    moved: u64,
}

#[derive(Debug, PartialEq, Eq)]
enum PipeState {
    Copying,
    ShuttingDown,
    Done,
}

impl Pipe {
    fn new() -> Pipe {
        Pipe {
            pending: Vec::new(),
            pos: 0,
            need_flush: false,
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
                    if self.pos < self.pending.len() {
                        let pending = std::mem::take(&mut self.pending);
                        let wrote = self.write_some(cx, &mut writer, &pending[self.pos..]);
                        self.pending = pending;
                        self.pos += wrote?;
                        if self.pos < self.pending.len() {
                            return Poll::Pending;
                        }
                    }
                    // Drained: keep the capacity for the next burst.
                    self.pending.clear();
                    self.pos = 0;
                    let mut stack = [std::mem::MaybeUninit::<u8>::uninit(); READ_SIZE];
                    let mut read = ReadBuf::uninit(&mut stack);
                    match reader.as_mut().poll_read(cx, &mut read) {
                        Poll::Pending => {
                            // Quiet: give the buffer back.
                            self.pending = Vec::new();
                            if self.need_flush {
                                std::task::ready!(writer.as_mut().poll_flush(cx))?;
                                self.need_flush = false;
                            }
                            return Poll::Pending;
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Ready(Ok(())) => {
                            let data = read.filled();
                            if data.is_empty() {
                                self.state = PipeState::ShuttingDown;
                                continue;
                            }
                            let wrote = self.write_some(cx, &mut writer, data)?;
                            if wrote < data.len() {
                                self.pending.extend_from_slice(&data[wrote..]);
                                return Poll::Pending;
                            }
                        }
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
        let (mut client, mut server) = tokio::io::duplex(1 << 20);
        let mut pipe = Pipe::new();

        // Data the writer takes at once: relayed, nothing kept.
        let data = vec![5u8; 100_000];
        assert!(matches!(
            Pin::new(&mut client).poll_write(&mut cx, &data),
            Poll::Ready(Ok(100_000))
        ));
        let mut out = Vec::new();
        let r = pipe.poll_copy(&mut cx, Pin::new(&mut server), Pin::new(&mut out));
        assert!(r.is_pending());
        assert_eq!(out, data);
        assert_eq!(pipe.pending.capacity(), 0);

        // A writer that pushes back: what it did not take is kept, in order.
        assert!(matches!(
            Pin::new(&mut client).poll_write(&mut cx, &data),
            Poll::Ready(Ok(100_000))
        ));
        let (mut small_in, mut small_out) = tokio::io::duplex(1000);
        let r = pipe.poll_copy(&mut cx, Pin::new(&mut server), Pin::new(&mut small_in));
        assert!(r.is_pending());
        assert_eq!(pipe.moved, 101_000);
        assert_eq!(pipe.pending.len() - pipe.pos, READ_SIZE - 1000);
        let mut first = vec![0u8; 1000];
        assert!(matches!(
            Pin::new(&mut small_out).poll_read(&mut cx, &mut ReadBuf::new(&mut first)),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(first, vec![5u8; 1000]);
    }
}
