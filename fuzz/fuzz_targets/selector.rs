//! Selector parsing: never panics; type:value splits at the first colon.
#![no_main]

use libfuzzer_sys::fuzz_target;
use signet_identity::Selector;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(sel) = Selector::parse(s) {
        assert_eq!(format!("{}:{}", sel.selector_type(), sel.value()), s);
        assert!(!sel.selector_type().contains(':'));
    }
});
