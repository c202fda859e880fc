//! A client of the server-agent API over mTLS. It verifies the server as
//! `spiffe://<td>/signet/server` against the bundle it holds (a bootstrap
//! bundle before the first attestation) and presents the agent SVID once
//! it has one.

use std::net::SocketAddr;
use std::sync::Arc;

use rcgen::{CertificateParams, KeyPair, SigningKey};
use signet_identity::{Bundle, BundleSet, PrivateKey, SpiffeId, X509Svid};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint, Uri};

use signet_tls::{RotatingCert, SharedBundles, SpiffeVerifier};
use signet_wire::node::node_client::NodeClient as GrpcClient;
use signet_wire::node::*;
use signet_wire::node_api::challenge_message;
use signet_wire::node_api::{MAX_MESSAGE, SERVER_ID_PATH};
use signet_wire::{bundle_from_wire, types};

/// Client failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("cannot connect to the server at {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("server refused: {0}")]
    Status(#[from] tonic::Status),
    #[error("server answered with something unexpected: {0}")]
    Protocol(String),
    #[error("key or CSR: {0}")]
    Key(String),
}

/// Evidence an agent attests with.
#[derive(Debug)]
pub enum AttestWith<'a> {
    JoinToken(&'a str),
    /// The node certificate chain (DER, leaf first) and its private key.
    X509Pop {
        chain: Vec<Vec<u8>>,
        key: &'a KeyPair,
    },
}

/// What attestation returns.
#[derive(Debug)]
pub struct Attestation {
    pub svid: X509Svid,
    pub bundle: Bundle,
    pub can_reattest: bool,
}

/// A connected server-agent API client.
#[derive(Debug, Clone)]
pub struct NodeClient {
    grpc: GrpcClient<Channel>,
    bundles: SharedBundles,
    cert: Arc<RotatingCert>,
}

impl NodeClient {
    /// Connects to `addr`, trusting `bundle` for the server's SVID and
    /// presenting `svid` when given.
    pub async fn connect(
        addr: SocketAddr,
        bundle: Bundle,
        svid: Option<&X509Svid>,
    ) -> Result<Self, ClientError> {
        let (bundles, verifier) = server_verifier(bundle)?;
        Self::connect_with(addr, bundles, verifier, svid).await
    }

    /// Connects WITHOUT verifying the server (no bootstrap bundle): only for
    /// `--insecure-bootstrap`. The bundle from attestation is trusted after.
    pub async fn connect_insecure(addr: SocketAddr) -> Result<Self, ClientError> {
        tracing::warn!(server = %addr, "insecure bootstrap: the server's certificate is NOT verified for this attestation");
        let verifier = Arc::new(signet_tls::danger::InsecureAcceptAnyServer::new());
        Self::connect_with(addr, SharedBundles::default(), verifier, None).await
    }

    async fn connect_with(
        addr: SocketAddr,
        bundles: SharedBundles,
        verifier: Arc<dyn rustls::client::danger::ServerCertVerifier>,
        svid: Option<&X509Svid>,
    ) -> Result<Self, ClientError> {
        let cert = Arc::new(RotatingCert::new());
        if let Some(svid) = svid {
            cert.set(svid)
                .map_err(|e| ClientError::Key(e.to_string()))?;
        }
        let channel = mtls_channel(addr, verifier, cert.clone()).await?;
        Ok(Self {
            // The server sends batches up to the node API's limit; tonic's
            // default would refuse those over 4 MiB.
            grpc: GrpcClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
            bundles,
            cert,
        })
    }

    /// The raw gRPC client, for calls not wrapped here.
    pub fn grpc(&mut self) -> &mut GrpcClient<Channel> {
        &mut self.grpc
    }

