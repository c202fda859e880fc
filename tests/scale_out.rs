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

/// The id of the active X.509 authority of the server at `admin`.
fn active_authority(admin: &str) -> String {
    let v = json_stdout(&run(&[
        "authority",
        "x509",
        "show",
        "--admin-socket",
        admin,
        "--output",
        "json",
    ]));
    v["authorities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["state"] == "active")
        .unwrap()["authority_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_taint_on_one_server_reaches_the_agents_of_another() {
    use tokio_stream::StreamExt;
    let pg = postgres::Postgres::start();
    let url = pg.database("signet_taint").await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut s1, a1, addr1) = start(dir, "s1", &url);
    let (_s2, a2, addr2) = start(dir, "s2", &url);
    let pem = eventually("both CAs in the bundle", || {
        let pem = ok(&["bundle", "show", "--socket", &a1]);
        (pem.matches("BEGIN CERTIFICATE").count() == 2).then_some(pem)
    });
    std::fs::write(dir.join("bundle.pem"), pem).unwrap();

    // An agent attested by s1, s2 its second server; it stays where it
    // fails over to.
    let agent_id = "spiffe://example.org/node/a";
    let token = json_stdout(&run(&[
        "token",
        "generate",
        "--spiffe-id",
        agent_id,
        "--socket",
        &a1,
        "--output",
        "json",
    ]))["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let entry = |admin: &str, id: &str| {
        let selector = format!("unix:uid:{}", uid());
        ok(&[
            "entry",
            "create",
            "--socket",
            admin,
            "--spiffe-id",
            id,
            "--parent-id",
            agent_id,
            "--selector",
            &selector,
        ]);
    };
    entry(&a1, "spiffe://example.org/payments");
    let socket = dir.join("agent.sock");
    let mut cmd = signet();
    cmd.arg("agent")
        .args(["--server-address", &addr1.to_string()])
        .args(["--server-address", &addr2.to_string()])
        .arg("--trust-bundle")
        .arg(dir.join("bundle.pem"))
        .args(["--join-token", &token, "--data-dir"])
        .arg(dir.join("agent"))
        .arg("--agent-socket")
        .arg(&socket)
        .args(["--rebalance-after", "0s"]);
    let _agent = Proc::spawn("agent", cmd, dir);
    let client = eventually("the agent socket", || {
        std::os::unix::net::UnixStream::connect(&socket).ok()
    });
    drop(client);
    let client = spiffe::WorkloadApiClient::connect_to(format!("unix://{}", socket.display()))
        .await
        .unwrap();
    let mut stream = client.stream_x509_contexts().await.unwrap();
    // Each SVID on the stream as (SPIFFE ID, issuing authority).
    let mut next = async || {
        let ctx = tokio::time::timeout(DEADLINE, stream.next())
            .await
            .expect("a stream update")
            .unwrap()
            .unwrap();
        ctx.svids()
            .iter()
            .map(|s| {
                let leaf = s.cert_chain()[0].as_ref();
                (
                    s.spiffe_id().to_string(),
                    signet_identity::x509_svid::issuer_authority_id(leaf).unwrap(),
                )
            })
            .collect::<Vec<_>>()
    };
    let s1_old = active_authority(&a1);
    let first = next().await;
    assert_eq!(
        first,
        [("spiffe://example.org/payments".to_owned(), s1_old.clone())]
    );

    // s1 dies; the agent is on s2 once an entry made there reaches it.
    s1.signal_and_wait("KILL");
    entry(&a2, "spiffe://example.org/reports");
    loop {
        if next().await.len() == 2 {
            break;
        }
    }

    // s1 returns, and its old authority is tainted there: the agent, on
    // s2, replaces what s1's old authority signed, with s2's.
    let (_s1, a1, _) = start(dir, "s1", &url);
    let new = json_stdout(&run(&[
        "authority",
        "x509",
        "prepare",
        "--admin-socket",
        &a1,
        "--output",
        "json",
    ]))["authorities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["state"] == "prepared")
        .unwrap()["authority_id"]
        .as_str()
        .unwrap()
        .to_owned();
    ok(&[
        "authority",
        "x509",
        "activate",
        "--authority-id",
        &new,
        "--admin-socket",
        &a1,
    ]);
    ok(&[
        "authority",
        "x509",
        "taint",
        "--authority-id",
        &s1_old,
        "--admin-socket",
        &a1,
    ]);
    let s2_active = active_authority(&a2);
    loop {
        let svids = next().await;
        if svids.iter().all(|(_, issuer)| *issuer != s1_old) {
            assert!(
                svids.iter().all(|(_, issuer)| *issuer == s2_active),
                "{svids:?}"
            );
            break;
        }
    }
}
