//! rustls plumbing for SPIFFE mTLS: verifiers that accept a peer only when
//! its X509-SVID verifies against the current bundles and its SPIFFE ID is
//! authorized, and a certificate holder that rotates under live traffic.
//! TLS itself is rustls on aws-lc-rs; nothing here parses or signs by hand.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
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

/// Leaf-only peer chains that verified against one bundle set, so a peer
/// seen again (a resumed session's recheck, a reconnecting client) costs a
/// lookup instead of a signature verification. An entry holds only when the
/// presented leaf is byte for byte the one verified, the bundle set is the
/// very same (`Arc::ptr_eq` against the set the memo keeps alive, so a
/// freed set's address cannot be mistaken for a new one), and now is inside
/// the leaf's validity window; the authorizer runs on every hit. A bundle
/// change empties the memo. Chains with intermediates are always verified
/// in full (their validity windows are not kept).
#[derive(Default)]
struct VerifiedMemo(Mutex<MemoState>);

#[derive(Default)]
struct MemoState {
    bundles: Option<Arc<BundleSet>>,
    leaves: HashMap<Vec<u8>, MemoEntry>,
}

struct MemoEntry {
    id: SpiffeId,
    not_before: i64,
    not_after: i64,
}

/// Leaves remembered per verifier; past this the memo starts over.
const MEMO_LEAVES: usize = 1024;

impl VerifiedMemo {
    fn lookup(&self, bundles: &Arc<BundleSet>, leaf: &[u8], now: i64) -> Option<SpiffeId> {
        let state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if !state
            .bundles
            .as_ref()
            .is_some_and(|b| Arc::ptr_eq(b, bundles))
        {
            return None;
        }
        state
            .leaves
            .get(leaf)
            .filter(|e| e.not_before <= now && now <= e.not_after)
            .map(|e| e.id.clone())
    }

    fn remember(&self, bundles: &Arc<BundleSet>, leaf: &[u8], entry: MemoEntry) {
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if !state
            .bundles
            .as_ref()
            .is_some_and(|b| Arc::ptr_eq(b, bundles))
            || state.leaves.len() >= MEMO_LEAVES
        {
            state.leaves.clear();
            state.bundles = Some(bundles.clone());
        }
        state.leaves.insert(leaf.to_vec(), entry);
    }
}

/// Why a peer's certificate was refused, carried inside
/// `rustls::Error::InvalidCertificate(CertificateError::Other(..))` so that
/// callers match on the type (metric labels, logs) and the peer gets a
/// certificate alert. An expired or not yet valid SVID is reported as
/// rustls' own `ExpiredContext` / `NotValidYetContext` instead, so the
/// peer gets `certificate_expired`.
#[derive(thiserror::Error)]
pub enum PeerRejected {
    /// The certificate is not a valid X509-SVID of a trusted trust domain.
    #[error("peer X509-SVID rejected: {0}")]
    Svid(signet_identity::x509_svid::X509SvidError),
    /// A valid X509-SVID whose SPIFFE ID this side does not accept.
    #[error("peer {0} is not authorized")]
    NotAuthorized(SpiffeId),
}

/// rustls shows an `Other` certificate error by its Debug form: make that
/// the readable reason.
impl fmt::Debug for PeerRejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl PeerRejected {
    /// The rejection of `e`, if it is one of these verifiers'.
    pub fn of(e: &rustls::Error) -> Option<&PeerRejected> {
        match e {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => {
                other.0.downcast_ref::<PeerRejected>()
            }
            _ => None,
        }
    }

