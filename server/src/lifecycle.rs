//! A server as `signet server` runs it: the data dir locked and private,
//! the datastore, keys on disk, the CA (self-signed or under an upstream),
//! node attestors, the admin API on its socket, the node API on TCP, the
//! SPIFFE bundle endpoint when configured, the federated-bundle refresher,
//! the change-feed follower, the maintenance tick and the socket watch.
//! `signet server`, `signet run`, `signet demo`, the benches and the SDS
//! tests all start a server through [`start`].

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use signet_identity::{SpiffeId, TrustDomain};
use signet_workload::tasks::{Service, Tasks, run_until, stopped};
use tokio::sync::watch;

use crate::admin::{bind_admin_socket, serve_admin};
use crate::attest::node::NodeAttestor;
use crate::attest::node::join_token::JoinTokenAttestor;
use crate::attest::node::x509pop::X509PopAttestor;
use crate::datastore::{self, redact_url};
use crate::federation::BundleEndpoint;
use crate::key_manager::disk::DiskKeyManager;
use crate::node::serve_node;
use crate::oidc::{OidcProvider, PreparedProvider};
use crate::vault::VaultUpstream;
use crate::{Server, ServerConfig, SystemClock, UpstreamAuthority, UpstreamCa};

/// How often the server rotates its CA and publishes its bundle.
const TICK: Duration = Duration::from_secs(5);
/// How often the change feed is read when no local write pokes it.
const FOLLOW_POLL: Duration = Duration::from_secs(1);
/// How long in-flight calls get to finish after a stop.
const DRAIN: Duration = Duration::from_secs(10);

/// Everything a running server needs, checked and defaulted.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub server: ServerConfig,
    /// Where the node API (mTLS) listens; port 0 picks one.
    pub bind_address: SocketAddr,
    /// Roots x509pop node certificates must chain to (enables x509pop).
    pub x509pop_ca_bundle: Option<PathBuf>,
    /// Keys, the lock and (by default) the SQLite datastore; made 0700.
    pub data_dir: PathBuf,
    /// `sqlite://PATH` or `postgres://...`.
    pub datastore: String,
    /// The admin API's socket, created 0600.
    pub admin_socket: PathBuf,
    /// Where the admin API also listens over mTLS for workloads whose
    /// entry has the `admin` flag; off unless set.
    pub admin_listen: Option<SocketAddr>,
    /// IDs allowed to use the admin API over mTLS without an admin entry
    /// (of this or a federated trust domain).
    pub admin_ids: Vec<SpiffeId>,
    pub upstream: Option<Upstream>,
    /// The SPIFFE bundle endpoint, if this server serves one.
    pub federation: Option<BundleEndpoint>,
    /// The OIDC discovery provider, if this server serves one.
    pub oidc: Option<OidcProvider>,
}

impl RunConfig {
    /// A server of `trust_domain` that keeps everything (keys, SQLite
    /// datastore, admin socket) in `dir` and takes a loopback port the
    /// kernel picks for the node API (tests, benches, demos).
    pub fn in_dir(trust_domain: TrustDomain, dir: &Path) -> Self {
        RunConfig {
            server: ServerConfig::new(trust_domain),
            bind_address: SocketAddr::from(([127, 0, 0, 1], 0)),
            x509pop_ca_bundle: None,
            data_dir: dir.to_path_buf(),
            datastore: format!("sqlite://{}", dir.join("datastore.sqlite3").display()),
            admin_socket: dir.join("admin.sock"),
            admin_listen: None,
            admin_ids: Vec::new(),
            upstream: None,
            federation: None,
            oidc: None,
        }
    }
}

/// An upstream CA our CA becomes the intermediate of.
#[derive(Debug, Clone)]
pub enum Upstream {
    /// Its certificate and key in files here.
    Files {
        cert: PathBuf,
        key: PathBuf,
        /// The upstream's roots, when its certificate is not one.
        bundle: Option<PathBuf>,
    },
    /// An OpenBao/Vault PKI secrets engine.
    Vault(crate::vault::VaultConfig),
    /// Any other upstream reached over the network (an upstream Signet
    /// server, for a nested one).
    Remote(Arc<dyn crate::ca::RemoteUpstream>),
}

/// Why a server could not start, or stopped on its own.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct RunError {
    what: String,
    reason: String,
}

