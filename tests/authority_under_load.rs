//! A key compromise handled under load, end to end on `signet run`: 100
//! workloads (each its own uid) hold open Workload API streams, an Envoy
//! pair on SDS and a sidecar pair carry requests without pause, while the
//! X.509 authority and then the JWT key are prepared, activated, tainted
//! and revoked. No request fails beyond one client retry; after the taint
//! every stream, Envoy and sidecar holds an SVID of the new authority; after
//! the revoke nothing of the old one is served.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use common::*;

const WORKLOADS: u32 = 100;
const FIRST_UID: u32 = 40_000;
const BACKEND: &str = "spiffe://example.org/backend";
const FRONTEND: &str = "spiffe://example.org/frontend";

/// Prepares and activates a new authority of `kind`; returns (old, new).
fn replace(c: &Combined, kind: &str) -> (String, String) {
    let old = id_in(&authority(c, kind, &["show"]), "active");
    let new = id_in(&authority(c, kind, &["prepare"]), "prepared");
    authority(c, kind, &["activate", "--authority-id", &new]);
    (old, new)
}

/// The Authority Key Identifier (lowercase hex) of the certificate a TLS
/// server on `port` presents to a new connection, read by openssl.
fn presented_issuer(port: u16) -> Option<String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{port} </dev/null 2>/dev/null | openssl x509 -noout -ext authorityKeyIdentifier"
        ))
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().map(str::trim).rfind(|l| !l.is_empty())?;
    let hex = last.trim_start_matches("keyid:").replace(':', "");
    (!hex.is_empty() && !hex.contains(' ')).then(|| hex.to_ascii_lowercase())
}

