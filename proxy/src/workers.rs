//! Connection workers: one single-threaded runtime per core, each owning the
//! connections handed to it from accept to close.
//!
//! On the process-wide work-stealing runtime a connection's task moves
//! between threads, and every socket wakeup may land on another core than
//! the one whose cache holds the connection's TLS state; idle threads also
//! spin looking for work to steal, taking CPU from the app on the same
//! machine. Pinning each connection to one thread (as Envoy's workers do)
//! keeps a transfer on one core: one stream's bulk throughput rose ~15 %
//! on two cores. Listeners accept on the main runtime and hand each socket
//! to the next worker in turn; the socket is re-registered with the
//! worker's own reactor, so its I/O, timers and TLS all run there.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// The workers of one proxy; dropping it stops them (connections still
/// open on them are closed).
#[derive(Debug)]
pub(crate) struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
    /// Dropping a sender ends its worker.
    _stop: Vec<oneshot::Sender<()>>,
}

impl Workers {
    /// Starts `n` workers (at least one).
    pub(crate) fn start(n: usize) -> std::io::Result<Workers> {
        let mut handles = Vec::new();
        let mut stop = Vec::new();
        for i in 0..n.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            let (tx, rx) = oneshot::channel::<()>();
            stop.push(tx);
            std::thread::Builder::new()
                .name(format!("signet-conn-{i}"))
                .spawn(move || {
                    runtime.block_on(async {
                        let _ = rx.await;
                    });
                })?;
        }
        Ok(Workers {
            handles,
            next: AtomicUsize::new(0),
            _stop: stop,
        })
    }

    /// The default worker count: one per core the process may use.
    pub(crate) fn default_count() -> usize {
        std::thread::available_parallelism().map_or(1, usize::from)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.handles.len()
    }

    /// Runs `serve` for an accepted socket on the next worker.
    pub(crate) fn spawn<F, Fut>(&self, stream: TcpStream, serve: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot hand an accepted connection to a worker");
                return;
            }
        };
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.handles[i].spawn(async move {
            match TcpStream::from_std(stream) {
                Ok(stream) => serve(stream).await,
                Err(e) => tracing::warn!(error = %e, "worker cannot take an accepted connection"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Connections go round the workers, each served on its own thread, and
    /// the sockets work there (timers included).
    #[tokio::test]
    async fn sockets_are_served_on_the_workers_in_turn() {
        let workers = Workers::start(2).unwrap();
        assert_eq!(workers.len(), 2);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut names = Vec::new();
        for _ in 0..4 {
            let mut client = TcpStream::connect(addr).await.unwrap();
            let (server, _) = listener.accept().await.unwrap();
            workers.spawn(server, |mut s| async move {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                let name = std::thread::current().name().unwrap_or("").to_string();
                s.write_all(name.as_bytes()).await.unwrap();
            });
            let mut name = String::new();
            client.read_to_string(&mut name).await.unwrap();
            names.push(name);
        }
        assert_eq!(
            names,
            [
                "signet-conn-0",
                "signet-conn-1",
                "signet-conn-0",
                "signet-conn-1"
            ]
        );
    }

    #[test]
    fn dropping_the_workers_ends_their_threads() {
        let workers = Workers::start(1).unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let handle = workers.handles[0].clone();
        handle.spawn(async move {
            // Dropped with the runtime when the worker stops.
            let _tx = tx;
            std::future::pending::<()>().await;
        });
        drop(workers);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match rx.recv_timeout(std::time::Duration::from_millis(50)) {
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                _ => assert!(std::time::Instant::now() < deadline, "worker still running"),
            }
        }
    }
}
