//! SDS propagation: 100 concurrent StreamSecrets streams (as 100 Envoy
//! clusters would open) hold a workload's SVID; the entry changes, the agent
//! mints a new SVID, and every stream must be pushed the new secret. Also
//! the memory an SDS stream costs (client and server side together, as
//! both run in this process).
//!
//! Run: `cargo bench -p signet-sds --bench propagation` (`SIGNET_BENCH_STREAMS=N`)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use signet_sds::SECRET_TYPE_URL;
use signet_testkit::percentile;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("SIGNET_BENCH_STREAMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let setup = signet_harness::start().await;
    let (server, sock, entry) = (
        setup.server.clone(),
        setup.sock.clone(),
        setup.entry.clone(),
    );
    // Open n streams; each waits for its first secret, then for a new version.
    let before = rss_kib();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(usize, Instant)>(n * 2);
    let ready = Arc::new(tokio::sync::Barrier::new(n + 1));
    for i in 0..n {
        let sock = sock.clone();
        let tx = tx.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let channel = signet_workload::channel(sock).await.unwrap();
            let mut client = SecretDiscoveryServiceClient::new(channel);
            let req = DiscoveryRequest {
                resource_names: vec!["default".into()],
                type_url: SECRET_TYPE_URL.into(),
                ..Default::default()
            };
            let (req_tx, req_rx) = tokio::sync::mpsc::channel(4);
            req_tx.send(req.clone()).await.unwrap();
            let mut stream = client
                .stream_secrets(tokio_stream::wrappers::ReceiverStream::new(req_rx))
                .await
                .unwrap()
                .into_inner();
            let first = stream.message().await.unwrap().unwrap();
            // ACK it, as Envoy does.
            let mut ack = req.clone();
            ack.version_info = first.version_info.clone();
            ack.response_nonce = first.nonce.clone();
            req_tx.send(ack).await.unwrap();
            ready.wait().await;
            while let Ok(Some(resp)) = stream.message().await {
                if resp.version_info != first.version_info {
                    let _ = tx.send((i, Instant::now())).await;
                    break;
                }
            }
            let _keep = (req_tx, client);
            std::future::pending::<()>().await;
        });
    }
    ready.wait().await;
    let per_stream = (rss_kib().saturating_sub(before)) as f64 / n as f64;

    // The change: new DNS names on the entry -> a new SVID for every stream.
    let mut changed = entry.clone();
    changed.dns_names = vec!["envoy.example.org".into()];
    let t0 = Instant::now();
    server.update_entry(changed).await.unwrap();
    let mut lat = Vec::with_capacity(n);
    while lat.len() < n {
        let (_, at) = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("every stream updated")
            .unwrap();
        lat.push(at - t0);
    }
    lat.sort();
    println!(
        "entry change -> new secret on all {n} SDS streams: p50 {:.1} ms, p99 {:.1} ms, all {:.1} ms",
        percentile(&lat, 0.5).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
        lat.last().unwrap().as_secs_f64() * 1e3
    );
    println!("memory per SDS stream (client and server side, one process): {per_stream:.0} KiB");
}
