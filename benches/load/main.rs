//! Load on real servers: N simulated agents with M entries each against one
//! or several `signet server` processes (this build's binary), over the real
//! admin and node APIs. Each agent attests with a join token, subscribes
//! (deltas, as the agent does), mints an X509-SVID for every entry, re-mints
//! them at half-life, and follows a churn of entry creations and deletions.
//!
//! Reports: entry creation rate, attestation time, mint rate, entry change
//! -> owning agent p50/p99, server CPU and RSS, datastore size.
//!
//! Run: `cargo bench --bench load` with
//! `SIGNET_LOAD_AGENTS` (1000), `SIGNET_LOAD_ENTRIES` (100 per agent),
//! `SIGNET_LOAD_SERVERS` (1), `SIGNET_LOAD_DATASTORE` (`sqlite` or
//! `postgres`; several servers need `postgres`), `SIGNET_LOAD_SECONDS`
//! (60, the steady phase), `SIGNET_LOAD_SVID_TTL` (`10m`: every SVID is
//! re-minted every 5 minutes), `SIGNET_LOAD_CHURN` (20 changes/s).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use signet_agent::node_client::{AttestWith, NodeClient};
use signet_identity::{Bundle, TrustDomain};
use signet_testkit::{Proc, ms, percentile};
use signet_wire::admin::admin_client::AdminClient;
use signet_wire::admin::{CreateEntryRequest, CreateJoinTokenRequest, DeleteEntryRequest};
use tokio::sync::{Mutex, Semaphore, mpsc};

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What a simulated agent holds from its subscription: the revision and
/// its entries' revisions, to resume from as the agent does.
#[derive(Default)]
struct Held {
    revision: u64,
    entries: HashMap<String, u64>,
}

/// A simulated agent: its server and connection, its own entries' ids,
/// and what its subscription brought.
struct Agent {
    addr: std::net::SocketAddr,
    client: NodeClient,
    ids: Vec<String>,
    held: Arc<std::sync::Mutex<Held>>,
}

/// Follows a subscription: applies each response to `held` and reports
/// when each entry arrived.
fn follow(
    mut stream: tonic::Streaming<signet_wire::node::SubscribeResponse>,
    held: Arc<std::sync::Mutex<Held>>,
    seen_tx: mpsc::UnboundedSender<(String, Instant)>,
) {
    tokio::spawn(async move {
        while let Ok(Some(msg)) = stream.message().await {
            let now = Instant::now();
            {
                let mut h = held.lock().unwrap();
                if !msg.delta {
                    h.entries.clear();
                }
                for id in &msg.removed_entry_ids {
                    h.entries.remove(id);
                }
                for e in &msg.entries {
                    h.entries.insert(e.id.clone(), e.revision);
                }
                h.revision = msg.revision;
            }
            for e in msg.entries {
                let _ = seen_tx.send((e.spiffe_id, now));
            }
        }
    });
}

struct Server {
    proc: Proc,
    admin: String,
    addr: std::net::SocketAddr,
}

fn start_server(dir: &Path, i: usize, datastore: &str, ttl: &str, agent_ttl: &str) -> Server {
    let name = format!("s{i}");
    let admin = dir.join(format!("{name}.sock")).display().to_string();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_signet"));
    cmd.env("SIGNET_LOG", "warn")
        .args([
            "--log",
            "warn",
            "server",
            "--server-id",
            &name,
            "--data-dir",
        ])
        .arg(dir.join(&name))
        .args([
            "--datastore",
            datastore,
            "--admin-socket",
            &admin,
            "--bind-address",
            "127.0.0.1:0",
            "--x509-svid-ttl",
            ttl,
            "--agent-svid-ttl",
            agent_ttl,
        ]);
    let mut proc = Proc::spawn(&name, cmd, dir);
    let banner = proc.wait_for("Press Ctrl-C");
    let addr = banner
        .lines()
        .find_map(|l| l.trim().strip_prefix("agent API"))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .expect("the agent API's address in the banner");
    Server { proc, admin, addr }
}

/// CPU seconds (user + system) and RSS (KiB) of a process.
fn usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (cpu, rss)
}

async fn admin(path: &str) -> AdminClient<tonic::transport::Channel> {
    signet_server::admin::connect_admin(path.into())
        .await
        .unwrap()
}

fn entry(spiffe_id: String, parent_id: &str, selector: String) -> signet_wire::types::Entry {
    signet_wire::types::Entry {
        spiffe_id,
        parent_id: parent_id.to_owned(),
        selectors: vec![selector],
        ..Default::default()
    }
}

