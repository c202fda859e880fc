//! The Check service as Envoy meets it: a gRPC client over a Unix socket
//! (tonic, HTTP/2 as Envoy's client speaks it), OPA-Envoy style Rego
//! policies, and the responses the OPA-Envoy plugin gives for them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use envoy_types::pb::google::protobuf::value::Kind;
use serde_json::json;
use signet_extauthz::{ExtAuthz, input::check_input};
use signet_policy::{PolicyHandle, PolicyOptions};

const BY_CALLER: &str = r#"package envoy.authz
import rego.v1
default allow := false
allow if {
    input.attributes.request.http.method == "GET"
    input.parsed_path == ["api", "v1", "hello"]
    input.spiffe.peer_id == "spiffe://example.org/web"
}
"#;

const OBJECT_FORM: &str = r#"package envoy.authz
import rego.v1
default allow := {"allowed": false, "http_status": 401, "body": "who are you?", "headers": {"x-reason": "no user"}}
allow := {
    "allowed": true,
    "headers": {"x-user": input.parsed_body.user},
    "request_headers_to_remove": ["authorization"],
    "response_headers_to_add": {"x-checked": ["yes", "twice"]},
    "dynamic_metadata": {"user": input.parsed_body.user, "decision_id": "from the policy"},
} if input.parsed_body.user == "alice"
"#;

fn service(dir: &std::path::Path, rego: &str) -> ExtAuthz {
    let path = dir.join("policy.rego");
    std::fs::write(&path, rego).unwrap();
    let options = PolicyOptions::default().with_entrypoint("envoy/authz/allow");
    ExtAuthz::new(Arc::new(PolicyHandle::load(&path, options).unwrap()))
}

fn peer(principal: &str, ip: &str, port: u32) -> Peer {
    Peer {
        address: Some(Address {
            address: Some(AddressKind::SocketAddress(SocketAddress {
                address: ip.into(),
                port_specifier: Some(PortSpecifier::PortValue(port)),
                ..SocketAddress::default()
            })),
        }),
        principal: principal.into(),
        ..Peer::default()
    }
}

fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(peer("spiffe://example.org/web", "10.0.0.1", 51000)),
            destination: Some(peer("spiffe://example.org/api", "10.0.0.2", 8443)),
            request: Some(Request {
                http: Some(HttpRequest {
                    id: "42".into(),
                    method: method.into(),
                    path: path.into(),
                    host: "api.local".into(),
                    protocol: "HTTP/1.1".into(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect::<HashMap<_, _>>(),
                    body: body.into(),
                    size: i64::try_from(body.len()).unwrap(),
                    ..HttpRequest::default()
                }),
                ..Request::default()
            }),
            ..AttributeContext::default()
        }),
    }
}

fn code(r: &CheckResponse) -> i32 {
    r.status.as_ref().unwrap().code
}

#[test]
fn the_input_has_the_plugins_shape() {
    let req = request(
        "POST",
        "//api/v1%2Fsub/?a=1&a=2&b=x+y&c",
        &[
            ("content-type", "application/json; charset=utf-8"),
            ("content-length", "17"),
        ],
        r#"{"user": "alice"}"#,
    );
    let input = check_input(&req).unwrap();
    assert_eq!(input["parsed_path"], json!(["api", "v1", "sub", ""]));
    assert_eq!(
        input["parsed_query"],
        json!({"a": ["1", "2"], "b": ["x y"], "c": [""]})
    );
    assert_eq!(input["parsed_body"], json!({"user": "alice"}));
    assert_eq!(input["truncated_body"], false);
    assert_eq!(input["source_principal"], "spiffe://example.org/web");
    assert_eq!(
        input["version"],
        json!({"ext_authz": "v3", "encoding": "protojson"})
    );
    let attrs = &input["attributes"];
    assert_eq!(
        attrs["source"]["address"],
        json!({"socketAddress": {"address": "10.0.0.1", "portValue": 51000}}),
        "populated fields only, protobuf JSON names, numbers as numbers"
    );
    assert_eq!(attrs["request"]["http"]["size"], 17);
    assert_eq!(attrs["request"]["http"]["host"], "api.local");
    assert!(attrs["request"]["http"].get("scheme").is_none(), "{attrs}");
    assert_eq!(input["spiffe"]["peer_trust_domain"], "example.org");
    assert_eq!(input["spiffe"]["own_path"], "/api");

    // More announced than arrived: truncated, not parsed.
    let cut = request(
        "POST",
        "/",
        &[
            ("content-type", "application/json"),
            ("content-length", "99"),
        ],
        "{\"us",
    );
    let input = check_input(&cut).unwrap();
    assert_eq!(
        (
            input["parsed_body"].clone(),
            input["truncated_body"].clone()
        ),
        (json!(null), json!(true))
    );
    // A form body.
    let form = request(
        "POST",
        "/",
        &[("content-type", "application/x-www-form-urlencoded")],
        "user=bob&x=1",
    );
    assert_eq!(
        check_input(&form).unwrap()["parsed_body"],
        json!({"user": ["bob"], "x": ["1"]})
    );
}