/// Requests through both paths, without pause, until stopped; a failed
/// request is retried once, and a failed retry is recorded.
struct Traffic {
    stop: Arc<AtomicBool>,
    phase: Arc<Mutex<&'static str>>,
    done: Arc<[AtomicUsize; 2]>,
    failures: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(ports: [u16; 2]) -> Traffic {
        let t = Traffic {
            stop: Arc::new(AtomicBool::new(false)),
            phase: Arc::new(Mutex::new("start")),
            done: Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]),
            failures: Arc::new(Mutex::new(Vec::new())),
            threads: Vec::new(),
        };
        let threads = ports
            .into_iter()
            .enumerate()
            .map(|(i, port)| {
                let (stop, phase, done, failures) = (
                    t.stop.clone(),
                    t.phase.clone(),
                    t.done.clone(),
                    t.failures.clone(),
                );
                std::thread::spawn(move || {
                    let path = ["envoy", "sidecar"][i];
                    let url = format!("http://127.0.0.1:{port}/{path}");
                    while !stop.load(Ordering::Relaxed) {
                        let first = curl(&url);
                        if first.0 != 200 && curl(&url).0 != 200 {
                            let during = *phase.lock().unwrap();
                            failures
                                .lock()
                                .unwrap()
                                .push(format!("{path} during {during}: {} {}", first.0, first.1));
                        }
                        done[i].fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Traffic { threads, ..t }
    }

    fn phase(&self, name: &'static str) {
        *self.phase.lock().unwrap() = name;
    }

    /// Waits until each path has carried `n` more requests.
    fn carries(&self, n: usize, what: &str) {
        let base: Vec<usize> = self
            .done
            .iter()
            .map(|d| d.load(Ordering::Relaxed))
            .collect();
        eventually(what, || {
            self.done
                .iter()
                .zip(&base)
                .all(|(d, b)| d.load(Ordering::Relaxed) >= b + n)
                .then_some(())
        });
    }

    fn stop(self) -> (Vec<String>, [usize; 2]) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let done = [0, 1].map(|i| self.done[i].load(Ordering::Relaxed));
        (self.failures.lock().unwrap().clone(), done)
    }
}

#[test]
#[ignore = "needs root: runs processes under other uids (scripts/test runs it as root)"]
fn taint_and_revoke_under_load_fail_no_request() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let c = Combined::start(dir, &[]);
    for (id, uid) in [("server", 65534), ("client", 65533)] {
        c.entry_for_uid(&format!("spiffe://example.org/{id}"), uid);
    }
    c.entry_for_uid(BACKEND, uid());
    c.entry_for_uid(FRONTEND, uid());
    for i in 0..WORKLOADS {
        c.entry_for_uid(&format!("spiffe://example.org/w/{i}"), FIRST_UID + i);
    }

    // 100 workloads, each watching its stream.
    let bin = signet_for_others(dir);
    let mut watchers: Vec<Proc> = (0..WORKLOADS)
        .map(|i| {
            let mut cmd = Command::new(&bin);
            cmd.args([
                "api",
                "watch",
                "--output",
                "json",
                "--agent-socket",
                &c.agent,
            ])
            .uid(FIRST_UID + i)
            .gid(FIRST_UID + i);
            Proc::spawn(&format!("watch-{i}"), cmd, dir)
        })
        .collect();
    for w in &mut watchers {
        w.next_line_with("\"authority_id\"");
    }

    // Client Envoy -> server Envoy -> app, on SDS.
    let (_app, app) = start_app(dir);
    let envoy_bin = envoy::binary(dir);
    let sock = c.agent.clone();
    let in_cfg = config(
        "inbound.yaml",
        &[
            ("port_value: 8443", "port_value: 0".into()),
            ("port_value: 8080", format!("port_value: {app}")),
            ("port_value: 9901", "port_value: 0".into()),
            ("path: /run/signet/agent.sock", format!("path: {sock}")),
        ],
        &dir.join("inbound.yaml"),
    );
    let server_envoy = envoy::start("envoy-server", &envoy_bin, &in_cfg, 65534, dir, &[]);
    let envoy_in = server_envoy.listener_port("inbound");
    let out_cfg = config(
        "outbound.yaml",
        &[
            ("port_value: 15001", "port_value: 0".into()),
            ("port_value: 8443", format!("port_value: {envoy_in}")),
            ("port_value: 9902", "port_value: 0".into()),
            ("path: /run/signet/agent.sock", format!("path: {sock}")),
        ],
        &dir.join("outbound.yaml"),
    );
    let client_envoy = envoy::start("envoy-client", &envoy_bin, &out_cfg, 65533, dir, &[]);
    let envoy_out = client_envoy.listener_port("outbound");

    // Outbound sidecar -> inbound sidecar -> app.
    let to_app = format!("127.0.0.1:{app}");
    let (_inbound, sidecar_in) = c.sidecar(
        "sidecar-in",
        "inbound",
        &[
            "--to",
            &to_app,
            "--svid-id",
            BACKEND,
            "--allow-id",
            FRONTEND,
        ],
    );
    let to_inbound = format!("127.0.0.1:{sidecar_in}");
    let (_outbound, sidecar_out) = c.sidecar(
        "sidecar-out",
        "outbound",
        &[
            "--to",
            &to_inbound,
            "--svid-id",
            FRONTEND,
            "--server-id",
            BACKEND,
        ],
    );
    for port in [envoy_out, sidecar_out] {
        eventually("a request through the pair", || {
            (curl(&format!("http://127.0.0.1:{port}/ready")).0 == 200).then_some(())
        });
    }
    let traffic = Traffic::start([envoy_out, sidecar_out]);
    traffic.carries(5, "requests before any change");

    // X.509: prepare, activate; taint; every holder moves to the new one.
    traffic.phase("x509 prepare/activate");
    let (old, new) = replace(&c, "x509");
    traffic.carries(5, "requests after the X.509 activation");
    traffic.phase("x509 taint");
    authority(&c, "x509", &["taint", "--authority-id", &old]);
    let tainted_at = Instant::now();
    let on_new = format!("\"authority_id\":\"{new}\"");
    for w in &mut watchers {
        w.next_line_with(&on_new);
    }
    println!(
        "taint -> all {WORKLOADS} streams on the new authority: {:?}",
        tainted_at.elapsed()
    );
    for (what, port) in [("server Envoy", envoy_in), ("inbound sidecar", sidecar_in)] {
        eventually(&format!("the {what} to present the new authority"), || {
            (presented_issuer(port)? == new).then_some(())
        });
    }
    traffic.carries(5, "requests after the X.509 taint");

    traffic.phase("x509 revoke");
    authority(&c, "x509", &["revoke", "--authority-id", &old]);
    let bundle = eventually("the revoked root to leave the bundle", || {
        let pem = ok(&["bundle", "show", "--socket", &c.admin]);
        (pem.matches("BEGIN CERTIFICATE").count() == 1).then_some(pem)
    });
    assert!(!bundle.is_empty());
    traffic.carries(10, "requests after the X.509 revoke");
    let fetched = c.x509_json("SVIDs after the revoke");
    assert!(
        fetched.lines().count() == 2 && fetched.lines().all(|l| l.contains(&on_new)),
        "an SVID of the revoked authority is served: {fetched}"
    );
    for (what, port) in [("server Envoy", envoy_in), ("inbound sidecar", sidecar_in)] {
        assert_eq!(presented_issuer(port), Some(new.clone()), "{what}");
    }

    // JWT: the same four steps; requests go on.
    let jwt = |c: &Combined| -> String {
        let out = c.api(&[
            "fetch",
            "jwt",
            "--audience",
            "db",
            "--spiffe-id",
            FRONTEND,
            "--output",
            "json",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        json_stdout(&out)["svids"][0]["token"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let kid = |t: &str| signet_identity::jwt_svid::key_id_insecure(t).unwrap();
    let before = jwt(&c);
    traffic.phase("jwt prepare/activate");
    let (old_kid, new_kid) = replace(&c, "jwt");
    assert_eq!(kid(&before), old_kid);
    traffic.phase("jwt taint");
    authority(&c, "jwt", &["taint", "--authority-id", &old_kid]);
    eventually(
        "a token of the new key once the agent has the taint",
        || (kid(&jwt(&c)) == new_kid).then_some(()),
    );
    traffic.phase("jwt revoke");
    authority(&c, "jwt", &["revoke", "--authority-id", &old_kid]);
    let validate = |token: &str| {
        c.api(&["validate", "jwt", "--audience", "db", "--token", token])
            .status
            .success()
    };
    eventually("the revoked key's token to stop validating", || {
        (!validate(&before)).then_some(())
    });
    assert!(validate(&jwt(&c)));
    traffic.carries(5, "requests after the JWT revoke");

    let (failures, done) = traffic.stop();
    println!("requests carried: Envoy {}, sidecars {}", done[0], done[1]);
    assert!(
        failures.is_empty(),
        "requests failed twice in a row: {failures:#?}"
    );
}
