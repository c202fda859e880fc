//! Attacks on workload attestation (SECURITY.md invariant 2): the caller is
//! pinned when its connection is accepted, so neither the connecting
//! process after it exec'd an entitled binary, nor a victim that took over
//! the connecting process's pid, gets an identity through a connection the
//! attacker kept.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::*;

const ENTITLED: &str = "spiffe://example.org/entitled";

/// A copy of `sleep` at a path of its own: the entitled binary.
fn entitled_binary(dir: &Path) -> PathBuf {
    let sleep = String::from_utf8(
        Command::new("sh")
            .args(["-c", "command -v sleep"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let dst = dir.join("entitled");
    std::fs::copy(sleep.trim(), &dst).unwrap();
    std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755)).unwrap();
    dst
}

/// Registers `id` for this uid's processes running `bin`.
fn entry_for_binary(c: &Combined, id: &str, bin: &Path) {
    let path = format!("unix:path:{}", bin.display());
    c.entry_for_uid_with(id, uid(), &["--selector", &path]);
}

/// Lets an attacker in an -on-input mode go on (exec or exit).
fn go_on(py: &mut Proc) {
    use std::io::Write;
    let mut stdin = py.child.as_mut().unwrap().stdin.take().unwrap();
    stdin.write_all(b"go\n").unwrap();
}

/// Waits until the agent logs that it accepted and pinned `pid`.
fn wait_until_pinned(c: &Combined, pid: u32) {
    eventually("the agent to accept the attacker's connection", || {
        c.proc
            .log_text()
            .lines()
            .any(|l| {
                l.contains("pinned a Unix-socket peer") && l.contains(&format!("\"pid\":{pid}"))
            })
            .then_some(())
    });
}

/// Starts the attacker; returns it and the pid the agent saw connect.
fn attacker(c: &Combined, dir: &Path, relay: &Path, mode: &[&str]) -> (Proc, u32) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/relay_attack.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script)
        .arg(&c.agent)
        .arg(relay)
        .args(mode)
        .stdin(std::process::Stdio::piped());
    let mut py = Proc::spawn("attacker", cmd, dir);
    let seen = py.wait_for("relaying");
    let pid = seen
        .lines()
        .find_map(|l| l.strip_prefix("relaying "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (py, pid)
}

fn fetch_through(relay: &Path) -> std::process::Output {
    run(&[
        "api",
        "fetch",
        "x509",
        "--timeout",
        "3s",
        "--socket",
        relay.to_str().unwrap(),
    ])
}

#[test]
fn exec_after_connect_gets_no_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let c = Combined::start(dir, &[]);
    let entitled = entitled_binary(dir);
    entry_for_binary(&c, ENTITLED, &entitled);

    let relay = dir.join("relay.sock");
    let (mut py, pid) = attacker(
        &c,
        dir,
        &relay,
        &["exec-on-input", entitled.to_str().unwrap()],
    );
    // Once the agent has accepted (and pinned) the connection, the
    // connecting process execs the entitled binary.
    wait_until_pinned(&c, pid);
    go_on(&mut py);
    eventually("the attacker to exec the entitled binary", || {
        (std::fs::read_link(format!("/proc/{pid}/exe")).ok()? == entitled).then_some(())
    });
    let out = fetch_through(&relay);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the relayed connection got an identity: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.contains("runs another executable than when it connected"),
        "{stderr}"
    );
    assert!(stderr.contains("PermissionDenied"), "{stderr}");
    assert!(c.proc.log_text().contains("workload attestation failed"));
}

