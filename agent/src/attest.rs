//! Workload attestation from kernel facts (security invariant 2).
//!
//! The caller is identified by the credentials the kernel attached to its
//! Unix socket connection (SO_PEERCRED: pid, uid, gid) and by what /proc
//! says about that pid — never by anything the caller sends. Selectors:
//!
//! | selector | from |
//! |---|---|
//! | `unix:uid:<n>`, `unix:gid:<n>` | SO_PEERCRED |
//! | `unix:user:<name>`, `unix:group:<name>` | the user and group databases |
//! | `unix:supplementary_gid:<n>` | `/proc/<pid>/status` `Groups:` |
//! | `unix:path:<exe>` | `/proc/<pid>/exe` |
//! | `unix:sha256:<hex>` | the executable's contents (size-limited, cached by inode and mtime) |
//! | `systemd:id:<unit>` | `/proc/<pid>/cgroup`, a `.service`/`.scope` unit |
//! | `container:id:<id>` | `/proc/<pid>/cgroup`, a 64-hex container id (docker, containerd, cri-o, podman) |
//!
//! The caller is pinned when its connection is accepted ([`PinnedPeer`],
//! from `signet-unix`): a
//! pidfd that reports its exit, its start time (`/proc/<pid>/stat`, field
//! 22) and the identity (device, inode) of its executable then. Every
//! attestation checks the pin before and after reading the facts, so a
//! process that took over the pid (pid reuse), or the connecting process
//! after it exec'd another binary while a child kept the connection, is
//! refused rather than described (security invariant 2).

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use signet_identity::Selector;
pub use signet_unix::peer::{PeerCred, PinnedPeer, WorkloadAttestError, start_ticks};

/// Executables larger than this are not hashed (no `unix:sha256`).
pub const DEFAULT_MAX_HASH_SIZE: u64 = 256 * 1024 * 1024;

/// How many attestations (and so executable hashes) run at once.
pub const MAX_CONCURRENT_ATTESTATIONS: usize = 4;

/// An executable's identity for the hash cache: device, inode, size,
/// mtime and ctime in ns. A user can set a file's mtime back but not its
/// ctime, which any change to the file moves.
type HashKey = (u64, u64, u64, i64, i64);

/// Attests callers by their kernel facts.
#[derive(Debug)]
pub struct UnixAttestor {
    proc_root: PathBuf,
    max_hash_size: u64,
    hashes: Mutex<HashMap<HashKey, String>>,
    /// Bounds attestations in flight (each may hash up to `max_hash_size`).
    slots: tokio::sync::Semaphore,
}

impl Default for UnixAttestor {
    fn default() -> Self {
        Self::new(PathBuf::from("/proc"), DEFAULT_MAX_HASH_SIZE)
    }
}

impl UnixAttestor {
    pub fn new(proc_root: PathBuf, max_hash_size: u64) -> Self {
        Self {
            proc_root,
            max_hash_size,
            hashes: Mutex::new(HashMap::new()),
            slots: tokio::sync::Semaphore::new(MAX_CONCURRENT_ATTESTATIONS),
        }
    }

    /// Whether the process pinned in `pin` is still the one that
    /// connected, as this attestor's /proc says.
    pub fn verify(&self, pin: &PinnedPeer) -> Result<(), WorkloadAttestError> {
        pin.verify(&self.proc_root)
    }

