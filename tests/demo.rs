//! `signet demo` runs the whole mission and cleans up after itself.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

#[test]
fn the_demo_shows_an_allowed_and_a_denied_request_and_cleans_up() {
    let out = common::signet().arg("demo").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "presenting spiffe://example.org/demo/backend",
        "presenting spiffe://example.org/demo/frontend",
        "GET /hello     -> 200",
        "hello spiffe://example.org/demo/frontend",
        "DELETE /hello  -> 403",
        "denied by policy",
    ] {
        assert!(stdout.contains(want), "{want:?} not in:\n{stdout}");
    }
    let dir = stdout
        .lines()
        .find_map(|l| l.split(" in ").nth(1))
        .and_then(|rest| rest.split("/backend-sidecar.log").next())
        .expect("the demo names its directory");
    assert!(!std::path::Path::new(dir).exists(), "{dir} is left behind");
}
