//! Fetching the bundles of federated trust domains from their bundle
//! endpoints, checking them, and storing the good ones (the change feed
//! then carries them to agents, workloads, Envoy and the sidecars).
//!
//! A fetch that fails, or a bundle that fails a check, never replaces the
//! stored bundle: the error is logged with the trust domain and URL, and
//! the fetch is retried with jittered backoff, never waiting longer than
//! the refresh interval the last good fetch set.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use signet_identity::{Bundle, BundleSet, SpiffeId, TrustDomain};
use signet_tls::{SharedBundles, SpiffeVerifier};
use signet_workload::backoff::Backoff;

use super::relationship::{EndpointAuth, Relationship};
use crate::Server;

/// Most bytes of a bundle document.
const MAX_BUNDLE: usize = 1024 * 1024;
/// Connect, handshake, request and body together.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Refresh bounds, whatever the foreign hint says.
const MIN_REFRESH: Duration = Duration::from_secs(1);
const MAX_REFRESH: Duration = Duration::from_secs(3600);
/// Without a hint: SPIRE's default.
const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
/// How often the relationships are read again from the datastore.
const RELOAD: Duration = Duration::from_secs(5);

/// Why a fetch failed or its bundle was refused.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(
        "no bundle of {0} is stored to authenticate its https_spiffe endpoint: set one first (signet bundle set, or --trust-domain-bundle)"
    )]
    NoBootstrap(String),
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("the endpoint answered {0}")]
    Status(u16),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("not a SPIFFE bundle: {0}")]
    Malformed(String),
    #[error("the bundle has no X.509 authority")]
    NoAuthorities,
    #[error("the bundle holds an authority of {found}, not of {expected}")]
    ForeignAuthority { found: String, expected: String },
    #[error("the bundle's sequence went backwards ({fetched} < {stored})")]
    SequenceBackwards { fetched: u64, stored: u64 },
}

/// Fetches the bundle of `rel`'s trust domain from its endpoint and checks
/// it against `stored` (the bundle held now, which also authenticates an
/// `https_spiffe` endpoint).
pub async fn fetch(
    rel: &Relationship,
    td: &TrustDomain,
    stored: Option<&Bundle>,
) -> Result<Bundle, FetchError> {
    tokio::time::timeout(FETCH_TIMEOUT, fetch_unbounded(rel, td, stored))
        .await
        .map_err(|_| FetchError::Timeout(FETCH_TIMEOUT))?
}

async fn fetch_unbounded(
    rel: &Relationship,
    td: &TrustDomain,
    stored: Option<&Bundle>,
) -> Result<Bundle, FetchError> {
    let url = url::Url::parse(&rel.bundle_endpoint_url)
        .map_err(|e| FetchError::Connect(e.to_string()))?;
    let host = url.host_str().unwrap_or_default().to_owned();
    let port = url.port_or_known_default().unwrap_or(443);
    let tls = client_config(rel, td, stored)?;
    // An IPv6 host comes bracketed in URLs and not in a server name.
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let name = rustls::pki_types::ServerName::try_from(bare.clone())
        .map_err(|e| FetchError::Connect(format!("host {host:?}: {e}")))?;
    let tcp = tokio::net::TcpStream::connect((bare.as_str(), port))
        .await
        .map_err(|e| FetchError::Connect(format!("{host}:{port}: {e}")))?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .map_err(|e| FetchError::Tls(e.to_string()))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| FetchError::Http(e.to_string()))?;
    tokio::spawn(conn);
    let path = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    };
    let req = hyper::Request::get(path)
        .header("host", url.authority())
        .header("accept", "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| FetchError::Http(e.to_string()))?;
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| FetchError::Http(e.to_string()))?;
    if !resp.status().is_success() {
        return Err(FetchError::Status(resp.status().as_u16()));
    }
    let body = Limited::new(resp.into_body(), MAX_BUNDLE)
        .collect()
        .await
        .map_err(|e| FetchError::Http(format!("reading the bundle: {e}")))?
        .to_bytes();
    let bundle =
        Bundle::parse_json(td.clone(), &body).map_err(|e| FetchError::Malformed(e.to_string()))?;
    check(&bundle, td, stored)?;
    Ok(bundle)
}

