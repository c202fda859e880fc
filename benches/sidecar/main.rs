//! The sidecar against Envoy, side by side on this machine with the same
//! certificates (both take SVIDs from the same `signet run` agent: Envoy
//! over SDS, ours over the Workload API) and the same cipher
//! (TLS 1.3, AES-128-GCM). Topology for each contender:
//!
//!   load generator -> outbound proxy -> mTLS -> inbound proxy (+ per-connection authz) -> backend
//!
//! Ours authorizes with the Rego allow-list of `policy/rego` (decision cache
//! on, the default); Envoy with its network RBAC filter on the peer's
//! SPIFFE ID. "direct" is the load generator straight to the backend.
//!
//!   bench/sidecar.sh                       (needs root: proxies run under their own uids)
//!
//! The script measures the `cargo build --release` binary (SIGNET_BENCH_BIN);
//! `cargo bench --bench sidecar` alone measures the bench profile's build.
//!
//! Env: SIGNET_BENCH_SECONDS (per measure, default 5), SIGNET_BENCH_CONNS
//! (open connections for the RSS measure, default 10000, capped by the
//! open-file hard limit: each held connection costs a proxy two
//! descriptors), SIGNET_BENCH_BULK_MIB (default 1024), SIGNET_BENCH_ONLY
//! (`idle`: idle memory only; `bulk`: idle memory and bulk only; `conns`:
//! idle memory and the open-connections measure only; `ext_authz`: Envoy
//! with ext_authz by `signet authz` against Envoy alone, nothing else;
//! `breakdown`: each proxy's CPU time, system calls and context switches
//! per keep-alive request, and where the CPU goes, by `perf`),
//! SIGNET_BENCH_PROXY_WORKERS (worker threads of every proxy, ours and
//! Envoy's `--concurrency`; default one per core),
//! SIGNET_BENCH_HOLD (seconds to keep the processes up after `idle`, to
//! look at them), SIGNET_BENCH_FLEET (how many inbound proxies of each kind
//! run at once for the shared-memory measure, default 10).
//!
//! Beside the two contenders runs a floor: the same two hops through bare
//! plaintext TCP relays (`--serve-relay`: one thread, no TLS, no
//! authorization), what any user-space proxy pair costs on this machine
//! before doing any work of its own; `SIGNET_BENCH_RELAY=io_uring` runs that
//! pair on io_uring instead of epoll. Its requests/s and connections/s bound
//! what a lead over Envoy can be here.
//!
//! Memory is reported as a cgroup counts it: private (anonymous) memory,
//! which each process pays alone, and PSS, which splits the pages of the
//! one binary among the processes that map it; RSS counts shared pages once
//! per process. Idle memory is measured with one proxy of each kind and
//! again with SIGNET_BENCH_FLEET inbound proxies of each kind running.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod breakdown;
mod uring_relay;

use signet_testkit::envoy::{self, Envoy, bootstrap};
use signet_testkit::http::get as http_get;
use signet_testkit::process::{Proc, eventually_within, write_for_others};
use signet_testkit::usage::{Mem, cpu_secs, mean, mem_kib};

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SIGNET_CLIENT: &str = "spiffe://example.org/ns/web/sa/bench-client";
const SIGNET_SERVER: &str = "spiffe://example.org/ns/api/sa/bench-server";
const ENVOY_CLIENT: &str = "spiffe://example.org/ns/web/sa/envoy-client";
const ENVOY_SERVER: &str = "spiffe://example.org/ns/api/sa/envoy-server";

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// How long the bench waits for its processes to come up.
const STARTUP: Duration = Duration::from_secs(60);

/// The backend: `e` + echo, or `s` + sink (count until EOF, then reply
/// with the count). An HTTP/1.1 server answering 1 KiB bodies.
async fn tcp_backend(listener: TcpListener) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let _ = s.set_nodelay(true);
            let mut mode = [0u8; 1];
            if s.read_exact(&mut mode).await.is_err() {
                return;
            }
            let mut buf = vec![0u8; 64 * 1024];
            let mut total = 0u64;
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        total += n as u64;
                        if mode[0] == b'e' && s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
            if mode[0] == b's' {
                let _ = s.write_all(&total.to_be_bytes()).await;
            }
        });
    }
}

async fn http_backend(listener: TcpListener) {
    let body = Bytes::from(vec![b'x'; 1024]);
    loop {
        let Ok((s, _)) = listener.accept().await else {
            continue;
        };
        let _ = s.set_nodelay(true);
        let body = body.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |_req| {
                let body = body.clone();
                async move { Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(body))) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(s), service)
                .await;
        });
    }
}

