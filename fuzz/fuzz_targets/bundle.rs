//! SPIFFE bundle JSON and PEM parsing: never panics; a parsed bundle
//! serializes and parses back to the same keys.
#![no_main]

use libfuzzer_sys::fuzz_target;
use signet_identity::{Bundle, TrustDomain};

fuzz_target!(|data: &[u8]| {
    let Ok(td) = TrustDomain::parse("example.org") else { return };
    if let Ok(bundle) = Bundle::parse_json(td.clone(), data) {
        if let Ok(json) = bundle.to_json() {
            let again = Bundle::parse_json(td.clone(), json.as_bytes()).expect("own output parses");
            assert!(again.same_keys(&bundle));
        }
    }
    let _ = Bundle::from_x509_pem(td, data);
});
