//! End-to-end: the real `signet server` process and agents driven over the
//! real server-agent API (mTLS gRPC) by the agent-side client. Covers node
//! attestation (join token, x509pop), authorized entries (direct and via a
//! node-alias entry), pushes on change, and security invariant 1's
//! adversarial cases.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::path::Path;

use common::*;
use rcgen::{CertificateParams, DnType, KeyPair};
use signet_agent::node_client::{AttestWith, ClientError, NodeClient};
use signet_identity::{Bundle, TrustDomain};
use signet_testkit::pki::TestCa;

struct TestServer {
    proc: Proc,
    admin: String,
    addr: SocketAddr,
}

impl TestServer {
    fn start(dir: &Path, extra: &[&str]) -> TestServer {
        let admin = dir.join("admin.sock").display().to_string();
        let mut cmd = signet();
        cmd.args(["server", "--data-dir"])
            .arg(dir.join("data"))
            .args(["--admin-socket", &admin, "--bind-address", "127.0.0.1:0"])
            .args(extra);
        let mut proc = Proc::spawn("signet-server", cmd, dir);
        let banner = proc.wait_for("Press Ctrl-C");
        let addr = agent_api_addr(&banner);
        TestServer { proc, admin, addr }
    }

    fn admin(&self, args: &[&str]) -> String {
        let mut all = args.to_vec();
        all.extend(["--socket", &self.admin]);
        ok(&all)
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        serde_json::from_str(&self.admin(&all)).unwrap()
    }

    fn bundle(&self) -> Bundle {
        let pem = self.admin(&["bundle", "show"]);
        Bundle::from_x509_pem(TrustDomain::parse("example.org").unwrap(), pem.as_bytes()).unwrap()
    }