    fn into_rustls(self, now: UnixTime) -> rustls::Error {
        use signet_identity::x509_svid::X509SvidError;
        let at = |secs: i64| UnixTime::since_unix_epoch(Duration::from_secs(secs.max(0) as u64));
        let cert = match self {
            PeerRejected::Svid(X509SvidError::Expired { not_after }) => {
                rustls::CertificateError::ExpiredContext {
                    time: now,
                    not_after: at(not_after),
                }
            }
            PeerRejected::Svid(X509SvidError::NotYetValid { not_before }) => {
                rustls::CertificateError::NotValidYetContext {
                    time: now,
                    not_before: at(not_before),
                }
            }
            other => rustls::CertificateError::Other(rustls::OtherError(Arc::new(other))),
        };
        rustls::Error::InvalidCertificate(cert)
    }
}

fn verify_peer(
    bundles: &SharedBundles,
    authorize: &Authorizer,
    memo: &VerifiedMemo,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
) -> Result<SpiffeId, rustls::Error> {
    let current = bundles.get();
    let now_secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    let remembered = if intermediates.is_empty() {
        memo.lookup(&current, end_entity, now_secs)
    } else {
        None
    };
    let id = match remembered {
        Some(id) => id,
        None => {
            let mut chain = Vec::with_capacity(1 + intermediates.len());
            chain.push(end_entity.clone());
            chain.extend(intermediates.iter().cloned());
            let at = UNIX_EPOCH + Duration::from_secs(now.as_secs());
            let verified = verify_x509_svid(&chain, &*current, at)
                .map_err(|e| PeerRejected::Svid(e).into_rustls(now))?;
            if intermediates.is_empty() {
                memo.remember(
                    &current,
                    end_entity,
                    MemoEntry {
                        id: verified.spiffe_id.clone(),
                        not_before: verified.not_before,
                        not_after: verified.not_after,
                    },
                );
            }
            verified.spiffe_id
        }
    };
    if !authorize(&id) {
        return Err(PeerRejected::NotAuthorized(id).into_rustls(now));
    }
    Ok(id)
}

/// Verifies a peer's X509-SVID against the current bundles and asks the
/// authorizer about its SPIFFE ID, on either side of a connection: as a
/// server it checks clients (`ClientCertVerifier`), as a client the server
/// (`ServerCertVerifier`; the TLS server name is not used: SPIFFE
/// authenticates by SPIFFE ID, not DNS name). Both share one memo of
/// verified leaves and one set of signature algorithms.
pub struct SpiffeVerifier {
    bundles: SharedBundles,
    authorize: Authorizer,
    /// Server side: whether clients must present a certificate (with
    /// `false`, anonymous clients may connect and APIs decide per call).
    mandatory: bool,
    algs: WebPkiSupportedAlgorithms,
    memo: VerifiedMemo,
}

impl fmt::Debug for SpiffeVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpiffeVerifier")
            .field("mandatory", &self.mandatory)
            .finish_non_exhaustive()
    }
}

impl SpiffeVerifier {
    /// A verifier that requires a certificate from the peer.
    pub fn new(bundles: SharedBundles, authorize: Authorizer) -> Self {
        Self {
            bundles,
            authorize,
            mandatory: true,
            algs: provider().signature_verification_algorithms,
            memo: VerifiedMemo::default(),
        }
    }

    /// For servers: whether clients must present a certificate.
    pub fn client_auth_required(mut self, mandatory: bool) -> Self {
        self.mandatory = mandatory;
        self
    }

    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<SpiffeId, rustls::Error> {
        verify_peer(
            &self.bundles,
            &self.authorize,
            &self.memo,
            end_entity,
            intermediates,
            now,
        )
    }
}

/// The handshake signature checks, the same for every verifier here:
/// rustls' own verification with the provider's algorithms (both verifier
/// traits require these three methods).
macro_rules! handshake_signatures {
    () => {
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
    };
}

impl ClientCertVerifier for SpiffeVerifier {
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
        self.verify(end_entity, intermediates, now)?;
        Ok(ClientCertVerified::assertion())
    }

    handshake_signatures!();
}

