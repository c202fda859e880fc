//! The floor relay on io_uring instead of epoll (`tokio-uring`: one thread,
//! one ring; every accept, read and write an entry of the ring, submitted
//! together when the thread has nothing left to run). It answers whether
//! batching a worker's system calls, the way down issue 25 named, lowers
//! what a hop costs here: with `SIGNET_BENCH_RELAY=io_uring` the floor pair
//! runs on it.

use std::net::{Shutdown, SocketAddr};
use std::rc::Rc;

use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::{TcpListener, TcpStream};

/// Bytes a direction reads at once (as tokio's `copy_bidirectional`).
const BUF: usize = 8 * 1024;

/// Copies `from` to `to` until `from` ends, then shuts `to`'s write side.
async fn copy(from: Rc<TcpStream>, to: Rc<TcpStream>) {
    let mut buf = vec![0u8; BUF];
    loop {
        let (read, b) = from.read(buf).await;
        match read {
            Ok(n) if n > 0 => {
                let (wrote, b) = to.write_all(b.slice(..n)).await;
                buf = b.into_inner();
                if wrote.is_err() {
                    break;
                }
            }
            _ => break,
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Binds one listener per target port, prints `NAME ADDR` for each, and
/// relays what each accepts to its target until the process is ended.
pub fn serve(targets: &[(&'static str, u16)]) {
    let targets = targets.to_vec();
    tokio_uring::start(async move {
        let mut accepting = Vec::new();
        for (name, to) in targets {
            let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
            println!("{name} {}", listener.local_addr().unwrap());
            let to = SocketAddr::from(([127, 0, 0, 1], to));
            accepting.push(tokio_uring::spawn(async move {
                while let Ok((a, _)) = listener.accept().await {
                    tokio_uring::spawn(async move {
                        let Ok(b) = TcpStream::connect(to).await else {
                            return;
                        };
                        let _ = a.set_nodelay(true);
                        let _ = b.set_nodelay(true);
                        let (a, b) = (Rc::new(a), Rc::new(b));
                        let up = tokio_uring::spawn(copy(a.clone(), b.clone()));
                        copy(b, a).await;
                        let _ = up.await;
                    });
                }
            }));
        }
        for task in accepting {
            let _ = task.await;
        }
    });
}
