//! Decision latency: the `envoy-http-authz` OPA fixture and a SPIFFE
//! allow-list, on both engines (Wasm host and regorus), warm instances.
//!
//! Targets (issue 6): Wasm p50 <= 5 us, regorus p50 <= 10 us,
//! >= 500k decisions/s across 2 cores.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use signet_policy::input::InputBuilder;
use signet_policy::{Policy, PolicyOptions};

/// The envoy-http-authz fixture's policy, re-stated in Rego from its README
/// (GET of `/`, or `authorization: Basic charlie`).
const ENVOY_REGO: &str = r#"
package example
import rego.v1
default allow := false
allow if {
    input.attributes.request.http.method == "GET"
    input.attributes.request.http.path == "/"
}
allow if input.attributes.request.http.headers.authorization == "Basic charlie"
"#;

fn fixtures() -> PathBuf {
    let p = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/fixtures/opa-wasm"
    ));
    assert!(p.is_dir(), "OPA wasm fixtures missing at {}", p.display());
    p
}

fn bench(c: &mut Criterion) {
    let envoy_input = json!({"attributes": {"request": {"http": {
        "method": "GET", "path": "/", "headers": {"user-agent": "curl"}}}}});
    let spiffe_input = InputBuilder::default()
        .peer_id("spiffe://example.org/ns/web/sa/frontend")
        .own_id("spiffe://example.org/ns/db/sa/postgres")
        .source("10.0.0.7:51544".parse().unwrap())
        .destination("10.0.0.9:5432".parse().unwrap())
        .build();

    let wasm_envoy = Arc::new(
        Policy::load(
            fixtures().join("envoy-http-authz/policy.wasm"),
            &PolicyOptions::default().with_entrypoint("example"),
        )
        .unwrap(),
    );
    let rego_envoy = Arc::new(
        Policy::from_rego(
            ENVOY_REGO,
            &PolicyOptions::default().with_entrypoint("example"),
        )
        .unwrap(),
    );
    let rego_spiffe = Arc::new(
        Policy::load(
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/rego/spiffe_allowlist.rego"
            )),
            &PolicyOptions::default(),
        )
        .unwrap(),
    );
    // No OPA binary here to compile the SPIFFE allow-list to Wasm; the ABI 1.1
    // RBAC fixture (data lookups by subject) stands in for a Wasm identity policy.
    let rbac_data: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fixtures().join("rbac-data-abi11/data.json")).unwrap(),
    )
    .unwrap();
    let rbac_cases: Vec<serde_json::Value> = serde_json::from_slice(
        &std::fs::read(fixtures().join("rbac-data-abi11/cases.json")).unwrap(),
    )
    .unwrap();
    let rbac_input = rbac_cases[0]["input"].clone();
    let wasm_rbac = Arc::new(
        Policy::load(
            fixtures().join("rbac-data-abi11/policy.wasm"),
            &PolicyOptions::default()
                .with_entrypoint("example/allow")
                .with_data(rbac_data),
        )
        .unwrap(),
    );

    let mut g = c.benchmark_group("decision");
    g.bench_function("wasm/envoy-http-authz", |b| {
        b.iter(|| black_box(wasm_envoy.evaluate(black_box(&envoy_input))))
    });
    g.bench_function("rego/envoy-http-authz", |b| {
        b.iter(|| black_box(rego_envoy.evaluate(black_box(&envoy_input))))
    });
    g.bench_function("rego/spiffe-allowlist", |b| {
        b.iter(|| black_box(rego_spiffe.evaluate(black_box(&spiffe_input))))
    });
    g.bench_function("wasm/rbac-abi11", |b| {
        b.iter(|| black_box(wasm_rbac.evaluate(black_box(&rbac_input))))
    });
    g.bench_function("input-builder", |b| {
        b.iter(|| {
            black_box(
                InputBuilder::default()
                    .peer_id("spiffe://example.org/ns/web/sa/frontend")
                    .own_id("spiffe://example.org/ns/db/sa/postgres")
                    .build(),
            )
        })
    });
    // Two threads sharing one policy (its instance pool): time per decision.
    g.bench_function("wasm/envoy-http-authz/2-threads", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            std::thread::scope(|s| {
                for _ in 0..2 {
                    let (p, input) = (wasm_envoy.clone(), envoy_input.clone());
                    s.spawn(move || {
                        for _ in 0..iters / 2 {
                            black_box(p.evaluate(&input));
                        }
                    });
                }
            });
            start.elapsed()
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
