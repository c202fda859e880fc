//! Identities survive faults of the servers and of their database: three
//! `signet server` processes on one PostgreSQL, five agents spread over
//! them, 100 Workload API streams (the Rust `spiffe` crate) holding 30 s
//! SVIDs, and entries created and deleted all along, while one server then
//! another is killed with SIGKILL, both come back, and PostgreSQL restarts.
//! Afterwards: no stream ever held an expired SVID or saw an error, no
//! acknowledged entry write is lost, every agent holds what the servers say
//! it should. The longest wait for a fresh SVID is printed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use signet_testkit::postgres::Postgres;
use spiffe::WorkloadApiClient;
use tokio_stream::StreamExt;

const SERVERS: usize = 3;
const AGENTS: usize = 5;
const STREAMS_PER_AGENT: usize = 20;

struct Server {
    proc: Option<Proc>,
    admin: String,
    port: u16,
    health: std::net::SocketAddr,
}

/// A server on `port`, and the address of its /metrics.
fn start_server(dir: &Path, i: usize, url: &str, port: u16) -> (Proc, std::net::SocketAddr) {
    let name = format!("s{i}");
    let mut cmd = signet();
    cmd.args([
        "server",
        "--server-id",
        &name,
        "--datastore",
        url,
        "--data-dir",
    ])
    .arg(dir.join(&name))
    .args([
        "--admin-socket",
        &dir.join(format!("{name}.sock")).display().to_string(),
        "--bind-address",
        &format!("127.0.0.1:{port}"),
        "--x509-svid-ttl",
        "30s",
        "--health-listen",
        "127.0.0.1:0",
    ]);
    let mut proc = Proc::spawn(&name, cmd, dir);
    let health = proc.reported_addr("health");
    proc.wait_for("Press Ctrl-C");
    (proc, health)
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// What one stream received: when each new SVID arrived (Unix seconds and
/// instant), its NotAfter and serial.
#[derive(Default)]
struct Received {
    updates: Vec<(i64, Instant, i64, String)>,
    errors: Vec<String>,
}

/// A gauge from a process's /metrics (`signet_agent_entries` of an agent,
/// `signet_server_agent_subscriptions` of a server).
fn gauge(health: std::net::SocketAddr, name: &str) -> Option<u64> {
    let (code, body) = curl(&format!("http://{health}/metrics"));
    (code == 200).then_some(())?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

/// The ids of the entries parented to `parent`, as a server lists them.
fn entries_of(admin: &str) -> Vec<(String, String)> {
    let out = run(&["entry", "show", "--socket", admin, "--output", "json"]);
    let v = json_stdout(&out);
    v.as_array()
        .or_else(|| v["entries"].as_array())
        .expect("a list of entries")
        .iter()
        .map(|e| {
            (
                e["id"].as_str().unwrap().to_owned(),
                e["parent_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn identities_survive_server_and_database_faults() {
    let mut pg = Postgres::start();
    let url = pg.database("signet_faults").await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();

    let mut servers: Vec<Server> = (0..SERVERS)
        .map(|i| {
            let port = signet_testkit::ports::free_port();
            let (proc, health) = start_server(&d, i, &url, port);
            Server {
                proc: Some(proc),
                admin: d.join(format!("s{i}.sock")).display().to_string(),
                port,
                health,
            }
        })
        .collect();
    let admin0 = servers[0].admin.clone();
    // Every server's CA in the one published bundle before agents start.
    let bundle_pem = eventually("the three CAs in the bundle", || {
        let pem = ok(&["bundle", "show", "--socket", &admin0]);
        (pem.matches("BEGIN CERTIFICATE").count() == SERVERS).then_some(pem)
    });
    let bundle = d.join("bundle.pem");
    std::fs::write(&bundle, bundle_pem).unwrap();

    // Five agents, each listing the servers starting with a different one.
    let mut agents = Vec::new();
    for a in 0..AGENTS {
        let agent_id = format!("spiffe://example.org/node/a{a}");
        let token = json_stdout(&run(&[
            "token",
            "generate",
            "--spiffe-id",
            &agent_id,
            "--socket",
            &admin0,
            "--output",
            "json",
        ]))["token"]
            .as_str()
            .unwrap()
            .to_owned();
        ok(&[
            "entry",
            "create",
            "--socket",
            &admin0,
            "--spiffe-id",
            &format!("spiffe://example.org/workload/a{a}"),
            "--parent-id",
            &agent_id,
            "--selector",
            &format!("unix:uid:{}", uid()),
        ]);
        let socket = d.join(format!("a{a}.sock"));
        let mut cmd = signet();
        cmd.arg("agent");
        for k in 0..SERVERS {
            let s = &servers[(a + k) % SERVERS];
            cmd.args(["--server-address", &format!("127.0.0.1:{}", s.port)]);
        }
        cmd.arg("--trust-bundle")
            .arg(&bundle)
            .args(["--join-token", &token, "--data-dir"])
            .arg(d.join(format!("a{a}")))
            .arg("--agent-socket")
            .arg(&socket)
            .args(["--health-listen", "127.0.0.1:0"])
            // Failed over, back to the first server soon after it returns.
            .args(["--rebalance-after", "3s"]);
        let mut proc = Proc::spawn(&format!("a{a}"), cmd, &d);
        let health = proc.reported_addr("health");
        agents.push((proc, socket, health, agent_id));
    }

    // 100 streams, each recording every SVID it receives.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut streams = Vec::new();
    for (_, socket, _, _) in &agents {
        for _ in 0..STREAMS_PER_AGENT {
            let received = Arc::new(Mutex::new(Received::default()));
            let (socket, r, stop) = (socket.clone(), received.clone(), stop.clone());
            let task = tokio::spawn(async move {
                let client = eventually_async_client(&socket).await;
                let mut stream = client.stream_x509_svids().await.unwrap();
                loop {
                    let next = tokio::select! {
                        n = stream.next() => n,
                        _ = async { while !stop.load(std::sync::atomic::Ordering::SeqCst) { tokio::time::sleep(Duration::from_millis(200)).await } } => return,
                    };
                    match next {
                        Some(Ok(svid)) => {
                            let leaf = svid.cert_chain()[0].as_ref().to_vec();
                            let info = signet_identity::x509_svid::inspect_leaf(&leaf).unwrap();
                            let mut r = r.lock().unwrap();
                            // Only a new SVID counts (a bundle change resends the same).
                            if r.updates.last().is_none_or(|u| u.3 != info.serial) {
                                r.updates.push((
                                    now_secs(),
                                    Instant::now(),
                                    info.not_after,
                                    info.serial,
                                ));
                            }
                        }
                        Some(Err(e)) => {
                            r.lock().unwrap().errors.push(e.to_string());
                            // As the crate's X509Source does: reconnect.
                            stream = client.stream_x509_svids().await.unwrap();
                        }
                        None => {
                            r.lock().unwrap().errors.push("the stream ended".into());
                            return;
                        }
                    }
                }
            });
            streams.push((received, task));
        }
    }
    eventually("every stream's first SVID", || {
        streams
            .iter()
            .all(|(r, _)| !r.lock().unwrap().updates.is_empty())
            .then_some(())
    });

    // Entries created and deleted all along, through whichever server
    // answers; only what a server acknowledged is counted.
    let churn_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let admins: Vec<String> = servers.iter().map(|s| s.admin.clone()).collect();
    let agent_ids: Vec<String> = agents.iter().map(|a| a.3.clone()).collect();
    let churn = {
        let stop = churn_stop.clone();
        std::thread::spawn(move || {
            let mut live: Vec<String> = Vec::new();
            let mut created = BTreeSet::new();
            let mut deleted = BTreeSet::new();
            let mut n = 0usize;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                let admin = &admins[n % admins.len()];
                if n.is_multiple_of(3) && !live.is_empty() {
                    let id = live.remove(0);
                    let out = run(&["entry", "delete", "--id", &id, "--socket", admin]);
                    if out.status.success() {
                        deleted.insert(id);
                    } else {
                        live.push(id);
                    }
                } else {
                    let out = run(&[
                        "entry",
                        "create",
                        "--socket",
                        admin,
                        "--spiffe-id",
                        &format!("spiffe://example.org/churn/{n}"),
                        "--parent-id",
                        &agent_ids[n % agent_ids.len()],
                        "--selector",
                        &format!("unix:uid:{}", 50_000 + n),
                        "--output",
                        "json",
                    ]);
                    if out.status.success() {
                        let id = json_stdout(&out)["id"].as_str().unwrap().to_owned();
                        created.insert(id.clone());
                        live.push(id);
                    }
                }
                std::thread::sleep(Duration::from_millis(150));
            }
            (created, deleted)
        })
    };

    // The faults, paced so that SVIDs (30 s, rotated at about half-life)
    // must rotate through each of them.
    let pause = |s: u64| tokio::time::sleep(Duration::from_secs(s));
    pause(8).await;
    servers[0].proc.take().unwrap().signal_and_wait("KILL");
    pause(15).await;
    servers[1].proc.take().unwrap().signal_and_wait("KILL");
    pause(15).await;
    for (i, s) in servers.iter_mut().enumerate().take(2) {
        let (proc, health) = start_server(&d, i, &url, s.port);
        (s.proc, s.health) = (Some(proc), health);
    }
    pause(10).await;
    let port = pg.port;
    pg.stop_server();
    pause(3).await;
    pg.start_server();
    assert_eq!(pg.port, port, "PostgreSQL came back on another port");
    pause(15).await;
    churn_stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (created, deleted) = churn.join().unwrap();
    assert!(
        created.len() > 50,
        "too few writes acknowledged: {}",
        created.len()
    );

    // No acknowledged write lost: the servers hold exactly what was
    // created and not deleted.
    let held = entries_of(&servers[2].admin);
    let churned: BTreeSet<String> = held
        .iter()
        .filter(|(id, _)| created.contains(id))
        .map(|(id, _)| id.clone())
        .collect();
    let expected: BTreeSet<String> = created.difference(&deleted).cloned().collect();
    assert_eq!(
        churned, expected,
        "acknowledged writes lost or deletions undone"
    );
    for id in &deleted {
        assert!(
            !held.iter().any(|(h, _)| h == id),
            "deleted entry {id} is back"
        );
    }
    // Every agent converges to what the servers say it holds.
    for (_, _, health, agent_id) in &agents {
        let want = held.iter().filter(|(_, p)| p == agent_id).count() as u64;
        eventually(&format!("{agent_id} to hold its {want} entries"), || {
            (gauge(*health, "signet_agent_entries") == Some(want)).then_some(())
        });
    }

    // Every agent is back on the first server it lists (agent a lists
    // server a % 3 first), the two killed ones included.
    for (i, s) in servers.iter().enumerate() {
        let want = (0..AGENTS).filter(|a| a % SERVERS == i).count() as u64;
        eventually(
            &format!("server s{i} to serve its {want} agents again"),
            || (gauge(s.health, "signet_server_agent_subscriptions") == Some(want)).then_some(()),
        );
    }

    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let now = now_secs();
    let mut longest = Duration::ZERO;
    for (r, task) in streams {
        task.await.unwrap();
        let r = r.lock().unwrap();
        assert!(r.errors.is_empty(), "a stream saw errors: {:?}", r.errors);
        assert!(
            r.updates.len() >= 3,
            "a stream saw {} SVIDs",
            r.updates.len()
        );
        for pair in r.updates.windows(2) {
            let ((_, t0, not_after, _), (received, t1, _, _)) = (&pair[0], &pair[1]);
            let (t0, t1, not_after, received) = (*t0, *t1, *not_after, *received);
            assert!(
                received < not_after,
                "an SVID expired ({not_after}) before its successor arrived ({received})"
            );
            longest = longest.max(t1 - t0);
        }
        let (_, last_at, last_not_after, _) = r.updates.last().unwrap();
        assert!(now < *last_not_after, "a stream holds an expired SVID");
        longest = longest.max(last_at.elapsed());
    }
    println!("longest time a stream went without a fresh SVID: {longest:?} (SVID TTL 30 s)");
    drop(servers);
    drop(agents);
}

/// A Workload API client, once the agent's socket is there.
async fn eventually_async_client(socket: &Path) -> WorkloadApiClient {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Ok(c) = WorkloadApiClient::connect_to(format!("unix://{}", socket.display())).await {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "no agent socket at {}",
            socket.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
