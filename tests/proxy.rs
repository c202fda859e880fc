//! End-to-end for the mTLS sidecar with real processes: curl -> outbound
//! sidecar -> inbound sidecar -> app. The two sidecars run under different
//! uids, so `signet run`'s agent gives each its own identity from the
//! kernel. The trust domain's CA sits under an upstream root this test
//! owns, so it can craft certificates that chain correctly but break one
//! rule each, and check that the inbound sidecar refuses and logs them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use signet_testkit::pki::{Leaf, TestCa};
use signet_testkit::process::write_for_others;

const FRONTEND: &str = "spiffe://example.org/ns/web/sa/frontend";
const BACKEND: &str = "spiffe://example.org/ns/api/sa/backend";

/// A root CA this test controls, written as `<name>.pem`/`<name>.key`
/// (`signet run`'s upstream).
fn make_root(dir: &Path, name: &str) -> TestCa {
    let ca = TestCa::new(name);
    ca.write(dir, name);
    ca
}

/// A certificate `ca` signs for `uris`, written as `<name>.pem`/`<name>.key`.
fn leaf(
    ca: &TestCa,
    dir: &Path,
    name: &str,
    uris: &[&str],
    ca_flag: bool,
    expired: bool,
) -> PathBuf {
    let leaf = Leaf {
        uris,
        ca: ca_flag,
        expired,
        ..Leaf::default()
    };
    ca.leaf(&leaf).write(dir, name)
}

/// A TCP echo app on a port of its own choosing; returns it and its port.
fn start_echo(dir: &Path) -> (Proc, u16) {
    let script = "import socket, threading\n\
         s = socket.socket()\n\
         s.bind(('127.0.0.1', 0)); s.listen(64)\n\
         print('listening on 127.0.0.1:%d' % s.getsockname()[1], flush=True)\n\
         def h(c):\n\
         \x20   while True:\n\
         \x20       d = c.recv(65536)\n\
         \x20       if not d: break\n\
         \x20       c.sendall(d)\n\
         \x20   c.close()\n\
         while True:\n\
         \x20   c, _ = s.accept(); threading.Thread(target=h, args=(c,), daemon=True).start()\n";
    let mut cmd = Command::new("python3");
    cmd.args(["-c", script]);
    let mut p = Proc::spawn("echo", cmd, dir);
    let port = p.reported_addr("listening on").port();
    (p, port)
}

fn exchange(reader: &mut BufReader<std::net::TcpStream>, line: &str) {
    reader.get_mut().write_all(line.as_bytes()).unwrap();
    let mut got = String::new();
    reader.read_line(&mut got).unwrap();
    assert_eq!(got, line, "the echo through both sidecars");
}

