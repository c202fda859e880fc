//! The server-agent API over mTLS (DESIGN.md section 1).
//!
//! TLS: the server presents its own X509-SVID (`spiffe://<td>/signet/server`,
//! rotated at half-life); client certificates are optional at the TLS layer
//! (an agent has none before attesting) but, when present, must be agent
//! X509-SVIDs of this trust domain. Every call but `Attest` then requires an
//! attested, unbanned agent whose SVID serial is the one on record, and only
//! ever touches entries authorized for that agent (security invariant 1).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use rcgen::PublicKeyData;
use signet_identity::{Bundle, BundleSet, Entry, SpiffeId, X509Svid, x509_svid::inspect_leaf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Request, Response, Status, Streaming};

use crate::attest::node::{AttestError, Attested, Challenger, Evidence, NodeAttestor};
use crate::authz;
use crate::ca::SvidOptions;
use crate::datastore::{AttestedNode, ChangeKind};
use crate::{Server, ServerError};
use signet_tls::{RotatingCert, SharedBundles, SpiffeVerifier};
use signet_wire::node::node_server::{Node, NodeServer};
use signet_wire::node::*;
use signet_wire::types;

use signet_wire::node_api::MAX_MESSAGE;
pub use signet_wire::node_api::{AGENT_ID_PREFIX, SERVER_ID_PATH};
/// How long an agent has to answer a challenge.
const CHALLENGE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The most bytes an unauthenticated `Attest` stream may send (its join
/// token or x509pop evidence and challenge answers); the large batch limit
/// applies only to agents that present an agent SVID.
pub const ATTEST_BODY_LIMIT: usize = 64 * 1024;
/// TLS handshakes in progress at once; connections past it are closed.
const MAX_PENDING_HANDSHAKES: usize = 256;
/// The gRPC path of `Attest`.
const ATTEST_PATH: &str = "/signet.node.Node/Attest";
/// A subscription re-evaluates at least this often (entry expiry).
const SUBSCRIPTION_REFRESH: Duration = Duration::from_secs(30);

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The Node gRPC service.
#[derive(Clone)]
pub struct NodeService {
    server: Arc<Server>,
    attestors: Arc<HashMap<&'static str, Arc<dyn NodeAttestor>>>,
}

impl std::fmt::Debug for NodeService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeService")
            .field("attestors", &self.attestors.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl NodeService {
    pub fn new(server: Arc<Server>, attestors: Vec<Arc<dyn NodeAttestor>>) -> Self {
        let attestors = attestors.into_iter().map(|a| (a.name(), a)).collect();
        Self {
            server,
            attestors: Arc::new(attestors),
        }
    }

    /// The attested node behind a request's client certificate.
    async fn peer<T>(&self, req: &Request<T>) -> Result<AttestedNode, Status> {
        let certs = req
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|i| i.peer_certs())
            .ok_or_else(|| Status::unauthenticated("an agent X509-SVID is required"))?;
        let leaf = certs
            .first()
            .ok_or_else(|| Status::unauthenticated("an agent X509-SVID is required"))?;
        // The TLS layer verified the chain; this reads the ID and serial.
        let info = inspect_leaf(leaf).map_err(|e| Status::unauthenticated(e.to_string()))?;
        let node = self
            .server
            .store()
            .get_node(&info.id)
            .await
            .map_err(ServerError::from)?
            .ok_or_else(|| denied(&info.id, "is not attested (evicted or unknown)"))?;
        if node.banned {
            return Err(denied(&info.id, "is banned"));
        }
        if node.svid_serial != info.serial {
            return Err(denied(
                &info.id,
                "presented an SVID that is no longer current",
            ));
        }
        Ok(node)
    }

    async fn bundles_for(&self, entries: &[Entry]) -> Result<Vec<types::Bundle>, Status> {
        let own = self.server.own_bundle().await?;
        let mut out = vec![wire_bundle(&own)?];
        let mut tds: Vec<_> = entries
            .iter()
            .flat_map(|e| e.federates_with.iter())
            .collect();
        tds.sort();
        tds.dedup();
        for td in tds {
            if let Some(b) = self
                .server
                .store()
                .get_bundle(td)
                .await
                .map_err(ServerError::from)?
            {
                out.push(wire_bundle(&b)?);
            }
        }
        Ok(out)
    }

    async fn sign_agent_svid(
        &self,
        id: &SpiffeId,
        csr: &[u8],
    ) -> Result<(types::X509Svid, i64, String), Status> {
        let opts = SvidOptions {
            ttl: Some(self.server.config().agent_svid_ttl),
            dns_names: Vec::new(),
        };
        let chain = self
            .server
            .ca()
            .sign_x509_svid_csr(csr, id, &opts)
            .map_err(ServerError::from)?;
        let svid = wire_svid(id, &chain)?;
        let (exp, serial) = (svid.expires_at, svid.serial.clone());
        Ok((svid, exp, serial))
    }
}

fn denied(id: &SpiffeId, why: &str) -> Status {
    tracing::warn!(agent_id = %id, reason = why, "agent request refused");
    Status::permission_denied(format!("agent {id} {why}"))
}

fn wire_bundle(b: &Bundle) -> Result<types::Bundle, Status> {
    types::Bundle::try_from(b).map_err(|e| Status::internal(e.to_string()))
}

fn wire_svid(
    id: &SpiffeId,
    chain: &[rustls_pki_types::CertificateDer<'static>],
) -> Result<types::X509Svid, Status> {
    let leaf = chain
        .first()
        .ok_or_else(|| Status::internal("the CA returned an empty chain"))?;
    let info = inspect_leaf(leaf).map_err(|e| Status::internal(e.to_string()))?;
    Ok(types::X509Svid {
        spiffe_id: id.to_string(),
        cert_chain: chain.iter().map(|c| c.to_vec()).collect(),
        expires_at: info.not_after,
        serial: info.serial,
    })
}

impl From<AttestError> for Status {
    fn from(e: AttestError) -> Self {
        match e {
            AttestError::UnknownAttestor(_) | AttestError::InvalidEvidence(_) => {
                Status::invalid_argument(e.to_string())
            }
            AttestError::Denied(_) | AttestError::Challenge(_) => {
                Status::permission_denied(e.to_string())
            }
            AttestError::Internal(_) => Status::internal(e.to_string()),
        }
    }
}

/// Relays challenges over the Attest stream.
struct StreamChallenger<'a> {
    tx: &'a mpsc::Sender<Result<AttestResponse, Status>>,
    inbound: &'a mut Streaming<AttestRequest>,
}

#[async_trait::async_trait]
impl Challenger for StreamChallenger<'_> {
    async fn challenge(&mut self, challenge: Vec<u8>) -> Result<Vec<u8>, AttestError> {
        let msg = AttestResponse {
            step: Some(attest_response::Step::Challenge(challenge)),
        };
        self.tx
            .send(Ok(msg))
            .await
            .map_err(|_| AttestError::Challenge("the agent went away".into()))?;
        match tokio::time::timeout(CHALLENGE_TIMEOUT, self.inbound.message()).await {
            Err(_) => Err(AttestError::Challenge(
                "no answer to the challenge in time".into(),
            )),
            Ok(Err(e)) => Err(AttestError::Challenge(e.message().to_owned())),
            Ok(Ok(Some(AttestRequest {
                step: Some(attest_request::Step::ChallengeResponse(r)),
            }))) => Ok(r),
            Ok(Ok(_)) => Err(AttestError::Challenge(
                "expected a challenge response".into(),
            )),
        }
    }
}

