//! OIDC discovery with real processes: `signet run --oidc-listen` and
//! `signet oidc-provider` as relying parties meet them (curl for the
//! documents, a JWKS client built on `jsonwebtoken` that knows nothing
//! but the issuer's URL), and the settings they refuse.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use serde_json::Value;

/// GET with curl, trusting `ca` if given: the JSON body (asserts 200).
fn get_json(url: &str, ca: Option<&str>) -> Value {
    let mut args = vec![];
    if let Some(ca) = ca {
        args.extend(["--cacert", ca]);
    }
    args.push(url);
    let (code, body) = curl_with(&args);
    assert_eq!(code, 200, "{url}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// What a relying party does with nothing but the issuer: read discovery,
/// take the JWKS it names, find the token's key and check signature,
/// issuer and audience. Returns the claims.
fn verify_as_relying_party(issuer: &str, ca: Option<&str>, token: &str, aud: &str) -> Value {
    let discovery = get_json(&format!("{issuer}/.well-known/openid-configuration"), ca);
    assert_eq!(discovery["issuer"], issuer, "{discovery}");
    let jwks: JwkSet =
        serde_json::from_value(get_json(discovery["jwks_uri"].as_str().unwrap(), ca)).unwrap();
    let header = jsonwebtoken::decode_header(token).unwrap();
    let jwk = jwks
        .find(header.kid.as_deref().unwrap())
        .expect("the token's key is in the JWKS");
    let mut validation = Validation::new(header.alg);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[aud]);
    jsonwebtoken::decode::<Value>(token, &DecodingKey::from_jwk(jwk).unwrap(), &validation)
        .unwrap()
        .claims
}

fn jwt_for(c: &Combined, aud: &str) -> String {
    let out = eventually("a JWT-SVID", || {
        stdout_if_ok(c.api(&["fetch", "jwt", "--audience", aud, "--output", "json"]))
    });
    let doc: Value = serde_json::from_str(&out).unwrap();
    doc["svids"][0]["token"].as_str().unwrap().to_owned()
}

#[test]
fn signet_run_serves_oidc_discovery_that_verifies_its_jwt_svids() {
    let dir = tempfile::tempdir().unwrap();
    let c = Combined::start(dir.path(), &["--oidc-listen", "127.0.0.1:0"]);
    let (url, ca, issuer) = c.oidc();
    let ca = ca.expect("a self-signed provider names the CA to trust");
    assert!(issuer.starts_with("https://127.0.0.1:"), "{issuer}");
    assert_eq!(url, format!("{issuer}/.well-known/openid-configuration"));

    let doc = get_json(&url, Some(&ca));
    assert_eq!(doc["jwks_uri"], format!("{issuer}/keys"), "{doc}");
    assert!(
        doc["id_token_signing_alg_values_supported"]
            .as_array()
            .unwrap()
            .contains(&"ES256".into()),
        "{doc}"
    );
    // Real TLS: without the CA, curl refuses the certificate.
    let (code, _) = curl_with(&[&url]);
    assert_eq!(code, 0, "an untrusted certificate was accepted");

    // The JWKS holds exactly the bundle's JWT keys, as plain signing keys.
    let keys = get_json(&format!("{issuer}/keys"), Some(&ca));
    let bundle = c.admin(&["bundle", "show", "--format", "spiffe"]);
    let bundle: Value = serde_json::from_slice(&bundle.stdout).unwrap();
    let kids = |doc: &Value, use_: &str| -> Vec<String> {
        let mut v: Vec<String> = doc["keys"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|k| k["use"] == use_)
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect();
        v.sort();
        v
    };
    assert!(!kids(&keys, "sig").is_empty(), "{keys}");
    assert_eq!(kids(&keys, "sig"), kids(&bundle, "jwt-svid"));
    assert!(keys["keys"][0].get("x5c").is_none(), "{keys}");

    // A workload's JWT-SVID carries the issuer and verifies from discovery.
    let id = "spiffe://example.org/billing";
    c.entry_for_uid(id, uid());
    let token = jwt_for(&c, "bank-api");
    let claims = verify_as_relying_party(&issuer, Some(&ca), &token, "bank-api");
    assert_eq!(claims["sub"], id);
    assert_eq!(claims["iss"], issuer.as_str());

    // Only GET and HEAD; other paths are not found.
    let (code, _) = curl_with(&["--cacert", &ca, "-X", "POST", &url]);
    assert_eq!(code, 405);
    let (code, _) = curl_with(&["--cacert", &ca, &format!("{issuer}/authorize")]);
    assert_eq!(code, 404);
}

#[test]
fn a_provider_of_its_own_serves_the_servers_issuer_and_refuses_another() {
    let dir = tempfile::tempdir().unwrap();
    let provider = |extra: &[&str], admin: &str| {
        let mut cmd = signet();
        cmd.args([
            "oidc-provider",
            "--oidc-listen",
            "127.0.0.1:0",
            "--admin-socket",
            admin,
        ])
        .arg("--data-dir")
        .arg(dir.path().join("oidc"))
        .args(extra);
        cmd
    };
    {
        // A server that puts no issuer in its JWT-SVIDs.
        let c = Combined::start(dir.path(), &[]);
        let out = provider(&[], &c.admin).output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("without an issuer"), "{err}");
    }
    // Behind a TLS proxy at https://oidc.example.test: plain HTTP here.
    let issuer = "https://oidc.example.test";
    let c = Combined::start(dir.path(), &["--jwt-issuer", issuer]);
    let out = provider(
        &[
            "--oidc-insecure-http",
            "--jwt-issuer",
            "https://other.example.test",
        ],
        &c.admin,
    )
    .output()
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is not the server's (https://oidc.example.test)"),
        "{err}"
    );

    let mut p = Proc::spawn(
        "oidc-provider",
        provider(&["--oidc-insecure-http"], &c.admin),
        dir.path(),
    );
    let addr = p.reported_addr("listen");
    let doc = get_json(
        &format!("http://{addr}/.well-known/openid-configuration"),
        None,
    );
    assert_eq!(doc["issuer"], issuer, "{doc}");
    assert_eq!(doc["jwks_uri"], format!("{issuer}/keys"));
    // The proxy may keep the issuer's path or strip it: both are served.
    let keys = get_json(&format!("http://{addr}/keys"), None);
    c.entry_for_uid("spiffe://example.org/billing", uid());
    let token = jwt_for(&c, "bank-api");
    let kid = jsonwebtoken::decode_header(&token).unwrap().kid.unwrap();
    assert!(
        keys["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["kid"] == kid.as_str()),
        "the token's key {kid} is not served: {keys}"
    );
}

