//! Byte relay between the TLS side and the plaintext side, with an idle
//! timeout and byte counts, and no per-chunk allocation.

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

const BUFFER: usize = 64 * 1024;

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
    let copy = tokio::io::copy_bidirectional_with_sizes(tls, &mut plain, BUFFER, BUFFER);
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
}
