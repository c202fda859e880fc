//! HTTP mode of an inbound listener: HTTP/1.1 and HTTP/2 from the peer,
//! each request authorized by the policy (OPA-Envoy input with the
//! request), then forwarded to the app over pooled connections (HTTP/1.1
//! keep-alive, or HTTP/2 for gRPC apps: `--app-protocol`) with the peer's
//! identity in `x-forwarded-client-cert` (Envoy's format). An XFCC header
//! from outside is always replaced, never passed on. Bodies and trailers
//! stream through untouched; gRPC callers get the sidecar's own answers
//! (denials, an unreachable app) as gRPC statuses.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use metrics::{counter, histogram};
use signet_policy::PolicyHandle;
use signet_policy::input::{HttpRequest, InputBuilder};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::Shutdown;
use crate::config::{AppProtocol, Endpoint};
use crate::listener::Stream;

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
    to: Arc<Endpoint>,
    keep_escaped_slashes: bool,
    app_protocol: AppProtocol,
    http1: Client<AppConnector, Incoming>,
    http2: Client<AppConnector, Incoming>,
}

/// Connects the pooled clients to the app, whatever the request's URI names.
#[derive(Debug, Clone)]
struct AppConnector {
    to: Arc<Endpoint>,
    timeout: Duration,
}

impl tower_service::Service<hyper::Uri> for AppConnector {
    type Response = TokioIo<AppStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: hyper::Uri) -> Self::Future {
        let (to, timeout) = (self.to.clone(), self.timeout);
        Box::pin(async move {
            match tokio::time::timeout(timeout, crate::listener::connect(&to)).await {
                Ok(stream) => Ok(TokioIo::new(AppStream(stream?))),
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("connecting to {to} timed out after {timeout:?}"),
                )),
            }
        })
    }
}

/// A connection to the app (TCP or Unix), as the pooled clients see it.
struct AppStream(Stream);

impl Connection for AppStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for AppStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for AppStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
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
    pub(crate) fn new(
        listener: Arc<str>,
        to: Endpoint,
        connect_timeout: Duration,
        keep_escaped_slashes: bool,
        app_protocol: AppProtocol,
    ) -> Self {
        let to = Arc::new(to);
        let connector = AppConnector {
            to: to.clone(),
            timeout: connect_timeout,
        };
        let http1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector.clone());
        let http2 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .http2_only(true)
            .build(connector);
        Forwarder {
            listener,
            to,
            keep_escaped_slashes,
            app_protocol,
            http1,
            http2,
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
        let grpc = is_grpc(&req);
        // The policy decides on exactly the request the app receives: one
        // normalized path, one host (security invariant 9).
        if let Err(e) = normalize_request(&mut req, self.keep_escaped_slashes) {
            counter!("signet_proxy_requests_total", "listener" => listener, "result" => "bad_request")
                .increment(1);
            tracing::warn!(peer_id = %ctx.peer_id, reason = %e, "request rejected: malformed target");
            if grpc {
                return grpc_status(GRPC_INTERNAL, &format!("bad request: {e}"));
            }
            return plain_owned(StatusCode::BAD_REQUEST, format!("bad request: {e}\n"));
        }
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
                if grpc {
                    return grpc_denial(&decision);
                }
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
        let http2 = match self.app_protocol {
            AppProtocol::Http1 => false,
            AppProtocol::Http2 => true,
            AppProtocol::Auto => req.version() == hyper::Version::HTTP_2,
        };
        if grpc && !http2 {
            counter!("signet_proxy_requests_total", "listener" => listener, "result" => "upstream_error").increment(1);
            tracing::warn!(peer_id = %ctx.peer_id, path = %req.uri().path(), "gRPC request refused: the app is spoken to in HTTP/1.1; gRPC needs --app-protocol http2 (or auto)");
            return grpc_status(
                GRPC_UNAVAILABLE,
                "the sidecar speaks HTTP/1.1 to the app; gRPC needs app_protocol http2 or auto",
            );
        }
        match self.forward(req, ctx, http2).await {
            Ok(resp) => {
                counter!("signet_proxy_requests_total", "listener" => listener, "result" => "forwarded").increment(1);
                resp.map(Either::Left)
            }
            Err(e) => {
                counter!("signet_proxy_requests_total", "listener" => listener, "result" => "upstream_error").increment(1);
                tracing::error!(app = %self.to, error = %e, "cannot forward the request to the app");
                if grpc {
                    return grpc_status(GRPC_UNAVAILABLE, "upstream unavailable");
                }
                plain(StatusCode::BAD_GATEWAY, "upstream unavailable\n")
            }
        }
    }

    async fn forward(
        &self,
        mut req: Request<Incoming>,
        ctx: &ConnContext,
        http2: bool,
    ) -> Result<Response<Incoming>, String> {
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        // normalize_request left the one host in Host. The connector goes to
        // the app whatever the URI names: over HTTP/2 the URI's authority is
        // the request's :authority; over HTTP/1.1 a fixed one keeps a single
        // pool and the Host header carries the host.
        let host = req
            .headers()
            .get(hyper::header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| !h.is_empty())
            .unwrap_or("localhost")
            .to_string();
        let authority = if http2 { host.as_str() } else { "app" };
        let uri: hyper::Uri = format!("http://{authority}{path}")
            .parse()
            .map_err(|e| format!("request target: {e}"))?;
        *req.uri_mut() = uri;
        *req.version_mut() = if http2 {
            hyper::Version::HTTP_2
        } else {
            hyper::Version::HTTP_11
        };
        let headers = req.headers_mut();
        // gRPC needs "te: trailers" end to end; it is the one TE value
        // HTTP/2 allows, and trailers do pass through.
        let te_trailers = headers
            .get(hyper::header::TE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
        for h in HOP_BY_HOP {
            headers.remove(h);
        }
        if te_trailers {
            headers.insert(hyper::header::TE, HeaderValue::from_static("trailers"));
        }
        if http2 {
            headers.remove(hyper::header::HOST);
        } else if !headers.contains_key(hyper::header::HOST)
            && let Ok(v) = HeaderValue::from_str(&host)
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
        let client = if http2 { &self.http2 } else { &self.http1 };
        let mut resp = client.request(req).await.map_err(|e| {
            // The client's error names only the step; its source says why.
            match std::error::Error::source(&e) {
                Some(cause) => format!("{e}: {cause}"),
                None => e.to_string(),
            }
        })?;
        for h in HOP_BY_HOP {
            resp.headers_mut().remove(h);
        }
        Ok(resp)
    }
}

