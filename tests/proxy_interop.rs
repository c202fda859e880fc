//! End-to-end interop of the mTLS sidecar with its peers:
//!
//! - a real Envoy, both ways, every certificate from `signet run`'s agent
//!   (Envoy over SDS, the sidecars over the Workload API): an Envoy client
//!   (the example `outbound.yaml`) calls our inbound sidecar, and our
//!   outbound sidecar calls an Envoy inbound listener (the example
//!   `inbound.yaml`, whose RBAC allows the sidecar's ID); each app sees the
//!   caller's SPIFFE ID in `x-forwarded-client-cert`;
//! - the OPA-compiled `envoy-http-authz` fixture, evaluated per request by
//!   the inbound sidecar in HTTP mode, gives each case's expected answer
//!   (from the official OPA SDK) for the real request the case describes.
//!
//! Every party runs under its own uid, so the agent tells them apart by the
//! kernel and each has its own entry.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// `signet proxy MODE <args>` (the copy at `bin`) under `uid`, ready.
fn start_sidecar(
    name: &str,
    bin: &Path,
    mode: &str,
    args: &[&str],
    uid: u32,
    dir: &Path,
) -> (Proc, u16) {
    let mut cmd = Command::new(bin);
    cmd.env("SIGNET_LOG", "info").uid(uid).gid(uid);
    common::start_sidecar(name, cmd, mode, args, dir)
}

/// The `x-forwarded-client-cert` line of an app's answer.
fn xfcc(body: &str) -> &str {
    let mut lines = body
        .lines()
        .filter(|l| l.starts_with("x-forwarded-client-cert:"));
    let line = lines
        .next()
        .unwrap_or_else(|| panic!("no XFCC reached the app:\n{body}"));
    assert!(lines.next().is_none(), "two XFCC headers:\n{body}");
    line
}

const ENVOY_CLIENT: &str = "spiffe://example.org/envoy-client";
const ENVOY_SERVER: &str = "spiffe://example.org/envoy-server";
const SIDECAR_IN: &str = "spiffe://example.org/sidecar-inbound";
const SIDECAR_OUT: &str = "spiffe://example.org/sidecar-outbound";

