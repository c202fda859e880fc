//! `signet server` and `signet run`: configuration (file + flags), wiring,
//! signal handling and drain.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde::Deserialize;
use signet_agent as agent;
use signet_agent::workload_api::bind_agent_socket;
use signet_identity::{SpiffeId, TrustDomain};
use signet_server::admin::{bind_admin_socket, serve_admin};
use signet_server::attest::node::NodeAttestor;
use signet_server::attest::node::join_token::JoinTokenAttestor;
use signet_server::attest::node::x509pop::X509PopAttestor;
use signet_server::datastore::redact_url;
use signet_server::key_manager::disk::DiskKeyManager;
use signet_server::node::serve_node;
use signet_server::{KeyType, SystemClock, UpstreamAuthority, datastore};
use signet_server::{Server, ServerConfig};
use tokio::sync::watch;

use crate::sockets::{flag_to_reach, locate};
use signet_workload::SocketRole;

/// Server settings: every key of the config file is also a flag of the
/// same name (`trust_domain` = `--trust-domain`); flags win.
#[derive(Debug, Default, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Config file (TOML) with any of the keys below.
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Validate the configuration, print the result and exit.
    #[arg(long)]
    #[serde(skip)]
    check_config: bool,
    /// Trust domain [default: example.org].
    #[arg(long, env = "SIGNET_TRUST_DOMAIN")]
    trust_domain: Option<String>,
    /// Directory for keys and the SQLite datastore [default: .signet].
    #[arg(long, env = "SIGNET_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Datastore URL: sqlite://PATH or postgres://... [default: sqlite in the data dir].
    #[arg(long, env = "SIGNET_DATASTORE")]
    datastore: Option<String>,
    /// The admin API's socket, created mode 0600 (see --help).
    #[arg(long, value_parser = crate::sockets::socket_arg, long_help = crate::sockets::ADMIN_SOCKET_HELP)]
    admin_socket: Option<PathBuf>,
    /// `signet run` only: the local agent's socket (its flag is `signet
    /// run --agent-socket`).
    #[arg(skip)]
    agent_socket: Option<PathBuf>,
    #[arg(skip)]
    #[serde(skip)]
    local_agent: Option<LocalAgentSocket>,
    /// Address of the server-agent API (mTLS) [default: 127.0.0.1:8081; port 0 picks one].
    #[arg(long, env = "SIGNET_BIND_ADDRESS")]
    bind_address: Option<String>,
    /// CA bundle (PEM) that x509pop node certificates must chain to; enables x509pop.
    #[arg(long)]
    x509pop_ca_bundle: Option<PathBuf>,
    /// Name of this server's CA journal in a shared datastore [default: signet-server].
    #[arg(long)]
    server_id: Option<String>,
    /// CA key type: ec-p256, ec-p384 or rsa-2048 [default: ec-p256].
    #[arg(long)]
    ca_key_type: Option<String>,
    /// JWT signing key type [default: ec-p256].
    #[arg(long)]
    jwt_key_type: Option<String>,
    /// Life of each CA signing authority and JWT key [default: 24h].
    #[arg(long)]
    ca_ttl: Option<String>,
    /// Default X509-SVID life [default: 1h].
    #[arg(long)]
    x509_svid_ttl: Option<String>,
    /// Default JWT-SVID life [default: 5m].
    #[arg(long)]
    jwt_svid_ttl: Option<String>,
    /// Default join token life [default: 10m].
    #[arg(long)]
    join_token_ttl: Option<String>,
    /// `iss` claim of JWT-SVIDs (an OIDC issuer URL).
    #[arg(long)]
    jwt_issuer: Option<String>,
    /// Upstream CA certificate (PEM): our CA becomes its intermediate.
    #[arg(long)]
    upstream_cert: Option<PathBuf>,
    /// Upstream CA private key (PKCS#8 PEM).
    #[arg(long)]
    upstream_key: Option<PathBuf>,
    /// Upstream root bundle (PEM), when the upstream certificate is not the root.
    #[arg(long)]
    upstream_bundle: Option<PathBuf>,
}

/// Settings checked and defaulted.
#[derive(Debug)]
pub struct Resolved {
    pub config: ServerConfig,
    pub bind_address: std::net::SocketAddr,
    pub x509pop_ca_bundle: Option<PathBuf>,
    pub data_dir: PathBuf,
    pub datastore: String,
    pub admin_socket: PathBuf,
    /// The local agent's socket, for `signet run`.
    pub agent_socket: Option<PathBuf>,
    pub upstream: Option<(PathBuf, PathBuf, Option<PathBuf>)>,
}

