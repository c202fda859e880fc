//! Nested servers, end to end with real processes: a root `signet run`;
//! a downstream `signet server --upstream signet` beside the root's agent,
//! whose entry has the downstream flag; an agent attested to the
//! downstream; a workload of that agent. The workload's X509-SVID chains
//! through the downstream's intermediate to the root's CA (`openssl
//! verify` with the root's bundle alone); its JWT-SVID validates at the
//! root's agent. The root is killed for longer than an SVID's life: the
//! downstream's workloads keep rotating and the downstream says it cannot
//! reach its upstream; the root back, new intermediates flow. An entry
//! without the flag gets no CA.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use signet_identity::x509_svid::{authority_id, issuer_authority_id};

const DOWNSTREAM: &str = "spiffe://example.org/downstream/dc2";
const WEB: &str = "spiffe://example.org/dc2/web";
const DC2_AGENT: &str = "spiffe://example.org/dc2/agent";

/// The downstream server's command line.
fn downstream_args<'a>(root_addr: &'a str, root_agent: &'a str) -> Vec<&'a str> {
    vec![
        "--upstream",
        "signet",
        "--upstream-server-address",
        root_addr,
        "--upstream-workload-socket",
        root_agent,
        "--ca-ttl",
        "90s",
        "--x509-svid-ttl",
        "10s",
        "--health-listen",
        "127.0.0.1:0",
    ]
}

/// The workload's X509-SVID from the downstream's agent, written to
/// `out` and checked by openssl against the root's bundle alone; returns
/// (its serial, the id of the intermediate that signed it, that
/// intermediate's issuer).
fn verified(agent: &str, out: &Path, root_bundle: &Path) -> (String, String, String) {
    std::fs::create_dir_all(out).unwrap();
    let dir = out.to_str().unwrap();
    ok(&[
        "api",
        "fetch",
        "x509",
        "--write",
        dir,
        "--agent-socket",
        agent,
    ]);
    openssl_verifies(out, root_bundle);
    let pem = std::fs::read(out.join("svid.pem")).unwrap();
    let chain = signet_identity::bundle::certificates_from_pem(&pem).unwrap();
    assert_eq!(chain.len(), 2, "the SVID and the downstream's intermediate");
    let serial = x509_parser::parse_x509_certificate(&chain[0])
        .unwrap()
        .1
        .raw_serial_as_string();
    (
        serial,
        authority_id(&chain[1]).unwrap(),
        issuer_authority_id(&chain[1]).unwrap(),
    )
}

/// Every downstream call, made with the X509-SVID written in `svid_dir`
/// (`api fetch x509 --write`), is refused with PermissionDenied: a
/// workload without the flag can neither get a CA nor slip a JWT key into
/// the root's bundle nor read it this way.
fn refused_as(root_addr: &str, svid_dir: &Path) {
    use rcgen::PublicKeyData;
    use signet_wire::downstream::downstream_client::DownstreamClient;
    use signet_wire::downstream::{FetchBundleRequest, MintX509CaRequest, PublishJwtKeyRequest};
    let read = |name: &str| std::fs::read(svid_dir.join(name)).unwrap();
    let svid =
        signet_identity::X509Svid::from_pem(&read("svid.pem"), &read("svid_key.pem")).unwrap();
    let td = signet_identity::TrustDomain::parse("example.org").unwrap();
    let mut bundles = signet_identity::BundleSet::new();
    bundles.insert(signet_identity::Bundle::from_x509_pem(td, &read("bundle.pem")).unwrap());
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .der()
        .to_vec();
    let addr = root_addr.parse().unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let channel = signet_agent::node_client::server_channel(addr, bundles, &svid)
            .await
            .unwrap();
        let mut client = DownstreamClient::new(channel);
        let denied = |r: Result<_, tonic::Status>, call: &str| {
            let e = r.err().unwrap_or_else(|| panic!("{call} was allowed"));
            assert_eq!(e.code(), tonic::Code::PermissionDenied, "{call}: {e:?}");
            assert!(e.message().contains("downstream flag"), "{call}: {e:?}");
        };
        denied(
            client
                .mint_x509_ca(MintX509CaRequest {
                    csr,
                    ttl_seconds: 3600,
                })
                .await
                .map(|_| ()),
            "MintX509Ca",
        );
        denied(
            client
                .publish_jwt_key(PublishJwtKeyRequest {
                    kid: "forged".into(),
                    public_key: key.subject_public_key_info(),
                    expires_at: i64::MAX,
                })
                .await
                .map(|_| ()),
            "PublishJwtKey",
        );
        denied(
            client.fetch_bundle(FetchBundleRequest {}).await.map(|_| ()),
            "FetchBundle",
        );
    });
}

fn start_agent(dir: &Path, addr: &str, token: &str) -> Proc {
    let sock = dir.join("dc2-agent.sock").display().to_string();
    let mut cmd = signet();
    cmd.args(["agent", "--server-address", addr, "--trust-bundle"])
        .arg(dir.join("dc2-bundle.pem"))
        .arg("--data-dir")
        .arg(dir.join("dc2-agent"))
        .args(["--socket-path", &sock, "--join-token", token]);
    let mut proc = Proc::spawn("dc2-agent", cmd, dir);
    proc.wait_for("Press Ctrl-C");
    proc
}

