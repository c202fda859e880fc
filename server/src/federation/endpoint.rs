//! The SPIFFE bundle endpoint: this trust domain's bundle as SPIFFE bundle
//! JSON (a JWKS with `spiffe_sequence` and `spiffe_refresh_hint`) over
//! HTTPS, for the servers of other trust domains that federate with it.
//!
//! Either profile of the SPIFFE Federation specification:
//! - `https_spiffe`: the endpoint presents the server's X509-SVID
//!   (`spiffe://TD/signet/server`); a client authenticates it with a bundle
//!   of this trust domain it already holds (bootstrapped once, then each
//!   fetched bundle authenticates the next fetch);
//! - `https_web`: a certificate and key from files (a web PKI), read again
//!   when either file changes.
//!
//! No client certificate is asked for: the bundle is public.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use signet_tls::RotatingCert;
use tokio::net::TcpListener;

use crate::https::{self, FileCert};
use crate::node::ServerSvid;
use crate::{Server, ServerError};

/// What the endpoint presents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointProfile {
    /// The server's own X509-SVID.
    HttpsSpiffe,
    /// A certificate chain and its key from PEM files.
    HttpsWeb { cert: PathBuf, key: PathBuf },
}

impl EndpointProfile {
    /// The profile's name in the SPIFFE Federation specification.
    pub fn name(&self) -> &'static str {
        match self {
            EndpointProfile::HttpsSpiffe => "https_spiffe",
            EndpointProfile::HttpsWeb { .. } => "https_web",
        }
    }
}

/// The bundle endpoint's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleEndpoint {
    pub listen: SocketAddr,
    pub profile: EndpointProfile,
    /// The `spiffe_refresh_hint` served: how often federated servers
    /// should fetch again.
    pub refresh_hint: Duration,
}

impl BundleEndpoint {
    /// The default refresh hint, as SPIRE's: five minutes.
    pub const DEFAULT_REFRESH_HINT: Duration = Duration::from_secs(300);
}

/// The TLS certificate the endpoint presents, kept current.
#[derive(Debug)]
enum Presented {
    Svid(ServerSvid),
    Web(FileCert),
}

impl Presented {
    fn cert(&self) -> Arc<RotatingCert> {
        match self {
            Presented::Svid(svid) => svid.cert(),
            Presented::Web(web) => web.cert.clone(),
        }
    }
}

/// Checks the endpoint's settings and prepares what it presents, so a
/// bad certificate file fails the start, not the first client.
pub(crate) fn prepare(
    server: &Server,
    config: &BundleEndpoint,
) -> Result<PreparedEndpoint, ServerError> {
    let presented = match &config.profile {
        EndpointProfile::HttpsSpiffe => Presented::Svid(ServerSvid::issue(server)?),
        EndpointProfile::HttpsWeb { cert, key } => {
            Presented::Web(FileCert::load("bundle endpoint", cert, key)?)
        }
    };
    let tls = signet_tls::public_server_config(presented.cert())
        .map_err(|e| ServerError::InvalidArgument(format!("bundle endpoint TLS: {e}")))?;
    Ok(PreparedEndpoint {
        presented,
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(tls)),
        refresh_hint: config.refresh_hint,
    })
}

/// An endpoint ready to serve.
pub(crate) struct PreparedEndpoint {
    presented: Presented,
    acceptor: tokio_rustls::TlsAcceptor,
    refresh_hint: Duration,
}

impl std::fmt::Debug for PreparedEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedEndpoint")
            .field("presented", &self.presented)
            .field("refresh_hint", &self.refresh_hint)
            .finish_non_exhaustive()
    }
}

/// Serves the bundle endpoint on `listener` until `stop` resolves.
pub(crate) async fn serve_bundle_endpoint(
    server: Arc<Server>,
    endpoint: PreparedEndpoint,
    listener: TcpListener,
    stop: impl Future<Output = ()>,
) {
    let PreparedEndpoint {
        mut presented,
        acceptor,
        refresh_hint,
    } = endpoint;
    let every = match presented {
        Presented::Svid(_) => ServerSvid::check_every(&server),
        Presented::Web(_) => https::FILE_CHECK,
    };
    let upkeep = {
        let server = server.clone();
        move || match &mut presented {
            Presented::Svid(svid) => svid.renew_if_due(&server),
            Presented::Web(web) => web.reload_if_changed(),
        }
    };
    let answer = move |req: Request<hyper::body::Incoming>| {
        let server = server.clone();
        async move { answer(&server, &req, refresh_hint).await }
    };
    https::serve(
        "bundle endpoint",
        listener,
        Some(acceptor),
        (every, upkeep),
        answer,
        stop,
    )
    .await;
}

/// The answer to one request: the bundle for `GET` (and `HEAD`) of any
/// path, as an endpoint URL may carry any path.
async fn answer<B>(
    server: &Server,
    req: &Request<B>,
    refresh_hint: Duration,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return https::plain(StatusCode::METHOD_NOT_ALLOWED, "only GET is served here\n");
    }
    let document = async {
        let mut bundle = server.own_bundle().await?;
        bundle.set_refresh_hint(Some(refresh_hint.as_secs()));
        bundle
            .to_json()
            .map_err(|e| ServerError::InvalidArgument(e.to_string()))
    }
    .await;
    match document {
        Ok(json) => https::json(req.method() == Method::HEAD, json),
        Err(e) => {
            tracing::error!(error = %e, "bundle endpoint: cannot read the bundle");
            https::plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "the bundle cannot be read right now\n",
            )
        }
    }
}
