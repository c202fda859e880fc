//! Key managers: where the CA keeps its private keys. Built-ins are
//! [`memory::MemoryKeyManager`] (keys die with the process) and
//! [`disk::DiskKeyManager`] (PKCS#8 PEM files, mode 0600, written
//! atomically). Pick one by name with [`from_config`].

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use rcgen::{KeyPair, SignatureAlgorithm};
use serde::{Deserialize, Serialize};

/// Key algorithms the CA can use (SPIRE's `ec-p256` default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyType {
    #[default]
    EcP256,
    EcP384,
    Rsa2048,
}

impl KeyType {
    /// The X.509 signature algorithm used with this key type.
    pub fn signature_algorithm(self) -> &'static SignatureAlgorithm {
        match self {
            KeyType::EcP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyType::EcP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyType::Rsa2048 => &rcgen::PKCS_RSA_SHA256,
        }
    }

    /// The JWS algorithm used with this key type.
    pub fn jwt_algorithm(self) -> jsonwebtoken::Algorithm {
        match self {
            KeyType::EcP256 => jsonwebtoken::Algorithm::ES256,
            KeyType::EcP384 => jsonwebtoken::Algorithm::ES384,
            KeyType::Rsa2048 => jsonwebtoken::Algorithm::RS256,
        }
    }

    /// Generates a fresh key pair of this type.
    pub fn generate(self) -> Result<KeyPair, KeyError> {
        let alg = self.signature_algorithm();
        match self {
            KeyType::Rsa2048 => KeyPair::generate_rsa_for(alg, rcgen::RsaKeySize::_2048),
            _ => KeyPair::generate_for(alg),
        }
        .map_err(|e| KeyError::Generate(e.to_string()))
    }

    /// Recognises the type of a loaded key.
    pub fn of(key: &KeyPair) -> Result<Self, KeyError> {
        [KeyType::EcP256, KeyType::EcP384, KeyType::Rsa2048]
            .into_iter()
            .find(|t| key.is_compatible(t.signature_algorithm()))
            .ok_or(KeyError::UnsupportedKey)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::EcP256 => "ec-p256",
            KeyType::EcP384 => "ec-p384",
            KeyType::Rsa2048 => "rsa-2048",
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyType {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ec-p256" => Ok(KeyType::EcP256),
            "ec-p384" => Ok(KeyType::EcP384),
            "rsa-2048" => Ok(KeyType::Rsa2048),
            other => Err(KeyError::UnknownKeyType(other.to_owned())),
        }
    }
}

/// Key manager failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("unknown key type {0:?} (expected ec-p256, ec-p384 or rsa-2048)")]
    UnknownKeyType(String),
    #[error("key generation failed: {0}")]
    Generate(String),
    #[error("key is not an EC P-256, EC P-384 or RSA key")]
    UnsupportedKey,
    #[error("key id {0:?} is invalid: use letters, digits, '-' and '_'")]
    InvalidId(String),
    #[error("key file {path} is not a PKCS#8 PEM private key: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("key store I/O on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("unknown key manager {0:?} (expected memory or disk)")]
    UnknownManager(String),
}

/// Stores private keys by id. Keys are generated where they are used and
/// never leave the manager except as a signing handle.
pub trait KeyManager: Send + Sync + fmt::Debug {
    /// Generates and stores a new key under `id`, replacing any old one.
    fn generate(&self, id: &str, key_type: KeyType) -> Result<KeyPair, KeyError>;
    /// Loads the key stored under `id`, if any.
    fn load(&self, id: &str) -> Result<Option<KeyPair>, KeyError>;
    /// Forgets the key stored under `id`.
    fn delete(&self, id: &str) -> Result<(), KeyError>;
}

/// Builds a key manager from its config name.
pub fn from_config(name: &str, dir: Option<PathBuf>) -> Result<Arc<dyn KeyManager>, KeyError> {
    match (name, dir) {
        ("memory", _) => Ok(Arc::new(memory::MemoryKeyManager::default())),
        ("disk", Some(dir)) => Ok(Arc::new(disk::DiskKeyManager::new(dir)?)),
        ("disk", None) => Err(KeyError::UnknownManager("disk (needs a directory)".into())),
        (other, _) => Err(KeyError::UnknownManager(other.to_owned())),
    }
}

fn check_id(id: &str) -> Result<(), KeyError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(KeyError::InvalidId(id.to_owned()))
    }
}

/// Re-parses a stored PKCS#8 key.
fn key_from_der(der: &[u8]) -> Result<KeyPair, String> {
    let pkcs8 = rustls_pki_types::PrivatePkcs8KeyDer::from(der);
    KeyPair::try_from(&pkcs8).map_err(|e| e.to_string())
}

pub mod memory {
    //! Keys held in process memory (zeroized when dropped).

    use std::collections::HashMap;
    use std::sync::{Mutex, PoisonError};

    use zeroize::Zeroizing;

    use super::*;

    #[derive(Default)]
    pub struct MemoryKeyManager {
        keys: Mutex<HashMap<String, Zeroizing<Vec<u8>>>>,
    }

