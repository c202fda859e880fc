//! Workload API benchmark, in one process started like `signet run` (server,
//! loopback mTLS agent API, agent, Workload API and SDS on a Unix socket):
//! - FetchX509SVID first-response latency with 1,000 concurrent streams;
//! - entry created -> SVID received on a workload's open stream.
//!
//! Agent RSS is measured on a separate agent process: `bench/agent_rss.sh`.
//!
//! Run: `cargo bench -p signet-agent --bench workload_api`

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use signet_identity::{Entry, Selector, SpiffeId};
use signet_testkit::{ms, percentile};
use signet_wire::workload::X509svidRequest;
use signet_workload::{connect, with_header};

fn entry(path: &str, parent: &SpiffeId, selector: &str) -> Entry {
    Entry::new(
        SpiffeId::parse(&format!("spiffe://example.org{path}")).unwrap(),
        parent.clone(),
        vec![Selector::parse(selector).unwrap()],
    )
}

#[tokio::main]
async fn main() {
    let streams: usize = std::env::var("SIGNET_BENCH_STREAMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    // Server and local agent as `signet run` starts them.
    let setup = signet_harness::start_for("/bench").await;
    let (server, sock, agent_id) = (
        setup.server.clone(),
        setup.sock.clone(),
        setup.agent_id.clone(),
    );
    let uid_sel = format!("unix:uid:{}", signet_testkit::uid());
    // Wait until the identity is served once (also warms the executable-hash cache).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut c = connect(sock.clone()).await.unwrap();
        if let Ok(r) = c.fetch_x509svid(with_header(X509svidRequest {})).await
            && r.into_inner().message().await.ok().flatten().is_some()
        {
            break;
        }
        assert!(Instant::now() < deadline, "the identity was never served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // 1) First-response latency with `streams` concurrent streams.
    let barrier = Arc::new(tokio::sync::Barrier::new(streams));
    let mut tasks = Vec::new();
    for _ in 0..streams {
        let sock = sock.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = connect(sock).await.unwrap();
            barrier.wait().await;
            let t = Instant::now();
            let mut s = c
                .fetch_x509svid(with_header(X509svidRequest {}))
                .await
                .unwrap()
                .into_inner();
            s.message().await.unwrap().unwrap();
            let took = t.elapsed();
            (took, c, s)
        }));
    }
    let mut lat = Vec::new();
    let mut open = Vec::new();
    for t in tasks {
        let (took, c, s) = t.await.unwrap();
        lat.push(took);
        open.push((c, s));
    }
    lat.sort();
    println!(
        "FetchX509SVID first response, {streams} streams opened at once (burst): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99)),
        ms(*lat.last().unwrap())
    );
    // New streams, one at a time, while `streams` stay open.
    let mut lat = Vec::new();
    let mut c = connect(sock.clone()).await.unwrap();
    for _ in 0..500 {
        let t = Instant::now();
        let mut s = c
            .fetch_x509svid(with_header(X509svidRequest {}))
            .await
            .unwrap()
            .into_inner();
        s.message().await.unwrap().unwrap();
        lat.push(t.elapsed());
    }
    lat.sort();
    println!(
        "FetchX509SVID first response with {streams} streams open (500 new streams): p50 {:.2} ms, p99 {:.2} ms",
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99))
    );

    // 2) Entry created -> SVID on an open stream (with `streams` streams open).
    let (_c, mut stream) = open.pop().unwrap();
    let mut lat = Vec::new();
    for k in 0..30 {
        let path = format!("/late/{k}");
        let t0 = Instant::now();
        server
            .create_entry(entry(&path, &agent_id, &uid_sel))
            .await
            .unwrap();
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(30), stream.message())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            if msg.svids.iter().any(|s| s.spiffe_id.ends_with(&path)) {
                lat.push(t0.elapsed());
                break;
            }
        }
    }
    lat.sort();
    println!(
        "entry created -> SVID on the workload's open stream (30 runs): p50 {:.1} ms, p99 {:.1} ms",
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99))
    );
    drop(open);
}