macro_rules! merge {
    ($cli:ident, $file:ident, $($f:ident),* $(,)?) => {
        $( if $cli.$f.is_none() { $cli.$f = $file.$f.take(); } )*
    };
}

/// `signet run`'s `--agent-socket`, if given.
#[derive(Debug, Default)]
struct LocalAgentSocket(Option<PathBuf>);

impl ServerSettings {
    /// For `signet run`: the server also runs a local agent, whose socket
    /// comes from `flag`, the environment, the config file or the default.
    pub fn with_local_agent(mut self, flag: Option<PathBuf>) -> Self {
        self.local_agent = Some(LocalAgentSocket(flag));
        self
    }

    /// Reads the config file (if any), lets flags override it, applies
    /// defaults and reports every problem at once.
    pub fn resolve(mut self) -> anyhow::Result<Resolved> {
        let mut file = ServerSettings::default();
        if let Some(path) = self.config.clone() {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read config file {}", path.display()))?;
            file = toml::from_str(&text)
                .with_context(|| format!("config file {} is invalid", path.display()))?;
            merge!(
                self,
                file,
                trust_domain,
                data_dir,
                datastore,
                bind_address,
                x509pop_ca_bundle,
                server_id,
                ca_key_type,
                jwt_key_type,
                ca_ttl,
                x509_svid_ttl,
                jwt_svid_ttl,
                join_token_ttl,
                jwt_issuer,
                upstream_cert,
                upstream_key,
                upstream_bundle,
            );
        }
        let mut problems = Vec::new();
        let td = TrustDomain::parse(self.trust_domain.as_deref().unwrap_or("example.org"))
            .map_err(|e| problems.push(format!("trust_domain: {e}")))
            .ok();
        let admin_socket = locate(
            SocketRole::Admin,
            self.admin_socket.take(),
            file.admin_socket,
        )
        .map_err(|e| problems.push(e.to_string()))
        .map(|l| l.server_path())
        .unwrap_or_default();
        let agent_socket = match self.local_agent.take() {
            Some(LocalAgentSocket(flag)) => locate(SocketRole::Agent, flag, file.agent_socket)
                .map_err(|e| problems.push(e.to_string()))
                .map(|l| l.server_path())
                .ok(),
            None => {
                if file.agent_socket.is_some() {
                    problems.push(
                        "agent_socket: only `signet run` serves an agent socket; a server's agents serve their own".into(),
                    );
                }
                None
            }
        };
        let mut duration = |name: &str, v: &Option<String>, default: &str| {
            humantime::parse_duration(v.as_deref().unwrap_or(default))
                .map_err(|e| {
                    problems.push(format!("{name} {:?}: {e}", v.as_deref().unwrap_or(default)))
                })
                .unwrap_or_default()
        };
        let ca_ttl = duration("ca_ttl", &self.ca_ttl, "24h");
        let x509_ttl = duration("x509_svid_ttl", &self.x509_svid_ttl, "1h");
        let jwt_ttl = duration("jwt_svid_ttl", &self.jwt_svid_ttl, "5m");
        let token_ttl = duration("join_token_ttl", &self.join_token_ttl, "10m");
        let mut key_type = |name: &str, v: &Option<String>| {
            v.as_deref()
                .unwrap_or("ec-p256")
                .parse::<KeyType>()
                .map_err(|e| problems.push(format!("{name}: {e}")))
                .unwrap_or_default()
        };
        let ca_key_type = key_type("ca_key_type", &self.ca_key_type);
        let jwt_key_type = key_type("jwt_key_type", &self.jwt_key_type);
        for (name, d) in [
            ("ca_ttl", ca_ttl),
            ("x509_svid_ttl", x509_ttl),
            ("jwt_svid_ttl", jwt_ttl),
        ] {
            if d.is_zero() {
                problems.push(format!("{name} must be longer than zero"));
            }
        }
        if !ca_ttl.is_zero() && x509_ttl > ca_ttl {
            problems.push(
                "x509_svid_ttl is longer than ca_ttl; SVIDs would be cut at the CA's expiry".into(),
            );
        }
        let upstream = match (self.upstream_cert.take(), self.upstream_key.take()) {
            (Some(c), Some(k)) => Some((c, k, self.upstream_bundle.take())),
            (None, None) => {
                if self.upstream_bundle.is_some() {
                    problems.push("upstream_bundle needs upstream_cert and upstream_key".into());
                }
                None
            }
            _ => {
                problems.push("upstream_cert and upstream_key go together".into());
                None
            }
        };
        let bind = self.bind_address.as_deref().unwrap_or("127.0.0.1:8081");
        let bind_address = bind
            .parse::<std::net::SocketAddr>()
            .map_err(|e| problems.push(format!("bind_address {bind:?}: {e} (expected IP:PORT)")))
            .ok();
        let (Some(td), Some(bind_address), true) = (td, bind_address, problems.is_empty()) else {
            anyhow::bail!("invalid configuration:\n  - {}", problems.join("\n  - "));
        };
        let data_dir = self.data_dir.unwrap_or_else(|| PathBuf::from(".signet"));
        let datastore = self.datastore.unwrap_or_else(|| {
            format!("sqlite://{}", data_dir.join("datastore.sqlite3").display())
        });
        let mut config = ServerConfig::new(td);
        config.ca.key_type = ca_key_type;
        config.ca.jwt_key_type = jwt_key_type;
        config.ca.ca_ttl = ca_ttl;
        config.ca.x509_svid_ttl = x509_ttl;
        config.ca.jwt_svid_ttl = jwt_ttl;
        config.ca.jwt_issuer = self.jwt_issuer;
        config.join_token_ttl = token_ttl;
        if let Some(id) = self.server_id {
            config.server_id = id;
        }
        Ok(Resolved {
            config,
            bind_address,
            x509pop_ca_bundle: self.x509pop_ca_bundle,
            data_dir,
            datastore,
            admin_socket,
            agent_socket,
            upstream,
        })
    }