#[test]
fn a_nested_server_chains_to_the_root_and_outlives_its_outages() {
    let dir = tempfile::tempdir().unwrap();
    let root_dir = dir.path().join("root");
    std::fs::create_dir(&root_dir).unwrap();
    let mut root = Combined::start(&root_dir, &[]);
    let root_addr = agent_api_addr(&root.proc.seen.join("\n")).to_string();
    let root_bundle = root_dir.join("root-bundle.pem");
    std::fs::write(
        &root_bundle,
        ok(&["bundle", "show", "--admin-socket", &root.admin]),
    )
    .unwrap();

    // The downstream's identity, first without the flag: no CA for it.
    let entry = json_stdout(&root.admin(&[
        "entry",
        "create",
        "--spiffe-id",
        DOWNSTREAM,
        "--selector",
        &format!("unix:uid:{}", uid()),
        "--output",
        "json",
    ]));
    root.x509_json("the downstream's SVID");
    let plain = dir.path().join("plain-svid");
    std::fs::create_dir(&plain).unwrap();
    root.api(&["fetch", "x509", "--write", plain.to_str().unwrap()]);
    refused_as(&root_addr, &plain);
    let dc2 = dir.path().join("dc2");
    std::fs::create_dir(&dc2).unwrap();
    let args = downstream_args(&root_addr, &root.agent);
    let mut all = vec![
        "server",
        "--data-dir",
        dc2.to_str().unwrap(),
        "--admin-socket",
    ];
    let refused_admin = dc2.join("refused.sock");
    all.push(refused_admin.to_str().unwrap());
    all.extend(&args);
    fails_saying(&all, "may not act as a downstream server");

    // With the flag: the downstream starts, its CA signed by the root's.
    ok(&[
        "entry",
        "update",
        "--id",
        entry["id"].as_str().unwrap(),
        "--downstream",
        "--admin-socket",
        &root.admin,
    ]);
    let (mut ds, ds_admin, ds_addr) = start_server(&dc2, "127.0.0.1:0", &args);
    let health = ds.reported_addr("health");
    std::fs::write(
        dir.path().join("dc2-bundle.pem"),
        ok(&["bundle", "show", "--admin-socket", &ds_admin]),
    )
    .unwrap();
    let token = json_stdout(&run(&[
        "token",
        "generate",
        "--spiffe-id",
        DC2_AGENT,
        "--admin-socket",
        &ds_admin,
        "--output",
        "json",
    ]));
    let _agent = start_agent(
        dir.path(),
        &ds_addr.to_string(),
        token["token"].as_str().unwrap(),
    );
    let agent = dir.path().join("dc2-agent.sock").display().to_string();
    ok(&[
        "entry",
        "create",
        "--spiffe-id",
        WEB,
        "--parent-id",
        DC2_AGENT,
        "--selector",
        &format!("unix:uid:{}", uid()),
        "--admin-socket",
        &ds_admin,
    ]);
    eventually("the workload's SVID from the downstream", || {
        stdout_if_ok(run(&["api", "fetch", "x509", "--agent-socket", &agent]))
    });
    let out = |n: &str| dir.path().join(n);
    let (first_serial, first_int, int_issuer) = verified(&agent, &out("out1"), &root_bundle);
    let root_active = id_in(&authority(&root, "x509", &["show"]), "active");
    assert_eq!(
        int_issuer, root_active,
        "the root's authority signed the intermediate"
    );

    // The JWT-SVID signed by the downstream validates at the root's agent
    // once the downstream's key is published there.
    let jwt = json_stdout(&run(&[
        "api",
        "fetch",
        "jwt",
        "--audience",
        "payments",
        "--agent-socket",
        &agent,
        "--output",
        "json",
    ]))["svids"][0]["token"]
        .as_str()
        .unwrap()
        .to_owned();
    eventually("the JWT-SVID valid at the root", || {
        stdout_if_ok(run(&[
            "api",
            "validate",
            "jwt",
            "--audience",
            "payments",
            "--token",
            &jwt,
            "--agent-socket",
            &root.agent,
        ]))
    });

    // The root goes away for longer than an SVID's life: the workload's
    // SVID keeps rotating; when the next intermediate is due the
    // downstream says it cannot get one.
    root.proc.signal_and_wait("KILL");
    let down_since = Instant::now();
    let mut serials = vec![first_serial];
    eventually_within(
        Duration::from_secs(80),
        "rotation and the outage on /ready",
        || {
            let (serial, _, _) = verified(&agent, &out("out2"), &root_bundle);
            if serials.last() != Some(&serial) {
                serials.push(serial);
            }
            let (code, body) = curl(&format!("http://{health}/ready"));
            let said = code == 200 && body.contains("the upstream CA fails since");
            (said && serials.len() >= 3 && down_since.elapsed() > Duration::from_secs(10))
                .then_some(())
        },
    );

    // The root back (same data dir, same CA): a new intermediate flows and
    // signs the workload's SVIDs.
    let root = Combined::start_bound(&root_dir, &root_addr, &[]);
    let (_, later_int, later_issuer) = eventually_within(
        Duration::from_secs(60),
        "an SVID from a new intermediate",
        || Some(verified(&agent, &out("out3"), &root_bundle)).filter(|v| v.1 != first_int),
    );
    assert_eq!(later_issuer, root_active);
    assert_ne!(later_int, first_int);
    let (_, body) = curl(&format!("http://{health}/ready"));
    assert!(!body.contains("fails since"), "{body}");

    // The flag cleared: the next intermediate is refused at once.
    ok(&[
        "entry",
        "update",
        "--id",
        entry["id"].as_str().unwrap(),
        "--downstream=false",
        "--admin-socket",
        &root.admin,
    ]);
    fails_saying(
        &["authority", "x509", "prepare", "--admin-socket", &ds_admin],
        "may not act as a downstream server",
    );
    drop(root);
    ds.signal_and_wait("TERM");
}
