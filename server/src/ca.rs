//! The certificate authority: X.509 signing authorities and JWT signing
//! keys, their rotation on SPIRE's schedule, the trust bundle they publish,
//! and X509-/JWT-SVID issuance (DESIGN.md sections 3 and 4).
//!
//! Rotation: when the active authority's remaining life drops to
//! `min(life/2, 30 d)` the next one is prepared and its key published in the
//! bundle; at `min(life/6, 7 d)` it becomes active. Keys leave the bundle
//! once they expire. Every bundle change bumps `spiffe_sequence`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use signet_identity::bundle::{certificates_from_pem, certificates_to_pem};
use signet_identity::entry::check_dns_name;
use signet_identity::{Bundle, JwtAuthority, SpiffeId, TrustDomain};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate, X509CertificationRequest};
use zeroize::Zeroizing;

use crate::clock::Clock;
use crate::key_manager::{KeyError, KeyManager, KeyType};

pub use signet_identity::x509_svid::BACKDATE;
const DAY: Duration = Duration::from_secs(24 * 3600);
const ORGANIZATION: &str = "Signet";

/// CA settings; the defaults are SPIRE's.
#[derive(Debug, Clone)]
pub struct CaConfig {
    pub trust_domain: TrustDomain,
    /// Key type of X.509 signing authorities.
    pub key_type: KeyType,
    /// Key type of JWT signing keys.
    pub jwt_key_type: KeyType,
    /// Lifetime of each signing authority and JWT key.
    pub ca_ttl: Duration,
    pub x509_svid_ttl: Duration,
    pub jwt_svid_ttl: Duration,
    /// `iss` claim of JWT-SVIDs, set when an OIDC issuer is configured.
    pub jwt_issuer: Option<String>,
    /// `spiffe_refresh_hint` of the published bundle.
    pub refresh_hint: Option<Duration>,
}

impl CaConfig {
    pub fn new(trust_domain: TrustDomain) -> Self {
        Self {
            trust_domain,
            key_type: KeyType::EcP256,
            jwt_key_type: KeyType::EcP256,
            ca_ttl: DAY,
            x509_svid_ttl: Duration::from_secs(3600),
            jwt_svid_ttl: Duration::from_secs(300),
            jwt_issuer: None,
            refresh_hint: Some(Duration::from_secs(300)),
        }
    }
}

/// CA failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("SPIFFE ID {id} is not in this CA's trust domain {trust_domain}")]
    ForeignId { id: String, trust_domain: String },
    #[error("SPIFFE ID {0} has no path; SVIDs are issued for workload IDs")]
    NoPath(String),
    #[error("dns name {name:?} is invalid: {why}")]
    DnsName { name: String, why: &'static str },
    #[error("JWT-SVID needs at least one audience")]
    NoAudience,
    #[error("public key is not a supported DER SubjectPublicKeyInfo: {0}")]
    PublicKey(String),
    #[error("certificate signing request is invalid: {0}")]
    Csr(String),
    #[error("certificate signing failed: {0}")]
    Sign(String),
    #[error("JWT signing failed: {0}")]
    Jwt(String),
    #[error("CA journal: {0}")]
    Journal(String),
    #[error("upstream CA {path}: {reason}")]
    Upstream { path: PathBuf, reason: String },
}

/// An upstream CA loaded from disk: our signing authorities become its
/// intermediates, and the bundle publishes its roots instead of ours.
pub struct UpstreamAuthority {
    /// The upstream signing certificate first, then any intermediates above it.
    chain: Vec<CertificateDer<'static>>,
    key: KeyPair,
    roots: Vec<CertificateDer<'static>>,
    not_after: SystemTime,
}

impl fmt::Debug for UpstreamAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamAuthority")
            .field("chain_len", &self.chain.len())
            .field("roots", &self.roots.len())
            .field("key", &"[redacted]")
            .finish()
    }
}

