//! The input document: the OPA-Envoy plugin's shape plus SPIFFE fields.
//!
//! ```json
//! {
//!   "attributes": {
//!     "source": {"principal": "spiffe://a.org/web",
//!                "address": {"socketAddress": {"address": "10.0.0.1", "portValue": 51000}}},
//!     "destination": {"principal": "spiffe://a.org/db",
//!                     "address": {"socketAddress": {"address": "10.0.0.2", "portValue": 5432}}},
//!     "request": {"http": {"method": "GET", "path": "/v1/x?a=1", "host": "db", "headers": {}, "protocol": "HTTP/1.1"}}
//!   },
//!   "parsed_path": ["v1", "x"],
//!   "parsed_query": {"a": ["1"]},
//!   "spiffe": {"peer_id": "spiffe://a.org/web", "peer_trust_domain": "a.org", "peer_path": "/web",
//!              "own_id": "spiffe://a.org/db", "own_trust_domain": "a.org", "own_path": "/db"},
//!   "tls": {"version": "TLSv1.3", "cipher": "TLS13_AES_128_GCM_SHA256", "sni": "db", "alpn": "h2"}
//! }
//! ```
//!
//! Fields that are unknown are omitted, never `null`, so `input.x == y`
//! is undefined (deny) rather than comparing against null.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde_json::{Map, Value, json};

/// An HTTP request, as the sidecar sees it in HTTP mode.
#[derive(Debug, Clone, Default)]
pub struct HttpRequest {
    /// `GET`, `POST`, …
    pub method: String,
    /// Path with query (`/v1/x?a=1`).
    pub path: String,
    /// Host (`:authority`).
    pub host: String,
    /// `HTTP/1.1`, `HTTP/2`, …
    pub protocol: String,
    /// Header names (lowercased by the builder) to values; repeated headers
    /// joined with `,` as Envoy does.
    pub headers: BTreeMap<String, String>,
}

/// Builds an input document.
#[derive(Debug, Clone, Default)]
pub struct InputBuilder {
    peer_id: Option<String>,
    own_id: Option<String>,
    source: Option<SocketAddr>,
    destination: Option<SocketAddr>,
    http: Option<HttpRequest>,
    tls_version: Option<String>,
    cipher: Option<String>,
    sni: Option<String>,
    alpn: Option<String>,
}

/// Splits `spiffe://td/path` into (trust domain, path). Not a validator: the
/// identity crate validates IDs before they reach the policy.
fn split_spiffe_id(id: &str) -> Option<(&str, &str)> {
    let rest = id.strip_prefix("spiffe://")?;
    Some(match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    })
}

/// The `spiffe` object of an input document: the caller's (`peer_*`) and
/// our own (`own_*`) SPIFFE IDs, each with its trust domain and path.
pub fn spiffe_fields(peer: Option<&str>, own: Option<&str>) -> Map<String, Value> {
    let mut spiffe = Map::new();
    for (prefix, id) in [("peer", peer), ("own", own)] {
        if let Some(id) = id {
            spiffe.insert(format!("{prefix}_id"), json!(id));
            if let Some((td, path)) = split_spiffe_id(id) {
                spiffe.insert(format!("{prefix}_trust_domain"), json!(td));
                spiffe.insert(format!("{prefix}_path"), json!(path));
            }
        }
    }
    spiffe
}

fn socket(addr: &SocketAddr) -> Value {
    json!({"socketAddress": {"address": addr.ip().to_string(), "portValue": addr.port()}})
}

fn percent_decode(s: &str, plus_as_space: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        // In bounds: the loop runs while `i < bytes.len()`.
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(s.get(i + 1..i + 3).unwrap_or(""), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' if plus_as_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `/a/b%20c/?x=1` -> `["a", "b c", ""]` (the OPA-Envoy plugin's `parsed_path`).
pub fn parse_path(path: &str) -> Vec<String> {
    let path = path.split(['?', '#']).next().unwrap_or("");
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    if trimmed.is_empty() {
        return Vec::new();
    }
    trimmed
        .split('/')
        .map(|s| percent_decode(s, false))
        .collect()
}

/// `?a=1&a=2&b` -> `{"a": ["1", "2"], "b": [""]}` (the plugin's `parsed_query`).
pub fn parse_query(path: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let Some((_, query)) = path.split_once('?') else {
        return out;
    };
    let query = query.split('#').next().unwrap_or("");
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.entry(percent_decode(k, true))
            .or_default()
            .push(percent_decode(v, true));
    }
    out
}

impl InputBuilder {
    /// The peer's SPIFFE ID (from its verified SVID).
    pub fn peer_id(mut self, id: impl Into<String>) -> Self {
        self.peer_id = Some(id.into());
        self
    }

    /// Our own SPIFFE ID.
    pub fn own_id(mut self, id: impl Into<String>) -> Self {
        self.own_id = Some(id.into());
        self
    }

