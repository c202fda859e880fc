//! Envoy external authorization by Signet: a real Envoy's `ext_authz`
//! filter asks the agent socket of `signet run --authz-policy` (gRPC over
//! the Unix socket, as it reaches SDS) with an OPA-Envoy style Rego
//! policy: allowed and denied by method, path and JSON body, a header
//! added upstream, a custom denial; and denied when Signet is gone.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;

const POLICY: &str = r#"package envoy.authz
import rego.v1

default allow := {
    "allowed": false,
    "http_status": 401,
    "body": "denied by policy\n",
    "headers": {"x-denied-by": "signet"},
}

allow := {"allowed": true, "headers": {"x-user": "anonymous"}} if {
    input.attributes.request.http.method == "GET"
    input.parsed_path[0] == "public"
}

allow := {"allowed": true, "headers": {"x-user": input.parsed_body.user}} if {
    input.attributes.request.http.method == "POST"
    input.parsed_body.user == "alice"
}
"#;

/// The test app behind an Envoy whose ext_authz filter asks `socket`;
/// returns both and the Envoy listener's URL.
fn envoy_in_front_of_an_app(dir: &std::path::Path, socket: &str) -> (Proc, envoy::Envoy, String) {
    let (app, port) = start_app(dir);
    // Named after the socket, so two of them in one test do not collide.
    let stem = std::path::Path::new(socket)
        .file_stem()
        .map_or("authz".into(), |s| s.to_string_lossy().into_owned());
    let name = format!("envoy-{stem}");
    let cfg = dir.join(format!("{name}.json"));
    std::fs::write(&cfg, envoy::bootstrap::ext_authz(socket, port)).unwrap();
    let envoy = envoy::start(&name, &envoy::binary(dir), &cfg, uid(), dir, &[]);
    let url = format!("http://127.0.0.1:{}", envoy.listener_port("authz"));
    (app, envoy, url)
}

/// The `/metrics` on `port` holds each of `wants`, the policy revision and
/// the evaluation time.
fn assert_metrics(port: u16, wants: &[&str]) {
    let metrics = signet_testkit::http::get(port, "/metrics");
    let always = [
        "signet_authz_policy_info{revision=",
        "signet_authz_eval_seconds",
    ];
    for want in wants.iter().chain(&always) {
        assert!(metrics.contains(want), "no {want} in\n{metrics}");
    }
}

#[test]
fn envoy_asks_signet_and_does_what_the_policy_says() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("authz.rego");
    std::fs::write(&policy, POLICY).unwrap();
    // Also on a socket of its own (--authz-listen), for Envoys that do not
    // reach the agent socket.
    let own = dir.path().join("own-authz.sock");
    let mut c = Combined::start(
        dir.path(),
        &[
            "--authz-policy",
            policy.to_str().unwrap(),
            "--health-listen",
            "127.0.0.1:0",
            "--authz-listen",
            &format!("unix:{}", own.display()),
        ],
    );
    let health = c.proc.reported_addr("health");
    let banner = c.proc.seen.join("\n");
    assert!(
        banner.contains("ext_authz      on the agent socket: "),
        "{banner}"
    );
    let (_app, _envoy, url) = envoy_in_front_of_an_app(dir.path(), &c.agent);

    let (code, body) = curl(&format!("{url}/public/hello"));
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("x-user: anonymous"),
        "the policy's header did not reach the app: {body}"
    );

    let (code, body) = curl_with(&["-i", &format!("{url}/private")]);
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("denied by policy"), "{body}");
    assert!(
        body.to_ascii_lowercase().contains("x-denied-by: signet"),
        "{body}"
    );

    let post = |user: &str| {
        curl_with(&[
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
            &format!(r#"{{"user": "{user}"}}"#),
            &format!("{url}/orders"),
        ])
    };
    let (code, body) = post("alice");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("x-user: alice"), "{body}");
    let (code, _) = post("mallory");
    assert_eq!(code, 401);

    // The same decisions on the agent's own ext_authz listener.
    assert!(
        banner.contains(&format!("also on unix:{}", own.display())),
        "{banner}"
    );
    let (_app2, _envoy2, url2) = envoy_in_front_of_an_app(dir.path(), own.to_str().unwrap());
    assert_eq!(curl(&format!("{url2}/public/hello")).0, 200);
    assert_eq!(curl(&format!("{url2}/private")).0, 401);

    // The agent's health endpoint counts the checks and names the policy.
    assert_metrics(
        health.port(),
        &[
            r#"signet_authz_checks_total{result="allow"} 3"#,
            r#"signet_authz_checks_total{result="deny"} 3"#,
            "signet_agent_healthy 1",
        ],
    );
    let (code, _) = curl(&format!("http://{health}/ready"));
    assert_eq!(code, 200);

    // Signet gone: Envoy cannot ask, and denies (failure_mode_allow: false).
    c.proc.signal_and_wait("TERM");
    let (code, _) = curl(&format!("{url}/public/hello"));
    assert_eq!(code, 403, "a request passed without a decision");
}