impl UpstreamAuthority {
    /// Loads the upstream CA certificate (PEM, optionally followed by its
    /// intermediates), its PKCS#8 key, and its root bundle. Without a bundle
    /// file the last certificate of `cert_path` must be the root.
    pub fn load(
        cert_path: &Path,
        key_path: &Path,
        bundle_path: Option<&Path>,
    ) -> Result<Self, CaError> {
        let err = |path: &Path, reason: String| CaError::Upstream {
            path: path.to_owned(),
            reason,
        };
        let read = |path: &Path| std::fs::read(path).map_err(|e| err(path, e.to_string()));
        let chain =
            certificates_from_pem(&read(cert_path)?).map_err(|e| err(cert_path, e.to_string()))?;
        let key_pem = Zeroizing::new(
            String::from_utf8(read(key_path)?).map_err(|e| err(key_path, e.to_string()))?,
        );
        let key = KeyPair::from_pem(&key_pem).map_err(|e| err(key_path, e.to_string()))?;
        let first = chain
            .first()
            .ok_or_else(|| err(cert_path, "no certificate".into()))?;
        let first_parsed = parse_cert(first).map_err(|r| err(cert_path, r))?;
        if !first_parsed.is_ca() {
            return Err(err(
                cert_path,
                "the upstream certificate is not a CA (cA=false)".into(),
            ));
        }
        if first_parsed.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(err(
                key_path,
                "the key does not match the upstream certificate".into(),
            ));
        }
        let not_after = secs_to_time(first_parsed.validity().not_after.timestamp());
        let (chain, roots) = match bundle_path {
            Some(p) => (
                chain,
                certificates_from_pem(&read(p)?).map_err(|e| err(p, e.to_string()))?,
            ),
            None => {
                let mut chain = chain;
                let root = chain
                    .pop()
                    .ok_or_else(|| err(cert_path, "no certificate".into()))?;
                let parsed = parse_cert(&root).map_err(|r| err(cert_path, r))?;
                if parsed.subject() != parsed.issuer() {
                    return Err(err(
                        cert_path,
                        "the last certificate is not self-signed; give the upstream bundle file"
                            .into(),
                    ));
                }
                if chain.is_empty() {
                    // The upstream cert is itself the root.
                    chain.push(root.clone());
                }
                (chain, vec![root])
            }
        };
        Ok(Self {
            chain,
            key,
            roots,
            not_after,
        })
    }

    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }
}

/// One X.509 signing authority.
pub struct X509Authority {
    cert: CertificateDer<'static>,
    /// Certificates sent after the leaf: empty for a self-signed root; our
    /// intermediate plus the upstream's non-root chain otherwise.
    intermediates: Vec<CertificateDer<'static>>,
    issuer: Issuer<'static, KeyPair>,
    key_id: String,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl fmt::Debug for X509Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("X509Authority")
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl X509Authority {
    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }
}

/// One JWT signing key.
pub struct JwtKey {
    kid: String,
    encoding: EncodingKey,
    algorithm: jsonwebtoken::Algorithm,
    authority: JwtAuthority,
    key_id: String,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtKey")
            .field("kid", &self.kid)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl JwtKey {
    pub fn kid(&self) -> &str {
        &self.kid
    }
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }
}

#[derive(Clone)]
struct CaState {
    x509_current: Arc<X509Authority>,
    x509_next: Option<Arc<X509Authority>>,
    jwt_current: Arc<JwtKey>,
    jwt_next: Option<Arc<JwtKey>>,
    bundle: Bundle,
    jwt_expiry: BTreeMap<String, SystemTime>,
}

/// What one [`Ca::rotate`] call changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rotation {
    pub x509_prepared: bool,
    pub x509_activated: bool,
    pub jwt_prepared: bool,
    pub jwt_activated: bool,
    pub pruned: usize,
    pub bundle_changed: bool,
}

const JOURNAL_VERSION: u32 = 1;

