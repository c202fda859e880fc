//! Test support shared by the workspace's tests and benches (a
//! dev-dependency only): child processes with logs and reported ports
//! ([`process`]), the real Envoy and its configurations ([`envoy`]), HTTP
//! and TLS probes ([`http`]), a test PKI ([`pki`]), a process's CPU and
//! memory use ([`usage`]), free loopback ports for what cannot bind port 0
//! ([`ports`]), a throwaway OpenBao ([`openbao`]) and, with the
//! `postgres` feature, a throwaway PostgreSQL.
//! Nothing here depends on Signet's own crates, so any of them can use it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod envoy;
pub mod http;
pub mod openbao;
pub mod pki;
pub mod ports;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod process;
pub mod usage;

pub use ports::free_port;
#[cfg(feature = "postgres")]
pub use postgres::Postgres;
pub use process::{DEADLINE, Proc, eventually, eventually_within, require_root};

/// This process's uid, from /proc (no libc needed).
pub fn uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// The `p` quantile (0 to 1) of `sorted` durations, nearest rank (benches).
pub fn percentile(sorted: &[std::time::Duration], p: f64) -> std::time::Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// `d` in milliseconds (benches).
pub fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
