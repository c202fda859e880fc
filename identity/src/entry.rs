//! Registration entries: which SPIFFE ID a workload (or node) gets, under
//! which parent, when which selectors match.

use serde::{Deserialize, Serialize};

use crate::selector::Selector;
use crate::spiffe_id::{SpiffeId, TrustDomain};

/// Longest accepted SVID TTL for an entry (SPIRE caps nothing by default; a
/// year keeps accidental "forever" certificates out).
pub const MAX_TTL_SECS: u64 = 365 * 24 * 3600;

/// A registration entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Opaque unique identifier (assigned by the server).
    pub id: String,
    pub spiffe_id: SpiffeId,
    pub parent_id: SpiffeId,
    pub selectors: Vec<Selector>,
    /// X509-SVID TTL in seconds; `None` means the server default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x509_ttl: Option<u64>,
    /// JWT-SVID TTL in seconds; `None` means the server default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_ttl: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_names: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub federates_with: Vec<TrustDomain>,
    /// The workload may use the admin API.
    #[serde(default)]
    pub admin: bool,
    /// The workload is a downstream server (nested CA).
    #[serde(default)]
    pub downstream: bool,
    /// A node-alias entry: agents whose node selectors include all of this
    /// entry's selectors are also this entry's SPIFFE ID as a parent.
    #[serde(default)]
    pub node: bool,
    /// Unix seconds after which the entry no longer applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// Bumped on every change.
    #[serde(default)]
    pub revision: u64,
}