    fn token(&self) -> String {
        self.json(&["token", "generate"])["token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn entry(&self, spiffe_id: &str, parent: &str, selector: &str, node: bool) -> String {
        let mut args = vec![
            "entry",
            "create",
            "--spiffe-id",
            spiffe_id,
            "--parent-id",
            parent,
            "--selector",
            selector,
        ];
        if node {
            args.push("--node");
        }
        self.json(&args)["id"].as_str().unwrap().to_owned()
    }
}

/// Attests and returns a client presenting the new agent SVID, and its ID.
async fn agent(server: &TestServer, with: AttestWith<'_>) -> (NodeClient, String) {
    let mut c = NodeClient::connect(server.addr, server.bundle(), None)
        .await
        .unwrap();
    let a = c.attest(with).await.unwrap();
    let id = a.svid.spiffe_id().to_string();
    (
        NodeClient::connect(server.addr, a.bundle.clone(), Some(&a.svid))
            .await
            .unwrap(),
        id,
    )
}

fn denied(r: Result<impl std::fmt::Debug, ClientError>) -> String {
    match r {
        Err(ClientError::Status(s)) if s.code() == tonic::Code::PermissionDenied => {
            s.message().to_owned()
        }
        other => panic!("expected PermissionDenied, got {other:?}"),
    }
}

async fn entry_ids(
    stream: &mut tonic::Streaming<signet_wire::node::SubscribeResponse>,
) -> Vec<String> {
    let msg = tokio::time::timeout(DEADLINE, stream.message())
        .await
        .expect("a push in time")
        .unwrap()
        .unwrap();
    let mut ids: Vec<String> = msg.entries.iter().map(|e| e.spiffe_id.clone()).collect();
    ids.sort();
    ids
}

async fn next_push(
    stream: &mut tonic::Streaming<signet_wire::node::SubscribeResponse>,
) -> signet_wire::node::SubscribeResponse {
    tokio::time::timeout(DEADLINE, stream.message())
        .await
        .expect("a push in time")
        .unwrap()
        .unwrap()
}

/// Entry ids of a push, sorted.
fn ids_of(entries: &[signet_wire::types::Entry]) -> Vec<String> {
    let mut ids: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
    ids.sort();
    ids
}

fn sorted(ids: &[&String]) -> Vec<String> {
    let mut v: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn a_resumed_subscription_sends_only_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let token = server.token();
    let (mut a, a_id) = agent(&server, AttestWith::JoinToken(&token)).await;
    let entry = |name: &str| {
        server.entry(
            &format!("spiffe://example.org/{name}"),
            &a_id,
            "unix:uid:1",
            false,
        )
    };
    let (one, two, three) = (entry("one"), entry("two"), entry("three"));

    // Holding nothing: everything, as a delta.
    let mut stream = a.subscribe_deltas(0, []).await.unwrap();
    let first = next_push(&mut stream).await;
    assert!(first.delta);
    assert_eq!(ids_of(&first.entries), sorted(&[&one, &two, &three]));
    assert!(first.removed_entry_ids.is_empty());
    assert!(!first.bundles.is_empty());
    let revision_of = |id: &str| first.entries.iter().find(|e| e.id == id).unwrap().revision;

    // Then only what changed: a deletion, an addition.
    server.admin(&["entry", "delete", "--id", &three]);
    let push = next_push(&mut stream).await;
    assert!(push.delta && push.entries.is_empty(), "{push:?}");
    assert_eq!(push.removed_entry_ids, std::slice::from_ref(&three));
    let four = entry("four");
    let push = next_push(&mut stream).await;
    assert_eq!(ids_of(&push.entries), std::slice::from_ref(&four));
    assert!(push.removed_entry_ids.is_empty());
    let four_revision = push.entries[0].revision;
    let revision = push.revision;
    drop(stream);

    // Resumed holding exactly the current set: no entry crosses the wire.
    let held = [
        (one.clone(), revision_of(&one)),
        (two.clone(), revision_of(&two)),
        (four.clone(), four_revision),
    ];
    let mut stream = a.subscribe_deltas(revision, held).await.unwrap();
    let push = next_push(&mut stream).await;
    assert!(push.delta && push.entries.is_empty() && push.removed_entry_ids.is_empty());
    assert!(!push.bundles.is_empty(), "bundles always come whole");
    drop(stream);

    // Resumed with a stale view (another revision of one, the deleted
    // three, no four): exactly the difference.
    let stale = [
        (one.clone(), revision_of(&one) + 7),
        (two.clone(), revision_of(&two)),
        (three.clone(), 1),
    ];
    let mut stream = a.subscribe_deltas(1, stale).await.unwrap();
    let push = next_push(&mut stream).await;
    assert_eq!(ids_of(&push.entries), sorted(&[&one, &four]));
    assert_eq!(push.removed_entry_ids, std::slice::from_ref(&three));
    drop(stream);

    // Agents that ask for no deltas get the full set every time.
    let mut stream = a.subscribe().await.unwrap();
    let push = next_push(&mut stream).await;
    assert!(!push.delta);
    assert_eq!(ids_of(&push.entries), sorted(&[&one, &two, &four]));
}

/// A subscription recomputes its agent's entries only for changes that
/// can concern it; those must all still arrive: entries nested under its
/// workloads, and their removal with their parent's.
#[tokio::test(flavor = "multi_thread")]
async fn subscriptions_follow_nested_entries_and_ignore_other_agents() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let (mut a, a_id) = agent(&server, AttestWith::JoinToken(&server.token())).await;
    let (mut b, b_id) = agent(&server, AttestWith::JoinToken(&server.token())).await;
    let mut a_stream = a.subscribe_deltas(0, []).await.unwrap();
    let mut b_stream = b.subscribe_deltas(0, []).await.unwrap();
    assert!(next_push(&mut a_stream).await.entries.is_empty());
    assert!(next_push(&mut b_stream).await.entries.is_empty());

    let web = server.entry("spiffe://example.org/web", &a_id, "unix:uid:1", false);
    assert_eq!(
        ids_of(&next_push(&mut a_stream).await.entries),
        std::slice::from_ref(&web)
    );
    // Nested under web's SPIFFE ID: A's too.
    let nested = server.entry(
        "spiffe://example.org/web/sidecar",
        "spiffe://example.org/web",
        "unix:uid:2",
        false,
    );
    assert_eq!(
        ids_of(&next_push(&mut a_stream).await.entries),
        std::slice::from_ref(&nested)
    );
    // B's entry reaches B, and A's next push is about A's own change.
    let db = server.entry("spiffe://example.org/db", &b_id, "unix:uid:3", false);
    assert_eq!(ids_of(&next_push(&mut b_stream).await.entries), [db]);
    server.admin(&["entry", "delete", "--id", &web]);
    let push = next_push(&mut a_stream).await;
    assert!(push.entries.is_empty(), "{push:?}");
    assert_eq!(push.removed_entry_ids, sorted(&[&nested, &web]));
}

