//! Change-to-push latency: 1,000 agents subscribed over the real
//! server-agent API (mTLS, one connection each); one change that concerns
//! all of them (a new key in the own bundle); the time until each agent
//! holds the new state. Also: entry created -> the owning agent notified.
//!
//! Run: `cargo bench -p signet-agent --bench push` (`SIGNET_BENCH_AGENTS=N`)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use signet_agent::node_client::{AttestWith, NodeClient};
use signet_identity::{Entry, Selector, SpiffeId, TrustDomain};
use signet_server::RunConfig;
use signet_testkit::pki::TestCa;
use signet_testkit::{ms, percentile};
use tokio::sync::{Barrier, mpsc};

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("SIGNET_BENCH_AGENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let dir = tempfile::tempdir().unwrap();
    let td = TrustDomain::parse("example.org").unwrap();
    // The server as `signet server` runs it (join tokens, tick, follower).
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    let running = signet_server::start(RunConfig::in_dir(td.clone(), dir.path()), stop_rx)
        .await
        .unwrap();
    let (server, addr) = (running.server.clone(), running.node_addr);
    let store = server.store().clone();

    // Attest and subscribe n agents.
    let t = Instant::now();
    let (tx, mut rx) = mpsc::channel::<(usize, Instant)>(n * 4);
    let ready = Arc::new(Barrier::new(n + 1));
    let mut agent_ids = Vec::with_capacity(n);
    for i in 0..n {
        let (token, _) = server.create_join_token(None, None).await.unwrap();
        let mut c = NodeClient::connect(addr, server.own_bundle().await.unwrap(), None)
            .await
            .unwrap();
        let a = c.attest(AttestWith::JoinToken(&token)).await.unwrap();
        agent_ids.push(a.svid.spiffe_id().clone());
        let mut c = NodeClient::connect(addr, a.bundle.clone(), Some(&a.svid))
            .await
            .unwrap();
        let mut stream = c.subscribe().await.unwrap();
        let tx = tx.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let _keep = c;
            stream.message().await.unwrap().unwrap();
            ready.wait().await;
            while let Ok(Some(_)) = stream.message().await {
                if tx.send((i, Instant::now())).await.is_err() {
                    return;
                }
            }
        });
    }
    ready.wait().await;
    println!(
        "{n} agents attested and subscribed in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // One change for everyone: a new key in the own bundle; five times,
    // a second apart, so one slow moment does not make the figure.
    const ROUNDS: usize = 5;
    let mut all = Vec::with_capacity(n * ROUNDS);
    let mut worst_p99 = Duration::ZERO;
    for _ in 0..ROUNDS {
        tokio::time::sleep(Duration::from_secs(1)).await;
        while rx.try_recv().is_ok() {}
        let mut bundle = server.own_bundle().await.unwrap();
        bundle.add_x509_authority(TestCa::new("extra").der);
        let t0 = Instant::now();
        store.put_bundle(&bundle).await.unwrap();
        server.wrote();
        let mut got = vec![None; n];
        let mut count = 0;
        while count < n {
            let (i, at) = tokio::time::timeout(Duration::from_secs(60), rx.recv())
                .await
                .expect("every agent is pushed to")
                .unwrap();
            if got[i].is_none() {
                got[i] = Some(at - t0);
                count += 1;
            }
        }
        let mut lat: Vec<Duration> = got.into_iter().map(Option::unwrap).collect();
        lat.sort();
        worst_p99 = worst_p99.max(percentile(&lat, 0.99));
        all.extend(lat);
    }
    all.sort();
    println!(
        "bundle change -> pushed to all {n} agents ({ROUNDS} changes): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; worst change's p99 {:.1} ms",
        ms(percentile(&all, 0.5)),
        ms(percentile(&all, 0.99)),
        ms(*all.last().unwrap()),
        ms(worst_p99)
    );

    // Entry created -> its agent is pushed the entry (repeated, one agent each time).
    let mut lat = Vec::new();
    for (k, parent) in agent_ids.iter().take(50).enumerate() {
        while rx.try_recv().is_ok() {}
        let entry = Entry::new(
            SpiffeId::parse(&format!("spiffe://example.org/w/{k}")).unwrap(),
            parent.clone(),
            vec![Selector::parse("unix:uid:1000").unwrap()],
        );
        let idx = agent_ids.iter().position(|a| a == parent).unwrap();
        let t0 = Instant::now();
        server.create_entry(entry).await.unwrap();
        loop {
            let (i, at) = tokio::time::timeout(Duration::from_secs(30), rx.recv())
                .await
                .unwrap()
                .unwrap();
            if i == idx {
                lat.push(at - t0);
                break;
            }
        }
    }
    lat.sort();
    println!(
        "entry created -> its agent pushed (50 runs, {n} agents connected): p50 {:.1} ms, p99 {:.1} ms",
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99))
    );
}
