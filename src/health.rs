//! `--health-listen ADDR` for the agent of `signet agent` and `signet run`
//! (the flag the helper and sidecar use): `/live`, `/ready` (the agent can
//! vouch for its identities) and `/metrics` in Prometheus' text format
//! (the agent's health, entries and cached SVIDs; ext_authz checks by
//! result, evaluation time, cache hits and the policy revision).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use signet_agent::AgentHandle;
use signet_policy::PolicyHandle;

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

    /// Serves for `agent` (and its ext_authz `policy`) until the process
    /// ends.
    pub fn serve(self, agent: &AgentHandle, policy: Option<Arc<PolicyHandle>>) {
        let listener = match tokio::net::TcpListener::from_std(self.listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "health endpoint: cannot serve");
                return;
            }
        };
        let snapshots = agent.snapshot();
        let ready: signet_proxy::admin::Readiness = Arc::new(move || {
            let s = snapshots.borrow();
            if s.healthy {
                Ok(format!(
                    "{} entries, {} SVIDs",
                    s.entries.len(),
                    s.svids.len()
                ))
            } else {
                Err("the agent cannot vouch for its identities (its server is unreachable or its SVID expired)".into())
            }
        });
        let snapshots = agent.snapshot();
        let revision = policy.map(crate::authz_settings::revision_gauge);
        let metrics = self.metrics;
        let render: signet_proxy::admin::Render = Arc::new(move || {
            {
                let s = snapshots.borrow();
                metrics::gauge!("signet_agent_healthy").set(if s.healthy { 1.0 } else { 0.0 });
                metrics::gauge!("signet_agent_entries").set(s.entries.len() as f64);
                metrics::gauge!("signet_agent_svids").set(s.svids.len() as f64);
            }
            if let Some(update) = &revision {
                update();
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
