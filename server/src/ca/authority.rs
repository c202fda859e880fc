//! Making signing authorities and JWT keys, and loading them back from
//! the journal.

use std::time::SystemTime;

use jsonwebtoken::EncodingKey;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PublicKeyData, SanType,
};
use rustls_pki_types::CertificateDer;
use signet_identity::JwtAuthority;
use zeroize::Zeroizing;

use super::{
    BACKDATE, CaConfig, CaError, JwtKey, ORGANIZATION, UpstreamAuthority, X509Authority,
    parse_cert, random_alnum, random_hex, random_serial, secs_to_time, to_offset,
};
use crate::key_manager::{KeyManager, KeyType};

pub(super) fn new_x509_authority(
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
    let mut params = authority_params(config)?;
    params.serial_number = Some(random_serial()?);
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

/// What every signing authority's certificate (or CSR) says: the
/// organization, a fresh common name, CA constraints and key usages, and
/// the trust domain's SPIFFE ID.
pub(super) fn authority_params(config: &CaConfig) -> Result<CertificateParams, CaError> {
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
    Ok(params)
}

/// Wraps a signing certificate and its key; validity comes from the cert.
pub(super) fn x509_authority_from(
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

pub(super) fn new_jwt_key(
    config: &CaConfig,
    keys: &dyn KeyManager,
    now: SystemTime,
) -> Result<JwtKey, CaError> {
    let kid = random_alnum(32)?;
    let key_id = format!("jwt-{}", random_hex(8)?);
    let key = keys.generate(&key_id, config.jwt_key_type)?;
    jwt_key_from(kid, key, key_id, now, now + config.ca_ttl)
}

pub(super) fn jwt_key_from(
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
        spki: spki.to_vec(),
        key_id,
        not_before,
        not_after,
    })
}
