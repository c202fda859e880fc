//! The process at the other end of a Unix-socket connection, pinned when
//! the connection is accepted (security invariant 2).
//!
//! A [`PinnedPeer`] holds a pidfd that reports the process's exit, its start
//! time (`/proc/<pid>/stat`, field 22) and the identity (device, inode) of
//! its executable then. [`PinnedPeer::verify`] checks them again, so a
//! process that took over the pid (pid reuse), or the connecting process
//! after it exec'd another binary while a child kept the connection, is
//! told apart from the one that connected.

use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// What the kernel says about the peer of a Unix socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

impl PeerCred {
    /// This process's own credentials.
    pub fn of_this_process() -> Self {
        PeerCred {
            pid: std::process::id() as i32,
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
        }
    }
}

/// Workload attestation failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WorkloadAttestError {
    #[error("the caller's pid is unknown (no SO_PEERCRED)")]
    NoPid,
    #[error("process {pid} exited or its pid was reused since it connected")]
    PidReused { pid: i32 },
    #[error("process {pid} exited since it connected")]
    Gone { pid: i32 },
    #[error("process {pid} runs another executable than when it connected")]
    ExeChanged { pid: i32 },
    #[error("cannot read /proc/{pid}/{what}: {reason}")]
    Proc {
        pid: i32,
        what: &'static str,
        reason: String,
    },
}

/// The process at the other end of a connection, as it was when the agent
/// accepted the connection.
#[derive(Debug)]
pub struct PinnedPeer {
    cred: PeerCred,
    start_time: u64,
    exe: Option<ExeId>,
    /// Readable once the process exits, whatever later takes its pid.
    pidfd: Option<OwnedFd>,
}

/// The file a process executes: device and inode of `/proc/<pid>/exe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ExeId {
    dev: u64,
    ino: u64,
}

const PROC: &str = "/proc";

impl PinnedPeer {
    /// Pins the process `cred` names, now (call it when the connection is
    /// accepted).
    pub fn capture(cred: PeerCred) -> Result<Self, WorkloadAttestError> {
        let pid = cred.pid;
        if pid <= 0 {
            return Err(WorkloadAttestError::NoPid);
        }
        let proc_root = Path::new(PROC);
        // The pidfd refers to whichever process has the pid now; the start
        // time read after it, unchanged at the end, says it is the one that
        // was there before.
        let pidfd = rustix::process::Pid::from_raw(pid).and_then(|p| {
            rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok()
        });
        let start_time = read_start_time(proc_root, pid)?;
        let exe = exe_id(proc_root, pid);
        if read_start_time(proc_root, pid)? != start_time {
            return Err(WorkloadAttestError::PidReused { pid });
        }
        Ok(PinnedPeer {
            cred,
            start_time,
            exe,
            pidfd,
        })
    }

    /// The kernel's credentials of the process when it connected.
    pub fn cred(&self) -> PeerCred {
        self.cred
    }

    /// Whether the pinned process is still the one that connected: not
    /// exited, its pid not reused, the same executable, as `proc_root`
    /// (normally `/proc`) says now.
    pub fn verify(&self, proc_root: &Path) -> Result<(), WorkloadAttestError> {
        let pid = self.cred.pid;
        if self.exited() {
            return Err(WorkloadAttestError::Gone { pid });
        }
        if read_start_time(proc_root, pid)? != self.start_time {
            return Err(WorkloadAttestError::PidReused { pid });
        }
        if exe_id(proc_root, pid) != self.exe {
            return Err(WorkloadAttestError::ExeChanged { pid });
        }
        Ok(())
    }

    /// Whether the pinned process has exited (its pidfd is readable).
    pub fn exited(&self) -> bool {
        let Some(fd) = &self.pidfd else {
            return false;
        };
        let mut fds = [rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)];
        let now = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        matches!(rustix::event::poll(&mut fds, Some(&now)), Ok(n) if n > 0)
    }
}

/// When `pid` started, in clock ticks since boot (`/proc/<pid>/stat`).
pub fn start_ticks(pid: i32) -> Result<u64, WorkloadAttestError> {
    read_start_time(Path::new(PROC), pid)
}

fn read_start_time(proc_root: &Path, pid: i32) -> Result<u64, WorkloadAttestError> {
    let stat = fs::read_to_string(proc_root.join(pid.to_string()).join("stat"))
        .map_err(|_| WorkloadAttestError::Gone { pid })?;
    // "pid (comm) state ppid ..." — comm may hold spaces and parentheses,
    // so split after the last ')'. starttime is field 22 overall, the 20th
    // after the comm.
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

/// The executable's identity, when `/proc/<pid>/exe` may be read (a
/// kernel thread or a process the agent may not inspect has none).
fn exe_id(proc_root: &Path, pid: i32) -> Option<ExeId> {
    let meta = fs::metadata(proc_root.join(pid.to_string()).join("exe")).ok()?;
    Some(ExeId {
        dev: meta.dev(),
        ino: meta.ino(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc() -> &'static Path {
        Path::new(PROC)
    }

    fn pin_me() -> PinnedPeer {
        PinnedPeer::capture(PeerCred::of_this_process()).unwrap()
    }

    #[test]
    fn a_changed_start_time_means_another_process() {
        let pin = pin_me();
        assert!(pin.verify(proc()).is_ok());
        let other = PinnedPeer {
            start_time: pin.start_time + 1,
            pidfd: None,
            ..pin
        };
        assert_eq!(
            other.verify(proc()),
            Err(WorkloadAttestError::PidReused {
                pid: PeerCred::of_this_process().pid
            })
        );
    }

    #[test]
    fn another_executable_than_at_connect_time_is_refused() {
        let pin = pin_me();
        let exe = pin.exe.unwrap();
        let other = PinnedPeer {
            exe: Some(ExeId {
                ino: exe.ino + 1,
                ..exe
            }),
            pidfd: None,
            ..pin
        };
        assert_eq!(
            other.verify(proc()),
            Err(WorkloadAttestError::ExeChanged {
                pid: PeerCred::of_this_process().pid
            })
        );
    }
}
