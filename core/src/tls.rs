//! rustls plumbing for SPIFFE mTLS: verifiers that accept a peer only when
//! its X509-SVID verifies against the current bundles and its SPIFFE ID is
//! authorized, and a certificate holder that rotates under live traffic.
//! TLS itself is rustls on aws-lc-rs; nothing here parses or signs by hand.

use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use signet_identity::{BundleSet, SpiffeId, X509Svid, verify_x509_svid};

/// The crypto provider everywhere: aws-lc-rs.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Bundles read on every handshake and swapped whole on change.
#[derive(Clone, Default)]
pub struct SharedBundles(Arc<RwLock<Arc<BundleSet>>>);

impl fmt::Debug for SharedBundles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SharedBundles({} trust domains)", self.get().len())
    }
}

impl SharedBundles {
    pub fn new(bundles: BundleSet) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(bundles))))
    }

    pub fn get(&self) -> Arc<BundleSet> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn set(&self, bundles: BundleSet) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(bundles);
    }
}

/// Decides whether a verified peer ID may connect.
pub type Authorizer = Arc<dyn Fn(&SpiffeId) -> bool + Send + Sync>;

fn verify_peer(
    bundles: &SharedBundles,
    authorize: &Authorizer,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
) -> Result<SpiffeId, rustls::Error> {
    let mut chain = Vec::with_capacity(1 + intermediates.len());
    chain.push(end_entity.clone());
    chain.extend(intermediates.iter().cloned());
    let now = UNIX_EPOCH + Duration::from_secs(now.as_secs());
    let verified = verify_x509_svid(&chain, &*bundles.get(), now)
        .map_err(|e| rustls::Error::General(format!("peer X509-SVID rejected: {e}")))?;
    if !authorize(&verified.spiffe_id) {
        return Err(rustls::Error::General(format!(
            "peer {} is not authorized",
            verified.spiffe_id
        )));
    }
    Ok(verified.spiffe_id)
}

/// Server side: verifies client X509-SVIDs. With `mandatory == false`
/// anonymous clients may connect and APIs decide per call.
pub struct SpiffeClientVerifier {
    bundles: SharedBundles,
    authorize: Authorizer,
    mandatory: bool,
    algs: WebPkiSupportedAlgorithms,
}

impl fmt::Debug for SpiffeClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpiffeClientVerifier")
            .field("mandatory", &self.mandatory)
            .finish_non_exhaustive()
    }
}

impl SpiffeClientVerifier {
    pub fn new(bundles: SharedBundles, authorize: Authorizer, mandatory: bool) -> Self {
        Self {
            bundles,
            authorize,
            mandatory,
            algs: provider().signature_verification_algorithms,
        }
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        verify_peer(
            &self.bundles,
            &self.authorize,
            end_entity,
            intermediates,
            now,
        )?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Client side: verifies the server's X509-SVID; the TLS server name is not
/// used (SPIFFE authenticates by SPIFFE ID, not DNS name).
pub struct SpiffeServerVerifier {
    bundles: SharedBundles,
    authorize: Authorizer,
    algs: WebPkiSupportedAlgorithms,
}

impl fmt::Debug for SpiffeServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpiffeServerVerifier")
            .finish_non_exhaustive()
    }
}

impl SpiffeServerVerifier {
    pub fn new(bundles: SharedBundles, authorize: Authorizer) -> Self {
        Self {
            bundles,
            authorize,
            algs: provider().signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        verify_peer(
            &self.bundles,
            &self.authorize,
            end_entity,
            intermediates,
            now,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// The certificate this side presents; replaced on rotation. New
/// handshakes use the new one at once; established connections keep theirs.
#[derive(Default)]
pub struct RotatingCert(RwLock<Option<Arc<CertifiedKey>>>);

impl fmt::Debug for RotatingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = self
            .0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some();
        write!(f, "RotatingCert(set: {set})")
    }
}

impl RotatingCert {
    pub fn new() -> Self {
        Self::default()
    }

    /// Presents `svid` from now on.
    pub fn set(&self, svid: &X509Svid) -> Result<(), rustls::Error> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            svid.private_key().pkcs8_der().to_vec(),
        ));
        let signing = provider().key_provider.load_private_key(key)?;
        let certified = CertifiedKey::new(svid.chain().to_vec(), signing);
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(certified));
        Ok(())
    }

    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl rustls::server::ResolvesServerCert for RotatingCert {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

impl rustls::client::ResolvesClientCert for RotatingCert {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        self.current().is_some()
    }
}

/// A TLS 1.3 server config presenting `cert` and verifying clients with
/// `verifier`, speaking HTTP/2 (gRPC).
pub fn server_config(
    cert: Arc<RotatingCert>,
    verifier: Arc<SpiffeClientVerifier>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A TLS 1.3 client config presenting `cert` (when it holds one) and
/// verifying the server with `verifier`, speaking HTTP/2 (gRPC).
pub fn client_config(
    cert: Arc<RotatingCert>,
    verifier: Arc<dyn ServerCertVerifier>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Options that weaken security, for development only.
pub mod danger {
    use super::*;

    /// Accepts any server certificate. Only for an agent's very first
    /// connection when no bootstrap bundle is available
    /// (`signet agent --insecure-bootstrap`): a man in the middle could
    /// hand the agent a false bundle.
    #[derive(Debug)]
    pub struct InsecureAcceptAnyServer {
        algs: WebPkiSupportedAlgorithms,
    }

    impl InsecureAcceptAnyServer {
        pub fn new() -> Self {
            Self {
                algs: provider().signature_verification_algorithms,
            }
        }
    }

    impl Default for InsecureAcceptAnyServer {
        fn default() -> Self {
            Self::new()
        }
    }

    impl ServerCertVerifier for InsecureAcceptAnyServer {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algs.supported_schemes()
        }
    }
}
