//! SPIFFE ID parsing: never panics; whatever parses prints back unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use signet_identity::{SpiffeId, TrustDomain};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(id) = SpiffeId::parse(s) {
        assert_eq!(id.as_str(), s);
        assert_eq!(SpiffeId::parse(id.as_str()).as_ref(), Ok(&id));
        let td = id.trust_domain();
        assert!(id.is_member_of(&td));
    }
    let _ = TrustDomain::parse(s);
});
