//! Upstream CAs that sign elsewhere (OpenBao/Vault PKI): our key stays
//! here, the upstream signs a CSR for it. The network call is made with
//! no lock held (an upstream outage must never stall SVID signing); the
//! authority it returns is checked and then installed as the prepared one.

use std::fmt;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, SystemTime};

use rcgen::PublicKeyData;
use rustls_pki_types::CertificateDer;
use signet_identity::x509_svid::{authority_id, chain_authority_ids};

use super::authority::{authority_params, x509_authority_from};
use super::{AuthorityError, Ca, CaError, X509Authority, due, parse_cert, random_hex};

/// An upstream CA reached over the network.
#[async_trait::async_trait]
pub trait RemoteUpstream: Send + Sync + fmt::Debug {
    /// Signs the CA certificate request `csr_pem` for about `ttl`.
    async fn mint_x509_ca(&self, csr_pem: &str, ttl: Duration) -> Result<MintedCa, String>;
    /// Where it is, for logs and errors.
    fn describe(&self) -> String;
    /// The upstream's own trust bundle, when it has one for us to follow
    /// (a nested server's upstream): its authorities and JWT keys are
    /// published with ours. `None`: nothing to follow.
    async fn fetch_bundle(&self) -> Option<Result<signet_identity::Bundle, String>> {
        None
    }
    /// Publishes one of our JWT keys (`spki`: DER SubjectPublicKeyInfo) in
    /// the upstream's bundle; false when this upstream takes none.
    async fn publish_jwt_key(
        &self,
        _kid: &str,
        _spki: &[u8],
        _not_after: SystemTime,
    ) -> Result<bool, String> {
        Ok(false)
    }
}

/// What an upstream returned for our CSR.
#[derive(Debug, Clone)]
pub struct MintedCa {
    /// Our new signing certificate.
    pub cert: CertificateDer<'static>,
    /// The upstream's intermediates above it, nearest first, roots excluded.
    pub chain: Vec<CertificateDer<'static>>,
    /// The upstream's roots, for the bundle.
    pub roots: Vec<CertificateDer<'static>>,
}

/// A checked authority signed by the remote upstream, ready to install.
#[derive(Debug)]
pub struct RemoteAuthority {
    pub(super) authority: X509Authority,
    pub(super) roots: Vec<CertificateDer<'static>>,
}

impl Ca {
    /// The remote upstream, if this CA has one.
    pub fn remote_upstream(&self) -> Option<&Arc<dyn RemoteUpstream>> {
        self.remote.as_ref()
    }

    /// With a remote upstream: whether the schedule wants the next X.509
    /// authority (none is prepared and the active one is past half-life).
    pub fn remote_prepare_due(&self) -> bool {
        let s = self.state();
        self.remote.is_some()
            && s.x509_next.is_none()
            && due(
                s.x509_current.not_before,
                s.x509_current.not_after,
                self.clock.now(),
                2,
                30,
            )
    }

