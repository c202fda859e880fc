//! Trust bundles in the SPIFFE bundle format (SPIFFE Trust Domain and Bundle
//! spec, section 4): a JWK Set whose `x509-svid` keys carry one CA
//! certificate in `x5c` and whose `jwt-svid` keys carry a `kid`, plus
//! `spiffe_sequence` and `spiffe_refresh_hint`. Unknown `use` and `kty`
//! values are ignored, as the spec requires.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::jwk::Jwk;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde_json::{Map, Value, json};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::spiffe_id::TrustDomain;

const USE_X509: &str = "x509-svid";
const USE_JWT: &str = "jwt-svid";
const KNOWN_KTY: [&str; 2] = ["EC", "RSA"];

/// Why a bundle document or key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    #[error("bundle is not valid JSON: {0}")]
    Json(String),
    #[error("bundle has no \"keys\" array")]
    NoKeys,
    #[error("key {index}: {problem}")]
    Key { index: usize, problem: String },
    #[error("\"spiffe_sequence\" must be a non-negative integer")]
    Sequence,
    #[error("\"spiffe_refresh_hint\" must be a non-negative integer (seconds)")]
    RefreshHint,
    #[error("PEM input holds no CERTIFICATE block")]
    NoPemCertificates,
    #[error("PEM input is malformed: {0}")]
    Pem(String),
    #[error("certificate is not valid DER X.509: {0}")]
    Certificate(String),
    #[error("public key is not a supported EC (P-256/P-384/P-521) or RSA key")]
    UnsupportedKey,
}

/// A JWT signing public key published in a bundle.
#[derive(Debug, Clone, PartialEq)]
pub struct JwtAuthority {
    kid: String,
    jwk: Jwk,
    /// The public parameters as they appear in the JWK (kty, crv, x, y / n, e).
    params: Map<String, Value>,
}

impl JwtAuthority {
    /// Builds an authority from a DER SubjectPublicKeyInfo.
    pub fn from_spki(kid: &str, spki_der: &[u8]) -> Result<Self, BundleError> {
        let params = jwk_params_from_spki(spki_der)?;
        Self::from_params(kid, params)
    }

