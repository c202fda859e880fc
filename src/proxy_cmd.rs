//! `signet proxy`: the mTLS sidecar. Several listeners from `--config`, or
//! one from the `inbound` / `outbound` flags.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};
use signet_proxy::config::{ListenerFile, ProxyFile};
use signet_proxy::{Identity, Proxy, ProxyConfig};
use signet_workload::settings::overlay;
use signet_workload::{SocketLocation, SocketRole};
use signet_workload::{X509State, watch_x509};

/// How often each listener's policy file or directory is checked for changes.
const POLICY_WATCH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ProxyArgs {
    #[command(subcommand)]
    mode: Option<ProxyMode>,
    /// TOML file with one [[listener]] table per listener.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Check the configuration (and load its policies), then exit.
    #[arg(long, global = true)]
    check_config: bool,
    #[command(flatten)]
    common: CommonFlags,
}

#[derive(Debug, Args, Default)]
struct CommonFlags {
    #[arg(long, alias = "socket", global = true, value_parser = crate::sockets::socket_arg, help = crate::sockets::AGENT_SOCKET_HELP)]
    agent_socket: Option<PathBuf>,
    /// Serve /live, /ready and /metrics (Prometheus) on this address.
    #[arg(long, global = true)]
    admin_listen: Option<String>,
    /// How long open connections may finish after SIGTERM [default: 30s].
    #[arg(long, global = true)]
    drain_timeout: Option<String>,
    /// Present this SPIFFE ID's SVID when the workload has several.
    #[arg(long, global = true)]
    svid_id: Option<String>,
    /// Connection worker threads; each accepts on its own socket of every
    /// listener and keeps its connections on its thread [default: one per core].
    #[arg(long, global = true)]
    workers: Option<usize>,
}

#[derive(Debug, Subcommand)]
enum ProxyMode {
    /// mTLS in, plaintext to the app: verify the peer's SVID, authorize, forward.
    Inbound(InboundFlags),
    /// Plaintext from the app, mTLS out to a server that must present --server-id.
    Outbound(OutboundFlags),
}

#[derive(Debug, Args)]
struct ListenerFlags {
    /// Address to listen on: IP:PORT (e.g. 0.0.0.0:8443) or unix:/PATH (a
    /// socket in a directory only this user or root can write to).
    #[arg(long)]
    listen: String,
    /// A unix: listen socket's mode, octal [default: 0660].
    #[arg(long)]
    listen_mode: Option<String>,
    /// A unix: listen socket's owner: USER, USER:GROUP or :GROUP (names or
    /// numeric IDs).
    #[arg(long)]
    listen_owner: Option<String>,
    /// Accept TLS 1.2 as well as TLS 1.3.
    #[arg(long)]
    tls12: bool,
    /// Timeout for connecting to the app or server [default: 5s].
    #[arg(long)]
    connect_timeout: Option<String>,
    /// Timeout for the TLS handshake [default: 10s].
    #[arg(long)]
    handshake_timeout: Option<String>,
    /// Close connections idle this long [default: 1h].
    #[arg(long)]
    idle_timeout: Option<String>,
    /// Most open connections; more are refused [default: 10000].
    #[arg(long)]
    max_connections: Option<usize>,
}

