//! Telling the reading program that its files changed: a command, or a
//! signal to the process a pid file names (through a pidfd, only to the
//! file owner's process).

use std::path::Path;

use nix::sys::signal::Signal;

use crate::Events;
use crate::config::{CMD_TIMEOUT, HelperConfig};

/// Runs the command and sends the signal, after files changed. Failures are
/// reported and do not stop the helper: the files are already in place.
pub(crate) async fn reload(config: &HelperConfig, events: Events) {
    if let Some((cmd, args)) = &config.cmd {
        let how = format!("{cmd} {}", args.join(" "));
        let outcome = run_cmd(cmd, args).await;
        match &outcome {
            Ok(_) => tracing::info!(command = %how.trim(), "reload command succeeded"),
            Err(why) => tracing::error!(command = %how.trim(), "reload command failed: {why}"),
        }
        events.reload(how.trim(), &outcome);
    }
    if let Some((signal, pid_file)) = &config.signal {
        let how = format!("{signal} to the pid in {}", pid_file.display());
        let outcome = send_signal(*signal, pid_file, config.owner.uid);
        match &outcome {
            Ok(detail) => tracing::info!(%signal, pid_file = %pid_file.display(), "{detail}"),
            Err(why) => {
                tracing::warn!(%signal, pid_file = %pid_file.display(), "not signalled: {why}")
            }
        }
        events.reload(&how, &outcome);
    }
}

pub(crate) async fn run_cmd(cmd: &str, args: &[String]) -> Result<String, String> {
    let child = tokio::process::Command::new(cmd)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(CMD_TIMEOUT, child).await {
        Err(_) => Err(format!("still running after {CMD_TIMEOUT:?}; killed")),
        Ok(Err(e)) => Err(format!("cannot start it: {e}")),
        Ok(Ok(out)) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let text = text.trim().chars().take(500).collect::<String>();
            if out.status.success() {
                Ok(format!("{}: {text}", out.status))
            } else {
                Err(format!("{}: {text}", out.status))
            }
        }
    }
}

/// Sends `signal` to the process a pid file names, only if it is the
/// process the file's writer meant: it runs as the file's owner (or as
/// `owner`, the helper's `--owner`) and was already running when the file
/// was last written. Whoever can write the pid file chooses the pid; these
/// checks keep a helper running as root from signalling another user's
/// (or root's) process for them, or a process that reused a stale pid. The
/// signal goes through a pidfd opened before the checks, so it reaches the
/// process checked or none.
pub(crate) fn send_signal(
    signal: Signal,
    pid_file: &Path,
    owner: Option<u32>,
) -> Result<String, String> {
    use std::os::unix::fs::MetadataExt;
    let file = std::fs::File::open(pid_file).map_err(|e| format!("cannot read it: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read it: {e}"))?;
    let text = std::io::read_to_string(&file).map_err(|e| format!("cannot read it: {e}"))?;
    let pid: i32 = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .filter(|p| *p > 0)
        .ok_or_else(|| "its first line is not a pid".to_string())?;
    let pidfd = rustix::process::Pid::from_raw(pid)
        .ok_or_else(|| format!("{pid} is not a pid"))
        .and_then(|p| {
            rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty())
                .map_err(|e| format!("pid {pid} is not running ({e})"))
        })?;
    let want_uid = owner.unwrap_or(meta.uid());
    let proc_uid = proc_uid(pid).ok_or_else(|| format!("pid {pid} is not running"))?;
    if proc_uid != want_uid {
        return Err(format!(
            "pid {pid} runs as uid {proc_uid}, but the pid file belongs to uid {want_uid}: refusing to signal another user's process"
        ));
    }
    let started = proc_start(pid).ok_or_else(|| format!("pid {pid} is not running"))?;
    // The start time has clock-tick resolution; a second of slack.
    let written = meta.mtime();
    if started > written + 1 {
        return Err(format!(
            "pid {pid} started after the pid file was written: it is not the process the file names (a stale pid file?)"
        ));
    }
    let sig = rustix::process::Signal::from_named_raw(signal as i32)
        .ok_or_else(|| format!("{signal} cannot be sent"))?;
    rustix::process::pidfd_send_signal(&pidfd, sig)
        .map_err(|e| format!("cannot signal pid {pid}: {e}"))?;
    Ok(format!("sent {signal} to pid {pid}"))
}

/// The real uid of `pid`, from /proc.
pub(crate) fn proc_uid(pid: i32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// When `pid` started, in seconds since the epoch (boot time from
/// /proc/stat plus the start time in clock ticks, at 100 a second).
pub(crate) fn proc_start(pid: i32) -> Option<i64> {
    let ticks = i64::try_from(signet_unix::peer::start_ticks(pid).ok()?).ok()?;
    let boot: i64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(boot + ticks / 100)
}
