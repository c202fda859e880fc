//! Selectors: `type:value` facts that an attestor observed about a node or a
//! workload (`unix:uid:1000`, `x509pop:subject:cn:node-1`). The value may
//! itself contain colons; the type is everything before the first one.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest accepted selector, in bytes.
pub const MAX_SELECTOR_LEN: usize = 4096;

/// Why a string is not a selector.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SelectorError {
    #[error("selector {0:?} has no ':' between type and value (expected type:value)")]
    MissingSeparator(String),
    #[error("selector {0:?} has an empty type")]
    EmptyType(String),
    #[error("selector {0:?} has an empty value")]
    EmptyValue(String),
    #[error(
        "selector type {ty:?} has character {ch:?}: only lowercase letters, digits, '_' and '-'"
    )]
    TypeChar { ty: String, ch: char },
    #[error("selector value has a control character at byte {at}")]
    ValueControlChar { at: usize },
    #[error("selector is {len} bytes long; at most {MAX_SELECTOR_LEN} are allowed")]
    TooLong { len: usize },
}

/// One `type:value` selector.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Selector {
    full: String,
    type_len: usize,
}

/// The selector types and keys Signet's attestors produce, for the error
/// that names them.
pub const KNOWN_SELECTORS: &str = "unix:uid:<n>, unix:gid:<n>, unix:user:<name>, unix:group:<name>, unix:supplementary_gid:<n>, unix:path:</abs/path>, unix:sha256:<64 hex>, systemd:id:<unit>, container:id:<64 hex>, x509pop:subject:cn:<cn>, x509pop:serialnumber:<hex>, x509pop:san:dns:<name>, x509pop:san:uri:<uri>, x509pop:ca:fingerprint:<hex>";

impl Selector {
    /// Checks that an attestor of Signet's can produce this selector: a
    /// known type and key, and a value of the right form (an entry with
    /// another could never match). The reason names what was expected.
    pub fn check_known(&self) -> Result<(), String> {
        let value = self.value();
        let (key, rest) = value.split_once(':').unwrap_or((value, ""));
        let digits = |v: &str| {
            !v.is_empty()
                && v.len() <= 10
                && v.bytes().all(|b| b.is_ascii_digit())
                && v.parse::<u32>().is_ok()
        };
        let hex64 = |v: &str| {
            v.len() == 64
                && v.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        };
        let hex = |v: &str| !v.is_empty() && v.bytes().all(|b| b.is_ascii_hexdigit());
        let expected = match (self.selector_type(), key) {
            ("unix", "uid" | "gid" | "supplementary_gid") => {
                (!digits(rest)).then_some("a number (0 to 4294967295)")
            }
            ("unix", "user" | "group") => rest.is_empty().then_some("a name"),
            ("unix", "path") => (!rest.starts_with('/')).then_some("an absolute path"),
            ("unix", "sha256") => (!hex64(rest)).then_some("64 lowercase hex digits"),
            ("systemd", "id") => rest.is_empty().then_some("a unit name"),
            ("container", "id") => (!hex64(rest)).then_some("64 lowercase hex digits"),
            ("x509pop", "subject") => rest
                .strip_prefix("cn:")
                .is_none_or(str::is_empty)
                .then_some("cn:<common name>"),
            ("x509pop", "san") => rest
                .strip_prefix("dns:")
                .or_else(|| rest.strip_prefix("uri:"))
                .is_none_or(str::is_empty)
                .then_some("dns:<name> or uri:<uri>"),
            ("x509pop", "serialnumber") => (!hex(rest)).then_some("hex digits"),
            ("x509pop", "ca") => {
                (!rest.strip_prefix("fingerprint:").is_some_and(hex)).then_some("fingerprint:<hex>")
            }
            _ => {
                return Err(format!(
                    "selector {self}: no attestor produces {}:{key}; known: {KNOWN_SELECTORS}",
                    self.selector_type()
                ));
            }
        };
        match expected {
            Some(what) => Err(format!("selector {self}: the value must be {what}")),
            None => Ok(()),
        }
    }

    /// Parses `type:value`.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        if s.len() > MAX_SELECTOR_LEN {
            return Err(SelectorError::TooLong { len: s.len() });
        }
        let (ty, value) = s
            .split_once(':')
            .ok_or_else(|| SelectorError::MissingSeparator(s.to_owned()))?;
        Self::check(ty, value, s)?;
        Ok(Self {
            full: s.to_owned(),
            type_len: ty.len(),
        })
    }

    /// Builds a selector from its two parts.
    pub fn new(ty: &str, value: &str) -> Result<Self, SelectorError> {
        Self::parse(&format!("{ty}:{value}"))
    }

    fn check(ty: &str, value: &str, whole: &str) -> Result<(), SelectorError> {
        if ty.is_empty() {
            return Err(SelectorError::EmptyType(whole.to_owned()));
        }
        if let Some(ch) = ty
            .chars()
            .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '_' | '-'))
        {
            return Err(SelectorError::TypeChar {
                ty: ty.to_owned(),
                ch,
            });
        }
        if value.is_empty() {
            return Err(SelectorError::EmptyValue(whole.to_owned()));
        }
        if let Some((at, _)) = value.char_indices().find(|(_, c)| c.is_control()) {
            return Err(SelectorError::ValueControlChar {
                at: ty.len() + 1 + at,
            });
        }
        Ok(())
    }

    /// The attestor type, e.g. `unix`.
    pub fn selector_type(&self) -> &str {
        &self.full[..self.type_len]
    }

    /// The value, e.g. `uid:1000`.
    pub fn value(&self) -> &str {
        &self.full[self.type_len + 1..]
    }

    pub fn as_str(&self) -> &str {
        &self.full
    }
}

