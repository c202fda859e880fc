//! Datastore benchmark: entry creation throughput, and computing one
//! agent's authorized entries with 100,000 entries in the store, on SQLite
//! and on PostgreSQL.
//!
//! Run: `cargo bench -p signet-server --bench datastore`
//! (`SIGNET_BENCH_ENTRIES=N` changes the store size; PostgreSQL is started
//! like the tests do and skipped with a message when it is not installed.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use signet_testkit::postgres;

use std::sync::Arc;
use std::time::Instant;

use signet_identity::{Entry, Selector, SpiffeId};
use signet_server::authz;
use signet_server::datastore::{self, AttestedNode, Datastore};
use signet_testkit::percentile;

fn entry(i: usize, parent: &SpiffeId) -> Entry {
    Entry::new(
        SpiffeId::parse(&format!("spiffe://example.org/ns/n{}/sa/w{i}", i % 100)).unwrap(),
        parent.clone(),
        vec![Selector::parse(&format!("unix:uid:{}", i % 5000)).unwrap()],
    )
}

async fn run(name: &str, store: Arc<dyn Datastore>, total: usize) {
    // 1,000 agents; the measured one parents 100 of the entries.
    let agents: Vec<SpiffeId> = (0..1000)
        .map(|i| {
            SpiffeId::parse(&format!("spiffe://example.org/signet/agent/join_token/{i}")).unwrap()
        })
        .collect();
    let start = Instant::now();
    let mut tasks = Vec::new();
    let workers = 8;
    for w in 0..workers {
        let store = store.clone();
        let agents = agents.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..total).step_by(workers) {
                store
                    .create_entry(entry(i, &agents[i % agents.len()]))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = start.elapsed();
    println!(
        "{name}: created {total} entries in {:.1} s = {:.0} entries/s (8 concurrent writers)",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );

    let node = AttestedNode {
        spiffe_id: agents[7].clone(),
        attestor: "join_token".into(),
        selectors: vec![],
        svid_serial: "01".into(),
        svid_expires_at: i64::MAX,
        banned: false,
        can_reattest: false,
    };
    let mut times = Vec::new();
    let mut n = 0;
    for _ in 0..200 {
        let t = Instant::now();
        n = authz::authorized_entries(store.as_ref(), &node, 0)
            .await
            .unwrap()
            .len();
        times.push(t.elapsed());
    }
    times.sort();
    println!(
        "{name}: authorized entries for one agent ({n} of {total}): p50 {:.2} ms, p99 {:.2} ms",
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        percentile(&times, 0.99).as_secs_f64() * 1e3
    );
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes --bench; nothing else is accepted.
    let total: usize = std::env::var("SIGNET_BENCH_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    run("sqlite", datastore::open(&url).await.unwrap(), total).await;

    let has_pg = ["15", "16", "17"]
        .iter()
        .any(|v| std::path::Path::new(&format!("/usr/lib/postgresql/{v}/bin/initdb")).exists());
    if !has_pg {
        println!("postgres: skipped (PostgreSQL is not installed)");
        return;
    }
    let pg = postgres::Postgres::start();
    let url = pg.database("signet_bench").await;
    run("postgres", datastore::open(&url).await.unwrap(), total).await;
}
