//! A test PKI: root CAs and the certificates they sign, including the
//! broken ones attack tests need (expired, CA-flagged leaves), built with
//! rcgen. One place for what the workspace's tests used to write three
//! times.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::CertificateDer;

/// A self-signed root CA.
pub struct TestCa {
    /// The root certificate, DER.
    pub der: CertificateDer<'static>,
    /// The root certificate, PEM.
    pub pem: String,
    /// The root's private key, PKCS#8 PEM.
    pub key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

/// What a leaf certificate should say.
#[derive(Debug, Clone, Default)]
pub struct Leaf<'a> {
    /// URI SANs (SPIFFE IDs).
    pub uris: &'a [&'a str],
    /// DNS name SANs (a web server's certificate).
    pub dns: &'a [&'a str],
    /// The subject's common name (none by default).
    pub common_name: Option<&'a str>,
    /// Also flag the leaf as a CA (which an X509-SVID must not be).
    pub ca: bool,
    /// Valid from two hours ago to one hour ago.
    pub expired: bool,
    /// Valid from the first to the second instant instead (overrides
    /// `expired`): a window a test can step a clock through.
    pub valid: Option<(SystemTime, SystemTime)>,
}

/// A leaf certificate and its key.
#[derive(Debug, Clone)]
pub struct Issued {
    pub der: CertificateDer<'static>,
    pub pem: String,
    pub key_pem: String,
}

impl TestCa {
    /// A root named `name` (its common name), for signing certificates.
    pub fn new(name: &str) -> TestCa {
        Self::build(name, None)
    }

    /// A root of trust domain `td` as a SPIFFE bundle holds it: its URI SAN
    /// is `spiffe://td`.
    pub fn for_trust_domain(td: &str) -> TestCa {
        Self::build(td, Some(format!("spiffe://{td}")))
    }

    fn build(name: &str, uri: Option<String>) -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.distinguished_name.push(DnType::CommonName, name);
        if let Some(uri) = uri {
            params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
        }
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            der: cert.der().clone(),
            pem: cert.pem(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// Writes the root as `<stem>.pem` and its key as `<stem>.key` in `dir`;
    /// returns the certificate's path.
    pub fn write(&self, dir: &Path, stem: &str) -> PathBuf {
        write_pair(dir, stem, &self.pem, &self.key_pem)
    }

    /// The root as an rcgen issuer, for certificates `leaf` does not make.
    pub fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }

    /// Signs a leaf: digital signature, client and server auth, valid for
    /// the hour around now unless `expired`.
    pub fn leaf(&self, leaf: &Leaf<'_>) -> Issued {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = leaf
            .uris
            .iter()
            .map(|u| SanType::URI((*u).try_into().unwrap()))
            .chain(
                leaf.dns
                    .iter()
                    .map(|d| SanType::DnsName((*d).try_into().unwrap())),
            )
            .collect();
        if let Some(cn) = leaf.common_name {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        if leaf.ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages.push(KeyUsagePurpose::KeyCertSign);
        }
        let now = SystemTime::now();
        let (from, until) = if let Some(window) = leaf.valid {
            window
        } else if leaf.expired {
            (
                now - Duration::from_secs(7200),
                now - Duration::from_secs(3600),
            )
        } else {
            (
                now - Duration::from_secs(60),
                now + Duration::from_secs(3600),
            )
        };
        params.not_before = from.into();
        params.not_after = until.into();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Issued {
            der: cert.der().clone(),
            pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

impl Issued {
    /// Writes the certificate as `<stem>.pem` and its key as `<stem>.key`
    /// in `dir`; returns the certificate's path.
    pub fn write(&self, dir: &Path, stem: &str) -> PathBuf {
        write_pair(dir, stem, &self.pem, &self.key_pem)
    }
}

fn write_pair(dir: &Path, stem: &str, cert_pem: &str, key_pem: &str) -> PathBuf {
    let path = dir.join(format!("{stem}.pem"));
    std::fs::write(&path, cert_pem).unwrap();
    std::fs::write(dir.join(format!("{stem}.key")), key_pem).unwrap();
    path
}
