//! `signet agent`: configuration (file + flags), attestation, the Workload
//! API socket, signal handling and drain.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde::Deserialize;
use signet_agent::attest::UnixAttestor;
use signet_agent::workload_api::{WorkloadApi, bind_agent_socket};
use signet_agent::{self as agent, AgentConfig, NodeAttestation};
use signet_identity::{Bundle, TrustDomain};
use signet_sds::{SdsOptions, SdsService};
use tokio::sync::watch;

use signet_workload::SocketRole;

/// Agent settings: every config-file key is also a flag of the same name.
#[derive(Debug, Default, Args, Deserialize)]
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
    /// Server address IP:PORT (repeatable: tried in order, failing over).
    #[arg(long = "server-address")]
    #[serde(default)]
    server_address: Vec<String>,
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
}

impl AgentSettings {
    pub fn check_config(&self) -> bool {
        self.check_config
    }

    /// Reads the file, lets flags override it, applies defaults and reports
    /// every problem at once.
    pub fn resolve(mut self) -> anyhow::Result<ResolvedAgent> {
        let mut socket_in_file = None;
        if let Some(path) = self.config.clone() {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read config file {}", path.display()))?;
            let file: AgentSettings = toml::from_str(&text)
                .with_context(|| format!("config file {} is invalid", path.display()))?;
            self.trust_domain = self.trust_domain.or(file.trust_domain);
            if self.server_address.is_empty() {
                self.server_address = file.server_address;
            }
            self.trust_bundle = self.trust_bundle.or(file.trust_bundle);
            self.insecure_bootstrap |= file.insecure_bootstrap;
            self.join_token = self.join_token.or(file.join_token);
            self.join_token_file = self.join_token_file.or(file.join_token_file);
            self.x509pop_cert = self.x509pop_cert.or(file.x509pop_cert);
            self.x509pop_key = self.x509pop_key.or(file.x509pop_key);
            self.data_dir = self.data_dir.or(file.data_dir);
            socket_in_file = file.agent_socket;
            self.svid_cache_size = self.svid_cache_size.or(file.svid_cache_size);
            self.sds_trusted_ca |= file.sds_trusted_ca;
        }
        let mut problems = Vec::new();
        let td = TrustDomain::parse(self.trust_domain.as_deref().unwrap_or("example.org"))
            .map_err(|e| problems.push(format!("trust_domain: {e}")))
            .ok();
        let socket =
            crate::sockets::locate(SocketRole::Agent, self.agent_socket.take(), socket_in_file)
                .map_err(|e| problems.push(e.to_string()))
                .map(|l| l.server_path())
                .unwrap_or_default();
        let mut servers = Vec::new();
        if self.server_address.is_empty() {
            problems.push("server_address: at least one is required (IP:PORT)".into());
        }
        for a in &self.server_address {
            match a.parse::<SocketAddr>() {
                Ok(addr) => servers.push(addr),
                Err(e) => problems.push(format!("server_address {a:?}: {e} (expected IP:PORT)")),
            }
        }
        if let Some(path) = self.join_token_file.take() {
            if self.join_token.is_some() {
                problems.push("join_token and join_token_file: give one of them".into());
            } else if self.check_config {
                // The file may be written by an init step after this check.
                self.join_token = Some(format!("(from {})", path.display()));
            } else {
                match std::fs::read_to_string(&path) {
                    Ok(t) if !t.trim().is_empty() => self.join_token = Some(t.trim().to_string()),
                    Ok(_) => problems.push(format!("join_token_file {}: empty", path.display())),
                    Err(e) => problems.push(format!("join_token_file {}: {e}", path.display())),
                }
            }
        }
        let attestation = match (
            self.join_token.take(),
            self.x509pop_cert.take(),
            self.x509pop_key.take(),
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
        let bundle = match (&self.trust_bundle, &td) {
            (Some(path), Some(td)) => match std::fs::read(path) {
                Ok(pem) => Bundle::from_x509_pem(td.clone(), &pem)
                    .map_err(|e| problems.push(format!("trust_bundle {}: {e}", path.display())))
                    .ok(),
                Err(e) => {
                    problems.push(format!("trust_bundle {}: {e}", path.display()));
                    None
                }
            },
            (None, _) if self.insecure_bootstrap => None,
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
            data_dir: Some(
                self.data_dir
                    .unwrap_or_else(|| PathBuf::from(".signet-agent")),
            ),
            svid_cache_size: self
                .svid_cache_size
                .unwrap_or(agent::DEFAULT_SVID_CACHE_SIZE),
        };
        Ok(ResolvedAgent {
            config,
            socket,
            sds: SdsOptions {
                spiffe_validator: !self.sds_trusted_ca,
            },
        })
    }
}

/// Agent settings checked and defaulted.
#[derive(Debug)]
pub struct ResolvedAgent {
    pub config: AgentConfig,
    pub socket: PathBuf,
    pub sds: SdsOptions,
}

/// Runs the agent until SIGINT or SIGTERM.
pub async fn serve(r: ResolvedAgent) -> anyhow::Result<()> {
    let ResolvedAgent {
        config,
        socket,
        sds,
    } = r;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (handle, agent_task) = agent::start(config, None, stop_rx.clone())
        .await
        .context("agent start")?;
    let listener = bind_agent_socket(&socket)
        .with_context(|| format!("cannot bind the agent socket {}", socket.display()))?;
    let identity = signet_unix::socket_identity(&socket);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let api = tokio::spawn(serve_agent_socket(
        handle,
        listener,
        sds,
        stopped(stop_rx.clone()),
    ));
    tokio::spawn(signet_unix::watch_socket(
        socket.clone(),
        identity,
        stopped(stop_rx.clone()),
    ));
    println!("signet agent is running");
    println!(
        "  agent socket   {} (SPIFFE_ENDPOINT_SOCKET=unix://{})",
        socket.display(),
        socket.display()
    );
    println!("Press Ctrl-C to stop.");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        let _ = api.await;
        let _ = agent_task.await;
    })
    .await;
    signet_unix::remove_if_ours(&socket, identity);
    println!("signet agent stopped");
    Ok(())
}

/// Serves the Workload API and Envoy SDS together on the agent socket.
pub async fn serve_agent_socket(
    handle: agent::AgentHandle,
    listener: tokio::net::UnixListener,
    sds: SdsOptions,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let attestor = std::sync::Arc::new(UnixAttestor::default());
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(WorkloadApi::new(handle.clone(), attestor.clone()).into_service())
        .add_service(SdsService::new(handle, attestor, sds).into_service())
        .serve_with_incoming_shutdown(signet_unix::incoming(listener), stop)
        .await
}
