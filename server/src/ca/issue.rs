//! X509- and JWT-SVID issuance (DESIGN.md sections 3 and 4).

use std::time::Duration;

use jsonwebtoken::Header;
use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose, PublicKeyData,
    SanType,
};
use rustls_pki_types::CertificateDer;
use serde_json::{Value, json};
use signet_identity::SpiffeId;
use signet_identity::entry::check_dns_name;
use x509_parser::prelude::{FromDer, X509CertificationRequest};

use super::{
    BACKDATE, Ca, CaError, ORGANIZATION, SvidOptions, random_serial, to_offset, unix_secs,
};

/// The public key (DER SubjectPublicKeyInfo) of a DER PKCS#10 request
/// whose self-signature verifies.
pub(super) fn csr_key(csr_der: &[u8]) -> Result<&[u8], CaError> {
    let csr = match X509CertificationRequest::from_der(csr_der) {
        Ok((&[], csr)) => csr,
        Ok(_) => return Err(CaError::Csr("trailing bytes after the request".into())),
        Err(e) => return Err(CaError::Csr(e.to_string())),
    };
    csr.verify_signature()
        .map_err(|e| CaError::Csr(format!("signature does not verify: {e}")))?;
    Ok(csr.certification_request_info.subject_pki.raw)
}

impl Ca {
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
        self.sign_x509_svid(csr_key(csr_der)?, id, opts)
    }

    fn sign_leaf(
        &self,
        public_key: &impl PublicKeyData,
        id: &SpiffeId,
        opts: &SvidOptions,
    ) -> Result<Vec<CertificateDer<'static>>, CaError> {
        let started = std::time::Instant::now();
        let chain = self.sign_leaf_unmeasured(public_key, id, opts);
        crate::telemetry::signed("x509", started, chain.is_ok());
        chain
    }

    fn sign_leaf_unmeasured(
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
        if authority.not_after <= now {
            // It was not replaced in time (an upstream CA out of reach):
            // what it signed now would be expired at birth.
            return Err(CaError::Sign(format!(
                "the active X.509 authority expired at {}; no successor could be made",
                humantime::format_rfc3339_seconds(authority.not_after)
            )));
        }
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
        let started = std::time::Instant::now();
        let token = self.sign_jwt_svid_unmeasured(id, audience, ttl);
        crate::telemetry::signed("jwt", started, token.is_ok());
        token
    }

    fn sign_jwt_svid_unmeasured(
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
