//! The input document, built from a `CheckRequest` as the OPA-Envoy plugin
//! builds it, so its policies run unchanged:
//!
//! - `attributes`: the request's attributes with the protobuf JSON names
//!   (`socketAddress`, `portValue`, `contextExtensions`, `rawBody`), only
//!   populated fields, numbers as numbers, enums as their numbers, bytes
//!   as base64, `time` as `{seconds, nanos}`;
//! - `parsed_path`: the path before `?`, percent-decoded, leading slashes
//!   stripped, split at `/` (empty segments kept);
//! - `parsed_query`: every query parameter as an array of its values;
//! - `parsed_body` and `truncated_body`: a JSON or form body parsed
//!   (Envoy's `with_request_body`), `null` otherwise, truncated when
//!   `content-length` says more than arrived;
//! - `source_principal`, `version`; and Signet's `spiffe` fields.
//!
//! A path, query or body that cannot be parsed is a [`RequestError`]:
//! answered with 400, as the plugin does.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{Address, Metadata};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use envoy_types::pb::google::protobuf::{Struct, value::Kind};
use serde_json::{Map, Number, Value, json};

/// A request the plugin would answer with 400 `request_parse_error`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RequestError(pub String);

/// The input document for `req`.
pub fn check_input(req: &CheckRequest) -> Result<Value, RequestError> {
    let mut input = Map::new();
    let attributes = req.attributes.as_ref();
    if let Some(a) = attributes.map(attributes_json).filter(|a| !a.is_empty()) {
        input.insert("attributes".into(), Value::Object(a));
    }
    input.insert(
        "version".into(),
        json!({"ext_authz": "v3", "encoding": "protojson"}),
    );
    let http = attributes
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref());
    let path = http.map_or("", |h| h.path.as_str());
    let (parsed_path, parsed_query) = parse_path_and_query(path)?;
    input.insert("parsed_path".into(), parsed_path);
    input.insert("parsed_query".into(), parsed_query);
    let (body, truncated) = match http {
        Some(h) => parse_body(h)?,
        None => (Value::Null, false),
    };
    input.insert("parsed_body".into(), body);
    input.insert("truncated_body".into(), truncated.into());
    fn principal(p: Option<&Peer>) -> Option<&str> {
        p.map(|p| p.principal.as_str()).filter(|p| !p.is_empty())
    }
    let source = principal(attributes.and_then(|a| a.source.as_ref()));
    let destination = principal(attributes.and_then(|a| a.destination.as_ref()));
    if let Some(p) = source {
        input.insert("source_principal".into(), p.into());
    }
    let spiffe = signet_policy::input::spiffe_fields(source, destination);
    if !spiffe.is_empty() {
        input.insert("spiffe".into(), Value::Object(spiffe));
    }
    Ok(Value::Object(input))
}

/// Inserts `key` unless `value` is the proto3 default (not populated).
fn put(m: &mut Map<String, Value>, key: &str, value: Value) {
    let empty = match &value {
        Value::String(s) => s.is_empty(),
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::Bool(b) => !b,
        Value::Object(o) => o.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Null => true,
    };
    if !empty {
        m.insert(key.into(), value);
    }
}

fn string_map(m: &HashMap<String, String>) -> Value {
    Value::Object(
        m.iter()
            .map(|(k, v)| (k.clone(), v.clone().into()))
            .collect(),
    )
}

fn attributes_json(a: &AttributeContext) -> Map<String, Value> {
    let mut m = Map::new();
    if let Some(p) = &a.source {
        put(&mut m, "source", Value::Object(peer_json(p)));
    }
    if let Some(p) = &a.destination {
        put(&mut m, "destination", Value::Object(peer_json(p)));
    }
    if let Some(r) = &a.request {
        put(&mut m, "request", Value::Object(request_json(r)));
    }
    put(
        &mut m,
        "contextExtensions",
        string_map(&a.context_extensions),
    );
    if let Some(md) = &a.metadata_context {
        put(&mut m, "metadataContext", metadata_json(md));
    }
    if let Some(md) = &a.route_metadata_context {
        put(&mut m, "routeMetadataContext", metadata_json(md));
    }
    if let Some(tls) = &a.tls_session {
        put(
            &mut m,
            "tlsSession",
            json_object([("sni", tls.sni.clone().into())]),
        );
    }
    m
}

