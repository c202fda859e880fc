//! TLS configurations of the sidecar: rustls on aws-lc-rs, TLS 1.3 unless
//! TLS 1.2 is asked for, SPIFFE verifiers on both sides. Rejections carry a
//! reason that the listener logs and counts.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rustls::crypto::CryptoProvider;
use rustls::crypto::aws_lc_rs::cipher_suite;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use signet_identity::{SpiffeId, TrustDomain};
use signet_tls::{Authorizer, PeerRejected, SpiffeVerifier};

use crate::identity::Identity;
use crate::pattern::IdPattern;

static TLS13_ONLY: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
static TLS13_AND_12: [&rustls::SupportedProtocolVersion; 2] =
    [&rustls::version::TLS13, &rustls::version::TLS12];

fn versions(tls12: bool) -> &'static [&'static rustls::SupportedProtocolVersion] {
    if tls12 { &TLS13_AND_12 } else { &TLS13_ONLY }
}

/// aws-lc-rs with AES-128-GCM preferred, as Envoy (BoringSSL) and most
/// TLS stacks negotiate it: as strong in practice and faster than AES-256.
pub fn provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    p.cipher_suites = vec![
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        cipher_suite::TLS13_AES_256_GCM_SHA384,
        cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        cipher_suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(p)
}

/// The handshake-time allow-list: a peer passes when its ID is listed or
/// its trust domain is; with both lists empty every verified peer passes
/// (the policy then decides).
pub fn allow_list(ids: &[IdPattern], trust_domains: &[TrustDomain]) -> Authorizer {
    let exact: HashSet<String> = ids
        .iter()
        .filter(|p| p.is_exact())
        .map(ToString::to_string)
        .collect();
    let patterns: Vec<IdPattern> = ids.iter().filter(|p| !p.is_exact()).cloned().collect();
    let tds: HashSet<String> = trust_domains
        .iter()
        .map(|t| t.as_str().to_string())
        .collect();
    let everyone = ids.is_empty() && tds.is_empty();
    Arc::new(move |id: &SpiffeId| {
        everyone
            || exact.contains(id.as_str())
            || tds.contains(id.trust_domain_str())
            || patterns.iter().any(|p| p.matches(id))
    })
}

/// Inbound: requires a client X509-SVID that chains to the bundle of its
/// trust domain and passes `authorize`. Returns the verifier too, for
/// [`recheck_resumed_client`]. Session tickets are stateless (rotating
/// keys, nothing stored per session), so resumption survives any load;
/// their key is replaced when the identity changes ([`IdentityTicketer`]).
pub fn server_config(
    identity: &Identity,
    authorize: Authorizer,
    tls12: bool,
    alpn: &[&[u8]],
) -> Result<(rustls::ServerConfig, Arc<SpiffeVerifier>), rustls::Error> {
    let verifier = Arc::new(SpiffeVerifier::new(identity.bundles(), authorize));
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions(tls12))?
        .with_client_cert_verifier(verifier.clone())
        .with_cert_resolver(identity.cert());
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.ticketer = Arc::new(IdentityTicketer::new(identity.generation())?);
    Ok((config, verifier))
}

/// Outbound: presents our SVID and accepts only a server presenting
/// exactly `server_id`. Returns the verifier too, for
/// [`recheck_resumed_server`].
pub fn client_config(
    identity: &Identity,
    authorize_server: Authorizer,
    tls12: bool,
) -> Result<(rustls::ClientConfig, Arc<SpiffeVerifier>), rustls::Error> {
    let verifier = Arc::new(SpiffeVerifier::new(identity.bundles(), authorize_server));
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions(tls12))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_client_cert_resolver(identity.cert());
    config.resumption =
        rustls::client::Resumption::store(Arc::new(TicketStore::new(identity.generation())));
    Ok((config, verifier))
}

/// TLS 1.3 tickets kept per server by [`TicketStore`].
const TICKETS_PER_SERVER: usize = 64;
/// Servers remembered by one [`TicketStore`] (an outbound listener has one).
const TICKET_SERVERS: usize = 32;

