//! Policy input building from peer-controlled values (SPIFFE IDs, HTTP
//! method, path with query, host, headers, SNI, ALPN): never panics, always
//! yields an object whose principals and path are the given strings, and
//! the decision-cache key ignores exactly the source port.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use signet_policy::DecisionCache;
use signet_policy::input::{HttpRequest, InputBuilder, parse_path, parse_query};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut f = text.split('\n').map(str::to_string);
    let mut next = || f.next().unwrap_or_default();
    let (peer, own, method, path, host) = (next(), next(), next(), next(), next());
    let (name, value, sni, alpn) = (next(), next(), next(), next());
    let port = data.first().copied().unwrap_or(0).into();
    let mut headers = BTreeMap::new();
    headers.insert(name, value);
    let build = |source_port: u16| {
        InputBuilder::default()
            .peer_id(peer.clone())
            .own_id(own.clone())
            .source(std::net::SocketAddr::from(([10, 0, 0, 1], source_port)))
            .http(HttpRequest {
                method: method.clone(),
                path: path.clone(),
                host: host.clone(),
                protocol: "HTTP/1.1".into(),
                headers: headers.clone(),
            })
            .tls(Some("TLSv1.3".into()), None, Some(sni.clone()), Some(alpn.clone()))
            .build()
    };
    let input = build(port);
    assert!(input.is_object());
    assert_eq!(input["attributes"]["source"]["principal"], peer.as_str());
    assert_eq!(input["attributes"]["destination"]["principal"], own.as_str());
    assert_eq!(input["attributes"]["request"]["http"]["path"], path.as_str());
    let _ = (parse_path(&path), parse_query(&path));
    let other = build(port.wrapping_add(1));
    assert_eq!(DecisionCache::key(&input, "r"), DecisionCache::key(&other, "r"));
});