#[tokio::test(flavor = "multi_thread")]
async fn unauthenticated_attest_messages_are_small() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    // Evidence past the Attest limit, from a client with no SVID: refused
    // before the server reads it (it used to accept 64 MiB messages).
    let huge = "x".repeat(signet_server::node::ATTEST_BODY_LIMIT + 1024);
    let mut c = NodeClient::connect(server.addr, server.bundle(), None)
        .await
        .unwrap();
    match c.attest(AttestWith::JoinToken(&huge)).await {
        Err(ClientError::Status(s)) => {
            assert_ne!(s.code(), tonic::Code::PermissionDenied, "{s:?}");
            assert!(!s.message().contains("token"), "read as a token: {s:?}");
        }
        other => panic!("expected a refused stream, got {other:?}"),
    }
    // A token of normal size still attests on a new connection.
    let token = server.token();
    let (_a, id) = agent(&server, AttestWith::JoinToken(&token)).await;
    assert!(id.starts_with("spiffe://example.org/signet/agent/join_token/"));
}

#[tokio::test(flavor = "multi_thread")]
async fn join_token_agents_get_exactly_their_entries() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);

    let token = server.token();
    let (mut a, a_id) = agent(&server, AttestWith::JoinToken(&token)).await;
    // A join token attests once.
    let mut again = NodeClient::connect(server.addr, server.bundle(), None)
        .await
        .unwrap();
    assert!(
        denied(again.attest(AttestWith::JoinToken(&token)).await)
            .contains("unknown or already used")
    );
    let (mut b, b_id) = agent(&server, AttestWith::JoinToken(&server.token())).await;

    let agents = server.json(&["agent", "list"]);
    let ids: Vec<String> = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["spiffe_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&a_id) && ids.contains(&b_id));
    assert!(
        ids.iter()
            .all(|i| i.starts_with("spiffe://example.org/signet/agent/join_token/"))
    );
    assert!(
        ids.iter().all(|i| !i.contains(&token)),
        "the agent ID never reveals the token"
    );

    let e_a = server.entry("spiffe://example.org/a-web", &a_id, "unix:uid:1000", false);
    let e_b = server.entry("spiffe://example.org/b-web", &b_id, "unix:uid:1000", false);

    let mut stream = a.subscribe().await.unwrap();
    assert_eq!(entry_ids(&mut stream).await, ["spiffe://example.org/a-web"]);

    // A change that concerns A is pushed to it.
    server.entry("spiffe://example.org/a-db", &a_id, "unix:uid:1001", false);
    assert_eq!(
        entry_ids(&mut stream).await,
        ["spiffe://example.org/a-db", "spiffe://example.org/a-web"]
    );

    // A can mint its own entry, never B's.
    let svid = a.mint_x509(&e_a).await.unwrap();
    assert_eq!(svid.spiffe_id().as_str(), "spiffe://example.org/a-web");
    assert!(denied(a.mint_x509(&e_b).await).contains("not authorized"));
    let jwt = a
        .grpc()
        .mint_jwt_svid(signet_wire::node::MintJwtSvidRequest {
            entry_id: e_b.clone(),
            audience: vec!["x".into()],
        })
        .await;
    assert_eq!(jwt.unwrap_err().code(), tonic::Code::PermissionDenied);
    assert!(denied(b.mint_x509(&e_a).await).contains("not authorized"));

    // Evicted: the old SVID is refused everywhere and the stream ends.
    server.admin(&["agent", "evict", "--spiffe-id", &a_id]);
    let end = tokio::time::timeout(DEADLINE, async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(s) => return Some(s),
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(end.map(|s| s.code()), Some(tonic::Code::PermissionDenied));
    assert!(denied(a.mint_x509(&e_a).await).contains("not attested"));

    // Banned: refused for good.
    server.admin(&["agent", "ban", "--spiffe-id", &b_id]);
    assert!(denied(b.mint_x509(&e_b).await).contains("banned"));
    assert!(denied(b.subscribe().await).contains("banned"));
}

fn node_ca(dir: &Path) -> TestCa {
    let ca = TestCa::new("node CA");
    ca.write(dir, "nodeca");
    ca
}

#[tokio::test(flavor = "multi_thread")]
async fn x509pop_agents_reattest_and_receive_node_alias_entries() {
    let dir = tempfile::tempdir().unwrap();
    let ca = node_ca(dir.path());
    let ca_path = dir.path().join("nodeca.pem").display().to_string();
    let server = TestServer::start(dir.path(), &["--x509pop-ca-bundle", &ca_path]);

    let node_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["node-1.example.org".to_string()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, "node-1");
    let node_cert = p.signed_by(&node_key, ca.issuer()).unwrap().der().to_vec();

    let with = || AttestWith::X509Pop {
        chain: vec![node_cert.clone()],
        key: &node_key,
    };
    let mut first = NodeClient::connect(server.addr, server.bundle(), None)
        .await
        .unwrap();
    let attested = first.attest(with()).await.unwrap();
    assert!(attested.can_reattest);
    let agent_id = attested.svid.spiffe_id().to_string();
    assert!(
        agent_id.starts_with("spiffe://example.org/signet/agent/x509pop/"),
        "{agent_id}"
    );
    let shown = server.json(&["agent", "show", "--spiffe-id", &agent_id]);
    assert!(
        shown["selectors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s == "x509pop:subject:cn:node-1"),
        "{shown}"
    );

    // A node-alias entry for every node with CN node-1, and a workload under it.
    server.entry(
        "spiffe://example.org/cluster/a",
        "spiffe://example.org/signet/server",
        "x509pop:subject:cn:node-1",
        true,
    );
    server.entry(
        "spiffe://example.org/cluster/a/web",
        "spiffe://example.org/cluster/a",
        "unix:uid:1000",
        false,
    );
    server.entry(
        "spiffe://example.org/elsewhere",
        "spiffe://example.org/cluster/b",
        "unix:uid:1000",
        false,
    );
    // Invariant 1, end to end: an alias with two selectors of which the
    // node has one, an expired alias the node matches, and an expired
    // workload entry of the node itself grant nothing.
    server.json(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/cluster/c",
        "--parent-id",
        "spiffe://example.org/signet/server",
        "--selector",
        "x509pop:subject:cn:node-1",
        "--selector",
        "x509pop:subject:cn:node-2",
        "--node",
    ]);
    let under_c = server.entry(
        "spiffe://example.org/cluster/c/web",
        "spiffe://example.org/cluster/c",
        "unix:uid:1000",
        false,
    );
    let past = "1000000000";
    server.json(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/cluster/d",
        "--parent-id",
        "spiffe://example.org/signet/server",
        "--selector",
        "x509pop:subject:cn:node-1",
        "--node",
        "--expires-at",
        past,
    ]);
    server.entry(
        "spiffe://example.org/cluster/d/web",
        "spiffe://example.org/cluster/d",
        "unix:uid:1000",
        false,
    );
    server.json(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/expired-own",
        "--parent-id",
        &agent_id,
        "--selector",
        "unix:uid:1000",
        "--expires-at",
        past,
    ]);
    let mut agent = NodeClient::connect(server.addr, attested.bundle.clone(), Some(&attested.svid))
        .await
        .unwrap();
    let mut stream = agent.subscribe().await.unwrap();
    assert_eq!(
        entry_ids(&mut stream).await,
        ["spiffe://example.org/cluster/a/web"]
    );
    // Nor can the agent have it minted by naming its entry id.
    assert!(denied(agent.mint_x509(&under_c).await).contains("not authorized"));

    // x509pop may attest again after eviction; a ban stops it.
    server.admin(&["agent", "evict", "--spiffe-id", &agent_id]);
    let mut again = NodeClient::connect(server.addr, server.bundle(), None)
        .await
        .unwrap();
    assert_eq!(
        again
            .attest(with())
            .await
            .unwrap()
            .svid
            .spiffe_id()
            .to_string(),
        agent_id
    );
    // The SVID from before the eviction (same agent ID, old serial) stays refused.
    let mut stale = NodeClient::connect(server.addr, attested.bundle.clone(), Some(&attested.svid))
        .await
        .unwrap();
    assert!(denied(stale.subscribe().await).contains("no longer current"));
    server.admin(&["agent", "ban", "--spiffe-id", &agent_id]);
    let mut banned = NodeClient::connect(server.addr, server.bundle(), None)
        .await
        .unwrap();
    assert!(denied(banned.attest(with()).await).contains("banned"));

    // Without the node key there is no attestation, even with the certificate.
    let thief = KeyPair::generate().unwrap();
    let mut c = NodeClient::connect(server.addr, server.bundle(), None)
        .await
        .unwrap();
    assert!(
        c.attest(AttestWith::X509Pop {
            chain: vec![node_cert.clone()],
            key: &thief
        })
        .await
        .is_err()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_server_keeps_entries_agents_and_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(dir.path(), &[]);
    let mut c = NodeClient::connect(server.addr, server.bundle(), None)
        .await
        .unwrap();
    let a = c
        .attest(AttestWith::JoinToken(&server.token()))
        .await
        .unwrap();
    let agent_id = a.svid.spiffe_id().to_string();
    let entry = server.entry("spiffe://example.org/kept", &agent_id, "unix:uid:7", false);
    let bundle = server.bundle();
    assert!(server.proc.signal_and_wait("TERM").success());

    let server = TestServer::start(dir.path(), &[]);
    assert_eq!(server.bundle(), bundle, "same CA after restart");
    // The agent's SVID from before the restart is still accepted.
    let mut agent = NodeClient::connect(server.addr, a.bundle.clone(), Some(&a.svid))
        .await
        .unwrap();
    let svid = agent.mint_x509(&entry).await.unwrap();
    assert_eq!(svid.spiffe_id().as_str(), "spiffe://example.org/kept");
}

