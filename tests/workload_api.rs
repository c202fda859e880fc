//! End-to-end: the Workload API of real `signet` processes, driven by the
//! published Rust `spiffe` crate unchanged (interoperability), by our own
//! generated client (protocol rules), and across server and agent outages.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use spiffe::{TrustDomain, WorkloadApiClient, X509Source};

fn create(c: &Combined, spiffe_id: &str, extra: &[&str]) {
    let sel = format!("unix:uid:{}", uid());
    let mut args = vec![
        "entry",
        "create",
        "--spiffe-id",
        spiffe_id,
        "--selector",
        &sel,
    ];
    args.extend(extra);
    let out = c.admin(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until the agent serves an SVID to this process.
fn wait_served(c: &Combined) {
    eventually("an SVID", || {
        c.api(&["fetch", "x509"]).status.success().then_some(())
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rust_spiffe_crate_works_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let c = Combined::start(dir.path(), &[]);
    create(&c, "spiffe://example.org/interop", &[]);
    wait_served(&c);
    let endpoint = format!("unix://{}", c.agent);

    let client = WorkloadApiClient::connect_to(&endpoint).await.unwrap();
    let svid = client.fetch_x509_svid().await.unwrap();
    assert_eq!(svid.spiffe_id().to_string(), "spiffe://example.org/interop");
    let bundles = client.fetch_x509_bundles().await.unwrap();
    let td = TrustDomain::new("example.org").unwrap();
    assert!(bundles.get(&td).is_some(), "own bundle present");

    let jwt = client.fetch_jwt_svid(["db"], None).await.unwrap();
    assert_eq!(jwt.spiffe_id().to_string(), "spiffe://example.org/interop");
    assert_eq!(jwt.audience(), ["db"]);
    let validated = client.validate_jwt_token("db", jwt.token()).await.unwrap();
    assert_eq!(
        validated.spiffe_id().to_string(),
        "spiffe://example.org/interop"
    );
    assert!(
        client
            .validate_jwt_token("other", jwt.token())
            .await
            .is_err()
    );
    let jwt_bundles = client.fetch_jwt_bundles().await.unwrap();
    assert!(jwt_bundles.get(&td).is_some(), "JWT bundle present");

    // The streaming X509Source of the crate.
    let source = X509Source::builder()
        .endpoint(&endpoint)
        .build()
        .await
        .unwrap();
    assert_eq!(
        source.svid().unwrap().spiffe_id().to_string(),
        "spiffe://example.org/interop"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn protocol_rules_header_and_permission() {
    use signet_wire::workload::*;
    let dir = tempfile::tempdir().unwrap();
    let c = Combined::start(dir.path(), &[]);
    let mut client = signet_workload::connect(c.agent.clone().into())
        .await
        .unwrap();

    // No security header: InvalidArgument, whatever the caller is.
    let err = client
        .fetch_jwtsvid(JwtsvidRequest {
            audience: vec!["a".into()],
            spiffe_id: String::new(),
        })
        .await;
    assert_eq!(err.unwrap_err().code(), tonic::Code::InvalidArgument);
    let err = client.fetch_x509svid(X509svidRequest {}).await;
    assert_eq!(err.unwrap_err().code(), tonic::Code::InvalidArgument);

    let with_header = |msg| {
        let mut r = tonic::Request::new(msg);
        r.metadata_mut().insert(
            "workload.spiffe.io",
            tonic::metadata::MetadataValue::from_static("true"),
        );
        r
    };
    // With the header but no matching entry: PermissionDenied.
    let err = client.fetch_x509svid(with_header(X509svidRequest {})).await;
    assert_eq!(err.unwrap_err().code(), tonic::Code::PermissionDenied);
    create(&c, "spiffe://example.org/rules", &[]);
    wait_served(&c);
    // Audience is required for JWT-SVIDs.
    let mut req = tonic::Request::new(JwtsvidRequest {
        audience: vec![],
        spiffe_id: String::new(),
    });
    req.metadata_mut().insert(
        "workload.spiffe.io",
        tonic::metadata::MetadataValue::from_static("true"),
    );
    assert_eq!(
        client.fetch_jwtsvid(req).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
    // Audiences are bounded in count and size (each would be signed and
    // cached by the agent).
    use signet_agent::workload_api::{MAX_AUDIENCE_LEN, MAX_AUDIENCES};
    for audience in [
        (0..=MAX_AUDIENCES).map(|i| format!("aud-{i}")).collect(),
        vec!["x".repeat(MAX_AUDIENCE_LEN + 1)],
        vec!["x".repeat(1 << 20)],
    ] {
        let err = client
            .fetch_jwtsvid(signet_workload::with_header(JwtsvidRequest {
                audience,
                spiffe_id: String::new(),
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains("at most"), "{err:?}");
    }
    let ok = client
        .fetch_jwtsvid(signet_workload::with_header(JwtsvidRequest {
            audience: (0..MAX_AUDIENCES).map(|i| format!("aud-{i}")).collect(),
            spiffe_id: String::new(),
        }))
        .await;
    assert!(ok.is_ok(), "{ok:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rotation_reaches_an_open_stream_before_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let c = Combined::start(dir.path(), &["--x509-svid-ttl", "8s"]);
    create(&c, "spiffe://example.org/short", &[]);
    wait_served(&c);
    let client = WorkloadApiClient::connect_to(format!("unix://{}", c.agent))
        .await
        .unwrap();
    let mut stream = client.stream_x509_svids().await.unwrap();
    use tokio_stream::StreamExt;
    let first = tokio::time::timeout(DEADLINE, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let first_leaf = first.cert_chain()[0].as_ref().to_vec();
    let first_info = signet_identity::x509_svid::inspect_leaf(&first_leaf).unwrap();
    let next = tokio::time::timeout(DEADLINE, async {
        loop {
            let svid = stream.next().await.unwrap().unwrap();
            let leaf = svid.cert_chain()[0].as_ref().to_vec();
            if leaf != first_leaf {
                return leaf;
            }
        }
    })
    .await
    .expect("a rotated SVID on the open stream");
    let next_info = signet_identity::x509_svid::inspect_leaf(&next).unwrap();
    assert_ne!(next_info.serial, first_info.serial);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        now < first_info.not_after,
        "the new SVID arrived before the old one expired"
    );
    assert!(next_info.not_after > first_info.not_after);
}

struct Split {
    server: Proc,
    agent: Proc,
    admin: String,
    agent_sock: String,
    addr: String,
}

fn start_server(dir: &std::path::Path, port: &str) -> (Proc, String) {
    start_server_with(dir, port, &[])
}

fn start_server_with(dir: &std::path::Path, port: &str, extra: &[&str]) -> (Proc, String) {
    let (proc, _, addr) = common::start_server(dir, &format!("127.0.0.1:{port}"), extra);
    (proc, addr.to_string())
}

fn start_agent(dir: &std::path::Path, addr: &str, token: Option<&str>) -> Proc {
    let sock = dir.join("agent.sock").display().to_string();
    let mut cmd = signet();
    cmd.args(["agent", "--server-address", addr, "--trust-bundle"])
        .arg(dir.join("bundle.pem"))
        .arg("--data-dir")
        .arg(dir.join("agent"))
        .args(["--socket-path", &sock]);
    cmd.args(["--join-token", token.unwrap_or("already-attested")]);
    let mut proc = Proc::spawn("signet-agent", cmd, dir);
    proc.wait_for("Press Ctrl-C");
    proc
}

impl Split {
    fn start(dir: &std::path::Path) -> Split {
        let (server, addr) = start_server(dir, "0");
        let admin = dir.join("admin.sock").display().to_string();
        let pem = ok(&["bundle", "show", "--socket", &admin]);
        std::fs::write(dir.join("bundle.pem"), pem).unwrap();
        let token: serde_json::Value = serde_json::from_str(&ok(&[
            "token", "generate", "--socket", &admin, "--output", "json",
        ]))
        .unwrap();
        let agent = start_agent(dir, &addr, token["token"].as_str());
        let agent_sock = dir.join("agent.sock").display().to_string();
        Split {
            server,
            agent,
            admin,
            agent_sock,
            addr,
        }
    }

    fn fetch(&self) -> std::process::Output {
        run(&["api", "fetch", "x509", "--socket", &self.agent_sock])
    }
}

#[test]
fn an_agent_outlives_its_server_and_resumes_without_reattesting() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Split::start(dir.path());
    let agents: serde_json::Value = serde_json::from_str(&ok(&[
        "agent", "list", "--socket", &s.admin, "--output", "json",
    ]))
    .unwrap();
    let agent_id = agents["agents"][0]["spiffe_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let sel = format!("unix:uid:{}", uid());
    ok(&[
        "entry",
        "create",
        "--socket",
        &s.admin,
        "--spiffe-id",
        "spiffe://example.org/w",
        "--parent-id",
        &agent_id,
        "--selector",
        &sel,
    ]);
    eventually("the SVID via the agent", || {
        s.fetch().status.success().then_some(())
    });

    // The server goes away: the workload is still served from the cache.
    assert!(s.server.signal_and_wait("KILL").code().is_none());
    let out = s.fetch();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("spiffe://example.org/w"));

    // The server returns on the same address; the agent reconnects and
    // sees new entries.
    let port = s.addr.rsplit(':').next().unwrap().to_owned();
    let (server, _) = start_server(dir.path(), &port);
    s.server = server;
    ok(&[
        "entry",
        "create",
        "--socket",
        &s.admin,
        "--spiffe-id",
        "spiffe://example.org/w2",
        "--parent-id",
        &agent_id,
        "--selector",
        &sel,
    ]);
    eventually("the new entry after reconnecting", || {
        let out = s.fetch();
        String::from_utf8_lossy(&out.stdout)
            .contains("spiffe://example.org/w2")
            .then_some(())
    });

    // The agent restarts: same agent ID, no re-attestation (its one-use
    // token is spent, so attesting again would fail).
    assert!(s.agent.signal_and_wait("TERM").success());
    s.agent = start_agent(dir.path(), &s.addr, None);
    eventually("the SVID after the agent restart", || {
        s.fetch().status.success().then_some(())
    });
    let agents: serde_json::Value = serde_json::from_str(&ok(&[
        "agent", "list", "--socket", &s.admin, "--output", "json",
    ]))
    .unwrap();
    assert_eq!(agents["agents"].as_array().unwrap().len(), 1);
    assert_eq!(agents["agents"][0]["spiffe_id"], agent_id.as_str());
    ok(&["healthcheck", "--agent", "--agent-socket", &s.agent_sock]);

    // Banned: the agent stops serving identities it can no longer vouch
    // for, and its health check says so.
    ok(&[
        "agent",
        "ban",
        "--socket",
        &s.admin,
        "--spiffe-id",
        &agent_id,
    ]);
    let err = eventually("the agent to report itself unhealthy", || {
        let out = run(&["healthcheck", "--agent", "--agent-socket", &s.agent_sock]);
        (!out.status.success()).then(|| String::from_utf8(out.stderr).unwrap())
    });
    assert!(err.contains("cannot vouch"), "{err}");
    assert!(!s.fetch().status.success(), "no SVID is served any more");
}

#[test]
fn an_agent_can_bootstrap_insecurely_for_development_only() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, addr) = start_server(dir.path(), "0");
    let admin = dir.path().join("admin.sock").display().to_string();
    let token: serde_json::Value = serde_json::from_str(&ok(&[
        "token", "generate", "--socket", &admin, "--output", "json",
    ]))
    .unwrap();
    // Without a trust bundle and without the flag: refused, naming the way out.
    let out = run(&[
        "agent",
        "--server-address",
        &addr,
        "--join-token",
        "x",
        "--check-config",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("insecure_bootstrap"));

    let sock = dir.path().join("agent.sock").display().to_string();
    let mut cmd = signet();
    cmd.args([
        "agent",
        "--insecure-bootstrap",
        "--server-address",
        &addr,
        "--join-token",
    ])
    .arg(token["token"].as_str().unwrap())
    .arg("--data-dir")
    .arg(dir.path().join("agent"))
    .args(["--socket-path", &sock]);
    let mut agent = Proc::spawn("signet-agent", cmd, dir.path());
    agent.wait_for("Press Ctrl-C");
    assert!(
        agent.log_text().contains("NOT verified"),
        "the insecure bootstrap is logged loudly"
    );
    let agents: serde_json::Value = serde_json::from_str(&ok(&[
        "agent", "list", "--socket", &admin, "--output", "json",
    ]))
    .unwrap();
    let agent_id = agents["agents"][0]["spiffe_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let sel = format!("unix:uid:{}", uid());
    ok(&[
        "entry",
        "create",
        "--socket",
        &admin,
        "--spiffe-id",
        "spiffe://example.org/dev",
        "--parent-id",
        &agent_id,
        "--selector",
        &sel,
    ]);
    eventually("the SVID", || {
        run(&["api", "fetch", "x509", "--socket", &sock])
            .status
            .success()
            .then_some(())
    });
}

/// `--server-address` by DNS name: `localhost` stands for the server's
/// loopback address (and `::1`, where nothing listens: the agent moves on).
/// A malformed address is refused naming the problem.
#[test]
fn an_agent_finds_its_server_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, addr) = start_server(dir.path(), "0");
    let admin = dir.path().join("admin.sock").display().to_string();
    let pem = ok(&["bundle", "show", "--socket", &admin]);
    std::fs::write(dir.path().join("bundle.pem"), pem).unwrap();
    let token: serde_json::Value = serde_json::from_str(&ok(&[
        "token", "generate", "--socket", &admin, "--output", "json",
    ]))
    .unwrap();
    let by_name = addr.replace("127.0.0.1", "localhost");
    let _agent = start_agent(dir.path(), &by_name, token["token"].as_str());
    let agents: serde_json::Value = serde_json::from_str(&ok(&[
        "agent", "list", "--socket", &admin, "--output", "json",
    ]))
    .unwrap();
    assert_eq!(
        agents["agents"].as_array().map(Vec::len),
        Some(1),
        "{agents}"
    );

    let out = run(&[
        "agent",
        "--server-address",
        "signet_server:8081",
        "--join-token",
        "x",
        "--insecure-bootstrap",
        "--check-config",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("server_address \"signet_server:8081\": \"signet_server\" is neither an IP address nor a DNS name"),
        "{err}"
    );
}

/// Node hygiene: an agent that stopped renewing shows as expired, is
/// counted and filtered, and `agent purge` evicts it (a dry run first
/// evicts nothing); a live agent stays. Both agents have IDs a join token
/// gave them outside Signet's agent path, as the README shows.
#[test]
fn silent_agents_are_listed_counted_and_purged() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, addr) = start_server_with(dir.path(), "0", &["--agent-svid-ttl", "4s"]);
    let admin = dir.path().join("admin.sock").display().to_string();
    let pem = ok(&["bundle", "show", "--socket", &admin]);
    std::fs::write(dir.path().join("bundle.pem"), pem).unwrap();
    let token = |id: &str| {
        let t: serde_json::Value = serde_json::from_str(&ok(&[
            "token",
            "generate",
            "--socket",
            &admin,
            "--spiffe-id",
            id,
            "--output",
            "json",
        ]))
        .unwrap();
        t["token"].as_str().unwrap().to_owned()
    };
    let gone_dir = dir.path().join("gone");
    std::fs::create_dir_all(&gone_dir).unwrap();
    std::fs::copy(dir.path().join("bundle.pem"), gone_dir.join("bundle.pem")).unwrap();
    let mut gone = start_agent(
        &gone_dir,
        &addr,
        Some(&token("spiffe://example.org/node/gone")),
    );
    let _live = start_agent(
        dir.path(),
        &addr,
        Some(&token("spiffe://example.org/node/live")),
    );
    let count = |extra: &[&str]| {
        let mut args = vec!["agent", "count", "--socket", &admin, "--output", "json"];
        args.extend(extra);
        let v: serde_json::Value = serde_json::from_str(&ok(&args)).unwrap();
        v["count"].as_u64().unwrap()
    };
    assert_eq!(count(&[]), 2);
    assert_eq!(count(&["--attestation-type", "join_token"]), 2);
    assert_eq!(count(&["--attestation-type", "x509pop"]), 0);
    gone.signal_and_wait("TERM");
    eventually("the stopped agent's SVID to expire", || {
        (count(&["--expired"]) == 1).then_some(())
    });
    let list: serde_json::Value = serde_json::from_str(&ok(&[
        "agent",
        "list",
        "--expired",
        "--socket",
        &admin,
        "--output",
        "json",
    ]))
    .unwrap();
    assert_eq!(
        list["agents"][0]["spiffe_id"],
        "spiffe://example.org/node/gone"
    );

    let purge = |extra: &[&str]| {
        let mut args = vec![
            "agent",
            "purge",
            "--expired-for",
            "0s",
            "--socket",
            &admin,
            "--output",
            "json",
        ];
        args.extend(extra);
        serde_json::from_str::<serde_json::Value>(&ok(&args)).unwrap()
    };
    let dry = purge(&["--dry-run"]);
    assert_eq!(
        dry["purged"],
        serde_json::json!(["spiffe://example.org/node/gone"])
    );
    assert_eq!(count(&[]), 2, "a dry run evicts nothing");
    // Not silent long enough yet for a day's grace.
    let none: serde_json::Value = serde_json::from_str(&ok(&[
        "agent", "purge", "--socket", &admin, "--output", "json",
    ]))
    .unwrap();
    assert_eq!(none["purged"], serde_json::json!([]));
    purge(&[]);
    assert_eq!(count(&[]), 1);
    assert_eq!(count(&["--expired"]), 0);
}

/// With `--purge-expired-agents-after`, the server removes an agent that
/// stopped renewing on its own; a banned agent, silent just as long, stays
/// banned (its record is the ban), and a live one stays.
#[test]
fn the_server_purges_silent_agents_but_keeps_bans() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, addr) = start_server_with(
        dir.path(),
        "0",
        &[
            "--agent-svid-ttl",
            "4s",
            "--purge-expired-agents-after",
            "1s",
        ],
    );
    let admin = dir.path().join("admin.sock").display().to_string();
    let pem = ok(&["bundle", "show", "--socket", &admin]);
    let agent = |name: &str| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("bundle.pem"), &pem).unwrap();
        let t = json_stdout(&run(&[
            "token",
            "generate",
            "--socket",
            &admin,
            "--spiffe-id",
            &format!("spiffe://example.org/node/{name}"),
            "--output",
            "json",
        ]));
        start_agent(&d, &addr, t["token"].as_str())
    };
    let mut gone = agent("gone");
    let mut banned = agent("banned");
    let _live = agent("live");
    let ids = || {
        let v = json_stdout(&run(&[
            "agent", "list", "--socket", &admin, "--output", "json",
        ]));
        let mut ids: Vec<String> = v["agents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["spiffe_id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(ids().len(), 3);
    ok(&[
        "agent",
        "ban",
        "--spiffe-id",
        "spiffe://example.org/node/banned",
        "--socket",
        &admin,
    ]);
    gone.signal_and_wait("TERM");
    banned.signal_and_wait("TERM");
    eventually("the silent agent to be purged", || {
        (ids()
            == [
                "spiffe://example.org/node/banned",
                "spiffe://example.org/node/live",
            ])
        .then_some(())
    });
    // `agent purge` by hand keeps the ban too.
    let purged = json_stdout(&run(&[
        "agent",
        "purge",
        "--expired-for",
        "0s",
        "--socket",
        &admin,
        "--output",
        "json",
    ]));
    assert_eq!(purged["purged"], serde_json::json!([]));
    let banned_now = json_stdout(&run(&[
        "agent",
        "show",
        "--spiffe-id",
        "spiffe://example.org/node/banned",
        "--socket",
        &admin,
        "--output",
        "json",
    ]));
    assert_eq!(banned_now["banned"], true, "{banned_now}");
}