/// One problem found in an entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EntryProblem {
    #[error("spiffe_id {id} is not in trust domain {td}")]
    IdOutsideTrustDomain { id: String, td: String },
    #[error("parent_id {id} is not in trust domain {td}")]
    ParentOutsideTrustDomain { id: String, td: String },
    #[error("spiffe_id {0} has no path; workload IDs need one")]
    IdWithoutPath(String),
    #[error("spiffe_id must differ from parent_id")]
    SelfParent,
    #[error("at least one selector is required")]
    NoSelectors,
    #[error("{0}")]
    UnknownSelector(String),
    #[error("selector {0} is listed twice")]
    DuplicateSelector(String),
    #[error("{field} of {secs} s is over the limit of {MAX_TTL_SECS} s")]
    TtlTooLong { field: &'static str, secs: u64 },
    #[error("{field} must be positive when set")]
    TtlZero { field: &'static str },
    #[error("dns name {name:?} is invalid: {why}")]
    DnsName { name: String, why: &'static str },
    #[error("federates_with names the entry's own trust domain {0}")]
    FederatesWithSelf(String),
    #[error("spiffe_id {0} is reserved: IDs under /signet name Signet's own server and agents")]
    ReservedId(String),
}

/// Every problem found in an entry, not only the first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid entry: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct EntryError(pub Vec<EntryProblem>);

impl Entry {
    /// An entry with no id yet (the server assigns one), no TTL overrides,
    /// no DNS names, no federation, no flags and no expiry.
    pub fn new(spiffe_id: SpiffeId, parent_id: SpiffeId, selectors: Vec<Selector>) -> Self {
        Self {
            id: String::new(),
            spiffe_id,
            parent_id,
            selectors,
            x509_ttl: None,
            jwt_ttl: None,
            dns_names: Vec::new(),
            federates_with: Vec::new(),
            admin: false,
            downstream: false,
            node: false,
            expires_at: None,
            revision: 0,
        }
    }

    /// Checks the entry against the rules of the server's trust domain and
    /// reports every problem at once.
    pub fn check(&self, td: &TrustDomain) -> Result<(), EntryError> {
        let mut problems = Vec::new();
        if !self.spiffe_id.is_member_of(td) {
            problems.push(EntryProblem::IdOutsideTrustDomain {
                id: self.spiffe_id.to_string(),
                td: td.to_string(),
            });
        }
        if !self.parent_id.is_member_of(td) {
            problems.push(EntryProblem::ParentOutsideTrustDomain {
                id: self.parent_id.to_string(),
                td: td.to_string(),
            });
        }
        if self.spiffe_id.is_trust_domain_id() {
            problems.push(EntryProblem::IdWithoutPath(self.spiffe_id.to_string()));
        }
        if self.spiffe_id.is_reserved() {
            problems.push(EntryProblem::ReservedId(self.spiffe_id.to_string()));
        }
        if self.spiffe_id == self.parent_id {
            problems.push(EntryProblem::SelfParent);
        }
        if self.selectors.is_empty() {
            problems.push(EntryProblem::NoSelectors);
        }
        for (i, s) in self.selectors.iter().enumerate() {
            if let Err(why) = s.check_known() {
                problems.push(EntryProblem::UnknownSelector(why));
            }
            if self.selectors[..i].contains(s) {
                problems.push(EntryProblem::DuplicateSelector(s.to_string()));
            }
        }
        for (field, ttl) in [("x509_ttl", self.x509_ttl), ("jwt_ttl", self.jwt_ttl)] {
            match ttl {
                Some(0) => problems.push(EntryProblem::TtlZero { field }),
                Some(secs) if secs > MAX_TTL_SECS => {
                    problems.push(EntryProblem::TtlTooLong { field, secs })
                }
                _ => {}
            }
        }
        for name in &self.dns_names {
            if let Err(why) = check_dns_name(name) {
                problems.push(EntryProblem::DnsName {
                    name: name.clone(),
                    why,
                });
            }
        }
        if self.federates_with.contains(td) {
            problems.push(EntryProblem::FederatesWithSelf(td.to_string()));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(EntryError(problems))
        }
    }

    /// The selectors, sorted, for duplicate detection (same SPIFFE ID, parent
    /// and selector set).
    pub fn identity_key(&self) -> (String, String, Vec<String>) {
        let mut selectors: Vec<String> = self.selectors.iter().map(ToString::to_string).collect();
        selectors.sort();
        (
            self.spiffe_id.to_string(),
            self.parent_id.to_string(),
            selectors,
        )
    }
}

/// Checks a DNS name for an X.509 SAN: dot-separated labels of letters,
/// digits and '-', not starting or ending with '-', a leading `*.` wildcard
/// allowed.
pub fn check_dns_name(name: &str) -> Result<(), &'static str> {
    let body = name.strip_prefix("*.").unwrap_or(name);
    if body.is_empty() {
        return Err("empty");
    }
    if name.len() > 253 {
        return Err("longer than 253 bytes");
    }
    for label in body.split('.') {
        if label.is_empty() {
            return Err("empty label");
        }
        if label.len() > 63 {
            return Err("label longer than 63 bytes");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err("only letters, digits, '-' and '.' are allowed (and a leading '*.')");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label starts or ends with '-'");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            id: "e1".into(),
            spiffe_id: SpiffeId::parse("spiffe://example.org/web").unwrap(),
            parent_id: SpiffeId::parse("spiffe://example.org/signet/agent/join_token/x").unwrap(),
            selectors: vec![Selector::parse("unix:uid:1000").unwrap()],
            x509_ttl: None,
            jwt_ttl: None,
            dns_names: vec!["web.example.org".into()],
            federates_with: vec![],
            admin: false,
            downstream: false,
            node: false,
            expires_at: None,
            revision: 0,
        }
    }

    #[test]
    fn a_good_entry_passes() {
        let td = TrustDomain::parse("example.org").unwrap();
        entry().check(&td).unwrap();
    }

    #[test]
    fn every_problem_is_reported() {
        let td = TrustDomain::parse("example.org").unwrap();
        let mut e = entry();
        e.spiffe_id = SpiffeId::parse("spiffe://other.org").unwrap();
        e.selectors = vec![];
        e.x509_ttl = Some(0);
        e.jwt_ttl = Some(MAX_TTL_SECS + 1);
        e.dns_names = vec!["-bad.example".into(), "a..b".into(), "*.ok.example".into()];
        e.federates_with = vec![td.clone()];
        let err = e.check(&td).unwrap_err();
        assert_eq!(err.0.len(), 8, "{err}");
        assert!(err.to_string().contains("not in trust domain example.org"));
    }

    #[test]
    fn duplicate_selectors_and_self_parent() {
        let td = TrustDomain::parse("example.org").unwrap();
        let mut e = entry();
        e.parent_id = e.spiffe_id.clone();
        e.selectors.push(e.selectors[0].clone());
        let err = e.check(&td).unwrap_err();
        assert!(err.0.contains(&EntryProblem::SelfParent));
        assert!(
            err.0
                .contains(&EntryProblem::DuplicateSelector("unix:uid:1000".into()))
        );
    }

    #[test]
    fn dns_names() {
        assert!(check_dns_name("a.example.org").is_ok());
        assert!(check_dns_name("*.example.org").is_ok());
        assert!(check_dns_name("localhost").is_ok());
        for bad in [
            "", "*.", "a b.org", "a_b.org", "-a.org", "a-.org", ".a.org", "a.org.",
        ] {
            assert!(check_dns_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_dns_name(&"a".repeat(64)).is_err());
    }

    #[test]
    fn json_round_trip_rejects_unknown_fields() {
        let e = entry();
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<Entry>(&json).unwrap(), e);
        let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
        v["colour"] = "blue".into();
        assert!(serde_json::from_str::<Entry>(&v.to_string()).is_err());
    }
}
