//! Attestation: how a node (agent) proves who it is to the server
//! ([`node`]), and how an agent learns who a workload is from kernel facts
//! ([`workload`]).

pub mod node;
pub mod workload;