/// The persisted state of a [`Ca`]: which keys (by key-manager id) and
/// certificates are current and next, and the published bundle. Holds no
/// private key material.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaJournal {
    pub version: u32,
    pub trust_domain: String,
    /// The active authority first, then the prepared one if any.
    pub x509: Vec<JournalX509>,
    /// The active JWT key first, then the prepared one if any.
    pub jwt: Vec<JournalJwt>,
    /// The bundle in SPIFFE format.
    pub bundle: Value,
    /// Expiry (unix seconds) of every JWT key still published.
    pub jwt_expiry: BTreeMap<String, i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalX509 {
    pub key_id: String,
    pub cert_pem: String,
    pub intermediates_pem: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalJwt {
    pub key_id: String,
    pub kid: String,
    pub not_before: i64,
    pub not_after: i64,
}

/// Per-SVID options.
#[derive(Debug, Clone, Default)]
pub struct SvidOptions {
    /// Requested TTL; the configured default when `None`. Always capped at
    /// the signing authority's NotAfter.
    pub ttl: Option<Duration>,
    /// DNS SANs; the first also becomes the subject CN.
    pub dns_names: Vec<String>,
}

/// The certificate authority of one trust domain.
pub struct Ca {
    config: CaConfig,
    clock: Arc<dyn Clock>,
    keys: Arc<dyn KeyManager>,
    upstream: Option<UpstreamAuthority>,
    state: RwLock<Arc<CaState>>,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("trust_domain", &self.config.trust_domain)
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Creates a CA with a fresh signing authority and JWT key.
    pub fn new(
        config: CaConfig,
        clock: Arc<dyn Clock>,
        keys: Arc<dyn KeyManager>,
        upstream: Option<UpstreamAuthority>,
    ) -> Result<Self, CaError> {
        let now = clock.now();
        let x509 = Arc::new(new_x509_authority(
            &config,
            keys.as_ref(),
            upstream.as_ref(),
            now,
        )?);
        let jwt = Arc::new(new_jwt_key(&config, keys.as_ref(), now)?);
        let mut bundle = Bundle::new(config.trust_domain.clone());
        bundle.set_refresh_hint(config.refresh_hint.map(|d| d.as_secs()));
        match &upstream {
            Some(up) => {
                for root in &up.roots {
                    bundle.add_x509_authority(root.clone());
                }
            }
            None => {
                bundle.add_x509_authority(x509.cert.clone());
            }
        }
        bundle.add_jwt_authority(jwt.authority.clone());
        bundle.set_sequence(1);
        let mut jwt_expiry = BTreeMap::new();
        jwt_expiry.insert(jwt.kid.clone(), jwt.not_after);
        let state = CaState {
            x509_current: x509,
            x509_next: None,
            jwt_current: jwt,
            jwt_next: None,
            bundle,
            jwt_expiry,
        };
        Ok(Self {
            config,
            clock,
            keys,
            upstream,
            state: RwLock::new(Arc::new(state)),
        })
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.config.trust_domain
    }

    pub fn config(&self) -> &CaConfig {
        &self.config
    }

    fn state(&self) -> Arc<CaState> {
        self.state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The current trust bundle.
    pub fn bundle(&self) -> Bundle {
        self.state().bundle.clone()
    }

    /// The active X.509 signing authority.
    pub fn x509_authority(&self) -> Arc<X509Authority> {
        self.state().x509_current.clone()
    }

    /// The prepared (published, not yet active) X.509 authority, if any.
    pub fn next_x509_authority(&self) -> Option<Arc<X509Authority>> {
        self.state().x509_next.clone()
    }

    /// The active JWT signing key.
    pub fn jwt_key(&self) -> Arc<JwtKey> {
        self.state().jwt_current.clone()
    }

    /// Applies the rotation schedule at the clock's current time. Call it
    /// periodically (every few seconds); it is cheap when nothing is due.
    pub fn rotate(&self) -> Result<Rotation, CaError> {
        let now = self.clock.now();
        let mut guard = self.state.write().unwrap_or_else(PoisonError::into_inner);
        let mut s = CaState::clone(&guard);
        let mut r = Rotation::default();
        // Keys of authorities that stopped signing: nothing needs them again.
        let mut retired = Vec::new();

        // X.509 authorities.
        if s.x509_next.is_none()
            && due(
                s.x509_current.not_before,
                s.x509_current.not_after,
                now,
                2,
                30,
            )
        {
            let next = Arc::new(new_x509_authority(
                &self.config,
                self.keys.as_ref(),
                self.upstream.as_ref(),
                now,
            )?);
            if self.upstream.is_none() {
                s.bundle.add_x509_authority(next.cert.clone());
            }
            s.x509_next = Some(next);
            r.x509_prepared = true;
        }
        if due(
            s.x509_current.not_before,
            s.x509_current.not_after,
            now,
            6,
            7,
        ) && let Some(next) = s.x509_next.take()
        {
            retired.push(std::mem::replace(&mut s.x509_current, next).key_id.clone());
            r.x509_activated = true;
        }

        // JWT keys.
        if s.jwt_next.is_none()
            && due(
                s.jwt_current.not_before,
                s.jwt_current.not_after,
                now,
                2,
                30,
            )
        {
            let next = Arc::new(new_jwt_key(&self.config, self.keys.as_ref(), now)?);
            s.bundle.add_jwt_authority(next.authority.clone());
            s.jwt_expiry.insert(next.kid.clone(), next.not_after);
            s.jwt_next = Some(next);
            r.jwt_prepared = true;
        }
        if due(s.jwt_current.not_before, s.jwt_current.not_after, now, 6, 7)
            && let Some(next) = s.jwt_next.take()
        {
            retired.push(std::mem::replace(&mut s.jwt_current, next).key_id.clone());
            r.jwt_activated = true;
        }

        // Prune expired keys from the bundle.
        let expired_kids: Vec<String> = s
            .jwt_expiry
            .iter()
            .filter(|(_, exp)| **exp <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for kid in expired_kids {
            s.jwt_expiry.remove(&kid);
            if s.bundle.remove_jwt_authority(&kid) {
                r.pruned += 1;
            }
        }
        let now_secs = unix_secs(now);
        let before = s.bundle.x509_authorities().len();
        s.bundle.remove_x509_authorities(|c| {
            parse_cert(c).is_ok_and(|p| p.validity().not_after.timestamp() <= now_secs)
        });
        r.pruned += before - s.bundle.x509_authorities().len();

        r.bundle_changed = !s.bundle.same_keys(&guard.bundle);
        if r.bundle_changed {
            s.bundle.set_sequence(guard.bundle.sequence() + 1);
        }
        if r != Rotation::default() {
            tracing::info!(
                trust_domain = %self.config.trust_domain,
                x509_prepared = r.x509_prepared,
                x509_activated = r.x509_activated,
                jwt_prepared = r.jwt_prepared,
                jwt_activated = r.jwt_activated,
                pruned = r.pruned,
                bundle_sequence = s.bundle.sequence(),
                "CA rotation"
            );
            *guard = Arc::new(s);
        }
        drop(guard);
        for key_id in retired {
            if let Err(e) = self.keys.delete(&key_id) {
                tracing::warn!(key_id, error = %e, "cannot delete a retired CA key");
            }
        }
        Ok(r)
    }

    /// The state to persist so a restart resumes with the same authorities.
    pub fn journal(&self) -> Result<CaJournal, CaError> {
        let s = self.state();
        let x509 = std::iter::once(&s.x509_current)
            .chain(s.x509_next.as_ref())
            .map(|a| JournalX509 {
                key_id: a.key_id.clone(),
                cert_pem: certificates_to_pem(std::slice::from_ref(&a.cert)),
                intermediates_pem: certificates_to_pem(&a.intermediates),
            })
            .collect();
        let jwt = std::iter::once(&s.jwt_current)
            .chain(s.jwt_next.as_ref())
            .map(|k| JournalJwt {
                key_id: k.key_id.clone(),
                kid: k.kid.clone(),
                not_before: unix_secs(k.not_before),
                not_after: unix_secs(k.not_after),
            })
            .collect();
        Ok(CaJournal {
            version: JOURNAL_VERSION,
            trust_domain: self.config.trust_domain.to_string(),
            x509,
            jwt,
            bundle: s
                .bundle
                .to_json_value()
                .map_err(|e| CaError::Journal(e.to_string()))?,
            jwt_expiry: s
                .jwt_expiry
                .iter()
                .map(|(k, t)| (k.clone(), unix_secs(*t)))
                .collect(),
        })
    }

    /// Resumes a CA from its journal; the keys must still be in `keys`.
    /// Never falls back to a fresh CA: a journal that cannot be honoured is
    /// an error that names the problem (security invariant 6).
    pub fn restore(
        config: CaConfig,
        clock: Arc<dyn Clock>,
        keys: Arc<dyn KeyManager>,
        upstream: Option<UpstreamAuthority>,
        journal: CaJournal,
    ) -> Result<Self, CaError> {
        let bad = |m: String| CaError::Journal(m);
        if journal.version != JOURNAL_VERSION {
            return Err(bad(format!("unsupported version {}", journal.version)));
        }
        if journal.trust_domain != config.trust_domain.as_str() {
            return Err(bad(format!(
                "it belongs to trust domain {}, not {}: this data dir (or datastore) holds the other trust domain's CA; start with --trust-domain {}, or give {} a place of its own with --data-dir (or --datastore)",
                journal.trust_domain,
                config.trust_domain,
                journal.trust_domain,
                config.trust_domain
            )));
        }
        let load = |key_id: &str| -> Result<KeyPair, CaError> {
            keys.load(key_id)?
                .ok_or_else(|| bad(format!("key {key_id} is missing from the key store")))
        };
        let mut x509 = Vec::new();
        for j in &journal.x509 {
            let mut certs =
                certificates_from_pem(j.cert_pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
            let cert = certs
                .pop()
                .ok_or_else(|| bad("empty CA certificate".into()))?;
            let intermediates = if j.intermediates_pem.trim().is_empty() {
                Vec::new()
            } else {
                certificates_from_pem(j.intermediates_pem.as_bytes())
                    .map_err(|e| bad(e.to_string()))?
            };
            x509.push(Arc::new(x509_authority_from(
                cert,
                intermediates,
                load(&j.key_id)?,
                j.key_id.clone(),
            )?));
        }
        let mut jwt = Vec::new();
        for j in &journal.jwt {
            jwt.push(Arc::new(jwt_key_from(
                j.kid.clone(),
                load(&j.key_id)?,
                j.key_id.clone(),
                secs_to_time(j.not_before),
                secs_to_time(j.not_after),
            )?));
        }
        let mut x509 = x509.into_iter();
        let mut jwt = jwt.into_iter();
        let bundle = Bundle::parse_json(
            config.trust_domain.clone(),
            journal.bundle.to_string().as_bytes(),
        )
        .map_err(|e| bad(format!("bundle: {e}")))?;
        let state = CaState {
            x509_current: x509
                .next()
                .ok_or_else(|| bad("no X.509 authority".into()))?,
            x509_next: x509.next(),
            jwt_current: jwt.next().ok_or_else(|| bad("no JWT key".into()))?,
            jwt_next: jwt.next(),
            bundle,
            jwt_expiry: journal
                .jwt_expiry
                .iter()
                .map(|(k, t)| (k.clone(), secs_to_time(*t)))
                .collect(),
        };
        let ca = Self {
            config,
            clock,
            keys,
            upstream,
            state: RwLock::new(Arc::new(state)),
        };
        ca.rotate()?;
        Ok(ca)
    }

    /// Issues an X509-SVID for `id` over a public key (DER
    /// SubjectPublicKeyInfo) whose holder is already authenticated. Returns
    /// the chain: leaf first, then any intermediates.
    pub fn sign_x509_svid(
        &self,
        spki_der: &[u8],
        id: &SpiffeId,
        opts: &SvidOptions,
    ) -> Result<Vec<CertificateDer<'static>>, CaError> {
        let public_key = rcgen::SubjectPublicKeyInfo::from_der(spki_der)
            .map_err(|e| CaError::PublicKey(e.to_string()))?;
        self.sign_leaf(&public_key, id, opts)
    }

    /// Issues an X509-SVID for `id` from a DER PKCS#10 request, after
    /// verifying the request's self-signature. Only the request's key is
    /// used: the ID, names and extensions come from the caller.
    pub fn sign_x509_svid_csr(
        &self,
        csr_der: &[u8],
        id: &SpiffeId,
        opts: &SvidOptions,
    ) -> Result<Vec<CertificateDer<'static>>, CaError> {
        let csr = match X509CertificationRequest::from_der(csr_der) {
            Ok((&[], csr)) => csr,
            Ok(_) => return Err(CaError::Csr("trailing bytes after the request".into())),
            Err(e) => return Err(CaError::Csr(e.to_string())),
        };
        csr.verify_signature()
            .map_err(|e| CaError::Csr(format!("signature does not verify: {e}")))?;
        self.sign_x509_svid(csr.certification_request_info.subject_pki.raw, id, opts)
    }

    fn sign_leaf(
        &self,
        public_key: &impl PublicKeyData,
        id: &SpiffeId,
        opts: &SvidOptions,
    ) -> Result<Vec<CertificateDer<'static>>, CaError> {
        self.check_id(id)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CountryName, "US");
        params
            .distinguished_name
            .push(DnType::OrganizationName, ORGANIZATION);
        let mut sans = vec![SanType::URI(
            id.as_str()
                .try_into()
                .map_err(|e: rcgen::Error| CaError::Sign(e.to_string()))?,
        )];
        for name in &opts.dns_names {
            check_dns_name(name).map_err(|why| CaError::DnsName {
                name: name.clone(),
                why,
            })?;
            sans.push(SanType::DnsName(
                name.as_str()
                    .try_into()
                    .map_err(|e: rcgen::Error| CaError::Sign(e.to_string()))?,
            ));
        }
        if let Some(first) = opts.dns_names.first() {
            params
                .distinguished_name
                .push(DnType::CommonName, first.as_str());
        }
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
            KeyUsagePurpose::KeyAgreement,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);

        let authority = self.x509_authority();
        let now = self.clock.now();
        let ttl = opts.ttl.unwrap_or(self.config.x509_svid_ttl);
        // A TTL past the authority's end (or past what SystemTime can
        // hold) is capped at the authority's NotAfter.
        let not_after = now
            .checked_add(ttl)
            .map_or(authority.not_after, |t| t.min(authority.not_after));
        params.not_before = to_offset(now - BACKDATE);
        params.not_after = to_offset(not_after);
        let leaf = params
            .signed_by(public_key, &authority.issuer)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        let mut chain = Vec::with_capacity(1 + authority.intermediates.len());
        chain.push(leaf.der().clone());
        chain.extend(authority.intermediates.iter().cloned());
        Ok(chain)
    }

    /// Signs a JWT-SVID for `id` and `audience`.
    pub fn sign_jwt_svid(
        &self,
        id: &SpiffeId,
        audience: &[String],
        ttl: Option<Duration>,
    ) -> Result<String, CaError> {
        self.check_id(id)?;
        if audience.is_empty() || audience.iter().any(String::is_empty) {
            return Err(CaError::NoAudience);
        }
        let key = self.jwt_key();
        let now = self.clock.now();
        let exp = now
            .checked_add(ttl.unwrap_or(self.config.jwt_svid_ttl))
            .map_or(key.not_after, |t| t.min(key.not_after));
        // A single audience is a string, several an array (as SPIRE emits).
        let aud: Value = match audience {
            [one] => one.as_str().into(),
            many => many.into(),
        };
        let mut claims = json!({
            "sub": id.as_str(),
            "aud": aud,
            "exp": unix_secs(exp),
            "iat": unix_secs(now),
        });
        if let Some(iss) = &self.config.jwt_issuer {
            claims["iss"] = iss.as_str().into();
        }
        let mut header = Header::new(key.algorithm);
        header.typ = Some("JWT".into());
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&header, &claims, &key.encoding)
            .map_err(|e| CaError::Jwt(e.to_string()))
    }

    fn check_id(&self, id: &SpiffeId) -> Result<(), CaError> {
        if !id.is_member_of(&self.config.trust_domain) {
            return Err(CaError::ForeignId {
                id: id.to_string(),
                trust_domain: self.config.trust_domain.to_string(),
            });
        }
        if id.is_trust_domain_id() {
            return Err(CaError::NoPath(id.to_string()));
        }
        Ok(())
    }
}

