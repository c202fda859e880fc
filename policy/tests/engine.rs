//! Behaviour of the one API over both engines: decisions, fail-closed paths,
//! limits, hot reload and concurrency.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use signet_policy::input::{HttpRequest, InputBuilder};
use signet_policy::{Limits, Policy, PolicyError, PolicyHandle, PolicyOptions, run_tests};

fn fixture(name: &str) -> PathBuf {
    let dir = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/opa-wasm"
    ));
    let p = dir.join(name);
    assert!(p.exists(), "OPA wasm fixture missing: {}", p.display());
    p
}

fn rego_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/rego"))
}

fn envoy_opts() -> PolicyOptions {
    PolicyOptions::default().with_entrypoint("example")
}

fn write_bundle(path: &Path, wasm: &[u8], data: &Value, manifest: &Value) {
    let file = std::fs::File::create(path).unwrap();
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    for (name, bytes) in [
        ("/policy.wasm", wasm.to_vec()),
        ("/data.json", serde_json::to_vec(data).unwrap()),
        ("/.manifest", serde_json::to_vec(manifest).unwrap()),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, name.trim_start_matches('/'), bytes.as_slice())
            .unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap();
}

#[test]
fn wasm_decision_allow_and_deny() {
    let p = Policy::load(fixture("envoy-http-authz/policy.wasm"), &envoy_opts()).unwrap();
    assert_eq!(p.revision().len(), 64);
    let allow = json!({"attributes": {"request": {"http": {"method": "GET", "path": "/"}}}});
    let raw = p.evaluate_value(&allow).unwrap();
    // The entrypoint is the package document `{"allow": …}`: an object with
    // a boolean allow, as the OPA-Envoy plugin reads it.
    let d = p.evaluate(&allow);
    assert_eq!(d.revision, p.revision());
    assert_eq!(
        Some(d.allow),
        raw.as_ref().and_then(|v| v["allow"].as_bool())
    );
}

#[test]
fn bundle_manifest_entrypoint_and_data_are_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = std::fs::read(fixture("rbac-data-abi11/policy.wasm")).unwrap();
    let data: Value =
        serde_json::from_slice(&std::fs::read(fixture("rbac-data-abi11/data.json")).unwrap())
            .unwrap();
    let bundle = dir.path().join("bundle.tar.gz");
    write_bundle(
        &bundle,
        &wasm,
        &data,
        &json!({"revision": "1", "wasm": [{"entrypoint": "example/allow", "module": "/policy.wasm"}]}),
    );
    let p = Policy::load(&bundle, &PolicyOptions::default()).unwrap();
    assert_eq!(p.entrypoint(), "example/allow");
    // Every case of the fixture through the bundle.
    let cases: Vec<Value> =
        serde_json::from_slice(&std::fs::read(fixture("rbac-data-abi11/cases.json")).unwrap())
            .unwrap();
    for c in cases {
        if c.get("data").is_some_and(|d| d != &data) {
            continue;
        }
        let want = c["expected"][0]["result"].as_bool();
        let d = p.evaluate(&c["input"]);
        assert_eq!(d.allow, want == Some(true), "{}", c["name"]);
    }
}

#[test]
fn missing_builtin_is_refused_by_name() {
    let mut wasm = std::fs::read(fixture("devportal-compliance/policy.wasm")).unwrap();
    let needle = b"sprintf";
    let mut replaced = 0;
    let mut i = 0;
    while i + needle.len() <= wasm.len() {
        if &wasm[i..i + needle.len()] == needle {
            wasm[i + needle.len() - 1] = b'X';
            replaced += 1;
        }
        i += 1;
    }
    assert!(replaced > 0);
    let err =
        Policy::from_wasm(&wasm, &PolicyOptions::default().with_entrypoint("alert")).unwrap_err();
    assert!(
        matches!(&err, PolicyError::MissingBuiltin(n) if n == "sprintX"),
        "{err}"
    );
    assert!(err.to_string().contains("sprintX"));
}

#[test]
fn garbage_and_unknown_files_fail_to_load() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("policy.wasm");
    std::fs::write(&bad, b"not wasm").unwrap();
    assert!(matches!(
        Policy::load(&bad, &PolicyOptions::default()),
        Err(PolicyError::Compile(_))
    ));
    let txt = dir.path().join("policy.txt");
    std::fs::write(&txt, b"x").unwrap();
    assert!(matches!(
        Policy::load(&txt, &PolicyOptions::default()),
        Err(PolicyError::UnknownFormat(_))
    ));
    let rego = dir.path().join("bad.rego");
    std::fs::write(&rego, b"package signet.authz\nallow if {").unwrap();
    assert!(matches!(
        Policy::load(&rego, &PolicyOptions::default()),
        Err(PolicyError::Rego(_))
    ));
    let bundle = dir.path().join("b.tar.gz");
    std::fs::write(&bundle, b"\x1f\x8b garbage").unwrap();
    assert!(matches!(
        Policy::load(&bundle, &PolicyOptions::default()),
        Err(PolicyError::Bundle(_))
    ));
}