fn json_object<const N: usize>(pairs: [(&str, Value); N]) -> Value {
    let mut m = Map::new();
    for (k, v) in pairs {
        put(&mut m, k, v);
    }
    Value::Object(m)
}

fn peer_json(p: &Peer) -> Map<String, Value> {
    let mut m = Map::new();
    if let Some(a) = &p.address {
        put(&mut m, "address", address_json(a));
    }
    put(&mut m, "service", p.service.clone().into());
    put(&mut m, "labels", string_map(&p.labels));
    put(&mut m, "principal", p.principal.clone().into());
    put(&mut m, "certificate", p.certificate.clone().into());
    m
}

fn address_json(a: &Address) -> Value {
    match &a.address {
        Some(AddressKind::SocketAddress(s)) => {
            let port = match &s.port_specifier {
                Some(PortSpecifier::PortValue(p)) => ("portValue", (*p).into()),
                Some(PortSpecifier::NamedPort(n)) => ("namedPort", n.clone().into()),
                None => ("portValue", 0.into()),
            };
            json!({"socketAddress": json_object([
                ("protocol", s.protocol.into()),
                ("address", s.address.clone().into()),
                port,
                ("resolverName", s.resolver_name.clone().into()),
                ("ipv4Compat", s.ipv4_compat.into()),
                ("networkNamespaceFilepath", s.network_namespace_filepath.clone().into()),
            ])})
        }
        Some(AddressKind::Pipe(p)) => json!({"pipe": json_object([
            ("path", p.path.clone().into()),
            ("mode", p.mode.into()),
        ])}),
        Some(AddressKind::EnvoyInternalAddress(e)) => {
            json!({"envoyInternalAddress": json_object([("endpointId", e.endpoint_id.clone().into())])})
        }
        None => Value::Object(Map::new()),
    }
}

fn request_json(r: &Request) -> Map<String, Value> {
    let mut m = Map::new();
    if let Some(t) = &r.time {
        put(
            &mut m,
            "time",
            json_object([("seconds", t.seconds.into()), ("nanos", t.nanos.into())]),
        );
    }
    if let Some(h) = &r.http {
        put(&mut m, "http", Value::Object(http_json(h)));
    }
    m
}

fn http_json(h: &HttpRequest) -> Map<String, Value> {
    let mut m = Map::new();
    put(&mut m, "id", h.id.clone().into());
    put(&mut m, "method", h.method.clone().into());
    put(&mut m, "headers", string_map(&h.headers));
    if let Some(map) = &h.header_map {
        let headers: Vec<Value> = map
            .headers
            .iter()
            .map(|hv| {
                json_object([
                    ("key", hv.key.clone().into()),
                    ("value", hv.value.clone().into()),
                    ("rawValue", STANDARD.encode(&hv.raw_value).into()),
                ])
            })
            .collect();
        put(
            &mut m,
            "headerMap",
            json_object([("headers", headers.into())]),
        );
    }
    put(&mut m, "path", h.path.clone().into());
    put(&mut m, "host", h.host.clone().into());
    put(&mut m, "scheme", h.scheme.clone().into());
    put(&mut m, "query", h.query.clone().into());
    put(&mut m, "fragment", h.fragment.clone().into());
    put(&mut m, "size", h.size.into());
    put(&mut m, "protocol", h.protocol.clone().into());
    put(&mut m, "body", h.body.clone().into());
    put(&mut m, "rawBody", STANDARD.encode(&h.raw_body).into());
    m
}

fn metadata_json(md: &Metadata) -> Value {
    let filter: Map<String, Value> = md
        .filter_metadata
        .iter()
        .map(|(k, s)| (k.clone(), struct_json(s)))
        .collect();
    let typed: Map<String, Value> = md
        .typed_filter_metadata
        .iter()
        .map(|(k, any)| {
            (
                k.clone(),
                json_object([
                    ("typeUrl", any.type_url.clone().into()),
                    ("value", STANDARD.encode(&any.value).into()),
                ]),
            )
        })
        .collect();
    json_object([
        ("filterMetadata", Value::Object(filter)),
        ("typedFilterMetadata", Value::Object(typed)),
    ])
}