#[test]
fn requests_that_cannot_be_parsed_are_denied_with_400_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let authz = service(dir.path(), BY_CALLER);
    for (path, headers, body, why) in [
        ("/a%zz", &[][..], "", "invalid URL escape \"%zz\""),
        ("/a?x=1;y=2", &[][..], "", "semicolon"),
        (
            "/",
            &[("content-type", "application/json")][..],
            "{not json",
            "not valid JSON",
        ),
        (
            "/",
            &[
                ("content-type", "application/json"),
                ("content-length", "ten"),
            ][..],
            "{}",
            "content-length",
        ),
    ] {
        let r = authz.decide(&request("GET", path, headers, body)).unwrap();
        assert_eq!(code(&r), 7, "{path}");
        let Some(HttpResponse::DeniedResponse(d)) = &r.http_response else {
            panic!("{path}: {r:?}")
        };
        assert_eq!(d.status.as_ref().unwrap().code, 400);
        assert!(
            d.body.starts_with("request_parse_error: ") && d.body.contains(why),
            "{}",
            d.body
        );
    }
}

#[test]
fn a_boolean_decision_allows_or_denies_with_envoys_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let authz = service(dir.path(), BY_CALLER);
    let r = authz
        .decide(&request("GET", "/api/v1/hello", &[], ""))
        .unwrap();
    assert_eq!(code(&r), 0);
    assert!(
        r.http_response.is_none(),
        "a boolean decision sets no HTTP response"
    );
    let id = match r.dynamic_metadata.unwrap().fields["decision_id"]
        .kind
        .clone()
    {
        Some(Kind::StringValue(s)) => s,
        other => panic!("{other:?}"),
    };
    assert_eq!(id.len(), 36);
    assert_eq!(&id[14..15], "4", "a UUIDv4: {id}");

    for (method, path) in [("POST", "/api/v1/hello"), ("GET", "/api/v1/other")] {
        let r = authz.decide(&request(method, path, &[], "")).unwrap();
        assert_eq!(code(&r), 7, "{method} {path}");
        assert!(r.http_response.is_none());
    }
    // Dry run: the denial becomes an empty allow.
    let dry = authz.clone().dry_run(true);
    let r = dry
        .decide(&request("POST", "/api/v1/hello", &[], ""))
        .unwrap();
    assert_eq!(code(&r), 0);
    assert!(matches!(r.http_response, Some(HttpResponse::OkResponse(_))));
}

