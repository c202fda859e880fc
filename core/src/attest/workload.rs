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
//! Pid reuse: the process start time (`/proc/<pid>/stat`, field 22) is read
//! first and again after every other fact; if it changed, or the process is
//! gone, attestation fails rather than describe another process.

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use signet_identity::Selector;

/// Executables larger than this are not hashed (no `unix:sha256`).
pub const DEFAULT_MAX_HASH_SIZE: u64 = 256 * 1024 * 1024;

/// What the kernel says about the peer of a Unix socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

/// Workload attestation failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WorkloadAttestError {
    #[error("the caller's pid is unknown (no SO_PEERCRED)")]
    NoPid,
    #[error("process {pid} exited or its pid was reused during attestation")]
    PidReused { pid: i32 },
    #[error("cannot read /proc/{pid}/{what}: {reason}")]
    Proc {
        pid: i32,
        what: &'static str,
        reason: String,
    },
}

/// Attests callers by their kernel facts.
#[derive(Debug)]
pub struct UnixAttestor {
    proc_root: PathBuf,
    max_hash_size: u64,
    /// (dev, inode, mtime ns, size) -> sha256 hex
    hashes: Mutex<HashMap<(u64, u64, i64, u64), String>>,
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
        }
    }

    /// The start time (clock ticks since boot) of `pid`, to pin the process.
    pub fn start_time(&self, pid: i32) -> Result<u64, WorkloadAttestError> {
        let stat = fs::read_to_string(self.proc_root.join(pid.to_string()).join("stat"))
            .map_err(|_| WorkloadAttestError::PidReused { pid })?;
        // "pid (comm) state ppid ..." — comm may hold spaces and parentheses,
        // so split after the last ')'. starttime is field 22 overall, the
        // 20th after the comm.
        let after = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .unwrap_or_default();
        after
            .split_whitespace()
            .nth(19)
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| WorkloadAttestError::Proc {
                pid,
                what: "stat",
                reason: "no start time".into(),
            })
    }

    /// Selectors for the caller `cred`, whose start time was `pinned` when
    /// it connected (pass `None` to pin it now).
    pub fn attest(
        &self,
        cred: PeerCred,
        pinned: Option<u64>,
    ) -> Result<Vec<Selector>, WorkloadAttestError> {
        let pid = cred.pid;
        if pid <= 0 {
            return Err(WorkloadAttestError::NoPid);
        }
        let start = match pinned {
            Some(t) => t,
            None => self.start_time(pid)?,
        };
        if self.start_time(pid)? != start {
            return Err(WorkloadAttestError::PidReused { pid });
        }
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
        if self.start_time(pid)? != start {
            return Err(WorkloadAttestError::PidReused { pid });
        }
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
        let key = (
            meta.dev(),
            meta.ino(),
            meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            meta.len(),
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

    fn me() -> PeerCred {
        PeerCred {
            pid: std::process::id() as i32,
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
        }
    }

    #[test]
    fn the_current_process_is_described_by_the_kernel() {
        let a = UnixAttestor::default();
        let sels: Vec<String> = a
            .attest(me(), None)
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        let cred = me();
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
    fn a_process_of_another_user_gets_that_users_selectors() {
        use std::os::unix::process::CommandExt;
        if !nix::unistd::getuid().is_root() {
            eprintln!("skipped: starting a process under another uid needs root (CI runs as root)");
            return;
        }
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
        let result = UnixAttestor::default().attest(cred, None);
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
    fn a_changed_start_time_means_another_process() {
        let a = UnixAttestor::default();
        let start = a.start_time(me().pid).unwrap();
        assert!(a.attest(me(), Some(start)).is_ok());
        assert_eq!(
            a.attest(me(), Some(start + 1)),
            Err(WorkloadAttestError::PidReused { pid: me().pid })
        );
    }

    #[test]
    fn an_exited_process_is_not_attested() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        let cred = PeerCred { pid, ..me() };
        assert_eq!(
            UnixAttestor::default().attest(cred, None),
            Err(WorkloadAttestError::PidReused { pid })
        );
        assert_eq!(
            UnixAttestor::default().attest(PeerCred { pid: 0, ..me() }, None),
            Err(WorkloadAttestError::NoPid)
        );
    }

    #[test]
    fn executables_over_the_size_limit_are_not_hashed() {
        let a = UnixAttestor::new(PathBuf::from("/proc"), 1);
        let sels = a.attest(me(), None).unwrap();
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
