//! Server and agent as operable services: `--health-listen` on `signet
//! server`, `signet agent` and `signet run`, its `/metrics` read by
//! Prometheus' own text-format parser (Python `prometheus_client`), and the
//! log level reread from the config file on SIGHUP.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::process::Command;

use common::*;
use serde_json::Value;

/// Every sample of the endpoint's /metrics as Prometheus parses them:
/// `{"name{label=value,...}": value}`, labels sorted.
const PARSE: &str = r#"
import json, sys, urllib.request
from prometheus_client.parser import text_string_to_metric_families
text = urllib.request.urlopen(sys.argv[1], timeout=5).read().decode()
out = {}
for family in text_string_to_metric_families(text):
    for s in family.samples:
        labels = ",".join("%s=%s" % kv for kv in sorted(s.labels.items()))
        out["%s{%s}" % (s.name, labels)] = s.value
print(json.dumps(out))
"#;

fn scrape(addr: SocketAddr) -> serde_json::Map<String, Value> {
    let out = Command::new("python3")
        .args(["-c", PARSE, &format!("http://{addr}/metrics")])
        .output()
        .unwrap();
    match json_stdout(&out) {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

/// The value of the one sample named `name` whose labels include every
/// `label=value` of `labels`.
fn sample(m: &serde_json::Map<String, Value>, name: &str, labels: &[&str]) -> Option<f64> {
    m.iter()
        .find(|(k, _)| {
            k.split_once('{').is_some_and(|(n, rest)| {
                n == name
                    && labels
                        .iter()
                        .all(|l| rest.trim_end_matches('}').split(',').any(|x| x == *l))
            })
        })
        .and_then(|(_, v)| v.as_f64())
}

fn ready(addr: SocketAddr) -> (u16, String) {
    curl(&format!("http://{addr}/ready"))
}

#[test]
fn signet_run_serves_server_and_agent_metrics_to_prometheus() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Combined::start(dir.path(), &["--health-listen", "127.0.0.1:0"]);
    let health = c.proc.reported_addr("health");
    c.entry_for_uid("spiffe://example.org/web", uid());
    ok(&["api", "fetch", "x509", "--agent-socket", &c.agent]);
    let (code, body) = eventually("the server and agent to be ready", || {
        let r = ready(health);
        (r.0 == 200).then_some(r)
    });
    assert_eq!(code, 200);
    assert!(body.contains("server: datastore at revision"), "{body}");
    assert!(body.contains("agent: "), "{body}");

    let m = scrape(health);
    let has = |name: &str, labels: &[&str]| {
        sample(&m, name, labels)
            .unwrap_or_else(|| panic!("no {name} {labels:?} in {:?}", m.keys().collect::<Vec<_>>()))
    };
    // Admin and node API calls by method and code.
    assert!(
        has(
            "signet_server_api_calls_total",
            &["api=admin", "method=CreateEntry", "code=Ok"]
        ) >= 1.0
    );
    assert!(has("signet_server_api_calls_total", &["api=node", "code=Ok"]) >= 1.0);
    assert!(has("signet_server_api_call_seconds_count", &["api=node"]) >= 1.0);
    // Signing and the datastore.
    assert!(
        has(
            "signet_server_svids_signed_total",
            &["kind=x509", "result=ok"]
        ) >= 1.0
    );
    assert!(has("signet_server_signing_seconds_count", &["kind=x509"]) >= 1.0);
    assert!(
        has(
            "signet_server_datastore_seconds_count",
            &["op=create_entry"]
        ) >= 1.0
    );
    assert_eq!(has("signet_server_datastore_up", &[]), 1.0);
    // The local agent's subscription, the CA, the agent's SVIDs.
    assert!(has("signet_server_agent_subscriptions", &[]) >= 1.0);
    assert!(has("signet_server_ca_x509_expires_in_seconds", &[]) > 3600.0);
    assert!(has("signet_server_bundle_sequence", &[]) >= 1.0);
    assert_eq!(has("signet_agent_healthy", &[]), 1.0);
    assert!(has("signet_agent_svids", &[]) >= 1.0);
    assert_eq!(has("signet_agent_svids_past_rotation", &[]), 0.0);
    assert_eq!(has("signet_agent_rotation_lag_seconds", &[]), 0.0);
}

#[test]
fn a_separate_server_and_agent_each_serve_health_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, admin, node) = start_server(
        dir.path(),
        "127.0.0.1:0",
        &["--health-listen", "127.0.0.1:0"],
    );
    let server_health = server.reported_addr("health");
    let (code, body) = eventually("the server to be ready", || {
        let r = ready(server_health);
        (r.0 == 200).then_some(r)
    });
    assert!(
        body.contains("server: datastore at revision"),
        "{code} {body}"
    );

    let bundle = dir.path().join("bundle.pem");
    std::fs::write(&bundle, ok(&["bundle", "show", "--socket", &admin])).unwrap();
    let token: Value = serde_json::from_str(&ok(&[
        "token", "generate", "--socket", &admin, "--output", "json",
    ]))
    .unwrap();
    let agent_socket = dir.path().join("agent.sock");
    let mut cmd = signet();
    cmd.args([
        "agent",
        "--server-address",
        &node.to_string(),
        "--trust-bundle",
    ])
    .arg(&bundle)
    .args([
        "--join-token",
        token["token"].as_str().unwrap(),
        "--data-dir",
    ])
    .arg(dir.path().join("agent"))
    .arg("--agent-socket")
    .arg(&agent_socket)
    .args(["--health-listen", "127.0.0.1:0"]);
    let mut agent = Proc::spawn("signet-agent", cmd, dir.path());
    let agent_health = agent.reported_addr("health");
    eventually("the agent to be ready", || {
        (ready(agent_health).0 == 200).then_some(())
    });

    // The server counts the agent's attestation and holds its subscription;
    // the agent's endpoint has the agent's metrics and none of the server's.
    let m = scrape(server_health);
    assert!(
        sample(
            &m,
            "signet_server_api_calls_total",
            &["api=node", "method=Attest", "code=Ok"]
        )
        .is_some_and(|v| v >= 1.0),
        "{m:?}"
    );
    eventually("the agent's subscription on the server", || {
        let m = scrape(server_health);
        (sample(&m, "signet_server_agent_subscriptions", &[]) == Some(1.0)).then_some(())
    });
    let m = scrape(agent_health);
    assert_eq!(sample(&m, "signet_agent_healthy", &[]), Some(1.0), "{m:?}");
    assert!(!m.keys().any(|k| k.starts_with("signet_server_")), "{m:?}");
}

