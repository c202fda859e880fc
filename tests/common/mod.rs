//! Harness for end-to-end tests of the `signet` binary: the commands and a
//! combined `signet run` to test against. Child processes, Envoy and the
//! probes come from `signet-testkit` (shared with the sidecar bench);
//! what lives here needs this package's binary or its examples.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

// Not every test binary uses all of these.
#[allow(unused_imports)]
pub use signet_testkit::envoy::{self, Envoy};
#[allow(unused_imports)]
pub use signet_testkit::http::{curl, curl_with, presented_serial};
#[allow(unused_imports)]
pub use signet_testkit::{DEADLINE, Proc, eventually, eventually_within, require_root, uid};

/// The `signet` binary under test, with no socket location inherited from
/// the environment and debug logs from the server, agent and socket code.
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

/// A `signet server` (data in `dir/server`, admin socket `dir/admin.sock`,
/// node API on `bind`), serving: its process, admin socket and node API
/// address.
pub fn start_server(
    dir: &Path,
    bind: &str,
    extra: &[&str],
) -> (Proc, String, std::net::SocketAddr) {
    let admin = dir.join("admin.sock").display().to_string();
    let mut cmd = signet();
    cmd.args(["server", "--data-dir"])
        .arg(dir.join("server"))
        .args(["--admin-socket", &admin, "--bind-address", bind])
        .args(extra);
    let mut proc = Proc::spawn("signet-server", cmd, dir);
    let banner = proc.wait_for("Press Ctrl-C");
    let addr = agent_api_addr(&banner);
    (proc, admin, addr)
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

/// A command's stdout as JSON, failing the test with stderr if it failed.
pub fn json_stdout(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Runs `signet ARGS`, which must fail with `says` in its stderr.
pub fn fails_saying(args: &[&str], says: &str) {
    let out = run(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "signet {args:?} succeeded");
    assert!(err.contains(says), "signet {args:?}: {err}");
}

/// A command's stdout if it succeeded.
pub fn stdout_if_ok(out: Output) -> Option<String> {
    out.status
        .success()
        .then(|| String::from_utf8(out.stdout).unwrap())
}

/// A combined `signet run` in a temp dir, with its sockets there too.
pub struct Combined {
    pub proc: Proc,
    pub dir: PathBuf,
    pub admin: String,
    pub agent: String,
}

impl Combined {
    /// A sidecar (`signet proxy MODE --listen 127.0.0.1:0 ARGS`) on this
    /// core's agent socket, ready; and the port it listens on.
    pub fn sidecar(&self, name: &str, mode: &str, args: &[&str]) -> (Proc, u16) {
        let mut all = args.to_vec();
        all.extend(["--agent-socket", &self.agent]);
        start_sidecar(name, signet(), mode, &all, &self.dir)
    }

    pub fn start(dir: &Path, extra: &[&str]) -> Combined {
        Self::start_bound(dir, "127.0.0.1:0", extra)
    }

    /// [`Combined::start`] with its server-agent API on `bind` (to come
    /// back on the same port after a restart).
    pub fn start_bound(dir: &Path, bind: &str, extra: &[&str]) -> Combined {
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
                bind,
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
        self.entry_for_uid_with(id, uid, &[]);
    }

    /// Registers `id` for the processes of `uid`, with more `entry create`
    /// flags (asserts success).
    pub fn entry_for_uid_with(&self, id: &str, uid: u32, more: &[&str]) {
        let selector = format!("unix:uid:{uid}");
        let mut args = vec![
            "entry",
            "create",
            "--spiffe-id",
            id,
            "--selector",
            &selector,
        ];
        args.extend(more);
        let out = self.admin(&args);
        assert!(
            out.status.success(),
            "entry for {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `signet api fetch x509 --output json` as this test's uid, polled
    /// until it succeeds (`what` names it in a timeout).
    pub fn x509_json(&self, what: &str) -> String {
        eventually(what, || {
            stdout_if_ok(self.api(&["fetch", "x509", "--output", "json"]))
        })
    }

    /// The OIDC provider its banner names: (discovery URL, the CA file to
    /// trust for a self-signed certificate, the issuer).
    pub fn oidc(&self) -> (String, Option<String>, String) {
        let banner = self.proc.seen.join("\n");
        let line = banner
            .lines()
            .find_map(|l| l.trim().strip_prefix("OIDC discovery "))
            .unwrap_or_else(|| panic!("the banner names no OIDC provider:\n{banner}"));
        let (url, rest) = line.split_once(' ').unwrap();
        let ca = rest
            .split_once("trust ")
            .map(|(_, r)| r.split(';').next().unwrap().to_owned());
        let issuer = rest.rsplit_once("issuer ").unwrap().1.trim_end_matches(')');
        (url.to_owned(), ca, issuer.to_owned())
    }

    /// Runs a workload-side `signet api` command against this instance.
    pub fn api(&self, args: &[&str]) -> Output {
        let mut all = vec!["api"];
        all.extend(args);
        all.extend(["--agent-socket", &self.agent]);
        run(&all)
    }
}

/// `signet authority KIND ARGS --output json`, or `signet
/// upstream-authority ARGS` for the kind "upstream" (asserts success).
pub fn authority(c: &Combined, kind: &str, args: &[&str]) -> serde_json::Value {
    let mut all = match kind {
        "upstream" => vec!["upstream-authority"],
        _ => vec!["authority", kind],
    };
    all.extend(args);
    all.extend(["--output", "json"]);
    let out = c.admin(&all);
    assert!(
        out.status.success(),
        "authority {kind} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    json_stdout(&out)
}

/// The id of the authority in `state`.
pub fn id_in(list: &serde_json::Value, state: &str) -> String {
    list["authorities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["state"] == state)
        .unwrap_or_else(|| panic!("no {state} authority in {list}"))["authority_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A tiny HTTP app on a port of its own choosing; returns it and its
/// port. It answers any method (`do_get` for a lowercase `get` too) with
/// the method, the path and the request headers it received, and prints
/// `request <x-case header>` for each request, so a test can tell which
/// reached it.
pub fn start_app(dir: &Path) -> (Proc, u16) {
    let script = r#"import http.server
class H(http.server.BaseHTTPRequestHandler):
    def __getattr__(self, name):
        if name.startswith('do_'): return self.answer
        raise AttributeError(name)
    def answer(self):
        print('request', self.headers.get('x-case', '-'), flush=True)
        head = f'method: {self.command}\npath: {self.path}\n'
        body = (head + ''.join(f'{k.lower()}: {v}\n' for k, v in self.headers.items())).encode()
        self.send_response(200); self.send_header('content-length', str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
s = http.server.HTTPServer(('127.0.0.1', 0), H)
print('listening on 127.0.0.1:%d' % s.server_address[1], flush=True)
s.serve_forever()
"#;
    let mut cmd = Command::new("python3");
    cmd.args(["-c", script]);
    let mut p = Proc::spawn("app", cmd, dir);
    let port = p.reported_addr("listening on").port();
    (p, port)
}

/// An example Envoy configuration with this test's ports and agent socket.
pub fn config(example: &str, replace: &[(&str, String)], out: &Path) -> PathBuf {
    envoy::from_example(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples/envoy")
            .join(example),
        replace,
        out,
    )
}

/// `signet` copied where processes of other uids can run it (`dir` is 0755).
pub fn signet_for_others(dir: &Path) -> PathBuf {
    signet_testkit::process::executable_for_others(Path::new(env!("CARGO_BIN_EXE_signet")), dir)
}

/// `signet proxy --config CONFIG` under `uid`, against the agent at `socket`.
pub fn start_proxy(
    name: &str,
    bin: &Path,
    config: &Path,
    socket: &str,
    uid: u32,
    dir: &Path,
) -> Proc {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(bin);
    cmd.args(["proxy", "--config"])
        .arg(config)
        .args(["--socket", socket])
        .env("SIGNET_LOG", "info")
        .uid(uid)
        .gid(uid);
    Proc::spawn(name, cmd, dir)
}

/// `cmd` (a `signet` binary) run as `proxy MODE ARGS --listen 127.0.0.1:0
/// --admin-listen 127.0.0.1:0`, polled until its admin endpoint says it
/// presents an SVID; returns it and the port its listener bound.
pub fn start_sidecar(
    name: &str,
    mut cmd: Command,
    mode: &str,
    args: &[&str],
    dir: &Path,
) -> (Proc, u16) {
    cmd.args(["proxy", mode, "--listen", "127.0.0.1:0"])
        .args(args)
        .args(["--admin-listen", "127.0.0.1:0"]);
    let mut p = Proc::spawn(name, cmd, dir);
    let port = p.reported_addr(&format!("listener {mode}:")).port();
    let admin = p.reported_addr("admin endpoint:").port();
    eventually(&format!("{name} to be ready"), || {
        (curl(&format!("http://127.0.0.1:{admin}/ready")).0 == 200).then_some(())
    });
    (p, port)
}

/// `openssl verify` of the SVID chain `svid.pem` in `dir` (its
/// intermediates taken from the same file) against `ca_file` alone.
pub fn openssl_verifies(dir: &Path, ca_file: &Path) {
    let verify = std::process::Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(ca_file)
        .args(["-untrusted", "svid.pem", "svid.pem"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "openssl verify: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
}