#[test]
fn oidc_settings_that_cannot_work_are_refused_by_name() {
    for (args, want) in [
        (
            &[
                "--oidc-listen",
                "127.0.0.1:0",
                "--jwt-issuer",
                "http://oidc.example.test",
            ][..],
            "serves HTTPS",
        ),
        (
            &["--oidc-cert", "/nonexistent.pem"][..],
            "need listen (--oidc-listen)",
        ),
        (
            &[
                "--oidc-listen",
                "127.0.0.1:0",
                "--oidc-cert",
                "/nonexistent.pem",
            ][..],
            "cert and key go together",
        ),
        (
            &["--jwt-issuer", "oidc.example.test"][..],
            "jwt_issuer \"oidc.example.test\"",
        ),
        (
            &["--oidc-listen", "0.0.0.0:0"][..],
            "set jwt_issuer (--jwt-issuer)",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut all = vec![
            "server",
            "--check-config",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ];
        all.extend(["--admin-socket", "x.sock"]);
        all.extend(args);
        let out = run(&all);
        assert!(!out.status.success(), "{args:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

#[test]
fn the_provider_presents_a_certificate_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let web = signet_testkit::pki::TestCa::new("web roots");
    let ca = web.write(dir.path(), "roots");
    let leaf = web.leaf(&signet_testkit::pki::Leaf {
        dns: &["oidc.localhost"],
        ..Default::default()
    });
    let cert = leaf.write(dir.path(), "oidc");
    let key = dir.path().join("oidc.key");
    let c = Combined::start(
        dir.path(),
        &[
            "--oidc-listen",
            "127.0.0.1:0",
            "--oidc-cert",
            cert.to_str().unwrap(),
            "--oidc-key",
            key.to_str().unwrap(),
        ],
    );
    let (url, self_signed, issuer) = c.oidc();
    assert!(self_signed.is_none(), "a file certificate named a local CA");
    let port = issuer.rsplit(':').next().unwrap();
    // The certificate names oidc.localhost: reached by that name, it verifies.
    let by_name = url.replace("127.0.0.1", "oidc.localhost");
    let (code, body) = curl_with(&[
        "--cacert",
        ca.to_str().unwrap(),
        "--resolve",
        &format!("oidc.localhost:{port}:127.0.0.1"),
        &by_name,
    ]);
    assert_eq!(code, 200, "{body}");
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["issuer"], issuer.as_str());
}