#[test]
fn a_corrupt_datastore_stops_the_server_and_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let db = data.join("datastore.sqlite3");
    std::fs::write(&db, b"this is not a database, and it must survive").unwrap();
    let out = run(&[
        "server",
        "--data-dir",
        data.to_str().unwrap(),
        "--admin-socket",
        dir.path().join("a.sock").to_str().unwrap(),
        "--bind-address",
        "127.0.0.1:0",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("datastore"), "{err}");
    assert_eq!(
        std::fs::read(&db).unwrap(),
        b"this is not a database, and it must survive"
    );
}

/// A subscription opened with an SVID the agent has since renewed ends:
/// whoever holds the old SVID and key stops hearing about entries.
#[tokio::test(flavor = "multi_thread")]
async fn a_subscription_ends_when_its_svid_is_renewed() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let (mut old, _) = agent(&server, AttestWith::JoinToken(&server.token())).await;
    let mut stream = old.subscribe_deltas(0, []).await.unwrap();
    next_push(&mut stream).await;
    old.renew().await.unwrap();
    let ended = tokio::time::timeout(DEADLINE, async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the old subscription ends");
    match ended {
        Err(s) => {
            assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");
            assert!(s.message().contains("no longer current"), "{s:?}");
        }
        Ok(_) => panic!("the stream ended without saying why"),
    }
}

