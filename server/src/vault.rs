//! An OpenBao (or Vault) PKI secrets engine as the upstream CA, as SPIRE's
//! `vault` UpstreamAuthority: each new X.509 authority's CSR is signed by
//! `POST /v1/<mount>/root/sign-intermediate`; the PKI's root goes in the
//! bundle. The client logs in with a token (a file, read again at every
//! call, or `VAULT_TOKEN`), a TLS client certificate (the `cert` auth
//! method) or an AppRole, and only when it needs to sign: once per CA
//! rotation. A token it logged in for is revoked once used.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use signet_identity::TrustDomain;
use zeroize::Zeroizing;

use crate::ca::{MintedCa, RemoteUpstream};

/// Connect, handshake, request and answer together.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Most bytes of an answer.
const MAX_ANSWER: usize = 1024 * 1024;

/// Where the PKI is and how to log in.
#[derive(Debug, Clone)]
pub struct VaultConfig {
    /// `https://HOST:PORT` (or `http://` for a local dev server).
    pub addr: url::Url,
    /// The PKI secrets engine's mount path [`pki`].
    pub pki_mount: String,
    /// CA certificates (PEM) that the server's TLS certificate chains to
    /// [default: the web PKI's roots].
    pub ca_cert: Option<PathBuf>,
    /// Enterprise/OpenBao namespace, sent as `X-Vault-Namespace`.
    pub namespace: Option<String>,
    pub auth: VaultAuth,
}

/// How to get a token.
#[derive(Clone)]
pub enum VaultAuth {
    /// A token read from this file at every call.
    TokenFile(PathBuf),
    /// A token given in the environment (`VAULT_TOKEN`).
    Token(Arc<Zeroizing<String>>),
    /// Log in with a TLS client certificate (`auth/<mount>/login`).
    Cert {
        mount: String,
        /// The cert auth role to log in as [default: any that matches].
        role: Option<String>,
        cert: PathBuf,
        key: PathBuf,
    },
    /// Log in with an AppRole (`auth/<mount>/login`).
    AppRole {
        mount: String,
        role_id: String,
        secret_id_file: PathBuf,
    },
}

impl fmt::Debug for VaultAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VaultAuth::TokenFile(p) => f.debug_tuple("TokenFile").field(p).finish(),
            VaultAuth::Token(_) => f.write_str("Token([redacted])"),
            VaultAuth::Cert {
                mount, role, cert, ..
            } => f
                .debug_struct("Cert")
                .field("mount", mount)
                .field("role", role)
                .field("cert", cert)
                .finish_non_exhaustive(),
            VaultAuth::AppRole { mount, role_id, .. } => f
                .debug_struct("AppRole")
                .field("mount", mount)
                .field("role_id", role_id)
                .finish_non_exhaustive(),
        }
    }
}

impl VaultAuth {
    pub fn name(&self) -> &'static str {
        match self {
            VaultAuth::TokenFile(_) | VaultAuth::Token(_) => "token",
            VaultAuth::Cert { .. } => "cert",
            VaultAuth::AppRole { .. } => "approle",
        }
    }
}

/// The OpenBao/Vault PKI upstream of one trust domain's CA.
#[derive(Debug)]
pub struct VaultUpstream {
    config: VaultConfig,
    trust_domain: TrustDomain,
}

impl VaultUpstream {
    /// Checks what can be checked without calling the server: the
    /// address, and that the files named exist and parse.
    pub fn new(config: VaultConfig, trust_domain: TrustDomain) -> Result<Self, String> {
        match config.addr.scheme() {
            "https" => {}
            "http" => {
                let loopback = match config.addr.host() {
                    Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                    Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                    Some(url::Host::Domain(d)) => d == "localhost",
                    None => false,
                };
                if !loopback {
                    return Err(format!(
                        "{} is plain http to another host: tokens would cross the network in the clear; use https",
                        config.addr
                    ));
                }
            }
            other => return Err(format!("{}: scheme {other} is not http(s)", config.addr)),
        }
        if matches!(config.auth, VaultAuth::Cert { .. }) && config.addr.scheme() != "https" {
            return Err("cert auth needs an https address".into());
        }
        if config.pki_mount.trim_matches('/').is_empty() {
            return Err("the PKI mount path is empty".into());
        }
        let upstream = Self {
            config,
            trust_domain,
        };
        upstream.tls()?;
        Ok(upstream)
    }

