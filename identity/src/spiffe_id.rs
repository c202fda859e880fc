//! SPIFFE IDs and trust domains (SPIFFE ID spec, sections 2 and 2.1-2.3).
//!
//! A [`SpiffeId`] or [`TrustDomain`] that exists is valid: the only ways to
//! build one go through [`SpiffeId::parse`] / [`TrustDomain::parse`] (or the
//! checked constructors), so code that holds one never re-validates it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The scheme prefix of every SPIFFE ID.
pub const SCHEME_PREFIX: &str = "spiffe://";

/// Longest accepted SPIFFE ID, in bytes (SPIFFE ID spec 2.3: implementations
/// must accept IDs of at least 2048 bytes).
pub const MAX_ID_LEN: usize = 2048;

/// Longest trust domain name, in bytes (SPIFFE ID spec 2.1).
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// Why a string is not a SPIFFE ID or trust domain. Each variant names the
/// rule of the SPIFFE ID spec that was broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    #[error("SPIFFE ID is empty")]
    Empty,
    #[error(
        "SPIFFE ID must start with \"spiffe://\" (scheme is missing or not lowercase \"spiffe\")"
    )]
    Scheme,
    #[error("trust domain is missing")]
    MissingTrustDomain,
    #[error("trust domain is {len} bytes long; at most {MAX_TRUST_DOMAIN_LEN} are allowed")]
    TrustDomainTooLong { len: usize },
    #[error(
        "trust domain character {ch:?} at byte {at} is not allowed: only lowercase letters, digits, '.', '-' and '_'"
    )]
    TrustDomainChar { ch: char, at: usize },
    #[error("a port is not allowed in a SPIFFE ID")]
    Port,
    #[error("userinfo ('user@') is not allowed in a SPIFFE ID")]
    Userinfo,
    #[error("a query ('?') is not allowed in a SPIFFE ID")]
    Query,
    #[error("a fragment ('#') is not allowed in a SPIFFE ID")]
    Fragment,
    #[error("percent-encoding ('%') is not allowed in a SPIFFE ID")]
    PercentEncoded,
    #[error("path has an empty segment ('//')")]
    EmptySegment,
    #[error("path has a dot segment ('.' or '..')")]
    DotSegment,
    #[error("path has a trailing '/'")]
    TrailingSlash,
    #[error(
        "path character {ch:?} at byte {at} is not allowed: only letters, digits, '.', '-' and '_'"
    )]
    PathChar { ch: char, at: usize },
    #[error("SPIFFE ID is {len} bytes long; at most {MAX_ID_LEN} are accepted")]
    TooLong { len: usize },
    #[error("a workload SPIFFE ID needs a path; \"{0}\" names only the trust domain")]
    MissingPath(String),
    #[error("SPIFFE ID {id} is not in trust domain {expected}")]
    WrongTrustDomain { id: String, expected: String },
}

/// A trust domain name such as `example.org`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a trust domain name (`example.org`) or a trust-domain SPIFFE ID
    /// (`spiffe://example.org`). A SPIFFE ID with a path is rejected.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        if s.contains("://") {
            let id = SpiffeId::parse(s)?;
            if !id.path().is_empty() {
                return Err(IdError::PathChar {
                    ch: '/',
                    at: SCHEME_PREFIX.len() + id.td_len,
                });
            }
            return Ok(id.trust_domain());
        }
        check_trust_domain(s, 0)?;
        Ok(Self(s.to_owned()))
    }

    /// The bare name, e.g. `example.org`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trust domain's own SPIFFE ID, `spiffe://example.org`.
    pub fn id(&self) -> SpiffeId {
        SpiffeId {
            full: format!("{SCHEME_PREFIX}{}", self.0),
            td_len: self.0.len(),
        }
    }

    /// Builds `spiffe://<td><path>`; `path` must be empty or start with `/`.
    pub fn id_with_path(&self, path: &str) -> Result<SpiffeId, IdError> {
        SpiffeId::parse(&format!("{SCHEME_PREFIX}{}{path}", self.0))
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustDomain({})", self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The path under which Signet names its own server and agents
/// (`/signet/server`, `/signet/agent/...`); no entry may claim it.
pub const RESERVED_PREFIX: &str = "/signet";

/// A SPIFFE ID: `spiffe://<trust domain>[/<path>]`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpiffeId {
    full: String,
    td_len: usize,
}