impl NodeService {
    async fn run_attestation(
        &self,
        params: AttestParams,
        tx: &mpsc::Sender<Result<AttestResponse, Status>>,
        inbound: &mut Streaming<AttestRequest>,
    ) -> Result<AttestResult, Status> {
        let attestor = self
            .attestors
            .get(params.attestor.as_str())
            .ok_or_else(|| Status::from(AttestError::UnknownAttestor(params.attestor.clone())))?;
        if params.csr.is_empty() {
            return Err(Status::invalid_argument(
                "a CSR for the agent SVID is required",
            ));
        }
        let evidence = Evidence {
            join_token: (!params.join_token.is_empty()).then(|| params.join_token.clone()),
            x509pop_chain: params.x509pop_chain.clone(),
        };
        let Attested {
            agent_id,
            selectors,
            can_reattest,
        } = attestor
            .attest(&evidence, &mut StreamChallenger { tx, inbound })
            .await
            .map_err(|e| {
                tracing::warn!(attestor = attestor.name(), error = %e, "node attestation failed");
                Status::from(e)
            })?;
        let store = self.server.store();
        let existing = store.get_node(&agent_id).await.map_err(ServerError::from)?;
        if existing.as_ref().is_some_and(|n| n.banned) {
            return Err(denied(&agent_id, "is banned"));
        }
        let (svid, expires_at, serial) = self.sign_agent_svid(&agent_id, &params.csr).await?;
        let node = AttestedNode {
            spiffe_id: agent_id.clone(),
            attestor: attestor.name().to_owned(),
            selectors,
            svid_serial: serial,
            svid_expires_at: expires_at,
            banned: false,
            can_reattest,
        };
        // Over the record as checked: a ban in between is kept.
        if !store
            .swap_node(existing.as_ref(), &node)
            .await
            .map_err(ServerError::from)?
        {
            return Err(denied(&agent_id, "changed (banned?) while attesting"));
        }
        self.server.wrote();
        tracing::info!(agent_id = %agent_id, attestor = attestor.name(), "agent attested");
        Ok(AttestResult {
            svid: Some(svid),
            bundle: Some(wire_bundle(&self.server.own_bundle().await?)?),
            can_reattest,
        })
    }
}

