//! The OIDC discovery provider: `/.well-known/openid-configuration` and
//! the JWKS of the JWT-SVID signing keys (current, prepared and still
//! valid old ones, so it rotates with them), for OIDC relying parties
//! (cloud IAM, OpenBao/Vault's `jwt` auth) to verify JWT-SVIDs from
//! discovery alone, as SPIRE's OIDC discovery provider serves them.
//!
//! Runs inside the server (`--oidc-listen`) or as its own process fed by a
//! [`KeySource`]. Over HTTPS with a certificate from files (read again
//! when they change), a self-signed one for local use
//! ([`self_signed`]), or plain HTTP behind a TLS-terminating proxy.
//!
//! The `issuer` served is the `iss` of every JWT-SVID: relying parties
//! compare the two exactly, and find the document at the issuer's URL
//! plus `/.well-known/openid-configuration`.

pub mod self_signed;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use signet_identity::Bundle;
use tokio::net::TcpListener;

use crate::https::{self, FileCert};
use crate::{Server, ServerError};

pub use self_signed::SelfSigned;

/// Where the discovery document lives below the issuer's URL.
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
/// Where the JWKS lives below the issuer's URL (as SPIRE's provider).
pub const JWKS_PATH: &str = "/keys";

/// How the provider is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OidcTransport {
    /// HTTPS with a certificate chain and key from PEM files.
    Https { cert: PathBuf, key: PathBuf },
    /// HTTPS with a certificate from a local CA kept in the data dir (for
    /// local use: clients trust its `ca.pem`).
    SelfSigned,
    /// Plain HTTP, for a TLS-terminating proxy in front.
    Http,
}

/// The provider's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcProvider {
    pub listen: SocketAddr,
    pub transport: OidcTransport,
}

/// Where the provider's keys come from: the server itself, or (for a
/// provider of its own) the server's admin API.
pub trait KeySource: Send + Sync + 'static {
    /// The current bundle of the trust domain.
    fn bundle(&self) -> Pin<Box<dyn Future<Output = Result<Bundle, String>> + Send + '_>>;
}

impl KeySource for Server {
    fn bundle(&self) -> Pin<Box<dyn Future<Output = Result<Bundle, String>> + Send + '_>> {
        Box::pin(async { self.own_bundle().await.map_err(|e| e.to_string()) })
    }
}

/// The issuer when none is configured: the provider's own URL, on a
/// loopback or specific address (an unspecified one names no host a
/// client could use).
pub fn default_issuer(bound: SocketAddr, transport: &OidcTransport) -> Result<String, String> {
    if bound.ip().is_unspecified() {
        return Err(format!(
            "the OIDC provider listens on {bound}, which names no host clients can reach: set jwt_issuer (--jwt-issuer) to the URL they use"
        ));
    }
    let scheme = match transport {
        OidcTransport::Http => "http",
        _ => "https",
    };
    Ok(format!("{scheme}://{bound}"))
}

/// Checks an issuer URL for use by relying parties and with `transport`;
/// returns it without a trailing slash.
pub fn check_issuer(issuer: &str, transport: Option<&OidcTransport>) -> Result<String, String> {
    let url = url::Url::parse(issuer).map_err(|e| format!("jwt_issuer {issuer:?}: {e}"))?;
    if !matches!(url.scheme(), "https" | "http") || url.host().is_none() {
        return Err(format!(
            "jwt_issuer {issuer:?} must be an https:// URL with a host (an OIDC issuer)"
        ));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(format!(
            "jwt_issuer {issuer:?} must have no query, fragment or user (OpenID Connect Discovery)"
        ));
    }
    match transport {
        Some(OidcTransport::Https { .. } | OidcTransport::SelfSigned)
            if url.scheme() != "https" =>
        {
            Err(format!(
                "jwt_issuer {issuer:?} is http:// but the OIDC provider serves HTTPS: relying parties would fetch discovery from a URL nothing serves"
            ))
        }
        Some(_) => Ok(issuer.trim_end_matches('/').to_owned()),
        None if url.scheme() != "https" => Err(format!(
            "jwt_issuer {issuer:?} must be https:// (relying parties fetch keys from it); plain http is only for a provider behind a proxy (--oidc-insecure-http)"
        )),
        None => Ok(issuer.trim_end_matches('/').to_owned()),
    }
}

/// The DNS names and addresses a self-signed certificate must cover.
fn self_signed_names(bound: SocketAddr, issuer: &str) -> Vec<String> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if !bound.ip().is_unspecified() {
        names.push(bound.ip().to_string());
    }
    if let Some(host) = url::Url::parse(issuer)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
    {
        names.push(host.trim_matches(['[', ']']).to_owned());
    }
    names.sort();
    names.dedup();
    names
}

/// A provider with its listener bound and its certificate ready.
pub struct PreparedProvider {
    listener: TcpListener,
    addr: SocketAddr,
    issuer: String,
    cert: Option<FileCert>,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    /// The CA to trust for a self-signed certificate.
    ca_file: Option<PathBuf>,
    transport: OidcTransport,
}

impl std::fmt::Debug for PreparedProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedProvider")
            .field("addr", &self.addr)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

/// Binds the provider's listener; a bound port is needed to name the
/// default issuer.
pub async fn bind(config: &OidcProvider) -> Result<TcpListener, ServerError> {
    TcpListener::bind(config.listen).await.map_err(|e| {
        ServerError::InvalidArgument(format!(
            "cannot listen on {} for the OIDC provider: {e}",
            config.listen
        ))
    })
}

