//! The OIDC provider's self-signed certificate for local use: a small CA
//! (`ca.pem`, the file a client trusts) and a server certificate it
//! signs for the provider's names, kept in a private directory so the
//! client's trust survives restarts. The server certificate is issued
//! again when it no longer covers the names or nears its end; the CA only
//! when it is missing or unreadable.

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType,
};
use signet_identity::bundle::certificates_from_pem;
use signet_workload::atomic_file;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::ServerError;
use crate::ca::to_offset;

const DAY: Duration = Duration::from_secs(24 * 3600);
const CA_LIFE: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
const CERT_LIFE: Duration = Duration::from_secs(365 * 24 * 3600);
/// A server certificate with less left than this is issued again.
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);

/// The files of a self-signed setup.
#[derive(Debug, Clone)]
pub struct SelfSigned {
    /// The CA certificate clients trust.
    pub ca: PathBuf,
    ca_key: PathBuf,
    /// The server certificate (PEM chain: itself, then the CA).
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl SelfSigned {
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            ca: dir.join("ca.pem"),
            ca_key: dir.join("ca.key"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        }
    }

    /// Makes sure the files exist and the certificate covers `names` (DNS
    /// names or IP addresses).
    pub fn ensure(&self, names: &[String]) -> Result<(), ServerError> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            ServerError::InvalidArgument(format!("OIDC self-signed certificate: {what}: {e}"))
        };
        if let Some(dir) = self.ca.parent() {
            use std::os::unix::fs::PermissionsExt;
            fs::create_dir_all(dir)
                .and_then(|()| fs::set_permissions(dir, fs::Permissions::from_mode(0o700)))
                .map_err(|e| fail(&dir.display().to_string(), &e))?;
        }
        if self.current_covers(names) {
            return Ok(());
        }
        let now = SystemTime::now();
        let ca = match self.load_ca() {
            Some(ca) => ca,
            None => {
                let key = KeyPair::generate().map_err(|e| fail("CA key", &e))?;
                let mut params = CertificateParams::default();
                params
                    .distinguished_name
                    .push(DnType::CommonName, "Signet OIDC provider local CA");
                params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
                params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
                params.not_before = to_offset(now - DAY);
                params.not_after = to_offset(now + CA_LIFE);
                let cert = params.self_signed(&key).map_err(|e| fail("CA", &e))?;
                write_private(&self.ca_key, &key.serialize_pem())
                    .map_err(|e| fail("CA key", &e))?;
                write_public(&self.ca, &cert.pem()).map_err(|e| fail("CA", &e))?;
                Issuer::new(params, key)
            }
        };
        let key = KeyPair::generate().map_err(|e| fail("key", &e))?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "Signet OIDC provider");
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => n.as_str().try_into().map(SanType::DnsName),
            })
            .collect::<Result<_, rcgen::Error>>()
            .map_err(|e| fail("a name", &e))?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = to_offset(now - Duration::from_secs(3600));
        params.not_after = to_offset(now + CERT_LIFE);
        let cert = params
            .signed_by(&key, &ca)
            .map_err(|e| fail("signing", &e))?;
        let ca_pem = fs::read_to_string(&self.ca).map_err(|e| fail("CA", &e))?;
        write_private(&self.key, &key.serialize_pem()).map_err(|e| fail("key", &e))?;
        write_public(&self.cert, &format!("{}{ca_pem}", cert.pem()))
            .map_err(|e| fail("certificate", &e))?;
        tracing::info!(cert = %self.cert.display(), names = ?names, "OIDC provider: self-signed certificate issued");
        Ok(())
    }

    fn load_ca(&self) -> Option<Issuer<'static, KeyPair>> {
        let key = KeyPair::from_pem(&fs::read_to_string(&self.ca_key).ok()?).ok()?;
        let pem = fs::read(&self.ca).ok()?;
        let der = certificates_from_pem(&pem).ok()?.into_iter().next()?;
        let (_, parsed) = X509Certificate::from_der(&der).ok()?;
        if parsed.public_key().raw != key.subject_public_key_info().as_slice()
            || !valid_for(&parsed, CERT_LIFE)
        {
            return None;
        }
        Issuer::from_ca_cert_der(&der, key).ok()
    }

    /// Whether the stored certificate covers every name for long enough
    /// (and its key is there).
    fn current_covers(&self, names: &[String]) -> bool {
        let Ok(pem) = fs::read(&self.cert) else {
            return false;
        };
        if !self.key.exists() || !self.ca.exists() {
            return false;
        }
        let Some(der) = certificates_from_pem(&pem)
            .ok()
            .and_then(|c| c.into_iter().next())
        else {
            return false;
        };
        let Ok((_, cert)) = X509Certificate::from_der(&der) else {
            return false;
        };
        let mut have = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(d) => have.push(d.to_string()),
                    GeneralName::IPAddress(b) => {
                        let ip = match b.len() {
                            4 => <[u8; 4]>::try_from(*b).ok().map(IpAddr::from),
                            16 => <[u8; 16]>::try_from(*b).ok().map(IpAddr::from),
                            _ => None,
                        };
                        have.extend(ip.map(|ip| ip.to_string()));
                    }
                    _ => {}
                }
            }
        }
        let covered = names.iter().all(|n| {
            let n = n
                .parse::<IpAddr>()
                .map_or_else(|_| n.to_ascii_lowercase(), |ip| ip.to_string());
            have.iter().any(|h| h.eq_ignore_ascii_case(&n))
        });
        covered && valid_for(&cert, RENEW_BEFORE)
    }
}