impl SpiffeId {
    /// Parses a SPIFFE ID, checking every rule of the SPIFFE ID spec.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        if s.is_empty() {
            return Err(IdError::Empty);
        }
        if s.len() > MAX_ID_LEN {
            return Err(IdError::TooLong { len: s.len() });
        }
        let rest = s.strip_prefix(SCHEME_PREFIX).ok_or(IdError::Scheme)?;
        let td_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (td, tail) = rest.split_at(td_end);
        check_trust_domain(td, SCHEME_PREFIX.len())?;
        check_path(tail, SCHEME_PREFIX.len() + td.len())?;
        Ok(Self {
            full: s.to_owned(),
            td_len: td.len(),
        })
    }

    /// Parses a SPIFFE ID that must have a path (the ID of a workload, not of
    /// a trust domain), as X509-SVIDs and JWT-SVIDs require.
    pub fn parse_workload(s: &str) -> Result<Self, IdError> {
        let id = Self::parse(s)?;
        if id.path().is_empty() {
            return Err(IdError::MissingPath(id.full));
        }
        Ok(id)
    }

    /// The trust domain the ID belongs to.
    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.trust_domain_str().to_owned())
    }

    /// The trust domain name without allocating.
    pub fn trust_domain_str(&self) -> &str {
        &self.full[SCHEME_PREFIX.len()..SCHEME_PREFIX.len() + self.td_len]
    }

    /// True when the ID belongs to `td`.
    pub fn is_member_of(&self, td: &TrustDomain) -> bool {
        self.trust_domain_str() == td.as_str()
    }

    /// The path, empty or starting with `/`.
    pub fn path(&self) -> &str {
        &self.full[SCHEME_PREFIX.len() + self.td_len..]
    }

    /// True for IDs Signet keeps for its own server and agents:
    /// `spiffe://<td>/signet` and everything under it.
    pub fn is_reserved(&self) -> bool {
        let path = self.path();
        path == RESERVED_PREFIX || path.starts_with(&format!("{RESERVED_PREFIX}/"))
    }

    /// True for the trust domain's own ID (no path).
    pub fn is_trust_domain_id(&self) -> bool {
        self.path().is_empty()
    }

    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// Fails unless the ID belongs to `td`.
    pub fn require_member_of(&self, td: &TrustDomain) -> Result<(), IdError> {
        if self.is_member_of(td) {
            Ok(())
        } else {
            Err(IdError::WrongTrustDomain {
                id: self.full.clone(),
                expected: td.to_string(),
            })
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.full)
    }
}

impl FromStr for SpiffeId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl AsRef<str> for SpiffeId {
    fn as_ref(&self) -> &str {
        &self.full
    }
}

impl Serialize for SpiffeId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.full)
    }
}