#[derive(Debug, Args)]
struct InboundFlags {
    #[command(flatten)]
    listener: ListenerFlags,
    /// The app's plaintext address: IP:PORT (e.g. 127.0.0.1:8080) or
    /// unix:/PATH.
    #[arg(long)]
    to: String,
    /// Accept this peer SPIFFE ID (repeatable). `*` stands for one whole
    /// path segment, a trailing `/**` for one or more:
    /// spiffe://example.org/ns/*/sa/web, spiffe://example.org/ns/prod/**.
    #[arg(long = "allow-id")]
    allow_ids: Vec<String>,
    /// Accept any peer of this trust domain (repeatable).
    #[arg(long = "allow-trust-domain")]
    allow_trust_domains: Vec<String>,
    /// Authorize with this policy: .wasm, OPA bundle .tar.gz, .rego or a directory.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Policy entrypoint [default: signet/authz/allow].
    #[arg(long)]
    entrypoint: Option<String>,
    /// Policy data document (JSON).
    #[arg(long)]
    policy_data: Option<PathBuf>,
    /// HTTP mode: authorize each request (HTTP/1.1 and HTTP/2) and pass the
    /// peer identity to the app in x-forwarded-client-cert.
    #[arg(long)]
    http: bool,
    /// HTTP mode: pass %2F and %5C in request paths to the app instead of
    /// answering 400 (insecure: the policy and the app may read such a
    /// path differently).
    #[arg(long, requires = "http")]
    insecure_keep_escaped_slashes: bool,
    /// HTTP mode: what to speak to the app: http1, http2 (cleartext, prior
    /// knowledge; gRPC apps) or auto (the caller's protocol) [default: http1].
    #[arg(long, requires = "http", value_parser = ["http1", "http2", "auto"])]
    app_protocol: Option<String>,
    /// TCP mode: start each connection to the app with a PROXY protocol
    /// header (v1 or v2) naming the caller's address.
    #[arg(long, conflicts_with = "http", value_parser = ["v1", "v2"])]
    proxy_protocol_to_app: Option<String>,
    /// Connections arrive through a load balancer that sends a PROXY
    /// protocol header (v1 or v2) first; its source address is the caller's
    /// (in logs and the policy's input). Connections without one are refused.
    #[arg(long)]
    accept_proxy_protocol: bool,
}

#[derive(Debug, Args)]
struct OutboundFlags {
    #[command(flatten)]
    listener: ListenerFlags,
    /// The server: host:port or unix:/PATH.
    #[arg(long)]
    to: String,
    /// A SPIFFE ID the server may present (repeatable; `*` and a trailing
    /// `/**` as in --allow-id).
    #[arg(long = "server-id", required_unless_present = "server_trust_domains")]
    server_ids: Vec<String>,
    /// Or accept any server of this trust domain (repeatable).
    #[arg(long = "server-trust-domain")]
    server_trust_domains: Vec<String>,
    /// Server name to send as SNI [default: the host of --to].
    #[arg(long)]
    sni: Option<String>,
}

fn listener_file(mode: &str, f: ListenerFlags) -> ListenerFile {
    ListenerFile {
        name: Some(mode.to_string()),
        mode: Some(mode.to_string()),
        listen: Some(f.listen),
        listen_mode: f.listen_mode,
        listen_owner: f.listen_owner,
        tls12: f.tls12,
        connect_timeout: f.connect_timeout,
        handshake_timeout: f.handshake_timeout,
        idle_timeout: f.idle_timeout,
        max_connections: f.max_connections,
        ..ListenerFile::default()
    }
}

impl ProxyArgs {
    fn resolve(self) -> anyhow::Result<(ProxyConfig, SocketLocation, bool)> {
        // The socket's flag comes before the environment, the file's after;
        // a listener given as flags is added to the file's.
        let c = self.common;
        let socket_flag = c.agent_socket;
        let flags = ProxyFile {
            admin_listen: c.admin_listen,
            drain_timeout: c.drain_timeout,
            svid_id: c.svid_id,
            workers: c.workers,
            ..ProxyFile::default()
        };
        let mut file = overlay(&flags, self.config.as_deref())?;
        match self.mode {
            Some(ProxyMode::Inbound(i)) => file.listeners.push(ListenerFile {
                to: Some(i.to),
                allow_ids: i.allow_ids,
                allow_trust_domains: i.allow_trust_domains,
                policy: i.policy,
                entrypoint: i.entrypoint,
                policy_data: i.policy_data,
                http: i.http,
                insecure_keep_escaped_slashes: i.insecure_keep_escaped_slashes,
                app_protocol: i.app_protocol,
                proxy_protocol_to_app: i.proxy_protocol_to_app,
                accept_proxy_protocol: i.accept_proxy_protocol,
                ..listener_file("inbound", i.listener)
            }),
            Some(ProxyMode::Outbound(o)) => file.listeners.push(ListenerFile {
                to: Some(o.to),
                server_id: o.server_ids,
                server_trust_domain: o.server_trust_domains,
                sni: o.sni,
                ..listener_file("outbound", o.listener)
            }),
            None if self.config.is_none() => anyhow::bail!(
                "say what to proxy: `signet proxy inbound ...`, `signet proxy outbound ...` or `signet proxy --config FILE`"
            ),
            None => {}
        }
        let config = ProxyConfig::try_from(file)?;
        let socket =
            crate::sockets::locate(SocketRole::Agent, socket_flag, config.agent_socket.clone())?;
        Ok((config, socket, self.check_config))
    }
}

