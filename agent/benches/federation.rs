//! Foreign CA rotation -> our workloads holding the new bundle: a server
//! of partner.test serves its bundle endpoint (refresh hint 1 s) and
//! rotates its CA on its own schedule (a 12 s CA, so a new authority is
//! published every 10 s or so); our server (example.org, with its local
//! agent, as `signet run` starts them) federates with it; 1,000 Workload
//! API streams of a workload whose entry federates with partner.test are
//! open. From the moment partner.test's published bundle holds a new
//! authority, the time until each stream has received it is measured,
//! three rotations in a row.
//!
//! Run: `cargo bench -p signet-agent --bench federation`
//! (`SIGNET_BENCH_STREAMS=N`; `SIGNET_LOG=FILTER` for logs)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use signet_identity::TrustDomain;
use signet_server::RunConfig;
use signet_server::federation::{BundleEndpoint, EndpointAuth, EndpointProfile, Relationship};
use signet_testkit::{ms, percentile};
use signet_wire::workload::{X509svidRequest, X509svidResponse};
use signet_workload::{connect, with_header};

const REFRESH_HINT: Duration = Duration::from_secs(1);

/// Whether `resp` carries `der` among partner.test's authorities.
fn holds(resp: &X509svidResponse, der: &[u8]) -> bool {
    resp.federated_bundles
        .get("spiffe://partner.test")
        .is_some_and(|b| b.windows(der.len()).any(|w| w == der))
}

#[tokio::main]
async fn main() {
    // Logs on stderr when asked (SIGNET_LOG=signet_server=debug, say).
    if let Ok(filter) = std::env::var("SIGNET_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    let streams: usize = std::env::var("SIGNET_BENCH_STREAMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let partner = TrustDomain::parse("partner.test").unwrap();

    // partner.test: a server with its bundle endpoint.
    let b_dir = tempfile::tempdir().unwrap();
    let mut config = RunConfig::in_dir(partner.clone(), b_dir.path());
    config.server.ca.ca_ttl = Duration::from_secs(12);
    config.server.ca.x509_svid_ttl = Duration::from_secs(6);
    config.federation = Some(BundleEndpoint {
        listen: "127.0.0.1:0".parse().unwrap(),
        profile: EndpointProfile::HttpsSpiffe,
        refresh_hint: REFRESH_HINT,
    });
    let (_stop_b, stop) = tokio::sync::watch::channel(false);
    let b = signet_server::start(config, stop).await.unwrap();

    // example.org, as `signet run` starts it, federated with partner.test.
    let setup = signet_harness::start_for("/bench").await;
    let server = setup.server.clone();
    server
        .create_federation(
            Relationship {
                trust_domain: partner.to_string(),
                bundle_endpoint_url: format!("https://{}/", b.federation_addr.unwrap()),
                auth: EndpointAuth::HttpsSpiffe {
                    endpoint_spiffe_id: "spiffe://partner.test/signet/server".into(),
                },
            },
            Some(b.server.own_bundle().await.unwrap()),
        )
        .await
        .unwrap();
    let mut entry = setup.entry.clone();
    entry.federates_with = vec![partner.clone()];
    server.update_entry(entry).await.unwrap();

    // `streams` open streams, each holding partner.test's bundle.
    let mut open = Vec::with_capacity(streams);
    for _ in 0..streams {
        let mut c = connect(setup.sock.clone()).await.unwrap();
        let mut s = c
            .fetch_x509svid(with_header(X509svidRequest {}))
            .await
            .unwrap()
            .into_inner();
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(30), s.message())
                .await
                .expect("a response within 30 s")
                .unwrap()
                .unwrap();
            if msg.federated_bundles.contains_key("spiffe://partner.test") {
                break;
            }
        }
        open.push((c, s));
    }
    println!("{streams} Workload API streams open, each holding partner.test's bundle");

    let mut all = Vec::new();
    let mut seen: Vec<Vec<u8>> = Vec::new();
    let published = || {
        let server = b.server.clone();
        async move {
            server
                .own_bundle()
                .await
                .unwrap()
                .x509_authorities()
                .iter()
                .map(|a| a.to_vec())
                .collect::<Vec<_>>()
        }
    };
    seen.extend(published().await);
    for round in 0..3 {
        // The moment partner.test publishes its next authority.
        let (new, t0) = loop {
            let now = published().await;
            if let Some(new) = now.iter().find(|a| !seen.contains(a)) {
                break (new.clone(), Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        seen.push(new.clone());
        let waits: Vec<_> = std::mem::take(&mut open)
            .into_iter()
            .map(|(c, mut s)| {
                let new = new.to_vec();
                tokio::spawn(async move {
                    loop {
                        let msg = tokio::time::timeout(Duration::from_secs(60), s.message())
                            .await
                            .expect("the new authority within 60 s")
                            .unwrap()
                            .unwrap();
                        if holds(&msg, &new) {
                            return (t0.elapsed(), c, s);
                        }
                    }
                })
            })
            .collect();
        let mut lat = Vec::with_capacity(streams);
        for w in waits {
            let (took, c, s) = w.await.unwrap();
            lat.push(took);
            open.push((c, s));
        }
        lat.sort();
        println!(
            "rotation {}: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            round + 1,
            ms(percentile(&lat, 0.5)),
            ms(percentile(&lat, 0.99)),
            ms(*lat.last().unwrap())
        );
        all.extend(lat);
    }
    all.sort();
    println!(
        "foreign CA rotation -> all {streams} streams hold the new bundle (3 rotations, refresh hint {} s): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (target: hint + 1 s = {} ms)",
        REFRESH_HINT.as_secs(),
        ms(percentile(&all, 0.5)),
        ms(percentile(&all, 0.99)),
        ms(*all.last().unwrap()),
        (REFRESH_HINT + Duration::from_secs(1)).as_millis()
    );
}