/// True when every selector in `required` is among `observed` (the entry
/// matching rule: an entry's selectors are a subset of the observed facts).
pub fn all_match(required: &[Selector], observed: &[Selector]) -> bool {
    !required.is_empty() && required.iter().all(|s| observed.contains(s))
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl fmt::Debug for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Selector({})", self.full)
    }
}

impl FromStr for Selector {
    type Err = SelectorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for Selector {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.full)
    }
}

impl<'de> Deserialize<'de> for Selector {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_selectors_an_attestor_produces_are_known() {
        let h = "ab".repeat(32);
        for ok in [
            "unix:uid:0".to_string(),
            "unix:gid:1000".into(),
            "unix:supplementary_gid:27".into(),
            "unix:user:nobody".into(),
            "unix:group:www-data".into(),
            "unix:path:/usr/bin/app".into(),
            format!("unix:sha256:{h}"),
            "systemd:id:nginx.service".into(),
            format!("container:id:{h}"),
            "x509pop:subject:cn:node-1".into(),
            "x509pop:san:dns:node-1.example".into(),
            "x509pop:san:uri:spiffe://x/y".into(),
            "x509pop:serialnumber:01ab".into(),
            "x509pop:ca:fingerprint:0a1b".into(),
        ] {
            assert_eq!(Selector::parse(&ok).unwrap().check_known(), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("uinx:uid:0", "no attestor produces uinx:uid"),
            ("unix:uidd:0", "no attestor produces unix:uidd"),
            ("k8s:ns:default", "known: unix:uid"),
            ("unix:uid:abc", "must be a number"),
            ("unix:uid:", "must be a number"),
            ("unix:uid:99999999999", "must be a number"),
            ("unix:user:", "must be a name"),
            ("unix:path:usr/bin/app", "an absolute path"),
            ("unix:sha256:abc", "64 lowercase hex"),
            ("container:id:xyz", "64 lowercase hex"),
            ("x509pop:subject:o:acme", "cn:<common name>"),
        ] {
            let err = Selector::parse(bad).unwrap().check_known().unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
            assert!(err.contains(bad), "{bad}: {err}");
        }
    }

    #[test]
    fn value_keeps_its_colons() {
        let s = Selector::parse("x509pop:subject:cn:node-1").unwrap();
        assert_eq!(s.selector_type(), "x509pop");
        assert_eq!(s.value(), "subject:cn:node-1");
        assert_eq!(s.to_string(), "x509pop:subject:cn:node-1");
        let s = Selector::new("unix", "uid:1000").unwrap();
        assert_eq!(s.as_str(), "unix:uid:1000");
    }

    #[test]
    fn bad_selectors_name_the_problem() {
        assert_eq!(
            Selector::parse("unix"),
            Err(SelectorError::MissingSeparator("unix".into()))
        );
        assert_eq!(
            Selector::parse(":uid:0"),
            Err(SelectorError::EmptyType(":uid:0".into()))
        );
        assert_eq!(
            Selector::parse("unix:"),
            Err(SelectorError::EmptyValue("unix:".into()))
        );
        assert_eq!(
            Selector::parse("Unix:uid:0"),
            Err(SelectorError::TypeChar {
                ty: "Unix".into(),
                ch: 'U'
            })
        );
        assert_eq!(
            Selector::parse("unix:uid:\n0"),
            Err(SelectorError::ValueControlChar { at: 9 })
        );
        let long = format!("unix:{}", "a".repeat(MAX_SELECTOR_LEN));
        assert!(matches!(
            Selector::parse(&long),
            Err(SelectorError::TooLong { .. })
        ));
    }

    #[test]
    fn subset_matching() {
        let p = |s: &str| Selector::parse(s).unwrap();
        let observed = vec![p("unix:uid:1000"), p("unix:gid:1000"), p("unix:user:alice")];
        assert!(all_match(&[p("unix:uid:1000")], &observed));
        assert!(all_match(
            &[p("unix:uid:1000"), p("unix:user:alice")],
            &observed
        ));
        assert!(!all_match(
            &[p("unix:uid:1000"), p("unix:user:bob")],
            &observed
        ));
        assert!(
            !all_match(&[], &observed),
            "an entry with no selectors never matches"
        );
    }
}
