//! `signet server` and `signet run`: configuration (file + flags), wiring,
//! signal handling and drain.

mod federation;
mod oidc;
mod vault;

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde::{Deserialize, Serialize};
use signet_agent::AgentConfig;
use signet_identity::TrustDomain;
use signet_server::{KeyType, LOCAL_AGENT_PATH, RunConfig, Running, ServerConfig, Upstream};
use signet_workload::settings::overlay;

use federation::FederationSettings;
pub use oidc::OidcSettings;
use signet_workload::tasks::{Service, run_until};
use tokio::sync::watch;
use vault::VaultSettings;

use crate::banner::print_banner;
use crate::sockets::locate;
use signet_workload::SocketRole;

/// Server settings: every key of the config file is also a flag of the
/// same name (`trust_domain` = `--trust-domain`; a key of a table carries
/// the table's name: `listen` in `[federation]` = `--federation-listen`);
/// flags win.
#[derive(Debug, Default, Args, Serialize, Deserialize)]
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
    /// Also serve the admin API over mTLS on this address, to workloads
    /// whose entry has the admin flag (`signet entry create --admin`); the
    /// CLI reaches it with `--server-url` [default: off].
    #[arg(long)]
    admin_listen: Option<String>,
    /// With --admin-listen: a SPIFFE ID that may use the admin API without
    /// an admin entry, also of a federated trust domain (repeatable).
    #[arg(long = "admin-id")]
    #[serde(default)]
    admin_ids: Vec<String>,
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
    /// Life of each agent's own SVID; agents renew it at half-life, so an
    /// agent whose SVID expired has been silent that long [default: 1h].
    #[arg(long)]
    agent_svid_ttl: Option<String>,
    /// Default join token life [default: 10m].
    #[arg(long)]
    join_token_ttl: Option<String>,
    /// Remove agents whose SVID expired this long ago (they stopped
    /// renewing); banned agents stay [default: never; `agent purge` does it
    /// by hand].
    #[arg(long)]
    purge_expired_agents_after: Option<String>,
    /// `iss` claim of JWT-SVIDs: the https URL of the OIDC issuer relying
    /// parties know [default with --oidc-listen: the provider's own URL].
    #[arg(long)]
    jwt_issuer: Option<String>,
    /// Upstream CA signing our CA as its intermediate: `disk` (the
    /// --upstream-cert and --upstream-key files), `vault` (an
    /// OpenBao/Vault PKI secrets engine; see the --vault-* flags) or
    /// `signet` (nesting: an upstream Signet server of the same trust
    /// domain, --upstream-server-address) [default: disk with
    /// --upstream-cert, else none: self-signed].
    #[arg(long)]
    upstream: Option<String>,
    /// With --upstream signet: HOST:PORT of the upstream server's
    /// server-agent API.
    #[arg(long)]
    upstream_server_address: Option<String>,
    /// With --upstream signet: the Workload API socket of an agent of the
    /// upstream, where this server gets its X509-SVID (its entry needs
    /// --downstream) [default: SPIFFE_ENDPOINT_SOCKET, else the default
    /// agent socket].
    #[arg(long)]
    upstream_workload_socket: Option<PathBuf>,
    /// Upstream CA certificate (PEM): our CA becomes its intermediate.
    #[arg(long)]
    upstream_cert: Option<PathBuf>,
    /// Upstream CA private key (PKCS#8 PEM).
    #[arg(long)]
    upstream_key: Option<PathBuf>,
    /// Upstream root bundle (PEM), when the upstream certificate is not the root.
    #[arg(long)]
    upstream_bundle: Option<PathBuf>,
    /// Serve /live, /ready and /metrics (Prometheus: API calls, signing,
    /// datastore latency, agent subscriptions, the CA; with `signet run`
    /// also the local agent's SVIDs and ext_authz checks) on this address.
    #[arg(long)]
    health_listen: Option<std::net::SocketAddr>,
    /// Log filter (as --log), config file only: applied once the file is
    /// read, and again when SIGHUP asks the server to reread it.
    #[arg(skip)]
    log_level: Option<String>,
    #[command(flatten)]
    #[serde(default)]
    federation: FederationSettings,
    #[command(flatten)]
    #[serde(default)]
    oidc: OidcSettings,
    #[command(flatten)]
    #[serde(default)]
    vault: VaultSettings,
}