    /// Attests the node and returns its agent SVID (key generated here).
    pub async fn attest(&mut self, with: AttestWith<'_>) -> Result<Attestation, ClientError> {
        let key = KeyPair::generate().map_err(|e| ClientError::Key(e.to_string()))?;
        let csr = csr_for(&key)?;
        let mut params = AttestParams {
            csr,
            ..Default::default()
        };
        let pop_key = match &with {
            AttestWith::JoinToken(t) => {
                params.attestor = "join_token".into();
                params.join_token = (*t).to_owned();
                None
            }
            AttestWith::X509Pop { chain, key } => {
                params.attestor = "x509pop".into();
                params.x509pop_chain = chain.clone();
                Some(*key)
            }
        };
        let (tx, rx) = mpsc::channel(4);
        tx.send(AttestRequest {
            step: Some(attest_request::Step::Params(params)),
        })
        .await
        .map_err(|_| ClientError::Protocol("request stream closed".into()))?;
        let mut responses = self
            .grpc
            .attest(ReceiverStream::new(rx))
            .await?
            .into_inner();
        loop {
            let msg = responses.message().await?.ok_or_else(|| {
                ClientError::Protocol("the attestation stream ended without a result".into())
            })?;
            match msg.step {
                Some(attest_response::Step::Challenge(nonce)) => {
                    let key = pop_key
                        .ok_or_else(|| ClientError::Protocol("unexpected challenge".into()))?;
                    let sig = key
                        .sign(&challenge_message(&nonce))
                        .map_err(|e| ClientError::Key(e.to_string()))?;
                    tx.send(AttestRequest {
                        step: Some(attest_request::Step::ChallengeResponse(sig)),
                    })
                    .await
                    .map_err(|_| ClientError::Protocol("request stream closed".into()))?;
                }
                Some(attest_response::Step::Result(r)) => {
                    let svid = svid_from_wire(r.svid, &key)?;
                    let bundle = r
                        .bundle
                        .as_ref()
                        .map(bundle_from_wire)
                        .transpose()
                        .map_err(ClientError::Protocol)?
                        .ok_or_else(|| ClientError::Protocol("no bundle in the result".into()))?;
                    self.use_svid(&svid, Some(bundle.clone()))?;
                    return Ok(Attestation {
                        svid,
                        bundle,
                        can_reattest: r.can_reattest,
                    });
                }
                None => return Err(ClientError::Protocol("empty attestation message".into())),
            }
        }
    }

    /// Presents `svid` (and trusts `bundle`) on new connections.
    pub fn use_svid(&self, svid: &X509Svid, bundle: Option<Bundle>) -> Result<(), ClientError> {
        self.cert
            .set(svid)
            .map_err(|e| ClientError::Key(e.to_string()))?;
        if let Some(b) = bundle {
            let mut set = BundleSet::new();
            set.insert(b);
            self.bundles.set(set);
        }
        Ok(())
    }

    /// A new agent SVID for a fresh key.
    pub async fn renew(&mut self) -> Result<X509Svid, ClientError> {
        let key = KeyPair::generate().map_err(|e| ClientError::Key(e.to_string()))?;
        let r = self
            .grpc
            .renew_agent_svid(RenewAgentSvidRequest {
                csr: csr_for(&key)?,
            })
            .await?
            .into_inner();
        svid_from_wire(r.svid, &key)
    }

    /// The stream of authorized entries and bundles, each response the
    /// full set.
    pub async fn subscribe(&mut self) -> Result<tonic::Streaming<SubscribeResponse>, ClientError> {
        Ok(self
            .grpc
            .subscribe(SubscribeRequest {
                since_revision: 0,
                known_entries: Vec::new(),
                deltas: false,
            })
            .await?
            .into_inner())
    }

    /// The stream of authorized entries and bundles as deltas: the first
    /// response against `known` (entry id, revision) as of `since_revision`,
    /// each later one against the previous response (see [`apply_delta`]).
    pub async fn subscribe_deltas(
        &mut self,
        since_revision: u64,
        known: impl IntoIterator<Item = (String, u64)>,
    ) -> Result<tonic::Streaming<SubscribeResponse>, ClientError> {
        Ok(self
            .grpc
            .subscribe(SubscribeRequest {
                since_revision,
                known_entries: known
                    .into_iter()
                    .map(|(id, revision)| EntryVersion { id, revision })
                    .collect(),
                deltas: true,
            })
            .await?
            .into_inner())
    }

    /// An X509-SVID for an authorized entry, for a key generated here.
    pub async fn mint_x509(&mut self, entry_id: &str) -> Result<X509Svid, ClientError> {
        let mut svids = self.mint_x509_batch(&[entry_id.to_owned()]).await?;
        svids
            .pop()
            .ok_or_else(|| ClientError::Protocol("no SVID returned".into()))
    }

