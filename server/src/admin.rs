//! The admin API on a Unix socket (security invariant 4: the socket is
//! created mode 0600 inside a 0700 directory, so only its owner connects).
//! Errors become `tonic::Status` here and nowhere else.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use signet_identity::{Entry, Selector, SpiffeId, TrustDomain};
use tokio::net::UnixListener;
use tonic::{Request, Response, Status};

use crate::ca::SvidOptions;
use crate::datastore::{AttestedNode, DatastoreError, EntryFilter, SelectorMatch};
use crate::federation::{EndpointAuth, Relationship};
use crate::{Server, ServerError};
use signet_wire::admin::admin_client::AdminClient;
use signet_wire::admin::admin_server::{Admin, AdminServer};
use signet_wire::admin::*;
use signet_wire::{bundle_from_wire, types};

impl From<ServerError> for Status {
    fn from(e: ServerError) -> Self {
        match &e {
            ServerError::InvalidArgument(m) => Status::invalid_argument(m.clone()),
            ServerError::NotFound(m) => Status::not_found(m.clone()),
            ServerError::PermissionDenied(m) => Status::permission_denied(m.clone()),
            ServerError::Datastore(
                DatastoreError::DuplicateEntry { .. } | DatastoreError::DuplicateFederation(_),
            ) => Status::already_exists(e.to_string()),
            ServerError::Datastore(
                DatastoreError::EntryNotFound(_)
                | DatastoreError::NodeNotFound(_)
                | DatastoreError::FederationNotFound(_),
            ) => Status::not_found(e.to_string()),
            ServerError::Datastore(DatastoreError::Conflict { .. }) => {
                Status::aborted(e.to_string())
            }
            ServerError::Ca(
                crate::ca::CaError::ForeignId { .. }
                | crate::ca::CaError::NoPath(_)
                | crate::ca::CaError::DnsName { .. }
                | crate::ca::CaError::NoAudience
                | crate::ca::CaError::PublicKey(_)
                | crate::ca::CaError::Csr(_),
            ) => Status::invalid_argument(e.to_string()),
            ServerError::Ca(crate::ca::CaError::Authority(
                crate::ca::AuthorityError::Unknown { .. },
            )) => Status::not_found(e.to_string()),
            ServerError::Ca(
                crate::ca::CaError::Authority(_) | crate::ca::CaError::Upstream { .. },
            ) => Status::failed_precondition(e.to_string()),
            _ => {
                tracing::error!(error = %e, "admin API internal error");
                Status::internal(e.to_string())
            }
        }
    }
}

/// The admin gRPC service over a [`Server`].
#[derive(Debug, Clone)]
pub struct AdminService {
    server: Arc<Server>,
}

impl AdminService {
    pub fn new(server: Arc<Server>) -> Self {
        Self { server }
    }

    pub fn into_service(self) -> AdminServer<Self> {
        AdminServer::new(self)
    }
}

fn federation_name(name: FederationName) -> Result<TrustDomain, Status> {
    TrustDomain::parse(&name.trust_domain)
        .map_err(|e| invalid(format!("trust_domain {:?}: {e}", name.trust_domain)))
}

fn federation_to_wire(rel: &Relationship) -> Federation {
    let (endpoint_spiffe_id, web_ca_pem) = match &rel.auth {
        EndpointAuth::HttpsSpiffe { endpoint_spiffe_id } => {
            (endpoint_spiffe_id.clone(), String::new())
        }
        EndpointAuth::HttpsWeb { ca_pem } => (String::new(), ca_pem.clone().unwrap_or_default()),
    };
    Federation {
        trust_domain: rel.trust_domain.clone(),
        bundle_endpoint_url: rel.bundle_endpoint_url.clone(),
        profile: rel.auth.profile().into(),
        endpoint_spiffe_id,
        web_ca_pem,
    }
}