    fn from_params(kid: &str, params: Map<String, Value>) -> Result<Self, BundleError> {
        let mut full = params.clone();
        full.insert("kid".into(), kid.into());
        let jwk: Jwk = serde_json::from_value(Value::Object(full))
            .map_err(|e| BundleError::Json(e.to_string()))?;
        Ok(Self {
            kid: kid.to_owned(),
            jwk,
            params,
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The key as a `jsonwebtoken` JWK, for signature verification.
    pub fn jwk(&self) -> &Jwk {
        &self.jwk
    }

    /// The key as it appears in a bundle or a JWKS document.
    pub fn to_json(&self, key_use: &str) -> Value {
        let mut m = self.params.clone();
        m.insert("use".into(), key_use.into());
        m.insert("kid".into(), self.kid.clone().into());
        Value::Object(m)
    }
}

/// The trust bundle of one trust domain.
#[derive(Debug, Clone, PartialEq)]
pub struct Bundle {
    trust_domain: TrustDomain,
    x509_authorities: Vec<CertificateDer<'static>>,
    jwt_authorities: BTreeMap<String, JwtAuthority>,
    sequence: u64,
    refresh_hint: Option<u64>,
    /// Authorities whose key may be compromised: X.509 authorities by
    /// authority ID (Subject Key Identifier, hex), JWT keys by kid. They
    /// still verify; whatever they signed is to be replaced now. In JSON, a
    /// `"tainted": true` member on the key (other readers ignore it, as
    /// RFC 7517 section 4 requires of unknown members).
    tainted: BTreeSet<String>,
}

impl Bundle {
    /// An empty bundle for `trust_domain`.
    pub fn new(trust_domain: TrustDomain) -> Self {
        Self {
            trust_domain,
            x509_authorities: Vec::new(),
            jwt_authorities: BTreeMap::new(),
            sequence: 0,
            refresh_hint: None,
            tainted: BTreeSet::new(),
        }
    }

    /// Parses a SPIFFE bundle JSON document for `trust_domain`.
    pub fn parse_json(trust_domain: TrustDomain, json: &[u8]) -> Result<Self, BundleError> {
        let doc: Value =
            serde_json::from_slice(json).map_err(|e| BundleError::Json(e.to_string()))?;
        let keys = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or(BundleError::NoKeys)?;
        let mut bundle = Self::new(trust_domain);
        if let Some(seq) = doc.get("spiffe_sequence") {
            bundle.sequence = seq.as_u64().ok_or(BundleError::Sequence)?;
        }
        if let Some(hint) = doc.get("spiffe_refresh_hint") {
            bundle.refresh_hint = Some(hint.as_u64().ok_or(BundleError::RefreshHint)?);
        }
        for (index, key) in keys.iter().enumerate() {
            let err = |problem: &str| BundleError::Key {
                index,
                problem: problem.to_owned(),
            };
            let key = key.as_object().ok_or_else(|| err("is not a JSON object"))?;
            let tainted = key.get("tainted").and_then(Value::as_bool) == Some(true);
            let key_use = key.get("use").and_then(Value::as_str).unwrap_or_default();
            let kty = key
                .get("kty")
                .and_then(Value::as_str)
                .ok_or_else(|| err("has no \"kty\""))?;
            if !KNOWN_KTY.contains(&kty) || !matches!(key_use, USE_X509 | USE_JWT) {
                // Spec 4.2: keys of unknown use or type are ignored.
                continue;
            }
            if key_use == USE_X509 {
                let x5c = key
                    .get("x5c")
                    .and_then(Value::as_array)
                    .ok_or_else(|| err("x509-svid key has no \"x5c\" array"))?;
                let [cert] = x5c.as_slice() else {
                    return Err(err(&format!(
                        "x509-svid key must have exactly one certificate in \"x5c\", found {}",
                        x5c.len()
                    )));
                };
                let der = cert
                    .as_str()
                    .and_then(|s| STANDARD.decode(s).ok())
                    .ok_or_else(|| err("\"x5c\" entry is not base64"))?;
                parse_cert(&der).map_err(|e| err(&e.to_string()))?;
                if tainted && let Some(id) = crate::x509_svid::authority_id(&der) {
                    bundle.tainted.insert(id);
                }
                bundle.add_x509_authority(CertificateDer::from(der));
            } else {
                let kid = key
                    .get("kid")
                    .and_then(Value::as_str)
                    .filter(|k| !k.is_empty())
                    .ok_or_else(|| err("jwt-svid key has no \"kid\""))?;
                let mut params = key.clone();
                params.remove("use");
                params.remove("kid");
                params.remove("tainted");
                if tainted {
                    bundle.tainted.insert(kid.to_owned());
                }
                let authority = JwtAuthority::from_params(kid, params)
                    .map_err(|e| err(&format!("jwt-svid key is not a valid JWK: {e}")))?;
                if bundle.jwt_authorities.contains_key(kid) {
                    return Err(err(&format!("duplicate kid {kid:?}")));
                }
                bundle.jwt_authorities.insert(kid.to_owned(), authority);
            }
        }
        Ok(bundle)
    }

    /// Serializes to the SPIFFE bundle JSON format.
    pub fn to_json(&self) -> Result<String, BundleError> {
        Ok(self.to_json_value()?.to_string())
    }

    /// The bundle as a JSON value.
    pub fn to_json_value(&self) -> Result<Value, BundleError> {
        let mut keys = Vec::new();
        for cert in &self.x509_authorities {
            let parsed = parse_cert(cert)?;
            let mut m = jwk_params_from_spki(parsed.public_key().raw)?;
            m.insert("use".into(), USE_X509.into());
            m.insert("x5c".into(), json!([STANDARD.encode(cert.as_ref())]));
            if crate::x509_svid::authority_id(cert).is_some_and(|id| self.tainted.contains(&id)) {
                m.insert("tainted".into(), true.into());
            }
            keys.push(Value::Object(m));
        }
        for authority in self.jwt_authorities.values() {
            let mut key = authority.to_json(USE_JWT);
            if self.tainted.contains(&authority.kid) {
                key["tainted"] = true.into();
            }
            keys.push(key);
        }
        let mut doc = json!({ "keys": keys, "spiffe_sequence": self.sequence });
        if let Some(hint) = self.refresh_hint {
            doc["spiffe_refresh_hint"] = hint.into();
        }
        Ok(doc)
    }

    /// The JWT authorities as a plain JWKS document (for OIDC discovery).
    pub fn jwks_json(&self) -> Value {
        let keys: Vec<Value> = self
            .jwt_authorities
            .values()
            .map(|a| a.to_json("sig"))
            .collect();
        json!({ "keys": keys })
    }

    /// Builds a bundle from PEM CA certificates (X.509 authorities only).
    pub fn from_x509_pem(trust_domain: TrustDomain, pem: &[u8]) -> Result<Self, BundleError> {
        let mut bundle = Self::new(trust_domain);
        for cert in certificates_from_pem(pem)? {
            bundle.add_x509_authority(cert);
        }
        Ok(bundle)
    }

    /// The X.509 authorities as concatenated PEM CERTIFICATE blocks.
    pub fn x509_pem(&self) -> String {
        certificates_to_pem(&self.x509_authorities)
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn x509_authorities(&self) -> &[CertificateDer<'static>] {
        &self.x509_authorities
    }

    pub fn jwt_authorities(&self) -> impl Iterator<Item = &JwtAuthority> {
        self.jwt_authorities.values()
    }

    pub fn jwt_authority(&self, kid: &str) -> Option<&JwtAuthority> {
        self.jwt_authorities.get(kid)
    }

    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    pub fn set_sequence(&mut self, sequence: u64) {
        self.sequence = sequence;
    }

    pub fn refresh_hint(&self) -> Option<u64> {
        self.refresh_hint
    }

    pub fn set_refresh_hint(&mut self, secs: Option<u64>) {
        self.refresh_hint = secs;
    }

    /// Adds a CA certificate unless it is already present. Returns whether
    /// the bundle changed.
    pub fn add_x509_authority(&mut self, cert: CertificateDer<'static>) -> bool {
        if self.x509_authorities.contains(&cert) {
            return false;
        }
        self.x509_authorities.push(cert);
        true
    }

    /// Removes the CA certificates for which `drop` is true. Returns whether
    /// the bundle changed.
    pub fn remove_x509_authorities(
        &mut self,
        mut drop: impl FnMut(&CertificateDer<'static>) -> bool,
    ) -> bool {
        let before = self.x509_authorities.len();
        let tainted = &mut self.tainted;
        self.x509_authorities.retain(|c| {
            let gone = drop(c);
            if gone && let Some(id) = crate::x509_svid::authority_id(c) {
                tainted.remove(&id);
            }
            !gone
        });
        before != self.x509_authorities.len()
    }

    /// Adds or replaces a JWT authority. Returns whether the bundle changed.
    pub fn add_jwt_authority(&mut self, authority: JwtAuthority) -> bool {
        let previous = self
            .jwt_authorities
            .insert(authority.kid.clone(), authority.clone());
        previous.as_ref() != Some(&authority)
    }

    /// Removes a JWT authority by key ID. Returns whether it was present.
    pub fn remove_jwt_authority(&mut self, kid: &str) -> bool {
        self.tainted.remove(kid);
        self.jwt_authorities.remove(kid).is_some()
    }

    /// Marks an authority (X.509 authority ID or JWT kid) tainted, or
    /// clears the mark. Returns whether the bundle changed.
    pub fn set_tainted(&mut self, authority_id: &str, tainted: bool) -> bool {
        if tainted {
            self.tainted.insert(authority_id.to_owned())
        } else {
            self.tainted.remove(authority_id)
        }
    }

    /// Whether an authority (X.509 authority ID or JWT kid) is tainted.
    pub fn is_tainted(&self, authority_id: &str) -> bool {
        self.tainted.contains(authority_id)
    }

    /// The tainted authorities (a removed authority's mark goes with it).
    pub fn tainted(&self) -> impl Iterator<Item = &str> {
        self.tainted.iter().map(String::as_str)
    }

    /// True when the bundle carries the same keys as `other`, in any order,
    /// with the same taints (sequence and refresh hint aside).
    pub fn same_keys(&self, other: &Bundle) -> bool {
        self.trust_domain == other.trust_domain
            && self.x509_authorities.len() == other.x509_authorities.len()
            && self
                .x509_authorities
                .iter()
                .all(|c| other.x509_authorities.contains(c))
            && self.jwt_authorities == other.jwt_authorities
            && self.tainted == other.tainted
    }
}

/// Anything that can hand out the bundle of a trust domain.
pub trait BundleSource {
    fn bundle_for(&self, trust_domain: &str) -> Option<&Bundle>;
}

impl BundleSource for Bundle {
    fn bundle_for(&self, trust_domain: &str) -> Option<&Bundle> {
        (self.trust_domain.as_str() == trust_domain).then_some(self)
    }
}

/// Bundles of several trust domains: the own one and federated ones.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BundleSet {
    bundles: BTreeMap<TrustDomain, Bundle>,
}

impl BundleSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts or replaces the bundle of its trust domain.
    pub fn insert(&mut self, bundle: Bundle) {
        self.bundles.insert(bundle.trust_domain.clone(), bundle);
    }

    pub fn remove(&mut self, td: &TrustDomain) -> Option<Bundle> {
        self.bundles.remove(td)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Bundle> {
        self.bundles.values()
    }

    pub fn len(&self) -> usize {
        self.bundles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bundles.is_empty()
    }
}

impl BundleSource for BundleSet {
    fn bundle_for(&self, trust_domain: &str) -> Option<&Bundle> {
        self.bundles
            .iter()
            .find(|(td, _)| td.as_str() == trust_domain)
            .map(|(_, b)| b)
    }
}

/// Parses every CERTIFICATE block of a PEM document.
pub fn certificates_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, BundleError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| BundleError::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(BundleError::NoPemCertificates);
    }
    for cert in &certs {
        parse_cert(cert)?;
    }
    Ok(certs)
}

/// Encodes certificates as concatenated PEM CERTIFICATE blocks.
pub fn certificates_to_pem(certs: &[CertificateDer<'_>]) -> String {
    let blocks: Vec<pem::Pem> = certs
        .iter()
        .map(|c| pem::Pem::new("CERTIFICATE", c.as_ref().to_vec()))
        .collect();
    pem::encode_many_config(
        &blocks,
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

fn parse_cert(der: &[u8]) -> Result<X509Certificate<'_>, BundleError> {
    match X509Certificate::from_der(der) {
        Ok((&[], cert)) => Ok(cert),
        Ok(_) => Err(BundleError::Certificate(
            "trailing bytes after the certificate".into(),
        )),
        Err(e) => Err(BundleError::Certificate(e.to_string())),
    }
}

/// The JWK public-key members (kty, crv, x, y or kty, n, e) of a DER
/// SubjectPublicKeyInfo.
pub fn jwk_params_from_spki(spki_der: &[u8]) -> Result<Map<String, Value>, BundleError> {
    let (_, spki) =
        SubjectPublicKeyInfo::from_der(spki_der).map_err(|_| BundleError::UnsupportedKey)?;
    let mut m = Map::new();
    match spki.parsed().map_err(|_| BundleError::UnsupportedKey)? {
        PublicKey::EC(point) => {
            let data = point.data();
            let crv = match data.len() {
                65 => "P-256",
                97 => "P-384",
                133 => "P-521",
                _ => return Err(BundleError::UnsupportedKey),
            };
            // An uncompressed point: 0x04 || X || Y, X and Y of equal length.
            let coords = data
                .strip_prefix(&[4u8])
                .ok_or(BundleError::UnsupportedKey)?;
            let (x, y) = coords.split_at(coords.len() / 2);
            m.insert("kty".into(), "EC".into());
            m.insert("crv".into(), crv.into());
            m.insert("x".into(), URL_SAFE_NO_PAD.encode(x).into());
            m.insert("y".into(), URL_SAFE_NO_PAD.encode(y).into());
        }
        PublicKey::RSA(rsa) => {
            let n = strip_leading_zeros(rsa.modulus);
            let e = strip_leading_zeros(rsa.exponent);
            m.insert("kty".into(), "RSA".into());
            m.insert("n".into(), URL_SAFE_NO_PAD.encode(n).into());
            m.insert("e".into(), URL_SAFE_NO_PAD.encode(e).into());
        }
        _ => return Err(BundleError::UnsupportedKey),
    }
    Ok(m)
}

fn strip_leading_zeros(b: &[u8]) -> &[u8] {
    let first = b
        .iter()
        .position(|&x| x != 0)
        .unwrap_or(b.len().saturating_sub(1));
    &b[first..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_cert(
        alg: &'static rcgen::SignatureAlgorithm,
    ) -> (CertificateDer<'static>, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        (cert.der().clone(), key)
    }

    fn td() -> TrustDomain {
        TrustDomain::parse("example.org").unwrap()
    }

    #[test]
    fn json_round_trip() {
        let (cert, _) = ca_cert(&rcgen::PKCS_ECDSA_P256_SHA256);
        let (rsa_cert, _) = ca_cert(&rcgen::PKCS_RSA_SHA256);
        let jwt_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let mut b = Bundle::new(td());
        assert!(b.add_x509_authority(cert.clone()));
        assert!(
            !b.add_x509_authority(cert.clone()),
            "duplicates are not added"
        );
        b.add_x509_authority(rsa_cert);
        b.add_jwt_authority(
            JwtAuthority::from_spki(
                "k1",
                &rcgen::PublicKeyData::subject_public_key_info(&jwt_key),
            )
            .unwrap(),
        );
        b.set_sequence(7);
        b.set_refresh_hint(Some(300));
        let json = b.to_json().unwrap();
        let v: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["spiffe_sequence"], 7);
        assert_eq!(v["spiffe_refresh_hint"], 300);
        assert_eq!(v["keys"][0]["use"], "x509-svid");
        assert_eq!(v["keys"][0]["crv"], "P-256");
        assert_eq!(v["keys"][1]["kty"], "RSA");
        assert_eq!(v["keys"][2]["use"], "jwt-svid");
        assert_eq!(v["keys"][2]["kid"], "k1");
        assert_eq!(v["keys"][2]["crv"], "P-384");
        let back = Bundle::parse_json(td(), json.as_bytes()).unwrap();
        assert_eq!(back, b);
    }

    #[test]
    fn taints_travel_in_json_and_count_as_a_change() {
        let (a, _) = ca_cert(&rcgen::PKCS_ECDSA_P256_SHA256);
        let (b, _) = ca_cert(&rcgen::PKCS_ECDSA_P256_SHA256);
        let jwt_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let spki = rcgen::PublicKeyData::subject_public_key_info(&jwt_key);
        let mut bundle = Bundle::new(td());
        bundle.add_x509_authority(a.clone());
        bundle.add_x509_authority(b.clone());
        bundle.add_jwt_authority(JwtAuthority::from_spki("k1", &spki).unwrap());
        let clean = bundle.clone();
        let a_id = crate::x509_svid::authority_id(&a).expect("a CA certificate has an SKI");
        assert_eq!(a_id.len(), 40, "{a_id}");
        assert!(bundle.set_tainted(&a_id, true));
        assert!(bundle.set_tainted("k1", true));
        assert!(!bundle.same_keys(&clean), "a taint is a change to publish");
        let v = bundle.to_json_value().unwrap();
        assert_eq!(v["keys"][0]["tainted"], true);
        assert_eq!(v["keys"][1].get("tainted"), None);
        assert_eq!(v["keys"][2]["tainted"], true);
        let back = Bundle::parse_json(td(), v.to_string().as_bytes()).unwrap();
        assert_eq!(back, bundle);
        assert!(back.is_tainted(&a_id) && back.is_tainted("k1"));
        // The order of authorities is not a change.
        let mut reordered = Bundle::new(td());
        reordered.add_x509_authority(b);
        reordered.add_x509_authority(a.clone());
        reordered.add_jwt_authority(JwtAuthority::from_spki("k1", &spki).unwrap());
        assert!(reordered.same_keys(&clean));
        // An authority leaving takes its mark with it.
        bundle.remove_x509_authorities(|c| *c == a);
        bundle.remove_jwt_authority("k1");
        assert_eq!(bundle.tainted().count(), 0);
    }

    #[test]
    fn unknown_use_and_kty_are_ignored() {
        let (cert, _) = ca_cert(&rcgen::PKCS_ECDSA_P256_SHA256);
        let doc = json!({"keys": [
            {"use": "x509-svid", "kty": "EC", "x5c": [STANDARD.encode(cert.as_ref())]},
            {"use": "something-new", "kty": "EC", "x5c": []},
            {"use": "jwt-svid", "kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": "AA"},
            {"kty": "EC", "crv": "P-256"},
        ]});
        let b = Bundle::parse_json(td(), doc.to_string().as_bytes()).unwrap();
        assert_eq!(b.x509_authorities().len(), 1);
        assert_eq!(b.jwt_authorities().count(), 0);
        assert_eq!(b.sequence(), 0);
        assert_eq!(b.refresh_hint(), None);
    }

    #[test]
    fn bad_documents_name_the_problem() {
        let (cert, _) = ca_cert(&rcgen::PKCS_ECDSA_P256_SHA256);
        let c = STANDARD.encode(cert.as_ref());
        let cases = [
            ("not json".to_string(), "not valid JSON"),
            (json!({"spiffe_sequence": 1}).to_string(), "no \"keys\""),
            (json!({"keys": [1]}).to_string(), "key 0: is not a JSON object"),
            (json!({"keys": [{"use": "x509-svid"}]}).to_string(), "no \"kty\""),
            (json!({"keys": [{"use": "x509-svid", "kty": "EC"}]}).to_string(), "no \"x5c\""),
            (
                json!({"keys": [{"use": "x509-svid", "kty": "EC", "x5c": [c, c]}]}).to_string(),
                "exactly one certificate",
            ),
            (
                json!({"keys": [{"use": "x509-svid", "kty": "EC", "x5c": ["!!"]}]}).to_string(),
                "not base64",
            ),
            (
                json!({"keys": [{"use": "x509-svid", "kty": "EC", "x5c": ["AAAA"]}]}).to_string(),
                "not valid DER",
            ),
            (
                json!({"keys": [{"use": "jwt-svid", "kty": "EC", "crv": "P-256", "x": "a", "y": "b"}]}).to_string(),
                "no \"kid\"",
            ),
            (json!({"keys": [], "spiffe_sequence": -1}).to_string(), "spiffe_sequence"),
            (json!({"keys": [], "spiffe_refresh_hint": "5m"}).to_string(), "spiffe_refresh_hint"),
        ];
        for (doc, want) in cases {
            let err = Bundle::parse_json(td(), doc.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{doc}: got {err:?}, want {want:?}");
        }
    }

    #[test]
    fn pem_round_trip() {
        let (a, _) = ca_cert(&rcgen::PKCS_ECDSA_P256_SHA256);
        let (b, _) = ca_cert(&rcgen::PKCS_ECDSA_P384_SHA384);
        let mut bundle = Bundle::new(td());
        bundle.add_x509_authority(a);
        bundle.add_x509_authority(b);
        let pem = bundle.x509_pem();
        assert_eq!(pem.matches("-----BEGIN CERTIFICATE-----").count(), 2);
        let back = Bundle::from_x509_pem(td(), pem.as_bytes()).unwrap();
        assert_eq!(back.x509_authorities(), bundle.x509_authorities());
        assert_eq!(
            Bundle::from_x509_pem(td(), b"nothing here"),
            Err(BundleError::NoPemCertificates)
        );
    }

    #[test]
    fn bundle_set_lookup() {
        let mut set = BundleSet::new();
        set.insert(Bundle::new(td()));
        set.insert(Bundle::new(TrustDomain::parse("partner.org").unwrap()));
        assert_eq!(set.len(), 2);
        assert!(set.bundle_for("partner.org").is_some());
        assert!(set.bundle_for("nope.org").is_none());
        let own = Bundle::new(td());
        assert!(own.bundle_for("example.org").is_some());
        assert!(own.bundle_for("partner.org").is_none());
    }
}
