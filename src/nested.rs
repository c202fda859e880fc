//! A downstream server's upstream (`--upstream signet`): another Signet
//! server of the same trust domain, reached on its server-agent port with
//! the X509-SVID this server gets, as a workload, from an agent of that
//! upstream (its entry has the `downstream` flag). The upstream signs our
//! CA as its intermediate, takes our JWT keys into its bundle, and lends
//! us its bundle to publish.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use signet_identity::{Bundle, CertificateDer};
use signet_server::ca::{MintedCa, RemoteUpstream};
use signet_wire::downstream::downstream_client::DownstreamClient;
use signet_wire::downstream::{FetchBundleRequest, MintX509CaRequest, PublishJwtKeyRequest};
use signet_wire::workload::X509svidRequest;
use signet_workload::SocketLocation;

/// Connect and call together.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug)]
pub struct UpstreamServer {
    /// `HOST:PORT` of the upstream's server-agent API.
    addr: String,
    /// The Workload API of an agent of the upstream, for our X509-SVID.
    socket: SocketLocation,
}

impl UpstreamServer {
    pub fn new(addr: String, socket: SocketLocation) -> Self {
        Self { addr, socket }
    }

    /// A client presenting our current X509-SVID (fetched anew each time,
    /// so rotation needs nothing), trusting the bundles the agent gives.
    async fn client(&self) -> Result<DownstreamClient<tonic::transport::Channel>, String> {
        let (mut workload, path) = signet_workload::connect_to(&self.socket)
            .await
            .map_err(|e| format!("our X509-SVID ({}): {e}", self.socket.origin()))?;
        let first = workload
            .fetch_x509svid(signet_workload::with_header(X509svidRequest {}))
            .await
            .map_err(|e| signet_workload::status_error(&path, e).to_string())?
            .into_inner()
            .message()
            .await
            .map_err(|e| signet_workload::status_error(&path, e).to_string())?
            .ok_or("the Workload API sent no X509-SVID")?;
        let ctx = signet_workload::X509Context::from_response(&first).map_err(|e| e.to_string())?;
        let addr = tokio::net::lookup_host(&self.addr)
            .await
            .map_err(|e| format!("cannot resolve {}: {e}", self.addr))?
            .next()
            .ok_or_else(|| format!("no address for {}", self.addr))?;
        let channel = signet_agent::node_client::server_channel(
            addr,
            ctx.bundles.clone(),
            ctx.default_svid(),
        )
        .await
        .map_err(|e| e.to_string())?;
        Ok(DownstreamClient::new(channel))
    }

    async fn bounded<T>(&self, call: impl Future<Output = Result<T, String>>) -> Result<T, String> {
        tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .map_err(|_| format!("no answer in {CALL_TIMEOUT:?}"))?
    }
}

fn bundle(w: Option<signet_wire::types::Bundle>) -> Result<Bundle, String> {
    signet_wire::bundle_from_wire(&w.ok_or("the answer holds no bundle")?)
}

fn refused(e: tonic::Status) -> String {
    format!("{:?}: {}", e.code(), e.message())
}

#[tonic::async_trait]
impl RemoteUpstream for UpstreamServer {
    async fn mint_x509_ca(&self, csr_pem: &str, ttl: Duration) -> Result<MintedCa, String> {
        let (_, csr) = x509_parser::pem::parse_x509_pem(csr_pem.as_bytes())
            .map_err(|e| format!("our CSR: {e}"))?;
        self.bounded(async {
            let answer = self
                .client()
                .await?
                .mint_x509_ca(MintX509CaRequest {
                    csr: csr.contents,
                    ttl_seconds: ttl.as_secs(),
                })
                .await
                .map_err(refused)?
                .into_inner();
            let roots = bundle(answer.bundle)?.x509_authorities().to_vec();
            Ok(MintedCa {
                cert: CertificateDer::from(answer.ca_cert),
                chain: answer.chain.into_iter().map(CertificateDer::from).collect(),
                roots,
            })
        })
        .await
    }

    async fn fetch_bundle(&self) -> Option<Result<Bundle, String>> {
        Some(
            self.bounded(async {
                let answer = self
                    .client()
                    .await?
                    .fetch_bundle(FetchBundleRequest {})
                    .await
                    .map_err(refused)?;
                bundle(Some(answer.into_inner()))
            })
            .await,
        )
    }

    async fn publish_jwt_key(
        &self,
        kid: &str,
        spki: &[u8],
        not_after: SystemTime,
    ) -> Result<bool, String> {
        let expires_at = not_after
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        self.bounded(async {
            self.client()
                .await?
                .publish_jwt_key(PublishJwtKeyRequest {
                    kid: kid.to_owned(),
                    public_key: spki.to_vec(),
                    expires_at,
                })
                .await
                .map_err(refused)?;
            Ok(true)
        })
        .await
    }

    fn describe(&self) -> String {
        format!("signet server {} (nested)", self.addr)
    }
}