impl RunError {
    pub fn new(what: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Self {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}

/// Adds what was being done to an error.
trait Doing<T> {
    fn doing(self, what: impl FnOnce() -> String) -> Result<T, RunError>;
}

impl<T, E: std::fmt::Display> Doing<T> for Result<T, E> {
    fn doing(self, what: impl FnOnce() -> String) -> Result<T, RunError> {
        self.map_err(|e| RunError::new(what(), e))
    }
}

/// A started server: its tasks run until the `stop` given to [`start`]
/// turns true, or one of them fails ([`Service::failed`]).
#[derive(Debug)]
pub struct Running {
    pub server: Arc<Server>,
    /// Where the node API listens (the port picked, for port 0).
    pub node_addr: SocketAddr,
    /// Where the admin API listens over mTLS, if it does.
    pub admin_listen_addr: Option<SocketAddr>,
    /// Where the bundle endpoint listens, if it runs (the port picked).
    pub federation_addr: Option<SocketAddr>,
    /// What the bundle endpoint presents, if it runs.
    pub federation_profile: Option<crate::federation::EndpointProfile>,
    /// The OIDC discovery provider, if it runs.
    pub oidc: Option<OidcInfo>,
    pub admin_socket: PathBuf,
    admin_identity: Option<signet_unix::SocketIdentity>,
    tasks: Tasks<RunError>,
    /// Held for the process's life: the data dir's lock.
    _lock: std::fs::File,
}

/// Where a running OIDC discovery provider is.
#[derive(Debug, Clone)]
pub struct OidcInfo {
    pub addr: SocketAddr,
    /// The issuer, as in the discovery document and JWT-SVIDs' `iss`.
    pub issuer: String,
    /// The CA clients trust, for a self-signed certificate.
    pub ca_file: Option<PathBuf>,
    pub transport: crate::oidc::OidcTransport,
}

/// Binds the OIDC provider (if any) and settles the issuer JWT-SVIDs
/// carry: the configured one, checked against the provider, or the
/// provider's own URL.
async fn prepare_oidc(config: &mut RunConfig) -> Result<Option<PreparedProvider>, RunError> {
    let issuer = config.server.ca.jwt_issuer.take();
    let Some(oidc) = &config.oidc else {
        config.server.ca.jwt_issuer = issuer
            .map(|i| crate::oidc::check_issuer(&i, None))
            .transpose()
            .doing(|| "jwt_issuer".into())?;
        return Ok(None);
    };
    let listener = crate::oidc::bind(oidc)
        .await
        .doing(|| "OIDC provider".into())?;
    let bound = listener
        .local_addr()
        .doing(|| "the OIDC provider's address".into())?;
    let issuer = match issuer {
        Some(i) => crate::oidc::check_issuer(&i, Some(&oidc.transport)),
        None => crate::oidc::default_issuer(bound, &oidc.transport),
    }
    .doing(|| "OIDC provider".into())?;
    config.server.ca.jwt_issuer = Some(issuer.clone());
    let prepared = PreparedProvider::new(oidc, listener, issuer, &config.data_dir.join("oidc"))
        .doing(|| "cannot set up the OIDC provider".into())?;
    Ok(Some(prepared))
}

/// Starts a server: returns once its sockets are bound and its CA is
/// ready.
pub async fn start(
    mut config: RunConfig,
    stop: watch::Receiver<bool>,
) -> Result<Running, RunError> {
    create_private_dir(&config.data_dir)?;
    let lock = lock_data_dir(&config.data_dir)?;
    let oidc = prepare_oidc(&mut config).await?;
    let store = datastore::open(&config.datastore).await.doing(|| {
        format!(
            "cannot open the datastore {}",
            redact_url(&config.datastore)
        )
    })?;
    let keys_dir = config.data_dir.join("keys");
    let keys = Arc::new(
        DiskKeyManager::new(keys_dir.clone())
            .doing(|| format!("cannot use the key directory {}", keys_dir.display()))?,
    );
    let upstream = match config.upstream {
        Some(Upstream::Files { cert, key, bundle }) => Some(UpstreamCa::Files(Box::new(
            UpstreamAuthority::load(&cert, &key, bundle.as_deref())
                .doing(|| format!("upstream CA {}", cert.display()))?,
        ))),
        Some(Upstream::Vault(vault)) => {
            let addr = vault.addr.clone();
            let td = config.server.trust_domain().clone();
            Some(UpstreamCa::Remote(Arc::new(
                VaultUpstream::new(vault, td).doing(|| format!("upstream CA {addr}"))?,
            )))
        }
        Some(Upstream::Remote(remote)) => Some(UpstreamCa::Remote(remote)),
        None => None,
    };
    let clock = Arc::new(SystemClock);
    let server = Server::start(config.server, store.clone(), clock.clone(), keys, upstream)
        .await
        .doing(|| "cannot start the CA".into())?;
    let mut attestors: Vec<Arc<dyn NodeAttestor>> = vec![Arc::new(JoinTokenAttestor::new(
        server.trust_domain().clone(),
        store,
        clock.clone(),
    ))];
    if let Some(path) = &config.x509pop_ca_bundle {
        let what = || format!("x509pop_ca_bundle {}", path.display());
        let pem = std::fs::read(path).doing(what)?;
        let roots = signet_identity::bundle::certificates_from_pem(&pem).doing(what)?;
        attestors.push(Arc::new(X509PopAttestor::new(
            server.trust_domain().clone(),
            roots,
            clock,
        )));
    }
    let admin_socket = config.admin_socket;
    let admin_listener = bind_admin_socket(&admin_socket)
        .doing(|| format!("cannot bind the admin socket {}", admin_socket.display()))?;
    let admin_identity = signet_unix::socket_identity(&admin_socket);
    let node_listener = tokio::net::TcpListener::bind(config.bind_address)
        .await
        .doing(|| format!("cannot listen on {} for agents", config.bind_address))?;
    let node_addr = node_listener
        .local_addr()
        .doing(|| "the agent API's address".into())?;
    let admin_tls = match config.admin_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .doing(|| format!("cannot listen on {addr} for the admin API (--admin-listen)"))?;
            let bound = listener
                .local_addr()
                .doing(|| "the TLS admin API's address".into())?;
            Some((listener, bound))
        }
        None => None,
    };
    let admin_listen_addr = admin_tls.as_ref().map(|(_, addr)| *addr);