    /// TLS settings: the CA file's roots (or the web PKI's), and the
    /// client certificate for cert auth.
    fn tls(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        let mut roots = rustls::RootCertStore::empty();
        match &self.config.ca_cert {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
                let certs = signet_identity::bundle::certificates_from_pem(&pem)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                for cert in certs {
                    roots
                        .add(cert)
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let builder = rustls::ClientConfig::builder_with_provider(signet_tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        let mut tls = match &self.config.auth {
            VaultAuth::Cert { cert, key, .. } => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| format!("cert auth certificate {}: {e}", cert.display()))?;
                if chain.is_empty() {
                    return Err(format!(
                        "cert auth certificate {}: no certificate",
                        cert.display()
                    ));
                }
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| format!("cert auth key {}: {e}", key.display()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("cert auth certificate and key: {e}"))?
            }
            _ => builder.with_no_client_auth(),
        };
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(tls))
    }

    /// One call: `method path` with a JSON body; the answer's JSON, or
    /// the server's own errors.
    async fn call(
        &self,
        method: hyper::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<Value, String> {
        tokio::time::timeout(CALL_TIMEOUT, self.call_unbounded(method, path, token, body))
            .await
            .map_err(|_| format!("no answer in {CALL_TIMEOUT:?}"))?
    }

    async fn call_unbounded(
        &self,
        method: hyper::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let addr = &self.config.addr;
        let host = addr.host_str().unwrap_or_default();
        let bare = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = addr.port_or_known_default().unwrap_or(8200);
        let tcp = tokio::net::TcpStream::connect((bare.as_str(), port))
            .await
            .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
        let uri = format!("/v1/{}", path.trim_start_matches('/'));
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(&uri)
            .header("host", addr.authority())
            .header("content-type", "application/json");
        if let Some(token) = token {
            req = req.header("x-vault-token", token);
        }
        if let Some(ns) = &self.config.namespace {
            req = req.header("x-vault-namespace", ns);
        }
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let resp = if addr.scheme() == "https" {
            let name = rustls::pki_types::ServerName::try_from(bare.clone())
                .map_err(|e| format!("host {host:?}: {e}"))?;
            let tls = tokio_rustls::TlsConnector::from(self.tls()?)
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS with {host}:{port}: {e}"))?;
            send(TokioIo::new(tls), req).await?
        } else {
            send(TokioIo::new(tcp), req).await?
        };
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        let value: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|e| {
                format!("{uri} answered {status} with something that is not JSON: {e}")
            })?
        };
        if !status.is_success() {
            let errors = value["errors"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .unwrap_or_default();
            return Err(format!("{uri} answered {status}: {errors}"));
        }
        Ok(value)
    }

    /// A token to call the PKI with, and whether it was made for this
    /// call (and is to be revoked after it).
    async fn token(&self) -> Result<(Zeroizing<String>, bool), String> {
        let login = |mount: &str| format!("auth/{}/login", mount.trim_matches('/'));
        let body = match &self.config.auth {
            VaultAuth::Token(token) => return Ok((Zeroizing::new(token.to_string()), false)),
            VaultAuth::TokenFile(path) => {
                let token = Zeroizing::new(
                    std::fs::read_to_string(path)
                        .map_err(|e| format!("token file {}: {e}", path.display()))?,
                );
                let token = Zeroizing::new(token.trim().to_owned());
                if token.is_empty() {
                    return Err(format!("token file {} is empty", path.display()));
                }
                return Ok((token, false));
            }
            VaultAuth::Cert { mount, role, .. } => (
                login(mount),
                json!({ "name": role.clone().unwrap_or_default() }),
            ),
            VaultAuth::AppRole {
                mount,
                role_id,
                secret_id_file,
            } => {
                let secret =
                    Zeroizing::new(std::fs::read_to_string(secret_id_file).map_err(|e| {
                        format!("secret_id file {}: {e}", secret_id_file.display())
                    })?);
                (
                    login(mount),
                    json!({ "role_id": role_id, "secret_id": secret.trim() }),
                )
            }
        };
        let answer = self
            .call(hyper::Method::POST, &body.0, None, Some(body.1))
            .await
            .map_err(|e| format!("{} login: {e}", self.config.auth.name()))?;
        let token = answer["auth"]["client_token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                format!(
                    "{} login: the answer holds no token",
                    self.config.auth.name()
                )
            })?;
        Ok((Zeroizing::new(token.to_owned()), true))
    }
}