async fn echo_once(port: u16) -> bool {
    let Ok(Ok(mut s)) = tokio::time::timeout(
        Duration::from_secs(5),
        TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    else {
        return false;
    };
    let _ = s.set_nodelay(true);
    let mut b = [0u8; 1];
    s.write_all(b"ex").await.is_ok()
        && matches!(
            tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut b)).await,
            Ok(Ok(_))
        )
        && b[0] == b'x'
}

async fn bulk(port: u16, mib: u64) -> f64 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let chunk = vec![7u8; 256 * 1024];
    let started = Instant::now();
    s.write_all(b"s").await.unwrap();
    for _ in 0..(mib * 4) {
        s.write_all(&chunk).await.unwrap();
    }
    s.shutdown().await.unwrap();
    let mut count = [0u8; 8];
    s.read_exact(&mut count).await.unwrap();
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(u64::from_be_bytes(count), mib * 1024 * 1024, "sink count");
    (mib as f64 * 1024.0 * 1024.0 * 8.0) / secs / 1e9
}

async fn http_conn(port: u16) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.set_nodelay(true).unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

async fn one_request(send: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>) {
    send.ready().await.unwrap();
    let req = hyper::Request::builder()
        .uri("/")
        .header("host", "backend")
        .body(Empty::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), 1024);
}

/// What a keep-alive load measured: requests/s, and the p50 / p99 latency
/// of its requests (ms), i.e. latency under that load.
struct Load {
    rate: f64,
    p50: f64,
    p99: f64,
}

/// Requests/s over `conns` keep-alive connections for `secs`, with every
/// request's latency.
async fn rps(port: u16, conns: usize, secs: u64) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut send = http_conn(port).await;
            let mut times = Vec::with_capacity(1 << 16);
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                one_request(&mut send).await;
                times.push(t.elapsed());
            }
            times
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let mut times = Vec::new();
    for t in tasks {
        times.extend(t.await.unwrap());
    }
    times.sort();
    let ms = |q: usize| times.get(q).map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    Load {
        rate: times.len() as f64 / elapsed,
        p50: ms(times.len() / 2),
        p99: ms(times.len() * 99 / 100),
    }
}

/// `SIGNET_BENCH_ONLY=breakdown`: for each contender, its two proxies'
/// CPU time, system calls and context switches per keep-alive request and
/// per new mTLS connection (`perf stat`), then where that CPU time goes
/// (`perf record`, by bucket).
fn run_breakdown(rt: &tokio::runtime::Runtime, paths: &[Path3], secs: u64, dir: &Path) {
    let keep_alive = |p: &Path3| rt.block_on(rps(p.http, 16, secs)).rate;
    let connections = |p: &Path3| rt.block_on(new_conns(p.echo, 32, secs)).0;
    for (what, load) in [
        (
            "Keep-alive 1 KiB requests: cost per request in each proxy (16 connections",
            &keep_alive as &dyn Fn(&Path3) -> f64,
        ),
        (
            "New mTLS connections, one echoed byte each, per-connection authz: cost per connection in each proxy (32 workers",
            &connections,
        ),
    ] {
        let mut labels = Vec::new();
        let mut rates = Vec::new();
        let mut counts = Vec::new();
        let mut shares = Vec::new();
        for p in paths {
            let (rate, c, b) = profile_pass(p, secs, dir, || load(p));
            for (side, (c, b)) in ["inbound", "outbound"].iter().zip(c.into_iter().zip(b)) {
                labels.push(format!("{} {side}", p.name));
                rates.push(rate);
                counts.push(c);
                shares.push(b);
            }
        }
        println!("## {what}, {secs} s)\n");
        println!("| Per unit | {} |", labels.join(" | "));
        println!("|---|{}", "---|".repeat(labels.len()));
        let row = |name: &str, f: &dyn Fn(usize) -> String| {
            let cells: Vec<String> = (0..labels.len()).map(f).collect();
            println!("| {name} | {} |", cells.join(" | "));
        };
        row("per second (the pair)", &|i| format!("{:.0}", rates[i]));
        row("CPU µs, user + system", &|i| {
            format!(
                "{:.1} + {:.1} = **{:.1}**",
                counts[i].cpu_user_us,
                counts[i].cpu_sys_us,
                counts[i].cpu_user_us + counts[i].cpu_sys_us
            )
        });
        row("system calls", &|i| format!("{:.1}", counts[i].syscalls));
        row("context switches", &|i| {
            format!("{:.2}", counts[i].context_switches)
        });
        println!("\nWhere the CPU time goes, µs per unit (share of samples):\n");
        println!("| Bucket | {} |", labels.join(" | "));
        println!("|---|{}", "---|".repeat(labels.len()));
        for bucket in breakdown::bucket_names() {
            row(bucket, &|i| {
                let pct = shares[i].get(bucket).copied().unwrap_or(0.0);
                let total = counts[i].cpu_user_us + counts[i].cpu_sys_us;
                format!("{:.1} ({pct:.0} %)", total * pct / 100.0)
            });
        }
        println!();
    }
}