impl<'de> Deserialize<'de> for SpiffeId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl Serialize for TrustDomain {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TrustDomain {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// `offset` is where `td` starts in the caller's string, for error positions.
fn check_trust_domain(td: &str, offset: usize) -> Result<(), IdError> {
    if td.is_empty() {
        return Err(IdError::MissingTrustDomain);
    }
    for (i, ch) in td.char_indices() {
        match ch {
            'a'..='z' | '0'..='9' | '.' | '-' | '_' => {}
            ':' => return Err(IdError::Port),
            '@' => return Err(IdError::Userinfo),
            '%' => return Err(IdError::PercentEncoded),
            _ => return Err(IdError::TrustDomainChar { ch, at: offset + i }),
        }
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(IdError::TrustDomainTooLong { len: td.len() });
    }
    Ok(())
}

/// `path` is empty or starts with `/` (or with `?`/`#`, which are refused).
fn check_path(path: &str, offset: usize) -> Result<(), IdError> {
    if path.is_empty() {
        return Ok(());
    }
    let mut segment_start = 0;
    for (i, ch) in path.char_indices() {
        match ch {
            '/' => {
                if i > 0 {
                    check_segment(&path[segment_start..i])?;
                }
                segment_start = i + 1;
            }
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_' => {}
            '?' => return Err(IdError::Query),
            '#' => return Err(IdError::Fragment),
            '%' => return Err(IdError::PercentEncoded),
            _ => return Err(IdError::PathChar { ch, at: offset + i }),
        }
    }
    if segment_start == path.len() {
        // The path ends in '/': "spiffe://td/" or "spiffe://td/a/".
        return Err(IdError::TrailingSlash);
    }
    check_segment(&path[segment_start..])
}

fn check_segment(segment: &str) -> Result<(), IdError> {
    match segment {
        "" => Err(IdError::EmptySegment),
        "." | ".." => Err(IdError::DotSegment),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ids_round_trip() {
        for s in [
            "spiffe://example.org",
            "spiffe://example.org/workload",
            "spiffe://example.org/ns/prod/sa/web-1_a.b",
            "spiffe://a-b_c.0/A/Z/..x/.hidden/x..",
            "spiffe://td/...",
        ] {
            let id = SpiffeId::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(id.to_string(), s);
            assert_eq!(SpiffeId::parse(id.as_ref()).unwrap(), id);
        }
        let id = SpiffeId::parse("spiffe://example.org/a/b").unwrap();
        assert_eq!(id.trust_domain_str(), "example.org");
        assert_eq!(id.path(), "/a/b");
        assert!(!id.is_trust_domain_id());
    }

    #[test]
    fn each_rule_has_its_own_error() {
        let cases: &[(&str, IdError)] = &[
            ("", IdError::Empty),
            ("example.org/a", IdError::Scheme),
            ("SPIFFE://example.org/a", IdError::Scheme),
            ("https://example.org/a", IdError::Scheme),
            ("spiffe:/example.org", IdError::Scheme),
            ("spiffe://", IdError::MissingTrustDomain),
            ("spiffe:///path", IdError::MissingTrustDomain),
            (
                "spiffe://Example.org/a",
                IdError::TrustDomainChar { ch: 'E', at: 9 },
            ),
            (
                "spiffe://exa mple.org",
                IdError::TrustDomainChar { ch: ' ', at: 12 },
            ),
            ("spiffe://example.org:8080/a", IdError::Port),
            ("spiffe://user@example.org/a", IdError::Userinfo),
            ("spiffe://example.org/a?x=1", IdError::Query),
            ("spiffe://example.org?x=1", IdError::Query),
            ("spiffe://example.org/a#frag", IdError::Fragment),
            ("spiffe://example.org/a%20b", IdError::PercentEncoded),
            ("spiffe://ex%41mple.org", IdError::PercentEncoded),
            ("spiffe://example.org//a", IdError::EmptySegment),
            ("spiffe://example.org/a//b", IdError::EmptySegment),
            ("spiffe://example.org/./a", IdError::DotSegment),
            ("spiffe://example.org/a/..", IdError::DotSegment),
            ("spiffe://example.org/", IdError::TrailingSlash),
            ("spiffe://example.org/a/", IdError::TrailingSlash),
            (
                "spiffe://example.org/a b",
                IdError::PathChar { ch: ' ', at: 22 },
            ),
            (
                "spiffe://example.org/caf\u{e9}",
                IdError::PathChar {
                    ch: '\u{e9}',
                    at: 24,
                },
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                SpiffeId::parse(input).as_ref(),
                Err(want),
                "input {input:?}"
            );
        }
    }

    #[test]
    fn length_limits() {
        let td = "a".repeat(255);
        assert!(SpiffeId::parse(&format!("spiffe://{td}/x")).is_ok());
        let td = "a".repeat(256);
        assert_eq!(
            SpiffeId::parse(&format!("spiffe://{td}/x")),
            Err(IdError::TrustDomainTooLong { len: 256 })
        );
        let path = "/a".repeat((MAX_ID_LEN - "spiffe://td".len()) / 2);
        let ok = format!("spiffe://td{path}");
        assert!(ok.len() <= MAX_ID_LEN);
        assert!(SpiffeId::parse(&ok).is_ok());
        let long = format!("{ok}/bb");
        assert_eq!(
            SpiffeId::parse(&long),
            Err(IdError::TooLong { len: long.len() })
        );
    }

    #[test]
    fn trust_domain_parse_accepts_name_or_id() {
        let td = TrustDomain::parse("example.org").unwrap();
        assert_eq!(td, TrustDomain::parse("spiffe://example.org").unwrap());
        assert_eq!(td.id().as_str(), "spiffe://example.org");
        assert!(TrustDomain::parse("spiffe://example.org/path").is_err());
        assert_eq!(TrustDomain::parse(""), Err(IdError::MissingTrustDomain));
        assert_eq!(
            TrustDomain::parse("Example.org"),
            Err(IdError::TrustDomainChar { ch: 'E', at: 0 })
        );
        let id = td.id_with_path("/web").unwrap();
        assert!(id.is_member_of(&td));
        assert!(
            id.require_member_of(&TrustDomain::parse("other.org").unwrap())
                .is_err()
        );
    }

    #[test]
    fn workload_ids_need_a_path() {
        assert!(matches!(
            SpiffeId::parse_workload("spiffe://example.org"),
            Err(IdError::MissingPath(_))
        ));
        assert!(SpiffeId::parse_workload("spiffe://example.org/w").is_ok());
    }

    #[test]
    fn serde_validates() {
        let id: SpiffeId = serde_json::from_str("\"spiffe://example.org/w\"").unwrap();
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            "\"spiffe://example.org/w\""
        );
        assert!(serde_json::from_str::<SpiffeId>("\"spiffe://example.org/w/\"").is_err());
    }
}