fn new_x509_authority(
    config: &CaConfig,
    keys: &dyn KeyManager,
    upstream: Option<&UpstreamAuthority>,
    now: SystemTime,
) -> Result<X509Authority, CaError> {
    let key_id = format!("x509-ca-{}", random_hex(8)?);
    let key = keys.generate(&key_id, config.key_type)?;
    let mut not_after = now + config.ca_ttl;
    if let Some(up) = &upstream {
        not_after = not_after.min(up.not_after);
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CountryName, "US");
    params
        .distinguished_name
        .push(DnType::OrganizationName, ORGANIZATION);
    params.distinguished_name.push(
        DnType::CommonName,
        format!("{} CA {}", config.trust_domain, random_hex(4)?),
    );
    params.serial_number = Some(random_serial()?);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.subject_alt_names = vec![SanType::URI(
        config
            .trust_domain
            .id()
            .as_str()
            .try_into()
            .map_err(|e: rcgen::Error| CaError::Sign(e.to_string()))?,
    )];
    params.use_authority_key_identifier_extension = upstream.is_some();
    params.not_before = to_offset(now - BACKDATE);
    params.not_after = to_offset(not_after);
    let (cert, intermediates) = match &upstream {
        None => {
            let cert = params
                .self_signed(&key)
                .map_err(|e| CaError::Sign(e.to_string()))?;
            (cert.der().clone(), Vec::new())
        }
        Some(up) => {
            let up_issuer = Issuer::from_ca_cert_der(&up.chain[0], &up.key)
                .map_err(|e| CaError::Sign(e.to_string()))?;
            let cert = params
                .signed_by(&key, &up_issuer)
                .map_err(|e| CaError::Sign(e.to_string()))?;
            let mut intermediates = vec![cert.der().clone()];
            intermediates.extend(up.chain.iter().filter(|c| !up.roots.contains(c)).cloned());
            (cert.der().clone(), intermediates)
        }
    };
    x509_authority_from(cert, intermediates, key, key_id)
}

