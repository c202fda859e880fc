//! Shared helpers for signet-core's integration tests.

pub use signet_testkit::postgres;
