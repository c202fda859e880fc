//! The upstream side of nesting: a downstream server's CA signed as an
//! intermediate of the active authority, and its JWT keys published in
//! this CA's bundle. Who may ask is the caller's business (the downstream
//! API checks the entry's `downstream` flag).

use std::sync::{Arc, PoisonError};
use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use signet_identity::JwtAuthority;

use super::authority::authority_params;
use super::{Ca, CaError, CaState, random_serial, to_offset};

/// Longest life a downstream JWT key may be published for.
const MAX_DOWNSTREAM_JWT_LIFE: Duration = Duration::from_secs(90 * 24 * 3600);

impl Ca {
    /// Signs a downstream server's CA for the key of `csr_der` (its
    /// signature verified): an intermediate of the active authority with
    /// this trust domain's SPIFFE ID, living `ttl` at most and never past
    /// the authority. Returns it and the certificates above it that are
    /// not roots of the bundle.
    pub fn sign_downstream_ca(
        &self,
        csr_der: &[u8],
        ttl: Duration,
    ) -> Result<(CertificateDer<'static>, Vec<CertificateDer<'static>>), CaError> {
        let public_key = rcgen::SubjectPublicKeyInfo::from_der(super::issue::csr_key(csr_der)?)
            .map_err(|e| CaError::PublicKey(e.to_string()))?;
        let authority = self.x509_authority();
        let now = self.clock.now();
        if authority.not_after <= now {
            return Err(CaError::Sign(
                "the active X.509 authority expired; no downstream CA can be signed".into(),
            ));
        }
        let not_after = now
            .checked_add(ttl.min(self.config.ca_ttl))
            .map_or(authority.not_after, |t| t.min(authority.not_after));
        let mut params = authority_params(&self.config)?;
        params.serial_number = Some(random_serial()?);
        params.use_authority_key_identifier_extension = true;
        params.not_before = to_offset(now - super::BACKDATE);
        params.not_after = to_offset(not_after);
        let cert = params
            .signed_by(&public_key, &authority.issuer)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        Ok((cert.der().clone(), authority.intermediates.clone()))
    }

    /// Publishes a downstream server's JWT key in this CA's bundle until
    /// `not_after` (at most 90 days from now), when it is pruned like our
    /// own. False when the bundle holds it already.
    pub fn add_downstream_jwt_key(
        &self,
        key: JwtAuthority,
        not_after: SystemTime,
    ) -> Result<bool, CaError> {
        let now = self.clock.now();
        if not_after <= now {
            return Err(CaError::Jwt(format!(
                "the JWT key {} has already expired",
                key.kid()
            )));
        }
        let not_after = not_after.min(now + MAX_DOWNSTREAM_JWT_LIFE);
        let mut guard = self.state.write().unwrap_or_else(PoisonError::into_inner);
        if guard.bundle.jwt_authority(key.kid()).is_some() {
            return Ok(false);
        }
        let mut s = CaState::clone(&guard);
        s.jwt_expiry.insert(key.kid().to_owned(), not_after);
        s.bundle.add_jwt_authority(key);
        s.bundle.set_sequence(guard.bundle.sequence() + 1);
        *guard = Arc::new(s);
        Ok(true)
    }
}
