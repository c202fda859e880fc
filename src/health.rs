//! `--health-listen ADDR` for `signet server`, `signet agent` and `signet
//! run` (the flag the helper and sidecar use): `/live`, `/ready` (the
//! server's datastore answers; the agent can vouch for its identities) and
//! `/metrics` in Prometheus' text format: the server's API calls by method
//! and code, signing, datastore latency, agent subscriptions and CA; the
//! agent's health, entries, SVIDs and rotation lag; ext_authz checks by
//! result, evaluation time, cache hits and the policy revision.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use signet_agent::AgentHandle;
use signet_policy::PolicyHandle;
use signet_server::Server;

/// The bound listener and the installed metrics recorder.
#[derive(Debug)]
pub struct HealthEndpoint {
    listener: std::net::TcpListener,
    metrics: PrometheusHandle,
}

impl HealthEndpoint {
    /// Binds `addr` and installs the process' metrics recorder, so a bad
    /// address fails the start rather than going unnoticed.
    pub fn bind(addr: SocketAddr) -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("health_listen: cannot listen on {addr}"))?;
        listener.set_nonblocking(true)?;
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let metrics = recorder.handle();
        metrics::set_global_recorder(recorder).context("cannot install the metrics recorder")?;
        Ok(Self { listener, metrics })
    }

    /// The banner's line.
    pub fn describe(&self) -> String {
        match self.listener.local_addr() {
            Ok(addr) => format!("{addr} (/live /ready /metrics)"),
            Err(e) => format!("(address unknown: {e})"),
        }
    }

    /// Serves until the process ends: ready when every probe is, metrics
    /// refreshed by every probe before each scrape.
    pub fn serve(self, probes: Vec<Probe>) {
        let listener = match tokio::net::TcpListener::from_std(self.listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "health endpoint: cannot serve");
                return;
            }
        };
        let probes = Arc::new(probes);
        let checked = probes.clone();
        let ready: signet_proxy::admin::Readiness = Arc::new(move || {
            let mut said = Vec::new();
            for probe in checked.iter() {
                said.push((probe.ready)()?);
            }
            Ok(said.join("; "))
        });
        let metrics = self.metrics;
        let render: signet_proxy::admin::Render = Arc::new(move || {
            for probe in probes.iter() {
                (probe.update)();
            }
            metrics.render()
        });
        tokio::spawn(signet_proxy::admin::serve(
            listener,
            ready,
            render,
            std::future::pending(),
        ));
    }
}

/// One part of a process on the health endpoint: whether it is ready, and
/// the gauges it sets before a scrape.
pub struct Probe {
    ready: Box<dyn Fn() -> Result<String, String> + Send + Sync>,
    update: Box<dyn Fn() + Send + Sync>,
}

/// The agent: ready while it can vouch for its identities; its entries,
/// SVIDs (and those expiring within a minute or past their rotation
/// point), and the ext_authz `policy`'s revision.
pub fn agent_probe(agent: &AgentHandle, policy: Option<Arc<PolicyHandle>>) -> Probe {
    let snapshots = agent.snapshot();
    let ready = Box::new(move || {
        let s = snapshots.borrow();
        if s.healthy {
            Ok(format!(
                "agent: {} entries, {} SVIDs",
                s.entries.len(),
                s.svids.len()
            ))
        } else {
            Err("the agent cannot vouch for its identities (its server is unreachable or its SVID expired)".into())
        }
    });
    let snapshots = agent.snapshot();
    let revision = policy.map(crate::authz_settings::revision_gauge);
    let update = Box::new(move || {
        {
            let s = snapshots.borrow();
            metrics::gauge!("signet_agent_healthy").set(if s.healthy { 1.0 } else { 0.0 });
            metrics::gauge!("signet_agent_entries").set(s.entries.len() as f64);
            metrics::gauge!("signet_agent_svids").set(s.svids.len() as f64);
            let now = std::time::SystemTime::now();
            let (mut expiring, mut overdue, mut lag) = (0u64, 0u64, 0f64);
            for svid in s.svids.values() {
                let left = svid.not_after().duration_since(now).unwrap_or_default();
                if left <= Duration::from_secs(60) {
                    expiring += 1;
                }
                // Past its rotation point and not renewed: rotation is late.
                let late = signet_agent::rotation_point(svid)
                    .and_then(|at| now.duration_since(at).ok())
                    .map_or(0.0, |d| d.as_secs_f64());
                if late > 0.0 {
                    overdue += 1;
                    lag = lag.max(late);
                }
            }
            metrics::gauge!("signet_agent_svids_expiring_within_60s").set(expiring as f64);
            metrics::gauge!("signet_agent_svids_past_rotation").set(overdue as f64);
            metrics::gauge!("signet_agent_rotation_lag_seconds").set(lag);
        }
        if let Some(update) = &revision {
            update();
        }
    });
    Probe { ready, update }
}

/// How often the server's probe asks the datastore whether it answers.
const DATASTORE_CHECK: Duration = Duration::from_secs(5);

/// The server: ready while its datastore answers (asked every few seconds,
/// so a scrape never waits on it); its CA's active authorities and bundle.
pub fn server_probe(server: Arc<Server>) -> Probe {
    let state = Arc::new(std::sync::RwLock::new(Err::<String, String>(
        "the datastore has not been checked yet".into(),
    )));
    let writer = state.clone();
    let store = server.store().clone();
    tokio::spawn(async move {
        loop {
            let result = match tokio::time::timeout(DATASTORE_CHECK, store.current_revision()).await
            {
                Ok(Ok(revision)) => Ok(format!("server: datastore at revision {revision}")),
                Ok(Err(e)) => Err(format!("the datastore does not answer: {e}")),
                Err(_) => Err("the datastore does not answer in time".to_string()),
            };
            metrics::gauge!("signet_server_datastore_up").set(if result.is_ok() {
                1.0
            } else {
                0.0
            });
            *writer
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = result;
            tokio::time::sleep(DATASTORE_CHECK).await;
        }
    });
    let probed = server.clone();
    let ready = Box::new(move || {
        let mut ready = state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        // Still ready: the active authority signs until it expires.
        if let (Ok(message), Some((since, why))) = (&mut ready, probed.upstream_failing()) {
            let expires = probed.ca().x509_authority().not_after();
            message.push_str(&format!(
                "; the upstream CA fails since {} ({why}); the active authority signs until {}",
                humantime::format_rfc3339_seconds(since),
                humantime::format_rfc3339_seconds(expires)
            ));
        }
        ready
    });
    let update = Box::new(move || {
        let ca = server.ca();
        let until = |t: std::time::SystemTime| {
            t.duration_since(std::time::SystemTime::now())
                .map_or(0.0, |d| d.as_secs_f64())
        };
        metrics::gauge!("signet_server_ca_x509_expires_in_seconds")
            .set(until(ca.x509_authority().not_after()));
        metrics::gauge!("signet_server_ca_jwt_expires_in_seconds")
            .set(until(ca.jwt_key().not_after()));
        metrics::gauge!("signet_server_bundle_sequence").set(ca.bundle().sequence() as f64);
    });
    Probe { ready, update }
}
