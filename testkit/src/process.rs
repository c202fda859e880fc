//! Child processes for end-to-end tests and benches: each is killed on
//! drop, its stdout read line by line (what it reports: ports, banners),
//! its stderr kept in a log file printed when the test fails.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a test waits for anything: a readiness line, a state polled.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A running child process; killed on drop, its log printed if the test
/// is failing.
#[derive(Debug)]
pub struct Proc {
    pub child: Option<Child>,
    lines: mpsc::Receiver<String>,
    /// Every stdout line read so far.
    pub seen: Vec<String>,
    log: PathBuf,
    name: String,
}

impl Proc {
    /// Starts `cmd` with stdout piped to this process and stderr to
    /// `log_dir/name.log`.
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> Proc {
        let log = log_dir.join(format!("{name}.log"));
        let stderr = std::fs::File::create(&log).unwrap();
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            child: Some(child),
            lines: rx,
            seen: Vec::new(),
            log,
            name: name.into(),
        }
    }

    /// Waits for a new stdout line containing `want` (lines read before
    /// do not count); returns everything seen.
    pub fn wait_for(&mut self, want: &str) -> String {
        self.next_line_with(want);
        self.seen.join("\n")
    }

    /// Waits for a new stdout line containing `want` and returns it.
    pub fn next_line_with(&mut self, want: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        while Instant::now() < deadline {
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(50)) {
                let found = line.contains(want);
                self.seen.push(line.clone());
                if found {
                    return line;
                }
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "{} exited ({status}) before printing {want:?}; stdout:\n{}\nlog:\n{}",
                    self.name,
                    self.seen.join("\n"),
                    self.log_text()
                );
            }
        }
        panic!(
            "{} printed no {want:?} within {DEADLINE:?}; stdout:\n{}\nlog:\n{}",
            self.name,
            self.seen.join("\n"),
            self.log_text()
        );
    }

    /// The address on the stdout line that starts with `prefix` (waiting
    /// for it): how a child bound to port 0 reports where it listens.
    /// Lines read before count.
    pub fn reported_addr(&mut self, prefix: &str) -> std::net::SocketAddr {
        let seen = self.seen.iter().find(|l| l.trim().starts_with(prefix));
        let line = match seen {
            Some(line) => line.clone(),
            None => self.next_line_with(prefix),
        };
        line.trim()
            .strip_prefix(prefix)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("{}: no address after {prefix:?} in {line:?}", self.name))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends `sig` (e.g. "INT", "TERM", "KILL") and waits for the exit.
    pub fn signal_and_wait(&mut self, sig: &str) -> ExitStatus {
        let pid = self.pid().to_string();
        assert!(
            Command::new("kill")
                .args([&format!("-{sig}"), &pid])
                .status()
                .unwrap()
                .success()
        );
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not stop within {DEADLINE:?} of SIG{sig}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("----- {} log -----\n{}", self.name, self.log_text());
        }
    }
}

/// Polls `f` until it returns `Some`, within [`DEADLINE`].
pub fn eventually<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    eventually_within(DEADLINE, what, f)
}

/// Polls `f` until it returns `Some`, within `limit`.
pub fn eventually_within<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Fails a test that needs root with a message saying so. Such tests are
/// also marked `#[ignore = "needs root: ..."]`, so a run as another user
/// lists them as skipped; `scripts/test` runs them when it runs as root (as
/// CI does), and running one by hand as another user ends here, not in a
/// silent pass.
pub fn require_root() {
    assert_eq!(
        crate::uid(),
        0,
        "this test needs root: it starts processes under other uids (run scripts/test as root, as CI does)"
    );
}

/// A copy of the executable `src` in `dir` (0755), where processes of
/// other uids can run it. A copy already there of the same size is used as
/// it is (it may be running: writing over it would fail).
pub fn executable_for_others(src: &Path, dir: &Path) -> PathBuf {
    let dst = dir.join(src.file_name().unwrap());
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).ok();
    if size(&dst).is_some() && size(&dst) == size(src) {
        return dst;
    }
    std::fs::copy(src, &dst).unwrap_or_else(|e| panic!("copy {}: {e}", src.display()));
    std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755)).unwrap();
    dst
}

/// Writes `text` to `path`, readable by processes of other uids.
pub fn write_for_others(path: &Path, text: &str) -> PathBuf {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
    path.to_path_buf()
}
