//! X509-SVIDs (SPIFFE X509-SVID spec): a certificate chain whose leaf
//! carries exactly one SPIFFE ID as a URI SAN, plus its private key.
//!
//! [`verify_x509_svid`] applies the spec's validation rules (section 5) and
//! then RFC 5280 path validation (rustls-webpki) against the bundle of the
//! ID's trust domain. Each broken rule has its own error variant.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer, UnixTime};
use webpki::{EndEntityCert, KeyUsage};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};
use zeroize::Zeroizing;

use crate::bundle::{BundleSource, certificates_from_pem, certificates_to_pem};
use crate::spiffe_id::{IdError, SpiffeId};

/// X509-SVIDs are backdated this much against clock skew (DESIGN.md 3): the
/// issuer sets NotBefore this far in the past, and whoever computes an
/// SVID's life adds it back.
pub const BACKDATE: Duration = Duration::from_secs(10);

/// Why a certificate chain is not a valid X509-SVID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum X509SvidError {
    #[error("certificate chain is empty")]
    EmptyChain,
    #[error("leaf certificate is not valid DER X.509: {0}")]
    Malformed(String),
    #[error("leaf certificate has no URI SAN (a SPIFFE ID is required)")]
    NoUriSan,
    #[error("leaf certificate has {0} URI SANs; an X509-SVID has exactly one")]
    MultipleUriSans(usize),
    #[error("leaf URI SAN is not a valid workload SPIFFE ID: {0}")]
    InvalidSpiffeId(#[source] IdError),
    #[error("leaf certificate is a CA (basicConstraints cA=true)")]
    LeafIsCa,
    #[error("leaf certificate has no keyUsage extension")]
    NoKeyUsage,
    #[error("leaf keyUsage lacks digitalSignature")]
    NoDigitalSignature,
    #[error("leaf keyUsage has keyCertSign, which only signing certificates may have")]
    KeyCertSign,
    #[error("leaf keyUsage has cRLSign, which only signing certificates may have")]
    CrlSign,
    #[error("leaf certificate is not valid before {not_before} (unix seconds)")]
    NotYetValid { not_before: i64 },
    #[error("leaf certificate expired at {not_after} (unix seconds)")]
    Expired { not_after: i64 },
    #[error("no trust bundle for trust domain {0}")]
    NoBundle(String),
    #[error("certificate does not chain to the bundle of trust domain {trust_domain}: {reason}")]
    Untrusted {
        trust_domain: String,
        reason: String,
    },
    #[error("private key is not a PKCS#8 key: {0}")]
    Key(String),
    #[error("PEM input is malformed: {0}")]
    Pem(String),
}

/// A private key in PKCS#8 DER. Zeroized on drop; `Debug` prints no secret.
#[derive(Clone)]
pub struct PrivateKey(Zeroizing<Vec<u8>>);

impl PrivateKey {
    pub fn from_pkcs8_der(der: Vec<u8>) -> Self {
        Self(Zeroizing::new(der))
    }

    /// Parses the first PRIVATE KEY (PKCS#8) block of a PEM document.
    pub fn from_pem(pem: &[u8]) -> Result<Self, X509SvidError> {
        let key = PrivatePkcs8KeyDer::from_pem_slice(pem)
            .map_err(|e| X509SvidError::Key(e.to_string()))?;
        Ok(Self::from_pkcs8_der(key.secret_pkcs8_der().to_vec()))
    }

    pub fn pkcs8_der(&self) -> &[u8] {
        &self.0
    }

    /// The key as a PKCS#8 PEM document (itself zeroized on drop).
    pub fn to_pem(&self) -> Zeroizing<String> {
        let block = pem::Pem::new("PRIVATE KEY", self.0.to_vec());
        Zeroizing::new(pem::encode_config(
            &block,
            pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
        ))
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey([redacted])")
    }
}

impl PartialEq for PrivateKey {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

/// An X509-SVID: the chain (leaf first, then intermediates) and its key.
#[derive(Clone, PartialEq)]
pub struct X509Svid {
    spiffe_id: SpiffeId,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKey,
    not_after: SystemTime,
    serial: String,
}

impl X509Svid {
    /// Builds an SVID from a chain and its key, checking the leaf's shape
    /// (SPIFFE ID, not a CA, key usage). Trust is checked by
    /// [`verify_x509_svid`], not here.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKey,
    ) -> Result<Self, X509SvidError> {
        let leaf = chain.first().ok_or(X509SvidError::EmptyChain)?;
        let facts = leaf_facts(leaf)?;
        Ok(Self {
            spiffe_id: facts.id,
            chain,
            key,
            not_after: UNIX_EPOCH + Duration::from_secs(facts.not_after.max(0) as u64),
            serial: facts.serial,
        })
    }

    /// Parses a PEM chain and a PEM PKCS#8 key.
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8]) -> Result<Self, X509SvidError> {
        let chain =
            certificates_from_pem(chain_pem).map_err(|e| X509SvidError::Pem(e.to_string()))?;
        Self::new(chain, PrivateKey::from_pem(key_pem)?)
    }

    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.spiffe_id
    }

    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    pub fn leaf(&self) -> &CertificateDer<'static> {
        // `new` refuses an empty chain, so index 0 exists.
        &self.chain[0]
    }

    pub fn private_key(&self) -> &PrivateKey {
        &self.key
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The leaf's serial number in lowercase hex.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    pub fn chain_pem(&self) -> String {
        certificates_to_pem(&self.chain)
    }
}

impl fmt::Debug for X509Svid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("X509Svid")
            .field("spiffe_id", &self.spiffe_id)
            .field("serial", &self.serial)
            .field("chain_len", &self.chain.len())
            .field("key", &self.key)
            .finish()
    }
}

