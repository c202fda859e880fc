//! Envoy external authorization (`envoy.service.auth.v3.Authorization/
//! Check`) decided by Signet's policy engines, as the OPA-Envoy plugin
//! decides it: the same input document ([`input`]), the same reading of a
//! policy's result ([`response`]), so OPA-Envoy policies (OPA Wasm or
//! Rego) run unchanged.
//!
//! Role: one [`ExtAuthz`] service, served beside SDS on the agent socket
//! or on its own listener. Depends on: `signet-policy` for evaluation,
//! `envoy-types` for the API.
//!
//! Metrics: `signet_authz_checks_total{result=allow|deny|dry_run_allow|
//! error|bad_request}`, `signet_authz_eval_seconds` (evaluation time),
//! `signet_authz_cache_hits_total` (decisions taken from the cache).
//!
//! Invariants: fail closed. A request whose path, query or body cannot be
//! parsed is denied with 400; an undefined decision, an evaluation error or
//! a result of the wrong shape is a gRPC error, which Envoy turns into a
//! denial unless its `failure_mode_allow` says otherwise. `--dry-run`
//! turns denials into allows, never errors.

mod cache;
pub mod input;
pub mod log;
pub mod response;

use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use signet_policy::PolicyHandle;

use crate::log::DecisionLog;
use tonic::{Request, Response, Status};

/// The service.
#[derive(Debug, Clone)]
pub struct ExtAuthz {
    policy: Arc<PolicyHandle>,
    dry_run: bool,
    log: Option<Arc<DecisionLog>>,
    cache: Option<Arc<cache::ResultCache>>,
}

impl ExtAuthz {
    pub fn new(policy: Arc<PolicyHandle>) -> Self {
        Self {
            policy,
            dry_run: false,
            log: None,
            cache: None,
        }
    }

    /// Remembers up to `capacity` results by the part of the input they
    /// depend on, where the policy allows it (see [`cache`]); 0: none.
    pub fn with_decision_cache(mut self, capacity: usize) -> Self {
        self.cache = (capacity > 0).then(|| Arc::new(cache::ResultCache::new(capacity)));
        self
    }

    /// How many results the decision cache holds.
    pub fn cached(&self) -> usize {
        self.cache.as_ref().map_or(0, |c| c.len())
    }

    /// The policy deciding.
    pub fn policy(&self) -> Arc<PolicyHandle> {
        self.policy.clone()
    }

    /// Logs every decision there.
    pub fn with_decision_log(mut self, log: Arc<DecisionLog>) -> Self {
        self.log = Some(log);
        self
    }

    /// Answers allow for what the policy denies (logging it), to roll out a
    /// policy safely.
    pub fn dry_run(mut self, on: bool) -> Self {
        self.dry_run = on;
        self
    }

    pub fn into_service(self) -> AuthorizationServer<Self> {
        AuthorizationServer::new(self)
    }

    /// Decides one request.
    pub fn decide(&self, req: &CheckRequest) -> Result<CheckResponse, Status> {
        let decision_id = decision_id();
        let policy = self.policy.current();
        let mut event = log::Event {
            decision_id: &decision_id,
            path: policy.entrypoint(),
            revision: policy.revision(),
            input: None,
            outcome: Err(String::new()),
            allowed: false,
            dry_run: false,
            took: Duration::ZERO,
        };
        let input = match input::check_input(req) {
            Ok(input) => input,
            Err(e) => {
                tracing::info!(error = %e, "ext_authz: request cannot be parsed; denied with 400");
                event.outcome = Err(e.0.clone());
                self.record(&event);
                metrics::counter!("signet_authz_checks_total", "result" => "bad_request")
                    .increment(1);
                return Ok(response::request_error_response(&e.0));
            }
        };
        let start = Instant::now();
        let key = self.cache.as_ref().and_then(|_| {
            policy
                .cache_key(&input)
                .map(|k| cache::ResultCache::key(policy.revision(), &k))
        });
        let hit = match (&self.cache, &key) {
            (Some(cache), Some(key)) => cache.get(key),
            _ => None,
        };
        let result = match hit {
            Some(hit) => {
                metrics::counter!("signet_authz_cache_hits_total").increment(1);
                Ok(hit)
            }
            None => {
                let result = policy.evaluate_value(&input);
                if let (Some(cache), Some(key), Ok(value)) = (&self.cache, key, &result) {
                    cache.put(key, value.clone());
                }
                result
            }
        };
        event.took = start.elapsed();
        event.input = Some(&input);
        let response = match &result {
            Ok(Some(result)) => {
                event.outcome = Ok(result);
                response::check_response(result, &decision_id).map_err(|e| Status::unknown(e.0))
            }
            Ok(None) => Err(Status::unknown("undefined decision")),
            Err(e) => Err(Status::unknown(e.to_string())),
        };
        if let Err(status) = &response {
            event.outcome = Err(status.message().to_owned());
        }
        event.allowed = response
            .as_ref()
            .is_ok_and(|r| r.status.as_ref().is_some_and(|s| s.code == 0));
        event.dry_run = self.dry_run && !event.allowed && response.is_ok();
        tracing::debug!(
            decision_id,
            revision = policy.revision(),
            allowed = event.allowed,
            error = response.as_ref().err().map(|e| e.message().to_owned()),
            micros = event.took.as_micros() as u64,
            "ext_authz decision"
        );
        self.record(&event);
        let result = match (&response, event.allowed, event.dry_run) {
            (Err(_), _, _) => "error",
            (Ok(_), true, _) => "allow",
            (Ok(_), false, true) => "dry_run_allow",
            (Ok(_), false, false) => "deny",
        };
        metrics::counter!("signet_authz_checks_total", "result" => result).increment(1);
        metrics::histogram!("signet_authz_eval_seconds").record(event.took.as_secs_f64());
        match response {
            Ok(r) if event.dry_run => {
                tracing::info!(decision_id, "ext_authz dry run: would have denied; allowed");
                Ok(response::dry_run(r))
            }
            other => other,
        }
    }

    fn record(&self, event: &log::Event<'_>) {
        if let Some(log) = &self.log {
            log.record(event);
        }
    }
}

/// A fresh UUIDv4, as the plugin's decision ids.
fn decision_id() -> String {
    let mut bytes = [0u8; 16];
    // The RNG failing leaves zeros: an id, not a secret.
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .to_string()
}

#[tonic::async_trait]
impl Authorization for ExtAuthz {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        self.decide(request.get_ref()).map(Response::new)
    }
}
