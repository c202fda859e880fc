//! Federation with real `signet run` processes: the SPIFFE bundle endpoint
//! as clients outside our stack meet it (curl and openssl, both OpenSSL),
//! and two trust domains federated with `signet federation`, their sidecars
//! talking across them through a CA rotation and until a withdrawal.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use common::*;

/// The address after `bundle endpoint https://` in a banner.
fn endpoint_addr(banner: &str) -> String {
    banner
        .lines()
        .find_map(|l| l.trim().strip_prefix("bundle endpoint https://"))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("the banner names no bundle endpoint:\n{banner}"))
        .to_owned()
}

#[test]
fn signet_run_serves_its_bundle_at_a_spiffe_bundle_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let c = Combined::start(
        dir.path(),
        &[
            "--federation-listen",
            "127.0.0.1:0",
            "--federation-refresh-hint",
            "90s",
        ],
    );
    let banner = c.proc.seen.join("\n");
    assert!(
        banner.contains("(SPIFFE federation, https_spiffe: presents example.org's server SVID)"),
        "{banner}"
    );
    let addr = endpoint_addr(&banner);

    // curl, an OpenSSL client: the endpoint's certificate is the server's
    // SVID, which no web root vouches for (-k); the body is the bundle.
    let (code, body) = curl_with(&["-k", &format!("https://{addr}/")]);
    assert_eq!(code, 200, "{body}");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["spiffe_refresh_hint"], 90, "{doc}");
    assert!(doc["spiffe_sequence"].as_u64().unwrap() >= 1, "{doc}");
    let keys = doc["keys"].as_array().unwrap();
    assert!(keys.iter().any(|k| k["use"] == "x509-svid"), "{doc}");
    assert!(keys.iter().any(|k| k["use"] == "jwt-svid"), "{doc}");
    // The same keys `signet bundle show --format spiffe` prints.
    let shown = c.admin(&["bundle", "show", "--format", "spiffe"]);
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["keys"], doc["keys"]);

    // The certificate presented is the server's X509-SVID.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {addr} </dev/null 2>/dev/null | openssl x509 -noout -ext subjectAltName"
        ))
        .output()
        .unwrap();
    let san = String::from_utf8_lossy(&out.stdout);
    assert!(
        san.contains("URI:spiffe://example.org/signet/server"),
        "{san}"
    );

    // Anything but GET is refused.
    let (code, _) = curl_with(&["-k", "-X", "DELETE", &format!("https://{addr}/")]);
    assert_eq!(code, 405);
}