    /// X509-SVIDs for several authorized entries in one call, each for its
    /// own key generated here; returned in the order asked.
    pub async fn mint_x509_batch(
        &mut self,
        entry_ids: &[String],
    ) -> Result<Vec<X509Svid>, ClientError> {
        let mut keys = Vec::with_capacity(entry_ids.len());
        let mut params = Vec::with_capacity(entry_ids.len());
        for id in entry_ids {
            let key = KeyPair::generate().map_err(|e| ClientError::Key(e.to_string()))?;
            params.push(MintX509SvidParams {
                entry_id: id.clone(),
                csr: Vec::new(),
                public_key: rcgen::PublicKeyData::subject_public_key_info(&key),
            });
            keys.push(key);
        }
        let r = self
            .grpc
            .mint_x509_svids(MintX509SvidsRequest { params })
            .await?
            .into_inner();
        if r.svids.len() != keys.len() {
            return Err(ClientError::Protocol(format!(
                "asked for {} SVIDs, got {}",
                keys.len(),
                r.svids.len()
            )));
        }
        r.svids
            .into_iter()
            .zip(keys.iter())
            .map(|(svid, key)| svid_from_wire(Some(svid), key))
            .collect()
    }
}

fn csr_for(key: &KeyPair) -> Result<Vec<u8>, ClientError> {
    let params = CertificateParams::new(Vec::<String>::new())
        .map_err(|e| ClientError::Key(e.to_string()))?;
    Ok(params
        .serialize_request(key)
        .map_err(|e| ClientError::Key(e.to_string()))?
        .der()
        .to_vec())
}

fn svid_from_wire(svid: Option<types::X509Svid>, key: &KeyPair) -> Result<X509Svid, ClientError> {
    let svid = svid.ok_or_else(|| ClientError::Protocol("no SVID in the answer".into()))?;
    let chain = svid
        .cert_chain
        .into_iter()
        .map(rustls_pki_types::CertificateDer::from)
        .collect();
    X509Svid::new(chain, PrivateKey::from_pkcs8_der(key.serialize_der()))
        .map_err(|e| ClientError::Protocol(e.to_string()))
}

/// The bundle as a verifier of the server's SVID: it must chain to
/// `bundle` and name `spiffe://<td>/signet/server`.
fn server_verifier(bundle: Bundle) -> Result<(SharedBundles, Arc<SpiffeVerifier>), ClientError> {
    let td = bundle.trust_domain().clone();
    let mut set = BundleSet::new();
    set.insert(bundle);
    let bundles = SharedBundles::new(set);
    let expected = td
        .id_with_path(SERVER_ID_PATH)
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    let verifier = Arc::new(SpiffeVerifier::new(
        bundles.clone(),
        Arc::new(move |id: &SpiffeId| *id == expected),
    ));
    Ok((bundles, verifier))
}

/// A gRPC channel to a server's mTLS API at `addr` (the admin API on
/// `--admin-listen`), presenting `svid` and accepting only a Signet
/// server's SVID (`spiffe://<td>/signet/server`) of a trust domain in
/// `bundles`, verified against that domain's bundle: a workload of a
/// federated trust domain reaches the other domain's server this way.
pub async fn server_channel(
    addr: SocketAddr,
    bundles: BundleSet,
    svid: &X509Svid,
) -> Result<Channel, ClientError> {
    let verifier = Arc::new(SpiffeVerifier::new(
        SharedBundles::new(bundles),
        Arc::new(|id: &SpiffeId| id.path() == SERVER_ID_PATH),
    ));
    let cert = Arc::new(RotatingCert::new());
    cert.set(svid)
        .map_err(|e| ClientError::Key(e.to_string()))?;
    mtls_channel(addr, verifier, cert).await
}

async fn mtls_channel(
    addr: SocketAddr,
    verifier: Arc<dyn rustls::client::danger::ServerCertVerifier>,
    cert: Arc<RotatingCert>,
) -> Result<Channel, ClientError> {
    let tls =
        signet_tls::client_config(cert, verifier).map_err(|e| ClientError::Key(e.to_string()))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let err = |reason: String| ClientError::Connect { addr, reason };
    // The connector below does TLS itself; tonic must not try to.
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| err(e.to_string()))?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let connector = connector.clone();
            async move {
                let tcp = TcpStream::connect(addr).await?;
                // No Nagle delay on gRPC's small frames (see the server).
                tcp.set_nodelay(true)?;
                let name = rustls_pki_types::ServerName::try_from("signet-server")
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
        .map_err(|e| err(format!("{e:?}")))?;
    Ok(channel)
}