impl PreparedProvider {
    /// Readies the provider on `listener` for `issuer` (checked already);
    /// a self-signed certificate is kept in `self_signed_dir`.
    pub fn new(
        config: &OidcProvider,
        listener: TcpListener,
        issuer: String,
        self_signed_dir: &Path,
    ) -> Result<Self, ServerError> {
        let addr = listener.local_addr().map_err(|e| {
            ServerError::InvalidArgument(format!("the OIDC provider's address: {e}"))
        })?;
        let (files, ca_file) = match &config.transport {
            OidcTransport::Http => (None, None),
            OidcTransport::Https { cert, key } => (Some((cert.clone(), key.clone())), None),
            OidcTransport::SelfSigned => {
                let s = SelfSigned::in_dir(self_signed_dir);
                s.ensure(&self_signed_names(addr, &issuer))?;
                (Some((s.cert, s.key)), Some(s.ca))
            }
        };
        let (cert, acceptor) = match files {
            None => (None, None),
            Some((cert, key)) => {
                let file = FileCert::load("OIDC provider", &cert, &key)?;
                let tls = signet_tls::public_server_config(file.cert.clone())
                    .map_err(|e| ServerError::InvalidArgument(format!("OIDC provider TLS: {e}")))?;
                (
                    Some(file),
                    Some(tokio_rustls::TlsAcceptor::from(Arc::new(tls))),
                )
            }
        };
        Ok(Self {
            listener,
            addr,
            issuer,
            cert,
            acceptor,
            ca_file,
            transport: config.transport.clone(),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    pub fn transport(&self) -> &OidcTransport {
        &self.transport
    }

    /// Serves discovery with keys from `source` until `stop` resolves.
    pub async fn serve(self, source: Arc<dyn KeySource>, stop: impl Future<Output = ()>) {
        let PreparedProvider {
            listener,
            issuer,
            mut cert,
            acceptor,
            ..
        } = self;
        let discovery: Arc<str> = discovery_document(&issuer).into();
        let answer = move |req: Request<hyper::body::Incoming>| {
            let (source, discovery) = (source.clone(), discovery.clone());
            async move { answer(source.as_ref(), &discovery, &req).await }
        };
        let upkeep = move || {
            if let Some(cert) = &mut cert {
                cert.reload_if_changed();
            }
        };
        https::serve(
            "OIDC provider",
            listener,
            acceptor,
            (https::FILE_CHECK, upkeep),
            answer,
            stop,
        )
        .await;
    }
}

/// The discovery document: the fields relying parties require, with the
/// algorithms Signet's JWT key types sign with.
fn discovery_document(issuer: &str) -> String {
    json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}{JWKS_PATH}"),
        "authorization_endpoint": "",
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256", "ES384", "RS256"],
    })
    .to_string()
}

/// One request: discovery and the JWKS at any prefix (the issuer's path,
/// or none behind a proxy that strips it); `GET` and `HEAD` only.
async fn answer<B>(
    source: &dyn KeySource,
    discovery: &str,
    req: &Request<B>,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return https::plain(StatusCode::METHOD_NOT_ALLOWED, "only GET is served here\n");
    }
    let head = req.method() == Method::HEAD;
    let path = req.uri().path();
    if path.ends_with(DISCOVERY_PATH) {
        return https::json(head, discovery.to_owned());
    }
    if !path.ends_with(JWKS_PATH) {
        return https::plain(
            StatusCode::NOT_FOUND,
            "served here: /.well-known/openid-configuration and /keys\n",
        );
    }
    match source.bundle().await {
        Ok(bundle) => https::json(head, bundle.jwks_json().to_string()),
        Err(e) => {
            tracing::error!(error = %e, "OIDC provider: cannot read the signing keys");
            https::plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "the signing keys cannot be read right now\n",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuers_relying_parties_cannot_use_are_refused_by_name() {
        let tls = OidcTransport::SelfSigned;
        assert_eq!(
            check_issuer("https://oidc.example.org/", Some(&tls)).unwrap(),
            "https://oidc.example.org"
        );
        for (bad, why) in [
            ("oidc.example.org", "relative URL"),
            ("ftp://oidc.example.org", "https:// URL"),
            ("https://oidc.example.org/?a=b", "no query"),
            ("https://oidc.example.org/#x", "no query, fragment"),
            ("http://oidc.example.org", "serves HTTPS"),
        ] {
            let e = check_issuer(bad, Some(&tls)).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        // Behind a proxy, the issuer is the proxy's https URL.
        assert!(check_issuer("https://oidc.example.org", Some(&OidcTransport::Http)).is_ok());
        // Without a provider, a plain http issuer is refused.
        assert!(check_issuer("http://oidc.example.org", None).is_err());

        let any: SocketAddr = "0.0.0.0:8443".parse().unwrap();
        assert!(
            default_issuer(any, &tls)
                .unwrap_err()
                .contains("--jwt-issuer")
        );
        let lo: SocketAddr = "127.0.0.1:8443".parse().unwrap();
        assert_eq!(default_issuer(lo, &tls).unwrap(), "https://127.0.0.1:8443");
        assert_eq!(
            default_issuer(lo, &OidcTransport::Http).unwrap(),
            "http://127.0.0.1:8443"
        );
    }

    #[test]
    fn a_self_signed_certificate_names_the_issuers_host() {
        let bound: SocketAddr = "[::1]:9000".parse().unwrap();
        let names = self_signed_names(bound, "https://oidc.example.org:9000/td");
        assert!(names.contains(&"oidc.example.org".to_owned()), "{names:?}");
        assert!(names.contains(&"::1".to_owned()), "{names:?}");
    }
}
