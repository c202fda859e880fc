//! Every OPA-compiled fixture case, through our wasm host, and (as a
//! differential test) through the `opa-wasm` crate.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::path::PathBuf;

use serde_json::Value;
use signet_policy::{Policy, PolicyOptions};

fn fixtures_dir() -> PathBuf {
    let dir = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/opa-wasm"
    ));
    assert!(
        dir.join("README.md").is_file(),
        "OPA wasm fixtures missing at {} (they are part of the repository)",
        dir.display()
    );
    dir
}

#[derive(Debug, Clone)]
struct Case {
    fixture: String,
    name: String,
    entrypoint: String,
    input: Value,
    data: Value,
    expected: Value,
    wasm: PathBuf,
}

fn cases() -> Vec<Case> {
    let dir = fixtures_dir();
    let mut out = Vec::new();
    let mut fixtures: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("read fixtures dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_dir())
        .collect();
    fixtures.sort();
    for f in fixtures {
        let default_data: Value = std::fs::read(f.join("data.json"))
            .ok()
            .map(|b| serde_json::from_slice(&b).expect("data.json"))
            .unwrap_or_else(|| serde_json::json!({}));
        let cases: Vec<Value> =
            serde_json::from_slice(&std::fs::read(f.join("cases.json")).expect("cases.json"))
                .expect("cases.json parses");
        for c in cases {
            out.push(Case {
                fixture: f.file_name().unwrap().to_string_lossy().into_owned(),
                name: c["name"].as_str().expect("name").to_string(),
                entrypoint: c["entrypoint"].as_str().expect("entrypoint").to_string(),
                input: c["input"].clone(),
                data: c
                    .get("data")
                    .cloned()
                    .unwrap_or_else(|| default_data.clone()),
                expected: c["expected"].clone(),
                wasm: f.join("policy.wasm"),
            });
        }
    }
    out
}

/// Exact, except that arrays (possibly Rego sets) may match in any order.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Array(x), Value::Array(y)) => {
            if x.len() != y.len() {
                return false;
            }
            if x.iter().zip(y).all(|(p, q)| same(p, q)) {
                return true;
            }
            let mut used = vec![false; y.len()];
            x.iter().all(|p| {
                y.iter().enumerate().any(|(i, q)| {
                    if !used[i] && same(p, q) {
                        used[i] = true;
                        true
                    } else {
                        false
                    }
                })
            })
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn load<'a>(cache: &'a mut HashMap<(PathBuf, String), Policy>, c: &Case) -> &'a Policy {
    cache
        .entry((c.wasm.clone(), c.data.to_string()))
        .or_insert_with(|| {
            let bytes = std::fs::read(&c.wasm).expect("read wasm");
            Policy::from_wasm(
                &bytes,
                &PolicyOptions::default()
                    .with_data(c.data.clone())
                    .with_entrypoint(c.entrypoint.clone()),
            )
            .unwrap_or_else(|e| panic!("{}: load failed: {e}", c.fixture))
        })
}

#[test]
fn every_fixture_case_passes() {
    let cases = cases();
    assert_eq!(cases.len(), 93, "fixture case count");
    let mut cache = HashMap::new();
    let mut failures = Vec::new();
    for c in &cases {
        let policy = load(&mut cache, c);
        // Twice: a reused instance must agree with the first run.
        for round in 0..2 {
            match policy.evaluate_entrypoint(&c.entrypoint, &c.input) {
                Ok(got) if same(&got, &c.expected) => {}
                Ok(got) => failures.push(format!(
                    "{}/{} (round {round}): got {got}, want {}",
                    c.fixture, c.name, c.expected
                )),
                Err(e) => failures.push(format!(
                    "{}/{} (round {round}): error {e}",
                    c.fixture, c.name
                )),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn check_reports_abi_entrypoints_and_builtins() {
    let dir = fixtures_dir();
    let p = signet_policy::check(
        dir.join("devportal-compliance/policy.wasm"),
        &PolicyOptions::default().with_entrypoint("alert"),
    )
    .expect("load");
    assert_eq!(p.builtins, vec!["sprintf".to_string()]);
    assert!(p.entrypoints.contains(&"component/query".to_string()));
    let p = signet_policy::check(
        dir.join("rbac-data-abi11/policy.wasm"),
        &PolicyOptions::default().with_entrypoint("example/allow"),
    )
    .expect("load abi 1.1");
    assert_eq!(p.abi, Some((1, 1)));
}

#[test]
fn unknown_entrypoint_is_refused_by_name() {
    let dir = fixtures_dir();
    let err = Policy::load(
        dir.join("envoy-http-authz/policy.wasm"),
        &PolicyOptions::default().with_entrypoint("exampel"),
    )
    .expect_err("the entrypoint is misspelt");
    let msg = err.to_string();
    assert!(
        msg.contains("\"exampel\" not found") && msg.contains("did you mean example?"),
        "{msg}"
    );
    // Unnamed, a module's only entrypoint is the one (as OPA's SDK takes
    // entrypoint 0); with several, the default must be among them.
    let p = Policy::load(
        dir.join("envoy-http-authz/policy.wasm"),
        &PolicyOptions::default(),
    )
    .unwrap();
    assert_eq!(p.entrypoint(), "example");
    let several = Policy::load(
        dir.join("devportal-compliance/policy.wasm"),
        &PolicyOptions::default(),
    )
    .expect_err("five entrypoints, none the default");
    assert!(
        several.to_string().contains("signet/authz/allow"),
        "{several}"
    );
}

/// The `opa-wasm` crate over the same cases: wherever it answers, it must
/// agree with us; it is known to fail only the host-`sprintf` cases.
#[tokio::test]
async fn differential_against_opa_wasm_crate() {
    use opa_wasm::wasmtime;
    let cases = cases();
    let engine = wasmtime::Engine::default();
    let mut ours = HashMap::new();
    let mut modules: HashMap<PathBuf, wasmtime::Module> = HashMap::new();
    let mut agreed = 0;
    let mut crate_failed = Vec::new();
    let mut disagreements = Vec::new();
    for c in &cases {
        let module = modules
            .entry(c.wasm.clone())
            .or_insert_with(|| {
                wasmtime::Module::new(&engine, std::fs::read(&c.wasm).expect("wasm"))
                    .expect("compile")
            })
            .clone();
        let mut store = wasmtime::Store::new(&engine, ());
        let theirs: anyhow::Result<Value> = async {
            let rt = opa_wasm::Runtime::new(&mut store, &module).await?;
            let policy = rt.with_data(&mut store, &c.data).await?;
            policy.evaluate(&mut store, &c.entrypoint, &c.input).await
        }
        .await;
        let mine = load(&mut ours, c)
            .evaluate_entrypoint(&c.entrypoint, &c.input)
            .expect("our host evaluates every case");
        match theirs {
            Ok(v) if same(&v, &mine) => agreed += 1,
            Ok(v) => {
                disagreements.push(format!("{}/{}: crate {v}, ours {mine}", c.fixture, c.name))
            }
            Err(_) => crate_failed.push(format!("{}/{}", c.fixture, c.name)),
        }
    }
    assert!(
        disagreements.is_empty(),
        "disagreements:\n{}",
        disagreements.join("\n")
    );
    assert!(
        crate_failed
            .iter()
            .all(|n| n.starts_with("devportal-compliance/")),
        "opa-wasm failed unexpected cases: {crate_failed:?}"
    );
    assert_eq!(agreed + crate_failed.len(), cases.len());
    assert!(agreed >= 87, "only {agreed} cases agreed");
}