#[tonic::async_trait]
impl Node for NodeService {
    type AttestStream = BoxStream<AttestResponse>;
    type SubscribeStream = BoxStream<SubscribeResponse>;

    async fn attest(
        &self,
        req: Request<Streaming<AttestRequest>>,
    ) -> Result<Response<Self::AttestStream>, Status> {
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(CHALLENGE_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no attestation parameters in time"))??;
        let Some(AttestRequest {
            step: Some(attest_request::Step::Params(params)),
        }) = first
        else {
            return Err(Status::invalid_argument(
                "the first message must carry attestation parameters",
            ));
        };
        let (tx, rx) = mpsc::channel(4);
        let service = self.clone();
        tokio::spawn(async move {
            let result = service.run_attestation(params, &tx, &mut inbound).await;
            let msg = result.map(|r| AttestResponse {
                step: Some(attest_response::Step::Result(r)),
            });
            let _ = tx.send(msg).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn renew_agent_svid(
        &self,
        req: Request<RenewAgentSvidRequest>,
    ) -> Result<Response<RenewAgentSvidResponse>, Status> {
        let node = self.peer(&req).await?;
        let (svid, expires_at, serial) = self
            .sign_agent_svid(&node.spiffe_id, &req.get_ref().csr)
            .await?;
        let renewed = AttestedNode {
            svid_serial: serial,
            svid_expires_at: expires_at,
            ..node.clone()
        };
        // Only over the record as it was checked: a ban, eviction or other
        // renewal in between wins, and the SVID just signed is dropped.
        let swapped = self
            .server
            .store()
            .swap_node(Some(&node), &renewed)
            .await
            .map_err(ServerError::from)?;
        if !swapped {
            return Err(denied(
                &node.spiffe_id,
                "was banned, evicted or renewed while renewing",
            ));
        }
        tracing::info!(agent_id = %node.spiffe_id, "agent SVID renewed");
        Ok(Response::new(RenewAgentSvidResponse { svid: Some(svid) }))
    }

    async fn subscribe(
        &self,
        req: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let node = self.peer(&req).await?;
        let request = req.into_inner();
        // What the agent holds, by entry id and revision: with deltas, only
        // what differs from it is sent.
        let mut held: Option<HashMap<String, u64>> = request.deltas.then(|| {
            request
                .known_entries
                .iter()
                .map(|k| (k.id.clone(), k.revision))
                .collect()
        });
        let (tx, rx) = mpsc::channel(4);
        let service = self.clone();
        tokio::spawn(async move {
            let _subscribed = crate::telemetry::Subscribed::new();
            let mut revisions = service.server.watch_revision();
            let mut last: Option<SubscribeResponse> = None;
            // The revision the state was computed at, and the parent IDs
            // it was computed from: a change under none of them (and not
            // to this node or a node alias or a bundle) leaves it as it is.
            let mut computed_at = 0u64;
            let mut parents: HashSet<SpiffeId> = HashSet::new();
            let mut refresh = true;
            loop {
                let revision = *revisions.borrow_and_update();
                let concerned = refresh
                    || match service.server.changes_between(computed_at, revision) {
                        Some(changes) => changes
                            .iter()
                            .any(|c| concerns(&c.kind, &node.spiffe_id, &parents)),
                        None => true,
                    };
                refresh = false;
                if concerned {
                    let state = async {
                        let store = service.server.store();
                        match store
                            .get_node(&node.spiffe_id)
                            .await
                            .map_err(ServerError::from)?
                        {
                            Some(n) if n.banned => {
                                return Err(denied(&node.spiffe_id, "is banned"));
                            }
                            // Renewed: this connection's SVID is no longer
                            // the current one (the agent reconnects with it).
                            Some(n) if n.svid_serial != node.svid_serial => {
                                return Err(denied(
                                    &node.spiffe_id,
                                    "presented an SVID that is no longer current",
                                ));
                            }
                            Some(_) => {}
                            None => return Err(denied(&node.spiffe_id, "is no longer attested")),
                        }
                        let (entries, parents) = authz::authorized_entries_and_parents(
                            store.as_ref(),
                            &node,
                            service.server.now_secs(),
                        )
                        .await
                        .map_err(ServerError::from)?;
                        let bundles = service.bundles_for(&entries).await?;
                        Ok::<_, Status>((
                            SubscribeResponse {
                                revision,
                                entries: entries.iter().map(types::Entry::from).collect(),
                                bundles,
                                delta: false,
                                removed_entry_ids: Vec::new(),
                            },
                            parents,
                        ))
                    }
                    .await;
                    let state = match state {
                        Err(status) => {
                            let _ = tx.send(Err(status)).await;
                            return;
                        }
                        Ok((state, now_parents)) => {
                            parents = now_parents;
                            state
                        }
                    };
                    let changed = last
                        .as_ref()
                        .is_none_or(|l| l.entries != state.entries || l.bundles != state.bundles);
                    if changed {
                        let msg = match held.as_mut() {
                            Some(held) => delta_from(held, &state),
                            None => state.clone(),
                        };
                        metrics::counter!("signet_server_subscription_entries_sent_total")
                            .increment(msg.entries.len() as u64);
                        if tx.send(Ok(msg)).await.is_err() {
                            return;
                        }
                        last = Some(state);
                    }
                } else {
                    metrics::counter!("signet_server_subscription_wakes_skipped_total")
                        .increment(1);
                }
                computed_at = revision;
                tokio::select! {
                    r = revisions.changed() => if r.is_err() { return },
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(SUBSCRIPTION_REFRESH) => refresh = true,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn mint_x509_svids(
        &self,
        req: Request<MintX509SvidsRequest>,
    ) -> Result<Response<MintX509SvidsResponse>, Status> {
        let node = self.peer(&req).await?;
        let now = self.server.now_secs();
        let entries = authz::authorized_entries(self.server.store().as_ref(), &node, now)
            .await
            .map_err(ServerError::from)?;
        let mut svids = Vec::with_capacity(req.get_ref().params.len());
        for p in &req.get_ref().params {
            let entry = entries.iter().find(|e| e.id == p.entry_id).ok_or_else(|| {
                tracing::warn!(agent_id = %node.spiffe_id, entry_id = %p.entry_id, "agent asked for an entry it is not authorized for");
                Status::permission_denied(format!("entry {} is not authorized for agent {}", p.entry_id, node.spiffe_id))
            })?;
            let opts = SvidOptions {
                ttl: entry.x509_ttl.map(Duration::from_secs),
                dns_names: entry.dns_names.clone(),
            };
            let ca = self.server.ca();
            let chain = match (p.csr.is_empty(), p.public_key.is_empty()) {
                (false, true) => ca.sign_x509_svid_csr(&p.csr, &entry.spiffe_id, &opts),
                (true, false) => ca.sign_x509_svid(&p.public_key, &entry.spiffe_id, &opts),
                _ => {
                    return Err(Status::invalid_argument(
                        "each item needs exactly one of csr and public_key",
                    ));
                }
            }
            .map_err(ServerError::from)?;
            svids.push(wire_svid(&entry.spiffe_id, &chain)?);
        }
        Ok(Response::new(MintX509SvidsResponse { svids }))
    }

    async fn mint_jwt_svid(
        &self,
        req: Request<MintJwtSvidRequest>,
    ) -> Result<Response<MintJwtSvidResponse>, Status> {
        let node = self.peer(&req).await?;
        let r = req.get_ref();
        let entry = authz::authorized_entry(self.server.store().as_ref(), &node, &r.entry_id, self.server.now_secs())
            .await
            .map_err(ServerError::from)?
            .ok_or_else(|| {
                tracing::warn!(agent_id = %node.spiffe_id, entry_id = %r.entry_id, "agent asked for an entry it is not authorized for");
                Status::permission_denied(format!("entry {} is not authorized for agent {}", r.entry_id, node.spiffe_id))
            })?;
        let token = self
            .server
            .ca()
            .sign_jwt_svid(
                &entry.spiffe_id,
                &r.audience,
                entry.jwt_ttl.map(Duration::from_secs),
            )
            .map_err(ServerError::from)?;
        let expires_at = signet_identity::JwtSvid::parse_insecure(&token)
            .map(|s| s.expiry() as i64)
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(MintJwtSvidResponse { token, expires_at }))
    }

    async fn fetch_bundles(
        &self,
        req: Request<FetchBundlesRequest>,
    ) -> Result<Response<FetchBundlesResponse>, Status> {
        let node = self.peer(&req).await?;
        let entries =
            authz::authorized_entries(self.server.store().as_ref(), &node, self.server.now_secs())
                .await
                .map_err(ServerError::from)?;
        Ok(Response::new(FetchBundlesResponse {
            bundles: self.bundles_for(&entries).await?,
        }))
    }
}

/// Issues the server's own X509-SVID into `cert`.
/// The server's own X509-SVID (`spiffe://TD/signet/server`), which the
/// agent API and the `https_spiffe` bundle endpoint present; renewed at
/// half-life.
#[derive(Debug)]
pub(crate) struct ServerSvid {
    cert: Arc<RotatingCert>,
    not_after: std::sync::Mutex<std::time::SystemTime>,
}

impl ServerSvid {
    /// How often a listener presenting it checks whether it is due: every
    /// 5 s, or often enough for short SVIDs (ten checks per life) that one
    /// cut short at its authority's end is renewed before it expires.
    pub(crate) fn check_every(server: &Server) -> Duration {
        (server.config().ca.x509_svid_ttl / 10)
            .clamp(Duration::from_millis(100), Duration::from_secs(5))
    }

    pub(crate) fn issue(server: &Server) -> Result<Self, ServerError> {
        let cert = Arc::new(RotatingCert::new());
        let not_after = Self::sign_into(server, &cert)?;
        Ok(Self {
            cert,
            not_after: std::sync::Mutex::new(not_after),
        })
    }

    pub(crate) fn cert(&self) -> Arc<RotatingCert> {
        self.cert.clone()
    }

    /// Renews it when half its life is gone (a failure is logged; the
    /// current one stays).
    pub(crate) fn renew_if_due(&self, server: &Server) {
        let mut not_after = self
            .not_after
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let left = not_after.duration_since(server.now()).unwrap_or_default();
        if left > server.config().ca.x509_svid_ttl / 2 {
            return;
        }
        match Self::sign_into(server, &self.cert) {
            Ok(t) => *not_after = t,
            Err(e) => tracing::error!(error = %e, "cannot renew the server SVID"),
        }
    }

    fn sign_into(
        server: &Server,
        cert: &RotatingCert,
    ) -> Result<std::time::SystemTime, ServerError> {
        let id = server
            .trust_domain()
            .id_with_path(SERVER_ID_PATH)
            .map_err(|e| ServerError::InvalidArgument(e.to_string()))?;
        let key =
            rcgen::KeyPair::generate().map_err(|e| ServerError::InvalidArgument(e.to_string()))?;
        let chain = server.ca().sign_x509_svid(
            &key.subject_public_key_info(),
            &id,
            &SvidOptions::default(),
        )?;
        let svid = X509Svid::new(
            chain,
            signet_identity::PrivateKey::from_pkcs8_der(key.serialize_der()),
        )
        .map_err(|e| ServerError::InvalidArgument(e.to_string()))?;
        cert.set(&svid)
            .map_err(|e| ServerError::InvalidArgument(e.to_string()))?;
        Ok(svid.not_after())
    }
}

/// Serves the Node API on `listener` (TLS) until `stop` resolves.
pub async fn serve_node(
    server: Arc<Server>,
    attestors: Vec<Arc<dyn NodeAttestor>>,
    listener: TcpListener,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let td = server.trust_domain().clone();
    // Anonymous clients may connect: attestation happens over this API.
    // An agent's ID: under the agent prefix, or any ID outside Signet's
    // reserved path that a join token gave it (as `create_join_token`
    // allows). Every call then checks the peer is an attested node
    // presenting its current SVID.
    let (incoming, accept) = accept_tls(
        server.clone(),
        listener,
        Arc::new(move |id: &SpiffeId| {
            id.is_member_of(&td) && (id.path().starts_with(AGENT_ID_PREFIX) || !id.is_reserved())
        }),
        false,
        false,
    )
    .await?;
    let server_for_downstream = server.clone();
    let service = NodeServer::new(NodeService::new(server, attestors))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let result = tonic::transport::Server::builder()
        .layer(crate::telemetry::ApiMetricsLayer::new("node"))
        .layer(tower::util::MapRequestLayer::new(limit_attest_body))
        .add_service(service)
        .add_service(crate::downstream::DownstreamServer::new(
            crate::downstream::DownstreamService::new(server_for_downstream),
        ))
        .serve_with_incoming_shutdown(incoming, stop)
        .await;
    accept.finish().await;
    result.map_err(|e| ServerError::InvalidArgument(format!("agent API: {e}")))
}

/// TLS connections accepted by [`accept_tls`], handshakes done.
pub(crate) type TlsIncoming =
    ReceiverStream<Result<tokio_rustls::server::TlsStream<TcpStream>, std::io::Error>>;

/// The task accepting connections for a [`TlsIncoming`].
pub(crate) struct AcceptTask {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl AcceptTask {
    /// Stops accepting and waits for the task to end.
    pub(crate) async fn finish(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Accepts TLS connections on `listener` for a gRPC server of this
/// server: it presents the server SVID (`spiffe://<td>/signet/server`,
/// renewed on schedule) and verifies client X509-SVIDs against the own
/// bundle, and the federated ones when `federated` (refreshed on every
/// change), admitting the IDs `authorize` allows; a client without a
/// certificate gets in only when `client_auth_required` is false.
/// Handshakes are bounded in number and time; failures are logged.
pub(crate) async fn accept_tls(
    server: Arc<Server>,
    listener: TcpListener,
    authorize: signet_tls::Authorizer,
    client_auth_required: bool,
    federated: bool,
) -> Result<(TlsIncoming, AcceptTask), ServerError> {
    let svid = ServerSvid::issue(&server)?;
    let bundles = SharedBundles::new(trusted_bundles(&server, federated).await?);
    let verifier = Arc::new(
        SpiffeVerifier::new(bundles.clone(), authorize).client_auth_required(client_auth_required),
    );
    let tls = signet_tls::server_config(svid.cert(), verifier)
        .map_err(|e| ServerError::InvalidArgument(e.to_string()))?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

    let (conn_tx, conn_rx) =
        mpsc::channel::<Result<tokio_rustls::server::TlsStream<TcpStream>, std::io::Error>>(64);
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_HANDSHAKES));
    let task = {
        let server = server.clone();
        tokio::spawn(async move {
            let mut revisions = server.watch_revision();
            let mut renew = tokio::time::interval(ServerSvid::check_every(&server));
            loop {
                tokio::select! {
                    _ = stop_rx.changed() => return,
                    _ = revisions.changed() => {
                        match trusted_bundles(&server, federated).await {
                            Ok(set) => bundles.set(set),
                            Err(e) => tracing::warn!(error = %e, "cannot refresh the bundles for TLS clients"),
                        }
                    }
                    _ = renew.tick() => svid.renew_if_due(&server),
                    conn = listener.accept() => match conn {
                        Ok((tcp, peer)) => {
                            // gRPC's small frames must not wait for the
                            // peer's delayed ACK (Nagle): tens of ms per push.
                            let _ = tcp.set_nodelay(true);
                            let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                                log_handshake_failure(peer, "too many handshakes in progress; connection closed");
                                continue;
                            };
                            let acceptor = acceptor.clone();
                            let conn_tx = conn_tx.clone();
                            tokio::spawn(async move {
                                let _permit = permit;
                                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                                    Ok(Ok(tls)) => { let _ = conn_tx.send(Ok(tls)).await; }
                                    Ok(Err(e)) => log_handshake_failure(peer, &e.to_string()),
                                    Err(_) => log_handshake_failure(peer, "timed out"),
                                }
                            });
                        }
                        Err(e) => tracing::warn!(error = %e, "accept failed"),
                    },
                }
            }
        })
    };
    Ok((
        ReceiverStream::new(conn_rx),
        AcceptTask {
            stop: stop_tx,
            task,
        },
    ))
}

/// The own bundle, and every federated one when `federated`.
async fn trusted_bundles(server: &Server, federated: bool) -> Result<BundleSet, ServerError> {
    let mut set = BundleSet::new();
    if federated {
        for b in server.store().list_bundles().await? {
            set.insert(b);
        }
    }
    set.insert(server.own_bundle().await?);
    Ok(set)
}

/// Whether a change can alter what `agent` is authorized for, computed from
/// `parents` (see [`authz::authorized_entries_and_parents`]): an entry
/// under one of them, a node alias (any agent may gain or lose one), the
/// agent's own node record, a bundle.
fn concerns(change: &ChangeKind, agent: &SpiffeId, parents: &HashSet<SpiffeId>) -> bool {
    match change {
        ChangeKind::EntryCreated {
            parent_id, node, ..
        }
        | ChangeKind::EntryDeleted {
            parent_id, node, ..
        } => *node || parents.contains(parent_id),
        ChangeKind::EntryUpdated {
            parent_id,
            old_parent_id,
            node,
            ..
        } => *node || parents.contains(parent_id) || parents.contains(old_parent_id),
        ChangeKind::NodeUpdated { spiffe_id } | ChangeKind::NodeDeleted { spiffe_id } => {
            spiffe_id == agent
        }
        ChangeKind::BundleUpdated { .. } | ChangeKind::BundleDeleted { .. } => true,
    }
}

/// `state` as a delta against what the agent `held` (entry id -> revision):
/// the entries it lacks or holds at another revision, and the ids it holds
/// that are no longer authorized; `held` becomes `state`'s entries.
fn delta_from(held: &mut HashMap<String, u64>, state: &SubscribeResponse) -> SubscribeResponse {
    let entries: Vec<types::Entry> = state
        .entries
        .iter()
        .filter(|e| held.get(&e.id) != Some(&e.revision))
        .cloned()
        .collect();
    let now: HashMap<String, u64> = state
        .entries
        .iter()
        .map(|e| (e.id.clone(), e.revision))
        .collect();
    let mut removed: Vec<String> = held
        .keys()
        .filter(|id| !now.contains_key(*id))
        .cloned()
        .collect();
    removed.sort();
    *held = now;
    SubscribeResponse {
        revision: state.revision,
        entries,
        bundles: state.bundles.clone(),
        delta: true,
        removed_entry_ids: removed,
    }
}

/// Bounds the body of an `Attest` call (anyone may make one, before any
/// authentication) to [`ATTEST_BODY_LIMIT`] bytes; the stream fails past it.
fn limit_attest_body(
    req: tonic::codegen::http::Request<tonic::body::Body>,
) -> tonic::codegen::http::Request<tonic::body::Body> {
    if req.uri().path() == ATTEST_PATH {
        req.map(|body| {
            tonic::body::Body::new(http_body_util::Limited::new(body, ATTEST_BODY_LIMIT))
        })
    } else {
        req
    }
}

fn log_handshake_failure(peer: SocketAddr, why: &str) {
    tracing::warn!(%peer, reason = why, "TLS handshake failed (agent or admin API)");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_change_concerns_an_agent_under_its_parents_or_to_its_node() {
        let id = |s: &str| SpiffeId::parse(s).unwrap();
        let agent = id("spiffe://example.org/agent/a");
        let parents: HashSet<SpiffeId> = [agent.clone(), id("spiffe://example.org/web")].into();
        let created = |parent: &str, node: bool| ChangeKind::EntryCreated {
            entry_id: "e".into(),
            parent_id: id(parent),
            node,
        };
        assert!(concerns(
            &created("spiffe://example.org/agent/a", false),
            &agent,
            &parents
        ));
        assert!(concerns(
            &created("spiffe://example.org/web", false),
            &agent,
            &parents
        ));
        assert!(!concerns(
            &created("spiffe://example.org/agent/b", false),
            &agent,
            &parents
        ));
        // A node alias may be the agent's whatever its parent.
        assert!(concerns(
            &created("spiffe://example.org/signet/server", true),
            &agent,
            &parents
        ));
        // An entry moved away from the agent concerns it.
        let moved = ChangeKind::EntryUpdated {
            entry_id: "e".into(),
            parent_id: id("spiffe://example.org/agent/b"),
            old_parent_id: agent.clone(),
            node: false,
        };
        assert!(concerns(&moved, &agent, &parents));
        let other_node = ChangeKind::NodeUpdated {
            spiffe_id: id("spiffe://example.org/agent/b"),
        };
        assert!(!concerns(&other_node, &agent, &parents));
        let own_node = ChangeKind::NodeDeleted {
            spiffe_id: agent.clone(),
        };
        assert!(concerns(&own_node, &agent, &parents));
        let bundle = ChangeKind::BundleUpdated {
            trust_domain: signet_identity::TrustDomain::parse("partner.test").unwrap(),
        };
        assert!(concerns(&bundle, &agent, &parents));
    }
}
