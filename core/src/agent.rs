//! The agent side. So far: the client of the server-agent API
//! ([`node_client`]): attestation, SVID renewal, the entry subscription and
//! minting. The agent's cache, rotation and Workload API build on it.

pub mod node_client;
