//! `signet helper --signal --pid-file` run as root signals only the process
//! the pid file's owner meant (SECURITY.md invariant 8): whoever can write
//! the pid file chooses the pid.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use common::*;

const NOBODY: u32 = 65534;

fn sleeper(uid: u32) -> Child {
    Command::new("sleep")
        .arg("60")
        .uid(uid)
        .gid(uid)
        .spawn()
        .unwrap()
}

/// A pid file naming `pid`, owned by `owner` (as its owner would write it).
fn pid_file(dir: &Path, name: &str, pid: u32, owner: u32) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{pid}\n")).unwrap();
    std::os::unix::fs::chown(&path, Some(owner), Some(owner)).unwrap();
    path
}

fn helper_once(c: &Combined, out: &Path, pid_file: &Path) -> Output {
    let out = run(&[
        "helper",
        "--once",
        "--socket",
        &c.agent,
        "--dir",
        out.to_str().unwrap(),
        "--signal",
        "HUP",
        "--pid-file",
        pid_file.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn says(out: &Output, what: &str) -> bool {
    String::from_utf8_lossy(&out.stdout).contains(what)
        || String::from_utf8_lossy(&out.stderr).contains(what)
}

fn exited_by_hup(child: &mut Child) -> bool {
    let deadline = Instant::now() + DEADLINE;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            use std::os::unix::process::ExitStatusExt;
            return status.signal() == Some(1);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
#[ignore = "needs root: the helper runs as root, the pid file's owner and the processes under other uids (scripts/test runs it as root)"]
fn a_root_helper_signals_only_the_process_the_pid_files_owner_meant() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let c = Combined::start(dir, &[]);
    c.entry_for_uid("spiffe://example.org/helper", 0);
    let out = dir.join("out");
    std::fs::create_dir(&out).unwrap();
    // A directory another user owns, holding the pid files they write.
    let theirs = dir.join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(NOBODY), Some(NOBODY)).unwrap();

    // The other user names a root process: refused, the process lives.
    let mut victim = sleeper(0);
    let file = pid_file(&theirs, "victim.pid", victim.id(), NOBODY);
    let result = helper_once(&c, &out, &file);
    assert!(
        says(&result, "refusing to signal another user's process"),
        "{result:?}"
    );
    assert!(
        victim.try_wait().unwrap().is_none(),
        "the root process was signalled"
    );
    let _ = victim.kill();
    let _ = victim.wait();

    // A stale pid file (written before its pid's process started): refused.
    let mut late = sleeper(NOBODY);
    let file = pid_file(&theirs, "stale.pid", late.id(), NOBODY);
    let an_hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(an_hour_ago)
        .unwrap();
    let result = helper_once(&c, &out, &file);
    assert!(
        says(&result, "started after the pid file was written"),
        "{result:?}"
    );
    assert!(
        late.try_wait().unwrap().is_none(),
        "a process newer than its pid file was signalled"
    );
    let _ = late.kill();
    let _ = late.wait();

    // The owner's own process, running when the file was written: signalled.
    let mut own = sleeper(NOBODY);
    let file = pid_file(&theirs, "own.pid", own.id(), NOBODY);
    let result = helper_once(&c, &out, &file);
    assert!(says(&result, "sent SIGHUP"), "{result:?}");
    assert!(exited_by_hup(&mut own), "the owner's process got no SIGHUP");
}
