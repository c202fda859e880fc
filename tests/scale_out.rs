//! End-to-end: two `signet server` processes share one PostgreSQL
//! database. Each keeps its own CA; the published bundle holds both, so an
//! agent attested by one server is served by the other (failover).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use signet_testkit::postgres;

use std::path::Path;

use common::*;
use signet_agent::node_client::{AttestWith, NodeClient};
use signet_identity::{Bundle, TrustDomain};

fn start(dir: &Path, name: &str, url: &str) -> (Proc, String, std::net::SocketAddr) {
    let admin = dir.join(format!("{name}.sock")).display().to_string();
    let mut cmd = signet();
    cmd.args([
        "server",
        "--server-id",
        name,
        "--datastore",
        url,
        "--data-dir",
    ])
    .arg(dir.join(name))
    .args(["--admin-socket", &admin, "--bind-address", "127.0.0.1:0"]);
    let mut proc = Proc::spawn(name, cmd, dir);
    let banner = proc.wait_for("Press Ctrl-C");
    let addr = agent_api_addr(&banner);
    (proc, admin, addr)
}

fn bundle(admin: &str) -> Bundle {
    let pem = ok(&["bundle", "show", "--socket", admin]);
    Bundle::from_x509_pem(TrustDomain::parse("example.org").unwrap(), pem.as_bytes()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_servers_on_one_database_serve_each_others_agents() {
    let pg = postgres::Postgres::start();
    let url = pg.database("signet_ha").await;
    let dir = tempfile::tempdir().unwrap();
    let (_s1, a1, addr1) = start(dir.path(), "s1", &url);
    let (_s2, a2, addr2) = start(dir.path(), "s2", &url);

    // Both CAs end up in the one published bundle, seen from either server.
    let both = eventually("both CAs in the bundle", || {
        let b = bundle(&a1);
        (b.x509_authorities().len() == 2).then_some(b)
    });
    assert_eq!(bundle(&a2).x509_authorities(), both.x509_authorities());

    // Attested by s1 ...
    let token: serde_json::Value = serde_json::from_str(&ok(&[
        "token", "generate", "--socket", &a1, "--output", "json",
    ]))
    .unwrap();
    let mut c = NodeClient::connect(addr1, both.clone(), None)
        .await
        .unwrap();
    let a = c
        .attest(AttestWith::JoinToken(token["token"].as_str().unwrap()))
        .await
        .unwrap();
    let agent_id = a.svid.spiffe_id().to_string();
    // ... with an entry registered through s2 ...
    let e: serde_json::Value = serde_json::from_str(&ok(&[
        "entry",
        "create",
        "--socket",
        &a2,
        "--output",
        "json",
        "--spiffe-id",
        "spiffe://example.org/ha",
        "--parent-id",
        &agent_id,
        "--selector",
        "unix:uid:1",
    ]))
    .unwrap();
    // ... the agent fails over to s2, which trusts s1's SVID and serves it.
    let mut at_s2 = NodeClient::connect(addr2, both, Some(&a.svid))
        .await
        .unwrap();
    let svid = at_s2.mint_x509(e["id"].as_str().unwrap()).await.unwrap();
    assert_eq!(svid.spiffe_id().as_str(), "spiffe://example.org/ha");
}
