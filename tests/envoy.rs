//! End-to-end with the real Envoy: a server-side Envoy and a client-side
//! Envoy take their certificates and validation contexts from `signet run`
//! over SDS (the example configurations, with test ports; one Envoy on
//! DeltaSecrets, the others on StreamSecrets), and a request
//! crosses mTLS; an identity RBAC does not allow is refused; short TTLs
//! rotate Envoy's certificate without a restart; SDS recovers after the
//! agent restarts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;

#[test]
#[ignore = "needs root: runs processes under other uids (scripts/test runs it as root)"]
fn envoys_get_their_identities_over_sds_and_talk_mtls() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut c = Combined::start(dir.path(), &["--x509-svid-ttl", "20s"]);
    // The server Envoy runs as uid 65534, the client Envoy as 65533, an
    // intruder Envoy as 65532: the agent tells them apart by the kernel.
    for (id, uid) in [("server", 65534), ("client", 65533), ("intruder", 65532)] {
        c.entry_for_uid(&format!("spiffe://example.org/{id}"), uid);
    }
    let bin = envoy::binary(dir.path());
    let (_app, app) = start_app(dir.path());
    let sock = c.agent.clone();
    // Every listener and admin endpoint binds port 0; the ports are read
    // from Envoy's admin endpoint.
    let in_cfg = config(
        "inbound.yaml",
        &[
            ("port_value: 8443", "port_value: 0".into()),
            ("port_value: 8080", format!("port_value: {app}")),
            ("port_value: 9901", "port_value: 0".into()),
            ("path: /run/signet/agent.sock", format!("path: {sock}")),
        ],
        &dir.path().join("inbound.yaml"),
    );
    let server_envoy = envoy::start("envoy-server", &bin, &in_cfg, 65534, dir.path(), &[]);
    let inbound = server_envoy.listener_port("inbound");
    let admin_in = server_envoy.admin_port();
    // The client Envoy uses DeltaSecrets, the others StreamSecrets.
    let out_envoy = |name: &str, uid: u32, api: &str| {
        let cfg = config(
            "outbound.yaml",
            &[
                ("port_value: 15001", "port_value: 0".into()),
                ("port_value: 8443", format!("port_value: {inbound}")),
                ("port_value: 9902", "port_value: 0".into()),
                ("path: /run/signet/agent.sock", format!("path: {sock}")),
                ("api_type: GRPC", format!("api_type: {api}")),
            ],
            &dir.path().join(format!("{name}.yaml")),
        );
        let envoy = envoy::start(name, &bin, &cfg, uid, dir.path(), &[]);
        let port = envoy.listener_port("outbound");
        (envoy, port)
    };
    let (_client_envoy, outbound) = out_envoy("envoy-client", 65533, "DELTA_GRPC");
    let (_intruder_envoy, intruder) = out_envoy("envoy-intruder", 65532, "GRPC");

    // A request crosses client Envoy -> mTLS -> server Envoy -> app, which
    // sees the caller's SPIFFE ID.
    let body = eventually("a request through both Envoys", || {
        let (code, body) = curl(&format!("http://127.0.0.1:{outbound}/hello"));
        (code == 200).then_some(body)
    });
    assert!(body.contains("x-forwarded-client-cert"), "{body}");
    assert!(body.contains("URI=spiffe://example.org/client"), "{body}");

    // An identity RBAC does not list is refused.
    let code = eventually("the intruder's answer", || {
        let (code, _) = curl(&format!("http://127.0.0.1:{intruder}/hello"));
        (code == 403).then_some(code)
    });
    assert_eq!(code, 403);

    // Rotation: the server Envoy's certificate changes without a restart,
    // and requests keep working.
    let serial = |admin: u16| -> Option<String> {
        let (code, body) = curl(&format!("http://127.0.0.1:{admin}/certs"));
        if code != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["certificates"].as_array()?.iter().find_map(|c| {
            c["cert_chain"].as_array()?.first()?["serial_number"]
                .as_str()
                .map(str::to_owned)
        })
    };
    let first = eventually("the server Envoy's certificate", || serial(admin_in));
    let second = eventually("a rotated certificate in the server Envoy", || {
        serial(admin_in).filter(|s| *s != first)
    });
    assert_ne!(first, second);
    let (code, _) = curl(&format!("http://127.0.0.1:{outbound}/after-rotation"));
    assert_eq!(code, 200);
    // A new connection is handed the new certificate.
    let presented = eventually("the new certificate on a new connection", || {
        let s = presented_serial(inbound)?;
        (s == second.trim_start_matches('0')).then_some(s)
    });
    assert_eq!(presented, second.trim_start_matches('0'));

    // The agent restarts: Envoy's SDS streams reconnect by themselves and
    // the restarted agent's newly minted SVID reaches the server Envoy.
    assert!(c.proc.signal_and_wait("INT").success());
    let _c = Combined::start(dir.path(), &["--x509-svid-ttl", "20s"]);
    let third = eventually("a certificate from the restarted agent", || {
        serial(admin_in).filter(|s| *s != second && *s != first)
    });
    assert_ne!(third, second);
    let code = eventually("requests after the agent restart", || {
        let (code, _) = curl(&format!("http://127.0.0.1:{outbound}/after-restart"));
        (code == 200).then_some(code)
    });
    assert_eq!(code, 200);
}