#[test]
fn an_open_stream_is_closed_once_its_caller_execs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let c = Combined::start(dir, &[]);
    let entitled = entitled_binary(dir);
    // The attacker (python) has an identity of its own, so a stream opens.
    let python = std::fs::canonicalize(
        String::from_utf8(
            Command::new("python3")
                .args(["-c", "import sys; print(sys.executable)"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap()
        .trim(),
    )
    .unwrap();
    entry_for_binary(&c, "spiffe://example.org/python", &python);
    entry_for_binary(&c, ENTITLED, &entitled);
    let relay = dir.join("relay.sock");
    let (mut py, pid) = attacker(
        &c,
        dir,
        &relay,
        &["exec-on-input", entitled.to_str().unwrap()],
    );
    let mut watch_cmd = signet();
    watch_cmd.args([
        "api",
        "watch",
        "--output",
        "json",
        "--socket",
        relay.to_str().unwrap(),
    ]);
    let mut watch = Proc::spawn("watch", watch_cmd, dir);
    watch.wait_for("spiffe://example.org/python");
    go_on(&mut py);
    eventually("the attacker to exec the entitled binary", || {
        (std::fs::read_link(format!("/proc/{pid}/exe")).ok()? == entitled).then_some(())
    });
    // A change makes the stream push again: refused, and closed.
    c.entry_for_uid("spiffe://example.org/push", 65533);
    let seen = watch.wait_for("runs another executable than when it connected");
    assert!(!seen.contains(ENTITLED), "{seen}");
}

/// The executable's hash is cached by (device, inode, size, mtime, ctime):
/// rewriting a binary in place with other contents of the same size, then
/// setting its mtime back, must not keep the hash of what it was. The
/// entitled binary is a copy of curl, which asks the Workload API itself
/// (HTTP/2 over the socket, a gRPC FetchJWTSVID by hand).
#[test]
fn a_rewritten_binary_with_its_mtime_set_back_is_hashed_again() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let c = Combined::start(dir, &[]);
    let curl = String::from_utf8(
        Command::new("sh")
            .args(["-c", "command -v curl"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let original = std::fs::read(curl.trim()).unwrap();
    let copy = dir.join("entitled-curl");
    std::fs::write(&copy, &original).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sum = Command::new("sha256sum").arg(&copy).output().unwrap();
    let hash = String::from_utf8(sum.stdout).unwrap()[..64].to_string();
    let out = c.admin(&[
        "entry",
        "create",
        "--spiffe-id",
        ENTITLED,
        "--selector",
        &format!("unix:uid:{}", uid()),
        "--selector",
        &format!("unix:sha256:{hash}"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A gRPC-framed JWTSVIDRequest { audience: ["db"] }.
    let request = dir.join("request.bin");
    std::fs::write(&request, [0, 0, 0, 0, 4, 0x0a, 0x02, b'd', b'b']).unwrap();
    let fetch = || {
        let out = Command::new(&copy)
            .args([
                "--http2-prior-knowledge",
                "-s",
                "-m",
                "5",
                "--unix-socket",
                &c.agent,
            ])
            .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
            .args(["-H", "workload.spiffe.io: true", "--data-binary"])
            .arg(format!("@{}", request.display()))
            .arg("http://localhost/SpiffeWorkloadAPI/FetchJWTSVID")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains(ENTITLED)
    };
    eventually("the untouched copy to be served its identity", || {
        fetch().then_some(())
    });

    // Other contents, same size, same inode, mtime set back.
    let mtime = std::fs::metadata(&copy).unwrap().modified().unwrap();
    let mut changed = original.clone();
    let needle = b"Usage: curl";
    let at = changed
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("a string to change in the binary");
    changed[at] = b'u';
    std::fs::write(&copy, &changed).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&copy)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    assert_eq!(std::fs::metadata(&copy).unwrap().modified().unwrap(), mtime);
    assert!(!fetch(), "the rewritten binary kept the entitled hash");
}

/// Starts `bin` under the pid `want` (the kernel hands out the pid after
/// `ns_last_pid` next, when it is free; other processes forking meanwhile
/// can take it first, so this retries).
fn spawn_with_pid(bin: &Path, want: u32) -> Child {
    let deadline = Instant::now() + DEADLINE;
    loop {
        std::fs::write("/proc/sys/kernel/ns_last_pid", format!("{}", want - 1)).unwrap();
        let mut child = Command::new(bin).arg("60").spawn().unwrap();
        if child.id() == want {
            return child;
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            Instant::now() < deadline,
            "could not start a process as pid {want}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
#[ignore = "needs root: sets /proc/sys/kernel/ns_last_pid to hand the attacker's pid to a victim (scripts/test runs it as root)"]
fn a_victim_that_reuses_the_pid_lends_no_identity() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let c = Combined::start(dir, &[]);
    let entitled = entitled_binary(dir);
    entry_for_binary(&c, ENTITLED, &entitled);

    let relay = dir.join("relay.sock");
    let (mut py, pid) = attacker(&c, dir, &relay, &["exit-on-input"]);
    wait_until_pinned(&c, pid);
    go_on(&mut py);
    // The attacker has exited; reaped, its pid is free.
    let status = py.child.take().unwrap().wait().unwrap();
    assert!(status.success());
    let mut victim = spawn_with_pid(&entitled, pid);
    let out = fetch_through(&relay);
    let _ = victim.kill();
    let _ = victim.wait();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the relayed connection got the victim's identity: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(stderr.contains("exited since it connected"), "{stderr}");
}

/// A local user opening more idle connections than the agent has file
/// descriptors: the agent keeps serving its other callers and its admin
/// socket (it used to spin in its accept loop, unresponsive).
#[test]
#[ignore = "needs root: the attacker runs under another uid (scripts/test runs it as root)"]
fn idle_connections_of_one_user_cannot_starve_the_agent() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let admin = dir.join("admin.sock").display().to_string();
    let agent = dir.join("agent.sock").display().to_string();
    // The agent gets 1,024 descriptors, hard limit included.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "ulimit -Sn 1024 && ulimit -Hn 1024 && exec {} run --data-dir {}/data --admin-socket {admin} --socket-path {agent} --bind-address 127.0.0.1:0",
            env!("CARGO_BIN_EXE_signet"),
            dir.display()
        ))
        .env("SIGNET_LOG", "info");
    let mut server = Proc::spawn("signet-run", cmd, dir);
    server.wait_for("Press Ctrl-C");
    let created = run(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/root-workload",
        "--selector",
        "unix:uid:0",
        "--socket",
        &admin,
    ]);
    assert!(created.status.success());

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/hold_connections.py");
    let mut attacker_cmd = Command::new("python3");
    attacker_cmd.arg(script).args([&agent, "1200"]);
    std::os::unix::process::CommandExt::uid(&mut attacker_cmd, 65534);
    std::os::unix::process::CommandExt::gid(&mut attacker_cmd, 65534);
    let mut attacker = Proc::spawn("attacker", attacker_cmd, dir);
    attacker.wait_for("holding");

    // Root's workloads and the operator are still served, in time.
    let fetched = run_within(&["api", "fetch", "x509", "--socket", &agent]);
    assert!(
        String::from_utf8_lossy(&fetched.stdout).contains("spiffe://example.org/root-workload"),
        "{}",
        String::from_utf8_lossy(&fetched.stderr)
    );
    let shown = run_within(&["entry", "show", "--socket", &admin]);
    assert!(
        shown.status.success(),
        "{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    assert!(
        server
            .log_text()
            .contains("too many open connections for this uid")
    );
}

/// Runs `signet ARGS`, killing it and failing the test if it has not
/// finished within the deadline.
fn run_within(args: &[&str]) -> std::process::Output {
    let child = signet()
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!(
                "signet {} got no answer within {DEADLINE:?}",
                args.join(" ")
            );
        }
    }
}
