//! Attestation: proving who a node (agent) is to the server ([`node`]).
//! Workload attestation from kernel facts arrives with the agent.

pub mod node;