    /// Asks the remote upstream to sign a new authority (a new key, kept
    /// by the key manager) and checks what comes back: it must be a CA
    /// for our key, chain to the roots it came with, and involve no
    /// authority an operator tainted or revoked.
    pub async fn mint_remote(&self) -> Result<RemoteAuthority, CaError> {
        let remote = self
            .remote
            .clone()
            .ok_or(CaError::Authority(AuthorityError::NoUpstream))?;
        let upstream_err = |reason: String| CaError::Remote {
            upstream: remote.describe(),
            reason,
        };
        let key_id = format!("x509-ca-{}", random_hex(8)?);
        let key = self.keys.generate(&key_id, self.config.key_type)?;
        let csr = authority_params(&self.config)?
            .serialize_request(&key)
            .and_then(|csr| csr.pem())
            .map_err(|e| CaError::Sign(e.to_string()));
        let minted = match csr {
            Ok(csr) => remote
                .mint_x509_ca(&csr, self.config.ca_ttl)
                .await
                .map_err(upstream_err),
            Err(e) => Err(e),
        };
        let checked = minted.and_then(|m| {
            check_minted(&m, self.clock.now()).map_err(upstream_err)?;
            let for_our_key = parse_cert(&m.cert)
                .is_ok_and(|c| c.public_key().raw == key.subject_public_key_info().as_slice());
            if !for_our_key {
                return Err(upstream_err(
                    "the certificate it signed does not match our request's key".into(),
                ));
            }
            let mut intermediates = vec![m.cert.clone()];
            intermediates.extend(m.chain.iter().cloned());
            let authority = x509_authority_from(m.cert, intermediates, key, key_id.clone())
                .map_err(|e| upstream_err(format!("the certificate it signed: {e}")))?;
            let s = self.state();
            let mut ids = chain_authority_ids(&authority.intermediates);
            ids.extend(m.roots.iter().filter_map(|r| authority_id(r)));
            if let Some((id, why)) = super::operations::compromised(&s, ids) {
                return Err(upstream_err(format!(
                    "the CA it signed chains to the {why} authority {id}: move the upstream PKI to a new issuer first"
                )));
            }
            Ok(RemoteAuthority {
                authority,
                roots: m.roots,
            })
        });
        if checked.is_err() {
            // Nothing will sign with the key made for it.
            if let Err(e) = self.keys.delete(&key_id) {
                tracing::warn!(key_id, error = %e, "cannot delete an unused CA key");
            }
        }
        checked
    }

    /// Installs `minted` as the prepared authority and its roots in the
    /// bundle (unless revoked). A previously prepared one is replaced
    /// when `replace` (an operator's prepare); otherwise an authority
    /// prepared meanwhile wins and `minted` is dropped (returns false).
    pub fn install_remote(&self, minted: RemoteAuthority, replace: bool) -> Result<bool, CaError> {
        let mut retired = None;
        let mut guard = self.state.write().unwrap_or_else(PoisonError::into_inner);
        let mut s = super::CaState::clone(&guard);
        if s.x509_next.is_some() && !replace {
            drop(guard);
            self.forget_keys(vec![minted.authority.key_id.clone()]);
            return Ok(false);
        }
        if let Some(old) = s.x509_next.take() {
            retired = Some(old.key_id.clone());
        }
        super::operations::add_upstream_roots(&mut s, &minted.roots);
        s.x509_next = Some(Arc::new(minted.authority));
        s.bundle.set_sequence(guard.bundle.sequence() + 1);
        tracing::info!(
            trust_domain = %self.config.trust_domain,
            bundle_sequence = s.bundle.sequence(),
            "CA rotation: the next X.509 authority, signed by the upstream, is prepared"
        );
        *guard = Arc::new(s);
        drop(guard);
        self.forget_keys(retired.into_iter().collect());
        Ok(true)
    }
}

/// The minted certificate is a CA, valid now, and every link of
/// cert -> chain -> one of the roots carries a good signature.
fn check_minted(m: &MintedCa, now: SystemTime) -> Result<(), String> {
    if m.roots.is_empty() {
        return Err("it returned no root certificate".into());
    }
    let cert = parse_cert(&m.cert).map_err(|e| format!("the signed certificate: {e}"))?;
    if !cert.is_ca() {
        return Err("the certificate it signed is not a CA (cA=false)".into());
    }
    let now = super::unix_secs(now);
    let validity = cert.validity();
    if validity.not_after.timestamp() <= now || validity.not_before.timestamp() > now + 60 {
        return Err(format!(
            "the certificate it signed is not valid now (valid {} to {})",
            validity.not_before, validity.not_after
        ));
    }
    let mut child = cert;
    for (i, der) in m.chain.iter().enumerate() {
        let parent = parse_cert(der).map_err(|e| format!("chain certificate {i}: {e}"))?;
        child
            .verify_signature(Some(parent.public_key()))
            .map_err(|_| format!("chain certificate {i} did not sign the one below it"))?;
        child = parent;
    }
    for root in &m.roots {
        let root = parse_cert(root).map_err(|e| format!("root certificate: {e}"))?;
        if child.verify_signature(Some(root.public_key())).is_ok() {
            return Ok(());
        }
    }
    Err("the chain it returned does not lead to any of its roots".into())
}
