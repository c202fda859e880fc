//! Hot reload by watching the policy file or directory.
//!
//! A std thread polls the path every `interval` and fingerprints its content
//! (SHA-256 over every file's path and bytes, so an edit that keeps the
//! modification time, or a rename into place, is seen too). A changed
//! fingerprint calls [`PolicyHandle::reload`]: the new revision is loaded and
//! smoke-evaluated before the atomic swap; a broken revision leaves the
//! previous one in force, is logged (`tracing` error with the reason), and is
//! not retried until the content changes again. Evaluation never waits on the
//! watcher: it reads the policy in force lock-free.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::{MAX_POLICY_BYTES, PolicyHandle};

/// Counters of a watcher, shared with its thread.
#[derive(Debug, Default)]
struct Stats {
    reloads: AtomicU64,
    failures: AtomicU64,
}

/// Owns a policy watcher: dropping it (or [`WatchGuard::stop`]) stops the
/// thread promptly and joins it.
#[derive(Debug)]
pub struct WatchGuard {
    stop: Arc<(Mutex<bool>, Condvar)>,
    stats: Arc<Stats>,
    thread: Option<JoinHandle<()>>,
}

impl WatchGuard {
    /// Successful reloads that changed the revision.
    pub fn reloads(&self) -> u64 {
        self.stats.reloads.load(Ordering::Acquire)
    }

    /// Changed content that failed to load or smoke-evaluate (the previous
    /// revision stayed in force).
    pub fn failures(&self) -> u64 {
        self.stats.failures.load(Ordering::Acquire)
    }

    /// Stops watching and waits for the thread to end.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let (lock, cvar) = &*self.stop;
        if let Ok(mut stopped) = lock.lock() {
            *stopped = true;
        }
        cvar.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A fingerprint of everything under `path` (a file, or a directory walked
/// recursively in sorted order); `None` when it cannot be read.
pub(crate) fn fingerprint(path: &Path) -> Option<[u8; 32]> {
    let mut hasher = Sha256::new();
    let mut budget = MAX_POLICY_BYTES;
    hash_path(path, &mut hasher, &mut budget).ok()?;
    Some(hasher.finalize().into())
}

fn hash_path(path: &Path, hasher: &mut Sha256, budget: &mut u64) -> std::io::Result<()> {
    if path.is_dir() {
        let mut entries = std::fs::read_dir(path)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<Vec<_>, _>>()?;
        entries.sort();
        for entry in entries {
            hash_path(&entry, hasher, budget)?;
        }
        return Ok(());
    }
    let bytes = std::fs::read(path)?;
    *budget = budget.saturating_sub(bytes.len() as u64);
    if *budget == 0 {
        return Err(std::io::Error::other("policy too large to watch"));
    }
    let name = path.to_string_lossy();
    hasher.update((name.len() as u64).to_be_bytes());
    hasher.update(name.as_bytes());
    hasher.update((bytes.len() as u64).to_be_bytes());
    hasher.update(&bytes);
    Ok(())
}

impl PolicyHandle {
    /// Watches the policy path and reloads on every content change, polling
    /// every `interval` (1 s is a sensible production value). The watcher
    /// holds only a weak reference: it ends when the handle is dropped, or
    /// when the returned guard is dropped or stopped.
    ///
    /// ```no_run
    /// # use std::{sync::Arc, time::Duration};
    /// # use signet_policy::{PolicyHandle, PolicyOptions};
    /// let handle = Arc::new(PolicyHandle::load("policy/", PolicyOptions::default())?);
    /// let _watch = handle.watch(Duration::from_secs(1));
    /// // … evaluate with `handle` for as long as `_watch` lives.
    /// # Ok::<(), signet_policy::PolicyError>(())
    /// ```
    pub fn watch(self: &Arc<Self>, interval: Duration) -> WatchGuard {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let stats = Arc::new(Stats::default());
        let handle = Arc::downgrade(self);
        // No fingerprint yet: the first tick reloads once, so an edit made
        // between the initial load and this call is not missed (an unchanged
        // revision is no change).
        let seen = None;
        let thread = {
            let (stop, stats) = (stop.clone(), stats.clone());
            std::thread::Builder::new()
                .name("policy-watch".into())
                .spawn(move || watch_loop(&handle, interval, seen, &stop, &stats))
        };
        let thread = match thread {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "cannot start the policy watcher; hot reload is off");
                None
            }
        };
        WatchGuard {
            stop,
            stats,
            thread,
        }
    }
}

fn watch_loop(
    handle: &Weak<PolicyHandle>,
    interval: Duration,
    mut seen: Option<[u8; 32]>,
    stop: &(Mutex<bool>, Condvar),
    stats: &Stats,
) {
    let (lock, cvar) = stop;
    loop {
        {
            let Ok(stopped) = lock.lock() else { return };
            let Ok((stopped, _)) = cvar.wait_timeout_while(stopped, interval, |s| !*s) else {
                return;
            };
            if *stopped {
                return;
            }
        }
        let Some(handle) = handle.upgrade() else {
            return;
        };
        let current = fingerprint(&handle.path);
        if current.is_none() || current == seen {
            // Unreadable (e.g. mid-replace): keep serving, look again later.
            continue;
        }
        seen = current;
        match handle.reload() {
            Ok(true) => {
                stats.reloads.fetch_add(1, Ordering::AcqRel);
            }
            Ok(false) => {}
            // reload() has logged why; the previous revision is in force.
            Err(_) => {
                stats.failures.fetch_add(1, Ordering::AcqRel);
            }
        }
    }
}