/// Wraps a signing certificate and its key; validity comes from the cert.
fn x509_authority_from(
    cert: CertificateDer<'static>,
    intermediates: Vec<CertificateDer<'static>>,
    key: KeyPair,
    key_id: String,
) -> Result<X509Authority, CaError> {
    let (not_before, not_after) = {
        let parsed = parse_cert(&cert).map_err(CaError::Sign)?;
        if parsed.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(CaError::Journal(format!(
                "key {key_id} does not match its CA certificate"
            )));
        }
        let v = parsed.validity();
        (
            secs_to_time(v.not_before.timestamp()),
            secs_to_time(v.not_after.timestamp()),
        )
    };
    let issuer = Issuer::from_ca_cert_der(&cert, key).map_err(|e| CaError::Sign(e.to_string()))?;
    Ok(X509Authority {
        cert,
        intermediates,
        issuer,
        key_id,
        not_before,
        not_after,
    })
}

fn new_jwt_key(
    config: &CaConfig,
    keys: &dyn KeyManager,
    now: SystemTime,
) -> Result<JwtKey, CaError> {
    let kid = random_alnum(32)?;
    let key_id = format!("jwt-{}", random_hex(8)?);
    let key = keys.generate(&key_id, config.jwt_key_type)?;
    jwt_key_from(kid, key, key_id, now, now + config.ca_ttl)
}

