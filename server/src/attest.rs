//! Node attestation: how a node (agent) proves who it is to the server.
//! (Workload attestation, from kernel facts, is the agent's.)

pub mod node;
