//! Test support shared by the workspace's tests and benches (a
//! dev-dependency only): a throwaway PostgreSQL ([`postgres`]), free
//! loopback ports ([`ports`]) and a test PKI ([`pki`]). Nothing here depends on Signet's own crates,
//! so any of them can use it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod pki;
pub mod ports;
pub mod postgres;

pub use ports::free_port;
pub use postgres::Postgres;

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