/// The outbound side's session store. rustls' default keeps 8 TLS 1.3
/// tickets per server, and a ticket is used once: with more than 8
/// connections opening at once, the rest fell back to full handshakes
/// (about half of them under 32 concurrent openers). The server sends two
/// tickets per handshake, so a deeper store refills itself and nearly every
/// new connection resumes. A resumed session is still verified again
/// ([`recheck_resumed_server`]).
///
/// A ticket resumes the session it came from, with both peers'
/// certificates of then: when our SVID or the bundles change (a rotation,
/// a taint, a revoke), every ticket held is dropped, so new connections
/// authenticate with what is current.
#[derive(Default)]
pub struct TicketStore {
    servers: std::sync::Mutex<(u64, HashMap<String, ServerSessions>)>,
    generation: Arc<AtomicU64>,
}

#[derive(Default)]
struct ServerSessions {
    kx_hint: Option<rustls::NamedGroup>,
    tls12: Option<rustls::client::Tls12ClientSessionValue>,
    tls13: VecDeque<rustls::client::Tls13ClientSessionValue>,
}

impl std::fmt::Debug for TicketStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketStore").finish_non_exhaustive()
    }
}

impl TicketStore {
    /// A store whose tickets hold while `generation` stays.
    pub fn new(generation: Arc<AtomicU64>) -> Self {
        Self {
            servers: Default::default(),
            generation,
        }
    }

    /// The tickets of the current generation, after dropping older ones.
    fn current(&self) -> std::sync::MutexGuard<'_, (u64, HashMap<String, ServerSessions>)> {
        let mut guard = self.servers.lock().unwrap_or_else(|e| e.into_inner());
        let now = self.generation.load(Ordering::Relaxed);
        if guard.0 != now {
            *guard = (now, HashMap::new());
        }
        guard
    }

    fn edit(&self, server: &ServerName<'_>, edit: impl FnOnce(&mut ServerSessions)) {
        let server = server.to_str();
        let mut guard = self.current();
        let servers = &mut guard.1;
        if !servers.contains_key(server.as_ref()) && servers.len() >= TICKET_SERVERS {
            // Forget some other server; tickets are only an optimisation.
            if let Some(other) = servers.keys().next().cloned() {
                servers.remove(&other);
            }
        }
        edit(servers.entry(server.into_owned()).or_default());
    }

    fn read<T>(
        &self,
        server: &ServerName<'_>,
        read: impl FnOnce(&mut ServerSessions) -> Option<T>,
    ) -> Option<T> {
        self.current()
            .1
            .get_mut(server.to_str().as_ref())
            .and_then(read)
    }
}

/// The inbound side's ticket keys, replaced (with rustls' own rotating
/// ticketer) whenever the identity's generation moves: a ticket issued
/// before a rotation, taint or revoke no longer decrypts, and the client
/// falls back to a full handshake with its current SVID.
pub struct IdentityTicketer {
    generation: Arc<AtomicU64>,
    current: std::sync::Mutex<(u64, Arc<dyn rustls::server::ProducesTickets>)>,
}

impl std::fmt::Debug for IdentityTicketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityTicketer").finish_non_exhaustive()
    }
}

impl IdentityTicketer {
    pub fn new(generation: Arc<AtomicU64>) -> Result<Self, rustls::Error> {
        let now = generation.load(Ordering::Relaxed);
        Ok(Self {
            generation,
            current: std::sync::Mutex::new((now, rustls::crypto::aws_lc_rs::Ticketer::new()?)),
        })
    }

    fn ticketer(&self) -> Arc<dyn rustls::server::ProducesTickets> {
        let mut guard = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let now = self.generation.load(Ordering::Relaxed);
        if guard.0 != now {
            match rustls::crypto::aws_lc_rs::Ticketer::new() {
                Ok(fresh) => *guard = (now, fresh),
                Err(e) => tracing::warn!(error = %e, "cannot make new session ticket keys"),
            }
        }
        guard.1.clone()
    }
}

impl rustls::server::ProducesTickets for IdentityTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        self.ticketer().lifetime()
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.ticketer().encrypt(plain)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.ticketer().decrypt(cipher)
    }
}