    let federation = match &config.federation {
        Some(endpoint) => {
            let prepared = crate::federation::prepare(&server, endpoint)
                .doing(|| "cannot set up the bundle endpoint".into())?;
            let listener = tokio::net::TcpListener::bind(endpoint.listen)
                .await
                .doing(|| {
                    format!(
                        "cannot listen on {} for the bundle endpoint",
                        endpoint.listen
                    )
                })?;
            let addr = listener
                .local_addr()
                .doing(|| "the bundle endpoint's address".into())?;
            Some((prepared, listener, addr))
        }
        None => None,
    };
    let federation_addr = federation.as_ref().map(|(_, _, addr)| *addr);
    let federation_profile = config.federation.as_ref().map(|f| f.profile.clone());

    let mut tasks = Tasks::default();
    let oidc = oidc.map(|prepared| {
        let info = OidcInfo {
            addr: prepared.addr(),
            issuer: prepared.issuer().to_owned(),
            ca_file: prepared.ca_file().map(Path::to_path_buf),
            transport: prepared.transport().clone(),
        };
        let source: Arc<dyn crate::oidc::KeySource> = server.clone();
        let stop = stopped(stop.clone());
        tasks.spawn(async move {
            prepared.serve(source, stop).await;
            Ok(())
        });
        info
    });
    if let Some((prepared, listener, _)) = federation {
        let server = server.clone();
        let stop = stopped(stop.clone());
        tasks.spawn(async move {
            crate::federation::serve_bundle_endpoint(server, prepared, listener, stop).await;
            Ok(())
        });
    }
    tasks.spawn({
        let server = server.clone();
        let stop = stopped(stop.clone());
        async move {
            serve_admin(server, admin_listener, stop)
                .await
                .doing(|| "admin API".into())
        }
    });
    if let Some((listener, _)) = admin_tls {
        let server = server.clone();
        let admin_ids = config.admin_ids.clone();
        let stop = stopped(stop.clone());
        tasks.spawn(async move {
            crate::admin::serve_admin_tls(server, listener, admin_ids, stop)
                .await
                .doing(|| "admin API over TLS".into())
        });
    }
    tasks.spawn({
        let server = server.clone();
        let stop = stopped(stop.clone());
        async move {
            serve_node(server, attestors, node_listener, stop)
                .await
                .doing(|| "agent API".into())
        }
    });
    tasks.spawn({
        let server = server.clone();
        let stop = stopped(stop.clone());
        async move {
            server.follow_changes(FOLLOW_POLL, stop).await;
            Ok(())
        }
    });
    tasks.spawn(maintain(server.clone(), stopped(stop.clone())));
    tasks.spawn({
        let server = server.clone();
        let stop = stopped(stop.clone());
        async move {
            crate::federation::refresh::keep_federated(server, stop).await;
            Ok(())
        }
    });
    tasks.spawn({
        let path = admin_socket.clone();
        let stop = stopped(stop);
        async move {
            signet_unix::watch_socket(path, admin_identity, stop).await;
            Ok(())
        }
    });
    Ok(Running {
        server,
        node_addr,
        admin_listen_addr,
        federation_addr,
        federation_profile,
        oidc,
        admin_socket,
        admin_identity,
        tasks,
        _lock: lock,
    })
}

