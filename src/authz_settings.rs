//! `--authz-policy`: Envoy external authorization (`envoy.service.auth.v3`)
//! on the agent socket beside SDS, for `signet agent` and `signet run`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde::{Deserialize, Serialize};
use signet_agent::ExtraServices;
use signet_extauthz::ExtAuthz;
use signet_extauthz::log::DecisionLog;
use signet_policy::{PolicyHandle, PolicyOptions, WatchGuard};
use signet_sds::{SdsOptions, SdsService};

/// The OPA-Envoy plugin's default decision path.
const DEFAULT_ENTRYPOINT: &str = "envoy/authz/allow";
/// Decisions remembered by default (see `signet_extauthz`'s cache).
pub const DEFAULT_DECISION_CACHE: usize = 10_000;
/// How often the policy files are checked for changes.
const POLICY_WATCH: Duration = Duration::from_secs(1);

/// `[authz]` in an agent's config file; the flags carry the table's name
/// (`policy` = `--authz-policy`).
#[derive(Debug, Default, Clone, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthzSettings {
    /// Serve Envoy's external authorization (ext_authz gRPC Check) on the
    /// agent socket, decided by this policy: OPA Wasm (`opa build -t
    /// wasm`), a bundle, or Rego; reloaded when it changes. Config file:
    /// `policy` in `[authz]`.
    #[arg(long = "authz-policy", id = "authz_policy")]
    policy: Option<PathBuf>,
    /// The rule that decides (`package/rule`), as the OPA-Envoy plugin's
    /// `path` [default: envoy/authz/allow].
    #[arg(long = "authz-entrypoint", id = "authz_entrypoint")]
    entrypoint: Option<String>,
    /// Allow what the policy denies, logging it: to roll a policy out.
    #[arg(long = "authz-dry-run", id = "authz_dry_run")]
    #[serde(default)]
    dry_run: bool,
    /// Log every decision as a JSON line (OPA's decision log fields) to
    /// this file, or `-` for standard output. The authorization and cookie
    /// headers are masked.
    #[arg(long = "authz-decision-log", id = "authz_decision_log")]
    decision_log: Option<PathBuf>,
    /// Also mask this JSON pointer in logged decisions (repeatable), e.g.
    /// /input/attributes/request/http/headers/x-api-key.
    #[arg(long = "authz-log-mask", id = "authz_log_mask")]
    #[serde(default)]
    log_mask: Vec<String>,
    /// Remember up to this many decisions by the part of the request the
    /// policy reads, where the policy allows it (Rego reading dotted input
    /// paths, calling no clock, random or network builtin); 0: off
    /// [default: 10000].
    #[arg(long = "authz-decision-cache", id = "authz_decision_cache")]
    decision_cache: Option<usize>,
    /// Also serve Check on a listener of its own: IP:PORT (plain gRPC;
    /// loopback or a trusted network) or unix:/PATH, for Envoys that do
    /// not reach the agent socket. Config file: `listen` in `[authz]`.
    #[arg(long = "authz-listen", id = "authz_listen")]
    listen: Option<String>,
}

/// The ext_authz service with its policy watched for changes.
#[derive(Debug)]
pub struct AgentAuthz {
    pub service: ExtAuthz,
    pub policy: PathBuf,
    pub entrypoint: String,
    pub dry_run: bool,
    /// `--authz-listen`, until bound.
    listen: Option<crate::authz_listen::Listen>,
    /// Where it is bound, once it is.
    serving_on: Option<String>,
    /// Ends the listener's server (and removes its Unix socket) when the
    /// agent goes.
    _stop_listener: Option<tokio::sync::oneshot::Sender<()>>,
    _watch: WatchGuard,
}

impl AuthzSettings {
    pub fn new(policy: PathBuf, entrypoint: Option<String>, dry_run: bool) -> Self {
        Self {
            policy: Some(policy),
            entrypoint,
            dry_run,
            ..Self::default()
        }
    }

    /// Logs decisions to `path` (`-`: standard output), masking `masks` too.
    pub fn with_decision_log(mut self, path: Option<PathBuf>, masks: Vec<String>) -> Self {
        self.decision_log = path;
        self.log_mask = masks;
        self
    }

    /// Remembers up to `capacity` decisions (0: none).
    pub fn with_decision_cache(mut self, capacity: usize) -> Self {
        self.decision_cache = Some(capacity);
        self
    }