#[test]
fn rego_allowlist_table() {
    let p = Policy::load(
        rego_dir().join("spiffe_allowlist.rego"),
        &PolicyOptions::default(),
    )
    .unwrap();
    let rows = [
        ("spiffe://example.org/ns/web/sa/frontend", true),
        ("spiffe://example.org/ns/db/sa/x", false),
        ("spiffe://partner.example/billing/inv", true),
        ("spiffe://evil.example/ns/web/sa/frontend", false),
    ];
    for (peer, allow) in rows {
        let input = InputBuilder::default()
            .peer_id(peer)
            .own_id("spiffe://example.org/api")
            .build();
        let d = p.evaluate(&input);
        assert_eq!(d.allow, allow, "{peer}: {d:?}");
        assert_eq!(d.revision, p.revision());
    }
    // Undefined input fields deny.
    assert!(!p.evaluate(&json!({})).allow);
}

#[test]
fn rego_http_mode_object_decision() {
    let p = Policy::load(
        rego_dir(),
        &PolicyOptions::default().with_entrypoint("signet/http/allow"),
    )
    .unwrap();
    let req = |method: &str, path: &str| {
        InputBuilder::default()
            .peer_id("spiffe://example.org/ns/web/sa/frontend")
            .http(HttpRequest {
                method: method.into(),
                path: path.into(),
                ..Default::default()
            })
            .build()
    };
    let d = p.evaluate(&req("GET", "/api/v1/users?x=1"));
    assert!(d.allow, "{d:?}");
    assert_eq!(
        d.headers["x-signet-caller"],
        "spiffe://example.org/ns/web/sa/frontend"
    );
    let d = p.evaluate(&req("POST", "/api/v1/users"));
    assert!(!d.allow);
    assert_eq!(d.http_status, Some(403));
    assert_eq!(d.reason.as_deref(), Some("no route for caller"));
}

#[test]
fn undefined_entrypoint_denies() {
    let p = Policy::from_rego(
        "package signet.authz\nimport rego.v1\nallow if input.x == 1\n",
        &PolicyOptions::default(),
    )
    .unwrap();
    assert!(p.evaluate(&json!({"x": 1})).allow);
    let d = p.evaluate(&json!({"x": 2}));
    assert!(!d.allow);
    assert_eq!(d.reason.as_deref(), Some("policy decision is undefined"));
}

#[test]
fn a_misspelt_rego_entrypoint_is_refused_naming_the_valid_ones() {
    let rego = "package signet.authz\nimport rego.v1\ndefault allow := false\nallow if input.x == 1\nresult := {\"allowed\": allow}\ntest_allow if allow with input as {\"x\": 1}\n";
    let load = |entrypoint: &str| {
        Policy::from_rego(rego, &PolicyOptions::default().with_entrypoint(entrypoint))
    };
    let err = load("signet/authz/alow").unwrap_err().to_string();
    assert!(err.contains("\"signet/authz/alow\" not found"), "{err}");
    assert!(err.contains("did you mean signet/authz/allow?"), "{err}");
    assert!(
        err.contains("valid entrypoints: signet/authz/allow, signet/authz/result"),
        "{err}"
    );
    assert!(!err.contains("test_allow"), "{err}");
    // A rule in a package that does not exist, and no near match.
    let err = load("other/allow").unwrap_err().to_string();
    assert!(!err.contains("did you mean"), "{err}");
    // What exists loads: a rule, its package, a path inside a rule's value,
    // in either spelling.
    for ok in [
        "signet/authz/allow",
        "signet/authz",
        "signet/authz/result/allowed",
        "data.signet.authz.allow",
    ] {
        assert!(load(ok).is_ok(), "{ok}: {:?}", load(ok).err());
    }
    assert_eq!(
        load("signet/authz/result/allowed")
            .unwrap()
            .evaluate_value(&json!({"x": 1}))
            .unwrap(),
        Some(json!(true))
    );
}

#[test]
fn rego_evaluation_error_denies_with_reason() {
    let p = Policy::from_rego(
        "package signet.authz\nimport rego.v1\nallow := x if { x := input.a / input.b }\n",
        &PolicyOptions::default(),
    )
    .unwrap();
    let d = p.evaluate(&json!({"a": 1, "b": 0}));
    assert!(!d.allow);
    assert!(d.reason.is_some(), "{d:?}");
}