    impl fmt::Debug for MemoryKeyManager {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let n = self
                .keys
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len();
            write!(f, "MemoryKeyManager({n} keys, [redacted])")
        }
    }

    impl KeyManager for MemoryKeyManager {
        fn generate(&self, id: &str, key_type: KeyType) -> Result<KeyPair, KeyError> {
            check_id(id)?;
            let key = key_type.generate()?;
            self.keys
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(id.to_owned(), Zeroizing::new(key.serialize_der()));
            Ok(key)
        }

        fn load(&self, id: &str) -> Result<Option<KeyPair>, KeyError> {
            check_id(id)?;
            let keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
            keys.get(id)
                .map(|der| {
                    key_from_der(der).map_err(|reason| KeyError::Corrupt {
                        path: PathBuf::from(format!("memory:{id}")),
                        reason,
                    })
                })
                .transpose()
        }

        fn delete(&self, id: &str) -> Result<(), KeyError> {
            self.keys
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(id);
            Ok(())
        }
    }
}

pub mod disk {
    //! Keys as PKCS#8 PEM files, mode 0600, in a directory of mode 0700.

    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    use rustls_pki_types::PrivatePkcs8KeyDer;
    use rustls_pki_types::pem::PemObject;
    use zeroize::Zeroizing;

    use super::*;
    use signet_workload::atomic_file;

    #[derive(Debug)]
    pub struct DiskKeyManager {
        dir: PathBuf,
    }

    impl DiskKeyManager {
        /// Uses `dir`, creating it with mode 0700 if missing.
        pub fn new(dir: PathBuf) -> Result<Self, KeyError> {
            let io = |source| KeyError::Io {
                path: dir.clone(),
                source,
            };
            fs::create_dir_all(&dir).map_err(io)?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(io)?;
            Ok(Self { dir })
        }

        fn path(&self, id: &str) -> Result<PathBuf, KeyError> {
            check_id(id)?;
            Ok(self.dir.join(format!("{id}.key.pem")))
        }

        pub fn dir(&self) -> &Path {
            &self.dir
        }
    }

    impl KeyManager for DiskKeyManager {
        fn generate(&self, id: &str, key_type: KeyType) -> Result<KeyPair, KeyError> {
            let path = self.path(id)?;
            let key = key_type.generate()?;
            let pem = Zeroizing::new(key.serialize_pem());
            atomic_file::write(&path, pem.as_bytes(), atomic_file::SECRET_MODE)
                .map_err(|source| KeyError::Io { path, source })?;
            Ok(key)
        }

        fn load(&self, id: &str) -> Result<Option<KeyPair>, KeyError> {
            let path = self.path(id)?;
            let pem = match fs::read(&path) {
                Ok(b) => Zeroizing::new(b),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(source) => return Err(KeyError::Io { path, source }),
            };
            let corrupt = |reason: String| KeyError::Corrupt {
                path: path.clone(),
                reason,
            };
            let der =
                PrivatePkcs8KeyDer::from_pem_slice(&pem).map_err(|e| corrupt(e.to_string()))?;
            key_from_der(der.secret_pkcs8_der())
                .map(Some)
                .map_err(corrupt)
        }

        fn delete(&self, id: &str) -> Result<(), KeyError> {
            let path = self.path(id)?;
            match fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(source) => Err(KeyError::Io { path, source }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn conformance(km: &dyn KeyManager) {
        for kt in [KeyType::EcP256, KeyType::EcP384, KeyType::Rsa2048] {
            let id = format!("ca-{kt}");
            assert!(km.load(&id).unwrap().is_none());
            let key = km.generate(&id, kt).unwrap();
            assert_eq!(KeyType::of(&key).unwrap(), kt);
            let loaded = km.load(&id).unwrap().expect("stored");
            assert_eq!(loaded.public_key_raw(), key.public_key_raw());
            km.delete(&id).unwrap();
            assert!(km.load(&id).unwrap().is_none());
        }
        assert!(matches!(
            km.generate("../escape", KeyType::EcP256),
            Err(KeyError::InvalidId(_))
        ));
        assert!(!format!("{km:?}").contains("PRIVATE"));
    }

    #[test]
    fn memory_manager_conforms() {
        conformance(&memory::MemoryKeyManager::default());
    }

    #[test]
    fn disk_manager_conforms_and_keeps_keys_private() {
        let dir = tempfile::tempdir().unwrap();
        let km = disk::DiskKeyManager::new(dir.path().join("keys")).unwrap();
        conformance(&km);
        km.generate("x509-ca", KeyType::EcP256).unwrap();
        let path = dir.path().join("keys/x509-ca.key.pem");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(dir.path().join("keys"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("-----BEGIN PRIVATE KEY-----"),
            "PKCS#8 PEM"
        );
        // A key survives a new manager on the same directory (a restart).
        let again = disk::DiskKeyManager::new(dir.path().join("keys")).unwrap();
        assert!(again.load("x509-ca").unwrap().is_some());
    }

    #[test]
    fn a_corrupt_key_file_is_reported_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let km = disk::DiskKeyManager::new(dir.path().to_path_buf()).unwrap();
        let path = dir.path().join("bad.key.pem");
        std::fs::write(&path, "garbage").unwrap();
        let err = km.load("bad").unwrap_err();
        assert!(matches!(err, KeyError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("bad.key.pem"));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "garbage");
    }

    #[test]
    fn key_type_names() {
        for kt in [KeyType::EcP256, KeyType::EcP384, KeyType::Rsa2048] {
            assert_eq!(kt.as_str().parse::<KeyType>().unwrap(), kt);
        }
        let err = "ed25519".parse::<KeyType>().unwrap_err();
        assert!(err.to_string().contains("ed25519"));
    }
}