    /// [`UnixAttestor::attest`] on the blocking pool, at most
    /// [`MAX_CONCURRENT_ATTESTATIONS`] at a time: reading /proc and hashing an
    /// executable of up to `max_hash_size` bytes must not hold a runtime
    /// thread, and many callers at once must not start many hashes.
    pub async fn attest_blocking(
        self: Arc<Self>,
        pin: Arc<PinnedPeer>,
    ) -> Result<Vec<Selector>, WorkloadAttestError> {
        let pid = pin.cred().pid;
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| WorkloadAttestError::Gone { pid })?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.attest(&pin))
            .await
            .unwrap_or(Err(WorkloadAttestError::Proc {
                pid,
                what: "exe",
                reason: "attestation task failed".into(),
            }))
    }

    /// Selectors of the pinned caller, from the kernel's facts about it now;
    /// refused unless it is still the process that connected.
    pub fn attest(&self, pin: &PinnedPeer) -> Result<Vec<Selector>, WorkloadAttestError> {
        self.verify(pin)?;
        let cred = pin.cred();
        let pid = cred.pid;
        let dir = self.proc_root.join(pid.to_string());
        let mut out = Vec::new();
        let mut push = |ty: &str, value: String| {
            if let Ok(s) = Selector::new(ty, &value) {
                out.push(s);
            }
        };
        push("unix", format!("uid:{}", cred.uid));
        push("unix", format!("gid:{}", cred.gid));
        if let Ok(Some(user)) = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(cred.uid)) {
            push("unix", format!("user:{}", user.name));
        }
        if let Ok(Some(group)) = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(cred.gid))
        {
            push("unix", format!("group:{}", group.name));
        }
        if let Ok(status) = fs::read_to_string(dir.join("status")) {
            for gid in status
                .lines()
                .find_map(|l| l.strip_prefix("Groups:"))
                .unwrap_or_default()
                .split_whitespace()
            {
                push("unix", format!("supplementary_gid:{gid}"));
            }
        }
        match fs::read_link(dir.join("exe")) {
            Ok(exe) => {
                let path = exe.to_string_lossy();
                let path = path.strip_suffix(" (deleted)").unwrap_or(&path).to_owned();
                push("unix", format!("path:{path}"));
                if let Some(hash) = self.exe_hash(&dir.join("exe")) {
                    push("unix", format!("sha256:{hash}"));
                }
            }
            // A kernel thread or a process of another user we may not inspect.
            Err(e) => tracing::debug!(pid, error = %e, "cannot read the executable path"),
        }
        if let Ok(cgroup) = fs::read_to_string(dir.join("cgroup")) {
            for (ty, value) in cgroup_selectors(&cgroup) {
                push(ty, value);
            }
        }
        // The facts must describe the process that connected.
        self.verify(pin)?;
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// SHA-256 of the file behind `/proc/<pid>/exe`, cached by identity.
    fn exe_hash(&self, exe: &Path) -> Option<String> {
        let mut file = fs::File::open(exe).ok()?;
        let meta = file.metadata().ok()?;
        if meta.len() > self.max_hash_size {
            return None;
        }
        let key: HashKey = (
            meta.dev(),
            meta.ino(),
            meta.len(),
            meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
        );
        if let Some(h) = self
            .hashes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return Some(h.clone());
        }
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = file.read(&mut buf).ok()?;
            if n == 0 {
                break;
            }
            ctx.update(&buf[..n]);
        }
        let hex: String = ctx
            .finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut cache = self.hashes.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() > 4096 {
            cache.clear();
        }
        cache.insert(key, hex.clone());
        Some(hex)
    }
}

