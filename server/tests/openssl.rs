//! The real `openssl` accepts our X509-SVIDs, from a self-signed root and
//! from an intermediate under an upstream CA that openssl itself created.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use rcgen::{KeyPair, PublicKeyData};
use signet_identity::bundle::certificates_to_pem;
use signet_identity::{SpiffeId, TrustDomain};
use signet_server::key_manager::memory::MemoryKeyManager;
use signet_server::{Ca, CaConfig, SvidOptions, SystemClock, UpstreamAuthority};

fn openssl(args: &[&str], dir: &Path) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl must be installed (scripts/test installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn new_ca(upstream: Option<UpstreamAuthority>) -> Ca {
    let td = TrustDomain::parse("example.org").unwrap();
    Ca::new(
        CaConfig::new(td),
        Arc::new(SystemClock),
        Arc::new(MemoryKeyManager::default()),
        upstream,
    )
    .unwrap()
}

/// Mints an SVID and writes svid.pem (leaf), intermediates.pem and bundle.pem.
fn mint(ca: &Ca, dir: &Path) -> usize {
    let key = KeyPair::generate().unwrap();
    let id = SpiffeId::parse("spiffe://example.org/web").unwrap();
    let opts = SvidOptions {
        ttl: None,
        dns_names: vec!["web.example.org".into()],
    };
    let chain = ca
        .sign_x509_svid(&key.subject_public_key_info(), &id, &opts)
        .unwrap();
    std::fs::write(dir.join("svid.pem"), certificates_to_pem(&chain[..1])).unwrap();
    std::fs::write(
        dir.join("intermediates.pem"),
        certificates_to_pem(&chain[1..]),
    )
    .unwrap();
    std::fs::write(dir.join("bundle.pem"), ca.bundle().x509_pem()).unwrap();
    chain.len()
}

fn assert_svid_extensions(dir: &Path) {
    let (ok, text) = openssl(&["x509", "-in", "svid.pem", "-noout", "-text"], dir);
    assert!(ok, "{text}");
    for want in [
        "URI:spiffe://example.org/web",
        "DNS:web.example.org",
        "CA:FALSE",
        "X509v3 Key Usage: critical",
        "Digital Signature, Key Encipherment, Key Agreement",
        "TLS Web Server Authentication, TLS Web Client Authentication",
        "X509v3 Subject Key Identifier",
        "X509v3 Authority Key Identifier",
        "CN = web.example.org",
    ] {
        assert!(
            text.contains(want),
            "openssl x509 -text lacks {want:?}:\n{text}"
        );
    }
    assert!(
        !text.contains("Certificate Sign"),
        "a leaf must not have keyCertSign:\n{text}"
    );
}

#[test]
fn openssl_verifies_svids_from_a_self_signed_root() {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca(None);
    assert_eq!(mint(&ca, dir.path()), 1);
    let (ok, text) = openssl(&["verify", "-CAfile", "bundle.pem", "svid.pem"], dir.path());
    assert!(ok && text.contains("svid.pem: OK"), "{text}");
    assert_svid_extensions(dir.path());

    // Another CA's bundle must not verify it.
    std::fs::write(
        dir.path().join("other.pem"),
        new_ca(None).bundle().x509_pem(),
    )
    .unwrap();
    let (ok, text) = openssl(&["verify", "-CAfile", "other.pem", "svid.pem"], dir.path());
    assert!(!ok, "verified against the wrong CA: {text}");
}

#[test]
fn openssl_verifies_svids_under_an_upstream_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, text) = openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "upstream.key",
            "-out",
            "upstream.pem",
            "-days",
            "30",
            "-subj",
            "/O=Upstream/CN=Upstream Root",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
        dir.path(),
    );
    assert!(ok, "{text}");
    let up = UpstreamAuthority::load(
        &dir.path().join("upstream.pem"),
        &dir.path().join("upstream.key"),
        None,
    )
    .unwrap();
    let ca = new_ca(Some(up));
    assert_eq!(mint(&ca, dir.path()), 2, "leaf + our intermediate");
    let (ok, text) = openssl(
        &[
            "verify",
            "-CAfile",
            "bundle.pem",
            "-untrusted",
            "intermediates.pem",
            "svid.pem",
        ],
        dir.path(),
    );
    assert!(ok && text.contains("svid.pem: OK"), "{text}");
    assert_svid_extensions(dir.path());
    // The bundle is the upstream root, so without the intermediate there is no path.
    let (ok, text) = openssl(&["verify", "-CAfile", "bundle.pem", "svid.pem"], dir.path());
    assert!(!ok, "verified without the intermediate: {text}");
}
