//! HTTP mode of an inbound listener: HTTP/1.1 and HTTP/2 from the peer,
//! each request authorized by the policy (OPA-Envoy input with the
//! request), then forwarded to the app over pooled HTTP/1.1 keep-alive with
//! the peer's identity in `x-forwarded-client-cert` (Envoy's format). An
//! XFCC header from outside is always replaced, never passed on.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use metrics::{counter, histogram};
use signet_policy::PolicyHandle;
use signet_policy::input::{HttpRequest, InputBuilder};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::Shutdown;

pub(crate) type Body = Either<Incoming, Full<Bytes>>;

pub(crate) const XFCC: &str = "x-forwarded-client-cert";

/// Headers that describe one hop and are never forwarded.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
];

/// Forwards requests of every connection of one listener to the app.
#[derive(Debug)]
pub(crate) struct Forwarder {
    listener: Arc<str>,
    to: SocketAddr,
    client: Client<HttpConnector, Incoming>,
}

/// What is known about one connection.
#[derive(Debug, Clone)]
pub(crate) struct ConnContext {
    pub peer_id: String,
    pub own_id: String,
    /// Lowercase hex SHA-256 of the peer's leaf certificate (XFCC `Hash`).
    pub peer_cert_hash: String,
    pub input: InputBuilder,
    pub policy: Option<Arc<PolicyHandle>>,
}

impl Forwarder {
    pub(crate) fn new(listener: Arc<str>, to: SocketAddr, connect_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Forwarder {
            listener,
            to,
            client,
        }
    }

    /// Serves one TLS connection until it closes or the proxy drains.
    pub(crate) async fn serve<S>(self: Arc<Self>, tls: S, ctx: ConnContext, shutdown: Shutdown)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let ctx = Arc::new(ctx);
        let this = self.clone();
        let service = hyper::service::service_fn(move |req| {
            let this = this.clone();
            let ctx = ctx.clone();
            async move { Ok::<_, Infallible>(this.request(req, &ctx).await) }
        });
        let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        let conn = builder.serve_connection(TokioIo::new(tls), service);
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "HTTP connection ended with an error");
                }
                return;
            }
            () = shutdown.drained() => {}
        }
        conn.as_mut().graceful_shutdown();
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "HTTP connection ended with an error while draining");
        }
    }

    async fn request(&self, mut req: Request<Incoming>, ctx: &ConnContext) -> Response<Body> {
        let listener = self.listener.to_string();
        if let Some(policy) = &ctx.policy {
            let doc = ctx.input.clone().http(describe(&req)).build();
            let started = Instant::now();
            let decision = policy.evaluate(&doc);
            histogram!("signet_proxy_policy_eval_seconds", "listener" => listener.clone())
                .record(started.elapsed().as_secs_f64());
            signet_policy::audit(&decision, &doc);
            if !decision.allow {
                counter!("signet_proxy_decisions_total", "listener" => listener, "result" => "deny")
                    .increment(1);
                tracing::warn!(
                    peer_id = %ctx.peer_id,
                    method = %req.method(),
                    path = %req.uri().path(),
                    reason = decision.reason.as_deref().unwrap_or("policy denied"),
                    revision = %decision.revision,
                    "request rejected: policy denied"
                );
                return denial(&decision);
            }
            counter!("signet_proxy_decisions_total", "listener" => listener.clone(), "result" => "allow")
                .increment(1);
            // As the OPA-Envoy plugin does: an allow decision's headers are
            // added to the request the app receives.
            for (k, v) in &decision.headers {
                if let (Ok(k), Ok(v)) = (HeaderName::try_from(k.as_str()), HeaderValue::from_str(v))
                    && k.as_str() != XFCC
                {
                    req.headers_mut().insert(k, v);
                }
            }
        }
        match self.forward(req, ctx).await {
            Ok(resp) => {
                counter!("signet_proxy_requests_total", "listener" => listener, "result" => "forwarded").increment(1);
                resp.map(Either::Left)
            }
            Err(e) => {
                counter!("signet_proxy_requests_total", "listener" => listener, "result" => "upstream_error").increment(1);
                tracing::error!(app = %self.to, error = %e, "cannot forward the request to the app");
                plain(StatusCode::BAD_GATEWAY, "upstream unavailable\n")
            }
        }
    }

    async fn forward(
        &self,
        mut req: Request<Incoming>,
        ctx: &ConnContext,
    ) -> Result<Response<Incoming>, String> {
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let uri: hyper::Uri = format!("http://{}{}", self.to, path)
            .parse()
            .map_err(|e| format!("request target: {e}"))?;
        let authority = req.uri().authority().map(|a| a.to_string());
        *req.uri_mut() = uri;
        *req.version_mut() = hyper::Version::HTTP_11;
        let headers = req.headers_mut();
        for h in HOP_BY_HOP {
            headers.remove(h);
        }
        // HTTP/2 carries the host in :authority; HTTP/1.1 apps need Host.
        if !headers.contains_key(hyper::header::HOST)
            && let Some(a) = authority
            && let Ok(v) = HeaderValue::from_str(&a)
        {
            headers.insert(hyper::header::HOST, v);
        }
        let xfcc = format!(
            "By={};Hash={};URI={}",
            ctx.own_id, ctx.peer_cert_hash, ctx.peer_id
        );
        headers.remove(XFCC);
        let value = HeaderValue::from_str(&xfcc).map_err(|e| format!("XFCC header: {e}"))?;
        headers.insert(HeaderName::from_static(XFCC), value);
        let mut resp = self.client.request(req).await.map_err(|e| format!("{e}"))?;
        for h in HOP_BY_HOP {
            resp.headers_mut().remove(h);
        }
        Ok(resp)
    }
}

/// The request as the policy sees it.
fn describe(req: &Request<Incoming>) -> HttpRequest {
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in req.headers() {
        let value = String::from_utf8_lossy(value.as_bytes());
        headers
            .entry(name.as_str().to_string())
            .and_modify(|v| {
                v.push(',');
                v.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    // The policy must not trust an XFCC the caller made up either.
    headers.remove(XFCC);
    let host = req
        .uri()
        .authority()
        .map(|a| a.to_string())
        .or_else(|| headers.get("host").cloned())
        .unwrap_or_default();
    HttpRequest {
        method: req.method().to_string(),
        path: req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into()),
        host,
        protocol: match req.version() {
            hyper::Version::HTTP_2 => "HTTP/2",
            hyper::Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        }
        .into(),
        headers,
    }
}

/// The policy's answer to a denied request: its status (403 by default),
/// headers and body, as the OPA-Envoy plugin does.
fn denial(decision: &signet_policy::Decision) -> Response<Body> {
    let status = decision
        .http_status
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::FORBIDDEN);
    let body = decision.body.clone().unwrap_or_default();
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *resp.status_mut() = status;
    for (k, v) in &decision.headers {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k.as_str()), HeaderValue::from_str(v)) {
            resp.headers_mut().insert(k, v);
        }
    }
    resp
}

fn plain(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from_static(
        body.as_bytes(),
    ))));
    *resp.status_mut() = status;
    resp
}
