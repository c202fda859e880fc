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
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use signet_tls::RotatingCert;
use tokio::net::TcpListener;

use crate::node::ServerSvid;
use crate::{Server, ServerError};

/// How long a client may take for its TLS handshake and request headers.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Most connections served at once; more wait in the listen queue.
const MAX_CONNECTIONS: usize = 256;
/// How often the `https_web` certificate and key files are checked.
const WEB_CERT_CHECK: Duration = Duration::from_secs(5);

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
    Web(WebCert),
}

impl Presented {
    fn cert(&self) -> Arc<RotatingCert> {
        match self {
            Presented::Svid(svid) => svid.cert(),
            Presented::Web(web) => web.cert.clone(),
        }
    }
}

/// A certificate and key read from files, read again when they change.
#[derive(Debug)]
struct WebCert {
    cert: Arc<RotatingCert>,
    cert_path: PathBuf,
    key_path: PathBuf,
    seen: (Option<SystemTime>, Option<SystemTime>),
}

impl WebCert {
    fn load(cert_path: &Path, key_path: &Path) -> Result<Self, ServerError> {
        let mut web = WebCert {
            cert: Arc::new(RotatingCert::new()),
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            seen: (None, None),
        };
        web.read()?;
        Ok(web)
    }

    fn modified(path: &Path) -> Option<SystemTime> {
        std::fs::metadata(path).and_then(|m| m.modified()).ok()
    }

    fn read(&mut self) -> Result<(), ServerError> {
        let seen = (
            Self::modified(&self.cert_path),
            Self::modified(&self.key_path),
        );
        let read = |path: &Path| {
            std::fs::read(path).map_err(|e| {
                ServerError::InvalidArgument(format!(
                    "bundle endpoint certificate: cannot read {}: {e}",
                    path.display()
                ))
            })
        };
        let (chain, key) = (read(&self.cert_path)?, read(&self.key_path)?);
        self.cert.set_pem(&chain, &key).map_err(|e| {
            ServerError::InvalidArgument(format!(
                "bundle endpoint certificate {} with key {}: {e}",
                self.cert_path.display(),
                self.key_path.display()
            ))
        })?;
        self.seen = seen;
        Ok(())
    }

    /// Reads the files again if either changed; a bad pair is logged and
    /// the current one stays.
    fn reload_if_changed(&mut self) {
        let now = (
            Self::modified(&self.cert_path),
            Self::modified(&self.key_path),
        );
        if now == self.seen {
            return;
        }
        match self.read() {
            Ok(()) => {
                tracing::info!(cert = %self.cert_path.display(), "bundle endpoint certificate reloaded")
            }
            Err(e) => {
                // Not again until the files change once more.
                self.seen = now;
                tracing::error!(error = %e, "bundle endpoint certificate not reloaded; the previous one stays");
            }
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
        EndpointProfile::HttpsWeb { cert, key } => Presented::Web(WebCert::load(cert, key)?),
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
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut keep_current = tokio::time::interval(match presented {
        Presented::Svid(_) => ServerSvid::CHECK,
        Presented::Web(_) => WEB_CERT_CHECK,
    });
    tokio::pin!(stop);
    loop {
        let permit = tokio::select! {
            _ = &mut stop => return,
            _ = keep_current.tick() => {
                match &mut presented {
                    Presented::Svid(svid) => svid.renew_if_due(&server),
                    Presented::Web(web) => web.reload_if_changed(),
                }
                continue;
            }
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let (tcp, peer) = tokio::select! {
            _ = &mut stop => return,
            conn = listener.accept() => match conn {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "bundle endpoint: accept failed");
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let server = server.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(CLIENT_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "bundle endpoint: TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "bundle endpoint: TLS handshake timed out");
                    return;
                }
            };
            let service = hyper::service::service_fn(move |req| {
                let server = server.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(answer(&server, &req, refresh_hint).await)
                }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(CLIENT_TIMEOUT)
                .serve_connection(TokioIo::new(tls), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "bundle endpoint: connection ended");
            }
        });
    }
}

/// The answer to one request: the bundle for `GET` (and `HEAD`) of any
/// path, as an endpoint URL may carry any path.
async fn answer<B>(
    server: &Server,
    req: &Request<B>,
    refresh_hint: Duration,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET is served here\n");
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
        Ok(json) => {
            let body = if req.method() == Method::HEAD {
                Bytes::new()
            } else {
                Bytes::from(json)
            };
            Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "application/json")
                .header("cache-control", "no-store")
                .body(Full::new(body))
                .unwrap_or_default()
        }
        Err(e) => {
            tracing::error!(error = %e, "bundle endpoint: cannot read the bundle");
            plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "the bundle cannot be read right now\n",
            )
        }
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from_static(text.as_bytes())))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use signet_testkit::pki::{Leaf, TestCa};

    fn write_pair(dir: &Path, root: &TestCa) {
        let leaf = root.leaf(&Leaf {
            dns: &["localhost"],
            ..Leaf::default()
        });
        std::fs::write(dir.join("web.pem"), leaf.pem).unwrap();
        std::fs::write(dir.join("web.key"), leaf.key_pem).unwrap();
    }

    fn presented(web: &WebCert) -> Vec<u8> {
        web.cert.current().unwrap().cert[0].to_vec()
    }

    /// A changed pair is taken; a broken one is refused and the good one
    /// stays until the files change again.
    #[test]
    fn the_web_certificate_follows_its_files_but_never_for_a_broken_pair() {
        let dir = tempfile::tempdir().unwrap();
        write_pair(dir.path(), &TestCa::new("one"));
        let (cert, key) = (dir.path().join("web.pem"), dir.path().join("web.key"));
        let mut web = WebCert::load(&cert, &key).unwrap();
        let first = presented(&web);
        web.reload_if_changed();
        assert_eq!(presented(&web), first, "unchanged files: nothing read");

        write_pair(dir.path(), &TestCa::new("two"));
        // Some file systems keep mtimes to the second: say it changed.
        web.seen = (None, None);
        web.reload_if_changed();
        let second = presented(&web);
        assert_ne!(second, first);

        std::fs::write(&key, "not a key").unwrap();
        web.seen = (None, None);
        web.reload_if_changed();
        assert_eq!(presented(&web), second, "a broken key replaced a good pair");
    }
}