#[test]
fn sighup_rereads_the_log_level_from_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("server.toml");
    std::fs::write(&config, "log_level = \"warn\"\n").unwrap();
    let c = Combined::start(dir.path(), &["--config", config.to_str().unwrap()]);
    let filter = || {
        let out = c.admin(&["logger", "get", "--output", "json"]);
        json_stdout(&out)["filter"].as_str().unwrap().to_owned()
    };
    // The file's level is in force from the start.
    assert_eq!(filter(), "warn");
    let hup = || {
        assert!(
            Command::new("kill")
                .args(["-HUP", &c.proc.pid().to_string()])
                .status()
                .unwrap()
                .success()
        );
    };
    std::fs::write(&config, "log_level = \"debug,signet=trace\"\n").unwrap();
    hup();
    eventually("the new level after SIGHUP", || {
        (filter() == "debug,signet=trace").then_some(())
    });
    // A level that does not parse changes nothing and says why.
    std::fs::write(&config, "log_level = \"signet=nonsense\"\n").unwrap();
    hup();
    eventually("the refusal in the log", || {
        c.proc
            .log_text()
            .contains("the config file's log_level is invalid")
            .then_some(())
    });
    assert_eq!(filter(), "debug,signet=trace");
    // An invalid level at start fails the start, naming it.
    std::fs::write(&config, "log_level = \"signet=nonsense\"\n").unwrap();
    let other = dir.path().join("other");
    fails_saying(
        &[
            "run",
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            other.to_str().unwrap(),
        ],
        "log_level \"signet=nonsense\"",
    );
}