fn federation_from_wire(
    req: FederationRequest,
) -> Result<(Relationship, Option<signet_identity::Bundle>), Status> {
    let f = req
        .federation
        .ok_or_else(|| invalid("the federation relationship is missing"))?;
    let auth = match f.profile.as_str() {
        "https_spiffe" => EndpointAuth::HttpsSpiffe {
            endpoint_spiffe_id: f.endpoint_spiffe_id,
        },
        "https_web" => EndpointAuth::HttpsWeb {
            ca_pem: (!f.web_ca_pem.is_empty()).then_some(f.web_ca_pem),
        },
        other => {
            return Err(invalid(format!(
                "profile {other:?}: expected https_spiffe or https_web"
            )));
        }
    };
    let bootstrap = req
        .bootstrap_bundle
        .map(|b| bundle_from_wire(&b).map_err(invalid))
        .transpose()?;
    Ok((
        Relationship {
            trust_domain: f.trust_domain,
            bundle_endpoint_url: f.bundle_endpoint_url,
            auth,
        },
        bootstrap,
    ))
}

fn invalid(m: impl Into<String>) -> Status {
    Status::invalid_argument(m.into())
}

fn parse_id(field: &str, v: &str) -> Result<SpiffeId, Status> {
    SpiffeId::parse(v).map_err(|e| invalid(format!("{field} {v:?}: {e}")))
}

fn wire_entry(e: &Entry) -> types::Entry {
    types::Entry::from(e)
}