#[test]
fn rego_deadline_denies() {
    let limits = Limits {
        deadline: Duration::from_millis(20),
        ..Limits::default()
    };
    let p = Policy::from_rego(
        "package signet.authz\nimport rego.v1\nallow if { count([x | some x in numbers.range(1, 100000000)]) > 0 }\n",
        &PolicyOptions::default().with_limits(limits),
    )
    .unwrap();
    let d = p.evaluate(&json!({}));
    assert!(!d.allow);
    assert_eq!(
        d.reason.as_deref(),
        Some("policy evaluation exceeded its deadline"),
        "{d:?}"
    );
}

fn big_input(n: usize) -> Value {
    json!({"attributes": {"request": {"http": {"method": "GET", "path": "/"}}},
           "padding": (0..n).map(|i| json!({"k": i, "v": "xxxxxxxxxxxxxxxx"})).collect::<Vec<_>>()})
}

#[test]
fn wasm_deadline_denies_and_instance_recovers() {
    let limits = Limits {
        deadline: Duration::from_millis(1),
        pool_size: 2,
        ..Limits::default()
    };
    let p = Policy::load(
        fixture("envoy-http-authz/policy.wasm"),
        &envoy_opts().with_limits(limits),
    )
    .unwrap();
    let d = p.evaluate(&big_input(400_000));
    assert!(!d.allow);
    assert_eq!(
        d.reason.as_deref(),
        Some("policy evaluation exceeded its deadline"),
        "{d:?}"
    );
    // A fresh instance serves the next (small) request.
    let ok = json!({"attributes": {"request": {"http": {"method": "GET", "path": "/"}}}});
    assert!(p.evaluate_value(&ok).is_ok());
}

#[test]
fn wasm_memory_cap_denies_and_instance_recovers() {
    let limits = Limits {
        memory_limit: 4 * 1024 * 1024,
        deadline: Duration::from_secs(30),
        ..Limits::default()
    };
    let p = Policy::load(
        fixture("envoy-http-authz/policy.wasm"),
        &envoy_opts().with_limits(limits),
    )
    .unwrap();
    let d = p.evaluate(&big_input(100_000));
    assert!(!d.allow);
    assert_eq!(
        d.reason.as_deref(),
        Some("policy evaluation exceeded its memory limit"),
        "{d:?}"
    );
    let ok = json!({"attributes": {"request": {"http": {"method": "GET", "path": "/"}}}});
    assert!(p.evaluate_value(&ok).is_ok());
}

#[test]
fn reload_good_and_broken() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.rego");
    std::fs::write(
        &path,
        "package signet.authz\nimport rego.v1\ndefault allow := false\n",
    )
    .unwrap();
    let handle = PolicyHandle::load(&path, PolicyOptions::default())
        .unwrap()
        .with_decision_cache(1000);
    let rev1 = handle.revision();
    assert!(!handle.evaluate(&json!({})).allow);
    assert!(!handle.evaluate_connection(&json!({})).allow);

    std::fs::write(
        &path,
        "package signet.authz\nimport rego.v1\ndefault allow := true\n",
    )
    .unwrap();
    assert!(handle.reload().unwrap());
    let rev2 = handle.revision();
    assert_ne!(rev1, rev2);
    let d = handle.evaluate(&json!({}));
    assert!(d.allow);
    assert_eq!(d.revision, rev2);
    // The cached deny of the old revision is not served after the reload.
    assert!(handle.evaluate_connection(&json!({})).allow);

    // Syntax error: previous revision stays.
    std::fs::write(&path, "package signet.authz\nallow if {").unwrap();
    assert!(handle.reload().is_err());
    assert_eq!(handle.revision(), rev2);
    assert!(handle.evaluate(&json!({})).allow);

    // Parses but errors on evaluation: the smoke evaluation refuses it.
    std::fs::write(
        &path,
        "package signet.authz\nimport rego.v1\nallow := 1 / 0\n",
    )
    .unwrap();
    let err = handle.reload();
    assert!(err.is_err(), "{err:?}");
    assert_eq!(handle.revision(), rev2);

    // Unchanged content: no revision change.
    std::fs::write(
        &path,
        "package signet.authz\nimport rego.v1\ndefault allow := true\n",
    )
    .unwrap();
    assert!(!handle.reload().unwrap());
}