#[test]
fn an_object_decision_sets_headers_status_body_and_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let authz = service(dir.path(), OBJECT_FORM);
    let json = [("content-type", "application/json")];
    let r = authz
        .decide(&request("POST", "/", &json, r#"{"user": "alice"}"#))
        .unwrap();
    assert_eq!(code(&r), 0);
    let Some(HttpResponse::OkResponse(ok)) = &r.http_response else {
        panic!("{r:?}")
    };
    let pairs = |h: &[envoy_types::pb::envoy::config::core::v3::HeaderValueOption]| -> Vec<(String, String)> {
        let mut v: Vec<_> = h
            .iter()
            .map(|o| {
                let h = o.header.as_ref().unwrap();
                (h.key.clone(), h.value.clone())
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        pairs(&ok.headers),
        [("x-user".to_owned(), "alice".to_owned())]
    );
    assert_eq!(ok.headers_to_remove, ["authorization"]);
    assert_eq!(
        pairs(&ok.response_headers_to_add),
        [
            ("x-checked".to_owned(), "twice".to_owned()),
            ("x-checked".to_owned(), "yes".to_owned())
        ]
    );
    let md = r.dynamic_metadata.unwrap();
    assert_eq!(
        md.fields["user"].kind,
        Some(Kind::StringValue("alice".into()))
    );
    assert_ne!(
        md.fields["decision_id"].kind,
        Some(Kind::StringValue("from the policy".into())),
        "the decision id overrides the policy's"
    );

    let r = authz
        .decide(&request("POST", "/", &json, r#"{"user": "mallory"}"#))
        .unwrap();
    assert_eq!(code(&r), 7);
    let Some(HttpResponse::DeniedResponse(denied)) = &r.http_response else {
        panic!("{r:?}")
    };
    assert_eq!(denied.status.as_ref().unwrap().code, 401);
    assert_eq!(denied.body, "who are you?");
    assert_eq!(
        pairs(&denied.headers),
        [("x-reason".to_owned(), "no user".to_owned())]
    );
}

#[test]
fn results_of_the_wrong_shape_are_errors_not_decisions() {
    let dir = tempfile::tempdir().unwrap();
    for (result, why) in [
        (
            r#""yes""#,
            "illegal value for policy evaluation result: string",
        ),
        (r#"{"allow": true}"#, "missing \"allowed\" key"),
        (
            r#"{"allowed": "true"}"#,
            "expected allowed to be of type 'boolean'",
        ),
        (
            r#"{"allowed": false, "http_status": 418}"#,
            "invalid HTTP status code 418",
        ),
        (
            r#"{"allowed": true, "request_headers_to_remove": "authorization"}"#,
            "[]string",
        ),
        (
            r#"{"allowed": false, "headers": {"x": 1}}"#,
            "type assertion error for header 'x'",
        ),
    ] {
        let rego = format!("package envoy.authz\nallow := {result}\n");
        let authz = service(dir.path(), &rego);
        let e = authz.decide(&request("GET", "/", &[], "")).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unknown, "{result}");
        assert!(e.message().contains(why), "{result}: {}", e.message());
    }
    // Undefined is an error too (policies say `default allow := false`).
    let authz = service(
        dir.path(),
        "package envoy.authz\nimport rego.v1\nallow if input.nothing\n",
    );
    let e = authz.decide(&request("GET", "/", &[], "")).unwrap_err();
    assert_eq!(e.message(), "undefined decision");
}

/// Over a Unix socket, as Envoy's gRPC client reaches the agent socket.
#[tokio::test]
async fn check_is_served_over_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let authz = service(dir.path(), BY_CALLER);
    let sock = dir.path().join("authz.sock");
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(authz.into_service())
            .serve_with_incoming(incoming),
    );
    let channel = signet_workload::channel(sock).await.unwrap();
    let mut client = AuthorizationClient::new(channel);
    let allowed = client
        .check(request("GET", "/api/v1/hello", &[], ""))
        .await
        .unwrap();
    assert_eq!(code(allowed.get_ref()), 0);
    let denied = client
        .check(request("DELETE", "/api/v1/hello", &[], ""))
        .await
        .unwrap();
    assert_eq!(code(denied.get_ref()), 7);
}

#[test]
fn every_decision_is_logged_with_credentials_masked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("decisions.log");
    let log = signet_extauthz::log::DecisionLog::open(&path)
        .unwrap()
        .with_masks(["/input/parsed_query".to_owned()]);
    let authz = service(dir.path(), BY_CALLER).with_decision_log(Arc::new(log));
    let headers = [("authorization", "Bearer s3cr3t"), ("x-trace", "t1")];
    let allowed = authz
        .decide(&request("GET", "/api/v1/hello?token=abc", &headers, ""))
        .unwrap();
    authz
        .clone()
        .dry_run(true)
        .decide(&request("PUT", "/api/v1/hello", &headers, ""))
        .unwrap();
    authz.decide(&request("GET", "/bad%zz", &[], "")).unwrap();

    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains("s3cr3t"), "{text}");
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 3, "{text}");
    let id = match &allowed.dynamic_metadata.unwrap().fields["decision_id"].kind {
        Some(Kind::StringValue(s)) => s.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(events[0]["decision_id"], id.as_str());
    assert_eq!(events[0]["path"], "envoy/authz/allow");
    assert_eq!(events[0]["result"], true);
    assert_eq!(events[0]["allowed"], true);
    assert_eq!(
        events[0]["input"]["attributes"]["request"]["http"]["headers"]["x-trace"],
        "t1"
    );
    assert!(
        events[0]["input"]["attributes"]["request"]["http"]["headers"]
            .get("authorization")
            .is_none()
    );
    assert!(
        events[0]["input"].get("parsed_query").is_none(),
        "the custom mask"
    );
    assert_eq!(events[0]["revision"].as_str().unwrap().len(), 64);
    // The dry run logs the real result and says it was a dry run.
    assert_eq!(
        (events[1]["result"].clone(), events[1]["dry_run"].clone()),
        (json!(false), json!(true))
    );
    // An unparseable request: the error, no input.
    assert!(
        events[2]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("invalid URL escape")
    );
    assert_eq!(events[2]["input"], json!(null));
}

/// The OPA-compiled `envoy-http-authz` module (entrypoint `example`,
/// asked for `example/allow` as the OPA-Envoy plugin's `path`): for each
/// of its cases, Check decides as `signet policy eval` does on the input
/// Check builds, and as the official OPA Wasm SDK recorded.
#[test]
fn the_opa_wasm_fixture_decides_through_check_as_policy_eval_and_opa() {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../policy/tests/fixtures/opa-wasm/envoy-http-authz"
    );
    let cases: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(format!("{dir}/cases.json")).unwrap())
            .unwrap();
    let options = PolicyOptions::default().with_entrypoint("example/allow");
    let handle = Arc::new(PolicyHandle::load(format!("{dir}/policy.wasm"), options).unwrap());
    let authz = ExtAuthz::new(handle.clone());
    let mut compared = 0;
    for case in &cases {
        let http = &case["input"]["attributes"]["request"]["http"];
        // Only cases a CheckRequest can carry: string method, path, headers.
        let (Some(method), Some(path), Some(headers)) = (
            http["method"].as_str(),
            http["path"].as_str(),
            http["headers"].as_object(),
        ) else {
            continue;
        };
        let Some(headers) = headers
            .iter()
            .map(|(k, v)| v.as_str().map(|v| (k.as_str(), v)))
            .collect::<Option<Vec<_>>>()
        else {
            continue;
        };
        let req = request(method, path, &headers, "");
        let opa = case["expected"][0]["result"]["allow"] == json!(true);
        let eval = handle.evaluate(&check_input(&req).unwrap()).allow;
        let check = code(&authz.decide(&req).unwrap()) == 0;
        assert_eq!((check, eval), (opa, opa), "case {}", case["name"]);
        compared += 1;
    }
    assert!(compared >= 5, "only {compared} cases compared");
}