/// Runs `load` (returning units per second over `secs`) twice on the
/// proxies of `p`: under `perf stat` for the counts per unit of each
/// proxy, then under `perf record` for where their CPU goes.
fn profile_pass(
    p: &Path3,
    secs: u64,
    dir: &Path,
    load: impl Fn() -> f64,
) -> (
    f64,
    Vec<breakdown::Counts>,
    Vec<std::collections::BTreeMap<&'static str, f64>>,
) {
    let file = |i: usize, ext: &str| dir.join(format!("{}-{i}.{ext}", p.name));
    // `load` with `perf command` on each proxy, writing files `ext`.
    let under_perf = |command: &[&str], ext: &str| {
        let mut perf: Vec<_> = p
            .pids
            .iter()
            .enumerate()
            .map(|(i, pid)| breakdown::start(command, *pid, secs, &file(i, ext)))
            .collect();
        let rate = load();
        for c in &mut perf {
            c.wait().unwrap();
        }
        rate
    };
    let before: Vec<(f64, f64)> = p.pids.iter().map(|pid| breakdown::user_sys(*pid)).collect();
    let rate = under_perf(breakdown::STAT, "stat");
    let counts = p
        .pids
        .iter()
        .enumerate()
        .map(|(i, pid)| {
            let (u1, s1) = breakdown::user_sys(*pid);
            let (u0, s0) = before[i];
            breakdown::counts(&file(i, "stat"), u1 - u0, s1 - s0, rate * secs as f64)
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    under_perf(breakdown::RECORD, "perf");
    let shares = (0..p.pids.len())
        .map(|i| breakdown::buckets(&file(i, "perf")))
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    (rate, counts, shares)
}

/// p50/p99 of sequential requests on one keep-alive connection, in ms.
async fn latency(port: u16, n: usize) -> (f64, f64) {
    let mut send = http_conn(port).await;
    for _ in 0..200 {
        one_request(&mut send).await;
    }
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        one_request(&mut send).await;
        times.push(t.elapsed());
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    (ms(times[n / 2]), ms(times[n * 99 / 100]))
}

/// New connections/s, each carrying one echoed byte, from `workers` tasks.
async fn new_conns(port: u16, workers: usize, secs: u64) -> (f64, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if echo_once(port).await {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let n = ok.load(Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    for t in tasks {
        t.await.unwrap();
    }
    (n as f64 / elapsed, failed.load(Ordering::Relaxed))
}

/// Opens `n` connections through the path (each proven end to end by an
/// echoed byte) and returns them, to be held while RSS is read.
async fn hold(port: u16, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(n);
    let mut pending = tokio::task::JoinSet::new();
    let mut opened = 0;
    while opened < n || !pending.is_empty() {
        while opened < n && pending.len() < 256 {
            opened += 1;
            pending.spawn(async move {
                let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
                s.write_all(b"ex").await.ok()?;
                let mut b = [0u8; 1];
                tokio::time::timeout(Duration::from_secs(20), s.read_exact(&mut b))
                    .await
                    .ok()?
                    .ok()?;
                Some(s)
            });
        }
        if let Some(r) = pending.join_next().await
            && let Some(s) = r.unwrap()
        {
            held.push(s);
        }
    }
    held
}

struct Path3 {
    name: &'static str,
    echo: u16,
    http: u16,
    pids: Vec<u32>,
}

/// Argument that makes this binary serve the backends (echo/sink and
/// HTTP) and print their ports.
const SERVE_BACKENDS: &str = "--serve-backends";

/// An OPA-Envoy policy of the usual size: method, path, a header.
const EXT_AUTHZ_POLICY: &str = r#"package envoy.authz
import rego.v1
default allow := false
allow if {
    input.attributes.request.http.method == "GET"
    input.attributes.request.http.path == "/"
    input.attributes.request.http.host == "backend"
}
"#;

/// Envoy with ext_authz asking `signet authz` (one Check per request, over
/// a Unix socket) against the same Envoy with no authorization: 1 KiB GETs
/// over 16 keep-alive connections, and one at a time for latency.
async fn ext_authz_vs_none(dir: &Path, bin: &Path, envoy_bin: &Path, backend: u16, secs: u64) {
    let policy = dir.join("ext_authz.rego");
    std::fs::write(&policy, EXT_AUTHZ_POLICY).unwrap();
    let sock = dir.join("authz.sock");
    let mut cmd = Command::new(bin);
    cmd.args(["authz", "--policy"])
        .arg(&policy)
        .arg("--listen")
        .arg(format!("unix:{}", sock.display()))
        .env("SIGNET_LOG", "warn");
    let mut authz = Proc::spawn("signet-authz", cmd, dir);
    authz.wait_for("Press Ctrl-C");
    let write = |name: &str, text: String| write_for_others(&dir.join(name), &text);
    let with_cfg = write(
        "envoy-ext-authz.json",
        bootstrap::ext_authz(sock.to_str().unwrap(), backend),
    );
    let none_cfg = write("envoy-plain.json", bootstrap::http_proxy(backend));
    let with = envoy::start("envoy-ext-authz", envoy_bin, &with_cfg, 0, dir, &[]);
    let none = envoy::start("envoy-plain", envoy_bin, &none_cfg, 0, dir, &[]);
    let (with_port, none_port) = (with.listener_port("authz"), none.listener_port("http"));
    println!("Envoy (one worker) + ext_authz by signet authz, against the same Envoy alone:");
    for (name, port) in [("alone", none_port), ("+ ext_authz", with_port)] {
        let cpu = cpu_secs(authz.pid());
        let rate = rps(port, 16, secs).await.rate;
        let authz_cpu = (cpu_secs(authz.pid()) - cpu) / secs as f64;
        let (p50, p99) = latency(port, 2000).await;
        println!(
            "  {name:<12} {rate:>8.0} req/s (16 conns)   p50 {:.0} µs  p99 {:.0} µs   signet authz CPU {:.0}%",
            p50 * 1000.0,
            p99 * 1000.0,
            authz_cpu * 100.0
        );
    }
}

/// Argument that makes this binary a plaintext TCP relay (`--serve-relay
/// ECHO_PORT HTTP_PORT`): the floor contender. No TLS, no authorization,
/// one thread, tokio's `copy_bidirectional`: what any user-space proxy hop
/// costs on this machine before it does any work of its own.
const SERVE_RELAY: &str = "--serve-relay";

/// The floor path's name in the tables.
const FLOOR: &str = "bare relay";

fn serve_relay(echo_to: u16, http_to: u16) {
    if std::env::var("SIGNET_BENCH_RELAY").as_deref() == Ok("io_uring") {
        return uring_relay::serve(&[("echo", echo_to), ("http", http_to)]);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let bind = |name: &'static str| async move {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            println!("{name} {}", l.local_addr().unwrap());
            l
        };
        let (e, h) = (bind("echo").await, bind("http").await);
        tokio::join!(relay_to(e, echo_to), relay_to(h, http_to));
    });
}

/// Relays every connection `listener` accepts to `to`, forever.
async fn relay_to(listener: TcpListener, to: u16) {
    loop {
        let Ok((mut a, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let Ok(mut b) = TcpStream::connect(("127.0.0.1", to)).await else {
                return;
            };
            let _ = a.set_nodelay(true);
            let _ = b.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
        });
    }
}

/// Starts a floor relay in front of `echo` and `http`; returns it and its
/// (echo, http) ports.
fn start_relay(name: &str, echo: u16, http: u16, dir: &Path) -> (Proc, u16, u16) {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([SERVE_RELAY, &echo.to_string(), &http.to_string()]);
    let mut p = Proc::spawn(name, c, dir);
    let e = p.reported_addr("echo ").port();
    let h = p.reported_addr("http ").port();
    (p, e, h)
}

fn serve_backends() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let e = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let h = TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("echo {}", e.local_addr().unwrap());
        println!("http {}", h.local_addr().unwrap());
        tokio::spawn(http_backend(h));
        tcp_backend(e).await;
    });
}