fn x509_svid(
    chain: Vec<rustls_pki_types::CertificateDer<'static>>,
    id: &SpiffeId,
) -> Result<types::X509Svid, Status> {
    let leaf = chain
        .first()
        .ok_or_else(|| Status::internal("the CA returned an empty chain"))?;
    let info = signet_identity::x509_svid::inspect_leaf(leaf)
        .map_err(|e| Status::internal(e.to_string()))?;
    Ok(types::X509Svid {
        spiffe_id: id.to_string(),
        cert_chain: chain.iter().map(|c| c.to_vec()).collect(),
        expires_at: info.not_after,
        serial: info.serial,
    })
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_entry(
        &self,
        req: Request<CreateEntryRequest>,
    ) -> Result<Response<EntryResponse>, Status> {
        let mut wire = req
            .into_inner()
            .entry
            .ok_or_else(|| invalid("entry is required"))?;
        if wire.parent_id.is_empty() {
            match &self.server.config().default_parent_id {
                Some(parent) => wire.parent_id = parent.to_string(),
                None => {
                    return Err(invalid(
                        "parent_id is required (--parent-id): the SPIFFE ID of the agent the workload runs on (`signet agent list` shows them; `signet token generate --spiffe-id ID` fixes an agent's ID before it attests), or of a node-alias entry that groups agents (`signet entry create --node --spiffe-id ID --selector ...`)",
                    ));
                }
            }
        }
        let entry = Entry::try_from(&wire).map_err(|e| invalid(e.to_string()))?;
        let created = self.server.create_entry(entry).await?;
        Ok(Response::new(EntryResponse {
            entry: Some(wire_entry(&created)),
            warnings: entry_warnings(&self.server, &created),
        }))
    }

    async fn update_entry(
        &self,
        req: Request<UpdateEntryRequest>,
    ) -> Result<Response<EntryResponse>, Status> {
        let wire = req
            .into_inner()
            .entry
            .ok_or_else(|| invalid("entry is required"))?;
        let entry = Entry::try_from(&wire).map_err(|e| invalid(e.to_string()))?;
        let updated = self.server.update_entry(entry).await?;
        Ok(Response::new(EntryResponse {
            entry: Some(wire_entry(&updated)),
            warnings: entry_warnings(&self.server, &updated),
        }))
    }

    async fn delete_entry(
        &self,
        req: Request<DeleteEntryRequest>,
    ) -> Result<Response<EntryResponse>, Status> {
        let id = req.into_inner().id;
        if id.is_empty() {
            return Err(invalid("id is required"));
        }
        let deleted = self.server.delete_entry(&id).await?;
        Ok(Response::new(EntryResponse {
            entry: Some(wire_entry(&deleted)),
            warnings: Vec::new(),
        }))
    }

    async fn list_entries(
        &self,
        req: Request<ListEntriesRequest>,
    ) -> Result<Response<ListEntriesResponse>, Status> {
        let r = req.into_inner();
        let mut filter = EntryFilter::default();
        if !r.id.is_empty() {
            filter.id = Some(r.id);
        }
        if !r.spiffe_id.is_empty() {
            filter.spiffe_id = Some(parse_id("spiffe_id", &r.spiffe_id)?);
        }
        if !r.parent_id.is_empty() {
            filter.parent_id = Some(parse_id("parent_id", &r.parent_id)?);
        }
        if !r.selectors.is_empty() {
            let selectors = r
                .selectors
                .iter()
                .map(|s| Selector::parse(s).map_err(|e| invalid(format!("selector: {e}"))))
                .collect::<Result<Vec<_>, _>>()?;
            let mode = match r.r#match.as_str() {
                "" | "exact" => SelectorMatch::Exact,
                "subset" => SelectorMatch::Subset,
                "superset" => SelectorMatch::Superset,
                "any" => SelectorMatch::Any,
                other => {
                    return Err(invalid(format!(
                        "match {other:?}: expected exact, subset, superset or any"
                    )));
                }
            };
            filter.selectors = Some((selectors, mode));
        }
        if !r.federates_with.is_empty() {
            filter.federates_with = Some(
                TrustDomain::parse(&r.federates_with)
                    .map_err(|e| invalid(format!("federates_with: {e}")))?,
            );
        }
        let entries = self
            .server
            .store()
            .list_entries(&filter)
            .await
            .map_err(ServerError::from)?;
        Ok(Response::new(ListEntriesResponse {
            entries: entries.iter().map(wire_entry).collect(),
        }))
    }

    async fn count_entries(
        &self,
        _: Request<CountEntriesRequest>,
    ) -> Result<Response<CountEntriesResponse>, Status> {
        let count = self
            .server
            .store()
            .count_entries()
            .await
            .map_err(ServerError::from)?;
        Ok(Response::new(CountEntriesResponse { count }))
    }

    async fn create_join_token(
        &self,
        req: Request<CreateJoinTokenRequest>,
    ) -> Result<Response<CreateJoinTokenResponse>, Status> {
        let r = req.into_inner();
        let agent_id = if r.agent_id.is_empty() {
            None
        } else {
            Some(parse_id("agent_id", &r.agent_id)?)
        };
        let ttl = requested_ttl("ttl", r.ttl)?;
        let (token, expires_at) = self.server.create_join_token(ttl, agent_id).await?;
        Ok(Response::new(CreateJoinTokenResponse { token, expires_at }))
    }

    async fn list_agents(
        &self,
        _: Request<ListAgentsRequest>,
    ) -> Result<Response<ListAgentsResponse>, Status> {
        let nodes = self
            .server
            .store()
            .list_nodes()
            .await
            .map_err(ServerError::from)?;
        Ok(Response::new(ListAgentsResponse {
            agents: nodes.iter().map(types::AttestedNode::from).collect(),
        }))
    }

    async fn evict_agent(
        &self,
        req: Request<AgentRequest>,
    ) -> Result<Response<AgentResponse>, Status> {
        let id = parse_id("spiffe_id", &req.into_inner().spiffe_id)?;
        let store = self.server.store();
        let node = store
            .get_node(&id)
            .await
            .map_err(ServerError::from)?
            .ok_or_else(|| Status::not_found(format!("no agent {id}")))?;
        store.delete_node(&id).await.map_err(ServerError::from)?;
        self.server.wrote();
        tracing::info!(agent_id = %id, "agent evicted");
        Ok(Response::new(AgentResponse {
            agent: Some(types::AttestedNode::from(&node)),
        }))
    }

    async fn ban_agent(
        &self,
        req: Request<AgentRequest>,
    ) -> Result<Response<AgentResponse>, Status> {
        let id = parse_id("spiffe_id", &req.into_inner().spiffe_id)?;
        let store = self.server.store();
        // Read, set, and write only over what was read; a renewal that got
        // in between is read again, so the ban always lands.
        let node = loop {
            let current = store
                .get_node(&id)
                .await
                .map_err(ServerError::from)?
                .ok_or_else(|| Status::not_found(format!("no agent {id}")))?;
            let banned = AttestedNode {
                banned: true,
                ..current.clone()
            };
            if store
                .swap_node(Some(&current), &banned)
                .await
                .map_err(ServerError::from)?
            {
                break banned;
            }
        };
        self.server.wrote();
        tracing::warn!(agent_id = %id, "agent banned");
        Ok(Response::new(AgentResponse {
            agent: Some(types::AttestedNode::from(&node)),
        }))
    }

    async fn get_bundle(
        &self,
        req: Request<GetBundleRequest>,
    ) -> Result<Response<types::Bundle>, Status> {
        let td = req.into_inner().trust_domain;
        let bundle = if td.is_empty() || td == self.server.trust_domain().as_str() {
            self.server.own_bundle().await?
        } else {
            let td = TrustDomain::parse(&td).map_err(|e| invalid(format!("trust_domain: {e}")))?;
            self.server
                .store()
                .get_bundle(&td)
                .await
                .map_err(ServerError::from)?
                .ok_or_else(|| Status::not_found(format!("no bundle for trust domain {td}")))?
        };
        Ok(Response::new(
            types::Bundle::try_from(&bundle).map_err(|e| Status::internal(e.to_string()))?,
        ))
    }

    async fn list_bundles(
        &self,
        _: Request<ListBundlesRequest>,
    ) -> Result<Response<ListBundlesResponse>, Status> {
        let mut bundles = self
            .server
            .store()
            .list_bundles()
            .await
            .map_err(ServerError::from)?;
        if !bundles
            .iter()
            .any(|b| b.trust_domain() == self.server.trust_domain())
        {
            bundles.insert(0, self.server.ca().bundle());
        }
        let bundles = bundles
            .iter()
            .map(types::Bundle::try_from)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(ListBundlesResponse { bundles }))
    }

    async fn set_bundle(
        &self,
        req: Request<types::Bundle>,
    ) -> Result<Response<types::Bundle>, Status> {
        let wire = req.into_inner();
        let bundle = bundle_from_wire(&wire).map_err(invalid)?;
        if bundle.trust_domain() == self.server.trust_domain() {
            return Err(invalid(format!(
                "{} is this server's own trust domain; its bundle comes from the CA",
                bundle.trust_domain()
            )));
        }
        if bundle.x509_authorities().is_empty() && bundle.jwt_authorities().next().is_none() {
            return Err(invalid(format!(
                "the bundle of {} has no keys",
                bundle.trust_domain()
            )));
        }
        self.server
            .store()
            .put_bundle(&bundle)
            .await
            .map_err(ServerError::from)?;
        self.server.wrote();
        tracing::info!(trust_domain = %bundle.trust_domain(), "federated bundle set");
        Ok(Response::new(
            types::Bundle::try_from(&bundle).map_err(|e| Status::internal(e.to_string()))?,
        ))
    }

    async fn create_federation(
        &self,
        req: Request<FederationRequest>,
    ) -> Result<Response<Federation>, Status> {
        let (rel, bootstrap) = federation_from_wire(req.into_inner())?;
        let rel = self.server.create_federation(rel, bootstrap).await?;
        Ok(Response::new(federation_to_wire(&rel)))
    }

    async fn update_federation(
        &self,
        req: Request<FederationRequest>,
    ) -> Result<Response<Federation>, Status> {
        let (rel, bootstrap) = federation_from_wire(req.into_inner())?;
        let rel = self.server.update_federation(rel, bootstrap).await?;
        Ok(Response::new(federation_to_wire(&rel)))
    }

    async fn delete_federation(
        &self,
        req: Request<FederationName>,
    ) -> Result<Response<DeleteFederationResponse>, Status> {
        let td = federation_name(req.into_inner())?;
        self.server.delete_federation(&td).await?;
        Ok(Response::new(DeleteFederationResponse {}))
    }

    async fn get_federation(
        &self,
        req: Request<FederationName>,
    ) -> Result<Response<Federation>, Status> {
        let td = federation_name(req.into_inner())?;
        let rel = self.server.get_federation(&td).await?;
        Ok(Response::new(federation_to_wire(&rel)))
    }

    async fn list_federations(
        &self,
        _: Request<ListFederationsRequest>,
    ) -> Result<Response<ListFederationsResponse>, Status> {
        let federations = self.server.list_federations().await?;
        Ok(Response::new(ListFederationsResponse {
            federations: federations.iter().map(federation_to_wire).collect(),
        }))
    }

    async fn refresh_federations(
        &self,
        _: Request<RefreshFederationsRequest>,
    ) -> Result<Response<RefreshFederationsResponse>, Status> {
        self.server.refresh_federations();
        Ok(Response::new(RefreshFederationsResponse {}))
    }

    async fn delete_bundle(
        &self,
        req: Request<DeleteBundleRequest>,
    ) -> Result<Response<DeleteBundleResponse>, Status> {
        let td = TrustDomain::parse(&req.into_inner().trust_domain)
            .map_err(|e| invalid(format!("trust_domain: {e}")))?;
        if &td == self.server.trust_domain() {
            return Err(invalid("the own trust domain's bundle cannot be deleted"));
        }
        if !self
            .server
            .store()
            .delete_bundle(&td)
            .await
            .map_err(ServerError::from)?
        {
            return Err(Status::not_found(format!(
                "no bundle for trust domain {td}"
            )));
        }
        self.server.wrote();
        Ok(Response::new(DeleteBundleResponse {}))
    }

    async fn mint_x509_svid(
        &self,
        req: Request<MintX509SvidRequest>,
    ) -> Result<Response<MintX509SvidResponse>, Status> {
        let r = req.into_inner();
        let id = parse_id("spiffe_id", &r.spiffe_id)?;
        let opts = SvidOptions {
            ttl: requested_ttl("ttl", r.ttl)?,
            dns_names: r.dns_names,
        };
        let ca = self.server.ca();
        let chain = match (r.public_key.is_empty(), r.csr.is_empty()) {
            (false, true) => ca.sign_x509_svid(&r.public_key, &id, &opts),
            (true, false) => ca.sign_x509_svid_csr(&r.csr, &id, &opts),
            _ => return Err(invalid("exactly one of public_key and csr is required")),
        }
        .map_err(ServerError::from)?;
        tracing::info!(spiffe_id = %id, "X509-SVID minted by admin");
        let bundle = self.server.own_bundle().await?;
        Ok(Response::new(MintX509SvidResponse {
            svid: Some(x509_svid(chain, &id)?),
            bundle: Some(
                types::Bundle::try_from(&bundle).map_err(|e| Status::internal(e.to_string()))?,
            ),
        }))
    }

    async fn mint_jwt_svid(
        &self,
        req: Request<MintJwtSvidRequest>,
    ) -> Result<Response<MintJwtSvidResponse>, Status> {
        let r = req.into_inner();
        let id = parse_id("spiffe_id", &r.spiffe_id)?;
        let ttl = requested_ttl("ttl", r.ttl)?;
        let token = self
            .server
            .ca()
            .sign_jwt_svid(&id, &r.audience, ttl)
            .map_err(ServerError::from)?;
        let expires_at = signet_identity::JwtSvid::parse_insecure(&token)
            .map(|s| s.expiry() as i64)
            .map_err(|e| Status::internal(e.to_string()))?;
        tracing::info!(spiffe_id = %id, "JWT-SVID minted by admin");
        Ok(Response::new(MintJwtSvidResponse { token, expires_at }))
    }

    async fn get_logger(&self, _: Request<GetLoggerRequest>) -> Result<Response<Logger>, Status> {
        let control = log_control()?;
        Ok(Response::new(Logger {
            filter: control.current(),
            launch_filter: control.launch(),
        }))
    }

    async fn set_logger(&self, req: Request<SetLoggerRequest>) -> Result<Response<Logger>, Status> {
        let control = log_control()?;
        let asked = req.into_inner().filter;
        let filter = if asked.trim().is_empty() {
            control.launch()
        } else {
            asked
        };
        let before = control.current();
        control
            .set(&filter)
            .map_err(|e| Status::invalid_argument(format!("log filter {filter:?}: {e}")))?;
        tracing::warn!(from = %before, to = %filter, "log filter changed through the admin API");
        Ok(Response::new(Logger {
            filter: control.current(),
            launch_filter: control.launch(),
        }))
    }

    async fn list_authorities(
        &self,
        req: Request<AuthorityRequest>,
    ) -> Result<Response<Authorities>, Status> {
        let kind = authority_kind(req.get_ref());
        self.authorities(kind).await
    }

    async fn prepare_authority(
        &self,
        req: Request<AuthorityRequest>,
    ) -> Result<Response<Authorities>, Status> {
        let kind = authority_kind(req.get_ref());
        let prepared = self.server.prepare_authority(kind).await?;
        tracing::warn!(%kind, authority_id = %prepared.id, "authority prepared through the admin API");
        self.authorities(kind).await
    }

    async fn activate_authority(
        &self,
        req: Request<AuthorityRequest>,
    ) -> Result<Response<Authorities>, Status> {
        let (kind, id) = authority_target(req.get_ref())?;
        self.server
            .change_authorities(|ca| ca.activate(kind, &id))
            .await?;
        tracing::warn!(%kind, authority_id = %id, "authority activated through the admin API");
        self.authorities(kind).await
    }

    async fn taint_authority(
        &self,
        req: Request<AuthorityRequest>,
    ) -> Result<Response<Authorities>, Status> {
        let (kind, id) = authority_target(req.get_ref())?;
        if kind == crate::ca::AuthorityKind::UpstreamX509 {
            self.server.upstream_unused_elsewhere(&id).await?;
        }
        self.server
            .change_authorities(|ca| ca.taint(kind, &id))
            .await?;
        tracing::warn!(%kind, authority_id = %id, "authority tainted through the admin API: what it signed is being replaced");
        self.authorities(kind).await
    }

    async fn revoke_authority(
        &self,
        req: Request<AuthorityRequest>,
    ) -> Result<Response<Authorities>, Status> {
        let (kind, id) = authority_target(req.get_ref())?;
        self.server
            .change_authorities(|ca| ca.revoke(kind, &id))
            .await?;
        tracing::warn!(%kind, authority_id = %id, "authority revoked through the admin API: it left the bundle");
        self.authorities(kind).await
    }

    async fn health(&self, _: Request<HealthRequest>) -> Result<Response<HealthResponse>, Status> {
        let store = self.server.store();
        let entries = store.count_entries().await.map_err(ServerError::from)?;
        let agents = store.list_nodes().await.map_err(ServerError::from)?.len() as u64;
        Ok(Response::new(HealthResponse {
            trust_domain: self.server.trust_domain().to_string(),
            bundle_sequence: self.server.ca().bundle().sequence(),
            entries,
            agents,
        }))
    }
}