fn jwt_key_from(
    kid: String,
    key: KeyPair,
    key_id: String,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<JwtKey, CaError> {
    let kt = KeyType::of(&key)?;
    let pem = Zeroizing::new(key.serialize_pem());
    let encoding = match kt {
        KeyType::Rsa2048 => EncodingKey::from_rsa_pem(pem.as_bytes()),
        _ => EncodingKey::from_ec_pem(pem.as_bytes()),
    }
    .map_err(|e| CaError::Jwt(e.to_string()))?;
    let spki = key.subject_public_key_info();
    let authority =
        JwtAuthority::from_spki(&kid, &spki).map_err(|e| CaError::Jwt(e.to_string()))?;
    Ok(JwtKey {
        kid,
        encoding,
        algorithm: kt.jwt_algorithm(),
        authority,
        key_id,
        not_before,
        not_after,
    })
}

/// True when the remaining life is at or below `min(life / div, cap_days)`.
fn due(
    not_before: SystemTime,
    not_after: SystemTime,
    now: SystemTime,
    div: u32,
    cap_days: u32,
) -> bool {
    let life = not_after.duration_since(not_before).unwrap_or_default();
    let remaining = not_after.duration_since(now).unwrap_or_default();
    remaining <= (life / div).min(DAY * cap_days)
}

fn parse_cert(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    X509Certificate::from_der(der)
        .map(|(_, c)| c)
        .map_err(|e| e.to_string())
}

fn random_bytes<const N: usize>() -> Result<[u8; N], CaError> {
    let mut b = [0u8; N];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| CaError::Sign("the system RNG failed".into()))?;
    Ok(b)
}

/// A 128-bit random serial (DESIGN.md 3; SPIRE does the same).
fn random_serial() -> Result<SerialNumber, CaError> {
    let mut b = random_bytes::<16>()?;
    // Never zero: RFC 5280 wants a positive integer.
    b[15] |= 1;
    Ok(SerialNumber::from_slice(&b))
}

fn random_hex(n: usize) -> Result<String, CaError> {
    let b = random_bytes::<32>()?;
    Ok(b[..n.min(32)].iter().map(|x| format!("{x:02x}")).collect())
}

fn random_alnum(n: usize) -> Result<String, CaError> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let b = random_bytes::<64>()?;
    // 256 % 62 != 0, so this is very slightly biased; a kid is a name, not a secret.
    Ok(b[..n.min(64)]
        .iter()
        .map(|x| ALPHABET[*x as usize % ALPHABET.len()] as char)
        .collect())
}

fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

fn secs_to_time(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// X.509 times have whole seconds; truncate so caps compare exactly.
fn to_offset(t: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(unix_secs(t)).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests;
