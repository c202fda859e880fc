//! SVID issuance throughput: X509-SVIDs from a public key and from a CSR,
//! and JWT-SVID signing, on one thread and on two.
//!
//! Run: `cargo bench -p signet-server --bench issuance`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rcgen::{CertificateParams, KeyPair, PublicKeyData};
use signet_identity::{SpiffeId, TrustDomain};
use signet_server::key_manager::memory::MemoryKeyManager;
use signet_server::{Ca, CaConfig, SvidOptions, SystemClock};

fn setup() -> (Arc<Ca>, SpiffeId, Vec<u8>, Vec<u8>) {
    let td = TrustDomain::parse("example.org").unwrap();
    let ca = Ca::new(
        CaConfig::new(td),
        Arc::new(SystemClock),
        Arc::new(MemoryKeyManager::default()),
        None,
    )
    .unwrap();
    let key = KeyPair::generate().unwrap();
    let csr = CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .serialize_request(&key)
        .unwrap();
    let id = SpiffeId::parse("spiffe://example.org/ns/prod/sa/web").unwrap();
    (
        Arc::new(ca),
        id,
        key.subject_public_key_info(),
        csr.der().to_vec(),
    )
}

/// Runs `op` `iters` times split across `threads` threads; returns wall time.
fn parallel(iters: u64, threads: u64, op: impl Fn() + Sync) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let share = iters / threads + u64::from(t < iters % threads);
            let op = &op;
            s.spawn(move || (0..share).for_each(|_| op()));
        }
    });
    start.elapsed()
}

fn issuance(c: &mut Criterion) {
    let (ca, id, spki, csr) = setup();
    let opts = SvidOptions::default();
    let audience = vec!["spiffe://example.org/db".to_string()];
    for threads in [1u64, 2] {
        let mut g = c.benchmark_group(format!("issuance/{threads}-thread"));
        g.throughput(Throughput::Elements(1));
        g.bench_function("x509_svid_from_public_key", |b| {
            b.iter_custom(|n| {
                parallel(n, threads, || {
                    ca.sign_x509_svid(&spki, &id, &opts).unwrap();
                })
            })
        });
        g.bench_function("x509_svid_from_csr", |b| {
            b.iter_custom(|n| {
                parallel(n, threads, || {
                    ca.sign_x509_svid_csr(&csr, &id, &opts).unwrap();
                })
            })
        });
        g.bench_function("jwt_svid_es256", |b| {
            b.iter_custom(|n| {
                parallel(n, threads, || {
                    ca.sign_jwt_svid(&id, &audience, None).unwrap();
                })
            })
        });
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    targets = issuance
}
criterion_main!(benches);
