//! End-to-end: the real `signet run` binary starts, explains itself,
//! publishes its bundle, stops cleanly on Ctrl-C and resumes the same CA.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Kills the child if the test fails before stopping it.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(data_dir: &Path) -> (Guard, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_signet"))
        .args(["run", "--data-dir"])
        .arg(data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (Guard(child), rx)
}

/// Collects stdout lines until one contains `want`, within a deadline.
fn wait_for(rx: &mpsc::Receiver<String>, want: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            let done = line.contains(want);
            seen.push(line);
            if done {
                return seen;
            }
        }
    }
    panic!(
        "no line with {want:?} within 30 s; saw:\n{}",
        seen.join("\n")
    );
}

fn interrupt_and_wait(mut guard: Guard) -> std::process::ExitStatus {
    let pid = guard.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = guard.0.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "signet did not stop within 30 s of SIGINT"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn run_starts_explains_stops_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (guard, rx) = start(&data);
    let banner = wait_for(&rx, "Press Ctrl-C").join("\n");
    assert!(banner.contains("trust domain   example.org"), "{banner}");
    assert!(banner.contains("bundle.pem"), "{banner}");
    let pem = std::fs::read_to_string(data.join("bundle.pem")).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("bundle.json")).unwrap()).unwrap();
    assert_eq!(json["spiffe_sequence"], 1);
    let status = interrupt_and_wait(guard);
    assert!(status.success(), "Ctrl-C should exit 0, got {status}");

    // A restart resumes the same CA rather than minting a new one.
    let (guard, rx) = start(&data);
    wait_for(&rx, "Press Ctrl-C");
    assert_eq!(
        std::fs::read_to_string(data.join("bundle.pem")).unwrap(),
        pem
    );
    assert!(interrupt_and_wait(guard).success());
}

#[test]
fn a_corrupt_journal_stops_the_start_and_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca_journal.json"), "{not json").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_signet"))
        .args(["run", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ca_journal.json is corrupt"), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("ca_journal.json")).unwrap(),
        "{not json"
    );
}

#[test]
fn bad_flags_name_the_problem() {
    let out = Command::new(env!("CARGO_BIN_EXE_signet"))
        .args(["run", "--trust-domain", "Example.ORG"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("trust domain character 'E'"), "{err}");
}