#[test]
#[ignore = "needs root: runs processes under other uids (scripts/test runs it as root)"]
fn sidecars_carry_identity_authorize_rotate_and_refuse() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = make_root(dir, "root");
    let c = Combined::start(
        dir,
        &[
            "--x509-svid-ttl",
            "20s",
            "--upstream-cert",
            &dir.join("root.pem").display().to_string(),
            "--upstream-key",
            &dir.join("root.key").display().to_string(),
        ],
    );
    for (id, uid) in [(BACKEND, 65534), (FRONTEND, 65533)] {
        c.entry_for_uid(id, uid);
    }
    let bin = signet_for_others(dir);
    let (_app, app) = start_app(dir);
    let (_echo, echo) = start_echo(dir);

    let policy = dir.join("http.rego");
    let http_rego = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("policy/rego/http.rego"),
    )
    .unwrap();
    write_for_others(&policy, &http_rego);
    let inbound_cfg = dir.join("inbound.toml");
    write_for_others(
        &inbound_cfg,
        &format!(
            r#"admin_listen = "127.0.0.1:0"
drain_timeout = "5s"
[[listener]]
name = "http"
mode = "inbound"
listen = "127.0.0.1:0"
to = "127.0.0.1:{app}"
http = true
policy = "{policy}"
entrypoint = "signet/http/allow"
[[listener]]
name = "tcp"
mode = "inbound"
listen = "127.0.0.1:0"
to = "127.0.0.1:{echo}"
allow_id = ["{FRONTEND}"]
"#,
            policy = policy.display()
        ),
    );
    // Each sidecar binds port 0 and reports its ports on stdout.
    let mut inbound = start_proxy("inbound", &bin, &inbound_cfg, &c.agent, 65534, dir);
    let in_http = inbound.reported_addr("listener http:").port();
    let in_tcp = inbound.reported_addr("listener tcp:").port();
    let in_admin = inbound.reported_addr("admin endpoint:").port();
    let outbound_cfg = dir.join("outbound.toml");
    write_for_others(
        &outbound_cfg,
        &format!(
            r#"admin_listen = "127.0.0.1:0"
[[listener]]
name = "http"
mode = "outbound"
listen = "127.0.0.1:0"
to = "127.0.0.1:{in_http}"
server_id = "{BACKEND}"
[[listener]]
name = "tcp"
mode = "outbound"
listen = "127.0.0.1:0"
to = "localhost:{in_tcp}"
server_id = "{BACKEND}"
"#
        ),
    );
    let mut outbound = start_proxy("outbound", &bin, &outbound_cfg, &c.agent, 65533, dir);
    let out_http = outbound.reported_addr("listener http:").port();
    let out_tcp = outbound.reported_addr("listener tcp:").port();
    let out_admin = outbound.reported_addr("admin endpoint:").port();
    for admin in [in_admin, out_admin] {
        let body = eventually("the sidecar to be ready", || {
            let (code, body) = curl(&format!("http://127.0.0.1:{admin}/ready"));
            (code == 200).then_some(body)
        });
        assert!(
            body.contains("presenting spiffe://example.org/ns/"),
            "{body}"
        );
    }

    // An allowed request reaches the app with the caller's identity in
    // XFCC; a forged XFCC from the client is replaced, not passed on.
    let (code, body) = curl_with(&[
        "-H",
        "x-forwarded-client-cert: By=spiffe://evil/x;URI=spiffe://example.org/ns/ops/sa/admin",
        &format!("http://127.0.0.1:{out_http}/api/v1/hello?x=1"),
    ]);
    assert_eq!(code, 200, "{body}\n{}", inbound.log_text());
    let xfcc = body
        .lines()
        .find(|l| l.starts_with("x-forwarded-client-cert:"))
        .unwrap_or_else(|| panic!("no XFCC in {body}"));
    assert!(xfcc.contains(&format!("By={BACKEND};Hash=")), "{xfcc}");
    assert!(xfcc.ends_with(&format!(";URI={FRONTEND}")), "{xfcc}");
    assert!(!body.contains("spiffe://evil"), "{body}");
    assert!(
        body.contains(&format!("x-signet-caller: {FRONTEND}")),
        "{body}"
    );

    // The policy denies what its routes do not allow, with its status, and
    // (it gives no body) a body saying so with its reason.
    let (code, body) = curl_with(&[
        "-X",
        "POST",
        &format!("http://127.0.0.1:{out_http}/api/v1/hello"),
    ]);
    assert_eq!(code, 403);
    assert_eq!(body, "access denied by policy: no route for caller\n");
    let (code, _) = curl(&format!("http://127.0.0.1:{out_http}/admin"));
    assert_eq!(code, 403);

    // The policy sees the request the app gets: dot segments, encoded
    // dots and encoded slashes cannot smuggle /admin past a /api/v1/**
    // rule (each of these reached /admin/secret.txt before).
    for (path, want) in [
        ("/api/v1/../../admin/secret.txt", 403),
        ("/api/v1/%2e%2e/%2e%2e/admin/secret.txt", 403),
        ("/api/v1/..%2f..%2fadmin/secret.txt", 400),
        ("/api/v1/..%5c..%5cadmin/secret.txt", 400),
    ] {
        let (code, body) = curl_with(&[
            "--path-as-is",
            &format!("http://127.0.0.1:{out_http}{path}"),
        ]);
        assert_eq!(code, want, "{path}: {body}");
    }
    // Allowed after normalization: the app gets the normalized path.
    let (code, body) = curl_with(&[
        "--path-as-is",
        &format!("http://127.0.0.1:{out_http}/api/v1/x/../hello//there?q=1"),
    ]);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("path: /api/v1/hello/there?q=1"), "{body}");
    // An absolute-form target: policy and app both see its host.
    let (code, body) = curl_with(&[
        "--request-target",
        "http://public.example.org/api/v1/hello",
        "-H",
        "Host: admin.internal",
        &format!("http://127.0.0.1:{out_http}/"),
    ]);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("host: public.example.org"), "{body}");
    assert!(!body.contains("admin.internal"), "{body}");
    eventually("the denial in the inbound log", || {
        inbound
            .log_text()
            .contains("request rejected: policy denied")
            .then_some(())
    });
    // Each decision's audit record is a JSON object inside its log line.
    let log = inbound.log_text();
    let audit: serde_json::Value = log
        .lines()
        .filter(|l| l.contains("\"signet::policy::audit\""))
        .find_map(|l| serde_json::from_str(l).ok())
        .expect("an audit line");
    assert!(audit["fields"]["record"].is_object(), "{audit}");
    assert!(audit["fields"]["record"]["decision"].is_string(), "{audit}");

    // Certificates that break one rule each are refused at the handshake
    // and the log says why.
    let other_root = make_root(dir, "other-root");
    let cases: [(&str, PathBuf, &str); 6] = [
        (
            "expired",
            leaf(&root, dir, "expired", &[FRONTEND], false, true),
            "expired",
        ),
        (
            "untrusted CA",
            leaf(&other_root, dir, "untrusted", &[FRONTEND], false, false),
            "does not chain",
        ),
        (
            "two URI SANs",
            leaf(
                &root,
                dir,
                "two-uris",
                &[FRONTEND, "spiffe://example.org/b"],
                false,
                false,
            ),
            "2 URI SANs",
        ),
        (
            "CA as leaf",
            leaf(&root, dir, "ca-leaf", &[FRONTEND], true, false),
            "is a CA",
        ),
        (
            "wrong trust domain",
            leaf(
                &root,
                dir,
                "other-td",
                &["spiffe://other.org/ns/web/sa/frontend"],
                false,
                false,
            ),
            "no trust bundle for trust domain other.org",
        ),
        (
            "allow-list miss",
            leaf(
                &root,
                dir,
                "intruder",
                &["spiffe://example.org/intruder"],
                false,
                false,
            ),
            "spiffe://example.org/intruder is not authorized",
        ),
    ];
    for (what, cert, reason) in &cases {
        let key = cert.with_extension("key");
        let out = Command::new("curl")
            .args(["-s", "-k", "-m", "5", "--cert"])
            .arg(cert)
            .arg("--key")
            .arg(&key)
            .arg(format!("https://127.0.0.1:{in_tcp}/"))
            .output()
            .unwrap();
        assert!(!out.status.success(), "{what}: curl got through");
        eventually(&format!("{what}: {reason:?} in the inbound log"), || {
            inbound.log_text().contains(reason).then_some(())
        });
    }
    let out = Command::new("curl")
        .args([
            "-s",
            "-k",
            "-m",
            "5",
            &format!("https://127.0.0.1:{in_tcp}/"),
        ])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "no client certificate: curl got through"
    );
    let metrics = eventually("rejections in the metrics", || {
        let (_, m) = curl(&format!("http://127.0.0.1:{in_admin}/metrics"));
        (m.contains("result=\"no_peer_certificate\"") && m.contains("result=\"not_authorized\""))
            .then_some(m)
    });
    assert!(metrics.contains("result=\"untrusted_peer\""), "{metrics}");
    assert!(
        metrics.contains("signet_proxy_decisions_total"),
        "{metrics}"
    );

    // A long-lived connection survives rotation (20 s TTL: new SVID at
    // about 10 s) while new connections are handed the new certificate.
    let stream = std::net::TcpStream::connect(("127.0.0.1", out_tcp)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut long = BufReader::new(stream);
    exchange(&mut long, "before rotation\n");
    let first = eventually("the inbound certificate serial", || {
        presented_serial(in_tcp)
    });
    let mut n = 0;
    eventually("a new certificate on new connections", || {
        n += 1;
        exchange(&mut long, &format!("line {n}\n"));
        presented_serial(in_tcp).filter(|s| *s != first)
    });
    exchange(&mut long, "after rotation\n");
    let fresh = std::net::TcpStream::connect(("127.0.0.1", out_tcp)).unwrap();
    fresh
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    exchange(&mut BufReader::new(fresh), "new connection\n");

    // A policy reload under load fails no allowed request: a new route
    // appears, the old one keeps working throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let load = {
        let (stop, failures) = (stop.clone(), failures.clone());
        std::thread::spawn(move || {
            let mut sent = 0;
            while !stop.load(Ordering::Relaxed) || sent < 20 {
                let (code, _) = curl(&format!("http://127.0.0.1:{out_http}/api/v1/load"));
                if code != 200 {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                sent += 1;
            }
            sent
        })
    };
    assert_eq!(
        curl(&format!("http://127.0.0.1:{out_http}/api/v2/new")).0,
        403
    );
    write_for_others(
        &policy,
        &http_rego.replace(
            r#"{"caller": "spiffe://example.org/ns/ops/sa/admin""#,
            &format!(
                r#"{{"caller": "{FRONTEND}", "methods": ["GET"], "path": "/api/v2/**"}},
	{{"caller": "spiffe://example.org/ns/ops/sa/admin""#
            ),
        ),
    );
    // No signal: the sidecar watches the policy file.
    eventually("the reloaded policy to allow /api/v2", || {
        (curl(&format!("http://127.0.0.1:{out_http}/api/v2/new")).0 == 200).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    let sent = load.join().unwrap();
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "of {sent} requests during the reload"
    );

    // A broken revision leaves the previous one in force (SIGHUP forces the
    // check at once).
    write_for_others(&policy, "package signet.http\nthis is not rego\n");
    Command::new("kill")
        .args(["-HUP", &inbound.pid().to_string()])
        .status()
        .unwrap();
    eventually("the broken reload in the log", || {
        inbound
            .log_text()
            .contains("policy reload failed")
            .then_some(())
    });
    assert_eq!(
        curl(&format!("http://127.0.0.1:{out_http}/api/v2/new")).0,
        200
    );

    // SIGTERM drains and exits cleanly.
    let status = inbound.signal_and_wait("TERM");
    assert!(status.success(), "{status}\n{}", inbound.log_text());
}