impl rustls::client::ClientSessionStore for TicketStore {
    fn set_kx_hint(&self, server: ServerName<'static>, group: rustls::NamedGroup) {
        self.edit(&server, |s| s.kx_hint = Some(group));
    }

    fn kx_hint(&self, server: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.read(server, |s| s.kx_hint)
    }

    fn set_tls12_session(
        &self,
        server: ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.edit(&server, |s| s.tls12 = Some(value));
    }

    fn tls12_session(
        &self,
        server: &ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.read(server, |s| s.tls12.clone())
    }

    fn remove_tls12_session(&self, server: &ServerName<'static>) {
        let _ = self.read(server, |s| s.tls12.take());
    }

    fn insert_tls13_ticket(
        &self,
        server: ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.edit(&server, |s| {
            if s.tls13.len() >= TICKETS_PER_SERVER {
                s.tls13.pop_front();
            }
            s.tls13.push_back(value);
        });
    }

    fn take_tls13_ticket(
        &self,
        server: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        // Newest first: the longest left to live.
        self.read(server, |s| s.tls13.pop_back())
    }
}

/// A resumed TLS session skips the certificate exchange: rustls hands back
/// the peer's chain from the original handshake, unverified since. SPIFFE
/// needs every connection checked against today's bundle, clock and
/// allow-list (the SVID may have expired, its CA may have left the bundle),
/// so a resumed session is verified again here; a full handshake was
/// verified already and passes. The error is an I/O error, as a failed
/// handshake's is, and is classed and logged the same way.
pub fn recheck_resumed_client(
    verifier: &SpiffeVerifier,
    conn: &rustls::ServerConnection,
) -> std::io::Result<()> {
    use rustls::server::danger::ClientCertVerifier;
    recheck_resumed(conn, |leaf, rest, now| {
        verifier.verify_client_cert(leaf, rest, now).map(|_| ())
    })
}

/// The client side of [`recheck_resumed_client`].
pub fn recheck_resumed_server(
    verifier: &SpiffeVerifier,
    conn: &rustls::ClientConnection,
    name: &ServerName<'_>,
) -> std::io::Result<()> {
    use rustls::client::danger::ServerCertVerifier;
    recheck_resumed(conn, |leaf, rest, now| {
        verifier
            .verify_server_cert(leaf, rest, name, &[], now)
            .map(|_| ())
    })
}

/// Runs `verify` on the peer chain of a resumed session; a full handshake
/// passes untouched.
fn recheck_resumed(
    state: &rustls::CommonState,
    verify: impl FnOnce(
        &CertificateDer<'_>,
        &[CertificateDer<'_>],
        UnixTime,
    ) -> Result<(), rustls::Error>,
) -> std::io::Result<()> {
    if state.handshake_kind() != Some(rustls::HandshakeKind::Resumed) {
        return Ok(());
    }
    state
        .peer_certificates()
        .and_then(|c| c.split_first())
        .ok_or(rustls::Error::NoCertificatesPresented)
        .and_then(|(leaf, rest)| verify(leaf, rest, UnixTime::now()))
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// The name sent as SNI: `--sni`, else the host of `to` when it is a DNS
/// name (an IP address sends no SNI; SPIFFE checks the ID, not the name).
pub fn server_name(sni: Option<&str>, host: &str) -> Result<ServerName<'static>, String> {
    let name = sni.unwrap_or(host);
    ServerName::try_from(name.to_string())
        .map_err(|e| format!("{name:?} is not a server name: {e}"))
}

/// Why a handshake failed, as a metric label.
pub fn failure_class(e: &std::io::Error) -> &'static str {
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return "io";
    };
    match (tls, PeerRejected::of(tls)) {
        (_, Some(PeerRejected::NotAuthorized(_))) => "not_authorized",
        (_, Some(PeerRejected::Svid(_))) => "untrusted_peer",
        (rustls::Error::NoCertificatesPresented, _) => "no_peer_certificate",
        // Expired or not yet valid (rustls' own variants), or refused by
        // rustls before our verifier ran.
        (rustls::Error::InvalidCertificate(_), _) => "untrusted_peer",
        (
            rustls::Error::PeerIncompatible(_)
            | rustls::Error::AlertReceived(rustls::AlertDescription::ProtocolVersion),
            _,
        ) => "protocol_version",
        (rustls::Error::AlertReceived(_), _) => "peer_alert",
        _ => "tls",
    }
}