/// Why a request target was refused (answered 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TargetError {
    #[error("the path has an encoded slash or backslash (%2F, %5C) or a backslash")]
    EscapedSlash,
    #[error("the path has a malformed percent-encoding")]
    BadPercent,
    #[error("the path does not start with '/'")]
    NotAbsolute,
    #[error("more than one Host header")]
    ManyHosts,
    #[error("the :authority and the Host header name different hosts")]
    HostMismatch,
    #[error("the normalized target is not a valid URI")]
    Invalid,
}

/// Rewrites `req` into the one form both the policy and the app see, as
/// Envoy's `normalize_path`, `merge_slashes` and
/// `path_with_escaped_slashes_action: REJECT_REQUEST` do:
/// - the path: percent-encoded unreserved characters decoded (RFC 3986
///   §6.2.2.2), other percent-encodings upper-cased (§6.2.2.1), repeated
///   slashes merged, dot segments removed (§5.2.4); an encoded slash or
///   backslash, or a backslash, is refused (apps disagree on what they mean);
/// - the host, from one place: the authority of an absolute-form or
///   HTTP/2 request, else the one Host header; an HTTP/2 request whose
///   `host` header names another host is refused. The app receives it as
///   `Host`, and the target in origin form (path and query).
pub(crate) fn normalize_request<B>(
    req: &mut Request<B>,
    keep_escaped_slashes: bool,
) -> Result<(), TargetError> {
    let hosts: Vec<&HeaderValue> = req.headers().get_all(hyper::header::HOST).iter().collect();
    if hosts.len() > 1 {
        return Err(TargetError::ManyHosts);
    }
    let header_host = hosts.first().map(|h| h.as_bytes().to_vec());
    let host = match req.uri().authority() {
        Some(authority) => {
            if req.version() == hyper::Version::HTTP_2
                && header_host
                    .as_deref()
                    .is_some_and(|h| !h.eq_ignore_ascii_case(authority.as_str().as_bytes()))
            {
                return Err(TargetError::HostMismatch);
            }
            // An absolute-form target's authority wins over Host (RFC 9112
            // §3.2.2), for the app too.
            Some(authority.as_str().as_bytes().to_vec())
        }
        None => header_host,
    };
    let path = normalize_path(req.uri().path(), keep_escaped_slashes)?;
    let target = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    *req.uri_mut() = target.parse().map_err(|_| TargetError::Invalid)?;
    if let Some(host) = host {
        let value = HeaderValue::from_bytes(&host).map_err(|_| TargetError::Invalid)?;
        req.headers_mut().insert(hyper::header::HOST, value);
    }
    Ok(())
}