fn log_control() -> Result<&'static dyn crate::logger::LogControl, Status> {
    crate::logger::control()
        .ok_or_else(|| Status::unavailable("this process does not let its log filter change"))
}

/// What `entry` will not do as written though it is valid: an X509-SVID
/// TTL longer than the CA's authorities live (SVIDs end with the authority
/// that signs them), user and group names this host does not know (an
/// agent's host may; often a typo).
fn entry_warnings(server: &Server, entry: &Entry) -> Vec<String> {
    let mut warnings = Vec::new();
    let ca_ttl = server.config().ca.ca_ttl;
    if let Some(ttl) = entry.x509_ttl.map(Duration::from_secs)
        && ttl > ca_ttl
    {
        warnings.push(format!(
            "x509_ttl {} is longer than the CA's signing authorities live ({}): this entry's X509-SVIDs end with the authority that signs them, at most {} after it was made",
            humantime::format_duration(ttl),
            humantime::format_duration(ca_ttl),
            humantime::format_duration(ca_ttl),
        ));
    }
    for s in &entry.selectors {
        let (kind, name) = match (s.selector_type(), s.value().split_once(':')) {
            ("unix", Some(("user", name))) => ("user", name),
            ("unix", Some(("group", name))) => ("group", name),
            _ => continue,
        };
        let known = if kind == "user" {
            nix::unistd::User::from_name(name).map(|u| u.is_some())
        } else {
            nix::unistd::Group::from_name(name).map(|g| g.is_some())
        };
        if matches!(known, Ok(false)) {
            warnings.push(format!(
                "selector {s}: this server's host has no {kind} named {name:?}; the entry matches only on agents' hosts that have one (a typo?)"
            ));
        }
    }
    warnings
}