/// Renewals in flight race a ban or an eviction: the ban or eviction
/// always stands (SECURITY.md invariant 7). Each round attests an agent,
/// then fires eight renewals over eight connections presenting the same
/// SVID at the moment the admin API bans or evicts it.
#[tokio::test(flavor = "multi_thread")]
async fn renewals_in_flight_never_undo_a_ban_or_an_eviction() {
    use signet_wire::admin::{AgentRequest, CreateJoinTokenRequest, ListAgentsRequest};
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let mut admin = signet_server::admin::connect_admin(server.admin.clone().into())
        .await
        .unwrap();
    let bundle = server.bundle();
    let mut renewals = 0;
    for round in 0..150 {
        let token = admin
            .create_join_token(CreateJoinTokenRequest::default())
            .await
            .unwrap()
            .into_inner()
            .token;
        let mut first = NodeClient::connect(server.addr, bundle.clone(), None)
            .await
            .unwrap();
        let a = first.attest(AttestWith::JoinToken(&token)).await.unwrap();
        let id = a.svid.spiffe_id().to_string();
        let mut clients = Vec::new();
        for _ in 0..8 {
            clients.push(
                NodeClient::connect(server.addr, a.bundle.clone(), Some(&a.svid))
                    .await
                    .unwrap(),
            );
        }
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(clients.len() + 1));
        let mut tasks = Vec::new();
        for mut c in clients {
            let barrier = barrier.clone();
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                c.renew().await.is_ok()
            }));
        }
        let ban = round % 2 == 0;
        barrier.wait().await;
        let request = AgentRequest {
            spiffe_id: id.clone(),
        };
        if ban {
            admin.ban_agent(request).await.unwrap();
        } else {
            admin.evict_agent(request).await.unwrap();
        }
        for t in tasks {
            renewals += usize::from(t.await.unwrap());
        }
        let agents = admin
            .list_agents(ListAgentsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .agents;
        let after = agents.iter().find(|n| n.spiffe_id == id);
        if ban {
            assert!(
                after.is_some_and(|n| n.banned),
                "round {round}: the ban was undone: {after:?}"
            );
        } else {
            assert!(
                after.is_none(),
                "round {round}: the eviction was undone: {after:?}"
            );
        }
    }
    // The race was real: renewals got through before the ban or eviction.
    assert!(renewals > 0, "no renewal succeeded in any round");
}