    /// The peer's socket address.
    pub fn source(mut self, addr: SocketAddr) -> Self {
        self.source = Some(addr);
        self
    }

    /// Our socket address (the port the connection arrived on).
    pub fn destination(mut self, addr: SocketAddr) -> Self {
        self.destination = Some(addr);
        self
    }

    /// HTTP mode: the request.
    pub fn http(mut self, request: HttpRequest) -> Self {
        self.http = Some(request);
        self
    }

    /// The negotiated TLS parameters.
    pub fn tls(
        mut self,
        version: Option<String>,
        cipher: Option<String>,
        sni: Option<String>,
        alpn: Option<String>,
    ) -> Self {
        self.tls_version = version;
        self.cipher = cipher;
        self.sni = sni;
        self.alpn = alpn;
        self
    }

    /// The input document.
    pub fn build(&self) -> Value {
        let mut source = Map::new();
        let mut destination = Map::new();
        if let Some(id) = &self.peer_id {
            source.insert("principal".into(), json!(id));
        }
        if let Some(a) = &self.source {
            source.insert("address".into(), socket(a));
        }
        if let Some(id) = &self.own_id {
            destination.insert("principal".into(), json!(id));
        }
        if let Some(a) = &self.destination {
            destination.insert("address".into(), socket(a));
        }
        let mut attributes = Map::new();
        attributes.insert("source".into(), Value::Object(source));
        attributes.insert("destination".into(), Value::Object(destination));
        let mut doc = Map::new();
        if let Some(h) = &self.http {
            let headers: Map<String, Value> = h
                .headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), json!(v)))
                .collect();
            attributes.insert(
                "request".into(),
                json!({"http": {
                    "method": h.method, "path": h.path, "host": h.host,
                    "protocol": h.protocol, "headers": headers,
                }}),
            );
            doc.insert("parsed_path".into(), json!(parse_path(&h.path)));
            doc.insert("parsed_query".into(), json!(parse_query(&h.path)));
        }
        doc.insert("attributes".into(), Value::Object(attributes));
        let spiffe = spiffe_fields(self.peer_id.as_deref(), self.own_id.as_deref());
        doc.insert("spiffe".into(), Value::Object(spiffe));
        let mut tls = Map::new();
        for (k, v) in [
            ("version", &self.tls_version),
            ("cipher", &self.cipher),
            ("sni", &self.sni),
            ("alpn", &self.alpn),
        ] {
            if let Some(v) = v {
                tls.insert(k.into(), json!(v));
            }
        }
        doc.insert("tls".into(), Value::Object(tls));
        Value::Object(doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_envoy_and_spiffe_shape() {
        let mut headers = BTreeMap::new();
        headers.insert("X-Req".to_string(), "1".to_string());
        let doc = InputBuilder::default()
            .peer_id("spiffe://a.org/ns/web")
            .own_id("spiffe://b.org/db")
            .source("10.0.0.1:51000".parse().unwrap())
            .destination("[::1]:5432".parse().unwrap())
            .http(HttpRequest {
                method: "GET".into(),
                path: "/v1/a%20b/?x=1&x=2&y".into(),
                host: "db".into(),
                protocol: "HTTP/1.1".into(),
                headers,
            })
            .tls(
                Some("TLSv1.3".into()),
                None,
                Some("db".into()),
                Some("h2".into()),
            )
            .build();
        assert_eq!(
            doc["attributes"]["source"]["principal"],
            "spiffe://a.org/ns/web"
        );
        assert_eq!(
            doc["attributes"]["source"]["address"]["socketAddress"]["portValue"],
            51000
        );
        assert_eq!(
            doc["attributes"]["destination"]["address"]["socketAddress"]["address"],
            "::1"
        );
        assert_eq!(
            doc["attributes"]["request"]["http"]["headers"]["x-req"],
            "1"
        );
        assert_eq!(doc["parsed_path"], json!(["v1", "a b", ""]));
        assert_eq!(doc["parsed_query"], json!({"x": ["1", "2"], "y": [""]}));
        assert_eq!(doc["spiffe"]["peer_trust_domain"], "a.org");
        assert_eq!(doc["spiffe"]["peer_path"], "/ns/web");
        assert_eq!(doc["spiffe"]["own_trust_domain"], "b.org");
        assert_eq!(
            doc["tls"],
            json!({"version": "TLSv1.3", "sni": "db", "alpn": "h2"})
        );
    }

    #[test]
    fn odd_paths_do_not_panic() {
        for p in ["", "/", "%", "/%zz", "/a%2", "?", "/?&&=", "/%e2%82"] {
            let _ = parse_path(p);
            let _ = parse_query(p);
        }
        assert_eq!(parse_path("/"), Vec::<String>::new());
    }
}
