//! The admin endpoint: `/live` (the process runs), `/ready` (an SVID is in
//! use, so listeners accept), `/metrics` (Prometheus text). Plain HTTP:
//! bind it to loopback.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// Renders the Prometheus exposition text.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;
/// Says whether the service is ready, and if not why.
pub type Readiness = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

/// Serves the admin endpoint on `listener` until `stop` resolves.
pub async fn serve(
    listener: TcpListener,
    ready: Readiness,
    render: Render,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        let (stream, _) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin endpoint: accept failed");
                    continue;
                }
            },
            () = &mut stop => return,
        };
        let ready = ready.clone();
        let render = render.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let resp = answer(req.uri().path(), &ready, &render);
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer(path: &str, ready: &Readiness, render: &Render) -> Response<Full<Bytes>> {
    let (status, body, content_type) = match path {
        "/live" | "/healthz" => (StatusCode::OK, "live\n".to_string(), "text/plain"),
        "/ready" => match ready() {
            Ok(what) => (StatusCode::OK, format!("ready: {what}\n"), "text/plain"),
            Err(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
                "text/plain",
            ),
        },
        "/metrics" => (
            StatusCode::OK,
            render(),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "not found: try /live, /ready or /metrics\n".into(),
            "text/plain",
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    resp
}
