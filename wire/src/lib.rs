//! Signet's wire: the generated gRPC code of its server APIs
//! (`proto/signet/*.proto`: admin, node) and of the SPIFFE Workload API
//! (`proto/workload.proto`), and the conversions between wire messages and
//! identity types. Both ends of every API use this crate.

#![allow(missing_debug_implementations)]

/// Constants of the server-agent (node) API both ends hold to.
pub mod node_api {
    /// Path of the server's own SPIFFE ID, which agents require of it.
    pub const SERVER_ID_PATH: &str = "/signet/server";
    /// Path prefix of agent SPIFFE IDs.
    pub const AGENT_ID_PREFIX: &str = "/signet/agent/";
    /// Largest message either end accepts once the agent is authenticated
    /// (batched SVIDs and entries); the unauthenticated Attest call has a
    /// far smaller limit.
    pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;

    /// Prefix an x509pop node signs with the server's nonce, so a signature
    /// made for this purpose cannot be replayed anywhere else, nor one made
    /// elsewhere here.
    pub const CHALLENGE_CONTEXT: &[u8] = b"signet-x509pop-v1:";

    /// The message an x509pop node signs to answer `nonce`.
    pub fn challenge_message(nonce: &[u8]) -> Vec<u8> {
        [CHALLENGE_CONTEXT, nonce].concat()
    }
}

/// The metadata key every Workload API request must carry, `true` (the
/// SPIFFE Workload API specification's security header).
pub const WORKLOAD_SECURITY_HEADER: &str = "workload.spiffe.io";

#[allow(clippy::all, clippy::pedantic, clippy::unwrap_used)]
pub mod types {
    tonic::include_proto!("signet.types");
}

#[allow(clippy::all, clippy::pedantic, clippy::unwrap_used)]
pub mod node {
    tonic::include_proto!("signet.node");
}

#[allow(clippy::all, clippy::pedantic, clippy::unwrap_used)]
pub mod downstream {
    tonic::include_proto!("signet.downstream");
}

#[allow(clippy::all, clippy::pedantic, clippy::unwrap_used)]
pub mod admin {
    tonic::include_proto!("signet.admin");
}

/// The SPIFFE Workload API (no protobuf package, as the spec defines it).
#[allow(clippy::all, clippy::pedantic, clippy::unwrap_used)]
pub mod workload {
    tonic::include_proto!("_");
}

use signet_identity::{Bundle, BundleError, Entry, Selector, SpiffeId, TrustDomain};

impl From<&Entry> for types::Entry {
    fn from(e: &Entry) -> Self {
        Self {
            id: e.id.clone(),
            spiffe_id: e.spiffe_id.to_string(),
            parent_id: e.parent_id.to_string(),
            selectors: e.selectors.iter().map(ToString::to_string).collect(),
            x509_ttl: e.x509_ttl.unwrap_or(0),
            jwt_ttl: e.jwt_ttl.unwrap_or(0),
            dns_names: e.dns_names.clone(),
            federates_with: e.federates_with.iter().map(ToString::to_string).collect(),
            admin: e.admin,
            downstream: e.downstream,
            node: e.node,
            expires_at: e.expires_at.map(|t| t as i64).unwrap_or(0),
            revision: e.revision,
        }
    }
}

/// Every field of a wire entry that does not parse, by name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid entry: {}", .0.join("; "))]
pub struct WireEntryError(pub Vec<String>);

impl TryFrom<&types::Entry> for Entry {
    type Error = WireEntryError;

    fn try_from(w: &types::Entry) -> Result<Self, Self::Error> {
        let mut problems = Vec::new();
        let mut id_field = |name: &str, value: &str| match SpiffeId::parse(value) {
            Ok(id) => Some(id),
            Err(e) => {
                problems.push(format!("{name} {value:?}: {e}"));
                None
            }
        };
        let spiffe_id = id_field("spiffe_id", &w.spiffe_id);
        let parent_id = id_field("parent_id", &w.parent_id);
        let mut selectors = Vec::new();
        for s in &w.selectors {
            match Selector::parse(s) {
                Ok(s) => selectors.push(s),
                Err(e) => problems.push(format!("selector: {e}")),
            }
        }
        let mut federates_with = Vec::new();
        for td in &w.federates_with {
            match TrustDomain::parse(td) {
                Ok(td) => federates_with.push(td),
                Err(e) => problems.push(format!("federates_with {td:?}: {e}")),
            }
        }
        if w.expires_at < 0 {
            problems.push("expires_at must not be negative".into());
        }
        match (spiffe_id, parent_id) {
            (Some(spiffe_id), Some(parent_id)) if problems.is_empty() => Ok(Entry {
                id: w.id.clone(),
                spiffe_id,
                parent_id,
                selectors,
                x509_ttl: (w.x509_ttl > 0).then_some(w.x509_ttl),
                jwt_ttl: (w.jwt_ttl > 0).then_some(w.jwt_ttl),
                dns_names: w.dns_names.clone(),
                federates_with,
                admin: w.admin,
                downstream: w.downstream,
                node: w.node,
                expires_at: (w.expires_at > 0).then_some(w.expires_at as u64),
                revision: w.revision,
            }),
            _ => Err(WireEntryError(problems)),
        }
    }
}

impl TryFrom<&Bundle> for types::Bundle {
    type Error = BundleError;
    fn try_from(b: &Bundle) -> Result<Self, Self::Error> {
        Ok(Self {
            trust_domain: b.trust_domain().to_string(),
            spiffe_json: b.to_json()?.into_bytes(),
        })
    }
}

/// Parses a wire bundle, naming the trust domain on failure.
pub fn bundle_from_wire(w: &types::Bundle) -> Result<Bundle, String> {
    let td = TrustDomain::parse(&w.trust_domain)
        .map_err(|e| format!("trust_domain {:?}: {e}", w.trust_domain))?;
    Bundle::parse_json(td, &w.spiffe_json).map_err(|e| format!("bundle of {}: {e}", w.trust_domain))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_bad_fields_are_named() {
        let wire = types::Entry {
            spiffe_id: "spiffe://example.org/web".into(),
            parent_id: "spiffe://example.org/agent".into(),
            selectors: vec!["unix:uid:1000".into()],
            x509_ttl: 60,
            federates_with: vec!["partner.org".into()],
            ..Default::default()
        };
        let entry = Entry::try_from(&wire).unwrap();
        assert_eq!(entry.x509_ttl, Some(60));
        assert_eq!(entry.jwt_ttl, None);
        assert_eq!(types::Entry::from(&entry), wire);

        let bad = types::Entry {
            spiffe_id: "spiffe://Example.org/web".into(),
            parent_id: "".into(),
            selectors: vec!["nocolon".into()],
            federates_with: vec!["UPPER".into()],
            ..Default::default()
        };
        let err = Entry::try_from(&bad).unwrap_err();
        assert_eq!(err.0.len(), 4, "{err}");
        assert!(err.to_string().contains("spiffe_id"));
        assert!(err.to_string().contains("parent_id"));
    }
}