/// How often the CA is checked: every [`TICK`], or more often for a CA so
/// short-lived that a tick could miss its activation window (the last
/// sixth of its life): at least three ticks fall in that window.
fn tick_for(ca_ttl: Duration) -> Duration {
    (ca_ttl / 18).clamp(Duration::from_millis(100), TICK)
}

/// Rotates the CA and publishes the bundle every [`tick_for`] until `stop`.
async fn maintain(server: Arc<Server>, stop: impl Future<Output = ()>) -> Result<(), RunError> {
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(tick_for(server.config().ca.ca_ttl));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(e) = server.tick().await {
                    tracing::error!(error = %e, "server maintenance failed");
                }
            }
            _ = &mut stop => return Ok(()),
        }
    }
}

impl Service for Running {
    type Error = RunError;

    async fn failed(&mut self) -> RunError {
        self.tasks
            .ended()
            .await
            .unwrap_or_else(|why| RunError::new("server", why))
    }

    /// Waits up to 10 s for in-flight calls, then removes the admin socket
    /// if it is still ours.
    async fn drain(mut self) {
        if !self.tasks.drain(DRAIN).await {
            tracing::warn!("drain took longer than 10 s; stopping anyway");
        }
        signet_unix::remove_if_ours(&self.admin_socket, self.admin_identity);
    }
}

/// Runs a server until `shutdown` resolves (then drains) or a task fails;
/// `ready` is called once it serves.
pub async fn run(
    config: RunConfig,
    ready: impl FnOnce(&Running),
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let (stop, stop_rx) = watch::channel(false);
    run_until(start(config, stop_rx), stop, ready, shutdown).await
}

/// Locks the data dir for this process's life (released by the kernel when
/// it exits, however it exits): two servers on one key directory and CA
/// journal would overwrite each other's.
fn lock_data_dir(dir: &Path) -> Result<std::fs::File, RunError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("lock");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .doing(|| format!("cannot open {}", path.display()))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {
            file.set_len(0)
                .and_then(|()| writeln!(file, "{}", std::process::id()))
                .doing(|| format!("cannot write {}", path.display()))?;
            Ok(file)
        }
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
            let pid = std::fs::read_to_string(&path).unwrap_or_default();
            Err(RunError::new(
                format!(
                    "another signet (pid {}) is using the data dir {}",
                    pid.trim(),
                    dir.display()
                ),
                "stop it, or give this one another --data-dir",
            ))
        }
        Err(e) => Err(RunError::new(format!("cannot lock {}", path.display()), e)),
    }
}

/// Creates the data dir (keys, datastore, state) with mode 0700, or makes an
/// existing one 0700: nobody but the server's user may read it.
fn create_private_dir(dir: &Path) -> Result<(), RunError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).doing(|| format!("cannot create data dir {}", dir.display()))?;
    let meta =
        std::fs::metadata(dir).doing(|| format!("cannot read data dir {}", dir.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .doing(|| format!("cannot make data dir {} private (0700)", dir.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The activation window (the last sixth of the CA's life) holds at
    /// least three ticks, so a tick cannot skip it; a day-long CA keeps the
    /// 5 s tick.
    #[test]
    fn a_short_lived_ca_is_checked_often_enough_to_activate_its_successor() {
        for ttl in [24, 60, 600, 86_400].map(Duration::from_secs) {
            let tick = tick_for(ttl);
            assert!(tick * 3 <= ttl / 6, "{ttl:?}: tick {tick:?}");
        }
        assert_eq!(tick_for(Duration::from_secs(86_400)), TICK);
    }
}