/// A `google.protobuf.Struct` as the plain JSON object it stands for.
pub(crate) fn struct_json(s: &Struct) -> Value {
    Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), kind_json(v.kind.as_ref())))
            .collect(),
    )
}

fn kind_json(k: Option<&Kind>) -> Value {
    match k {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::NumberValue(n)) => Number::from_f64(*n).map_or(Value::Null, Value::Number),
        Some(Kind::StringValue(s)) => s.clone().into(),
        Some(Kind::BoolValue(b)) => (*b).into(),
        Some(Kind::StructValue(s)) => struct_json(s),
        Some(Kind::ListValue(l)) => l
            .values
            .iter()
            .map(|v| kind_json(v.kind.as_ref()))
            .collect(),
    }
}

/// Decodes `%XX` escapes (and `+` as a space when `plus_is_space`);
/// a malformed escape is an error, as Go's unescaping says.
fn unescape(s: &str, plus_is_space: bool) -> Result<String, RequestError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hex = s
                    .get(i + 1..i + 3)
                    .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()));
                let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) else {
                    let bad = s.get(i..(i + 3).min(s.len())).unwrap_or("%");
                    return Err(RequestError(format!("invalid URL escape {bad:?}")));
                };
                out.push(v);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            other => {
                out.push(other);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| RequestError(format!("{s:?} decodes to invalid UTF-8")))
}

/// `a=1&a=2&b` as `{"a": ["1", "2"], "b": [""]}`, with Go's rules: empty
/// pieces skipped, a `;` refused, `+` a space.
fn parse_query(q: &str) -> Result<Map<String, Value>, RequestError> {
    let mut m: Map<String, Value> = Map::new();
    for piece in q.split('&').filter(|p| !p.is_empty()) {
        if piece.contains(';') {
            return Err(RequestError("invalid semicolon separator in query".into()));
        }
        let (k, v) = piece.split_once('=').unwrap_or((piece, ""));
        let (k, v) = (unescape(k, true)?, unescape(v, true)?);
        let values = m.entry(k).or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(values) = values {
            values.push(v.into());
        }
    }
    Ok(m)
}

fn parse_path_and_query(path: &str) -> Result<(Value, Value), RequestError> {
    let (raw_path, raw_query) = path.split_once('?').unwrap_or((path, ""));
    let decoded = unescape(raw_path, false)?;
    let segments: Vec<Value> = decoded
        .trim_start_matches('/')
        .split('/')
        .map(|s| s.to_owned().into())
        .collect();
    Ok((
        Value::Array(segments),
        Value::Object(parse_query(raw_query)?),
    ))
}

/// `parsed_body` and `truncated_body` for a JSON or form body.
fn parse_body(h: &HttpRequest) -> Result<(Value, bool), RequestError> {
    if h.headers
        .get("x-envoy-auth-partial-body")
        .map(String::as_str)
        == Some("true")
    {
        return Ok((Value::Null, true));
    }
    let Some(content_type) = h.headers.get("content-type") else {
        return Ok((Value::Null, false));
    };
    let json_body = content_type.contains("application/json");
    let form_body = content_type.contains("application/x-www-form-urlencoded");
    if !json_body && !form_body {
        return Ok((Value::Null, false));
    }
    let payload: &[u8] = if h.body.is_empty() {
        &h.raw_body
    } else {
        h.body.as_bytes()
    };
    if payload.is_empty() {
        return Ok((Value::Null, false));
    }
    if let Some(cl) = h.headers.get("content-length") {
        let cl: i64 = cl
            .trim()
            .parse()
            .map_err(|_| RequestError(format!("invalid content-length {cl:?}")))?;
        if cl != -1 && cl > i64::try_from(payload.len()).unwrap_or(i64::MAX) {
            return Ok((Value::Null, true));
        }
    }
    if json_body {
        let v: Value = serde_json::from_slice(payload)
            .map_err(|e| RequestError(format!("body is not valid JSON: {e}")))?;
        return Ok((v, false));
    }
    let text =
        std::str::from_utf8(payload).map_err(|_| RequestError("form body is not UTF-8".into()))?;
    Ok((Value::Object(parse_query(text)?), false))
}