/// `signet authz` on its own socket, for an Envoy without an agent: the
/// same decisions; a policy edit takes effect, a broken edit does not.
#[test]
fn signet_authz_serves_envoy_alone_and_follows_policy_edits() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("authz.rego");
    std::fs::write(&policy, POLICY).unwrap();
    let log = dir.path().join("decisions.log");
    let (mut authz, _app, _envoy, port) = standalone(
        dir.path(),
        &policy,
        &[
            "--decision-log",
            log.to_str().unwrap(),
            "--admin-listen",
            "127.0.0.1:0",
        ],
    );
    let admin = authz.reported_addr("admin");
    let url = format!("http://127.0.0.1:{port}");
    assert_eq!(curl(&format!("{url}/public/hello")).0, 200);
    assert_eq!(curl(&format!("{url}/private")).0, 401);
    // Both decisions logged, as Envoy asked for them.
    let logged = std::fs::read_to_string(&log).unwrap();
    let paths: Vec<String> = logged
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|e| {
            e["input"]["attributes"]["request"]["http"]["path"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(paths, ["/public/hello", "/private"], "{logged}");
    assert_metrics(
        admin.port(),
        &[
            r#"signet_authz_checks_total{result="allow"} 1"#,
            r#"signet_authz_checks_total{result="deny"} 1"#,
        ],
    );

    // An edit that allows /private too: reloaded, taken.
    let edited = POLICY.replace(
        r#"input.parsed_path[0] == "public""#,
        r#"input.parsed_path[0] in {"public", "private"}"#,
    );
    std::fs::write(&policy, &edited).unwrap();
    eventually("the edited policy in force", || {
        (curl(&format!("{url}/private")).0 == 200).then_some(())
    });
    // A broken edit: refused, the previous revision decides on.
    std::fs::write(&policy, "package envoy.authz\nallow := {\n").unwrap();
    eventually("the broken edit refused", || {
        authz
            .log_text()
            .contains("policy reload failed")
            .then_some(())
    });
    assert_eq!(curl(&format!("{url}/private")).0, 200);
    assert_eq!(curl(&format!("{url}/secret")).0, 401);
}

/// `examples/envoy/ext_authz.yaml` and `authz.rego` as shipped: Envoy
/// terminates mTLS with its SVID from SDS and asks the same agent socket
/// for every decision; the policy decides by the caller's SPIFFE ID and, for
/// writes, by a JWT-SVID bearer token verified with the trust domain's JWT
/// keys (`data.signet.jwt_bundles`).
#[test]
fn the_example_authorizes_mtls_callers_by_spiffe_id_and_jwt_svid() {
    let dir = tempfile::tempdir().unwrap();
    let policy = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/envoy/authz.rego");
    let c = Combined::start(dir.path(), &["--authz-policy", policy]);
    // Envoy gets the server SVID (with a DNS name, for curl to check it).
    c.entry_for_uid_with(
        "spiffe://example.org/server",
        uid(),
        &["--dns-name", "localhost"],
    );
    let (_app, app) = start_app(dir.path());
    let cfg = config(
        "ext_authz.yaml",
        &[
            ("port_value: 8443", "port_value: 0".into()),
            ("port_value: 8080", format!("port_value: {app}")),
            ("port_value: 9903", "port_value: 0".into()),
            ("path: /run/signet/agent.sock", format!("path: {}", c.agent)),
        ],
        &dir.path().join("ext_authz.yaml"),
    );
    let envoy = envoy::start(
        "envoy-authz",
        &envoy::binary(dir.path()),
        &cfg,
        uid(),
        dir.path(),
        &[],
    );
    let url = format!("https://localhost:{}", envoy.listener_port("authz"));
    // Callers' SVIDs, minted by the administrator.
    let mint = |name: &str| {
        let out = dir.path().join(name);
        std::fs::create_dir_all(&out).unwrap();
        let id = format!("spiffe://example.org/{name}");
        let w = out.to_str().unwrap();
        let minted = c.admin(&["x509", "mint", "--spiffe-id", &id, "--write", w]);
        assert!(minted.status.success(), "{minted:?}");
        out
    };
    let (client, other) = (mint("client"), mint("other"));
    let call = |who: &std::path::Path, extra: &[&str]| {
        let file = |f: &str| who.join(f).display().to_string();
        let (cert, key, ca) = (file("svid.pem"), file("svid_key.pem"), file("bundle.pem"));
        let mut args = vec!["--cacert", &ca, "--cert", &cert, "--key", &key];
        args.extend(extra);
        curl_with(&args)
    };
    let get = format!("{url}/hello");
    let body = eventually("a GET allowed through Envoy", || {
        let (code, body) = call(&client, &[&get]);
        (code == 200).then_some(body)
    });
    assert!(
        body.contains("x-caller: spiffe://example.org/client"),
        "{body}"
    );
    let (code, body) = call(&other, &[&get]);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("denied by policy"), "{body}");

    let jwt = |id: &str, aud: &str| {
        let out = c.admin(&[
            "jwt",
            "mint",
            "--spiffe-id",
            id,
            "--audience",
            aud,
            "--output",
            "json",
        ]);
        assert!(out.status.success(), "{out:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["token"]
            .as_str()
            .unwrap_or_else(|| panic!("no token in {v}"))
            .to_owned()
    };
    let orders = format!("{url}/orders");
    let post = |who: &std::path::Path, token: Option<&str>| {
        let auth = token.map(|t| format!("authorization: Bearer {t}"));
        let mut args = vec!["-X", "POST", "-d", "{}"];
        if let Some(a) = &auth {
            args.extend(["-H", a.as_str()]);
        }
        args.push(&orders);
        call(who, &args)
    };
    let own = jwt("spiffe://example.org/client", "orders");
    let body = eventually("a POST with the caller's JWT-SVID allowed", || {
        let (code, body) = post(&client, Some(&own));
        (code == 200).then_some(body)
    });
    assert!(
        body.contains("x-jwt-subject: spiffe://example.org/client"),
        "{body}"
    );
    // No token, a token for another audience, another workload's token, a
    // tampered token, and a good token from another caller: all denied.
    assert_eq!(post(&client, None).0, 403);
    assert_eq!(
        post(
            &client,
            Some(&jwt("spiffe://example.org/client", "billing"))
        )
        .0,
        403
    );
    assert_eq!(
        post(&client, Some(&jwt("spiffe://example.org/other", "orders"))).0,
        403
    );
    // The signature's first byte changed.
    let (signed, sig) = own.rsplit_once('.').unwrap();
    let flipped = if sig.starts_with('A') { 'B' } else { 'A' };
    let tampered = format!("{signed}.{flipped}{}", &sig[1..]);
    assert_eq!(post(&client, Some(&tampered)).0, 403);
    assert_eq!(post(&other, Some(&own)).0, 403);
    // Without a client certificate there is no TLS session at all.
    let (code, _) = curl_with(&[
        "--cacert",
        &client.join("bundle.pem").display().to_string(),
        &get,
    ]);
    assert_eq!(code, 0, "a caller without an SVID got an answer");
}

/// `signet authz` with `policy` on a socket of its own, an Envoy in front
/// of the app asking it; returns both, the Envoy and its listener's port.
fn standalone(
    dir: &std::path::Path,
    policy: &std::path::Path,
    extra: &[&str],
) -> (Proc, Proc, envoy::Envoy, u16) {
    let sock = dir.join("authz.sock");
    let mut cmd = signet();
    cmd.args(["authz", "--policy", policy.to_str().unwrap(), "--listen"])
        .arg(format!("unix:{}", sock.display()))
        .args(extra);
    let mut authz = Proc::spawn("signet-authz", cmd, dir);
    authz.wait_for("Press Ctrl-C");
    let (app, envoy, url) = envoy_in_front_of_an_app(dir, sock.to_str().unwrap());
    let port = url.rsplit_once(':').unwrap().1.parse().unwrap();
    (authz, app, envoy, port)
}

/// Requests flow without pause while the policy is rewritten (and written
/// half-way at times, which the watcher may catch and refuse): every
/// allowed request is answered by the app, and each new revision takes
/// over.
#[test]
fn policy_reloads_under_load_fail_no_allowed_request() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("authz.rego");
    let revision = |n: u32| {
        POLICY.replace(
            r#""x-user": "anonymous""#,
            &format!(r#""x-user": "rev{n}""#),
        )
    };
    std::fs::write(&policy, revision(0)).unwrap();
    let (_authz, _app, _envoy, port) = standalone(dir.path(), &policy, &[]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut answers = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    answers.push(signet_testkit::http::get(port, "/public/hello"));
                }
                answers
            })
        })
        .collect();
    for n in 1..=4 {
        std::fs::write(&policy, revision(n)).unwrap();
        let want = format!("x-user: rev{n}");
        eventually(&format!("revision {n} in force"), || {
            signet_testkit::http::get(port, "/public/hello")
                .contains(&want)
                .then_some(())
        });
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let answers: Vec<String> = load.into_iter().flat_map(|t| t.join().unwrap()).collect();
    assert!(
        answers.len() > 50,
        "only {} requests during the reloads",
        answers.len()
    );
    for answer in &answers {
        assert!(
            answer.contains("method: GET"),
            "an allowed request failed: {answer:?}"
        );
    }
    for n in 0..=4 {
        let want = format!("x-user: rev{n}");
        assert!(
            answers.iter().any(|a| a.contains(&want)),
            "revision {n} never answered"
        );
    }
}

/// `--dry-run`: what the policy denies passes, and the decision log says
/// it would have been denied.
#[test]
fn dry_run_allows_and_logs_what_would_be_denied() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("authz.rego");
    std::fs::write(&policy, POLICY).unwrap();
    let log = dir.path().join("decisions.log");
    let (_authz, _app, _envoy, port) = standalone(
        dir.path(),
        &policy,
        &["--dry-run", "--decision-log", log.to_str().unwrap()],
    );
    let (code, body) = curl(&format!("http://127.0.0.1:{port}/private"));
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("path: /private"), "{body}");
    let logged = std::fs::read_to_string(&log).unwrap();
    let event: serde_json::Value = serde_json::from_str(logged.lines().last().unwrap()).unwrap();
    assert_eq!(event["dry_run"], true, "{event}");
    assert_eq!(event["allowed"], false, "{event}");
    assert_eq!(event["result"]["http_status"], 401, "{event}");
    assert_eq!(
        event["input"]["attributes"]["request"]["http"]["path"],
        "/private"
    );
}
