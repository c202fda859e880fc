//! Test support shared by the workspace's tests and benches (a
//! dev-dependency only): a throwaway PostgreSQL ([`postgres`]) and free
//! loopback ports ([`ports`]). Nothing here depends on Signet's own crates,
//! so any of them can use it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod ports;
pub mod postgres;

pub use ports::free_port;
pub use postgres::Postgres;