/// `examples/envoy/authz.rego` with the trust domain's JWT keys in its data
/// as the agent provides them: each request decided through Check as
/// `policy eval` decides the input Check builds, and as the example says.
#[test]
fn the_envoy_example_decides_through_check_as_policy_eval() {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    use base64::Engine as _;
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/envoy/authz.rego");
    let options = PolicyOptions::default().with_entrypoint("envoy/authz/allow");
    let handle = Arc::new(PolicyHandle::load(path, options).unwrap());
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
    let point = pair.public_key().as_ref();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1",
        "x": b64(&point[1..33]), "y": b64(&point[33..65])}]});
    handle
        .set_overlay(
            "signet",
            json!({"jwt_bundles": {"example.org": jwks.to_string()}}),
        )
        .unwrap();
    let token = |sub: &str, aud: &str| {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some("k1".into());
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 300;
        let claims = json!({"sub": sub, "aud": [aud], "exp": exp});
        let key = jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref());
        format!(
            "Bearer {}",
            jsonwebtoken::encode(&header, &claims, &key).unwrap()
        )
    };
    let client = "spiffe://example.org/client";
    let own = token(client, "orders");
    let other_aud = token(client, "billing");
    let others = token("spiffe://example.org/other", "orders");
    let cases: [(&str, &str, &str, Option<&str>, bool); 8] = [
        (client, "GET", "/", None, true),
        (client, "GET", "/orders", None, true),
        ("spiffe://example.org/other", "GET", "/", None, false),
        (client, "POST", "/orders", Some(&own), true),
        (client, "POST", "/orders", None, false),
        (client, "POST", "/orders", Some(&other_aud), false),
        (client, "POST", "/orders", Some(&others), false),
        (client, "POST", "/refunds", Some(&own), false),
    ];
    let authz = ExtAuthz::new(handle.clone());
    for (caller, method, path, auth, want) in cases {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        let mut req = request(method, path, &headers, "");
        let attrs = req.attributes.as_mut().unwrap();
        attrs.source.as_mut().unwrap().principal = caller.into();
        let eval = handle.evaluate(&check_input(&req).unwrap()).allow;
        let check = code(&authz.decide(&req).unwrap()) == 0;
        assert_eq!(
            (check, eval),
            (want, want),
            "{caller} {method} {path} {auth:?}"
        );
    }
}