#[test]
fn missing_policy_refuses_to_start() {
    let err = PolicyHandle::load("/nonexistent/policy.wasm", PolicyOptions::default()).unwrap_err();
    assert!(matches!(err, PolicyError::Io { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_evaluation_from_many_tasks() {
    let wasm =
        Arc::new(Policy::load(fixture("envoy-http-authz/policy.wasm"), &envoy_opts()).unwrap());
    let rego = Arc::new(
        Policy::load(
            rego_dir().join("spiffe_allowlist.rego"),
            &PolicyOptions::default(),
        )
        .unwrap(),
    );
    let expected_wasm = wasm
        .evaluate(&json!({"attributes": {"request": {"http": {"method": "GET", "path": "/"}}}}));
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..64 {
        let (wasm, rego, expected_wasm) = (wasm.clone(), rego.clone(), expected_wasm.allow);
        tasks.spawn(async move {
            for i in 0..50 {
                let d = wasm.evaluate(
                    &json!({"attributes": {"request": {"http": {"method": "GET", "path": "/"}}}}),
                );
                assert_eq!(d.allow, expected_wasm);
                let good = (t + i) % 2 == 0;
                let peer = if good {
                    "spiffe://example.org/ns/web/a"
                } else {
                    "spiffe://evil.example/ns/web/a"
                };
                let d = rego.evaluate(&InputBuilder::default().peer_id(peer).build());
                assert_eq!(d.allow, good);
                tokio::task::yield_now().await;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
}

#[test]
fn example_rego_tests_pass() {
    let report = run_tests(rego_dir()).unwrap();
    let text = report.to_string();
    assert!(report.success(), "{text}");
    assert!(report.cases.len() >= 15, "{text}");
    assert!(
        text.contains("data.signet.authz.test_web_workload_allowed: PASS"),
        "{text}"
    );
}

#[test]
fn failing_rego_test_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.rego"),
        "package t\nimport rego.v1\ntest_ok if { 1 == 1 }\ntest_bad if { 1 == 2 }\n",
    )
    .unwrap();
    let report = run_tests(dir.path()).unwrap();
    assert_eq!((report.passed(), report.failed()), (1, 1));
    let text = report.to_string();
    assert!(text.contains("data.t.test_bad: FAIL"), "{text}");
    assert!(text.contains("FAIL: 1/2"), "{text}");
}

/// Polls `cond` until it holds, failing after a deadline (no fixed sleeps).
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Replaces `path` atomically (as editors and config-map updates do), so the
/// watcher never reads a half-written file.
fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn watcher_reloads_good_revisions_and_keeps_the_previous_on_broken_ones() {
    let dir = tempfile::tempdir().unwrap();
    let policy_dir = dir.path().join("policy");
    std::fs::create_dir(&policy_dir).unwrap();
    let file = policy_dir.join("authz.rego");
    let deny_all = "package signet.authz\nimport rego.v1\ndefault allow := false\n";
    std::fs::write(&file, deny_all).unwrap();
    let handle = Arc::new(
        PolicyHandle::load(&policy_dir, PolicyOptions::default())
            .unwrap()
            .with_decision_cache(100),
    );
    let watch = handle.watch(Duration::from_millis(10));
    let input = InputBuilder::default()
        .peer_id("spiffe://example.org/ns/web/sa/frontend")
        .build();
    let rev1 = handle.revision();
    assert!(!handle.evaluate_connection(&input).allow);

    // A good revision: decisions change, carrying the new revision.
    write_atomic(
        &file,
        "package signet.authz\nimport rego.v1\ndefault allow := false\nallow if input.spiffe.peer_trust_domain == \"example.org\"\n",
    );
    wait_for("the good revision", || handle.revision() != rev1);
    let rev2 = handle.revision();
    let d = handle.evaluate_connection(&input);
    assert!(d.allow, "{d:?}");
    assert_eq!(d.revision, rev2);
    assert_eq!(watch.reloads(), 1);
    assert_eq!(watch.failures(), 0);

    // Parses, but fails its smoke evaluation: the previous revision stays.
    write_atomic(
        &file,
        "package signet.authz\nimport rego.v1\nallow := 1 / 0\n",
    );
    wait_for("the failing revision to be refused", || {
        watch.failures() == 1
    });
    assert_eq!(handle.revision(), rev2);
    assert!(handle.evaluate_connection(&input).allow);

    // Does not parse (a new file in the directory): refused too.
    let broken = policy_dir.join("broken.rego");
    write_atomic(&broken, "package signet.authz\nallow if {");
    wait_for("the broken revision to be refused", || {
        watch.failures() == 2
    });
    assert_eq!(handle.revision(), rev2);
    assert!(handle.evaluate_connection(&input).allow);

    // Fixed: reloaded.
    write_atomic(&file, deny_all);
    wait_for("the still-broken revision to be refused", || {
        watch.failures() == 3
    });
    std::fs::remove_file(&broken).unwrap();
    wait_for("the fixed revision", || handle.revision() == rev1);
    assert!(!handle.evaluate_connection(&input).allow);
    // The count follows the swap the handle already shows.
    wait_for("the reload to be counted", || watch.reloads() == 2);

    // Stopping joins the thread promptly (it waits on a condvar, not a sleep).
    watch.stop();
}
