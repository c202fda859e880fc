//! The downstream API (`signet.downstream.Downstream`), served beside the
//! node API on its port: a nested server, authenticated by its X509-SVID
//! and authorized by an entry with the `downstream` flag, gets its CA
//! signed here, publishes its JWT keys here and follows this bundle.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use signet_identity::{JwtAuthority, SpiffeId};
use signet_wire::downstream::downstream_server::Downstream;
use signet_wire::downstream::{
    FetchBundleRequest, MintX509CaRequest, MintX509CaResponse, PublishJwtKeyRequest,
};
use signet_wire::types;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Request, Response, Status};

use crate::{Server, ServerError};

pub use signet_wire::downstream::downstream_server::DownstreamServer;

#[derive(Debug, Clone)]
pub struct DownstreamService {
    server: Arc<Server>,
}

impl DownstreamService {
    pub fn new(server: Arc<Server>) -> Self {
        Self { server }
    }

    /// The caller's SPIFFE ID, when an entry with the `downstream` flag
    /// names it (checked on every call: clearing the flag stops it).
    async fn downstream<T>(&self, req: &Request<T>, call: &str) -> Result<SpiffeId, Status> {
        let leaf = req
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|i| i.peer_certs())
            .and_then(|certs| certs.first().cloned())
            .ok_or_else(|| {
                Status::unauthenticated("a downstream server's X509-SVID is required")
            })?;
        // The TLS layer verified the chain against this trust domain.
        let id = signet_identity::x509_svid::inspect_leaf(&leaf)
            .map_err(|e| Status::unauthenticated(format!("client X509-SVID: {e}")))?
            .id;
        let entries = self.server.entries_named(&id).await?;
        if entries.iter().any(|e| e.downstream) {
            return Ok(id);
        }
        tracing::warn!(caller = %id, call, "downstream call refused: no downstream entry names the caller");
        Err(Status::permission_denied(format!(
            "{id} may not act as a downstream server: no entry for it has the downstream flag (signet entry create ... --downstream)"
        )))
    }

    async fn bundle(&self) -> Result<types::Bundle, Status> {
        let bundle = self.server.own_bundle().await?;
        types::Bundle::try_from(&bundle).map_err(|e| Status::internal(e.to_string()))
    }
}

#[tonic::async_trait]
impl Downstream for DownstreamService {
    async fn mint_x509_ca(
        &self,
        req: Request<MintX509CaRequest>,
    ) -> Result<Response<MintX509CaResponse>, Status> {
        let id = self.downstream(&req, "MintX509Ca").await?;
        let r = req.into_inner();
        let (cert, chain) = self
            .server
            .ca()
            .sign_downstream_ca(&r.csr, Duration::from_secs(r.ttl_seconds))
            .map_err(ServerError::from)?;
        tracing::info!(downstream = %id, "downstream CA signed");
        metrics::counter!("signet_server_downstream_cas_signed_total").increment(1);
        Ok(Response::new(MintX509CaResponse {
            ca_cert: cert.to_vec(),
            chain: chain.iter().map(|c| c.to_vec()).collect(),
            bundle: Some(self.bundle().await?),
        }))
    }

    async fn publish_jwt_key(
        &self,
        req: Request<PublishJwtKeyRequest>,
    ) -> Result<Response<types::Bundle>, Status> {
        let id = self.downstream(&req, "PublishJwtKey").await?;
        let r = req.into_inner();
        let key = JwtAuthority::from_spki(&r.kid, &r.public_key)
            .map_err(|e| Status::invalid_argument(format!("JWT key {:?}: {e}", r.kid)))?;
        let expires = UNIX_EPOCH + Duration::from_secs(u64::try_from(r.expires_at).unwrap_or(0));
        let added = self
            .server
            .change_authorities(|ca| ca.add_downstream_jwt_key(key, expires))
            .await?;
        if added {
            tracing::info!(downstream = %id, kid = r.kid, "downstream JWT key published");
        }
        Ok(Response::new(self.bundle().await?))
    }

    async fn fetch_bundle(
        &self,
        req: Request<FetchBundleRequest>,
    ) -> Result<Response<types::Bundle>, Status> {
        self.downstream(&req, "FetchBundle").await?;
        Ok(Response::new(self.bundle().await?))
    }
}
