//! The certificate authority: X.509 signing authorities and JWT signing
//! keys, their rotation on SPIRE's schedule, the trust bundle they publish,
//! and X509-/JWT-SVID issuance (DESIGN.md sections 3 and 4).
//!
//! Rotation: when the active authority's remaining life drops to
//! `min(life/2, 30 d)` the next one is prepared and its key published in the
//! bundle; at `min(life/6, 7 d)` it becomes active. Keys leave the bundle
//! once they expire. Every bundle change bumps `spiffe_sequence`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::EncodingKey;
use rcgen::{Issuer, KeyPair, SerialNumber};
use rustls_pki_types::CertificateDer;
use signet_identity::{Bundle, JwtAuthority, TrustDomain};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::clock::Clock;
use crate::key_manager::{KeyError, KeyManager, KeyType};

use authority::{new_jwt_key, new_x509_authority};
pub use journal::{CaJournal, JournalJwt, JournalX509};
pub use operations::{AuthorityError, AuthorityInfo, AuthorityKind, AuthorityState};
pub use remote::{MintedCa, RemoteAuthority, RemoteUpstream};
pub use upstream::UpstreamAuthority;

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
    #[error("upstream CA {upstream}: {reason}")]
    Remote { upstream: String, reason: String },
    #[error(transparent)]
    Authority(#[from] AuthorityError),
}

/// What signs this CA's X.509 authorities, when not the CA itself.
#[derive(Debug)]
pub enum UpstreamCa {
    /// A CA whose certificate and key are files on this machine.
    Files(Box<UpstreamAuthority>),
    /// A CA that signs our CSRs over the network (OpenBao/Vault PKI).
    Remote(Arc<dyn RemoteUpstream>),
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
    /// The public key, DER SubjectPublicKeyInfo.
    spki: Vec<u8>,
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
    /// The public key, DER SubjectPublicKeyInfo.
    pub fn spki(&self) -> &[u8] {
        &self.spki
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
    /// The upstream CA new authorities chain to, if any.
    upstream: Option<Arc<UpstreamAuthority>>,
    /// Ids of upstream authorities revoked by an operator: never put back
    /// in the bundle, never signed with again.
    revoked: BTreeSet<String>,
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
    state: RwLock<Arc<CaState>>,
    /// An upstream that signs our CSRs over the network: the rotation
    /// schedule then prepares X.509 authorities through
    /// [`Ca::mint_remote`] and [`Ca::install_remote`], not in `rotate`.
    remote: Option<Arc<dyn RemoteUpstream>>,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("trust_domain", &self.config.trust_domain)
            .field("upstream", &self.state().upstream)
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
        let upstream = upstream.map(Arc::new);
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
            upstream,
            revoked: BTreeSet::new(),
        };
        Ok(Self {
            config,
            clock,
            keys,
            state: RwLock::new(Arc::new(state)),
            remote: None,
        })
    }

    /// Creates a CA whose first X.509 authority is signed by `remote`
    /// (which must answer now), with a fresh JWT key.
    pub async fn new_remote(
        config: CaConfig,
        clock: Arc<dyn Clock>,
        keys: Arc<dyn KeyManager>,
        remote: Arc<dyn RemoteUpstream>,
    ) -> Result<Self, CaError> {
        // A self-signed placeholder, replaced before anyone sees it: the
        // minting path needs a CA to check the upstream's answer against.
        let mut ca = Self::new(config, clock, keys, None)?;
        ca.remote = Some(remote);
        let minted = ca.mint_remote().await?;
        let placeholder = {
            let mut guard = ca.state.write().unwrap_or_else(PoisonError::into_inner);
            let mut s = CaState::clone(&guard);
            let authority = Arc::new(minted.authority);
            let placeholder = std::mem::replace(&mut s.x509_current, authority);
            s.bundle.remove_x509_authorities(|c| *c == placeholder.cert);
            for root in minted.roots {
                s.bundle.add_x509_authority(root);
            }
            *guard = Arc::new(s);
            placeholder.key_id.clone()
        };
        ca.forget_keys(vec![placeholder]);
        Ok(ca)
    }

    /// Whether an upstream CA (files or remote) signs our authorities.
    fn has_upstream(&self, s: &CaState) -> bool {
        s.upstream.is_some() || self.remote.is_some()
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

    /// Our own JWT keys that sign or will: the active one and the
    /// prepared one, if any.
    pub fn own_jwt_keys(&self) -> Vec<Arc<JwtKey>> {
        let s = self.state();
        std::iter::once(s.jwt_current.clone())
            .chain(s.jwt_next.clone())
            .collect()
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
        // A remote upstream's authorities are prepared by the caller
        // (`mint_remote`, then `install_remote`), with no lock held.
        if self.remote.is_none()
            && s.x509_next.is_none()
            && due(
                s.x509_current.not_before,
                s.x509_current.not_after,
                now,
                2,
                30,
            )
        {
            let next = Arc::new(self.new_x509_authority(&mut s, now)?);
            s.x509_next = Some(next);
            r.x509_prepared = true;
        }
        if due(
            s.x509_current.not_before,
            s.x509_current.not_after,
            now,
            6,
            7,
        ) && s.x509_next.as_ref().is_some_and(|next| {
            published_long_enough(
                (s.x509_current.not_before, s.x509_current.not_after),
                next.not_before + BACKDATE,
                now,
            )
        }) && let Some(next) = s.x509_next.take()
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
            && s.jwt_next.as_ref().is_some_and(|next| {
                published_long_enough(
                    (s.jwt_current.not_before, s.jwt_current.not_after),
                    next.not_before,
                    now,
                )
            })
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

/// Whether the next authority, published in the bundle since `published`,
/// may replace the current one (valid `current`): only once it has been
/// published for a sixth of the current's life (at most 7 days; the
/// schedule normally gives a third), so agents and federated servers that
/// fetch the bundle on its refresh hint hold it before anything it signed
/// reaches them. A server that could not rotate in time (stopped, starved)
/// would otherwise prepare and activate in one step, and a federated
/// server would meet an endpoint SVID from an authority it never saw,
/// with no way to learn it. The current authority's last twelfth (at most
/// 3 days) overrides this: issuing must go on.
fn published_long_enough(
    (not_before, not_after): (SystemTime, SystemTime),
    published: SystemTime,
    now: SystemTime,
) -> bool {
    let life = not_after.duration_since(not_before).unwrap_or_default();
    let published_for = now.duration_since(published).unwrap_or_default();
    published_for >= (life / 6).min(DAY * 7) || due(not_before, not_after, now, 12, 3)
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
pub(crate) fn to_offset(t: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(unix_secs(t)).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

mod authority;
mod downstream;
mod issue;
mod journal;
mod operations;
mod remote;
mod upstream;

#[cfg(test)]
mod tests;