/// The normalized form of an origin-form path (see [`normalize_request`]);
/// with `keep_escaped_slashes`, %2F and %5C stay encoded instead of being
/// refused.
pub(crate) fn normalize_path(
    path: &str,
    keep_escaped_slashes: bool,
) -> Result<String, TargetError> {
    if !path.starts_with('/') {
        return Err(TargetError::NotAbsolute);
    }
    if path.contains('\\') {
        return Err(TargetError::EscapedSlash);
    }
    // Percent-encodings first: decoded unreserved characters can form dot
    // segments ("%2e%2e"), which are then removed like literal ones.
    let bytes = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(TargetError::BadPercent)?;
            let text = std::str::from_utf8(hex).map_err(|_| TargetError::BadPercent)?;
            let byte = u8::from_str_radix(text, 16).map_err(|_| TargetError::BadPercent)?;
            match byte {
                b'/' | b'\\' if !keep_escaped_slashes => return Err(TargetError::EscapedSlash),
                b if b.is_ascii_alphanumeric() || b"-._~".contains(&b) => {
                    decoded.push(char::from(b))
                }
                b => decoded.push_str(&format!("%{b:02X}")),
            }
            i += 3;
        } else {
            decoded.push(char::from(bytes[i]));
            i += 1;
        }
    }
    // Merge slashes, then remove dot segments.
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (n, segment) in segments.iter().enumerate() {
        match *segment {
            "" => trailing_slash = n == last,
            "." => trailing_slash = n == last,
            ".." => {
                out.pop();
                trailing_slash = n == last;
            }
            s => {
                out.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut normalized = String::with_capacity(decoded.len());
    for s in &out {
        normalized.push('/');
        normalized.push_str(s);
    }
    if normalized.is_empty() || trailing_slash {
        normalized.push('/');
    }
    Ok(normalized)
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
/// headers and body, as the OPA-Envoy plugin does. A policy that gives no
/// body gets a plain-text one saying the request was denied and the
/// policy's reason, as Envoy's RBAC filter says "RBAC: access denied" (a
/// policy that wants silence gives an empty body).
fn denial(decision: &signet_policy::Decision) -> Response<Body> {
    let status = decision
        .http_status
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::FORBIDDEN);
    let (body, default_body) = match &decision.body {
        Some(body) => (body.clone(), false),
        None => match &decision.reason {
            Some(reason) => (format!("access denied by policy: {reason}\n"), true),
            None => ("access denied by policy\n".to_string(), true),
        },
    };
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *resp.status_mut() = status;
    if default_body {
        resp.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
    for (k, v) in &decision.headers {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k.as_str()), HeaderValue::from_str(v)) {
            resp.headers_mut().insert(k, v);
        }
    }
    resp
}

/// gRPC status codes the sidecar answers with itself.
const GRPC_UNKNOWN: u32 = 2;
const GRPC_PERMISSION_DENIED: u32 = 7;
const GRPC_UNIMPLEMENTED: u32 = 12;
const GRPC_INTERNAL: u32 = 13;
const GRPC_UNAVAILABLE: u32 = 14;
const GRPC_UNAUTHENTICATED: u32 = 16;

/// A gRPC call (HTTP/2 with a gRPC content type), whose client reads its
/// outcome from `grpc-status`, not from the HTTP status.
fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.strip_prefix("application/grpc")
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['+', ';']))
        })
}

/// A trailers-only gRPC response: HTTP 200, the outcome in `grpc-status`
/// and `grpc-message` (percent-encoded as the gRPC HTTP/2 protocol says).
fn grpc_status(code: u32, message: &str) -> Response<Body> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::new())));
    let headers = resp.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from(code));
    let mut encoded = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            encoded.push(char::from(b));
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    if let Ok(v) = HeaderValue::from_str(&encoded) {
        headers.insert("grpc-message", v);
    }
    resp
}

/// A denial as a gRPC client understands it: the policy's status mapped as
/// gRPC maps HTTP statuses (403, the default, is PERMISSION_DENIED), its
/// reason as the message, its headers added.
fn grpc_denial(decision: &signet_policy::Decision) -> Response<Body> {
    let code = match decision.http_status.unwrap_or(403) {
        400 => GRPC_INTERNAL,
        401 => GRPC_UNAUTHENTICATED,
        403 => GRPC_PERMISSION_DENIED,
        404 => GRPC_UNIMPLEMENTED,
        429 | 502 | 503 | 504 => GRPC_UNAVAILABLE,
        _ => GRPC_UNKNOWN,
    };
    let message = match &decision.reason {
        Some(reason) => format!("access denied by policy: {reason}"),
        None => "access denied by policy".to_string(),
    };
    let mut resp = grpc_status(code, &message);
    for (k, v) in &decision.headers {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k.as_str()), HeaderValue::from_str(v))
            && !k.as_str().starts_with("grpc-")
        {
            resp.headers_mut().insert(k, v);
        }
    }
    resp
}