/// Decisions are remembered by what the policy reads, only where nothing
/// else (clock, chance, network, the whole input) can change them, and
/// never across revisions.
#[test]
fn the_decision_cache_keeps_what_the_policy_allows_it_to() {
    let dir = tempfile::tempdir().unwrap();
    let authz = service(dir.path(), BY_CALLER).with_decision_cache(100);
    let allowed = |authz: &ExtAuthz, id: &str, path: &str| {
        let mut req = request("GET", path, &[("x-request-id", id)], "");
        let http = req.attributes.as_mut().unwrap().request.as_mut().unwrap();
        http.http.as_mut().unwrap().id = id.into();
        code(&authz.decide(&req).unwrap()) == 0
    };
    // Two requests that differ only in what the policy does not read: one
    // evaluation, one entry.
    assert!(allowed(&authz, "1", "/api/v1/hello"));
    assert!(allowed(&authz, "2", "/api/v1/hello"));
    assert_eq!(authz.cached(), 1);
    assert!(!allowed(&authz, "3", "/api/v1/other"));
    assert_eq!(authz.cached(), 2);

    // A new revision that denies everything: the cached allow is not used.
    std::fs::write(
        dir.path().join("policy.rego"),
        "package envoy.authz\nimport rego.v1\ndefault allow := false\nallow if input.attributes.request.http.method == \"NONE\"\n",
    )
    .unwrap();
    authz.policy().reload().unwrap();
    assert!(!allowed(&authz, "4", "/api/v1/hello"));

    // The clock, or the whole input: nothing cached.
    for rego in [
        "package envoy.authz\nimport rego.v1\ndefault allow := false\nallow if time.now_ns() > 0\n",
        "package envoy.authz\nimport rego.v1\ndefault allow := false\nallow if count(input) > 0\n",
        "package envoy.authz\nimport rego.v1\ndefault allow := false\nallow if io.jwt.decode_verify(input.attributes.request.http.headers.authorization, {\"secret\": \"k\"})[0]\n",
    ] {
        let d = tempfile::tempdir().unwrap();
        let authz = service(d.path(), rego).with_decision_cache(100);
        allowed(&authz, "1", "/");
        allowed(&authz, "2", "/");
        assert_eq!(authz.cached(), 0, "{rego}");
    }
}