/// Settings checked and defaulted.
#[derive(Debug)]
pub struct Resolved {
    pub run: RunConfig,
    /// The local agent's socket, for `signet run`.
    pub agent_socket: Option<PathBuf>,
    pub health_listen: Option<std::net::SocketAddr>,
    /// The config file, reread for its `log_level` on SIGHUP.
    pub config_file: Option<PathBuf>,
    pub log_level: Option<String>,
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
        // A socket's flag comes before the environment, the file's after.
        let admin_flag = self.admin_socket.take();
        let local_agent = self.local_agent.take();
        let path = self.config.take();
        let mut s = overlay(&self, path.as_deref())?;
        let mut problems = Vec::new();
        let td = TrustDomain::parse(s.trust_domain.as_deref().unwrap_or("example.org"))
            .map_err(|e| problems.push(format!("trust_domain: {e}")))
            .ok();
        let admin_socket = locate(SocketRole::Admin, admin_flag, s.admin_socket.take())
            .map_err(|e| problems.push(e.to_string()))
            .map(|l| l.server_path())
            .unwrap_or_default();
        let agent_socket = match local_agent {
            Some(LocalAgentSocket(flag)) => locate(SocketRole::Agent, flag, s.agent_socket.take())
                .map_err(|e| problems.push(e.to_string()))
                .map(|l| l.server_path())
                .ok(),
            None => {
                if s.agent_socket.is_some() {
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
        let ca_ttl = duration("ca_ttl", &s.ca_ttl, "24h");
        let x509_ttl = duration("x509_svid_ttl", &s.x509_svid_ttl, "1h");
        let jwt_ttl = duration("jwt_svid_ttl", &s.jwt_svid_ttl, "5m");
        let token_ttl = duration("join_token_ttl", &s.join_token_ttl, "10m");
        let agent_ttl = duration("agent_svid_ttl", &s.agent_svid_ttl, "1h");
        let purge_after = s
            .purge_expired_agents_after
            .as_ref()
            .map(|v| duration("purge_expired_agents_after", &Some(v.clone()), "0s"));
        let mut key_type = |name: &str, v: &Option<String>| {
            v.as_deref()
                .unwrap_or("ec-p256")
                .parse::<KeyType>()
                .map_err(|e| problems.push(format!("{name}: {e}")))
                .unwrap_or_default()
        };
        let ca_key_type = key_type("ca_key_type", &s.ca_key_type);
        let jwt_key_type = key_type("jwt_key_type", &s.jwt_key_type);
        for (name, d) in [
            ("ca_ttl", ca_ttl),
            ("x509_svid_ttl", x509_ttl),
            ("jwt_svid_ttl", jwt_ttl),
            ("agent_svid_ttl", agent_ttl),
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
        let kind = s.upstream.take();
        let nested = match (kind.as_deref(), s.upstream_server_address.take()) {
            (Some("signet"), Some(addr)) => {
                locate(SocketRole::Agent, s.upstream_workload_socket.take(), None)
                    .map_err(|e| problems.push(format!("upstream_workload_socket: {e}")))
                    .ok()
                    .map(|socket| crate::nested::UpstreamServer::new(addr, socket))
            }
            (Some("signet"), None) => {
                problems.push(
                    "upstream \"signet\" needs upstream_server_address (the upstream server's HOST:PORT)"
                        .into(),
                );
                None
            }
            (_, addr) => {
                if addr.is_some() || s.upstream_workload_socket.is_some() {
                    problems.push(
                        "upstream_server_address and upstream_workload_socket are for upstream \"signet\""
                            .into(),
                    );
                }
                None
            }
        };
        let vault_wanted = kind.as_deref() == Some("vault");
        let vault = std::mem::take(&mut s.vault).resolve(vault_wanted, &mut problems);
        let upstream = match (
            kind.as_deref(),
            s.upstream_cert.take(),
            s.upstream_key.take(),
        ) {
            (None | Some("disk"), Some(cert), Some(key)) => Some(Upstream::Files {
                cert,
                key,
                bundle: s.upstream_bundle.take(),
            }),
            (None, None, None) => {
                if s.upstream_bundle.is_some() {
                    problems.push("upstream_bundle needs upstream_cert and upstream_key".into());
                }
                None
            }
            (Some("vault"), None, None) => {
                if s.upstream_bundle.is_some() {
                    problems.push(
                        "upstream_bundle is for upstream \"disk\": with \"vault\" the PKI gives its root"
                            .into(),
                    );
                }
                vault.map(Upstream::Vault)
            }
            (Some("signet"), None, None) => {
                nested.map(|n| Upstream::Remote(std::sync::Arc::new(n) as std::sync::Arc<_>))
            }
            (Some("vault" | "signet"), _, _) => {
                problems
                    .push("upstream_cert and upstream_key are for upstream \"disk\" only".into());
                None
            }
            (Some("disk"), None, None) => {
                problems.push("upstream \"disk\" needs upstream_cert and upstream_key".into());
                None
            }
            (None | Some("disk"), _, _) => {
                problems.push("upstream_cert and upstream_key go together".into());
                None
            }
            (Some(other), _, _) => {
                problems.push(format!(
                    "upstream {other:?}: expected \"disk\", \"vault\" or \"signet\""
                ));
                None
            }
        };
        let federation = std::mem::take(&mut s.federation).resolve(&mut problems);
        let oidc = std::mem::take(&mut s.oidc).resolve(&mut problems);
        let issuer = match (&s.jwt_issuer, &oidc) {
            (Some(issuer), oidc) => {
                signet_server::oidc::check_issuer(issuer, oidc.as_ref().map(|o| &o.transport))
            }
            (None, Some(oidc)) => signet_server::oidc::default_issuer(oidc.listen, &oidc.transport),
            (None, None) => Ok(String::new()),
        };
        if let Err(e) = issuer {
            problems.push(e);
        }
        let bind = s.bind_address.as_deref().unwrap_or("127.0.0.1:8081");
        let bind_address = bind
            .parse::<std::net::SocketAddr>()
            .map_err(|e| problems.push(format!("bind_address {bind:?}: {e} (expected IP:PORT)")))
            .ok();
        let admin_listen = match s
            .admin_listen
            .as_deref()
            .map(str::parse::<std::net::SocketAddr>)
        {
            Some(Ok(addr)) => Some(addr),
            Some(Err(e)) => {
                problems.push(format!(
                    "admin_listen {:?}: {e} (expected IP:PORT)",
                    s.admin_listen.as_deref().unwrap_or_default()
                ));
                None
            }
            None => None,
        };
        let mut admin_ids = Vec::new();
        for id in &s.admin_ids {
            match signet_identity::SpiffeId::parse(id) {
                Ok(id) => admin_ids.push(id),
                Err(e) => problems.push(format!("admin_ids {id:?}: {e}")),
            }
        }
        let (Some(td), Some(bind_address), true) = (td, bind_address, problems.is_empty()) else {
            anyhow::bail!("invalid configuration:\n  - {}", problems.join("\n  - "));
        };
        let data_dir = s.data_dir.unwrap_or_else(|| PathBuf::from(".signet"));
        let datastore = s.datastore.unwrap_or_else(|| {
            format!("sqlite://{}", data_dir.join("datastore.sqlite3").display())
        });
        let mut config = ServerConfig::new(td);
        config.ca.key_type = ca_key_type;
        config.ca.jwt_key_type = jwt_key_type;
        config.ca.ca_ttl = ca_ttl;
        config.ca.x509_svid_ttl = x509_ttl;
        config.ca.jwt_svid_ttl = jwt_ttl;
        config.ca.jwt_issuer = s.jwt_issuer;
        config.join_token_ttl = token_ttl;
        config.agent_svid_ttl = agent_ttl;
        config.purge_expired_agents_after = purge_after;
        if let Some(id) = s.server_id {
            config.server_id = id;
        }
        Ok(Resolved {
            run: RunConfig {
                server: config,
                bind_address,
                x509pop_ca_bundle: s.x509pop_ca_bundle,
                data_dir,
                datastore,
                admin_socket,
                admin_listen,
                admin_ids,
                upstream,
                federation,
                oidc,
            },
            agent_socket,
            health_listen: s.health_listen,
            config_file: path,
            log_level: s.log_level,
        })
    }

    pub fn check_config(&self) -> bool {
        self.check_config
    }
}

/// Runs a server (and, for `signet run`, the local agent with its Workload
/// API and SDS on `agent_socket`) until SIGINT or SIGTERM, then drains.
pub async fn serve(r: Resolved, local_agent: Option<LocalAgent>) -> anyhow::Result<()> {
    let shutdown = crate::signals::shutdown()?;
    crate::logging::follow_config_level(r.config_file.clone(), r.log_level.as_deref())?;
    let health = r
        .health_listen
        .map(crate::health::HealthEndpoint::bind)
        .transpose()?;
    match (local_agent, r.agent_socket) {
        (Some(mut local), Some(socket)) => {
            local.health = health;
            serve_combined(r.run, local, socket, shutdown).await?
        }
        _ => {
            let (data_dir, datastore) = (r.run.data_dir.clone(), r.run.datastore.clone());
            let banner = move |s: &Running| {
                let mut lines = Vec::new();
                if let Some(health) = health {
                    lines.push(format!("  health         {}", health.describe()));
                    health.serve(vec![crate::health::server_probe(s.server.clone())]);
                }
                print_banner(s, &data_dir, &datastore, None, &lines)
            };
            signet_server::run(r.run, banner, shutdown).await?;
        }
    }
    println!("signet stopped");
    Ok(())
}

/// `signet run`: the server, and an agent in the same process that it
/// issues an identity to and that reaches it over loopback mTLS like any
/// other agent.
async fn serve_combined(
    config: RunConfig,
    mut local: LocalAgent,
    socket: PathBuf,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let (data_dir, datastore) = (config.data_dir.clone(), config.datastore.clone());
    let (stop, stop_rx) = watch::channel(false);
    let health = local.health.take();
    let banner = move |c: &Combined| {
        let lines = crate::agent_cmd::agent_lines(
            c.authz.as_ref(),
            health,
            &c.agent.handle,
            Some(c.server.server.clone()),
        );
        print_banner(
            &c.server,
            &data_dir,
            &datastore,
            Some(&c.agent.socket),
            &lines,
        );
    };
    run_until(
        start_combined(config, local, socket, stop_rx),
        stop,
        banner,
        shutdown,
    )
    .await
}

/// The server and its local agent, run and stopped together.
struct Combined {
    server: Running,
    agent: signet_agent::Running,
    /// Holds the ext_authz policy watch for as long as it runs.
    authz: Option<crate::authz_settings::AgentAuthz>,
}

async fn start_combined(
    mut config: RunConfig,
    mut local: LocalAgent,
    socket: PathBuf,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<Combined> {
    let agent_id = config
        .server
        .trust_domain()
        .id_with_path(LOCAL_AGENT_PATH)?;
    config.server.default_parent_id = Some(agent_id.clone());
    if let Some(authz) = local.authz.as_mut() {
        authz.serve_own_listener().await?;
    }
    let server = signet_server::start(config, stop.clone()).await?;
    let issued = server
        .server
        .attest_local_agent(&agent_id)
        .await
        .context("the local agent's identity")?;
    let agent_config = AgentConfig::local(
        loopback(server.node_addr),
        issued.1.clone(),
        local.svid_cache_size,
    );
    let services = crate::authz_settings::agent_services(
        local.sds,
        local.authz.as_ref().map(|a| a.service.clone()),
    );
    let agent = signet_agent::start(agent_config, Some(issued), socket, services, stop).await?;
    Ok(Combined {
        server,
        agent,
        authz: local.authz,
    })
}

impl Service for Combined {
    type Error = anyhow::Error;

    async fn failed(&mut self) -> anyhow::Error {
        tokio::select! {
            e = self.server.failed() => e.into(),
            e = self.agent.failed() => e.into(),
        }
    }

    async fn drain(self) {
        tokio::join!(self.server.drain(), self.agent.drain());
    }
}

/// The agent inside `signet run`.
#[derive(Debug)]
pub struct LocalAgent {
    pub svid_cache_size: usize,
    pub sds: signet_sds::SdsOptions,
    /// Envoy ext_authz beside SDS, when a policy is given.
    pub authz: Option<crate::authz_settings::AgentAuthz>,
    /// `--health-listen`, bound (by [`serve`]).
    pub health: Option<crate::health::HealthEndpoint>,
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

#[cfg(test)]
mod tests;
