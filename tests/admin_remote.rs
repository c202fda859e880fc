//! The admin API over mTLS (`--admin-listen`): a workload whose entry has
//! the admin flag manages entries from anywhere with `--server-url`,
//! authenticated by its X509-SVID; a workload without the flag is refused
//! with PermissionDenied; without `--admin-listen` there is no TCP admin
//! listener.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

use common::*;

#[test]
#[ignore = "needs root: runs processes under other uids (scripts/test runs it as root)"]
fn admin_flagged_workloads_manage_entries_over_mtls() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut c = Combined::start(dir, &["--admin-listen", "127.0.0.1:0"]);
    let url = format!("https://{}", c.proc.reported_addr("admin API"));
    c.entry_for_uid_with("spiffe://example.org/ops", uid(), &["--admin"]);
    c.entry_for_uid("spiffe://example.org/web", 65534);
    c.x509_json("the admin workload's SVID");
    let endpoint = format!("unix://{}", c.agent);
    let remote = |args: &[&str]| {
        signet()
            .args(args)
            .args(["--server-url", &url])
            .env("SPIFFE_ENDPOINT_SOCKET", &endpoint)
            .output()
            .unwrap()
    };

    // The admin workload creates an entry and sees it listed.
    let created = remote(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/made-remotely",
        "--selector",
        "unix:uid:1234",
        "--output",
        "json",
    ]);
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let shown = remote(&["entry", "show", "--output", "json"]);
    assert!(shown.status.success());
    assert!(
        String::from_utf8_lossy(&shown.stdout).contains("spiffe://example.org/made-remotely"),
        "{}",
        String::from_utf8_lossy(&shown.stdout)
    );
    // The same entry through the admin socket: one API.
    let local = c.admin(&[
        "entry",
        "show",
        "--spiffe-id",
        "spiffe://example.org/made-remotely",
    ]);
    assert!(local.status.success());

    // A workload without the admin flag is refused, naming why.
    let bin = signet_for_others(dir);
    let refused = eventually("the plain workload's refusal", || {
        let out = Command::new(&bin)
            .args(["entry", "show", "--server-url", &url])
            .env("SPIFFE_ENDPOINT_SOCKET", &endpoint)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        (!out.status.success() && err.contains("may not use the admin API")).then_some(err)
    });
    assert!(refused.contains("spiffe://example.org/web"), "{refused}");

    // Clearing the flag takes effect on the next call.
    let ops = json_stdout(&c.admin(&[
        "entry",
        "show",
        "--spiffe-id",
        "spiffe://example.org/ops",
        "--output",
        "json",
    ]));
    let id = ops["entries"][0]["id"].as_str().unwrap().to_owned();
    let cleared = c.admin(&["entry", "update", "--id", &id, "--admin=false"]);
    assert!(
        cleared.status.success(),
        "{}",
        String::from_utf8_lossy(&cleared.stderr)
    );
    let after = remote(&["entry", "show"]);
    assert!(!after.status.success());
    assert!(String::from_utf8_lossy(&after.stderr).contains("may not use the admin API"));
}

#[test]
fn no_tcp_admin_listener_unless_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Combined::start(tmp.path(), &[]);
    let banner = c.proc.seen.join("\n");
    assert!(banner.contains("admin socket"), "{banner}");
    assert!(!banner.contains("admin API"), "{banner}");
}
