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
mod proxy_protocol;
mod read_ahead;
pub mod relay;
pub mod tls;
mod workers;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;

pub use config::{ConfigError, Endpoint, ListenerConfig, ProxyConfig};
pub use identity::Identity;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    // The cause is the error's source, not part of its message: a chain
    // printed with `{:#}` would say it twice.
    #[error("listener {name}: cannot listen on {addr}")]
    Bind {
        name: String,
        addr: Endpoint,
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
    addrs: Vec<(String, Endpoint)>,
    /// Unix sockets this proxy bound, removed when it stops (unless
    /// another process has bound the path since).
    unix_sockets: Vec<(std::path::PathBuf, Option<signet_unix::SocketIdentity>)>,
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
        let tick = config
            .listeners
            .iter()
            .flat_map(|l| [l.limits.connect_timeout, l.limits.handshake_timeout])
            .min()
            .unwrap_or(workers::MIN_TICK);
        let workers = workers::Workers::start(count, tick).map_err(|e| ProxyError::Setup {
            name: "proxy".into(),
            message: format!("cannot start {count} connection workers: {e}"),
        })?;
        tracing::debug!(workers = count, "connection workers started");
        let mut prepared = Vec::new();
        let mut loaded = Vec::new();
        let mut unix_sockets = Vec::new();
        for l in &config.listeners {
            let bind_error = |source| ProxyError::Bind {
                name: l.name.clone(),
                addr: l.listen.clone(),
                source,
            };
            let (sockets, addr) = match &l.listen {
                Endpoint::Tcp(addr) => {
                    let sockets = workers::bind_group(*addr, workers.len()).map_err(bind_error)?;
                    let addr = sockets
                        .first()
                        .and_then(|s| s.local_addr().ok())
                        .unwrap_or(*addr);
                    (
                        sockets.into_iter().map(Socket::Tcp).collect::<Vec<_>>(),
                        Endpoint::Tcp(addr),
                    )
                }
                Endpoint::Unix(path) => {
                    let socket = bind_unix(path, l.unix).map_err(bind_error)?;
                    unix_sockets.push((path.clone(), signet_unix::socket_identity(path)));
                    // Every worker accepts on its own handle of the one socket.
                    let mut sockets = Vec::new();
                    for _ in 0..workers.len() {
                        sockets.push(Socket::Unix(socket.try_clone().map_err(bind_error)?));
                    }
                    (sockets, l.listen.clone())
                }
            };
            let ctx =
                listener::Listener::prepare(l, identity.clone(), shutdown.clone(), &mut loaded)?;
            prepared.push((sockets, addr, Arc::new(ctx)));
        }
        let mut proxy = Proxy {
            listeners: Vec::new(),
            addrs: Vec::new(),
            unix_sockets,
            // One handle per distinct policy (listeners naming the same
            // policy share it).
            policies: loaded.into_iter().map(|(_, handle)| handle).collect(),
            active: Vec::new(),
            drain,
            abort,
            workers,
        };
        for (sockets, addr, ctx) in prepared {
            proxy.addrs.push((ctx.name().to_string(), addr));
            proxy.active.push(ctx.active());
            for (i, socket) in sockets.into_iter().enumerate() {
                let ctx = ctx.clone();
                proxy.listeners.push(proxy.workers.spawn_on(i, async move {
                    // Registered with the runtime of the worker that uses it.
                    let registered = match socket {
                        Socket::Tcp(s) => TcpListener::from_std(s).map(listener::Accept::Tcp),
                        Socket::Unix(s) => UnixListener::from_std(s).map(listener::Accept::Unix),
                    };
                    match registered {
                        Ok(accept) => ctx.run(accept, i == 0).await,
                        Err(e) => tracing::error!(listener = %ctx.name(), error = %e, "worker cannot listen"),
                    }
                }));
            }
        }
        Ok(proxy)
    }

    /// Where each listener listens (with the port the OS chose for `:0`).
    pub fn local_addrs(&self) -> &[(String, Endpoint)] {
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

impl Drop for Proxy {
    fn drop(&mut self) {
        for (path, identity) in &self.unix_sockets {
            signet_unix::remove_if_ours(path, *identity);
        }
    }
}

/// A listening socket before a worker registers it.
enum Socket {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

/// Binds a `unix:` listener with the agent socket's rules (security
/// invariant 8): a directory nobody else controls, a stale socket replaced,
/// a live one or any other file left alone; then the mode and owner asked
/// for.
fn bind_unix(
    path: &std::path::Path,
    options: config::UnixSocketOptions,
) -> std::io::Result<std::os::unix::net::UnixListener> {
    let socket = signet_unix::bind(path, options.mode, 0o755)?.into_std()?;
    if options.uid.is_some() || options.gid.is_some() {
        std::os::unix::fs::chown(path, options.uid, options.gid).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot give {} to the owner asked for: {e}", path.display()),
            )
        })?;
    }
    Ok(socket)
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