/// Runs `f` over `0..n` with at most `width` at once.
async fn bounded<F, Fut>(n: usize, width: usize, f: F)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let gate = Arc::new(Semaphore::new(width));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let permit = gate.clone().acquire_owned().await.unwrap();
        let fut = f(i);
        tasks.push(tokio::spawn(async move {
            fut.await;
            drop(permit);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

const MIB: f64 = 1024.0 * 1024.0;

/// Bytes the datastore takes: the PostgreSQL database, or the SQLite file
/// and its WAL.
fn datastore_size(pg: &Option<signet_testkit::postgres::Postgres>, dir: &Path) -> u64 {
    match pg {
        Some(pg) => Command::new("psql")
            .args([
                &format!("postgres://signet@127.0.0.1:{}/signet_load", pg.port),
                "-Atc",
                "SELECT pg_database_size('signet_load')",
            ])
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0),
        None => ["load.sqlite3", "load.sqlite3-wal"]
            .iter()
            .map(|f| std::fs::metadata(dir.join(f)).map_or(0, |m| m.len()))
            .sum(),
    }
}

#[tokio::main]
async fn main() {
    let agents: usize = env("SIGNET_LOAD_AGENTS", 1000);
    let per_agent: usize = env("SIGNET_LOAD_ENTRIES", 100);
    let servers_n: usize = env("SIGNET_LOAD_SERVERS", 1);
    let kind: String = env("SIGNET_LOAD_DATASTORE", "sqlite".to_string());
    let seconds: u64 = env("SIGNET_LOAD_SECONDS", 60);
    let ttl: String = env("SIGNET_LOAD_SVID_TTL", "10m".to_string());
    let churn: u64 = env("SIGNET_LOAD_CHURN", 20);
    let agent_ttl: String = env("SIGNET_LOAD_AGENT_SVID_TTL", "1h".to_string());
    let ttl_d = humantime::parse_duration(&ttl).unwrap();
    let agent_half = humantime::parse_duration(&agent_ttl).unwrap() / 2;
    assert!(
        servers_n == 1 || kind == "postgres",
        "several servers need SIGNET_LOAD_DATASTORE=postgres"
    );
    let dir = tempfile::tempdir().unwrap();
    let pg = (kind == "postgres").then(signet_testkit::postgres::Postgres::start);
    let datastore = match &pg {
        Some(pg) => pg.database("signet_load").await,
        None => format!("sqlite://{}", dir.path().join("load.sqlite3").display()),
    };
    let servers: Vec<Server> = (0..servers_n)
        .map(|i| start_server(dir.path(), i, &datastore, &ttl, &agent_ttl))
        .collect();
    println!(
        "load: {agents} agents x {per_agent} entries, {servers_n} server(s) on {kind}, SVID TTL {ttl}, agent SVID TTL {agent_ttl}, churn {churn}/s, {seconds} s steady"
    );
    let cpu_of = |s: &[Server]| s.iter().map(|s| usage(s.proc.pid()).0).sum::<f64>();
    let rss_of = |s: &[Server]| s.iter().map(|s| usage(s.proc.pid()).1).sum::<u64>();
    let bundle_pem = Command::new(env!("CARGO_BIN_EXE_signet"))
        .args(["bundle", "show", "--socket", &servers[0].admin])
        .output()
        .unwrap()
        .stdout;
    let td = TrustDomain::parse("example.org").unwrap();
    let bundle = Bundle::from_x509_pem(td, &bundle_pem).unwrap();

    // Entries, through the admin API (16 callers at once; one writer).
    let agent_id = |a: usize| format!("spiffe://example.org/load/agent-{a}");
    let t = Instant::now();
    let cpu0 = cpu_of(&servers);
    let admin_path = servers[0].admin.clone();
    bounded(agents, 16, |a| {
        let path = admin_path.clone();
        let parent = agent_id(a);
        async move {
            let mut c = admin(&path).await;
            for e in 0..per_agent {
                let w = entry(
                    format!("spiffe://example.org/load/a{a}/w{e}"),
                    &parent,
                    format!("unix:uid:{}", 10_000 + e),
                );
                c.create_entry(CreateEntryRequest { entry: Some(w) })
                    .await
                    .unwrap();
            }
        }
    })
    .await;
    let took = t.elapsed().as_secs_f64();
    println!(
        "entries: {} created in {took:.1} s ({:.0}/s; server CPU {:.1} s)",
        agents * per_agent,
        (agents * per_agent) as f64 / took,
        cpu_of(&servers) - cpu0
    );

    // Attest, subscribe, mint: every agent, 32 at once.
    let t = Instant::now();
    let cpu0 = cpu_of(&servers);
    let minted = Arc::new(AtomicU64::new(0));
    let clients: Arc<Mutex<Vec<Option<Agent>>>> =
        Arc::new(Mutex::new((0..agents).map(|_| None).collect()));
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<(String, Instant)>();
    let addrs: Vec<_> = servers.iter().map(|s| s.addr).collect();
    bounded(agents, 32, |a| {
        let (path, bundle, addr) = (
            servers[a % servers_n].admin.clone(),
            bundle.clone(),
            addrs[a % servers_n],
        );
        let (minted, clients, seen_tx) = (minted.clone(), clients.clone(), seen_tx.clone());
        let id = agent_id(a);
        async move {
            let token = admin(&path)
                .await
                .create_join_token(CreateJoinTokenRequest {
                    ttl: 600,
                    agent_id: id,
                })
                .await
                .unwrap()
                .into_inner()
                .token;
            let mut c = NodeClient::connect(addr, bundle, None).await.unwrap();
            let att = c.attest(AttestWith::JoinToken(&token)).await.unwrap();
            let mut c = NodeClient::connect(addr, att.bundle.clone(), Some(&att.svid))
                .await
                .unwrap();
            let mut stream = c.subscribe_deltas(0, []).await.unwrap();
            let first = stream.message().await.unwrap().unwrap();
            let ids: Vec<String> = first.entries.iter().map(|e| e.id.clone()).collect();
            let held = Arc::new(std::sync::Mutex::new(Held {
                revision: first.revision,
                entries: first
                    .entries
                    .iter()
                    .map(|e| (e.id.clone(), e.revision))
                    .collect(),
            }));
            for chunk in ids.chunks(500) {
                let svids = c.mint_x509_batch(chunk).await.unwrap();
                minted.fetch_add(svids.len() as u64, Ordering::Relaxed);
            }
            follow(stream, held.clone(), seen_tx);
            clients.lock().await[a] = Some(Agent {
                addr,
                client: c,
                ids,
                held,
            });
        }
    })
    .await;
    let took = t.elapsed().as_secs_f64();
    let n = minted.load(Ordering::Relaxed);
    println!(
        "agents: {agents} attested, subscribed and minted {n} SVIDs in {took:.1} s ({:.0} SVIDs/s; server CPU {:.1} s; RSS {} MiB)",
        n as f64 / took,
        cpu_of(&servers) - cpu0,
        rss_of(&servers) / 1024
    );

    // Steady state: SVIDs re-minted at half-life and agent SVIDs renewed at
    // theirs (then reconnect and resume the subscription, as the agent
    // does), spread over the period; and the churn of entry changes, each
    // timed until its agent holds it.
    let size_before = datastore_size(&pg, dir.path());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rotated = Arc::new(AtomicU64::new(0));
    let renewed = Arc::new(AtomicU64::new(0));
    let half = ttl_d / 2;
    let mut rotators = Vec::new();
    {
        let all = std::mem::take(&mut *clients.lock().await);
        for (a, slot) in all.into_iter().enumerate() {
            let Some(mut agent) = slot else { continue };
            let (stop, rotated, renewed) = (stop.clone(), rotated.clone(), renewed.clone());
            let (bundle, seen_tx) = (bundle.clone(), seen_tx.clone());
            let spread = a as f64 / agents as f64;
            rotators.push(tokio::spawn(async move {
                let start = tokio::time::Instant::now();
                let mut mint_at = start + half.mul_f64(spread);
                let mut renew_at = start + agent_half.mul_f64(spread);
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep_until(mint_at.min(renew_at)).await;
                    if renew_at <= tokio::time::Instant::now() {
                        renew_at += agent_half;
                        let Ok(svid) = agent.client.renew().await else {
                            continue;
                        };
                        renewed.fetch_add(1, Ordering::Relaxed);
                        let Ok(mut c) =
                            NodeClient::connect(agent.addr, bundle.clone(), Some(&svid)).await
                        else {
                            continue;
                        };
                        let (since, known) = {
                            let h = agent.held.lock().unwrap();
                            (h.revision, h.entries.clone())
                        };
                        if let Ok(stream) = c.subscribe_deltas(since, known).await {
                            follow(stream, agent.held.clone(), seen_tx.clone());
                        }
                        agent.client = c;
                    }
                    if mint_at <= tokio::time::Instant::now() {
                        mint_at += half;
                        for chunk in agent.ids.chunks(500) {
                            if let Ok(s) = agent.client.mint_x509_batch(chunk).await {
                                rotated.fetch_add(s.len() as u64, Ordering::Relaxed);
                            }
                        }
                    }
                }
            }));
        }
    }
    drop(seen_tx);
    let cpu0 = cpu_of(&servers);
    let t = Instant::now();
    // Each change's start, and whether its agent is on another server than
    // the one written to (reached through the database's notifications).
    let mut sent: HashMap<String, (Instant, bool)> = HashMap::new();
    let mut latencies = Vec::new();
    let mut remote_latencies = Vec::new();
    let mut live: Vec<String> = Vec::new();
    let mut churn_admin = admin(&servers[servers_n - 1].admin).await;
    let tick = Duration::from_secs_f64(1.0 / churn.max(1) as f64);
    let mut k = 0usize;
    while t.elapsed() < Duration::from_secs(seconds) {
        k += 1;
        if k.is_multiple_of(2) && live.len() > 10 {
            let id = live.remove(0);
            let _ = churn_admin.delete_entry(DeleteEntryRequest { id }).await;
        } else {
            let spiffe_id = format!("spiffe://example.org/load/churn/{k}");
            // Creations fall on odd k: spread them over every agent.
            let owner = (k / 2) % agents;
            let remote = owner % servers_n != servers_n - 1;
            let w = entry(
                spiffe_id.clone(),
                &agent_id(owner),
                format!("unix:uid:{}", 20_000 + k),
            );
            let started = Instant::now();
            if let Ok(r) = churn_admin
                .create_entry(CreateEntryRequest { entry: Some(w) })
                .await
            {
                sent.insert(spiffe_id, (started, remote));
                live.push(r.into_inner().entry.unwrap_or_default().id);
            }
        }
        while let Ok((spiffe_id, at)) = seen_rx.try_recv() {
            if let Some((started, remote)) = sent.remove(&spiffe_id) {
                latencies.push(at - started);
                if remote {
                    remote_latencies.push(at - started);
                }
            }
        }
        tokio::time::sleep(tick).await;
    }
    // Changes still in flight get a few seconds to arrive.
    let drain = Instant::now();
    while !sent.is_empty() && drain.elapsed() < Duration::from_secs(10) {
        if let Ok(Some((spiffe_id, at))) =
            tokio::time::timeout(Duration::from_secs(1), seen_rx.recv()).await
            && let Some((started, remote)) = sent.remove(&spiffe_id)
        {
            latencies.push(at - started);
            if remote {
                remote_latencies.push(at - started);
            }
        }
    }
    let steady = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let cpu = cpu_of(&servers) - cpu0;
    latencies.sort();
    let rotations = rotated.load(Ordering::Relaxed);
    println!(
        "steady {steady:.0} s: {} SVIDs re-minted ({:.0}/s), {} agent SVIDs renewed; server CPU {:.1} s ({:.0} % of one core); RSS {} MiB",
        rotations,
        rotations as f64 / steady,
        renewed.load(Ordering::Relaxed),
        cpu,
        100.0 * cpu / steady,
        rss_of(&servers) / 1024
    );
    if latencies.is_empty() {
        println!("churn: no change reached its agent");
    } else {
        println!(
            "churn: {} entry changes -> owning agent: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {} never arrived",
            latencies.len(),
            ms(percentile(&latencies, 0.5)),
            ms(percentile(&latencies, 0.99)),
            ms(*latencies.last().unwrap()),
            sent.len()
        );
    }
    if !remote_latencies.is_empty() {
        remote_latencies.sort();
        println!(
            "churn, agents of another server than the one written to: {} changes: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            remote_latencies.len(),
            ms(percentile(&remote_latencies, 0.5)),
            ms(percentile(&remote_latencies, 0.99)),
            ms(*remote_latencies.last().unwrap()),
        );
    }
    let size = datastore_size(&pg, dir.path());
    println!(
        "datastore: {:.1} MiB before the steady phase, {:.1} MiB after",
        size_before as f64 / MIB,
        size as f64 / MIB
    );
    for r in rotators {
        r.abort();
    }
}