/// Whether `cert` is still valid `margin` from now.
fn valid_for(cert: &X509Certificate<'_>, margin: Duration) -> bool {
    let until = SystemTime::now() + margin;
    let secs = until
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    i64::try_from(secs).is_ok_and(|s| cert.validity().not_after.timestamp() > s)
}

fn write_private(path: &Path, pem: &str) -> std::io::Result<()> {
    atomic_file::write(path, pem.as_bytes(), atomic_file::SECRET_MODE)
}

fn write_public(path: &Path, pem: &str) -> std::io::Result<()> {
    atomic_file::write(path, pem.as_bytes(), 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(s: &SelfSigned) -> Vec<u8> {
        certificates_from_pem(&fs::read(&s.cert).unwrap()).unwrap()[0].to_vec()
    }

    #[test]
    fn the_certificate_is_kept_until_a_name_is_missing_and_the_ca_always() {
        let dir = tempfile::tempdir().unwrap();
        let s = SelfSigned::in_dir(&dir.path().join("oidc"));
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        s.ensure(&names).unwrap();
        let (ca, first) = (fs::read(&s.ca).unwrap(), leaf(&s));
        s.ensure(&names).unwrap();
        assert_eq!(leaf(&s), first, "a covering certificate was issued again");

        let more = vec!["localhost".to_owned(), "oidc.example.org".to_owned()];
        s.ensure(&more).unwrap();
        assert_ne!(leaf(&s), first, "a missing name did not issue a new one");
        assert_eq!(fs::read(&s.ca).unwrap(), ca, "the CA clients trust changed");
        let pem = fs::read_to_string(&s.cert).unwrap();
        assert!(pem.ends_with(std::str::from_utf8(&ca).unwrap()), "{pem}");

        // The chain verifies with the CA, for the new name (OpenSSL).
        let out = std::process::Command::new("openssl")
            .args([
                "verify",
                "-purpose",
                "sslserver",
                "-verify_hostname",
                "oidc.example.org",
                "-CAfile",
            ])
            .arg(&s.ca)
            .arg(&s.cert)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&s.key).unwrap().permissions());
        assert_eq!(mode & 0o077, 0, "the key is readable by others");
    }
}
