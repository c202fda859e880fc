//! End-to-end: the real `signet run` (combined server and agent) serves a
//! workload from a registration entry, over its real sockets, and keeps
//! its state across a restart.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;

use common::*;

/// The stderr of a command that must have succeeded (its warnings).
fn stderr_of_success(out: &std::process::Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    err
}

#[test]
fn a_workload_gets_its_svid_jwt_and_bundle_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Combined::start(dir.path(), &[]);
    let banner = c.proc.seen.join("\n");
    assert!(banner.contains("trust domain   example.org"), "{banner}");
    assert!(
        banner.contains("local agent    spiffe://example.org/signet/agent/local"),
        "{banner}"
    );

    let sel = format!("unix:uid:{}", uid());
    let e = json_stdout(&c.admin(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/web",
        "--selector",
        &sel,
        "--dns-name",
        "web.example.org",
        "--output",
        "json",
    ]));
    assert_eq!(
        e["parent_id"], "spiffe://example.org/signet/agent/local",
        "defaults to the local agent"
    );
    let entry_id = e["id"].as_str().unwrap().to_owned();

    // The workload (this test's uid) gets its X509-SVID.
    let svid = c.x509_json("the X509-SVID");
    assert!(svid.contains("spiffe://example.org/web"), "{svid}");

    // --write: files an app can use; the real openssl accepts the chain.
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = c.api(&["fetch", "x509", "--write", out_dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key_mode = std::fs::metadata(out_dir.join("svid_key.pem"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(key_mode, 0o600);
    let verify = std::process::Command::new("openssl")
        .args(["verify", "-CAfile", "bundle.pem", "svid.pem"])
        .current_dir(&out_dir)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );

    // JWT-SVID: fetched, validated for its audience, refused for another.
    let jwt = json_stdout(&c.api(&["fetch", "jwt", "--audience", "db", "--output", "json"]));
    let token = jwt["svids"][0]["token"].as_str().unwrap().to_owned();
    assert_eq!(jwt["svids"][0]["spiffe_id"], "spiffe://example.org/web");
    let v = json_stdout(&c.api(&[
        "validate",
        "jwt",
        "--audience",
        "db",
        "--token",
        &token,
        "--output",
        "json",
    ]));
    assert_eq!(v["spiffe_id"], "spiffe://example.org/web");
    assert!(
        !c.api(&["validate", "jwt", "--audience", "other", "--token", &token])
            .status
            .success()
    );

    // Bundle.
    let b = c.api(&["fetch", "bundle"]);
    assert!(String::from_utf8_lossy(&b.stdout).contains("# spiffe://example.org"));

    // Admin views.
    let agents = json_stdout(&c.admin(&["agent", "list", "--output", "json"]));
    assert_eq!(
        agents["agents"][0]["spiffe_id"],
        "spiffe://example.org/signet/agent/local"
    );
    let health = json_stdout(&c.admin(&["healthcheck", "--output", "json"]));
    assert_eq!(health["entries"], 1);

    // Deleting the entry removes the identity.
    c.admin(&["entry", "delete", "--id", &entry_id]);
    let err = eventually("the identity to go away", || {
        let out = c.api(&["fetch", "x509", "--timeout", "0s"]);
        (!out.status.success()).then(|| String::from_utf8(out.stderr).unwrap())
    });
    assert!(err.contains("no identity issued"), "{err}");

    // Ctrl-C drains and exits 0; a restart keeps state.
    json_stdout(&c.admin(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/kept",
        "--selector",
        "unix:uid:4242",
        "--output",
        "json",
    ]));
    let before = String::from_utf8(c.admin(&["bundle", "show"]).stdout).unwrap();
    assert!(c.proc.signal_and_wait("INT").success());
    let c2 = Combined::start(dir.path(), &[]);
    let entries = json_stdout(&c2.admin(&["entry", "show", "--output", "json"]));
    assert_eq!(entries["entries"].as_array().unwrap().len(), 1);
    assert_eq!(
        entries["entries"][0]["spiffe_id"],
        "spiffe://example.org/kept"
    );
    assert_eq!(
        String::from_utf8(c2.admin(&["bundle", "show"]).stdout).unwrap(),
        before,
        "same CA after restart"
    );
}

#[test]
fn callers_are_told_apart_by_the_kernel_not_by_what_they_say() {
    let dir = tempfile::tempdir().unwrap();
    let c = Combined::start(dir.path(), &[]);
    json_stdout(&c.admin(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/nobody",
        "--selector",
        "unix:uid:65534",
        "--output",
        "json",
    ]));

    // This test's uid matches no entry: PermissionDenied.
    let out = c.api(&["fetch", "x509", "--timeout", "0s"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no identity issued"));
}

#[test]
#[ignore = "needs root: runs processes under other uids (scripts/test runs it as root)"]
fn a_process_of_another_uid_gets_that_uids_identity() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let c = Combined::start(dir.path(), &[]);
    c.entry_for_uid("spiffe://example.org/nobody", 65534);
    // The same command run as uid 65534 gets the nobody identity.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let svid = eventually("the SVID of uid 65534", || {
        let out = signet()
            .args([
                "api", "fetch", "x509", "--output", "json", "--socket", &c.agent,
            ])
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        stdout_if_ok(out)
    });
    assert!(svid.contains("spiffe://example.org/nobody"), "{svid}");
}

