//! `signet logger get|set|reset`: the server's log filter changed while it
//! runs, through the admin socket.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;

#[test]
fn the_log_filter_changes_while_the_server_runs() {
    let dir = tempfile::tempdir().unwrap();
    let c = Combined::start(dir.path(), &[]);
    let logger = |args: &[&str]| {
        let mut all = vec!["logger"];
        all.extend(args);
        all.extend(["--output", "json"]);
        let out = c.admin(&all);
        assert!(out.status.success(), "{args:?}: {out:?}");
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let launch = logger(&["get"])["launch_filter"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(logger(&["get"])["filter"], launch.as_str());
    assert!(
        !c.proc.log_text().contains(r#""level":"TRACE""#),
        "traced before asked to"
    );

    let set = logger(&["set", "trace"]);
    assert_eq!(set["filter"], "trace");
    assert_eq!(set["launch_filter"], launch.as_str());
    // Anything the server does now is traced.
    c.admin(&["entry", "show"]);
    eventually("trace lines in the server's log", || {
        c.proc
            .log_text()
            .contains(r#""level":"TRACE""#)
            .then_some(())
    });

    // A filter that does not parse changes nothing and says why.
    let out = c.admin(&["logger", "set", "signet=nonsense"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("log filter \"signet=nonsense\""), "{err}");
    assert_eq!(logger(&["get"])["filter"], "trace");

    assert_eq!(logger(&["reset"])["filter"], launch.as_str());
}
