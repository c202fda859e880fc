//! The SPIFFE bundle endpoint of a real `signet run`, as clients outside
//! our stack meet it: curl (OpenSSL) fetches the bundle JSON, openssl
//! shows the SVID it presents.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use common::*;

/// The address after `bundle endpoint https://` in a banner.
fn endpoint_addr(banner: &str) -> String {
    banner
        .lines()
        .find_map(|l| l.trim().strip_prefix("bundle endpoint https://"))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("the banner names no bundle endpoint:\n{banner}"))
        .to_owned()
}

#[test]
fn signet_run_serves_its_bundle_at_a_spiffe_bundle_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let c = Combined::start(
        dir.path(),
        &[
            "--federation-listen",
            "127.0.0.1:0",
            "--federation-refresh-hint",
            "90s",
        ],
    );
    let banner = c.proc.seen.join("\n");
    assert!(
        banner.contains("(SPIFFE federation, https_spiffe: presents example.org's server SVID)"),
        "{banner}"
    );
    let addr = endpoint_addr(&banner);

    // curl, an OpenSSL client: the endpoint's certificate is the server's
    // SVID, which no web root vouches for (-k); the body is the bundle.
    let (code, body) = curl_with(&["-k", &format!("https://{addr}/")]);
    assert_eq!(code, 200, "{body}");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["spiffe_refresh_hint"], 90, "{doc}");
    assert!(doc["spiffe_sequence"].as_u64().unwrap() >= 1, "{doc}");
    let keys = doc["keys"].as_array().unwrap();
    assert!(keys.iter().any(|k| k["use"] == "x509-svid"), "{doc}");
    assert!(keys.iter().any(|k| k["use"] == "jwt-svid"), "{doc}");
    // The same keys `signet bundle show --format spiffe` prints.
    let shown = c.admin(&["bundle", "show", "--format", "spiffe"]);
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["keys"], doc["keys"]);

    // The certificate presented is the server's X509-SVID.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {addr} </dev/null 2>/dev/null | openssl x509 -noout -ext subjectAltName"
        ))
        .output()
        .unwrap();
    let san = String::from_utf8_lossy(&out.stdout);
    assert!(
        san.contains("URI:spiffe://example.org/signet/server"),
        "{san}"
    );

    // Anything but GET is refused.
    let (code, _) = curl_with(&["-k", "-X", "DELETE", &format!("https://{addr}/")]);
    assert_eq!(code, 405);
}

#[test]
fn a_federation_setting_without_its_listen_address_is_refused() {
    let out = run(&[
        "server",
        "--federation-refresh-hint",
        "1m",
        "--check-config",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("need listen (--federation-listen)"), "{err}");
}
