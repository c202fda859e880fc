//! signet-proxy: the mTLS sidecar for apps that know nothing about SPIFFE.
//!
//! - **Inbound** listeners terminate mTLS with this workload's X509-SVID,
//!   verify the client's SVID against the bundle of its trust domain, check
//!   the allow-lists at the handshake and the policy per connection (or per
//!   HTTP request in HTTP mode), then forward plaintext to the app.
//! - **Outbound** listeners accept plaintext from the app on loopback and
//!   originate mTLS to a remote sidecar or Envoy, accepting only the
//!   configured server SPIFFE ID.
//!
//! SVIDs and bundles come from the Workload API ([`Identity::follow`]); a
//! rotation applies to the next handshake, established connections carry on.
//! Every rejection is logged with its reason and counted.

pub mod admin;
mod buffers;
pub mod config;
mod http;
pub mod identity;
mod listener;
pub mod pattern;
mod read_ahead;
pub mod relay;
pub mod tls;
mod workers;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::{ConfigError, ListenerConfig, ProxyConfig};
pub use identity::Identity;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    // The cause is the error's source, not part of its message: a chain
    // printed with `{:#}` would say it twice.
    #[error("listener {name}: cannot listen on {addr}")]
    Bind {
        name: String,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("listener {name}: policy {path}")]
    Policy {
        name: String,
        path: std::path::PathBuf,
        #[source]
        source: signet_policy::PolicyError,
    },
    #[error("listener {name}: {message}")]
    Setup { name: String, message: String },
}

/// Shutdown signals shared by every listener and connection: `drain` stops
/// accepting and asks HTTP connections to finish; `abort` ends the rest.
#[derive(Debug, Clone)]
pub(crate) struct Shutdown {
    drain: watch::Receiver<bool>,
    abort: watch::Receiver<bool>,
}

impl Shutdown {
    pub(crate) async fn drained(&self) {
        let mut rx = self.drain.clone();
        let _ = rx.wait_for(|d| *d).await;
    }

    pub(crate) async fn aborted(&self) {
        let mut rx = self.abort.clone();
        let _ = rx.wait_for(|d| *d).await;
    }
}

/// Running listeners.
#[derive(Debug)]
pub struct Proxy {
    /// Accept loops, one per listener per worker.
    listeners: Vec<tokio::task::JoinHandle<()>>,
    addrs: Vec<(String, std::net::SocketAddr)>,
    policies: Vec<Arc<signet_policy::PolicyHandle>>,
    active: Vec<Arc<listener::Active>>,
    drain: watch::Sender<bool>,
    abort: watch::Sender<bool>,
    /// Where connections run; dropped (stopped) with the proxy.
    workers: workers::Workers,
}

impl Proxy {
    /// Binds every listener (so a taken port fails here; the sockets are
    /// one per worker with `SO_REUSEPORT`, so only a process of the same user
    /// can share the port), loads every policy (a broken one refuses to
    /// start), and starts accepting once `identity` holds an SVID.
    pub async fn start(config: &ProxyConfig, identity: Identity) -> Result<Proxy, ProxyError> {
        let (drain, drain_rx) = watch::channel(false);
        let (abort, abort_rx) = watch::channel(false);
        let shutdown = Shutdown {
            drain: drain_rx,
            abort: abort_rx,
        };
        let count = config
            .workers
            .unwrap_or_else(workers::Workers::default_count);
        let workers = workers::Workers::start(count).map_err(|e| ProxyError::Setup {
            name: "proxy".into(),
            message: format!("cannot start {count} connection workers: {e}"),
        })?;
        tracing::debug!(workers = count, "connection workers started");
        let mut prepared = Vec::new();
        let mut loaded = Vec::new();
        for l in &config.listeners {
            let sockets = workers::bind_group(l.listen, workers.len()).map_err(|source| {
                ProxyError::Bind {
                    name: l.name.clone(),
                    addr: l.listen,
                    source,
                }
            })?;
            let ctx =
                listener::Listener::prepare(l, identity.clone(), shutdown.clone(), &mut loaded)?;
            prepared.push((sockets, Arc::new(ctx)));
        }
        let mut proxy = Proxy {
            listeners: Vec::new(),
            addrs: Vec::new(),
            // One handle per distinct policy (listeners naming the same
            // policy share it).
            policies: loaded.into_iter().map(|(_, handle)| handle).collect(),
            active: Vec::new(),
            drain,
            abort,
            workers,
        };
        for (sockets, ctx) in prepared {
            let addr = sockets
                .first()
                .and_then(|s| s.local_addr().ok())
                .ok_or_else(|| ProxyError::Setup {
                    name: ctx.name().to_string(),
                    message: "no local address".into(),
                })?;
            proxy.addrs.push((ctx.name().to_string(), addr));
            proxy.active.push(ctx.active());
            for (i, socket) in sockets.into_iter().enumerate() {
                let ctx = ctx.clone();
                proxy.listeners.push(proxy.workers.spawn_on(i, async move {
                    match TcpListener::from_std(socket) {
                        Ok(tcp) => ctx.run(tcp, i == 0).await,
                        Err(e) => tracing::error!(listener = %ctx.name(), error = %e, "worker cannot listen"),
                    }
                }));
            }
        }
        Ok(proxy)
    }

    /// Where each listener listens (with the port the OS chose for `:0`).
    pub fn local_addrs(&self) -> &[(String, std::net::SocketAddr)] {
        &self.addrs
    }

    /// The policies in force, for reload on SIGHUP or a file watcher.
    pub fn policies(&self) -> &[Arc<signet_policy::PolicyHandle>] {
        &self.policies
    }

    /// Open connections across listeners.
    pub fn open_connections(&self) -> usize {
        self.active.iter().map(|a| a.count()).sum()
    }

    /// Stops accepting, lets open connections finish for up to `timeout`
    /// (HTTP connections are asked to close after their current request),
    /// then ends the rest. Returns how many had to be cut.
    pub async fn drain(mut self, timeout: Duration) -> usize {
        self.drain.send_replace(true);
        for accept in std::mem::take(&mut self.listeners) {
            let _ = accept.await;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let open = self.open_connections();
            if open == 0 {
                return 0;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(open, "drain timeout: closing the remaining connections");
                self.abort.send_replace(true);
                return open;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Listeners naming the same policy share one loaded revision (and one
    /// watcher); another entrypoint is another policy.
    #[tokio::test]
    async fn listeners_naming_the_same_policy_share_it() {
        let policy = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../policy/rego/spiffe_allowlist.rego"
        );
        let listener = |entrypoint: &str| {
            format!(
                "[[listener]]\nmode = \"inbound\"\nlisten = \"127.0.0.1:0\"\nto = \"127.0.0.1:9\"\n\
                 policy = \"{policy}\"\nentrypoint = \"{entrypoint}\"\n"
            )
        };
        let text = [
            listener("signet/authz/allow"),
            listener("signet/authz/allow"),
            listener("signet/authz"),
        ]
        .concat();
        let file: config::ProxyFile = toml::from_str(&text).unwrap();
        let config = ProxyConfig::try_from(file).unwrap();
        let proxy = Proxy::start(&config, Identity::new()).await.unwrap();
        assert_eq!(proxy.local_addrs().len(), 3);
        assert_eq!(proxy.policies().len(), 2);
    }
}
