//! JWT-SVID parsing and verification of arbitrary tokens: never panics.
#![no_main]

use std::time::SystemTime;

use libfuzzer_sys::fuzz_target;
use signet_identity::{Bundle, JwtSvid, TrustDomain};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let Ok(td) = TrustDomain::parse("example.org") else { return };
    let _ = JwtSvid::parse_insecure(s);
    let _ = JwtSvid::verify(s, &Bundle::new(td), "aud", SystemTime::UNIX_EPOCH);
});
