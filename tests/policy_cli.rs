//! `signet policy eval|check|test` on real OPA-compiled Wasm (the shared
//! fixtures) and on the example Rego policies.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/policy/tests/fixtures/opa-wasm/envoy-http-authz/policy.wasm"
);

#[test]
fn check_reports_the_module() {
    assert!(
        std::path::Path::new(FIXTURE).exists(),
        "the shared OPA fixtures are missing: {FIXTURE}"
    );
    let out: serde_json::Value = serde_json::from_str(&ok(&[
        "policy",
        "check",
        FIXTURE,
        "--entrypoint",
        "example",
        "--output",
        "json",
    ]))
    .unwrap();
    assert_eq!(out["engine"], "wasm");
    assert_eq!(out["abi"], "1.2");
    assert_eq!(out["entrypoints"][0], "example");
}

const REGO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/policy/rego");
const INPUT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/policy/examples/connection-input.json"
);

#[test]
fn eval_prints_the_entrypoints_value_as_opa_eval_does() {
    let eval = |entrypoint: &str, extra: &[&str]| {
        let mut args = vec![
            "policy",
            "eval",
            "--policy",
            REGO,
            "--entrypoint",
            entrypoint,
            "--input",
            INPUT,
        ];
        args.extend(extra);
        ok(&args)
    };
    assert_eq!(eval("signet/authz/allow", &[]).trim(), "true");
    let callers: serde_json::Value =
        serde_json::from_str(&eval("signet/authz/allowed_callers", &[])).unwrap();
    assert_eq!(callers["partner.example"][0], "/billing/*");
    let decision: serde_json::Value =
        serde_json::from_str(&eval("signet/authz/allow", &["--format", "decision"])).unwrap();
    assert_eq!(decision["allow"], true);
    // Undefined: nothing on stdout, a note on stderr.
    let out = run(&[
        "policy",
        "eval",
        "--policy",
        REGO,
        "--entrypoint",
        "signet/http/request_path",
        "--input",
        INPUT,
    ]);
    assert!(out.status.success());
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("signet/http/request_path is undefined"));
}

#[test]
fn a_misspelt_entrypoint_fails_every_check_naming_the_valid_ones() {
    let dir = tempfile::tempdir().unwrap();
    let proxy_cfg = dir.path().join("proxy.toml");
    std::fs::write(
        &proxy_cfg,
        format!(
            "[[listener]]\nmode = \"inbound\"\nlisten = \"127.0.0.1:1\"\nto = \"127.0.0.1:2\"\npolicy = \"{REGO}\"\nentrypoint = \"signet/authz/alow\"\n"
        ),
    )
    .unwrap();
    let flags = [
        "proxy",
        "inbound",
        "--listen",
        "127.0.0.1:1",
        "--to",
        "127.0.0.1:2",
        "--policy",
        REGO,
        "--entrypoint",
        "signet/authz/alow",
    ];
    let mut checked = flags.to_vec();
    checked.push("--check-config");
    let mut started = flags.to_vec();
    started.extend(["--agent-socket", "/nonexistent/agent.sock"]);
    for args in [
        vec!["policy", "check", REGO, "--entrypoint", "signet/authz/alow"],
        vec![
            "policy",
            "eval",
            "--policy",
            REGO,
            "--entrypoint",
            "signet/authz/alow",
            "--input",
            INPUT,
        ],
        vec![
            "proxy",
            "--config",
            proxy_cfg.to_str().unwrap(),
            "--check-config",
        ],
        checked,
        started,
    ] {
        let out = run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} passed");
        assert!(
            err.contains("did you mean signet/authz/allow?")
                && err.contains("valid entrypoints: signet/authz/allow,"),
            "{args:?}: {err}"
        );
        assert_eq!(err.matches("not found").count(), 1, "said once: {err}");
    }
}

#[test]
fn eval_gives_the_policys_decision() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.json");
    let decide = |method: &str| -> serde_json::Value {
        let doc = serde_json::json!({"attributes": {"request": {"http": {"method": method, "path": "/", "headers": {}}}}});
        std::fs::write(&input, doc.to_string()).unwrap();
        serde_json::from_str(&ok(&[
            "policy",
            "eval",
            "--policy",
            FIXTURE,
            "--entrypoint",
            "example",
            "--input",
            input.to_str().unwrap(),
            "--format",
            "decision",
        ]))
        .unwrap()
    };
    assert_eq!(decide("GET")["allow"], true);
    assert_eq!(decide("POST")["allow"], false);
    assert_eq!(decide("GET")["revision"].as_str().unwrap().len(), 64);

    // A missing entrypoint is refused at load, naming it.
    let out = run(&[
        "policy",
        "eval",
        "--policy",
        FIXTURE,
        "--entrypoint",
        "no/such",
        "--input",
        input.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no/such"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_example_rego_policies_pass_their_tests() {
    let rego = concat!(env!("CARGO_MANIFEST_DIR"), "/policy/rego");
    let out = ok(&["policy", "test", rego]);
    assert!(out.contains("PASS"), "{out}");
    assert!(!out.contains("FAIL:"), "{out}");

    // A failing test fails the command.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("t.rego"),
        "package t\n\ntest_broken if { 1 == 2 }\n",
    )
    .unwrap();
    let out = run(&["policy", "test", dir.path().to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 of 1 policy tests failed"));
}

/// A Rego policy calling a builtin Signet lacks fails at `policy check`
/// and at the start of whatever would serve it, naming the builtin: never
/// a policy that loads and then denies every request.
#[test]
fn a_policy_calling_a_missing_builtin_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("authz.rego");
    std::fs::write(
        &policy,
        "package envoy.authz\nimport rego.v1\nallow if io.jwt.decode_verfy(input.t, {})\n",
    )
    .unwrap();
    let p = policy.to_str().unwrap();
    let sock = format!("unix:{}", dir.path().join("authz.sock").display());
    for args in [
        vec!["policy", "check", p],
        vec!["authz", "--policy", p, "--listen", &sock],
    ] {
        let out = run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} passed");
        assert!(
            err.contains("policy needs builtin \"io.jwt.decode_verfy\""),
            "{args:?}: {err}"
        );
    }
    // Spelt right, it loads.
    std::fs::write(
        &policy,
        "package envoy.authz\nimport rego.v1\nallow if io.jwt.decode_verify(input.t, {})[0]\n",
    )
    .unwrap();
    ok(&["policy", "check", p, "--entrypoint", "envoy/authz/allow"]);
}
