//! `signet authz`: Envoy external authorization on a listener of its own,
//! for Envoys without a Signet agent beside them (the OPA-Envoy plugin's
//! role). With an agent, `--authz-policy` serves the same on its socket.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;

use crate::authz_listen::Listen;
use crate::authz_settings::AuthzSettings;

#[derive(Debug, Args)]
pub struct AuthzArgs {
    /// The policy: OPA Wasm (`opa build -t wasm`), a bundle, or Rego;
    /// reloaded when it changes.
    #[arg(long)]
    policy: PathBuf,
    /// The rule that decides (`package/rule`) [default: envoy/authz/allow].
    #[arg(long)]
    entrypoint: Option<String>,
    /// Allow what the policy denies, logging it.
    #[arg(long)]
    dry_run: bool,
    /// Log every decision as a JSON line to this file (`-`: standard
    /// output); authorization and cookie headers masked.
    #[arg(long)]
    decision_log: Option<PathBuf>,
    /// Also mask this JSON pointer in logged decisions (repeatable).
    #[arg(long)]
    log_mask: Vec<String>,
    /// Remember up to this many decisions by the part of the request the
    /// policy reads, where the policy allows it (Rego reading dotted input
    /// paths, calling no clock, random or network builtin); 0: off.
    #[arg(long, default_value_t = crate::authz_settings::DEFAULT_DECISION_CACHE)]
    decision_cache: usize,
    /// Where Envoy reaches it: IP:PORT (plain gRPC; loopback or a trusted
    /// network) or unix:/PATH (a socket made 0666 in a directory checked
    /// as the agent's is).
    #[arg(long)]
    listen: String,
    /// Serve /live, /ready and /metrics (Prometheus: checks by result,
    /// evaluation time, the policy revision) on this address.
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
}

pub async fn run(args: AuthzArgs) -> anyhow::Result<()> {
    let listen = Listen::parse("--listen", &args.listen)?;
    let authz = AuthzSettings::new(args.policy, args.entrypoint, args.dry_run)
        .with_decision_log(args.decision_log, args.log_mask)
        .with_decision_cache(args.decision_cache)
        .load()?
        .context("a policy is required")?;
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let metrics = recorder.handle();
    metrics::set_global_recorder(recorder).context("cannot install the metrics recorder")?;
    let shutdown = crate::signals::shutdown()?;
    println!("signet authz is running");
    println!("  policy         {}", authz.describe());
    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    if let Some(addr) = args.admin_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("admin endpoint: cannot listen on {addr}"))?;
        println!(
            "  admin          {} (/live /ready /metrics)",
            listener.local_addr()?
        );
        let policy = authz.service.policy();
        let ready: signet_proxy::admin::Readiness =
            Arc::new(move || Ok(format!("policy revision {}", policy.revision())));
        let revision = crate::authz_settings::revision_gauge(authz.service.policy());
        let render: signet_proxy::admin::Render = Arc::new(move || {
            revision();
            metrics.render()
        });
        tokio::spawn(signet_proxy::admin::serve(listener, ready, render, async {
            let _ = admin_stopped.await;
        }));
    }
    let bound = listen.bind().await?;
    println!(
        "  listen         {} (gRPC envoy.service.auth.v3.Authorization)",
        bound.describe()
    );
    println!("Press Ctrl-C to stop.");
    bound.serve(authz.service.clone(), shutdown).await?;
    let _ = stop_admin.send(());
    println!("signet authz stopped");
    Ok(())
}