#[test]
#[ignore = "needs root: runs processes under other uids (scripts/test runs it as root)"]
fn envoy_and_sidecars_interoperate_both_ways() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let c = Combined::start(dir, &[]);
    for (id, uid) in [
        (ENVOY_CLIENT, 65533),
        (SIDECAR_IN, 65534),
        (SIDECAR_OUT, 65532),
        (ENVOY_SERVER, 65531),
    ] {
        c.entry_for_uid(id, uid);
    }
    let signet = signet_for_others(dir);
    let envoy = envoy::binary(dir);
    let (_app, app) = start_app(dir);
    let sock = c.agent.clone();
    // Every listener and admin endpoint binds port 0 and reports the port.

    // (a) curl -> Envoy client (SDS) -> our inbound sidecar -> app. The
    // example's upstream SAN matcher names our sidecar's ID instead of the
    // example server's. Envoy offers at most TLS 1.2 as a client unless
    // told otherwise, and the sidecar accepts TLS 1.3 only unless started
    // with --tls12: the client Envoy is given TLS 1.3.
    let (_inbound, sidecar_in) = start_sidecar(
        "sidecar-inbound",
        &signet,
        "inbound",
        &[
            "--to",
            &format!("127.0.0.1:{app}"),
            "--http",
            "--allow-id",
            ENVOY_CLIENT,
            "--socket",
            &sock,
        ],
        65534,
        dir,
    );
    let envoy_client_cfg = config(
        "outbound.yaml",
        &[
            ("port_value: 15001", "port_value: 0".into()),
            ("port_value: 8443", format!("port_value: {sidecar_in}")),
            ("port_value: 9902", "port_value: 0".into()),
            ("path: /run/signet/agent.sock", format!("path: {sock}")),
            (
                r#"exact: "spiffe://example.org/server""#,
                format!(r#"exact: "{SIDECAR_IN}""#),
            ),
        ],
        &dir.join("envoy-client.yaml"),
    );
    let envoy_client = envoy::start("envoy-client", &envoy, &envoy_client_cfg, 65533, dir, &[]);
    let envoy_out = envoy_client.listener_port("outbound");
    let body = eventually(
        "a request from the Envoy client through our sidecar",
        || {
            let (code, body) = curl(&format!("http://127.0.0.1:{envoy_out}/from-envoy"));
            (code == 200).then_some(body)
        },
    );
    let line = xfcc(&body);
    assert!(
        line.starts_with(&format!("x-forwarded-client-cert: By={SIDECAR_IN};Hash=")),
        "{line}"
    );
    assert!(line.ends_with(&format!(";URI={ENVOY_CLIENT}")), "{line}");

    // (b) curl -> our outbound sidecar -> Envoy inbound listener (SDS,
    // RBAC on the caller's ID) -> app. The example's server SVID and RBAC
    // principal name this test's IDs.
    let envoy_server_cfg = config(
        "inbound.yaml",
        &[
            ("port_value: 8443", "port_value: 0".into()),
            ("port_value: 8080", format!("port_value: {app}")),
            ("port_value: 9901", "port_value: 0".into()),
            ("path: /run/signet/agent.sock", format!("path: {sock}")),
            (
                r#"name: "spiffe://example.org/server""#,
                format!(r#"name: "{ENVOY_SERVER}""#),
            ),
            (
                r#"exact: "spiffe://example.org/client""#,
                format!(r#"exact: "{SIDECAR_OUT}""#),
            ),
        ],
        &dir.join("envoy-server.yaml"),
    );
    let envoy_server = envoy::start("envoy-server", &envoy, &envoy_server_cfg, 65531, dir, &[]);
    let envoy_in = envoy_server.listener_port("inbound");
    let (_outbound, sidecar_out) = start_sidecar(
        "sidecar-outbound",
        &signet,
        "outbound",
        &[
            "--to",
            &format!("127.0.0.1:{envoy_in}"),
            "--server-id",
            ENVOY_SERVER,
            "--socket",
            &sock,
        ],
        65532,
        dir,
    );
    let body = eventually(
        "a request from our sidecar through the Envoy server",
        || {
            let (code, body) = curl(&format!("http://127.0.0.1:{sidecar_out}/from-sidecar"));
            (code == 200).then_some(body)
        },
    );
    let line = xfcc(&body);
    assert!(
        line.starts_with(&format!("x-forwarded-client-cert: By={ENVOY_SERVER};")),
        "{line}"
    );
    assert!(line.ends_with(&format!(";URI={SIDECAR_OUT}")), "{line}");
}

/// The OPA-compiled `envoy-http-authz` fixture (policy/tests/fixtures).
fn envoy_http_authz_fixture() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("policy/tests/fixtures/opa-wasm/envoy-http-authz");
    assert!(
        dir.join("policy.wasm").is_file() && dir.join("cases.json").is_file(),
        "the OPA wasm fixture is missing at {}",
        dir.display()
    );
    dir
}

/// The policy allows a `GET` of exactly `/`, or any request whose
/// `authorization` header is exactly `Basic charlie`. Every case whose input
/// is an HTTP request is sent as that real request (method, path, headers;
/// pseudo-headers become the request line and Host). Reproduced, 7 of 10:
/// `repo-sample-get-root` (Envoy's own ext_authz sample, with its headers),
/// `get-root-no-auth`, `delete-admin-basic-charlie` (allowed);
/// `post-root-no-auth`, `get-admin-no-auth`, `get-admin-wrong-credentials`,
/// `lowercase-method` (a real `get` request line; denied). The fields a real
/// request cannot set (the sample's addresses, metadata, request id) do not
/// take part in the decision. Three cases are not reproduced because no real
/// request yields their input: the sidecar always describes the request, and
/// its method is always a string.
const NOT_A_REAL_REQUEST: [&str; 3] = [
    "method-wrong-type", // a numeric method
    "empty-input",       // no request at all
    "input-is-string",   // the input document is not an object
];

const POLICY_SERVER: &str = "spiffe://example.org/opa-inbound";
const POLICY_CLIENT: &str = "spiffe://example.org/opa-client";

#[test]
#[ignore = "needs root: runs processes under other uids (scripts/test runs it as root)"]
fn envoy_http_authz_fixture_decides_real_requests() {
    let fixture = envoy_http_authz_fixture();
    require_root();
    let cases: Vec<Value> =
        serde_json::from_slice(&std::fs::read(fixture.join("cases.json")).unwrap()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let policy = dir.join("policy.wasm");
    std::fs::copy(fixture.join("policy.wasm"), &policy).unwrap();
    std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o644)).unwrap();

    let c = Combined::start(dir, &[]);
    c.entry_for_uid(POLICY_SERVER, 65534);
    // The client is this test itself (curl, with the SVID it fetches).
    c.entry_for_uid(POLICY_CLIENT, uid());
    let svid = dir.join("client");
    std::fs::create_dir(&svid).unwrap();
    let svid_dir = svid.display().to_string();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let out = c.api(&["fetch", "x509", "--write", &svid_dir]);
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no X509-SVID for the test's own uid within {DEADLINE:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let signet = signet_for_others(dir);
    let (mut app_proc, app) = start_app(dir);
    let entrypoint = cases[0]["entrypoint"].as_str().unwrap();
    let (sidecar, listen) = start_sidecar(
        "sidecar-inbound",
        &signet,
        "inbound",
        &[
            "--to",
            &format!("127.0.0.1:{app}"),
            "--http",
            "--policy",
            &policy.display().to_string(),
            "--entrypoint",
            entrypoint,
            "--socket",
            &c.agent,
        ],
        65534,
        dir,
    );

    // curl is an OpenSSL client presenting the test's SVID; it does not
    // check the server's SPIFFE ID (-k: the SVID has no DNS name), which is
    // not what this test is about.
    let send = |case: &str, method: &str, path: &str, headers: &[String]| -> (u16, String) {
        let cert = svid.join("svid.pem").display().to_string();
        let key = svid.join("svid_key.pem").display().to_string();
        let url = format!("https://127.0.0.1:{listen}{path}");
        let case_header = format!("x-case: {case}");
        let mut args = vec![
            "-k",
            "--cert",
            &cert,
            "--key",
            &key,
            "-X",
            method,
            "-H",
            &case_header,
        ];
        for h in headers {
            args.extend(["-H", h.as_str()]);
        }
        args.push(&url);
        curl_with(&args)
    };

    let mut reproduced = Vec::new();
    let mut skipped = Vec::new();
    let mut denied = Vec::new();
    for case in &cases {
        let name = case["name"].as_str().unwrap();
        assert_eq!(case["entrypoint"], entrypoint, "{name}");
        let http = &case["input"]["attributes"]["request"]["http"];
        let (Some(method), Some(path), Some(headers)) = (
            http["method"].as_str(),
            http["path"].as_str(),
            http["headers"].as_object(),
        ) else {
            skipped.push(name);
            continue;
        };
        let headers: Vec<String> = headers
            .iter()
            .filter_map(|(k, v)| match k.as_str() {
                // The request line carries these.
                ":method" | ":path" => None,
                ":authority" => Some(format!("host: {}", v.as_str().unwrap())),
                _ => Some(format!("{k}: {}", v.as_str().unwrap())),
            })
            .collect();
        let allow = case["expected"][0]["result"]["allow"]
            .as_bool()
            .unwrap_or_else(|| panic!("{name}: expected {}", case["expected"]));
        let (code, body) = send(name, method, path, &headers);
        if allow {
            assert_eq!(code, 200, "{name}: allowed, but got {code}: {body}");
            assert!(
                body.starts_with(&format!("method: {method}\n")),
                "{name}: {body}"
            );
            let line = xfcc(&body);
            assert!(
                line.starts_with(&format!(
                    "x-forwarded-client-cert: By={POLICY_SERVER};Hash="
                )),
                "{name}: {line}"
            );
            assert!(
                line.ends_with(&format!(";URI={POLICY_CLIENT}")),
                "{name}: {line}"
            );
        } else {
            assert_eq!(code, 403, "{name}: denied, but got {code}: {body}");
            denied.push(name);
        }
        reproduced.push(name);
    }
    assert_eq!(skipped, NOT_A_REAL_REQUEST, "cases not reproduced");
    assert_eq!(reproduced.len(), 7, "cases reproduced: {reproduced:?}");
    assert!(!denied.is_empty() && denied.len() < reproduced.len());

    // No denied request reached the app: it handles requests one at a time
    // and logs each, so once a last allowed request shows up in its log,
    // every earlier one that reached it is there too.
    assert_eq!(send("last", "GET", "/", &[]).0, 200);
    let seen = app_proc.wait_for("request last");
    for name in &denied {
        assert!(
            !seen.lines().any(|l| l == format!("request {name}")),
            "denied {name} reached the app:\n{seen}"
        );
    }
    // Each denial is logged.
    eventually("every denial in the sidecar's log", || {
        let log = sidecar.log_text();
        (log.matches("request rejected: policy denied").count() == denied.len()).then_some(())
    });
}