fn plain_owned(status: StatusCode, body: String) -> Response<Body> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *resp.status_mut() = status;
    resp
}

fn plain(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from_static(
        body.as_bytes(),
    ))));
    *resp.status_mut() = status;
    resp
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    #[test]
    fn paths_are_normalized_as_envoy_does() {
        let ok = [
            ("/", "/"),
            ("/api/v1/hello", "/api/v1/hello"),
            ("/api/v1/../../admin/secret.txt", "/admin/secret.txt"),
            (
                "/api/v1/%2e%2e/%2E%2E/admin/secret.txt",
                "/admin/secret.txt",
            ),
            ("/api/./v1/./x", "/api/v1/x"),
            ("//api///v1//x", "/api/v1/x"),
            ("/api/v1/", "/api/v1/"),
            ("/api/v1/.", "/api/v1/"),
            ("/api/v1/..", "/api/"),
            ("/../../..", "/"),
            ("/%61pi/%7Euser", "/api/~user"),
            ("/a%20b/%c3%a9", "/a%20b/%C3%A9"),
        ];
        for (path, want) in ok {
            assert_eq!(normalize_path(path, false).unwrap(), want, "{path}");
        }
        let refused = [
            (
                "/api/v1/..%2f..%2fadmin/secret.txt",
                TargetError::EscapedSlash,
            ),
            ("/api/v1/..%2F..%2Fadmin", TargetError::EscapedSlash),
            ("/api/v1/..%5c..%5cadmin", TargetError::EscapedSlash),
            ("/api/v1\\..\\admin", TargetError::EscapedSlash),
            ("/api/%zz", TargetError::BadPercent),
            ("/api/%2", TargetError::BadPercent),
            ("api", TargetError::NotAbsolute),
        ];
        for (path, want) in refused {
            assert_eq!(normalize_path(path, false), Err(want), "{path}");
        }
        // With the insecure option, encoded slashes pass, still encoded.
        assert_eq!(
            normalize_path("/a/..%2f..%2Fb/%5c", true).unwrap(),
            "/a/..%2F..%2Fb/%5C"
        );
        // A raw backslash is refused either way.
        assert_eq!(
            normalize_path("/api\\x", true),
            Err(TargetError::EscapedSlash)
        );
    }

    fn request(version: hyper::Version, target: &str, hosts: &[&str]) -> Request<()> {
        let mut b = Request::builder().version(version).uri(target);
        for h in hosts {
            b = b.header("host", *h);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn one_host_from_one_place() {
        // Absolute form: the target's authority is the host, for the app too.
        let mut r = request(
            hyper::Version::HTTP_11,
            "http://public.example.org/api/v1/../x?q=1",
            &["admin.internal"],
        );
        normalize_request(&mut r, false).unwrap();
        assert_eq!(r.uri().to_string(), "/api/x?q=1");
        assert_eq!(r.headers()["host"], "public.example.org");
        assert_eq!(describe_host(&r), "public.example.org");

        // Origin form: the one Host header.
        let mut r = request(hyper::Version::HTTP_11, "/a", &["app.internal"]);
        normalize_request(&mut r, false).unwrap();
        assert_eq!(r.headers()["host"], "app.internal");

        // Two Host headers: refused.
        let mut r = request(hyper::Version::HTTP_11, "/a", &["a", "b"]);
        assert_eq!(
            normalize_request(&mut r, false),
            Err(TargetError::ManyHosts)
        );

        // HTTP/2: :authority and host must agree.
        let mut r = request(
            hyper::Version::HTTP_2,
            "https://a.example/x",
            &["b.example"],
        );
        assert_eq!(
            normalize_request(&mut r, false),
            Err(TargetError::HostMismatch)
        );
        let mut r = request(
            hyper::Version::HTTP_2,
            "https://a.example/x",
            &["A.example"],
        );
        normalize_request(&mut r, false).unwrap();
        assert_eq!(r.headers()["host"], "a.example");
    }

    fn describe_host(r: &Request<()>) -> String {
        r.headers()["host"].to_str().unwrap().to_string()
    }
}
