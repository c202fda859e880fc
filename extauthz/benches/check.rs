//! Check round trip over a Unix socket, as Envoy's gRPC client makes it:
//! a tonic server with an OPA-Envoy style Rego policy, tonic clients in
//! the same process (both share the machine's two cores).
//!
//! Run: `cargo bench -p signet-extauthz --bench check`
//! (`SIGNET_BENCH_SECONDS=N` for the throughput run, default 5).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use signet_extauthz::ExtAuthz;
use signet_policy::{PolicyHandle, PolicyOptions};

const POLICY: &str = r#"package envoy.authz
import rego.v1
default allow := false
allow if {
    input.attributes.request.http.method == "GET"
    input.parsed_path[0] == "api"
    input.spiffe.peer_trust_domain == "example.org"
}
"#;

fn request(i: u64) -> CheckRequest {
    let headers: HashMap<String, String> = [
        (":authority", "api.local"),
        (":method", "GET"),
        ("user-agent", "curl/8"),
        ("accept", "*/*"),
        ("x-request-id", "5f6a1c2e"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                principal: "spiffe://example.org/web".into(),
                ..Peer::default()
            }),
            destination: Some(Peer {
                principal: "spiffe://example.org/api".into(),
                ..Peer::default()
            }),
            request: Some(Request {
                http: Some(HttpRequest {
                    id: i.to_string(),
                    method: "GET".into(),
                    path: format!("/api/v1/items/{i}?page=2"),
                    host: "api.local".into(),
                    protocol: "HTTP/1.1".into(),
                    headers,
                    ..HttpRequest::default()
                }),
                ..Request::default()
            }),
            ..AttributeContext::default()
        }),
    }
}

fn micros(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let seconds: u64 = std::env::var("SIGNET_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.rego");
    std::fs::write(&path, POLICY).unwrap();
    let options = PolicyOptions::default().with_entrypoint("envoy/authz/allow");
    let authz = ExtAuthz::new(Arc::new(PolicyHandle::load(&path, options).unwrap()));

    // The decision alone (input document, evaluation, response), no gRPC.
    let mut lat = Vec::with_capacity(10_000);
    for i in 0..11_000 {
        let req = request(i);
        let t = Instant::now();
        authz.decide(&req).unwrap();
        if i >= 1000 {
            lat.push(t.elapsed());
        }
    }
    lat.sort();
    println!(
        "Decision alone (input, Rego evaluation, response): p50 {:.1} µs, p99 {:.1} µs",
        micros(&lat, 0.5),
        micros(&lat, 0.99)
    );
    let sock = dir.path().join("authz.sock");
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(authz.into_service())
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
    );

    // Latency: one client, one check at a time, on a thread and runtime
    // of its own (as Envoy is a process of its own).
    let client_sock = sock.clone();
    let mut lat = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let channel = signet_workload::channel(client_sock).await.unwrap();
            let mut client = AuthorizationClient::new(channel);
            for i in 0..1000 {
                client.check(request(i)).await.unwrap();
            }
            let mut lat = Vec::with_capacity(10_000);
            for i in 0..10_000 {
                let t = Instant::now();
                let r = client.check(request(i)).await.unwrap();
                lat.push(t.elapsed());
                assert_eq!(r.get_ref().status.as_ref().unwrap().code, 0);
            }
            lat
        })
    })
    .join()
    .unwrap();
    lat.sort();
    println!(
        "Check round trip, one client over the Unix socket: p50 {:.1} µs, p99 {:.1} µs",
        micros(&lat, 0.5),
        micros(&lat, 0.99)
    );

    // Throughput: 4 connections x 16 checks in flight, as busy Envoys.
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let channel = signet_workload::channel(sock.clone()).await.unwrap();
        for _ in 0..16 {
            let mut client = AuthorizationClient::new(channel.clone());
            let done = done.clone();
            tasks.push(tokio::spawn(async move {
                let mut i = 0;
                while Instant::now() < until {
                    client.check(request(i)).await.unwrap();
                    done.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            }));
        }
    }
    let start = Instant::now();
    for t in tasks {
        t.await.unwrap();
    }
    let rate = done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    println!("Checks per second, 4 connections x 16 in flight: {rate:.0}");
}