#[test]
fn a_standalone_server_says_what_a_parent_is_and_why_a_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    // No local agent to default to: the error says what a parent is.
    let out = run(&[
        "entry",
        "create",
        "--admin-socket",
        &server.admin,
        "--spiffe-id",
        "spiffe://example.org/web",
        "--selector",
        "unix:uid:1",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("parent_id is required") && err.contains("signet agent list"),
        "{err}"
    );
    // A join token nobody issued: the agent says so, and stops.
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(&bundle, server.admin(&["bundle", "show"])).unwrap();
    let mut agent = signet()
        .args([
            "agent",
            "--server-address",
            &server.addr.to_string(),
            "--trust-bundle",
        ])
        .arg(&bundle)
        .args(["--join-token", "not-a-token", "--data-dir"])
        .arg(dir.path().join("agent"))
        .arg("--agent-socket")
        .arg(dir.path().join("agent.sock"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = eventually("the refused agent to exit", || agent.try_wait().unwrap());
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut agent.stderr.take().unwrap(), &mut err).unwrap();
    assert!(
        err.contains("the server refused this agent")
            && err.contains("join token is unknown or already used")
            && !err.contains("banned"),
        "{err}"
    );
}

/// The node API takes an agent's SVID under any ID a join token may give
/// (inside or outside Signet's agent path), so it must tell agents from
/// workloads by the node record: a workload's X509-SVID, even one minted
/// for an attested agent's own ID, is refused on every call.
#[tokio::test(flavor = "multi_thread")]
async fn a_workload_svid_cannot_act_as_an_agent() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let custom = "spiffe://example.org/node/web-1";
    let token = server.json(&["token", "generate", "--spiffe-id", custom])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (mut agent_client, id) = agent(&server, AttestWith::JoinToken(&token)).await;
    assert_eq!(id, custom);
    agent_client
        .subscribe()
        .await
        .expect("the agent itself is served");

    for (name, as_id) in [("web", "spiffe://example.org/web"), ("twin", custom)] {
        let out = dir.path().join(name);
        std::fs::create_dir_all(&out).unwrap();
        server.admin(&[
            "x509",
            "mint",
            "--spiffe-id",
            as_id,
            "--write",
            out.to_str().unwrap(),
        ]);
        let svid = signet_identity::X509Svid::from_pem(
            &std::fs::read(out.join("svid.pem")).unwrap(),
            &std::fs::read(out.join("svid_key.pem")).unwrap(),
        )
        .unwrap();
        let mut c = NodeClient::connect(server.addr, server.bundle(), Some(&svid))
            .await
            .unwrap();
        let why = denied(c.subscribe().await.map(|_| ()));
        let want = if name == "web" {
            "is not attested"
        } else {
            "no longer current"
        };
        assert!(why.contains(want), "{as_id}: {why}");
    }
}
