//! The workload side of the Workload API: what the sidecar, the helper and
//! `signet api` use to get their own identities. [`watch_x509`] keeps one
//! FetchX509SVID stream open, reconnecting with backoff, and publishes every
//! full-state update as an [`X509Context`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use signet_identity::{Bundle, BundleSet, CertificateDer, PrivateKey, TrustDomain, X509Svid};
use tokio::sync::watch;
use tonic::Request;

use signet_wire::workload::{JwtsvidRequest, X509svidRequest, X509svidResponse};

use crate::backoff::Backoff;
use crate::location::SocketLocation;
use crate::socket::explain_connect_error;
use crate::{SECURITY_HEADER, connect};

type Client = signet_wire::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient<
    tonic::transport::Channel,
>;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Why the socket could not be reached, from
    /// [`explain_connect_error`].
    #[error("cannot reach the Workload API: {0}")]
    Connect(String),
    #[error(
        "{0} does not serve the Workload API (it answered Unimplemented): is it a server's admin socket? Give the agent socket, the one `signet run` or `signet agent` prints as \"agent socket\""
    )]
    NotWorkloadApi(PathBuf),
    #[error("{} ({:?})", .0.message(), .0.code())]
    Status(tonic::Status),
    #[error("the agent sent a malformed {what}: {why}")]
    Malformed { what: &'static str, why: String },
    #[error("the agent returned no SVID")]
    NoSvid,
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> Self {
        Self::Status(status)
    }
}

/// Connects to the Workload API where `location` says it is (looked up
/// again on each call); a failure says why in words.
pub async fn connect_to(location: &SocketLocation) -> Result<(Client, PathBuf), ClientError> {
    let path = location.client_path();
    match connect(path.clone()).await {
        Ok(client) => Ok((client, path)),
        Err(e) => {
            let hint = if path.exists() {
                ""
            } else {
                "; is the agent running?"
            };
            Err(ClientError::Connect(format!(
                "{} ({}{hint})",
                explain_connect_error(&path, &e),
                location.origin()
            )))
        }
    }
}

/// The error for a status the Workload API answered at `path`:
/// Unimplemented means the socket serves something else.
pub fn status_error(path: &Path, status: tonic::Status) -> ClientError {
    if status.code() == tonic::Code::Unimplemented {
        ClientError::NotWorkloadApi(path.to_path_buf())
    } else {
        ClientError::Status(status)
    }
}

/// A request carrying the header every Workload API call needs.
pub fn with_header<T>(msg: T) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut().insert(
        SECURITY_HEADER,
        tonic::metadata::MetadataValue::from_static("true"),
    );
    req
}

/// Splits concatenated DER certificates, as the Workload API sends them.
pub fn split_der(der: &[u8]) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    use x509_parser::prelude::FromDer;
    let mut rest = der;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (next, _) = x509_parser::certificate::X509Certificate::from_der(rest).map_err(|e| {
            ClientError::Malformed {
                what: "certificate",
                why: e.to_string(),
            }
        })?;
        let len = rest.len() - next.len();
        out.push(CertificateDer::from(rest[..len].to_vec()));
        rest = next;
    }
    Ok(out)
}

/// One full-state X509 update: this workload's SVIDs (the first is the
/// default) and every trust bundle it may verify peers with.
#[derive(Debug, Clone)]
pub struct X509Context {
    pub svids: Vec<X509Svid>,
    pub bundles: BundleSet,
}

impl X509Context {
    pub fn from_response(resp: &X509svidResponse) -> Result<Self, ClientError> {
        let mut svids = Vec::with_capacity(resp.svids.len());
        let mut bundles = BundleSet::new();
        for s in &resp.svids {
            let svid = X509Svid::new(
                split_der(&s.x509_svid)?,
                PrivateKey::from_pkcs8_der(s.x509_svid_key.clone()),
            )
            .map_err(|e| ClientError::Malformed {
                what: "X509-SVID",
                why: e.to_string(),
            })?;
            let td = svid.spiffe_id().trust_domain();
            bundles.insert(bundle_from_der(td, &s.bundle)?);
            svids.push(svid);
        }
        if svids.is_empty() {
            return Err(ClientError::NoSvid);
        }
        for (td, der) in &resp.federated_bundles {
            let td = TrustDomain::parse(td).map_err(|e| ClientError::Malformed {
                what: "federated trust domain",
                why: format!("{td}: {e}"),
            })?;
            bundles.insert(bundle_from_der(td, der)?);
        }
        Ok(Self { svids, bundles })
    }

    /// The default SVID: the first one the agent sent.
    pub fn default_svid(&self) -> &X509Svid {
        &self.svids[0]
    }

    /// The SVID with `id`, or the default when `id` is `None`.
    pub fn svid(&self, id: Option<&str>) -> Option<&X509Svid> {
        match id {
            None => self.svids.first(),
            Some(id) => self.svids.iter().find(|s| s.spiffe_id().as_str() == id),
        }
    }

    /// When no SVID was named (`wanted` is `None`) and several are offered:
    /// a warning naming them, the one used (the first: the agent orders
    /// them by SPIFFE ID) and how to choose.
    pub fn ambiguity(&self, wanted: Option<&str>) -> Option<String> {
        if wanted.is_some() || self.svids.len() < 2 {
            return None;
        }
        let ids: Vec<&str> = self.svids.iter().map(|s| s.spiffe_id().as_str()).collect();
        Some(format!(
            "{} identities are issued to this workload ({}); using {}, the first by SPIFFE ID; name the one to use with --svid-id (svid_id in a config file)",
            ids.len(),
            ids.join(", "),
            ids[0]
        ))
    }

