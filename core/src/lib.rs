//! Signet's core: the certificate authority and the machinery around it.
//!
//! Role: CA signing authorities and JWT keys with SPIRE's rotation
//! schedule ([`ca`]), where private keys live ([`key_manager`]) and an
//! injectable clock ([`clock`]); the server, agent and datastore build on
//! these (crash-safe file writes come from `signet_workload::atomic_file`).
//!
//! Depends on: `signet-identity` for the SPIFFE types; rcgen and aws-lc-rs
//! for keys and certificates; jsonwebtoken for JWT-SVIDs.
//!
//! Invariants: keys are generated where they are used and stored 0600;
//! SVIDs are built exactly as DESIGN.md section 3 says; the bundle's
//! sequence increases on every change.

pub mod agent;
pub mod attest;
pub mod ca;
pub mod clock;
pub mod datastore;
pub mod key_manager;
pub mod server;
pub mod unix_socket;

pub use ca::{Ca, CaConfig, CaError, SvidOptions, UpstreamAuthority};
pub use clock::{Clock, ManualClock, SystemClock};
pub use key_manager::{KeyManager, KeyType};