/// A TTL from a request: 0 means the default; more than a year is refused
/// (the CA caps SVIDs at its own lifetime anyway; this keeps time
/// arithmetic far from overflow).
fn requested_ttl(field: &str, secs: u64) -> Result<Option<Duration>, Status> {
    match secs {
        0 => Ok(None),
        s if s > signet_identity::entry::MAX_TTL_SECS => Err(invalid(format!(
            "{field} of {s} s is over the limit of {} s",
            signet_identity::entry::MAX_TTL_SECS
        ))),
        s => Ok(Some(Duration::from_secs(s))),
    }
}

/// Binds the admin socket: mode 0600 in a directory created 0700.
pub fn bind_admin_socket(path: &Path) -> std::io::Result<UnixListener> {
    signet_unix::bind(path, 0o600, 0o700)
}

/// Serves the admin API on `listener` until `stop` resolves.
pub async fn serve_admin(
    server: Arc<Server>,
    listener: UnixListener,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .layer(crate::telemetry::ApiMetricsLayer::new("admin"))
        .add_service(AdminService::new(server).into_service())
        .serve_with_incoming_shutdown(signet_unix::incoming(listener), stop)
        .await
}

/// Serves the admin API over mTLS on `listener` (`--admin-listen`) until
/// `stop` resolves: the server presents its SVID; a caller must present an
/// X509-SVID of this trust domain that an entry with the `admin` flag
/// names (checked on every call, so clearing the flag takes effect at
/// once), or one of `admin_ids` (SPIRE's admin IDs; those of a federated
/// trust domain verify against its bundle). Everyone else is refused with
/// PermissionDenied.
pub async fn serve_admin_tls(
    server: Arc<Server>,
    listener: tokio::net::TcpListener,
    admin_ids: Vec<SpiffeId>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let td = server.trust_domain().clone();
    let admin_ids = Arc::new(admin_ids);
    let federated = admin_ids.iter().any(|id| !id.is_member_of(&td));
    let listed = admin_ids.clone();
    let (incoming, accept) = crate::node::accept_tls(
        server.clone(),
        listener,
        Arc::new(move |id: &SpiffeId| {
            (id.is_member_of(&td) && !id.is_reserved()) || listed.contains(id)
        }),
        true,
        federated,
    )
    .await?;
    let result = tonic::transport::Server::builder()
        .layer(crate::telemetry::ApiMetricsLayer::new("admin_tls"))
        .add_service(AdminIds {
            inner: AdminService::new(server.clone()).into_service(),
            server,
            admin_ids,
        })
        .serve_with_incoming_shutdown(incoming, stop)
        .await;
    accept.finish().await;
    result.map_err(|e| ServerError::InvalidArgument(format!("admin API over TLS: {e}")))
}