    /// Loads the policy, if one is asked for: a policy that does not load
    /// fails the start, with the reason.
    pub fn load(self) -> anyhow::Result<Option<AgentAuthz>> {
        let Some(path) = self.policy else {
            anyhow::ensure!(
                self.entrypoint.is_none()
                    && !self.dry_run
                    && self.decision_log.is_none()
                    && self.log_mask.is_empty()
                    && self.decision_cache.is_none()
                    && self.listen.is_none(),
                "authz: entrypoint, dry_run, decision_log, log_mask, decision_cache and listen need policy (--authz-policy)"
            );
            return Ok(None);
        };
        let listen = self
            .listen
            .as_deref()
            .map(|s| crate::authz_listen::Listen::parse("authz_listen (--authz-listen)", s))
            .transpose()?;
        let entrypoint = self
            .entrypoint
            .unwrap_or_else(|| DEFAULT_ENTRYPOINT.to_owned());
        let options = PolicyOptions::default().with_entrypoint(entrypoint.clone());
        let handle = Arc::new(
            PolicyHandle::load(&path, options)
                .with_context(|| format!("authz_policy {}", path.display()))?,
        );
        let watch = handle.watch(POLICY_WATCH);
        let mut service = ExtAuthz::new(handle)
            .dry_run(self.dry_run)
            .with_decision_cache(self.decision_cache.unwrap_or(DEFAULT_DECISION_CACHE));
        if let Some(log) = &self.decision_log {
            let opened = DecisionLog::open(log)
                .with_context(|| format!("authz decision log {}", log.display()))?;
            service = service.with_decision_log(Arc::new(opened.with_masks(self.log_mask)));
        }
        Ok(Some(AgentAuthz {
            service,
            policy: path,
            entrypoint,
            dry_run: self.dry_run,
            listen,
            serving_on: None,
            _stop_listener: None,
            _watch: watch,
        }))
    }
}

impl AgentAuthz {
    /// The banner's line.
    pub fn describe(&self) -> String {
        format!(
            "{} ({}){}{}",
            self.policy.display(),
            self.entrypoint,
            if self.dry_run {
                ", DRY RUN: denials are allowed and logged"
            } else {
                ""
            },
            self.serving_on
                .as_ref()
                .map(|on| format!("; also on {on}"))
                .unwrap_or_default()
        )
    }

    /// Binds `--authz-listen`, if given, and serves Check there until the
    /// agent goes; a listener that cannot bind fails the start.
    pub async fn serve_own_listener(&mut self) -> anyhow::Result<()> {
        let Some(listen) = self.listen.take() else {
            return Ok(());
        };
        let bound = listen
            .bind()
            .await
            .context("authz_listen (--authz-listen)")?;
        self.serving_on = Some(bound.describe());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        self._stop_listener = Some(stop);
        let service = self.service.clone();
        tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(e) = bound.serve(service, shutdown).await {
                tracing::error!(error = %e, "authz listener failed");
            }
        });
        Ok(())
    }
}

/// Sets `signet_authz_policy_info{revision}` before each scrape: 1 for the
/// revision in force, 0 for the one it replaced.
pub fn revision_gauge(policy: Arc<PolicyHandle>) -> impl Fn() + Send + Sync + 'static {
    let shown = std::sync::Mutex::new(String::new());
    move || {
        let now = policy.revision();
        let mut shown = shown
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *shown != now {
            if !shown.is_empty() {
                metrics::gauge!("signet_authz_policy_info", "revision" => shown.clone()).set(0.0);
            }
            metrics::gauge!("signet_authz_policy_info", "revision" => now.clone()).set(1.0);
            *shown = now;
        }
    }
}

/// What the agent socket serves beside the Workload API: SDS, and
/// ext_authz when a policy is given.
pub fn agent_services(sds: SdsOptions, authz: Option<ExtAuthz>) -> ExtraServices {
    Box::new(move |agent, attestor| {
        let routes = tonic::service::Routes::new(
            SdsService::new(agent.clone(), attestor.clone(), sds).into_service(),
        );
        match authz {
            Some(authz) => {
                tokio::spawn(publish_bundles(agent.snapshot(), authz.policy()));
                routes.add_service(authz.into_service())
            }
            None => routes,
        }
    })
}

/// Keeps `data.signet.jwt_bundles` (trust domain -> JWKS text, the `cert`
/// of `io.jwt.decode_verify`) in step with the bundles the agent holds, so
/// a policy verifies JWT-SVID bearer tokens through every key rotation.
/// Ends with the agent.
async fn publish_bundles(
    mut snapshots: tokio::sync::watch::Receiver<Arc<signet_agent::Snapshot>>,
    policy: Arc<PolicyHandle>,
) {
    loop {
        let overlay = {
            let snapshot = snapshots.borrow_and_update();
            let jwt_bundles: serde_json::Map<String, serde_json::Value> = snapshot
                .bundles
                .iter()
                .map(|b| {
                    let jwks = b.jwks_json().to_string();
                    (
                        b.trust_domain().to_string(),
                        serde_json::Value::String(jwks),
                    )
                })
                .collect();
            serde_json::json!({ "jwt_bundles": jwt_bundles })
        };
        let policy = policy.clone();
        // A reload compiles the policy again: off the async workers.
        match tokio::task::spawn_blocking(move || policy.set_overlay("signet", overlay)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "authz: the policy refused the new trust bundles")
            }
            Err(e) => tracing::warn!(error = %e, "authz: bundle update failed"),
        }
        if snapshots.changed().await.is_err() {
            return;
        }
    }
}