#[test]
fn a_federation_setting_without_its_listen_address_is_refused() {
    let out = run(&[
        "server",
        "--federation-refresh-hint",
        "1m",
        "--check-config",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("need listen (--federation-listen)"), "{err}");
}

/// `signet proxy MODE ARGS` as this test's uid against `agent`, ready.
fn sidecar(
    name: &str,
    mode: &str,
    args: &[&str],
    agent: &str,
    dir: &std::path::Path,
) -> (Proc, u16) {
    let mut all = args.to_vec();
    all.extend(["--agent-socket", agent]);
    start_sidecar(name, signet(), mode, &all, dir)
}

/// `from` federates with `to` (trust domain `td`, endpoint `url`) over
/// https_spiffe, bootstrapped from `to`'s bundle written to `file` (`.json`:
/// SPIFFE JSON, otherwise PEM).
fn federate(from: &Combined, to: &Combined, td: &str, url: &str, file: &std::path::Path) {
    let format = if file.extension().is_some_and(|e| e == "json") {
        "spiffe"
    } else {
        "pem"
    };
    let shown = to.admin(&["bundle", "show", "--format", format]);
    assert!(shown.status.success());
    std::fs::write(file, &shown.stdout).unwrap();
    let id = format!("spiffe://{td}/signet/server");
    let out = from.admin(&[
        "federation",
        "create",
        "--trust-domain",
        td,
        "--bundle-endpoint-url",
        url,
        "--endpoint-spiffe-id",
        &id,
        "--trust-domain-bundle",
        file.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("https_spiffe"));
}

/// This test's uid is the workload `a_id` in `a` and `b_id` in `b`, each
/// federating with the other trust domain.
fn workload_in_each(a: &Combined, a_id: &str, b: &Combined, b_id: &str) {
    for (side, id, other) in [(a, a_id, "partner.test"), (b, b_id, "example.org")] {
        side.entry_for_uid_with(id, uid(), &["--federates-with", other]);
    }
}

/// Two `signet run`s, example.org and partner.test (`b_args` more for
/// the latter), each serving its bundle endpoint with a 2 s refresh hint,
/// federated both ways.
fn federated_pair(
    a_dir: &std::path::Path,
    b_dir: &std::path::Path,
    b_args: &[&str],
) -> (Combined, Combined) {
    federated_pair_with(a_dir, &[], b_dir, b_args)
}

/// [`federated_pair`] with more arguments for example.org too.
fn federated_pair_with(
    a_dir: &std::path::Path,
    a_args: &[&str],
    b_dir: &std::path::Path,
    b_args: &[&str],
) -> (Combined, Combined) {
    let endpoint = [
        "--federation-listen",
        "127.0.0.1:0",
        "--federation-refresh-hint",
        "2s",
    ];
    let mut all = a_args.to_vec();
    all.extend(endpoint);
    let a = Combined::start(a_dir, &all);
    let mut all = vec!["--trust-domain", "partner.test"];
    all.extend(b_args);
    all.extend(endpoint);
    let b = Combined::start(b_dir, &all);
    let a_url = format!("https://{}/", endpoint_addr(&a.proc.seen.join("\n")));
    let b_url = format!("https://{}/", endpoint_addr(&b.proc.seen.join("\n")));
    federate(&a, &b, "partner.test", &b_url, &a_dir.join("partner.json"));
    federate(&b, &a, "example.org", &a_url, &b_dir.join("example.pem"));
    (a, b)
}

/// Two trust domains on one machine, each a `signet run` with its bundle
/// endpoint, federated both ways with `signet federation create`: a
/// sidecar in example.org calls a sidecar in partner.test that allows
/// example.org, over mTLS with SVIDs of both; deleting the relationship
/// withdraws the bundle, and new connections are refused.
#[test]
fn two_trust_domains_federate_and_their_sidecars_talk() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // partner.test's CA lives 24 s: it rotates during the test (the next
    // authority is published 8 s before it signs, more than a tick plus
    // the 2 s refresh hint). Each side bootstraps from the other's
    // bundle as `bundle show` prints it (SPIFFE JSON one way, PEM the other).
    let (a, b) = federated_pair(
        a_dir.path(),
        b_dir.path(),
        &["--ca-ttl", "24s", "--x509-svid-ttl", "4s"],
    );
    let b_url = format!("https://{}/", endpoint_addr(&b.proc.seen.join("\n")));
    let listed = a.admin(&["federation", "list", "--output", "json"]);
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(
        listed["federations"][0]["trust_domain"], "partner.test",
        "{listed}"
    );
    // The same relationship again is refused, by name.
    let again = a.admin(&[
        "federation",
        "create",
        "--trust-domain",
        "partner.test",
        "--bundle-endpoint-url",
        &b_url,
        "--endpoint-spiffe-id",
        "spiffe://partner.test/signet/server",
    ]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    // This test's uid is a workload in each trust domain, federating with
    // the other.
    workload_in_each(
        &a,
        "spiffe://example.org/web",
        &b,
        "spiffe://partner.test/api",
    );
    let (_app, app) = start_app(a_dir.path());
    let (_inbound, inbound) = sidecar(
        "inbound-b",
        "inbound",
        &[
            "--to",
            &format!("127.0.0.1:{app}"),
            "--http",
            "--allow-trust-domain",
            "example.org",
        ],
        &b.agent,
        b_dir.path(),
    );
    let (_outbound, outbound) = sidecar(
        "outbound-a",
        "outbound",
        &[
            "--to",
            &format!("127.0.0.1:{inbound}"),
            "--server-id",
            "spiffe://partner.test/api",
        ],
        &a.agent,
        a_dir.path(),
    );
    let body = eventually("a request across the trust domains", || {
        let (code, body) = curl(&format!("http://127.0.0.1:{outbound}/hello"));
        (code == 200).then_some(body)
    });
    assert!(body.contains("URI=spiffe://example.org/web"), "{body}");
    assert!(body.contains("By=spiffe://partner.test/api"), "{body}");

    // partner.test's CA rotates and its first authority expires; A fetches
    // the new bundle by itself, and requests keep working.
    let x509_keys = |side: &Combined, td: Option<&str>| -> Vec<String> {
        let mut args = vec!["bundle", "show", "--format", "spiffe"];
        if let Some(td) = td {
            args.extend(["--trust-domain", td]);
        }
        let out = side.admin(&args);
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let mut keys: Vec<String> = doc["keys"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|k| k["use"] == "x509-svid")
            .map(|k| k["x5c"][0].as_str().unwrap_or_default().to_owned())
            .collect();
        keys.sort();
        keys
    };
    let first = x509_keys(&b, None);
    eventually_within(
        std::time::Duration::from_secs(90),
        "partner.test's rotated bundle at A, and a request through it",
        || {
            let now = x509_keys(&b, None);
            let rotated = !now.is_empty() && now.iter().all(|k| !first.contains(k));
            let at_a = x509_keys(&a, Some("partner.test"));
            let ok = curl(&format!("http://127.0.0.1:{outbound}/rotated")).0 == 200;
            (rotated && at_a == now && ok).then_some(())
        },
    );

    // partner.test withdraws example.org: its bundle leaves B, and B's
    // sidecar refuses new connections from example.org.
    let out = b.admin(&["federation", "delete", "--trust-domain", "example.org"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let gone = b.admin(&["bundle", "show", "--trust-domain", "example.org"]);
    assert!(!gone.status.success());
    eventually("new connections refused after the withdrawal", || {
        (curl(&format!("http://127.0.0.1:{outbound}/after")).0 != 200).then_some(())
    });
}

/// The https_web profile across two `signet run`s: partner.test's endpoint
/// presents a certificate from an openssl-made web CA, and example.org,
/// given only that CA and no bootstrap bundle, fetches partner.test's
/// bundle.
#[test]
fn https_web_federation_needs_no_bootstrap_bundle() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let web = b_dir.path();
    let script = "set -e
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
            -keyout ca.key -out ca.pem -days 1 -subj /CN=test-web-ca 2>/dev/null
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
            -keyout web.key -out web.csr -subj /CN=localhost 2>/dev/null
        printf 'subjectAltName=DNS:localhost\\n' > ext.cnf
        openssl x509 -req -in web.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
            -out web.pem -days 1 -extfile ext.cnf 2>/dev/null";
    let made = Command::new("sh")
        .args(["-c", script])
        .current_dir(web)
        .status()
        .unwrap();
    assert!(made.success(), "openssl could not make the web CA");
    let b = Combined::start(
        b_dir.path(),
        &[
            "--trust-domain",
            "partner.test",
            "--federation-listen",
            "127.0.0.1:0",
            "--federation-web-cert",
            web.join("web.pem").to_str().unwrap(),
            "--federation-web-key",
            web.join("web.key").to_str().unwrap(),
        ],
    );
    let banner = b.proc.seen.join("\n");
    assert!(banner.contains("https_web: presents"), "{banner}");
    let port = endpoint_addr(&banner)
        .rsplit_once(':')
        .unwrap()
        .1
        .to_owned();
    let a = Combined::start(a_dir.path(), &[]);

    // A URL whose host the certificate does not name is refused at the
    // first fetch: nothing is stored.
    let create = |url: &str| {
        a.admin(&[
            "federation",
            "create",
            "--trust-domain",
            "partner.test",
            "--bundle-endpoint-url",
            url,
            "--profile",
            "https_web",
            "--ca-file",
            web.join("ca.pem").to_str().unwrap(),
        ])
    };
    let out = create(&format!("https://127.0.0.1:{port}/"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually("the refused fetch in example.org's log", || {
        let log = a.proc.log_text();
        log.lines()
            .any(|l| {
                l.contains("cannot refresh the federated bundle") && l.contains("partner.test")
            })
            .then_some(())
    });
    let none = a.admin(&["bundle", "show", "--trust-domain", "partner.test"]);
    assert!(
        !none.status.success(),
        "a bundle was stored from a refused endpoint"
    );
    let out = a.admin(&["federation", "delete", "--trust-domain", "partner.test"]);
    assert!(out.status.success());

    let out = create(&format!("https://localhost:{port}/"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = eventually("partner.test's bundle at example.org", || {
        let out = a.admin(&[
            "bundle",
            "show",
            "--trust-domain",
            "partner.test",
            "--format",
            "spiffe",
        ]);
        out.status
            .success()
            .then(|| String::from_utf8(out.stdout).unwrap())
    });
    let own = b.admin(&["bundle", "show", "--format", "spiffe"]);
    let (shown, own): (serde_json::Value, serde_json::Value) = (
        serde_json::from_str(&shown).unwrap(),
        serde_json::from_slice(&own.stdout).unwrap(),
    );
    assert_eq!(shown["keys"], own["keys"]);
}

/// A real Envoy in example.org validates partner.test's SVIDs from SDS
/// `ALL` (every bundle the agent holds, federated ones included): a
/// partner.test sidecar calls it and its RBAC sees the foreign caller.
#[test]
fn envoy_validates_a_federated_callers_svid_from_sds_all() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = federated_pair(a_dir.path(), b_dir.path(), &[]);
    workload_in_each(
        &a,
        "spiffe://example.org/server",
        &b,
        "spiffe://partner.test/client",
    );
    let (_app, app) = start_app(a_dir.path());
    let cfg = config(
        "inbound.yaml",
        &[
            ("port_value: 8443", "port_value: 0".into()),
            ("port_value: 8080", format!("port_value: {app}")),
            ("port_value: 9901", "port_value: 0".into()),
            ("path: /run/signet/agent.sock", format!("path: {}", a.agent)),
            (
                r#"exact: "spiffe://example.org/client""#,
                r#"exact: "spiffe://partner.test/client""#.into(),
            ),
        ],
        &a_dir.path().join("inbound.yaml"),
    );
    let bin = envoy::binary(a_dir.path());
    let inbound = envoy::start("envoy-a", &bin, &cfg, uid(), a_dir.path(), &[]);
    let port = inbound.listener_port("inbound");
    let (_outbound, outbound) = sidecar(
        "outbound-b",
        "outbound",
        &[
            "--to",
            &format!("127.0.0.1:{port}"),
            "--server-id",
            "spiffe://example.org/server",
        ],
        &b.agent,
        b_dir.path(),
    );
    let body = eventually("a request from partner.test through Envoy", || {
        let (code, body) = curl(&format!("http://127.0.0.1:{outbound}/from-partner"));
        (code == 200).then_some(body)
    });
    assert!(body.contains("URI=spiffe://partner.test/client"), "{body}");
}

/// `federation create --data`: what `federation list --output json`
/// prints (with a bootstrap bundle for https_spiffe) creates the same
/// relationships; a file with one bad relationship creates none.
#[test]
fn relationships_are_created_in_batch_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let c = Combined::start(dir.path(), &[]);
    let partner = signet_testkit::pki::TestCa::for_trust_domain("partner.test");
    let web_ca = signet_testkit::pki::TestCa::new("web roots");
    let wanted = serde_json::json!([
        {
            "trust_domain": "partner.test",
            "bundle_endpoint_url": "https://127.0.0.1:1/",
            "profile": "https_spiffe",
            "endpoint_spiffe_id": "spiffe://partner.test/signet/server",
        },
        {
            "trust_domain": "web.test",
            "bundle_endpoint_url": "https://localhost:1/bundle",
            "profile": "https_web",
            "ca": web_ca.pem,
        },
    ]);
    let mut file = wanted.clone();
    file[0]["trust_domain_bundle"] = partner.pem.clone().into();
    let write = |name: &str, doc: serde_json::Value| {
        let path = dir.path().join(name);
        std::fs::write(&path, doc.to_string()).unwrap();
        path.display().to_string()
    };

    // A bad profile in the second: refused by name before anything is sent.
    let mut bad = file.clone();
    bad[1]["profile"] = "https_sometimes".into();
    let out = c.admin(&[
        "federation",
        "create",
        "--data",
        &write("bad.json", serde_json::json!({ "federations": bad })),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("relationship 1") && err.contains("https_sometimes"),
        "{err}"
    );
    assert!(err.contains("nothing was created"), "{err}");
    let list = |c: &Combined| -> serde_json::Value {
        let out = c.admin(&["federation", "list", "--output", "json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["federations"].clone()
    };
    assert_eq!(list(&c), serde_json::json!([]));

    // SPIRE's key names read too.
    let spire_style = serde_json::json!({ "federation_relationships": file });
    let out = c.admin(&[
        "federation",
        "create",
        "--data",
        &write("ok.json", spire_style),
        "--output",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(list(&c), wanted);
    // The bootstrap bundle is stored as partner.test's bundle.
    let shown = c.admin(&["bundle", "show", "--trust-domain", "partner.test"]);
    assert_eq!(
        String::from_utf8_lossy(&shown.stdout).trim(),
        partner.pem.trim()
    );

    // Creating them again: each refused as existing, said per relationship.
    let out = c.admin(&[
        "federation",
        "create",
        "--data",
        &write("again.json", serde_json::json!({ "federations": file })),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("relationship 0:") && err.contains("relationship 1:"),
        "{err}"
    );
    assert!(
        err.contains("2 of 2 relationships were not created"),
        "{err}"
    );
}

/// SPIRE's admin IDs: a workload of a federated trust domain that
/// `--admin-id` names uses example.org's admin API over mTLS with its own
/// SVID, verified against partner.test's bundle; one it does not name is
/// refused before any call.
#[test]
fn a_federated_admin_id_uses_the_admin_api() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut a, b) = federated_pair_with(
        a_dir.path(),
        &[
            "--admin-listen",
            "127.0.0.1:0",
            "--admin-id",
            "spiffe://partner.test/ops",
        ],
        b_dir.path(),
        &[],
    );
    let url = format!("https://{}", a.proc.reported_addr("admin API"));
    b.entry_for_uid_with(
        "spiffe://partner.test/ops",
        uid(),
        &["--federates-with", "example.org"],
    );
    b.x509_json("the partner.test workload's SVID");
    let endpoint = format!("unix://{}", b.agent);
    let remote = || {
        signet()
            .args(["entry", "show", "--output", "json", "--server-url", &url])
            .env("SPIFFE_ENDPOINT_SOCKET", &endpoint)
            .output()
            .unwrap()
    };
    // Once example.org holds partner.test's bundle, the call goes through.
    let shown = eventually("the federated admin's call", || stdout_if_ok(remote()));
    assert!(shown.contains("\"entries\""), "{shown}");

    // Named no more (another ID for this uid in partner.test): refused.
    let out = b.admin(&[
        "entry",
        "show",
        "--spiffe-id",
        "spiffe://partner.test/ops",
        "--output",
        "json",
    ]);
    let id = json_stdout(&out)["entries"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(b.admin(&["entry", "delete", "--id", &id]).status.success());
    b.entry_for_uid_with(
        "spiffe://partner.test/intruder",
        uid(),
        &["--federates-with", "example.org"],
    );
    let refused = eventually("the unnamed partner.test workload's refusal", || {
        let out = remote();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        (!out.status.success() && !err.contains("no identity")).then_some(err)
    });
    // Its SVID is refused in the handshake: no ID of partner.test but the
    // one named is an admin of example.org.
    assert!(
        refused.contains("refused this workload's X509-SVID (spiffe://partner.test/intruder"),
        "{refused}"
    );
}