#[test]
fn fetch_and_helper_once_right_after_entry_create_wait_for_the_identity() {
    // No polling by the test: each command is run once, at once.
    let dir = tempfile::tempdir().unwrap();
    let c = Combined::start(dir.path(), &[]);
    c.entry_for_uid("spiffe://example.org/fresh-jwt", uid());
    let out = c.api(&["fetch", "jwt", "--audience", "db"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("spiffe://example.org/fresh-jwt"));
    assert!(stderr.matches("waiting").count() <= 1, "{stderr}");

    let other = tempfile::tempdir().unwrap();
    let c = Combined::start(other.path(), &[]);
    c.entry_for_uid("spiffe://example.org/fresh", uid());
    let out = c.api(&["fetch", "x509"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("spiffe://example.org/fresh"));
    assert!(stderr.matches("waiting").count() <= 1, "{stderr}");

    let third = tempfile::tempdir().unwrap();
    let c = Combined::start(third.path(), &[]);
    c.entry_for_uid("spiffe://example.org/fresh-helper", uid());
    let files = third.path().join("files");
    std::fs::create_dir(&files).unwrap();
    let out = run(&[
        "helper",
        "--once",
        "--socket",
        &c.agent,
        "--dir",
        files.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.matches("waiting up to").count() <= 1, "{stderr}");
    let pem = std::fs::read_to_string(files.join("svid.pem")).unwrap();
    assert!(pem.contains("BEGIN CERTIFICATE"));
}

#[test]
fn fetch_without_an_identity_waits_once_then_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let c = Combined::start(dir.path(), &[]);
    let out = c.api(&["fetch", "x509", "--timeout", "400ms"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("waiting up to 400ms").count(), 1, "{stderr}");
    assert!(stderr.contains("no identity issued"), "{stderr}");
    assert!(stderr.contains("PermissionDenied"), "{stderr}");
    // The error names the caller and the entry that would match it; the
    // agent's debug log shows what it observed.
    let me = uid();
    assert!(
        stderr.contains(&format!("to this process (uid {me})")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("signet entry create --spiffe-id spiffe://<trust-domain>/<name> --selector unix:uid:{me}")),
        "{stderr}"
    );
    assert!(
        c.proc
            .log_text()
            .lines()
            .any(|l| l.contains("caller attested") && l.contains(&format!("unix:uid:{me}"))),
        "no attested caller in the agent log"
    );

    let out = c.api(&["fetch", "jwt", "--audience", "db", "--timeout", "0s"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("waiting"), "{stderr}");
    assert!(stderr.contains("no identity issued"), "{stderr}");

    let files = dir.path().join("files");
    std::fs::create_dir(&files).unwrap();
    let out = run(&[
        "helper",
        "--once",
        "--timeout",
        "500ms",
        "--socket",
        &c.agent,
        "--dir",
        files.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("waiting up to 500ms").count(), 1, "{stderr}");
    assert!(stderr.contains("no X509-SVID"), "{stderr}");
}

#[test]
fn a_waiting_workload_receives_a_new_entry() {
    let dir = tempfile::tempdir().unwrap();
    let c = Combined::start(dir.path(), &[]);
    let mut cmd = signet();
    cmd.args(["api", "watch", "--output", "json", "--socket", &c.agent]);
    let mut watch = Proc::spawn("watch", cmd, dir.path());
    watch.wait_for("no identity issued");
    let sel = format!("unix:uid:{}", uid());
    json_stdout(&c.admin(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/late",
        "--selector",
        &sel,
        "--output",
        "json",
    ]));
    watch.wait_for("spiffe://example.org/late");
}

#[test]
fn bad_input_names_the_problem_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let c = Combined::start(dir.path(), &[]);
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "entry",
                "create",
                "--spiffe-id",
                "spiffe://example.org/a/",
                "--selector",
                "unix:uid:1",
            ],
            "trailing '/'",
        ),
        (
            &[
                "entry",
                "create",
                "--spiffe-id",
                "spiffe://other.org/a",
                "--selector",
                "unix:uid:1",
            ],
            "not in trust domain example.org",
        ),
        (
            &["entry", "create", "--spiffe-id", "spiffe://example.org/a"],
            "at least one selector",
        ),
        // Selectors no attestor produces could never match: refused.
        (
            &[
                "entry",
                "create",
                "--spiffe-id",
                "spiffe://example.org/a",
                "--selector",
                "uinx:uid:0",
            ],
            "no attestor produces uinx:uid",
        ),
        (
            &[
                "entry",
                "create",
                "--spiffe-id",
                "spiffe://example.org/a",
                "--selector",
                "unix:uid:abc",
            ],
            "must be a number",
        ),
        // The server's and agents' own IDs are never handed to workloads
        // (an agent accepts spiffe://example.org/signet/server as its server).
        (
            &[
                "entry",
                "create",
                "--spiffe-id",
                "spiffe://example.org/signet/server",
                "--selector",
                "unix:uid:1",
            ],
            "is reserved",
        ),
        (
            &[
                "entry",
                "create",
                "--spiffe-id",
                "spiffe://example.org/signet/agent/join_token/x",
                "--selector",
                "unix:uid:1",
            ],
            "is reserved",
        ),
        (
            &[
                "token",
                "generate",
                "--spiffe-id",
                "spiffe://example.org/signet/server",
            ],
            "is reserved for Signet's server",
        ),
        (
            &[
                "entry",
                "create",
                "--spiffe-id",
                "spiffe://example.org/a",
                "--selector",
                "uid1000",
            ],
            "no ':'",
        ),
        (
            &[
                "entry",
                "create",
                "--spiffe-id",
                "spiffe://example.org/a",
                "--selector",
                "unix:uid:1",
                "--dns-name",
                "bad name",
            ],
            "dns name",
        ),
    ];
    for (args, want) in cases {
        let out = c.admin(args);
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    let count = json_stdout(&c.admin(&["entry", "count", "--output", "json"]));
    assert_eq!(count["count"], 0, "nothing was written");
    let dup = [
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/a",
        "--selector",
        "unix:uid:1",
    ];
    assert!(c.admin(&dup).status.success());
    let out = c.admin(&dup);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already exists"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = run(&["run", "--trust-domain", "Example.ORG"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("trust domain character 'E'"));
}

#[test]
fn a_second_signet_run_never_takes_over_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let c = Combined::start(dir.path(), &[]);
    c.entry_for_uid("spiffe://example.org/first", uid());
    let pid = c.proc.pid().to_string();
    let run_beside = |data: &std::path::Path| {
        run(&[
            "run",
            "--data-dir",
            data.to_str().unwrap(),
            "--admin-socket",
            &c.admin,
            "--socket-path",
            &c.agent,
            "--bind-address",
            "127.0.0.1:0",
        ])
    };
    // Same data dir and sockets: refused on the data dir lock.
    let again = run_beside(&dir.path().join("data"));
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains(&format!("another signet (pid {pid}) is using the data dir")),
        "{err}"
    );
    // Another data dir, the same sockets: refused, the sockets untouched.
    let other = tempfile::tempdir().unwrap();
    let again = run_beside(&other.path().join("data"));
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains(&format!(
            "another process is serving {} (pid {pid})",
            c.admin
        )),
        "{err}"
    );
    // The first still serves both sockets.
    let shown = c.admin(&["entry", "show"]);
    assert!(shown.status.success());
    assert!(String::from_utf8_lossy(&shown.stdout).contains("spiffe://example.org/first"));
    let fetched = c.api(&["fetch", "x509"]);
    assert!(String::from_utf8_lossy(&fetched.stdout).contains("spiffe://example.org/first"));
    // Its socket removed behind its back, the first says so.
    std::fs::remove_file(&c.agent).unwrap();
    eventually("the removed socket in the log", || {
        c.proc
            .log_text()
            .contains("this server's socket was removed")
            .then_some(())
    });
}