pub async fn run(args: ProxyArgs) -> anyhow::Result<()> {
    let (config, socket, check) = args.resolve()?;
    if check {
        for l in &config.listeners {
            if let signet_proxy::config::Mode::Inbound(i) = &l.mode
                && let Some(p) = &i.policy
            {
                let info = signet_policy::check(
                    &p.path,
                    &signet_policy::PolicyOptions::default().with_entrypoint(p.entrypoint.clone()),
                )
                .with_context(|| format!("listener {}: policy {}", l.name, p.path.display()))?;
                println!(
                    "listener {}: policy {} loads (revision {})",
                    l.name,
                    p.path.display(),
                    info.revision
                );
            }
        }
        println!(
            "configuration is valid ({} listener(s); Workload API at {})",
            config.listeners.len(),
            socket.client_path().display()
        );
        return Ok(());
    }
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = metrics.handle();
    metrics::set_global_recorder(metrics).context("cannot install the metrics recorder")?;

    let watcher = watch_x509(socket.clone());
    let identity = Identity::new();
    let follow = identity.follow(watcher.clone(), config.svid_id.clone());
    let proxy = Proxy::start(&config, identity.clone()).await?;
    // Where each listener bound, on stdout too: with port 0 in the
    // configuration, this is how a user (or a test) learns the port.
    for (name, addr) in proxy.local_addrs() {
        println!("listener {name}: {addr}");
        tracing::info!(listener = %name, %addr, "listening (accepting once an SVID is available)");
    }
    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    if let Some(addr) = config.admin_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("admin endpoint: cannot listen on {addr}"))?;
        let addr = listener.local_addr().unwrap_or(addr);
        println!("admin endpoint: {addr}");
        let ready_identity = identity.clone();
        let ready_watcher = watcher.clone();
        let ready: signet_proxy::admin::Readiness =
            Arc::new(move || match ready_identity.current() {
                Some(c) => Ok(format!("presenting {} (serial {})", c.id, c.serial)),
                None => Err(match ready_watcher.state() {
                    X509State::Waiting(why) => format!("no SVID yet: {why}"),
                    X509State::Ready(_) => "the configured svid_id is not offered".into(),
                }),
            });
        let render: signet_proxy::admin::Render = Arc::new(move || handle.render());
        tokio::spawn(signet_proxy::admin::serve(listener, ready, render, async {
            let _ = admin_stopped.await;
        }));
        tracing::info!(%addr, "admin endpoint: /live /ready /metrics");
    }

    // Policies reload on their own when their files change (SIGHUP forces it).
    let _watches: Vec<_> = proxy
        .policies()
        .iter()
        .map(|p| p.watch(POLICY_WATCH_INTERVAL))
        .collect();

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot listen for SIGHUP")?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = hup.recv() => {
                for p in proxy.policies() {
                    // A broken revision is logged and the previous one stays.
                    let _ = p.reload();
                }
            }
        }
    }
    tracing::info!(open = proxy.open_connections(), timeout = ?config.drain_timeout, "draining");
    let cut = proxy.drain(config.drain_timeout).await;
    follow.abort();
    let _ = stop_admin.send(());
    tracing::info!(cut, "stopped");
    Ok(())
}