/// Why a handshake failed, for the log: rustls' error, plus what to do
/// about it when the cause is a TLS version mismatch.
pub fn failure_reason(e: &std::io::Error) -> String {
    let rejected = e
        .get_ref()
        .and_then(|i| i.downcast_ref::<rustls::Error>())
        .and_then(PeerRejected::of);
    if let Some(rejected) = rejected {
        return rejected.to_string();
    }
    if failure_class(e) == "protocol_version" {
        format!(
            "{e} (the peer speaks only TLS 1.2 or older; this listener speaks TLS 1.3 \
             unless started with --tls12 / tls12 = true)"
        )
    } else {
        e.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(e: rustls::Error) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }

    #[test]
    fn a_tls12_only_peer_is_explained() {
        let e = io(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::SupportedVersionsExtensionRequired,
        ));
        assert_eq!(failure_class(&e), "protocol_version");
        assert!(
            failure_reason(&e).contains("--tls12"),
            "{}",
            failure_reason(&e)
        );

        let e = io(rustls::Error::AlertReceived(
            rustls::AlertDescription::ProtocolVersion,
        ));
        assert_eq!(failure_class(&e), "protocol_version");
    }

    #[test]
    fn other_failures_keep_their_reason() {
        let e = io(rustls::Error::NoCertificatesPresented);
        assert_eq!(failure_class(&e), "no_peer_certificate");
        assert!(!failure_reason(&e).contains("--tls12"));
        let e = std::io::Error::other("reset");
        assert_eq!(failure_class(&e), "io");
        assert_eq!(failure_reason(&e), "reset");
    }

    mod resumption {
        use super::*;
        use signet_identity::bundle::{Bundle, BundleSet};
        use signet_identity::x509_svid::X509Svid;
        use signet_testkit::pki::{Leaf, TestCa};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        const CLIENT: &str = "spiffe://example.org/client";
        const SERVER: &str = "spiffe://example.org/server";

        fn ca() -> (TestCa, String) {
            let ca = TestCa::new("root");
            let pem = ca.pem.clone();
            (ca, pem)
        }

        fn svid(ca: &TestCa, id: &str) -> X509Svid {
            let cert = ca.leaf(&Leaf {
                uris: &[id],
                ..Leaf::default()
            });
            X509Svid::from_pem(cert.pem.as_bytes(), cert.key_pem.as_bytes()).unwrap()
        }

        fn bundles(ca_pem: &str) -> BundleSet {
            let mut set = BundleSet::new();
            set.insert(
                Bundle::from_x509_pem("example.org".parse().unwrap(), ca_pem.as_bytes()).unwrap(),
            );
            set
        }

        /// Both sides' configs over one CA; the identities are returned
        /// so a test can change their bundles.
        struct Pair {
            server: Identity,
            client: Identity,
            acceptor: tokio_rustls::TlsAcceptor,
            connector: tokio_rustls::TlsConnector,
            client_verifier: Arc<SpiffeVerifier>,
            server_verifier: Arc<SpiffeVerifier>,
        }

        impl Pair {
            /// One connection; returns how each side's handshake went and
            /// what each recheck said.
            async fn connect(&self) -> (Option<rustls::HandshakeKind>, bool, bool) {
                let (a, b) = tokio::io::duplex(64 * 1024);
                let name = ServerName::try_from("127.0.0.1").unwrap();
                let server = async {
                    let mut tls = self.acceptor.accept(a).await.unwrap();
                    let conn = tls.get_ref().1;
                    let (kind, ok) = (
                        conn.handshake_kind(),
                        recheck_resumed_client(&self.client_verifier, conn).is_ok(),
                    );
                    // A byte after the tickets, so the client has them.
                    tls.write_all(b"x").await.unwrap();
                    tls.flush().await.unwrap();
                    (kind, ok)
                };
                let client = async {
                    let mut tls = self.connector.connect(name.clone(), b).await.unwrap();
                    let mut byte = [0u8; 1];
                    tls.read_exact(&mut byte).await.unwrap();
                    recheck_resumed_server(&self.server_verifier, tls.get_ref().1, &name).is_ok()
                };
                let ((kind, server_ok), client_ok) = tokio::join!(server, client);
                (kind, server_ok, client_ok)
            }
        }

        fn pair() -> Pair {
            let (issuer, ca_pem) = ca();
            pair_over(&issuer, &ca_pem)
        }

        fn pair_over(issuer: &TestCa, ca_pem: &str) -> Pair {
            let server = Identity::new();
            server.set(&svid(issuer, SERVER), bundles(ca_pem)).unwrap();
            let client = Identity::new();
            client.set(&svid(issuer, CLIENT), bundles(ca_pem)).unwrap();
            let (server_cfg, client_verifier) =
                server_config(&server, allow_list(&[], &[]), false, &[]).unwrap();
            let (client_cfg, server_verifier) = client_config(
                &client,
                allow_list(&[IdPattern::parse(SERVER).unwrap()], &[]),
                false,
            )
            .unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
            let connector = tokio_rustls::TlsConnector::from(Arc::new(client_cfg));
            Pair {
                server,
                client,
                acceptor,
                connector,
                client_verifier,
                server_verifier,
            }
        }

        #[tokio::test]
        async fn a_resumed_session_is_verified_again() {
            let pair = pair();
            let first = pair.connect().await;
            assert_eq!(first, (Some(rustls::HandshakeKind::Full), true, true));
            let second = pair.connect().await;
            assert_eq!(second, (Some(rustls::HandshakeKind::Resumed), true, true));

            // The CA leaves both bundles: a resumed session must not carry on.
            let (_, other_ca) = ca();
            pair.server.bundles().set(bundles(&other_ca));
            pair.client.bundles().set(bundles(&other_ca));
            let third = pair.connect().await;
            assert_eq!(third, (Some(rustls::HandshakeKind::Resumed), false, false));
        }

        /// A session made before a rotation carries the certificates of
        /// then: after either side's SVID changes, the next connection is
        /// a full handshake with what is current, and resumes after that.
        #[tokio::test]
        async fn no_session_outlives_a_rotation() {
            let (issuer, ca_pem) = ca();
            let pair = pair_over(&issuer, &ca_pem);
            use rustls::HandshakeKind::{Full, Resumed};
            // The handshake kinds of the next two connections.
            let next_two = async || [pair.connect().await.0, pair.connect().await.0];
            assert_eq!(next_two().await, [Some(Full), Some(Resumed)]);

            // The client's SVID rotates: its tickets are dropped.
            pair.client
                .set(&svid(&issuer, CLIENT), bundles(&ca_pem))
                .unwrap();
            assert_eq!(next_two().await, [Some(Full), Some(Resumed)]);

            // The server's rotates: tickets it issued before no longer open.
            pair.server
                .set(&svid(&issuer, SERVER), bundles(&ca_pem))
                .unwrap();
            assert_eq!(next_two().await, [Some(Full), Some(Resumed)]);
        }

        /// More connections opening at once than rustls' default store
        /// keeps tickets for (8) all resume once tickets are banked.
        #[tokio::test]
        async fn many_connections_opening_at_once_all_resume() {
            let pair = Arc::new(pair());
            // Each handshake uses one ticket and brings two.
            for _ in 0..16 {
                pair.connect().await;
            }
            let mut at_once = tokio::task::JoinSet::new();
            for _ in 0..16 {
                let pair = pair.clone();
                at_once.spawn(async move { pair.connect().await });
            }
            let kinds = at_once.join_all().await;
            assert_eq!(
                kinds,
                vec![(Some(rustls::HandshakeKind::Resumed), true, true); 16]
            );
        }
    }
}