#[test]
fn printing_into_a_closed_pipe_exits_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let c = Combined::start(dir.path(), &[]);
    for i in 0..50 {
        c.entry_for_uid(&format!("spiffe://example.org/many/{i}"), 4242);
    }
    // The reader keeps one line and goes away; signet must not panic.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} entry show --socket {} 2>{}/stderr | head -1",
            env!("CARGO_BIN_EXE_signet"),
            c.admin,
            dir.path().display()
        ))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    let stderr = std::fs::read_to_string(dir.path().join("stderr")).unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("Broken pipe"), "{stderr}");
}

#[test]
#[ignore = "needs root: another user's directory (scripts/test runs it as root)"]
fn sockets_are_never_served_from_a_directory_another_user_controls() {
    use std::os::unix::fs::PermissionsExt;
    require_root();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // A local user made the socket directory first (as /tmp/signet could be).
    let theirs = dir.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    // And one anybody may write to.
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    for (sockets, want) in [
        (&theirs, "belongs to uid 65534"),
        (&open, "other users may write to it"),
    ] {
        let out = run(&[
            "run",
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
            "--admin-socket",
            sockets.join("admin.sock").to_str().unwrap(),
            "--socket-path",
            sockets.join("agent.sock").to_str().unwrap(),
            "--bind-address",
            "127.0.0.1:0",
        ]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{err}");
        assert!(!sockets.join("admin.sock").exists());
    }
}

#[test]
fn the_data_dir_and_datastore_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    // An existing data dir others could read is made private too.
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let c = Combined::start(dir.path(), &[]);
    c.entry_for_uid("spiffe://example.org/private", 4242);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700, "data dir");
    let mut files = 0;
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("datastore.sqlite3") {
            assert_eq!(mode(&path), 0o600, "{name}");
            files += 1;
        }
    }
    assert!(files >= 1, "no datastore file in {}", data.display());
}

