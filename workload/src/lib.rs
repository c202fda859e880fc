//! The workload side of Signet: what the sidecar, the helper and the CLI
//! use to reach the agent and the server over their Unix sockets.
//!
//! Role: the SPIFFE Workload API client ([`client`]: a FetchX509SVID stream
//! kept open with backoff, JWT fetches), where the agent and admin sockets
//! are ([`location`]: one rule for every command), and the channel to them
//! ([`socket`]: refuses sockets other users serve, explains failures);
//! crash-safe file writes for what workloads receive ([`atomic_file`]: temp
//! file, fsync, rename; keys never readable by others).
//!
//! Depends on: `signet-identity` for SVIDs and bundles, `signet-wire` for
//! the Workload API messages; tonic over tokio Unix sockets. Nothing here
//! links the CA, the datastore or the agent.

use std::path::PathBuf;

pub mod atomic_file;
pub mod backoff;
pub mod client;
pub mod location;
pub mod settings;
pub mod socket;
pub mod tasks;

pub use backoff::Backoff;
pub use client::*;
pub use location::{SocketLocation, SocketRole, SocketSource};
pub use socket::{channel, explain_connect_error, trust_socket_owners};

pub use signet_wire::WORKLOAD_SECURITY_HEADER as SECURITY_HEADER;

/// A Workload API client on the socket at `path`.
pub async fn connect(
    path: PathBuf,
) -> Result<
    signet_wire::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient<
        tonic::transport::Channel,
    >,
    tonic::transport::Error,
> {
    Ok(
        signet_wire::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(
            channel(path).await?,
        ),
    )
}