fn raise_nofile() {
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard).unwrap();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    if let Some(at) = args.iter().position(|a| a == SERVE_RELAY) {
        let port = |i: usize| {
            args[at + i]
                .parse()
                .expect("--serve-relay ECHO_PORT HTTP_PORT")
        };
        raise_nofile();
        return serve_relay(port(1), port(2));
    }
    if args.iter().any(|a| a == SERVE_BACKENDS) {
        raise_nofile();
        return serve_backends();
    }
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    if !root {
        eprintln!("sidecar bench: needs root (the proxies run under their own uids); skipped");
        return;
    }
    let secs = env_num("SIGNET_BENCH_SECONDS", 5);
    let mib = env_num("SIGNET_BENCH_BULK_MIB", 1024);
    // Each held connection costs every proxy two descriptors; the open-file
    // hard limit (the children inherit it) caps how many can be held.
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .expect("read RLIMIT_NOFILE");
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard)
        .expect("raise the RLIMIT_NOFILE soft limit to the hard one");
    let most = usize::try_from(hard.saturating_sub(200) / 2).unwrap_or(usize::MAX);
    let conns = (env_num("SIGNET_BENCH_CONNS", 10_000) as usize).min(most);

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.join("signet");
    // bench/sidecar.sh passes the `cargo build --release` binary.
    let measured = std::env::var_os("SIGNET_BENCH_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_signet")),
        PathBuf::from,
    );
    std::fs::copy(&measured, &bin).unwrap_or_else(|e| panic!("copy {}: {e}", measured.display()));
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The copy's pages sit in the page cache as written (large folios that a
    // process maps whole); on a node the binary is read from disk. Flush and
    // drop them so every process faults its code in as it would there.
    let dropped = Command::new("dd")
        .arg(format!("of={}", bin.display()))
        .args(["oflag=nocache", "conv=notrunc,fdatasync", "count=0"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        dropped,
        "dd could not drop the binary copy from the page cache"
    );
    let envoy = envoy::binary(dir);
    let agent = dir.join("agent.sock").display().to_string();
    let admin = dir.join("admin.sock").display().to_string();
    let mut procs = Vec::new();
    let mut run = Command::new(&bin);
    run.args(["run", "--data-dir"])
        .arg(dir.join("data"))
        .args([
            "--admin-socket",
            &admin,
            "--socket-path",
            &agent,
            "--bind-address",
            "127.0.0.1:0",
        ])
        .env("SIGNET_LOG", "warn");
    let mut run = Proc::spawn("signet-run", run, dir);
    run.wait_for("Press Ctrl-C");
    procs.push(run);
    for (id, uid) in [
        (SIGNET_SERVER, 65534),
        (SIGNET_CLIENT, 65533),
        (ENVOY_SERVER, 65532),
        (ENVOY_CLIENT, 65531),
    ] {
        let out = Command::new(&bin)
            .args([
                "entry",
                "create",
                "--spiffe-id",
                id,
                "--selector",
                &format!("unix:uid:{uid}"),
                "--socket",
                &admin,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // The backends live in a child process, so this one's descriptors go to
    // the load generator's connections only.
    let mut backends = Command::new(std::env::current_exe().unwrap());
    backends.arg(SERVE_BACKENDS);
    let mut backends = Proc::spawn("backends", backends, dir);
    let echo = backends.reported_addr("echo ").port();
    let http = backends.reported_addr("http ").port();
    procs.push(backends);

    if std::env::var("SIGNET_BENCH_ONLY").as_deref() == Ok("ext_authz") {
        rt.block_on(ext_authz_vs_none(dir, &bin, &envoy, http, secs));
        return;
    }

    // Ours.
    let policy = Path::new(env!("CARGO_MANIFEST_DIR")).join("policy/rego/spiffe_allowlist.rego");
    // Every listener and admin endpoint binds port 0; each process reports
    // the ports it took.
    let write = |name: &str, text: String| write_for_others(&dir.join(name), &text);
    let policy_copy = write("policy.rego", std::fs::read_to_string(&policy).unwrap());
    let inbound = write(
        "inbound.toml",
        format!(
            "admin_listen = \"127.0.0.1:0\"\n\
             [[listener]]\nname = \"echo\"\nmode = \"inbound\"\nlisten = \"127.0.0.1:0\"\nto = \"127.0.0.1:{echo}\"\npolicy = \"{p}\"\nmax_connections = {max}\n\
             [[listener]]\nname = \"http\"\nmode = \"inbound\"\nlisten = \"127.0.0.1:0\"\nto = \"127.0.0.1:{http}\"\npolicy = \"{p}\"\nmax_connections = {max}\n",
            p = policy_copy.display(),
            max = conns + 100,
        ),
    );
    let proxy = |cfg: &Path, uid: u32| {
        let mut c = Command::new(&bin);
        c.args(["proxy", "--config"])
            .arg(cfg)
            .args(["--socket", &agent])
            .env("SIGNET_LOG", "warn")
            // Measured as deployed: without the developer's RUST_BACKTRACE,
            // under which regorus' parser captures a backtrace for every
            // parse alternative it abandons (~1.3 MiB more idle RSS).
            .env_remove("RUST_BACKTRACE")
            .env_remove("RUST_LIB_BACKTRACE")
            .uid(uid)
            .gid(uid);
        if let Ok(n) = std::env::var("SIGNET_BENCH_PROXY_WORKERS") {
            c.args(["--workers", &n]);
        }
        c
    };
    let mut s_in = Proc::spawn("signet-inbound", proxy(&inbound, 65534), dir);
    let s_in_pid = s_in.pid();
    let s_in_e = s_in.reported_addr("listener echo:").port();
    let s_in_h = s_in.reported_addr("listener http:").port();
    let s_in_admin = s_in.reported_addr("admin endpoint:").port();
    procs.push(s_in);
    let outbound = write(
        "outbound.toml",
        format!(
            "[[listener]]\nname = \"echo\"\nmode = \"outbound\"\nlisten = \"127.0.0.1:0\"\nto = \"127.0.0.1:{s_in_e}\"\nserver_id = \"{SIGNET_SERVER}\"\nmax_connections = {max}\n\
             [[listener]]\nname = \"http\"\nmode = \"outbound\"\nlisten = \"127.0.0.1:0\"\nto = \"127.0.0.1:{s_in_h}\"\nserver_id = \"{SIGNET_SERVER}\"\nmax_connections = {max}\n",
            max = conns + 100,
        ),
    );
    let mut s_out = Proc::spawn("signet-outbound", proxy(&outbound, 65533), dir);
    let s_out_pid = s_out.pid();
    let s_out_e = s_out.reported_addr("listener echo:").port();
    let s_out_h = s_out.reported_addr("listener http:").port();
    procs.push(s_out);

    // Envoy, with as many worker threads as it takes by default, or as
    // many as ours are given.
    let workers = std::env::var("SIGNET_BENCH_PROXY_WORKERS").unwrap_or_else(|_| {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .to_string()
    });
    let start_envoy = |name: &str, cfg: &Path, uid: u32| -> Envoy {
        envoy::start(
            name,
            &envoy,
            cfg,
            uid,
            dir,
            &["-l", "warn", "--concurrency", &workers],
        )
    };
    let envoy_in_cfg = write(
        "envoy-in.json",
        bootstrap::inbound(&agent, &[echo, http], ENVOY_SERVER, ENVOY_CLIENT),
    );
    let e_in = start_envoy("envoy-inbound", &envoy_in_cfg, 65532);
    let (e_in_e, e_in_h) = (e_in.listener_port("in0"), e_in.listener_port("in1"));
    let envoy_out_cfg = write(
        "envoy-out.json",
        bootstrap::outbound(&agent, &[e_in_e, e_in_h], ENVOY_SERVER),
    );
    let e_out = start_envoy("envoy-outbound", &envoy_out_cfg, 65531);
    let (e_out_e, e_out_h) = (e_out.listener_port("out0"), e_out.listener_port("out1"));
    let (e_in_pid, e_out_pid) = (e_in.pid(), e_out.pid());

    for (name, port) in [("ours", s_out_e), ("Envoy", e_out_e)] {
        eventually_within(STARTUP, &format!("an echo through {name}"), || {
            rt.block_on(echo_once(port)).then_some(())
        });
    }
    std::thread::sleep(Duration::from_secs(2)); // let startup allocations settle before reading idle memory
    let mut idle: Vec<(String, String)> = [
        ("signet inbound", s_in_pid),
        ("signet outbound", s_out_pid),
        ("Envoy inbound", e_in_pid),
        ("Envoy outbound", e_out_pid),
    ]
    .iter()
    .map(|(name, pid)| (name.to_string(), mem_kib(*pid).to_string()))
    .collect();

    // A fleet of inbound proxies of each kind, as on a node with many
    // legacy apps: what each costs when the binary's pages are shared.
    let fleet = env_num("SIGNET_BENCH_FLEET", 10).max(1) as usize;
    {
        let mut signet_fleet = Vec::new();
        let mut envoy_fleet = Vec::new();
        let mut ready_ports = Vec::new();
        for i in 1..fleet {
            let cfg = write(
                &format!("inbound-{i}.toml"),
                format!(
                    "admin_listen = \"127.0.0.1:0\"\n\
                     [[listener]]\nmode = \"inbound\"\nlisten = \"127.0.0.1:0\"\nto = \"127.0.0.1:{echo}\"\npolicy = \"{p}\"\n\
                     [[listener]]\nmode = \"inbound\"\nlisten = \"127.0.0.1:0\"\nto = \"127.0.0.1:{http}\"\npolicy = \"{p}\"\n",
                    p = policy_copy.display(),
                ),
            );
            let name = format!("signet-inbound-{i}");
            let mut p = Proc::spawn(&name, proxy(&cfg, 65534), dir);
            ready_ports.push((name, p.reported_addr("admin endpoint:").port(), "ready:"));
            signet_fleet.push(p);
            let ecfg = write(
                &format!("envoy-in-{i}.json"),
                bootstrap::inbound(&agent, &[echo, http], ENVOY_SERVER, ENVOY_CLIENT),
            );
            let name = format!("envoy-inbound-{i}");
            let e = start_envoy(&name, &ecfg, 65532);
            ready_ports.push((name, e.admin_port(), "LIVE"));
            envoy_fleet.push(e);
        }
        for (name, port, want) in ready_ports {
            eventually_within(STARTUP, &format!("{name} to be ready"), || {
                http_get(port, "/ready").contains(want).then_some(())
            });
        }
        let signet_pids: Vec<u32> = std::iter::once(s_in_pid)
            .chain(signet_fleet.iter().map(Proc::pid))
            .collect();
        let envoy_pids: Vec<u32> = std::iter::once(e_in_pid)
            .chain(envoy_fleet.iter().map(Envoy::pid))
            .collect();
        std::thread::sleep(Duration::from_secs(2));
        for (name, pids) in [
            ("signet inbound", &signet_pids),
            ("Envoy inbound", &envoy_pids),
        ] {
            let mems: Vec<Mem> = pids.iter().map(|pid| mem_kib(*pid)).collect();
            let total_pss: u64 = mems.iter().map(|m| m.pss).sum();
            idle.push((
                format!("{name}, each of {fleet} running"),
                format!(
                    "{} (all {fleet}: PSS {:.1})",
                    mean(&mems),
                    total_pss as f64 / 1024.0
                ),
            ));
        }
    }
    let only = std::env::var("SIGNET_BENCH_ONLY").unwrap_or_default();
    if only == "idle" {
        println!("Idle memory after startup (MiB):");
        for (name, mem) in &idle {
            println!("- {name}: {mem}");
        }
        let hold = env_num("SIGNET_BENCH_HOLD", 0);
        if hold > 0 {
            println!("signet inbound pid {s_in_pid}, outbound pid {s_out_pid}");
            println!("Envoy inbound pid {e_in_pid}, outbound pid {e_out_pid}");
            println!(
                "HTTP (1 KiB answers) at 127.0.0.1: direct {http}, through signet {s_out_h}, through Envoy {e_out_h}; \
                 echo: direct {echo}, through signet {s_out_e}, through Envoy {e_out_e}"
            );
            std::thread::sleep(Duration::from_secs(hold));
        }
        return;
    }
    // The floor: the same two hops through bare TCP relays.
    let (r_in, r_in_e, r_in_h) = start_relay("relay-inbound", echo, http, dir);
    let (r_out, r_out_e, r_out_h) = start_relay("relay-outbound", r_in_e, r_in_h, dir);
    let paths = [
        Path3 {
            name: "direct",
            echo,
            http,
            pids: vec![],
        },
        Path3 {
            name: "signet",
            echo: s_out_e,
            http: s_out_h,
            pids: vec![s_in_pid, s_out_pid],
        },
        Path3 {
            name: "Envoy",
            echo: e_out_e,
            http: e_out_h,
            pids: vec![e_in_pid, e_out_pid],
        },
        Path3 {
            name: FLOOR,
            echo: r_out_e,
            http: r_out_h,
            pids: vec![r_in.pid(), r_out.pid()],
        },
    ];

    if only == "breakdown" {
        run_breakdown(&rt, &paths[1..], secs, dir);
        return;
    }
    println!(
        "## Sidecar vs Envoy (2 cores, {secs} s per measure, TLS 1.3 AES-128-GCM, ECDSA P-256 SVIDs)\n"
    );
    println!(
        "| Path | bulk Gbit/s (1 stream, {mib} MiB, median of 5 interleaved rounds; proxies' CPU s per GiB) | 1 KiB req/s (16 conns) | latency under that load, p50 / p99 ms | latency p50 / p99 ms (1 conn) | new conns/s (32 workers, per-connection authz) | RSS with {conns} open conns (in + out, MiB) |"
    );
    println!("|---|---|---|---|---|---|---|");
    // Bulk varies from minute to minute on a shared 2-core machine: the
    // paths take turns, five rounds, and each reports its median.
    // Also the CPU time the two proxies of a path spend per GiB moved: less
    // noisy than throughput on a shared machine.
    let mut rounds = vec![Vec::new(); paths.len()];
    let mut cpu = vec![0.0; paths.len()];
    let bulk_rounds = if only == "conns" { 0 } else { 5 };
    for _ in 0..bulk_rounds {
        for (i, p) in paths.iter().enumerate() {
            let before: f64 = p.pids.iter().map(|pid| cpu_secs(*pid)).sum();
            rounds[i].push(rt.block_on(bulk(p.echo, mib)));
            cpu[i] += p.pids.iter().map(|pid| cpu_secs(*pid)).sum::<f64>() - before;
        }
    }
    let cpu_per_gib: Vec<String> = paths
        .iter()
        .zip(&cpu)
        .map(|(p, secs)| {
            if p.pids.is_empty() {
                "-".to_string()
            } else {
                format!("{:.2}", secs / (5.0 * mib as f64 / 1024.0))
            }
        })
        .collect();
    let bulk_median: Vec<f64> = rounds
        .into_iter()
        .map(|mut r| {
            r.sort_by(f64::total_cmp);
            r.get(r.len() / 2).copied().unwrap_or(0.0)
        })
        .collect();
    if only == "bulk" {
        for ((p, gbps), cpu) in paths.iter().zip(&bulk_median).zip(&cpu_per_gib) {
            println!("| {} | {gbps:.2} ({cpu} CPU s/GiB) | | | | | |", p.name);
        }
        return;
    }
    let mut direct_lat = (0.0, 0.0);
    for (i, p) in paths.iter().enumerate() {
        let gbps = bulk_median[i];
        let cpu = &cpu_per_gib[i];
        let conns_only = only == "conns";
        let load = if conns_only {
            Load {
                rate: 0.0,
                p50: 0.0,
                p99: 0.0,
            }
        } else {
            rt.block_on(rps(p.http, 16, secs))
        };
        let lat = if conns_only {
            (0.0, 0.0)
        } else {
            rt.block_on(latency(p.http, 5000))
        };
        if p.name == "direct" {
            direct_lat = lat;
        }
        let (cps, failed) = if p.name == "direct" || conns_only {
            (0.0, 0)
        } else {
            rt.block_on(new_conns(p.echo, 32, secs))
        };
        let rss = if p.pids.is_empty() || p.name == FLOOR {
            "-".to_string()
        } else {
            let before: u64 = p.pids.iter().map(|pid| mem_kib(*pid).anonymous).sum();
            let held = rt.block_on(hold(p.echo, conns));
            let opened = held.len();
            let after: Vec<Mem> = p.pids.iter().map(|pid| mem_kib(*pid)).collect();
            drop(held);
            let grown = after
                .iter()
                .map(|m| m.anonymous)
                .sum::<u64>()
                .saturating_sub(before) as f64;
            let per_conn = grown / (opened.max(1) * p.pids.len()) as f64;
            let mib: Vec<String> = after
                .iter()
                .map(|m| format!("{:.0}", m.rss as f64 / 1024.0))
                .collect();
            format!(
                "{} ({opened} held; {per_conn:.1} KiB private per connection per proxy)",
                mib.join(" + ")
            )
        };
        let added = if p.name == "direct" {
            String::new()
        } else {
            format!(
                " (added {:.3} / {:.3})",
                lat.0 - direct_lat.0,
                lat.1 - direct_lat.1
            )
        };
        let cps = if p.name == "direct" {
            "-".to_string()
        } else {
            format!(
                "{cps:.0}{}",
                if failed > 0 {
                    format!(" ({failed} failed)")
                } else {
                    String::new()
                }
            )
        };
        println!(
            "| {} | {gbps:.2} ({cpu}) | {:.0} | {:.3} / {:.3} | {:.3} / {:.3}{added} | {cps} | {rss} |",
            p.name, load.rate, load.p50, load.p99, lat.0, lat.1
        );
        // Let closed connections leave TIME_WAIT pressure behind before the next path.
        std::thread::sleep(Duration::from_secs(2));
    }
    println!(
        "\nsignet inbound handshakes (all, resumed): {}",
        http_get(s_in_admin, "/metrics")
            .lines()
            .filter(|l| l.starts_with("signet_proxy_handshakes_total")
                || l.starts_with("signet_proxy_resumed_handshakes_total"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    println!("\nIdle memory after startup (MiB):");
    for (name, mem) in &idle {
        println!("- {name}: {mem}");
    }
}