#[test]
fn entries_round_trip_through_a_data_file() {
    let dir = tempfile::tempdir().unwrap();
    let c = Combined::start(dir.path(), &[]);
    for i in 0..3 {
        let id = format!("spiffe://example.org/batch/{i}");
        json_stdout(&c.admin(&[
            "entry",
            "create",
            "--spiffe-id",
            &id,
            "--selector",
            &format!("unix:uid:{}", 500 + i),
            "--output",
            "json",
        ]));
    }
    let shown = c.admin(&["entry", "show", "--output", "json"]);
    let file = dir.path().join("entries.json");
    std::fs::write(&file, &shown.stdout).unwrap();
    for e in json_stdout(&shown)["entries"].as_array().unwrap() {
        c.admin(&["entry", "delete", "--id", e["id"].as_str().unwrap()]);
    }
    let created = json_stdout(&c.admin(&[
        "entry",
        "create",
        "--data",
        file.to_str().unwrap(),
        "--output",
        "json",
    ]));
    assert_eq!(created["entries"].as_array().unwrap().len(), 3);
    assert_eq!(created["failed"], 0);
    // The same file again: every entry is a duplicate, reported, nothing created.
    let again = c.admin(&["entry", "create", "--data", file.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("3 of 3 entries were not created"));
    assert_eq!(
        json_stdout(&c.admin(&["entry", "count", "--output", "json"]))["count"],
        3
    );
}

#[test]
fn beyond_the_svid_cache_bound_identities_are_minted_on_demand() {
    let dir = tempfile::tempdir().unwrap();
    let c = Combined::start(dir.path(), &["--svid-cache-size", "1"]);
    for i in 0..3 {
        let id = format!("spiffe://example.org/other/{i}");
        json_stdout(&c.admin(&[
            "entry",
            "create",
            "--spiffe-id",
            &id,
            "--selector",
            &format!("unix:uid:{}", 700 + i),
            "--output",
            "json",
        ]));
    }
    // This entry comes last, when the cache (bound 1) is already full: the
    // workload asking for it gets it all the same.
    let sel = format!("unix:uid:{}", uid());
    json_stdout(&c.admin(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/zz-mine",
        "--selector",
        &sel,
        "--output",
        "json",
    ]));
    let svid = c.x509_json("the on-demand SVID");
    assert!(svid.contains("spiffe://example.org/zz-mine"), "{svid}");
}

