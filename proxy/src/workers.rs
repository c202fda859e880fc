//! Connection workers: one single-threaded runtime per core, each accepting
//! on its own socket and owning its connections from accept to close.
//!
//! On the process-wide work-stealing runtime a connection's task moved
//! between threads, and every socket wakeup could land on another core than
//! the one whose cache held the connection's TLS state; idle threads also
//! spun looking for work to steal, taking CPU from the app on the same
//! machine. Here, as with Envoy's workers, every listener has one socket per
//! worker bound to the same address with `SO_REUSEPORT` (the kernel spreads
//! new connections across them); a worker accepts on its socket and serves
//! what it accepts itself: I/O, timers and TLS of a connection all stay on
//! one thread, and no connection is handed between threads.

use std::future::Future;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// The shortest period of a worker's tick (see [`Workers::start`]).
pub(crate) const MIN_TICK: Duration = Duration::from_secs(1);

/// The workers of one proxy; dropping it stops them (connections still
/// open on them are closed).
#[derive(Debug)]
pub(crate) struct Workers {
    handles: Vec<Handle>,
    /// Dropping a sender ends its worker.
    _stop: Vec<oneshot::Sender<()>>,
}

impl Workers {
    /// Starts `n` workers (at least one), each with a timer that fires
    /// every `tick` (at least [`MIN_TICK`]).
    ///
    /// The tick is what keeps a new connection's timers (its handshake and
    /// connect deadlines) from costing system calls. Tokio's timer wakes
    /// its own driver (a write to an eventfd, then one more round of
    /// `epoll_wait`) whenever a timer is set to fire before every timer
    /// the driver last went to sleep with; on a worker whose connections
    /// finish their handshakes quickly, none is left when it sleeps, so
    /// every new connection paid that. With a timer always due within
    /// `tick`, a deadline at least `tick` away never comes first. Pass the
    /// shortest of the listeners' per-connection timeouts.
    pub(crate) fn start(n: usize, tick: Duration) -> std::io::Result<Workers> {
        let tick = tick.max(MIN_TICK);
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
                        let ticking = async {
                            loop {
                                tokio::time::sleep(tick).await;
                            }
                        };
                        tokio::select! {
                            _ = rx => {}
                            () = ticking => {}
                        }
                    });
                })?;
        }
        Ok(Workers {
            handles,
            _stop: stop,
        })
    }

    /// The default worker count: one per core the process may use.
    pub(crate) fn default_count() -> usize {
        std::thread::available_parallelism().map_or(1, usize::from)
    }

    pub(crate) fn len(&self) -> usize {
        self.handles.len()
    }

    /// Runs `task` on worker `i`.
    pub(crate) fn spawn_on<F>(&self, i: usize, task: F) -> tokio::task::JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.handles[i % self.handles.len()].spawn(task)
    }
}

/// Binds `count` listening sockets to `addr` with `SO_REUSEPORT` (the first
/// resolves a port 0, the rest take the same port). They are returned as
/// std sockets, to be registered with the runtime of the worker that uses
/// each. Another process can join the group only under the same user.
pub(crate) fn bind_group(
    addr: std::net::SocketAddr,
    count: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    let mut sockets = Vec::new();
    let mut addr = addr;
    for _ in 0..count.max(1) {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket.bind(addr)?;
        let listener = socket.listen(LISTEN_BACKLOG)?;
        addr = listener.local_addr()?;
        sockets.push(listener.into_std()?);
    }
    Ok(sockets)
}

/// Pending connections per worker socket (as tokio's `TcpListener::bind`).
const LISTEN_BACKLOG: u32 = 1024;

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// A group of sockets shares one port; each, registered on a worker,
    /// accepts there, and every connection is served by one of them.
    #[tokio::test]
    async fn every_worker_socket_accepts_on_the_shared_port() {
        let workers = Workers::start(2, MIN_TICK).unwrap();
        assert_eq!(workers.len(), 2);
        let group = bind_group("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let addr = group[0].local_addr().unwrap();
        assert_eq!(group[1].local_addr().unwrap(), addr);
        let mut loops = Vec::new();
        for (i, socket) in group.into_iter().enumerate() {
            loops.push(workers.spawn_on(i, async move {
                let listener = tokio::net::TcpListener::from_std(socket).unwrap();
                loop {
                    let (mut s, _) = listener.accept().await.unwrap();
                    tokio::spawn(async move {
                        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                        let name = std::thread::current().name().unwrap_or("").to_string();
                        s.write_all(name.as_bytes()).await.unwrap();
                    });
                }
            }));
        }
        let mut seen = std::collections::HashSet::new();
        for _ in 0..64 {
            let mut client = TcpStream::connect(addr).await.unwrap();
            let mut name = String::new();
            client.read_to_string(&mut name).await.unwrap();
            assert!(name.starts_with("signet-conn-"), "{name}");
            seen.insert(name);
        }
        // The kernel hashes connections over both sockets.
        assert_eq!(seen.len(), 2, "{seen:?}");
        for l in loops {
            l.abort();
        }
    }

    /// Write system calls this thread has made.
    fn writes_by_this_thread() -> u64 {
        let io = std::fs::read_to_string("/proc/thread-self/io").unwrap();
        io.lines()
            .find_map(|l| l.strip_prefix("syscw: "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap()
    }

    /// A connection's deadlines (seconds away) are set without a system
    /// call: without the tick, each woke the worker's driver through its
    /// eventfd (one `write`, then a wasted `epoll_wait`).
    #[test]
    fn a_new_deadline_does_not_wake_the_worker() {
        let workers = Workers::start(1, MIN_TICK).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        workers.handles[0].spawn(async move {
            // Let the worker sleep and wake once, as between connections.
            tokio::time::sleep(Duration::from_millis(5)).await;
            let before = writes_by_this_thread();
            let deadline = tokio::time::sleep(Duration::from_secs(5));
            tokio::pin!(deadline);
            // Polling registers the timer.
            std::future::poll_fn(|cx| {
                assert!(deadline.as_mut().poll(cx).is_pending());
                std::task::Poll::Ready(())
            })
            .await;
            tx.send(writes_by_this_thread() - before).unwrap();
        });
        let writes = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(writes, 0, "setting a 5 s deadline made {writes} write(s)");
    }

    #[test]
    fn a_port_taken_by_another_socket_is_refused() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let err = bind_group(taken.local_addr().unwrap(), 2).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    }

    #[test]
    fn dropping_the_workers_ends_their_threads() {
        let workers = Workers::start(1, MIN_TICK).unwrap();
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
