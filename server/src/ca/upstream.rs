//! An upstream CA our signing authorities become the intermediates of.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rcgen::{KeyPair, PublicKeyData};
use rustls_pki_types::CertificateDer;
use signet_identity::bundle::certificates_from_pem;
use zeroize::Zeroizing;

use super::{CaError, parse_cert, secs_to_time};

/// An upstream CA loaded from disk: our signing authorities become its
/// intermediates, and the bundle publishes its roots instead of ours.
pub struct UpstreamAuthority {
    /// The upstream signing certificate first, then any intermediates above it.
    pub(super) chain: Vec<CertificateDer<'static>>,
    pub(super) key: KeyPair,
    pub(super) roots: Vec<CertificateDer<'static>>,
    pub(super) not_after: SystemTime,
    /// Where it was read from: read again before each new authority, so
    /// replacing the files rotates the upstream CA without a restart.
    source: (PathBuf, PathBuf, Option<PathBuf>),
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
            source: (
                cert_path.to_owned(),
                key_path.to_owned(),
                bundle_path.map(Path::to_owned),
            ),
        })
    }

    /// The upstream CA as its files hold it now.
    pub fn reload(&self) -> Result<Self, CaError> {
        let (cert, key, bundle) = &self.source;
        Self::load(cert, key, bundle.as_deref())
    }

    /// Whether `other` is the same CA with the same roots.
    pub fn same_as(&self, other: &Self) -> bool {
        self.chain == other.chain && self.roots == other.roots
    }

    /// Every authority an intermediate it signs names: the upstream signing
    /// certificate's key and each authority above it.
    pub(super) fn authority_ids(&self) -> Vec<String> {
        let mut ids = signet_identity::x509_svid::chain_authority_ids(&self.chain);
        ids.extend(
            self.chain
                .first()
                .and_then(|c| signet_identity::x509_svid::authority_id(c)),
        );
        ids.sort();
        ids.dedup();
        ids
    }

    /// The certificate file, to name in errors.
    pub(super) fn cert_path(&self) -> &Path {
        &self.source.0
    }

    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }
}