/// TLS to the endpoint, authenticated as its profile says.
fn client_config(
    rel: &Relationship,
    td: &TrustDomain,
    stored: Option<&Bundle>,
) -> Result<rustls::ClientConfig, FetchError> {
    let builder = rustls::ClientConfig::builder_with_provider(signet_tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| FetchError::Tls(e.to_string()))?;
    let mut config = match &rel.auth {
        EndpointAuth::HttpsSpiffe { endpoint_spiffe_id } => {
            let bundle = stored.ok_or_else(|| FetchError::NoBootstrap(td.to_string()))?;
            let expected = SpiffeId::parse(endpoint_spiffe_id)
                .map_err(|e| FetchError::Tls(format!("endpoint SPIFFE ID: {e}")))?;
            let mut set = BundleSet::new();
            set.insert(bundle.clone());
            let verifier = SpiffeVerifier::new(
                SharedBundles::new(set),
                Arc::new(move |id: &SpiffeId| *id == expected),
            );
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth()
        }
        EndpointAuth::HttpsWeb { ca_pem } => {
            let mut roots = rustls::RootCertStore::empty();
            match ca_pem {
                Some(pem) => {
                    for cert in signet_identity::bundle::certificates_from_pem(pem.as_bytes())
                        .map_err(|e| FetchError::Tls(format!("the CA file: {e}")))?
                    {
                        roots
                            .add(cert)
                            .map_err(|e| FetchError::Tls(format!("the CA file: {e}")))?;
                    }
                }
                None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A fetched bundle must hold X.509 authorities, none of which names
/// another trust domain, and its sequence must not go backwards.
pub fn check(bundle: &Bundle, td: &TrustDomain, stored: Option<&Bundle>) -> Result<(), FetchError> {
    if bundle.x509_authorities().is_empty() {
        return Err(FetchError::NoAuthorities);
    }
    for cert in bundle.x509_authorities() {
        let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert) else {
            return Err(FetchError::Malformed(
                "an X.509 authority does not parse".into(),
            ));
        };
        let Ok(Some(san)) = parsed.subject_alternative_name() else {
            continue;
        };
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(uri) = name
                && let Ok(id) = SpiffeId::parse(uri)
                && id.trust_domain() != *td
            {
                return Err(FetchError::ForeignAuthority {
                    found: id.trust_domain().to_string(),
                    expected: td.to_string(),
                });
            }
        }
    }
    if let Some(stored) = stored
        && bundle.sequence() < stored.sequence()
    {
        return Err(FetchError::SequenceBackwards {
            fetched: bundle.sequence(),
            stored: stored.sequence(),
        });
    }
    Ok(())
}

/// When to fetch again after a good fetch: the foreign hint, bounded.
fn next_refresh(bundle: &Bundle) -> Duration {
    bundle
        .refresh_hint()
        .map_or(DEFAULT_REFRESH, Duration::from_secs)
        .clamp(MIN_REFRESH, MAX_REFRESH)
}

/// One relationship's schedule.
#[derive(Debug)]
struct Schedule {
    next: Instant,
    backoff: Backoff,
    failing: bool,
}

/// Keeps every federated bundle current until `stop` resolves: reads the
/// relationships every few seconds, fetches each when due, stores what
/// changed.
pub async fn keep_federated(server: Arc<Server>, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    let mut schedules: BTreeMap<String, Schedule> = BTreeMap::new();
    let mut relationships = Vec::new();
    let mut reloaded = Instant::now();
    let mut reload_now = true;
    loop {
        if reload_now || reloaded.elapsed() >= RELOAD {
            match server.store().list_federations().await {
                Ok(list) => relationships = list,
                Err(e) => tracing::warn!(error = %e, "cannot read the federation relationships"),
            }
            schedules.retain(|td, _| relationships.iter().any(|r| r.trust_domain == *td));
            if reload_now {
                // Something changed or a refresh was asked for: all due.
                for s in schedules.values_mut() {
                    s.next = Instant::now();
                }
            }
            reloaded = Instant::now();
            reload_now = false;
        }
        let now = Instant::now();
        for rel in &relationships {
            let schedule = schedules
                .entry(rel.trust_domain.clone())
                .or_insert_with(|| Schedule {
                    next: now,
                    backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(60)),
                    failing: false,
                });
            if schedule.next > now {
                continue;
            }
            let refreshed = refresh_one(&server, rel).await;
            let td = rel.trust_domain.to_string();
            metrics::counter!("signet_server_federation_refreshes_total", "trust_domain" => td.clone(), "result" => if refreshed.is_ok() { "ok" } else { "error" }).increment(1);
            metrics::gauge!("signet_server_federation_failing", "trust_domain" => td)
                .set(if refreshed.is_ok() { 0.0 } else { 1.0 });
            match refreshed {
                Ok(next) => {
                    if schedule.failing {
                        tracing::info!(trust_domain = %rel.trust_domain, "bundle endpoint reachable again");
                    }
                    schedule.failing = false;
                    schedule.backoff.reset();
                    // Retries never wait longer than a good fetch would.
                    schedule.backoff.set_max(next);
                    schedule.next = Instant::now() + next;
                }
                Err(e) => {
                    let wait = schedule.backoff.next_delay();
                    tracing::warn!(
                        trust_domain = %rel.trust_domain,
                        url = %rel.bundle_endpoint_url,
                        error = %e,
                        retry_in = ?wait,
                        "cannot refresh the federated bundle; the stored one stays"
                    );
                    schedule.failing = true;
                    schedule.next = Instant::now() + wait;
                }
            }
        }
        let due = schedules
            .values()
            .map(|s| s.next)
            .min()
            .unwrap_or_else(|| Instant::now() + RELOAD)
            .min(reloaded + RELOAD);
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep_until(due.into()) => {}
            _ = server.federation_poke.notified() => reload_now = true,
        }
    }
}

/// Fetches one relationship's bundle and stores it if it changed; returns
/// when to fetch again.
async fn refresh_one(server: &Server, rel: &Relationship) -> Result<Duration, String> {
    let td = TrustDomain::parse(&rel.trust_domain).map_err(|e| e.to_string())?;
    let stored = server
        .store()
        .get_bundle(&td)
        .await
        .map_err(|e| e.to_string())?;
    let fetched = fetch(rel, &td, stored.as_ref())
        .await
        .map_err(|e| e.to_string())?;
    let changed = stored.as_ref().is_none_or(|s| {
        !s.same_keys(&fetched)
            || s.sequence() != fetched.sequence()
            || s.refresh_hint() != fetched.refresh_hint()
    });
    if changed {
        server
            .store()
            .put_bundle(&fetched)
            .await
            .map_err(|e| e.to_string())?;
        server.wrote();
        tracing::info!(
            trust_domain = %td,
            sequence = fetched.sequence(),
            "federated bundle updated from its endpoint"
        );
    }
    Ok(next_refresh(&fetched))
}
