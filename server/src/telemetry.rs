//! The server's metrics (through the `metrics` facade; the binary installs
//! the Prometheus recorder behind `--health-listen`): API calls by method
//! and gRPC code with their latency, SVID signing counts and latency,
//! datastore operation latency and errors, open agent subscriptions.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use metrics::{counter, gauge, histogram};
use tonic::codegen::http;

/// Counts every call of one gRPC API (`api`: "node" or "admin") by method
/// and gRPC status code, and records the time to the response's headers
/// (for a stream: to its start). A method the API does not have is
/// counted as "unknown", so callers cannot mint label values.
#[derive(Debug, Clone, Copy)]
pub struct ApiMetricsLayer {
    api: &'static str,
}

impl ApiMetricsLayer {
    pub fn new(api: &'static str) -> Self {
        ApiMetricsLayer { api }
    }
}

impl<S> tower::Layer<S> for ApiMetricsLayer {
    type Service = ApiMetrics<S>;

    fn layer(&self, inner: S) -> ApiMetrics<S> {
        ApiMetrics {
            inner,
            api: self.api,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ApiMetrics<S> {
    inner: S,
    api: &'static str,
}

impl<S, B, R> tower::Service<http::Request<B>> for ApiMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let api = self.api;
        let path = req.uri().path().to_string();
        let started = Instant::now();
        let call = self.inner.call(req);
        Box::pin(async move {
            let result = call.await;
            // Errors answered at once carry grpc-status in the headers
            // (trailers-only); a response that starts carries it in its
            // trailers, OK unless the stream fails later.
            let code = match &result {
                Ok(resp) => resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .unwrap_or(0),
                Err(_) => tonic::Code::Internal as i32,
            };
            let method = if code == tonic::Code::Unimplemented as i32 {
                "unknown".to_string()
            } else {
                path.rsplit('/').next().unwrap_or_default().to_string()
            };
            let code = format!("{:?}", tonic::Code::from_i32(code));
            histogram!("signet_server_api_call_seconds", "api" => api, "method" => method.clone())
                .record(started.elapsed().as_secs_f64());
            counter!("signet_server_api_calls_total", "api" => api, "method" => method, "code" => code)
                .increment(1);
            result
        })
    }
}

/// Runs one datastore operation, recording its latency and any failure.
pub(crate) async fn store_op<T, E>(
    op: &'static str,
    f: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let started = Instant::now();
    let result = f.await;
    histogram!("signet_server_datastore_seconds", "op" => op)
        .record(started.elapsed().as_secs_f64());
    if result.is_err() {
        counter!("signet_server_datastore_errors_total", "op" => op).increment(1);
    }
    result
}

/// Records one signing (`kind`: "x509" or "jwt") that began at `started`.
pub(crate) fn signed(kind: &'static str, started: Instant, ok: bool) {
    histogram!("signet_server_signing_seconds", "kind" => kind)
        .record(started.elapsed().as_secs_f64());
    let result = if ok { "ok" } else { "error" };
    counter!("signet_server_svids_signed_total", "kind" => kind, "result" => result).increment(1);
}

/// Held by each open agent subscription: the gauge of connected agents.
#[derive(Debug)]
pub(crate) struct Subscribed;

impl Subscribed {
    pub(crate) fn new() -> Self {
        gauge!("signet_server_agent_subscriptions").increment(1.0);
        Subscribed
    }
}

impl Drop for Subscribed {
    fn drop(&mut self) {
        gauge!("signet_server_agent_subscriptions").decrement(1.0);
    }
}
