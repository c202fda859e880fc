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