    pub fn check_config(&self) -> bool {
        self.check_config
    }
}

/// The path of the SPIFFE ID of the agent inside `signet run`.
pub const LOCAL_AGENT_PATH: &str = "/signet/agent/local";

/// The SPIFFE ID of the agent inside `signet run`.
pub fn local_agent_id(td: &TrustDomain) -> anyhow::Result<SpiffeId> {
    Ok(td.id_with_path(LOCAL_AGENT_PATH)?)
}

/// Runs a server (and, for `signet run`, the local agent with its Workload
/// API on `agent_socket`) until SIGINT or SIGTERM, then drains.
pub async fn serve(r: Resolved, local_agent: Option<LocalAgent>) -> anyhow::Result<()> {
    let agent_socket = local_agent.as_ref().and(r.agent_socket.clone());
    let combined = agent_socket.is_some();
    create_private_dir(&r.data_dir)?;
    let _lock = lock_data_dir(&r.data_dir)?;
    let store = datastore::open(&r.datastore)
        .await
        .with_context(|| format!("cannot open the datastore {}", redact_url(&r.datastore)))?;
    let keys = Arc::new(DiskKeyManager::new(r.data_dir.join("keys"))?);
    let upstream = match &r.upstream {
        Some((c, k, b)) => Some(UpstreamAuthority::load(c, k, b.as_deref())?),
        None => None,
    };
    let mut config = r.config;
    if combined {
        config.default_parent_id = Some(local_agent_id(config.trust_domain())?);
    }
    let clock = Arc::new(SystemClock);
    let server = Server::start(config, store.clone(), clock.clone(), keys, upstream).await?;
    let mut attestors: Vec<Arc<dyn NodeAttestor>> = vec![Arc::new(JoinTokenAttestor::new(
        server.trust_domain().clone(),
        store,
        clock.clone(),
    ))];
    if let Some(path) = &r.x509pop_ca_bundle {
        let pem = std::fs::read(path)
            .with_context(|| format!("cannot read x509pop_ca_bundle {}", path.display()))?;
        let roots = signet_identity::bundle::certificates_from_pem(&pem)
            .with_context(|| format!("x509pop_ca_bundle {}", path.display()))?;
        attestors.push(Arc::new(X509PopAttestor::new(
            server.trust_domain().clone(),
            roots,
            clock,
        )));
    }
    let admin_listener = bind_admin_socket(&r.admin_socket)
        .with_context(|| format!("cannot bind the admin socket {}", r.admin_socket.display()))?;
    let admin_identity = signet_unix::socket_identity(&r.admin_socket);
    let mut watched = vec![(r.admin_socket.clone(), admin_identity)];
    let node_listener = tokio::net::TcpListener::bind(r.bind_address)
        .await
        .with_context(|| format!("cannot listen on {} for agents", r.bind_address))?;
    let node_addr = node_listener.local_addr()?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut tasks = tokio::task::JoinSet::new();
    let mut agent_identity = None;
    tasks.spawn({
        let server = server.clone();
        let stop = stopped(stop_rx.clone());
        async move {
            serve_admin(server, admin_listener, stop)
                .await
                .context("admin API")
        }
    });
    tasks.spawn({
        let server = server.clone();
        let stop = stopped(stop_rx.clone());
        async move {
            serve_node(server, attestors, node_listener, stop)
                .await
                .context("agent API")
        }
    });
    tasks.spawn({
        let server = server.clone();
        let stop = stopped(stop_rx.clone());
        async move {
            server.follow_changes(Duration::from_secs(1), stop).await;
            Ok(())
        }
    });
    tasks.spawn({
        let server = server.clone();
        let stop = stopped(stop_rx.clone());
        async move {
            tokio::pin!(stop);
            let mut tick = tokio::time::interval(Duration::from_secs(5));
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
    });
    if let Some(socket) = &agent_socket {
        let agent_id = local_agent_id(server.trust_domain())?;
        let cache = local_agent
            .as_ref()
            .map_or(agent::DEFAULT_SVID_CACHE_SIZE, |a| a.svid_cache_size);
        let issued = server
            .attest_local_agent(&agent_id)
            .await
            .context("the local agent's identity")?;
        let (handle, agent_task) =
            agent::start_local(issued, loopback(node_addr), cache, stop_rx.clone()).await?;
        let listener = bind_agent_socket(socket)
            .with_context(|| format!("cannot bind the agent socket {}", socket.display()))?;
        agent_identity = signet_unix::socket_identity(socket);
        watched.push((socket.clone(), agent_identity));
        tasks.spawn(async move {
            let _ = agent_task.await;
            Ok(())
        });
        let sds = local_agent.as_ref().map(|a| a.sds).unwrap_or_default();
        tasks.spawn({
            let stop = stopped(stop_rx.clone());
            async move {
                crate::agent_cmd::serve_agent_socket(handle, listener, sds, stop)
                    .await
                    .context("agent socket")
            }
        });
    }

    for (path, identity) in watched {
        let stop = stopped(stop_rx.clone());
        tasks.spawn(async move {
            signet_unix::watch_socket(path, identity, stop).await;
            Ok(())
        });
    }

    print_banner(
        &server,
        &r.data_dir,
        &r.datastore,
        &r.admin_socket,
        node_addr,
        agent_socket.as_deref(),
    );

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    let failed = tokio::select! {
        _ = tokio::signal::ctrl_c() => None,
        _ = term.recv() => None,
        Some(done) = tasks.join_next() => Some(done),
    };
    let _ = stop_tx.send(true);
    if let Some(done) = failed {
        // A task ended on its own: that is a failure of the server.
        return match done {
            Ok(Err(e)) => Err(e),
            Ok(Ok(())) => Err(anyhow::anyhow!("a server task stopped unexpectedly")),
            Err(e) => Err(anyhow::anyhow!("a server task panicked: {e}")),
        };
    }
    tracing::info!("shutting down");
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(10), drain)
        .await
        .is_err()
    {
        tracing::warn!("drain took longer than 10 s; stopping anyway");
    }
    signet_unix::remove_if_ours(&r.admin_socket, admin_identity);
    if let Some(socket) = &agent_socket {
        signet_unix::remove_if_ours(socket, agent_identity);
    }
    println!("signet stopped");
    Ok(())
}

