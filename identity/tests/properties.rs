//! Property tests of the parsers that see untrusted input: SPIFFE IDs,
//! selectors and bundles. (The same parsers are fuzzed under `fuzz/`.)

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use signet_identity::{Bundle, Selector, SpiffeId, TrustDomain};

fn trust_domain() -> impl Strategy<Value = String> {
    "[a-z0-9._-]{1,40}"
}

fn segment() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9._-]{1,20}".prop_filter("no dot segments", |s| s != "." && s != "..")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn valid_ids_parse_and_round_trip(td in trust_domain(), segs in prop::collection::vec(segment(), 0..6)) {
        let s = format!("spiffe://{td}{}", segs.iter().map(|s| format!("/{s}")).collect::<String>());
        let id = SpiffeId::parse(&s).unwrap();
        prop_assert_eq!(id.to_string(), s.clone());
        prop_assert_eq!(id.trust_domain_str(), td.as_str());
        prop_assert_eq!(id.path().is_empty(), segs.is_empty());
        let parsed = TrustDomain::parse(&td).unwrap();
        prop_assert_eq!(parsed.as_str(), td.as_str());
    }

    #[test]
    fn any_string_either_fails_or_round_trips(s in "\\PC{0,80}|spiffe://\\PC{0,60}") {
        if let Ok(id) = SpiffeId::parse(&s) {
            prop_assert_eq!(id.to_string(), s.clone());
            // What parsed obeys the spec's character rules.
            prop_assert!(id.trust_domain_str().bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)));
            prop_assert!(!id.path().ends_with('/'));
            prop_assert!(!id.path().contains("//"));
        }
    }

    #[test]
    fn an_uppercase_trust_domain_is_always_refused(td in "[a-z]{0,5}[A-Z][a-z]{0,5}") {
        let id = format!("spiffe://{td}/x");
        prop_assert!(SpiffeId::parse(&id).is_err());
    }

    #[test]
    fn selectors_split_at_the_first_colon(ty in "[a-z0-9_-]{1,12}", value in "[ -~]{1,40}") {
        let s = Selector::new(&ty, &value).unwrap();
        prop_assert_eq!(s.selector_type(), ty.as_str());
        prop_assert_eq!(s.value(), value.as_str());
        prop_assert_eq!(Selector::parse(s.as_str()).unwrap(), s);
    }

    #[test]
    fn any_selector_string_either_fails_or_round_trips(s in "\\PC{0,60}") {
        if let Ok(sel) = Selector::parse(&s) {
            prop_assert_eq!(sel.to_string(), s.clone());
            prop_assert_eq!(format!("{}:{}", sel.selector_type(), sel.value()), s);
        }
    }

    #[test]
    fn bundle_parsing_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = Bundle::parse_json(TrustDomain::parse("example.org").unwrap(), &bytes);
    }

    #[test]
    fn bundle_documents_with_odd_members_never_panic(
        seq in prop::option::of(any::<i64>()),
        keys in prop::collection::vec(
            (prop::option::of("x509-svid|jwt-svid|other"), prop::option::of("EC|RSA|OKP"), prop::option::of("[A-Za-z0-9+/=]{0,12}")),
            0..4,
        ),
    ) {
        let keys: Vec<serde_json::Value> = keys.into_iter().map(|(u, kty, x5c)| {
            let mut m = serde_json::Map::new();
            if let Some(u) = u { m.insert("use".into(), u.into()); }
            if let Some(k) = kty { m.insert("kty".into(), k.into()); }
            if let Some(c) = x5c { m.insert("x5c".into(), serde_json::json!([c])); m.insert("kid".into(), "k".into()); }
            serde_json::Value::Object(m)
        }).collect();
        let mut doc = serde_json::json!({ "keys": keys });
        if let Some(seq) = seq { doc["spiffe_sequence"] = seq.into(); }
        let _ = Bundle::parse_json(TrustDomain::parse("example.org").unwrap(), doc.to_string().as_bytes());
    }
}
