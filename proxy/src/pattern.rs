//! SPIFFE ID patterns for allow-lists (`--allow-id`, `--server-id`), as
//! ghostunnel's `--allow-uri` wildcards: `*` stands for one whole path
//! segment, a trailing `/**` for one or more. A pattern without `*` is a
//! SPIFFE ID, matched exactly. The trust domain is always literal.
//!
//! `spiffe://example.org/ns/*/sa/web` matches `.../ns/prod/sa/web`, not
//! `.../ns/a/b/sa/web`; `spiffe://example.org/ns/prod/**` matches
//! `.../ns/prod/x` and `.../ns/prod/x/y`, not `.../ns/prod` itself.

use std::fmt;

use signet_identity::SpiffeId;

/// A parsed pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdPattern {
    text: String,
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Exact,
    Wild {
        trust_domain: String,
        /// `None`: `*`, any one segment.
        segments: Vec<Option<String>>,
        /// A trailing `/**`: one or more segments more.
        rest: bool,
    },
}

impl IdPattern {
    /// Parses a SPIFFE ID or a pattern, with an error that names the
    /// problem.
    pub fn parse(s: &str) -> Result<IdPattern, String> {
        if !s.contains('*') {
            let id = SpiffeId::parse(s).map_err(|e| e.to_string())?;
            return Ok(IdPattern {
                text: id.as_str().to_string(),
                kind: Kind::Exact,
            });
        }
        // Validated as the ID it would be with every wildcard a plain
        // segment: the trust domain and literal segments obey SPIFFE's rules.
        let parts: Vec<&str> = s.split('/').collect();
        if parts
            .get(2)
            .is_some_and(|authority| authority.contains('*'))
        {
            return Err("a wildcard cannot stand in the trust domain".into());
        }
        let concrete: Vec<&str> = parts
            .iter()
            .map(|p| if p.contains('*') { "x" } else { p })
            .collect();
        let id = SpiffeId::parse(&concrete.join("/")).map_err(|e| e.to_string())?;
        let path = s
            .strip_prefix("spiffe://")
            .and_then(|rest| rest.split_once('/'))
            .map(|(_, path)| path)
            .ok_or_else(|| "a pattern needs a path after the trust domain".to_string())?;
        let segs: Vec<&str> = path.split('/').collect();
        let mut segments = Vec::with_capacity(segs.len());
        let mut rest = false;
        for (i, seg) in segs.iter().enumerate() {
            match *seg {
                "*" => segments.push(None),
                "**" if i + 1 == segs.len() => rest = true,
                "**" => return Err("** may only end a pattern (.../**)".into()),
                seg if seg.contains('*') => {
                    return Err(format!(
                        "{seg:?}: a * must be a whole path segment (/*/) or end the pattern (/**)"
                    ));
                }
                seg => segments.push(Some(seg.to_string())),
            }
        }
        Ok(IdPattern {
            text: s.to_string(),
            kind: Kind::Wild {
                trust_domain: id.trust_domain_str().to_string(),
                segments,
                rest,
            },
        })
    }

    /// Whether `id` is one this pattern names.
    pub fn matches(&self, id: &SpiffeId) -> bool {
        let (trust_domain, segments, rest) = match &self.kind {
            Kind::Exact => return id.as_str() == self.text,
            Kind::Wild {
                trust_domain,
                segments,
                rest,
            } => (trust_domain, segments, *rest),
        };
        if id.trust_domain_str() != trust_domain {
            return false;
        }
        let path = id.path().strip_prefix('/').unwrap_or_default();
        let got: Vec<&str> = if path.is_empty() {
            Vec::new()
        } else {
            path.split('/').collect()
        };
        let fits = if rest {
            got.len() > segments.len()
        } else {
            got.len() == segments.len()
        };
        fits && segments
            .iter()
            .zip(&got)
            .all(|(want, got)| want.as_deref().is_none_or(|w| w == *got))
    }

    /// Whether it names one SPIFFE ID only.
    pub fn is_exact(&self) -> bool {
        self.kind == Kind::Exact
    }
}

impl fmt::Display for IdPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    #[test]
    fn wildcards_match_as_ghostunnel_does() {
        let one = IdPattern::parse("spiffe://example.org/ns/*/sa/web").unwrap();
        assert!(one.matches(&id("spiffe://example.org/ns/prod/sa/web")));
        assert!(!one.matches(&id("spiffe://example.org/ns/a/b/sa/web")));
        assert!(!one.matches(&id("spiffe://example.org/ns/prod/sa/api")));
        assert!(!one.matches(&id("spiffe://other.org/ns/prod/sa/web")));
        let tree = IdPattern::parse("spiffe://example.org/ns/prod/**").unwrap();
        assert!(tree.matches(&id("spiffe://example.org/ns/prod/x")));
        assert!(tree.matches(&id("spiffe://example.org/ns/prod/x/y")));
        assert!(!tree.matches(&id("spiffe://example.org/ns/prod")));
        assert!(!tree.matches(&id("spiffe://example.org/ns/production/x")));
        let exact = IdPattern::parse("spiffe://example.org/web").unwrap();
        assert!(exact.is_exact());
        assert!(exact.matches(&id("spiffe://example.org/web")));
        assert!(!exact.matches(&id("spiffe://example.org/web/x")));
    }

    #[test]
    fn bad_patterns_are_refused_naming_the_problem() {
        for (bad, says) in [
            ("spiffe://example.org/ns/web-*", "whole path segment"),
            ("spiffe://example.org/**/x", "may only end"),
            ("spiffe://*.org/x", "trust domain"),
            ("spiffe://example.org/a/../*", ""),
            ("http://example.org/*", ""),
        ] {
            let err = IdPattern::parse(bad).expect_err(bad);
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}
