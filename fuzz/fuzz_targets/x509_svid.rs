//! X509-SVID verification of arbitrary DER: never panics.
#![no_main]

use std::time::SystemTime;

use libfuzzer_sys::fuzz_target;
use signet_identity::{Bundle, CertificateDer, TrustDomain, verify_x509_svid};

fuzz_target!(|data: &[u8]| {
    let Ok(td) = TrustDomain::parse("example.org") else { return };
    let bundle = Bundle::new(td);
    let chain = [CertificateDer::from(data)];
    let _ = verify_x509_svid(&chain, &bundle, SystemTime::UNIX_EPOCH);
});
