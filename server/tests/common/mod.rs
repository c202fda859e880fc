//! Shared helpers for signet-server's integration tests.

pub use signet_testkit::postgres;
