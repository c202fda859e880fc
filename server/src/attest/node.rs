//! Node attestors: how an agent proves what node it runs on. Each attestor
//! turns evidence (and, for challenge-response attestors, answers to the
//! server's challenges) into an agent SPIFFE ID and node selectors.
//!
//! Built-ins: [`join_token`] (single-use, expiring) and [`x509pop`]
//! (possession of a key whose certificate chains to a configured CA).

pub mod join_token;
pub mod x509pop;

use std::fmt;

use signet_identity::{Selector, SpiffeId, TrustDomain};

/// What a node presents.
#[derive(Clone, Default)]
pub struct Evidence {
    pub join_token: Option<String>,
    /// DER chain, leaf first.
    pub x509pop_chain: Vec<Vec<u8>>,
}

impl fmt::Debug for Evidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Evidence")
            .field(
                "join_token",
                &self.join_token.as_ref().map(|_| "[redacted]"),
            )
            .field("x509pop_chain_len", &self.x509pop_chain.len())
            .finish()
    }
}

/// A successful attestation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attested {
    pub agent_id: SpiffeId,
    pub selectors: Vec<Selector>,
    /// Whether the node may attest again after eviction.
    pub can_reattest: bool,
}

/// Why attestation failed. Messages are safe to return to the agent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    #[error("unknown node attestor {0:?}")]
    UnknownAttestor(String),
    #[error("attestation evidence is invalid: {0}")]
    InvalidEvidence(String),
    #[error("attestation refused: {0}")]
    Denied(String),
    #[error("challenge failed: {0}")]
    Challenge(String),
    #[error("attestation failed inside the server: {0}")]
    Internal(String),
}

/// Sends a challenge to the node and returns its answer.
#[async_trait::async_trait]
pub trait Challenger: Send {
    async fn challenge(&mut self, challenge: Vec<u8>) -> Result<Vec<u8>, AttestError>;
}

/// A node attestor.
#[async_trait::async_trait]
pub trait NodeAttestor: Send + Sync + fmt::Debug {
    /// The name agents ask for (`join_token`, `x509pop`).
    fn name(&self) -> &'static str;
    async fn attest(
        &self,
        evidence: &Evidence,
        challenger: &mut dyn Challenger,
    ) -> Result<Attested, AttestError>;
}

/// The agent ID for an attestor-specific node id:
/// `spiffe://<td>/signet/agent/<attestor>/<id>`.
pub fn agent_id(td: &TrustDomain, attestor: &str, id: &str) -> Result<SpiffeId, AttestError> {
    td.id_with_path(&format!("/signet/agent/{attestor}/{id}"))
        .map_err(|e| AttestError::Internal(format!("agent id: {e}")))
}