async fn send<S>(
    io: TokioIo<S>,
    req: hyper::Request<Full<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    tokio::spawn(conn);
    sender
        .send_request(req)
        .await
        .map_err(|e| format!("HTTP: {e}"))
}

/// The certificates of a PEM field of an answer.
fn pem_field(v: &Value, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = v
        .as_str()
        .ok_or_else(|| format!("the answer holds no {what}"))?;
    signet_identity::bundle::certificates_from_pem(pem.as_bytes())
        .map_err(|e| format!("the answer's {what}: {e}"))
}

/// The certificates above `cert` among `named`, nearest first, and the
/// root they end at: a self-signed one, or else the last found (SPIRE
/// reads an upstream chain the same way).
fn order_chain(
    cert: &CertificateDer<'static>,
    mut named: Vec<CertificateDer<'static>>,
) -> Result<(Vec<CertificateDer<'static>>, CertificateDer<'static>), String> {
    let signed = |child: &CertificateDer<'_>, parent: &CertificateDer<'_>| {
        let (Ok((_, child)), Ok((_, parent))) = (
            x509_parser::parse_x509_certificate(child),
            x509_parser::parse_x509_certificate(parent),
        ) else {
            return false;
        };
        child.issuer() == parent.subject()
            && child.verify_signature(Some(parent.public_key())).is_ok()
    };
    let mut chain: Vec<CertificateDer<'static>> = Vec::new();
    let mut current = cert.clone();
    while let Some(i) = named.iter().position(|c| signed(&current, c)) {
        let parent = named.swap_remove(i);
        if signed(&parent, &parent) {
            return Ok((chain, parent));
        }
        chain.push(parent.clone());
        current = parent;
    }
    chain
        .pop()
        .map(|root| (chain, root))
        .ok_or_else(|| "none of the CA certificates it returned signed ours".to_owned())
}

#[async_trait::async_trait]
impl RemoteUpstream for VaultUpstream {
    async fn mint_x509_ca(&self, csr_pem: &str, ttl: Duration) -> Result<MintedCa, String> {
        let (token, made) = self.token().await?;
        let path = format!(
            "{}/root/sign-intermediate",
            self.config.pki_mount.trim_matches('/')
        );
        let request = json!({
            "csr": csr_pem,
            "common_name": self.trust_domain.to_string(),
            "use_csr_values": true,
            "exclude_cn_from_sans": true,
            "uri_sans": self.trust_domain.id().as_str(),
            "ttl": format!("{}s", ttl.as_secs()),
            "format": "pem",
        });
        let answer = self
            .call(hyper::Method::POST, &path, Some(&token), Some(request))
            .await;
        if made {
            // The token was for this call only.
            if let Err(e) = self
                .call(
                    hyper::Method::POST,
                    "auth/token/revoke-self",
                    Some(&token),
                    None,
                )
                .await
            {
                tracing::debug!(error = %e, "cannot revoke the login token; it expires on its own");
            }
        }
        let data = &answer?["data"];
        let cert = pem_field(&data["certificate"], "certificate")?
            .into_iter()
            .next()
            .ok_or("the answer's certificate is empty")?;
        // The CAs it names (`ca_chain` may hold the new certificate, the
        // issuer, its parents and the root, in an order Vault versions
        // disagree on), put in order from our certificate up.
        let mut named = pem_field(&data["issuing_ca"], "issuing_ca")?;
        if let Some(list) = data["ca_chain"].as_array() {
            for pem in list {
                named.extend(pem_field(pem, "ca_chain")?);
            }
        }
        named.retain(|c| *c != cert);
        let (chain, root) = order_chain(&cert, named)?;
        Ok(MintedCa {
            cert,
            chain,
            roots: vec![root],
        })
    }

    fn describe(&self) -> String {
        format!(
            "{}/v1/{} (OpenBao/Vault PKI)",
            self.config.addr.as_str().trim_end_matches('/'),
            self.config.pki_mount.trim_matches('/')
        )
    }
}