/// The admin service behind a check that the caller's SVID names an admin.
#[derive(Clone)]
struct AdminIds {
    inner: AdminServer<AdminService>,
    server: Arc<Server>,
    /// Configured admin IDs, allowed without an entry.
    admin_ids: Arc<Vec<SpiffeId>>,
}

impl tonic::server::NamedService for AdminIds {
    const NAME: &'static str = <AdminServer<AdminService> as tonic::server::NamedService>::NAME;
}

type HttpRequest = tonic::codegen::http::Request<tonic::body::Body>;
type HttpResponse = tonic::codegen::http::Response<tonic::body::Body>;

impl tower::Service<HttpRequest> for AdminIds {
    type Response = HttpResponse;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<HttpResponse, std::convert::Infallible>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        tower::Service::<HttpRequest>::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, req: HttpRequest) -> Self::Future {
        let mut inner = self.inner.clone();
        std::mem::swap(&mut self.inner, &mut inner);
        let server = self.server.clone();
        let admin_ids = self.admin_ids.clone();
        use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
        let leaf = req
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|i| i.peer_certs())
            .and_then(|certs| certs.first().cloned());
        let call = req.uri().path().to_owned();
        Box::pin(async move {
            match admin_caller(&server, &admin_ids, leaf, &call).await {
                Ok(id) => {
                    tracing::info!(caller = %id, call, "admin call over TLS");
                    inner.call(req).await
                }
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

/// The SPIFFE ID of a TLS admin caller (its X509-SVID `leaf`) whose entry
/// has the `admin` flag.
async fn admin_caller(
    server: &Server,
    admin_ids: &[SpiffeId],
    leaf: Option<rustls_pki_types::CertificateDer<'static>>,
    call: &str,
) -> Result<SpiffeId, Status> {
    let leaf = leaf.ok_or_else(|| Status::unauthenticated("no client X509-SVID was presented"))?;
    let id = signet_identity::x509_svid::inspect_leaf(&leaf)
        .map_err(|e| Status::unauthenticated(format!("client X509-SVID: {e}")))?
        .id;
    if admin_ids.contains(&id) {
        return Ok(id);
    }
    let entries = server
        .entries_named(&id)
        .await
        .map_err(|e| Status::unavailable(format!("cannot check admin entries: {e}")))?;
    if entries.iter().any(|e| e.admin) {
        return Ok(id);
    }
    tracing::warn!(caller = %id, call, "admin call over TLS refused: no admin entry names the caller");
    Err(Status::permission_denied(format!(
        "{id} may not use the admin API: no entry for it has the admin flag (signet entry update ... --admin)"
    )))
}

/// Connects an admin client to the socket at `path`.
pub async fn connect_admin(
    path: PathBuf,
) -> Result<AdminClient<tonic::transport::Channel>, tonic::transport::Error> {
    Ok(AdminClient::new(signet_workload::channel(path).await?))
}

fn authority_kind(req: &AuthorityRequest) -> crate::ca::AuthorityKind {
    match req.kind() {
        signet_wire::admin::AuthorityKind::X509 => crate::ca::AuthorityKind::X509,
        signet_wire::admin::AuthorityKind::Jwt => crate::ca::AuthorityKind::Jwt,
        signet_wire::admin::AuthorityKind::UpstreamX509 => crate::ca::AuthorityKind::UpstreamX509,
    }
}

fn authority_target(req: &AuthorityRequest) -> Result<(crate::ca::AuthorityKind, String), Status> {
    let kind = authority_kind(req);
    let id = req.authority_id.trim();
    if id.is_empty() {
        return Err(Status::invalid_argument(
            "an authority id is required (--authority-id)",
        ));
    }
    // X.509 ids are hex, in any case, with or without the colons openssl
    // prints; JWT kids are case-sensitive.
    let id = match kind {
        crate::ca::AuthorityKind::X509 | crate::ca::AuthorityKind::UpstreamX509 => {
            id.replace(':', "").to_ascii_lowercase()
        }
        crate::ca::AuthorityKind::Jwt => id.to_owned(),
    };
    Ok((kind, id))
}

impl AdminService {
    /// This server's authorities of `kind`, with the bundle's sequence.
    async fn authorities(
        &self,
        kind: crate::ca::AuthorityKind,
    ) -> Result<Response<Authorities>, Status> {
        let bundle = self.server.own_bundle().await?;
        let authorities = self
            .server
            .ca()
            .authorities(kind)
            .into_iter()
            .map(|a| Authority {
                authority_id: a.id,
                state: a.state.as_str().to_owned(),
                key_id: a.key_id.unwrap_or_default(),
                not_after: a
                    .not_after
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64),
                tainted: a.tainted,
            })
            .collect();
        Ok(Response::new(Authorities {
            authorities,
            bundle_sequence: bundle.sequence(),
        }))
    }
}
