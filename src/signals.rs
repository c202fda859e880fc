//! How the long-running commands learn they should stop.

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};

/// Resolves on SIGINT (Ctrl-C) or SIGTERM. Listening starts now, so a
/// signal that arrives before the future is awaited is not lost.
pub fn shutdown() -> anyhow::Result<impl Future<Output = ()>> {
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}
