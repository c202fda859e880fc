//! Who the sidecar lets in and which servers it accepts, by pattern: an
//! inbound `--allow-id` with `*` for one segment and a trailing `/**`, an
//! outbound with several `--server-id` patterns or `--server-trust-domain`.
//! One uid holds every identity; each sidecar picks its own with
//! `--svid-id`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;

const API: &str = "spiffe://example.org/ns/prod/sa/api";
const WEB: &str = "spiffe://example.org/ns/prod/sa/web";
const DEEP_WEB: &str = "spiffe://example.org/ns/dev/team/sa/web";

#[test]
fn allow_and_server_patterns_pick_who_may_talk() {
    let dir = tempfile::tempdir().unwrap();
    let c = Combined::start(dir.path(), &[]);
    for id in [API, WEB, DEEP_WEB] {
        c.entry_for_uid(id, uid());
    }
    let (_app, app) = start_app(dir.path());
    let to_app = format!("127.0.0.1:{app}");
    let (_inbound, inbound) = c.sidecar(
        "inbound",
        "inbound",
        &[
            "--to",
            &to_app,
            "--svid-id",
            API,
            "--allow-id",
            "spiffe://example.org/ns/*/sa/web",
        ],
    );
    let to_inbound = format!("127.0.0.1:{inbound}");
    let outbound = |name: &str, svid: &str, servers: &[&str]| {
        let mut args = vec!["--to", to_inbound.as_str(), "--svid-id", svid];
        args.extend(servers);
        c.sidecar(name, "outbound", &args)
    };
    let through = |port: u16| curl(&format!("http://127.0.0.1:{port}/hello")).0;

    // Any server of the trust domain; the caller matches ns/*/sa/web.
    let (_a, a) = outbound(
        "by-trust-domain",
        WEB,
        &["--server-trust-domain", "example.org"],
    );
    assert_eq!(through(a), 200);
    // Several server patterns, the second matching.
    let (_b, b) = outbound(
        "by-patterns",
        WEB,
        &[
            "--server-id",
            "spiffe://example.org/ns/*/sa/db",
            "--server-id",
            "spiffe://example.org/ns/prod/**",
        ],
    );
    assert_eq!(through(b), 200);
    // No pattern matching the server: the outbound refuses it.
    let (d, d_port) = outbound(
        "wrong-server",
        WEB,
        &["--server-id", "spiffe://example.org/ns/*/sa/db"],
    );
    assert_ne!(through(d_port), 200);
    eventually("the outbound to say why", || {
        d.log_text().contains("server rejected").then_some(())
    });
    // A caller one segment too deep for ns/*/sa/web: the inbound refuses it.
    let (_e, e) = outbound("deep-caller", DEEP_WEB, &["--server-id", API]);
    assert_ne!(through(e), 200);
}

#[test]
fn bad_patterns_are_refused_at_start_naming_them() {
    for (args, says) in [
        (
            vec![
                "inbound",
                "--to",
                "127.0.0.1:1",
                "--allow-id",
                "spiffe://example.org/ns/web-*",
            ],
            "a * must be a whole path segment",
        ),
        (
            vec![
                "outbound",
                "--to",
                "127.0.0.1:1",
                "--server-id",
                "spiffe://*.org/x",
            ],
            "a wildcard cannot stand in the trust domain",
        ),
        (
            vec![
                "outbound",
                "--to",
                "127.0.0.1:1",
                "--server-trust-domain",
                "Not A Domain",
            ],
            "server_trust_domain",
        ),
    ] {
        let mut all = vec!["proxy"];
        all.extend(&args);
        all.extend(["--listen", "127.0.0.1:0", "--check-config"]);
        let out = run(&all);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} passed");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let out = run(&[
        "proxy",
        "outbound",
        "--to",
        "127.0.0.1:1",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--server-id"), "{err}");
}