impl ServerCertVerifier for SpiffeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verify(end_entity, intermediates, now)?;
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures!();
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

    /// Presents the PEM certificate chain `chain` (leaf first) with the
    /// PEM private key `key` (PKCS#8, SEC1 or PKCS#1) from now on: a
    /// certificate from a web PKI, say, which is no SVID.
    pub fn set_pem(&self, chain: &[u8], key: &[u8]) -> Result<(), rustls::Error> {
        use rustls::pki_types::pem::PemObject;
        let bad = |what: &str, e: rustls::pki_types::pem::Error| {
            rustls::Error::General(format!("{what}: {e}"))
        };
        let chain = CertificateDer::pem_slice_iter(chain)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad("the certificate file", e))?;
        if chain.is_empty() {
            return Err(rustls::Error::General(
                "the certificate file holds no certificate".into(),
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| bad("the key file", e))?;
        let signing = provider().key_provider.load_private_key(key)?;
        let certified = CertifiedKey::new(chain, signing);
        certified.keys_match()?;
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
    verifier: Arc<SpiffeVerifier>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A TLS server config presenting `cert` to any client, asking none for a
/// certificate, speaking HTTP/1.1 (a SPIFFE bundle endpoint: its clients
/// are servers of other trust domains and web clients). TLS 1.2 too, as a
/// web server would.
pub fn public_server_config(
    cert: Arc<RotatingCert>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
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

        handshake_signatures!();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use signet_identity::Bundle;
    use signet_testkit::pki::{Leaf, TestCa};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::SystemTime;

    const ID: &str = "spiffe://example.org/peer";

    fn ca() -> (TestCa, String) {
        let ca = TestCa::new("root");
        let pem = ca.pem.clone();
        (ca, pem)
    }

    /// June 1st of `year`.
    fn june(year: i32) -> SystemTime {
        let days = (1970..year)
            .map(|y| if y % 4 == 0 { 366 } else { 365 })
            .sum::<u64>()
            + if year % 4 == 0 { 152 } else { 151 };
        SystemTime::UNIX_EPOCH + Duration::from_secs(days * 86_400)
    }

    /// A leaf for `ID` valid from mid-2020 to mid-2030.
    fn leaf(ca: &TestCa) -> CertificateDer<'static> {
        ca.leaf(&Leaf {
            uris: &[ID],
            valid: Some((june(2020), june(2030))),
            ..Leaf::default()
        })
        .der
    }

    fn bundles(ca_pem: &str) -> BundleSet {
        let mut set = BundleSet::new();
        set.insert(
            Bundle::from_x509_pem("example.org".parse().unwrap(), ca_pem.as_bytes()).unwrap(),
        );
        set
    }

    fn at(year: i32) -> UnixTime {
        UnixTime::since_unix_epoch(june(year).duration_since(SystemTime::UNIX_EPOCH).unwrap())
    }

    /// The verified-leaf memo must never accept what a full verification
    /// would reject: a CA gone from the bundle, an expired or not yet valid
    /// leaf, another leaf, a peer the authorizer now refuses.
    #[test]
    fn the_memo_never_accepts_what_verification_would_reject() {
        let (issuer, ca_pem) = ca();
        let shared = SharedBundles::new(bundles(&ca_pem));
        let allowed = Arc::new(AtomicBool::new(true));
        let gate = allowed.clone();
        let verifier = SpiffeVerifier::new(
            shared.clone(),
            Arc::new(move |_: &SpiffeId| gate.load(Ordering::SeqCst)),
        );
        let good = leaf(&issuer);
        let check = |cert: &CertificateDer<'_>, now| verifier.verify_client_cert(cert, &[], now);

        assert!(check(&good, at(2025)).is_ok());
        let remembered = |v: &SpiffeVerifier| v.memo.0.lock().unwrap().leaves.len();
        assert_eq!(remembered(&verifier), 1);
        assert!(
            check(&good, at(2025)).is_ok(),
            "a remembered leaf still verifies"
        );
        assert!(
            check(&good, at(2031)).is_err(),
            "expired after it was remembered"
        );
        assert!(check(&good, at(2019)).is_err(), "not yet valid");

        // Another CA's leaf with the same SPIFFE ID is not the remembered one.
        let (other, _) = ca();
        assert!(check(&leaf(&other), at(2025)).is_err());

        // The authorizer is asked every time.
        allowed.store(false, Ordering::SeqCst);
        assert!(check(&good, at(2025)).is_err(), "authorizer ignored");
        allowed.store(true, Ordering::SeqCst);

        // The CA leaves the bundle: the remembered leaf no longer verifies,
        // not even when the old set is put back as a new set (same content,
        // new identity: verified again, and passes again).
        let (_, unrelated_pem) = ca();
        shared.set(bundles(&unrelated_pem));
        assert!(
            check(&good, at(2025)).is_err(),
            "CA removed but leaf accepted"
        );
        shared.set(bundles(&ca_pem));
        assert!(check(&good, at(2025)).is_ok());
    }

    /// Rejections are typed (callers match the type, not text) and give
    /// the peer a certificate alert: certificate_expired for an expired or
    /// not yet valid SVID, certificate_unknown otherwise, never the
    /// handshake_failure a General error sends.
    #[test]
    fn rejections_are_typed_and_alert_the_peer_properly() {
        use rustls::{AlertDescription, CertificateError};
        let (issuer, ca_pem) = ca();
        let shared = SharedBundles::new(bundles(&ca_pem));
        let verifier = SpiffeVerifier::new(shared, Arc::new(|id: &SpiffeId| id.as_str() != ID));
        let good = leaf(&issuer);
        let alert = |e: &rustls::Error| match e {
            rustls::Error::InvalidCertificate(c) => AlertDescription::from(c.clone()),
            other => panic!("not a certificate error: {other:?}"),
        };

        let refused = verifier
            .verify_client_cert(&good, &[], at(2025))
            .unwrap_err();
        assert!(
            matches!(PeerRejected::of(&refused), Some(PeerRejected::NotAuthorized(id)) if id.as_str() == ID),
            "{refused:?}"
        );
        assert_eq!(alert(&refused), AlertDescription::CertificateUnknown);
        assert!(
            refused.to_string().contains("is not authorized"),
            "{refused}"
        );

        for (year, what) in [(2031, "expired"), (2019, "not yet valid")] {
            let e = verifier
                .verify_client_cert(&good, &[], at(year))
                .unwrap_err();
            assert!(
                matches!(
                    e,
                    rustls::Error::InvalidCertificate(
                        CertificateError::ExpiredContext { .. }
                            | CertificateError::NotValidYetContext { .. }
                    )
                ),
                "{what}: {e:?}"
            );
            assert_eq!(alert(&e), AlertDescription::CertificateExpired, "{what}");
        }

        let (other, _) = ca();
        let untrusted = verifier
            .verify_client_cert(&leaf(&other), &[], at(2025))
            .unwrap_err();
        assert!(
            matches!(PeerRejected::of(&untrusted), Some(PeerRejected::Svid(_))),
            "{untrusted:?}"
        );
        assert!(
            untrusted.to_string().contains("does not chain"),
            "{untrusted}"
        );
    }

    #[test]
    fn the_server_side_memo_follows_bundle_changes_too() {
        let (issuer, ca_pem) = ca();
        let shared = SharedBundles::new(bundles(&ca_pem));
        let verifier = SpiffeVerifier::new(shared.clone(), Arc::new(|_: &SpiffeId| true));
        let good = leaf(&issuer);
        let name = ServerName::try_from("peer").unwrap();
        let check = || verifier.verify_server_cert(&good, &[], &name, &[], at(2025));
        assert!(check().is_ok());
        assert!(check().is_ok());
        let (_, unrelated_pem) = ca();
        shared.set(bundles(&unrelated_pem));
        assert!(check().is_err());
    }
}