/// What a successful verification established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedX509Svid {
    pub spiffe_id: SpiffeId,
    /// Leaf NotBefore, unix seconds.
    pub not_before: i64,
    /// Leaf NotAfter, unix seconds.
    pub not_after: i64,
    pub serial: String,
}

/// Verifies an X509-SVID chain (leaf first) against the bundle of the leaf's
/// trust domain at time `now`.
pub fn verify_x509_svid(
    chain: &[CertificateDer<'_>],
    bundles: &impl BundleSource,
    now: SystemTime,
) -> Result<VerifiedX509Svid, X509SvidError> {
    let leaf = chain.first().ok_or(X509SvidError::EmptyChain)?;
    let facts = leaf_facts(leaf)?;
    let now_secs = unix_secs(now);
    if now_secs < facts.not_before {
        return Err(X509SvidError::NotYetValid {
            not_before: facts.not_before,
        });
    }
    if now_secs > facts.not_after {
        return Err(X509SvidError::Expired {
            not_after: facts.not_after,
        });
    }
    let td = facts.id.trust_domain_str();
    let bundle = bundles
        .bundle_for(td)
        .ok_or_else(|| X509SvidError::NoBundle(td.to_owned()))?;
    let untrusted = |reason: String| X509SvidError::Untrusted {
        trust_domain: td.to_owned(),
        reason,
    };
    let anchors = bundle
        .x509_authorities()
        .iter()
        .filter_map(|c| webpki::anchor_from_trusted_cert(c).ok())
        .collect::<Vec<_>>();
    if anchors.is_empty() {
        return Err(untrusted("the bundle has no X.509 authorities".into()));
    }
    let end_entity = EndEntityCert::try_from(leaf).map_err(|e| untrusted(e.to_string()))?;
    let time = UnixTime::since_unix_epoch(Duration::from_secs(now_secs.max(0) as u64));
    end_entity
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &chain[1..],
            time,
            // SVIDs carry both serverAuth and clientAuth; either side may verify.
            KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(|e| untrusted(e.to_string()))?;
    Ok(VerifiedX509Svid {
        spiffe_id: facts.id,
        not_before: facts.not_before,
        not_after: facts.not_after,
        serial: facts.serial,
    })
}

/// What the leaf of an X509-SVID says about itself (no trust implied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafInfo {
    pub id: SpiffeId,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
    /// Lowercase hex.
    pub serial: String,
}

/// NotAfter (unix seconds) of any certificate, e.g. a bundle's CA.
pub fn certificate_not_after(der: &[u8]) -> Option<i64> {
    X509Certificate::from_der(der)
        .ok()
        .map(|(_, c)| c.validity().not_after.timestamp())
}

/// The authority ID of a CA certificate, as SPIRE names X.509 authorities:
/// its Subject Key Identifier in lowercase hex (`None` without one).
pub fn authority_id(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => Some(hex(k.0)),
            _ => None,
        })
}

/// The authority that signed a certificate, by its Authority Key
/// Identifier in lowercase hex (`None` without one).
pub fn issuer_authority_id(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|k| hex(k.0))
            }
            _ => None,
        })
}

/// Every authority an X509-SVID's chain names: each certificate's issuer
/// (Authority Key Identifier) and each intermediate's own key.
pub fn chain_authority_ids(chain: &[CertificateDer<'_>]) -> Vec<String> {
    let mut ids: Vec<String> = chain
        .iter()
        .filter_map(|c| issuer_authority_id(c))
        .collect();
    ids.extend(chain.iter().skip(1).filter_map(|c| authority_id(c)));
    ids.sort();
    ids.dedup();
    ids
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads and shape-checks an X509-SVID leaf without verifying its chain.
pub fn inspect_leaf(der: &[u8]) -> Result<LeafInfo, X509SvidError> {
    leaf_facts(der)
}

/// Checks the leaf rules of X509-SVID spec sections 4 and 5 that need no
/// trust anchor.
fn leaf_facts(der: &[u8]) -> Result<LeafInfo, X509SvidError> {
    let cert = match X509Certificate::from_der(der) {
        Ok((&[], cert)) => cert,
        Ok(_) => return Err(X509SvidError::Malformed("trailing bytes".into())),
        Err(e) => return Err(X509SvidError::Malformed(e.to_string())),
    };
    let san = cert
        .subject_alternative_name()
        .map_err(|e| X509SvidError::Malformed(e.to_string()))?;
    let uris: Vec<&str> = san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(*u),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let uri = match uris.as_slice() {
        [] => return Err(X509SvidError::NoUriSan),
        [one] => *one,
        many => return Err(X509SvidError::MultipleUriSans(many.len())),
    };
    let id = SpiffeId::parse_workload(uri).map_err(X509SvidError::InvalidSpiffeId)?;
    let bc = cert
        .basic_constraints()
        .map_err(|e| X509SvidError::Malformed(e.to_string()))?;
    if bc.is_some_and(|b| b.value.ca) {
        return Err(X509SvidError::LeafIsCa);
    }
    let ku = cert
        .key_usage()
        .map_err(|e| X509SvidError::Malformed(e.to_string()))?
        .ok_or(X509SvidError::NoKeyUsage)?;
    if !ku.value.digital_signature() {
        return Err(X509SvidError::NoDigitalSignature);
    }
    if ku.value.key_cert_sign() {
        return Err(X509SvidError::KeyCertSign);
    }
    if ku.value.crl_sign() {
        return Err(X509SvidError::CrlSign);
    }
    Ok(LeafInfo {
        id,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        serial: cert.tbs_certificate.raw_serial_as_string().replace(':', ""),
    })
}

fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

#[cfg(test)]
mod tests;