/// The agent inside `signet run`.
#[derive(Debug)]
pub struct LocalAgent {
    pub svid_cache_size: usize,
    pub sds: signet_sds::SdsOptions,
}

/// An address to dial for a listener bound to `addr` (0.0.0.0 becomes loopback).
fn loopback(addr: std::net::SocketAddr) -> std::net::SocketAddr {
    match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
            (std::net::Ipv4Addr::LOCALHOST, addr.port()).into()
        }
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
            (std::net::Ipv6Addr::LOCALHOST, addr.port()).into()
        }
        _ => addr,
    }
}

/// Locks the data dir for this process's life (released by the kernel when
/// it exits, however it exits): two servers on one key directory and CA
/// journal would overwrite each other's.
fn lock_data_dir(dir: &Path) -> anyhow::Result<std::fs::File> {
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
        .with_context(|| format!("cannot open {}", path.display()))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {
            file.set_len(0)?;
            writeln!(file, "{}", std::process::id())?;
            Ok(file)
        }
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
            let pid = std::fs::read_to_string(&path).unwrap_or_default();
            anyhow::bail!(
                "another signet (pid {}) is using the data dir {}; stop it, or give this one another --data-dir",
                pid.trim(),
                dir.display()
            )
        }
        Err(e) => Err(anyhow::anyhow!("cannot lock {}: {e}", path.display())),
    }
}