/// Selectors from the lines of `/proc/<pid>/cgroup`.
pub fn cgroup_selectors(cgroup: &str) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for line in cgroup.lines() {
        // "hierarchy-id:controllers:path"
        let Some(path) = line.splitn(3, ':').nth(2) else {
            continue;
        };
        for part in path.split('/') {
            if let Some(id) = container_id(part) {
                out.push(("container", format!("id:{id}")));
            } else if (part.ends_with(".service") || part.ends_with(".scope"))
                && !part.starts_with("docker-")
                && !part.starts_with("cri-containerd-")
                && !part.starts_with("crio-")
                && !part.starts_with("libpod-")
            {
                out.push(("systemd", format!("id:{part}")));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// A 64-hex container id in a cgroup path component, as docker, containerd,
/// cri-o and podman name them (`<id>`, `docker-<id>.scope`, ...).
fn container_id(part: &str) -> Option<&str> {
    let core = part.strip_suffix(".scope").unwrap_or(part);
    let core = ["docker-", "cri-containerd-", "crio-", "libpod-"]
        .iter()
        .find_map(|p| core.strip_prefix(p))
        .unwrap_or(core);
    (core.len() == 64 && core.bytes().all(|b| b.is_ascii_hexdigit())).then_some(core)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pin_me() -> PinnedPeer {
        PinnedPeer::capture(PeerCred::of_this_process()).unwrap()
    }

    #[test]
    fn the_current_process_is_described_by_the_kernel() {
        let a = UnixAttestor::default();
        let sels: Vec<String> = a
            .attest(&pin_me())
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        let cred = PeerCred::of_this_process();
        assert!(sels.contains(&format!("unix:uid:{}", cred.uid)), "{sels:?}");
        assert!(sels.contains(&format!("unix:gid:{}", cred.gid)), "{sels:?}");
        let exe = std::env::current_exe().unwrap();
        assert!(
            sels.contains(&format!("unix:path:{}", exe.display())),
            "{sels:?}"
        );
        let bytes = std::fs::read(&exe).unwrap();
        let want: String = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert!(sels.contains(&format!("unix:sha256:{want}")), "{sels:?}");
        if cred.uid == 0 {
            assert!(sels.contains(&"unix:user:root".to_string()), "{sels:?}");
        }
    }

    #[test]
    #[ignore = "needs root: runs a process under another uid (scripts/test runs it as root)"]
    fn a_process_of_another_user_gets_that_users_selectors() {
        use std::os::unix::process::CommandExt;
        assert!(
            nix::unistd::getuid().is_root(),
            "this test needs root: it starts a process under another uid"
        );
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .uid(65534)
            .gid(65534)
            .spawn()
            .unwrap();
        let cred = PeerCred {
            pid: child.id() as i32,
            uid: 65534,
            gid: 65534,
        };
        let result = PinnedPeer::capture(cred).and_then(|pin| UnixAttestor::default().attest(&pin));
        let _ = child.kill();
        let _ = child.wait();
        let sels: Vec<String> = result.unwrap().iter().map(ToString::to_string).collect();
        assert!(sels.contains(&"unix:uid:65534".to_string()), "{sels:?}");
        assert!(!sels.iter().any(|s| s == "unix:uid:0"), "{sels:?}");
        assert!(
            sels.iter()
                .any(|s| s.starts_with("unix:path:") && s.ends_with("/sleep")),
            "{sels:?}"
        );
    }

    #[test]
    fn an_exec_after_the_pin_is_refused() {
        // A shell pinned while it runs sh, then exec'ing sleep: same pid,
        // same start time, another executable.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "read _; exec sleep 30"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let cred = PeerCred {
            pid: child.id() as i32,
            ..PeerCred::of_this_process()
        };
        let a = UnixAttestor::default();
        let pin = PinnedPeer::capture(cred).unwrap();
        assert!(a.verify(&pin).is_ok());
        use std::io::Write;
        child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let result = loop {
            let r = a.attest(&pin);
            if r.is_err() || std::time::Instant::now() > deadline {
                break r;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(
            result,
            Err(WorkloadAttestError::ExeChanged { pid: cred.pid })
        );
    }

    #[test]
    fn an_exited_process_is_not_attested() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let cred = PeerCred {
            pid,
            ..PeerCred::of_this_process()
        };
        let pin = PinnedPeer::capture(cred).unwrap();
        assert!(UnixAttestor::default().verify(&pin).is_ok());
        child.kill().unwrap();
        // Not yet reaped: /proc still shows the zombie, the pidfd says it
        // exited (once the kernel has finished the exit).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !pin.exited() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(
            UnixAttestor::default().attest(&pin),
            Err(WorkloadAttestError::Gone { pid })
        );
        child.wait().unwrap();
        assert_eq!(
            UnixAttestor::default().attest(&pin),
            Err(WorkloadAttestError::Gone { pid })
        );
        assert!(matches!(
            PinnedPeer::capture(cred),
            Err(WorkloadAttestError::Gone { .. })
        ));
        assert!(matches!(
            PinnedPeer::capture(PeerCred {
                pid: 0,
                ..PeerCred::of_this_process()
            }),
            Err(WorkloadAttestError::NoPid)
        ));
    }

    #[test]
    fn executables_over_the_size_limit_are_not_hashed() {
        let a = UnixAttestor::new(PathBuf::from("/proc"), 1);
        let sels = a.attest(&pin_me()).unwrap();
        assert!(sels.iter().all(|s| !s.as_str().starts_with("unix:sha256:")));
        assert!(sels.iter().any(|s| s.as_str().starts_with("unix:path:")));
    }

    #[test]
    fn cgroup_paths_give_units_and_container_ids() {
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let cgroup = format!(
            "0::/system.slice/nginx.service\n\
             12:memory:/docker/{id}\n\
             0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-{id}.scope\n\
             0::/user.slice/user-1000.slice/session-3.scope\n"
        );
        let got = cgroup_selectors(&cgroup);
        assert!(
            got.contains(&("systemd", "id:nginx.service".to_string())),
            "{got:?}"
        );
        assert!(
            got.contains(&("systemd", "id:session-3.scope".to_string())),
            "{got:?}"
        );
        assert!(got.contains(&("container", format!("id:{id}"))), "{got:?}");
        assert_eq!(
            got.iter().filter(|(t, _)| *t == "container").count(),
            1,
            "deduplicated"
        );
        assert!(
            !got.iter().any(|(_, v)| v.contains("cri-containerd")),
            "{got:?}"
        );
        assert!(cgroup_selectors("garbage").is_empty());
    }
}
