//! `signet agent`: configuration (file + flags), attestation, the Workload
//! API socket, signal handling and drain.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use serde::{Deserialize, Serialize};
use signet_agent::{self as agent, AgentConfig, NodeAttestation};
use signet_identity::{Bundle, TrustDomain};
use signet_sds::SdsOptions;

use crate::authz_settings::{AgentAuthz, AuthzSettings, agent_services};
use signet_workload::settings::overlay;

use signet_workload::SocketRole;

/// Agent settings: every config-file key is also a flag of the same name.
#[derive(Debug, Default, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSettings {
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
    /// Server address HOST:PORT: an IP, or a DNS name standing for every
    /// address it resolves to, resolved again at each reconnect
    /// (repeatable: tried in order, failing over).
    #[arg(long = "server-address")]
    #[serde(default)]
    server_address: Vec<String>,
    /// Failed over to another server, check the first one again this often
    /// (plus up to half of it, at random) and move back once it answers;
    /// `0s`: stay [default: 5m].
    #[arg(long)]
    rebalance_after: Option<String>,
    /// Trust bundle (PEM) to verify the server with before the first attestation.
    #[arg(long)]
    trust_bundle: Option<PathBuf>,
    /// DEVELOPMENT ONLY: attest without verifying the server (no trust
    /// bundle); the bundle the server returns is trusted afterwards.
    #[arg(long)]
    #[serde(default)]
    insecure_bootstrap: bool,
    /// Attest with this join token (single use).
    #[arg(long, env = "SIGNET_JOIN_TOKEN")]
    join_token: Option<String>,
    /// Attest with the join token in this file (read at start; for tokens
    /// handed over by an init step or a secret mount).
    #[arg(long, conflicts_with = "join_token")]
    join_token_file: Option<PathBuf>,
    /// Attest with x509pop: the node certificate (PEM chain) ...
    #[arg(long)]
    x509pop_cert: Option<PathBuf>,
    /// ... and its private key (PKCS#8 PEM).
    #[arg(long)]
    x509pop_key: Option<PathBuf>,
    /// Where the agent keeps its SVID and bundle [default: .signet-agent].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Envoy SDS: send trust bundles as plain trusted_ca PEM instead of
    /// the SPIFFE certificate validator (for Envoys without it).
    #[arg(long)]
    #[serde(default)]
    sds_trusted_ca: bool,
    /// Most workload SVIDs kept in memory; streamed entries are always kept [default: 1000].
    #[arg(long)]
    svid_cache_size: Option<usize>,
    /// The Workload API's socket (see --help).
    #[arg(long, alias = "socket-path", value_parser = crate::sockets::socket_arg, long_help = crate::sockets::AGENT_SOCKET_HELP)]
    #[serde(alias = "socket_path")]
    agent_socket: Option<PathBuf>,
    /// Serve /live, /ready and /metrics (Prometheus: the agent's health,
    /// entries and SVIDs; ext_authz checks) on this address.
    #[arg(long)]
    health_listen: Option<SocketAddr>,
    /// Log filter (as --log), config file only: applied once the file is
    /// read, and again when SIGHUP asks the agent to reread it.
    #[arg(skip)]
    log_level: Option<String>,
    #[command(flatten)]
    #[serde(default)]
    authz: AuthzSettings,
}

impl AgentSettings {
    pub fn check_config(&self) -> bool {
        self.check_config
    }

