//! CA operations after a suspected key compromise, end to end on `signet
//! run`: `signet authority x509|jwt` show, prepare, activate, taint,
//! revoke. A workload's open Workload API stream gets an SVID from the new
//! authority as soon as the old one is tainted, and loses the old root
//! from its bundle when it is revoked; a cached JWT-SVID signed by a
//! tainted key is not handed out again, and once the key is revoked the
//! old token no longer validates. With an upstream CA, its root is
//! replaced on disk, then tainted and revoked (`signet
//! upstream-authority`). The refusals name the problem.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use spiffe::WorkloadApiClient;
use tokio_stream::StreamExt;

const DEADLINE: Duration = Duration::from_secs(20);

/// `signet authority ...` fails, saying `says`.
fn refused(c: &Combined, args: &[&str], says: &str) {
    let mut all = vec!["authority"];
    all.extend(args);
    all.extend(["--admin-socket", &c.admin]);
    fails_saying(&all, says);
}

/// Whether the Workload API's bundle stream comes to hold exactly one
/// root for example.org before the deadline.
async fn one_root_streamed(client: &WorkloadApiClient) -> bool {
    let td = spiffe::TrustDomain::new("example.org").unwrap();
    tokio::time::timeout(DEADLINE, async {
        let mut bundles = client.stream_x509_bundles().await.unwrap();
        loop {
            let set = bundles.next().await.unwrap().unwrap();
            if set.get(&td).is_some_and(|b| b.authorities().len() == 1) {
                return;
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn taint_replaces_and_revoke_removes_what_an_authority_signed() {
    let dir = tempfile::tempdir().unwrap();
    let c = Combined::start(dir.path(), &[]);
    c.entry_for_uid("spiffe://example.org/payments", uid());
    c.x509_json("an SVID for this process");
    let client = WorkloadApiClient::connect_to(format!("unix://{}", c.agent))
        .await
        .unwrap();
    let mut stream = client.stream_x509_svids().await.unwrap();
    let first = tokio::time::timeout(DEADLINE, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let issuer = |chain: &[spiffe::cert::Certificate]| {
        signet_identity::x509_svid::issuer_authority_id(chain[0].as_ref()).unwrap()
    };

    let list = authority(&c, "x509", &["show"]);
    let old = id_in(&list, "active");
    assert_eq!(issuer(first.cert_chain()), old);

    // Refusals name the problem.
    refused(
        &c,
        &["x509", "taint", "--authority-id", &old],
        "is active: only an old authority can be tainted",
    );
    refused(
        &c,
        &["x509", "revoke", "--authority-id", "00ff"],
        "no X.509 authority has id \"00ff\"",
    );
    refused(
        &c,
        &["x509", "activate", "--authority-id", "00ff"],
        "no X.509 authority is prepared",
    );

    // Prepare, activate: the old one is old, and still trusted.
    let prepared = authority(&c, "x509", &["prepare"]);
    let new = id_in(&prepared, "prepared");
    assert!(
        prepared["bundle_sequence"].as_u64().unwrap() > list["bundle_sequence"].as_u64().unwrap()
    );
    let activated = authority(&c, "x509", &["activate", "--authority-id", &new]);
    assert_eq!(id_in(&activated, "active"), new);
    assert_eq!(id_in(&activated, "old"), old);
    refused(
        &c,
        &["x509", "revoke", "--authority-id", &old],
        "is not tainted: taint it before revoking it",
    );

    // Taint: the open stream gets an SVID from the new authority now, not
    // at half-life (an hour's SVID).
    authority(&c, "x509", &["taint", "--authority-id", &old]);
    let tainted_at = std::time::Instant::now();
    let replaced = tokio::time::timeout(DEADLINE, async {
        loop {
            let svid = stream.next().await.unwrap().unwrap();
            if issuer(svid.cert_chain()) == new {
                return svid;
            }
        }
    })
    .await
    .expect("an SVID from the new authority on the open stream after the taint");
    println!(
        "taint -> new SVID on the stream: {:?}",
        tainted_at.elapsed()
    );
    assert_eq!(
        replaced.spiffe_id().to_string(),
        "spiffe://example.org/payments"
    );
    let shown = authority(&c, "x509", &["show"]);
    assert!(
        shown["authorities"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["authority_id"] == old.as_str() && a["tainted"] == true),
        "{shown}"
    );

    // Revoke: the old root leaves the bundle workloads see.
    authority(&c, "x509", &["revoke", "--authority-id", &old]);
    let bundle = eventually("the revoked root to leave the bundle", || {
        let pem = ok(&["bundle", "show", "--socket", &c.admin]);
        (pem.matches("BEGIN CERTIFICATE").count() == 1).then_some(pem)
    });
    assert!(
        one_root_streamed(&client).await,
        "the Workload API bundle still holds the revoked root"
    );
    assert!(!bundle.is_empty());
    refused(
        &c,
        &["x509", "taint", "--authority-id", &old],
        "no X.509 authority has id",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tainted_jwt_key_is_not_used_again_and_a_revoked_one_stops_validating() {
    let dir = tempfile::tempdir().unwrap();
    let c = Combined::start(dir.path(), &[]);
    c.entry_for_uid("spiffe://example.org/api", uid());
    c.x509_json("an SVID for this process");
    let client = WorkloadApiClient::connect_to(format!("unix://{}", c.agent))
        .await
        .unwrap();
    let kid = |token: &str| signet_identity::jwt_svid::key_id_insecure(token).unwrap();

    let before = client.fetch_jwt_svid(["db"], None).await.unwrap();
    let old = id_in(&authority(&c, "jwt", &["show"]), "active");
    assert_eq!(kid(before.token()), old);
    refused(
        &c,
        &["jwt", "taint", "--authority-id", &old],
        "is active: only an old authority can be tainted",
    );
    let new = id_in(&authority(&c, "jwt", &["prepare"]), "prepared");
    authority(&c, "jwt", &["activate", "--authority-id", &new]);
    // Still cached and valid while merely old.
    let cached = client.fetch_jwt_svid(["db"], None).await.unwrap();
    assert_eq!(
        kid(cached.token()),
        old,
        "an untainted old key's token is reused"
    );

    authority(&c, "jwt", &["taint", "--authority-id", &old]);
    let fresh = eventually("a JWT-SVID signed by the new key", || {
        let out = c.api(&["fetch", "jwt", "--audience", "db", "--output", "json"]);
        let token = json_stdout_if_ok(out)?["svids"][0]["token"]
            .as_str()?
            .to_owned();
        (kid(&token) == new).then_some(token)
    });
    assert!(client.validate_jwt_token("db", &fresh).await.is_ok());
    assert!(
        client
            .validate_jwt_token("db", before.token())
            .await
            .is_ok(),
        "a tainted key still verifies until revoked"
    );

    authority(&c, "jwt", &["revoke", "--authority-id", &old]);
    eventually("the revoked key's token to stop validating", || {
        let out = c.api(&[
            "validate",
            "jwt",
            "--audience",
            "db",
            "--token",
            before.token(),
        ]);
        (!out.status.success()).then_some(())
    });
    assert!(client.validate_jwt_token("db", &fresh).await.is_ok());
}

fn json_stdout_if_ok(out: std::process::Output) -> Option<serde_json::Value> {
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_root_is_replaced_then_tainted_and_revoked() {
    use signet_identity::x509_svid::chain_authority_ids;
    let dir = tempfile::tempdir().unwrap();
    let root = |name: &str| signet_testkit::pki::TestCa::new(name).write(dir.path(), "upstream");
    let cert = root("Upstream Root 1").display().to_string();
    let key = dir.path().join("upstream.key").display().to_string();
    let c = Combined::start(
        dir.path(),
        &["--upstream-cert", &cert, "--upstream-key", &key],
    );
    c.entry_for_uid("spiffe://example.org/payments", uid());
    c.x509_json("an SVID for this process");
    let client = WorkloadApiClient::connect_to(format!("unix://{}", c.agent))
        .await
        .unwrap();
    let mut stream = client.stream_x509_svids().await.unwrap();
    let ids = |svid: &spiffe::X509Svid| {
        let chain: Vec<_> = svid
            .cert_chain()
            .iter()
            .map(|c| signet_identity::CertificateDer::from(c.as_ref().to_vec()))
            .collect();
        chain_authority_ids(&chain)
    };
    let first = tokio::time::timeout(DEADLINE, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    let roots = authority(&c, "upstream", &["show"]);
    let old = id_in(&roots, "active");
    assert!(ids(&first).contains(&old), "{roots}");
    let refused_upstream = |args: &[&str], says: &str| {
        let mut all = vec!["upstream-authority"];
        all.extend(args);
        all.extend(["--admin-socket", &c.admin]);
        fails_saying(&all, says);
    };
    refused_upstream(
        &["taint", "--subject-key-id", &old],
        "signs the active authority: replace the upstream CA files",
    );
    refused(
        &c,
        &["x509", "taint", "--authority-id", &old],
        "taint or revoke at the upstream authority",
    );

    // The upstream CA is replaced on disk; a new authority chains to it.
    root("Upstream Root 2");
    let new = id_in(&authority(&c, "x509", &["prepare"]), "prepared");
    authority(&c, "x509", &["activate", "--authority-id", &new]);
    let roots = authority(&c, "upstream", &["show"]);
    assert_eq!(id_in(&roots, "old"), old, "{roots}");
    let new_root = id_in(&roots, "active");

    // Taint, by the id as openssl prints it: the open stream gets an SVID
    // that no longer chains to the old root.
    let openssl_form = old
        .as_bytes()
        .chunks(2)
        .map(|b| std::str::from_utf8(b).unwrap().to_ascii_uppercase())
        .collect::<Vec<_>>()
        .join(":");
    authority(
        &c,
        "upstream",
        &["taint", "--subject-key-id", &openssl_form],
    );
    let replaced = tokio::time::timeout(DEADLINE, async {
        loop {
            let svid = stream.next().await.unwrap().unwrap();
            if !ids(&svid).contains(&old) {
                return svid;
            }
        }
    })
    .await
    .expect("an SVID chaining to the new root on the open stream after the taint");
    assert!(ids(&replaced).contains(&new_root));

    // Revoke: the old root leaves the Workload API bundle.
    authority(&c, "upstream", &["revoke", "--subject-key-id", &old]);
    assert!(
        one_root_streamed(&client).await,
        "the revoked upstream root is still in the bundle"
    );
    refused_upstream(
        &["taint", "--subject-key-id", &old],
        "no upstream X.509 authority has id",
    );
}