#[test]
fn operators_mint_svids_and_jwts() {
    let dir = tempfile::tempdir().unwrap();
    let c = Combined::start(dir.path(), &[]);
    let out_dir = dir.path().join("minted");
    std::fs::create_dir(&out_dir).unwrap();
    let m = json_stdout(&c.admin(&[
        "x509",
        "mint",
        "--spiffe-id",
        "spiffe://example.org/db",
        "--dns-name",
        "db.example.org",
        "--ttl",
        "10m",
        "--write",
        out_dir.to_str().unwrap(),
        "--output",
        "json",
    ]));
    assert_eq!(m["spiffe_id"], "spiffe://example.org/db");
    let mode = std::fs::metadata(out_dir.join("svid_key.pem"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "the key is written owner-only");
    let openssl = |args: &[&str]| {
        std::process::Command::new("openssl")
            .args(args)
            .current_dir(&out_dir)
            .output()
            .unwrap()
    };
    let verify = openssl(&["verify", "-CAfile", "bundle.pem", "svid.pem"]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let subject = openssl(&["x509", "-in", "svid.pem", "-noout", "-subject"]);
    assert!(String::from_utf8_lossy(&subject.stdout).contains("db.example.org"));

    let jwt = json_stdout(&c.admin(&[
        "jwt",
        "mint",
        "--spiffe-id",
        "spiffe://example.org/db",
        "--audience",
        "aws",
        "--output",
        "json",
    ]));
    let svid = signet_identity::JwtSvid::parse_insecure(jwt["token"].as_str().unwrap()).unwrap();
    assert_eq!(svid.spiffe_id().as_str(), "spiffe://example.org/db");
    assert_eq!(svid.audience(), ["aws"]);
    // Outside the trust domain: refused, naming the rule.
    let out = c.admin(&["x509", "mint", "--spiffe-id", "spiffe://other.org/db"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not in this CA's trust domain"));
}

#[test]
fn entry_update_changes_only_what_is_given_and_delete_selects_by_spiffe_id() {
    let dir = tempfile::tempdir().unwrap();
    let c = Combined::start(dir.path(), &[]);
    let web = "spiffe://example.org/web";
    let created = json_stdout(&c.admin(&[
        "entry",
        "create",
        "--spiffe-id",
        web,
        "--selector",
        "unix:uid:1",
        "--dns-name",
        "web.internal",
        "--output",
        "json",
    ]));
    let id = created["id"].as_str().unwrap().to_string();
    let parent = created["parent_id"].as_str().unwrap().to_string();
    assert!(!parent.is_empty());

    // Only the TTL changes: no --spiffe-id, no --parent-id needed, the DNS
    // name and selectors stay.
    let updated = json_stdout(&c.admin(&[
        "entry",
        "update",
        "--id",
        &id,
        "--x509-ttl",
        "2h",
        "--output",
        "json",
    ]));
    assert_eq!(updated["x509_ttl"], 7200);
    assert_eq!(updated["spiffe_id"], web);
    assert_eq!(updated["parent_id"], parent.as_str());
    assert_eq!(updated["dns_names"], serde_json::json!(["web.internal"]));
    assert_eq!(updated["selectors"], serde_json::json!(["unix:uid:1"]));
    // A list flag replaces its list; a flag turns on, =false off.
    let updated = json_stdout(&c.admin(&[
        "entry",
        "update",
        "--id",
        &id,
        "--selector",
        "unix:uid:2",
        "--admin",
        "--output",
        "json",
    ]));
    assert_eq!(updated["selectors"], serde_json::json!(["unix:uid:2"]));
    assert_eq!(updated["admin"], true);
    assert_eq!(updated["x509_ttl"], 7200);
    let updated = json_stdout(&c.admin(&[
        "entry",
        "update",
        "--id",
        &id,
        "--admin=false",
        "--output",
        "json",
    ]));
    assert_eq!(updated["admin"], false);
    let out = c.admin(&["entry", "update", "--id", "no-such-id", "--x509-ttl", "1h"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no entry with id no-such-id"));

    // Two entries with one SPIFFE ID: delete by it alone is refused,
    // naming both; with --parent-id it picks one.
    let other_parent = "spiffe://example.org/node/other";
    json_stdout(&c.admin(&[
        "entry",
        "create",
        "--spiffe-id",
        web,
        "--parent-id",
        other_parent,
        "--selector",
        "unix:uid:3",
        "--output",
        "json",
    ]));
    let out = c.admin(&["entry", "delete", "--spiffe-id", web]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("2 entries have SPIFFE ID spiffe://example.org/web")
            && err.contains(&id)
            && err.contains("--parent-id"),
        "{err}"
    );
    let deleted = json_stdout(&c.admin(&[
        "entry",
        "delete",
        "--spiffe-id",
        web,
        "--parent-id",
        other_parent,
        "--output",
        "json",
    ]));
    assert_eq!(deleted["deleted"]["parent_id"], other_parent);
    let deleted =
        json_stdout(&c.admin(&["entry", "delete", "--spiffe-id", web, "--output", "json"]));
    assert_eq!(deleted["deleted"]["id"], id.as_str());
    let out = c.admin(&["entry", "delete", "--spiffe-id", web]);
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("no entry has SPIFFE ID spiffe://example.org/web"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_banner_says_where_the_state_is_and_whether_the_ca_is_new() {
    let dir = tempfile::tempdir().unwrap();
    let start = |extra: &[&str]| {
        let mut cmd = signet();
        cmd.current_dir(dir.path())
            .args([
                "run",
                "--data-dir",
                "state",
                "--admin-socket",
                "admin.sock",
                "--agent-socket",
                "agent.sock",
                "--bind-address",
                "127.0.0.1:0",
            ])
            .args(extra);
        cmd
    };
    let mut first = Proc::spawn("signet-run-1", start(&[]), dir.path());
    let banner = first.wait_for("Press Ctrl-C");
    let absolute = dir.path().join("state");
    assert!(
        banner.contains(&format!("data dir       {}\n", absolute.display())),
        "{banner}"
    );
    assert!(banner.contains("new CA created"), "{banner}");
    assert!(first.signal_and_wait("TERM").success());

    let mut again = Proc::spawn("signet-run-2", start(&[]), dir.path());
    let banner = again.wait_for("Press Ctrl-C");
    assert!(banner.contains("resumed from the datastore"), "{banner}");
    assert!(!banner.contains("new CA created"), "{banner}");
    assert!(again.signal_and_wait("TERM").success());

    // The same state under another trust domain: refused, saying what to do.
    let out = start(&["--trust-domain", "other.org"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("belongs to trust domain example.org, not other.org")
            && err.contains("--trust-domain example.org")
            && err.contains("--data-dir"),
        "{err}"
    );
}

#[test]
fn the_default_svid_is_the_first_by_spiffe_id_and_several_are_pointed_out() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let c = Combined::start(dir.path(), &[]);
    let uid = uid();
    // Created in the other order: the default does not depend on it.
    c.entry_for_uid("spiffe://example.org/zeta", uid);
    c.entry_for_uid("spiffe://example.org/alpha", uid);
    let first_id = || {
        let out = c.api(&["fetch", "x509", "--output", "json"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let first: serde_json::Value = serde_json::from_str(text.lines().next()?).ok()?;
        (text.lines().count() == 2).then(|| first["spiffe_id"].as_str().unwrap().to_string())
    };
    assert_eq!(
        eventually("both SVIDs", first_id),
        "spiffe://example.org/alpha"
    );

    // --write: the directory is made (0700), the choice is said, and
    // --svid-id picks another.
    let out_dir = dir.path().join("made/here");
    let out = c.api(&["fetch", "x509", "--write", out_dir.to_str().unwrap()]);
    let err = stderr_of_success(&out);
    assert!(
        err.contains("2 identities are issued to this workload")
            && err.contains("using spiffe://example.org/alpha")
            && err.contains("--svid-id"),
        "{err}"
    );
    let mode = std::fs::metadata(&out_dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    let written = || {
        signet_identity::X509Svid::from_pem(
            &std::fs::read(out_dir.join("svid.pem")).unwrap(),
            &std::fs::read(out_dir.join("svid_key.pem")).unwrap(),
        )
        .unwrap()
        .spiffe_id()
        .to_string()
    };
    assert_eq!(written(), "spiffe://example.org/alpha");
    let out = c.api(&[
        "fetch",
        "x509",
        "--write",
        out_dir.to_str().unwrap(),
        "--svid-id",
        "spiffe://example.org/zeta",
    ]);
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("identities are issued"));
    assert_eq!(written(), "spiffe://example.org/zeta");

    // The helper says so too, in its log.
    let helper_dir = dir.path().join("helper");
    std::fs::create_dir(&helper_dir).unwrap();
    let out = run(&[
        "helper",
        "--once",
        "--dir",
        helper_dir.to_str().unwrap(),
        "--agent-socket",
        &c.agent,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("2 identities are issued to this workload"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_cli_warns_confirms_and_prints_as_people_and_parsers_expect() {
    let dir = tempfile::tempdir().unwrap();
    let c = Combined::start(dir.path(), &[]);
    // Valid but suspicious entries are created, with a warning each.
    let out = c.admin(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/typo",
        "--selector",
        "unix:user:nobdy",
        "--x509-ttl",
        "48h",
    ]);
    let err = stderr_of_success(&out);
    assert!(
        err.contains(
            "warning: selector unix:user:nobdy: this server's host has no user named \"nobdy\""
        ),
        "{err}"
    );
    assert!(
        err.contains(
            "warning: x509_ttl 2days is longer than the CA's signing authorities live (1day)"
        ),
        "{err}"
    );
    let out = c.admin(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/root",
        "--selector",
        "unix:user:root",
        "--selector",
        "unix:group:root",
    ]);
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("warning"));

    // The local agent is evicted or banned only with --yes.
    let local = "spiffe://example.org/signet/agent/local";
    for what in ["evict", "ban"] {
        let out = c.admin(&["agent", what, "--spiffe-id", local]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("local agent of `signet run`") && err.contains("--yes"),
            "{err}"
        );
    }
    let listed = String::from_utf8_lossy(&c.admin(&["agent", "list"]).stdout).into_owned();
    assert!(listed.contains("Banned        : false"), "{listed}");
    // Times in text are RFC 3339.
    let expires = listed
        .lines()
        .find_map(|l| l.strip_prefix("SVID expires  : "))
        .unwrap();
    assert!(
        humantime::parse_rfc3339(expires).is_ok(),
        "{expires} is not RFC 3339"
    );
    // JSON output ends with a newline.
    let out = c.admin(&["bundle", "show", "--format", "spiffe"]);
    assert!(
        out.stdout.ends_with(b"}\n"),
        "{:?}",
        String::from_utf8_lossy(&out.stdout)
    );
}