    /// Reads the file, lets flags override it, applies defaults and reports
    /// every problem at once.
    pub fn resolve(mut self) -> anyhow::Result<ResolvedAgent> {
        // The socket's flag comes before the environment, the file's after.
        let socket_flag = self.agent_socket.take();
        let check_config = self.check_config;
        let path = self.config.take();
        let mut s = overlay(&self, path.as_deref())?;
        let mut problems = Vec::new();
        let td = TrustDomain::parse(s.trust_domain.as_deref().unwrap_or("example.org"))
            .map_err(|e| problems.push(format!("trust_domain: {e}")))
            .ok();
        let socket = crate::sockets::locate(SocketRole::Agent, socket_flag, s.agent_socket.take())
            .map_err(|e| problems.push(e.to_string()))
            .map(|l| l.server_path())
            .unwrap_or_default();
        let mut servers = Vec::new();
        if s.server_address.is_empty() {
            problems.push("server_address: at least one is required (HOST:PORT)".into());
        }
        for a in &s.server_address {
            match a.parse::<agent::server_address::ServerAddress>() {
                Ok(addr) => servers.push(addr),
                Err(e) => problems.push(format!("server_address {a:?}: {e}")),
            }
        }
        let rebalance_after = match s.rebalance_after.as_deref() {
            None => Some(agent::DEFAULT_REBALANCE_AFTER),
            Some(v) => match humantime::parse_duration(v) {
                Ok(d) if d.is_zero() => None,
                Ok(d) => Some(d),
                Err(e) => {
                    problems.push(format!("rebalance_after {v:?}: {e} (e.g. 5m, 30s, 0s)"));
                    None
                }
            },
        };
        if let Some(path) = s.join_token_file.take() {
            if s.join_token.is_some() {
                problems.push("join_token and join_token_file: give one of them".into());
            } else if check_config {
                // The file may be written by an init step after this check.
                s.join_token = Some(format!("(from {})", path.display()));
            } else {
                match std::fs::read_to_string(&path) {
                    Ok(t) if !t.trim().is_empty() => s.join_token = Some(t.trim().to_string()),
                    Ok(_) => problems.push(format!("join_token_file {}: empty", path.display())),
                    Err(e) => problems.push(format!("join_token_file {}: {e}", path.display())),
                }
            }
        }
        let attestation = match (
            s.join_token.take(),
            s.x509pop_cert.take(),
            s.x509pop_key.take(),
        ) {
            (Some(t), None, None) => Some(NodeAttestation::JoinToken(t)),
            (None, Some(cert), Some(key)) => Some(NodeAttestation::X509Pop { cert, key }),
            (None, None, None) => {
                problems.push(
                    "node attestation: give join_token, or x509pop_cert and x509pop_key".into(),
                );
                None
            }
            _ => {
                problems.push(
                    "node attestation: use either join_token or x509pop_cert + x509pop_key".into(),
                );
                None
            }
        };
        let bundle = match (&s.trust_bundle, &td) {
            (Some(path), Some(td)) => match std::fs::read(path) {
                Ok(pem) => Bundle::from_x509_pem(td.clone(), &pem)
                    .map_err(|e| problems.push(format!("trust_bundle {}: {e}", path.display())))
                    .ok(),
                Err(e) => {
                    problems.push(format!("trust_bundle {}: {e}", path.display()));
                    None
                }
            },
            (None, _) if s.insecure_bootstrap => None,
            (None, _) => {
                problems.push(
                    "trust_bundle: a PEM bundle to verify the server with is required \
                     (or insecure_bootstrap, for development only)"
                        .into(),
                );
                None
            }
            _ => None,
        };
        let (Some(attestation), true) = (attestation, problems.is_empty()) else {
            anyhow::bail!("invalid configuration:\n  - {}", problems.join("\n  - "));
        };
        let config = AgentConfig {
            servers,
            bootstrap_bundle: bundle,
            attestation,
            data_dir: Some(s.data_dir.unwrap_or_else(|| PathBuf::from(".signet-agent"))),
            svid_cache_size: s.svid_cache_size.unwrap_or(agent::DEFAULT_SVID_CACHE_SIZE),
            rebalance_after,
        };
        Ok(ResolvedAgent {
            config,
            socket,
            sds: SdsOptions {
                spiffe_validator: !s.sds_trusted_ca,
            },
            authz: s.authz.load()?,
            health: s.health_listen,
            config_file: path,
            log_level: s.log_level,
        })
    }
}

/// Agent settings checked and defaulted.
#[derive(Debug)]
pub struct ResolvedAgent {
    pub config: AgentConfig,
    pub socket: PathBuf,
    pub sds: SdsOptions,
    /// Envoy ext_authz beside SDS, when a policy is given.
    pub authz: Option<AgentAuthz>,
    /// `--health-listen`.
    pub health: Option<SocketAddr>,
    /// The config file, reread for its `log_level` on SIGHUP.
    pub config_file: Option<PathBuf>,
    pub log_level: Option<String>,
}

/// The banner's lines about what the agent serves beside the Workload API
/// (ext_authz, the health endpoint, which starts serving here).
pub fn agent_lines(
    authz: Option<&AgentAuthz>,
    health: Option<crate::health::HealthEndpoint>,
    agent: &agent::AgentHandle,
    server: Option<Arc<signet_server::Server>>,
) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(authz) = authz {
        lines.push(format!(
            "  ext_authz      on the agent socket: {}",
            authz.describe()
        ));
    }
    if let Some(health) = health {
        lines.push(format!("  health         {}", health.describe()));
        let mut probes: Vec<_> = server
            .map(crate::health::server_probe)
            .into_iter()
            .collect();
        probes.push(crate::health::agent_probe(
            agent,
            authz.map(|a| a.service.policy()),
        ));
        health.serve(probes);
    }
    lines
}

/// Runs the agent until SIGINT or SIGTERM.
pub async fn serve(mut r: ResolvedAgent) -> anyhow::Result<()> {
    crate::logging::follow_config_level(r.config_file.clone(), r.log_level.as_deref())?;
    if let Some(authz) = r.authz.as_mut() {
        authz.serve_own_listener().await?;
    }
    let services = agent_services(r.sds, r.authz.as_ref().map(|a| a.service.clone()));
    let health = r
        .health
        .map(crate::health::HealthEndpoint::bind)
        .transpose()?;
    let authz = r.authz.as_ref();
    let banner = move |running: &agent::Running| {
        let socket = running.socket.display();
        println!("signet agent is running");
        println!("  agent socket   {socket} (SPIFFE_ENDPOINT_SOCKET=unix://{socket})");
        for line in agent_lines(authz, health, &running.handle, None) {
            println!("{line}");
        }
        println!("Press Ctrl-C to stop.");
    };
    let shutdown = crate::signals::shutdown()?;
    agent::run(r.config, r.socket, services, banner, shutdown).await?;
    println!("signet agent stopped");
    Ok(())
}