/// Creates the data dir (keys, datastore, state) with mode 0700, or makes an
/// existing one 0700: nobody but the server's user may read it.
fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create data dir {}", dir.display()))?;
    let meta = std::fs::metadata(dir)
        .with_context(|| format!("cannot read data dir {}", dir.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make data dir {} private (0700)", dir.display()))?;
    }
    Ok(())
}

fn print_banner(
    server: &Server,
    data_dir: &Path,
    datastore: &str,
    admin_socket: &Path,
    node_addr: std::net::SocketAddr,
    agent_socket: Option<&Path>,
) {
    let ca = server.ca();
    let authority = ca.x509_authority();
    let until = humantime::format_rfc3339_seconds(authority.not_after());
    let bundle = ca.bundle();
    let sock = admin_socket.display();
    let socket_flag = flag_to_reach(SocketRole::Admin, admin_socket);
    let cfg = server.config();
    let td = server.trust_domain();
    println!(
        "signet {} is running",
        if agent_socket.is_some() {
            "(combined server and agent)"
        } else {
            "server"
        }
    );
    println!("  trust domain   {td}");
    let data_dir = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    println!("  data dir       {}", data_dir.display());
    println!("  datastore      {}", redact_url(datastore));
    println!("  admin socket   {sock} (mode 0600)");
    println!("  agent API      {node_addr} (mTLS)");
    if let Some(agent) = agent_socket {
        println!(
            "  agent socket   {} (Workload API; SPIFFE_ENDPOINT_SOCKET=unix://{})",
            agent.display(),
            agent.display()
        );
    }
    println!(
        "  CA             {}: {} key, active until {until}; bundle sequence {}",
        if server.resumed_ca() {
            "resumed from the datastore"
        } else {
            "new CA created (a new trust bundle: agents and peers of an earlier one will not trust it)"
        },
        cfg.ca.key_type,
        bundle.sequence()
    );
    println!(
        "  SVID TTLs      X509 {}, JWT {}",
        humantime::format_duration(cfg.ca.x509_svid_ttl),
        humantime::format_duration(cfg.ca.jwt_svid_ttl)
    );
    if let Some(parent) = &cfg.default_parent_id {
        println!("  local agent    {parent} (entries without --parent-id go here)");
    }
    println!();
    println!("Try:");
    println!(
        "  signet entry create{socket_flag} --spiffe-id spiffe://{td}/web --selector unix:uid:$(id -u)"
    );
    if let Some(agent) = agent_socket {
        let api_flag = flag_to_reach(SocketRole::Agent, agent);
        println!("  signet api fetch x509{api_flag}");
        println!("  signet api fetch jwt{api_flag} --audience db");
    }
    println!("  signet entry show{socket_flag}");
    println!("  signet bundle show{socket_flag}");
    println!("  signet token generate{socket_flag}");
    println!();
    println!(
        "The whole mission in one command: signet demo (sidecars, policy, mTLS). Envoy: examples/envoy."
    );
    println!("Press Ctrl-C to stop.");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:[redacted]@h:5432/db"
        );
        assert_eq!(redact_url("sqlite:///x/y.db"), "sqlite:///x/y.db");
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        // The banner and its errors use the datastore's redaction, which
        // also hides a password given as a parameter.
        let shown = redact_url("postgres://u@h/db?sslmode=require&password=hunter2");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("password=[redacted]"), "{shown}");
    }

    #[test]
    fn every_problem_is_reported() {
        let s = ServerSettings {
            trust_domain: Some("Bad.Domain".into()),
            ca_ttl: Some("forever".into()),
            ca_key_type: Some("dsa".into()),
            upstream_cert: Some("x.pem".into()),
            ..Default::default()
        };
        let err = s.resolve().unwrap_err().to_string();
        for want in [
            "trust_domain",
            "ca_ttl \"forever\"",
            "ca_key_type",
            "upstream_cert and upstream_key",
        ] {
            assert!(err.contains(want), "{want} missing from: {err}");
        }
    }

    #[test]
    fn flags_override_the_file_and_unknown_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.toml");
        std::fs::write(
            &path,
            "trust_domain = \"file.org\"\nx509_svid_ttl = \"30m\"\n",
        )
        .unwrap();
        let s = ServerSettings {
            config: Some(path.clone()),
            x509_svid_ttl: Some("10m".into()),
            ..Default::default()
        };
        let r = s.resolve().unwrap();
        assert_eq!(r.config.trust_domain().as_str(), "file.org");
        assert_eq!(r.config.ca.x509_svid_ttl, Duration::from_secs(600));
        std::fs::write(&path, "trust_domian = \"typo.org\"\n").unwrap();
        let err = ServerSettings {
            config: Some(path),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(format!("{err:#}").contains("trust_domian"), "{err:#}");
    }
}
