//! Shared helpers for signet-core's integration tests.

pub mod postgres;
