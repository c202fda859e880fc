//! Join tokens: single-use, expiring secrets an operator hands to an agent.
//! The datastore keeps only their SHA-256; taking one deletes it atomically,
//! so a token attests at most one agent, once.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use signet_identity::TrustDomain;

use super::{AttestError, Attested, Challenger, Evidence, NodeAttestor, agent_id};
use crate::clock::Clock;
use crate::datastore::Datastore;

#[derive(Debug)]
pub struct JoinTokenAttestor {
    trust_domain: TrustDomain,
    store: Arc<dyn Datastore>,
    clock: Arc<dyn Clock>,
}

impl JoinTokenAttestor {
    pub fn new(
        trust_domain: TrustDomain,
        store: Arc<dyn Datastore>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            trust_domain,
            store,
            clock,
        }
    }
}

#[async_trait::async_trait]
impl NodeAttestor for JoinTokenAttestor {
    fn name(&self) -> &'static str {
        "join_token"
    }

    async fn attest(
        &self,
        evidence: &Evidence,
        _: &mut dyn Challenger,
    ) -> Result<Attested, AttestError> {
        let token = evidence
            .join_token
            .as_deref()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| AttestError::InvalidEvidence("a join token is required".into()))?;
        let hash = token_hash(token);
        let stored = self
            .store
            .take_join_token(&hash)
            .await
            .map_err(|e| AttestError::Internal(e.to_string()))?
            .ok_or_else(|| AttestError::Denied("join token is unknown or already used".into()))?;
        let now = self
            .clock
            .now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        if stored.expires_at <= now {
            return Err(AttestError::Denied("join token expired".into()));
        }
        let agent_id = match stored.agent_id {
            Some(id) => id,
            // Names the node by its token's hash, never by the token itself.
            None => agent_id(&self.trust_domain, "join_token", &hash[..32])?,
        };
        Ok(Attested {
            agent_id,
            selectors: Vec::new(),
            can_reattest: false,
        })
    }
}

/// Lowercase hex SHA-256 of a join token: what the datastore keeps.
pub fn token_hash(token: &str) -> String {
    hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes()).as_ref())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