    /// The bundle of this workload's own trust domain.
    pub fn own_bundle(&self) -> Option<&Bundle> {
        let td = self.default_svid().spiffe_id().trust_domain();
        self.bundles.iter().find(|b| *b.trust_domain() == td)
    }
}

fn bundle_from_der(td: TrustDomain, der: &[u8]) -> Result<Bundle, ClientError> {
    let mut bundle = Bundle::new(td);
    for cert in split_der(der)? {
        bundle.add_x509_authority(cert);
    }
    Ok(bundle)
}

/// What a watcher knows: the latest context, or why there is none yet.
#[derive(Debug, Clone)]
pub enum X509State {
    /// No update yet; the string says what the last attempt ran into.
    Waiting(String),
    Ready(Arc<X509Context>),
}

impl X509State {
    pub fn context(&self) -> Option<&Arc<X509Context>> {
        match self {
            X509State::Ready(c) => Some(c),
            X509State::Waiting(_) => None,
        }
    }
}

/// A live view of this workload's X509 identity, kept current by a
/// background task. Dropping every clone of the watcher stops the task.
#[derive(Debug, Clone)]
pub struct X509Watcher {
    rx: watch::Receiver<X509State>,
}

impl X509Watcher {
    /// The latest context, if any has arrived.
    pub fn current(&self) -> Option<Arc<X509Context>> {
        self.rx.borrow().context().cloned()
    }

    /// The latest state, including why there is no identity yet.
    pub fn state(&self) -> X509State {
        self.rx.borrow().clone()
    }

    /// A receiver that sees every change.
    pub fn subscribe(&self) -> watch::Receiver<X509State> {
        self.rx.clone()
    }

    /// Waits until an identity is available (or the watcher task ended).
    pub async fn ready(&self) -> Option<Arc<X509Context>> {
        let mut rx = self.rx.clone();
        loop {
            if let Some(c) = rx.borrow_and_update().context() {
                return Some(c.clone());
            }
            rx.changed().await.ok()?;
        }
    }
}

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// While no identity has arrived yet, retries stay this frequent: a new
/// entry's SVID reaches the agent within a fraction of a second.
const MAX_BACKOFF_FIRST: Duration = Duration::from_millis(500);

/// The waiting reason of a watcher that has not reached the agent yet.
pub const CONNECTING: &str = "connecting";

/// Starts watching the X509 identity served on `socket`. The task keeps one
/// FetchX509SVID stream open; when the stream breaks or the agent has no
/// identity for us yet it retries with backoff (100 ms doubling to 5 s),
/// keeping the last good context meanwhile. Malformed updates are logged and
/// skipped, never published.
pub fn watch_x509(socket: SocketLocation) -> X509Watcher {
    let (tx, rx) = watch::channel(X509State::Waiting(CONNECTING.into()));
    tokio::spawn(run_watch(socket, tx));
    X509Watcher { rx }
}

async fn run_watch(socket: SocketLocation, tx: watch::Sender<X509State>) {
    let mut backoff = Backoff::new(MIN_BACKOFF, MAX_BACKOFF_FIRST);
    loop {
        let outcome = tokio::select! {
            outcome = stream_once(&socket, &tx, &mut backoff) => outcome,
            () = tx.closed() => return,
        };
        let why = match outcome {
            Ok(()) => "the agent closed the stream".to_string(),
            Err(e) => e.to_string(),
        };
        if tx.borrow().context().is_none() {
            tx.send_replace(X509State::Waiting(why.clone()));
        } else {
            backoff.set_max(MAX_BACKOFF);
        }
        let delay = backoff.next_delay();
        tracing::warn!(socket = %socket.client_path().display(), "Workload API: {why}; retrying in {delay:?}");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = tx.closed() => return,
        }
    }
}

async fn stream_once(
    socket: &SocketLocation,
    tx: &watch::Sender<X509State>,
    backoff: &mut Backoff,
) -> Result<(), ClientError> {
    let (mut client, path) = connect_to(socket).await?;
    let mut stream = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .map_err(|s| status_error(&path, s))?
        .into_inner();
    while let Some(resp) = stream.message().await? {
        match X509Context::from_response(&resp) {
            Ok(ctx) => {
                backoff.reset();
                tracing::debug!(
                    id = %ctx.default_svid().spiffe_id(),
                    serial = ctx.default_svid().serial(),
                    "X509 identity updated"
                );
                tx.send_replace(X509State::Ready(Arc::new(ctx)));
            }
            Err(e) => tracing::error!("ignoring an X509 update: {e}"),
        }
    }
    Ok(())
}

/// Fetches JWT-SVIDs for `audience` (all identities, or only `spiffe_id`).
pub async fn fetch_jwt(
    socket: &SocketLocation,
    audience: Vec<String>,
    spiffe_id: Option<String>,
) -> Result<Vec<(String, String)>, ClientError> {
    let (mut client, path) = connect_to(socket).await?;
    let resp = client
        .fetch_jwtsvid(with_header(JwtsvidRequest {
            audience,
            spiffe_id: spiffe_id.unwrap_or_default(),
        }))
        .await
        .map_err(|s| status_error(&path, s))?
        .into_inner();
    Ok(resp
        .svids
        .into_iter()
        .map(|s| (s.spiffe_id, s.svid))
        .collect())
}
