//! Workload-side commands over the Workload API (`signet api ...`), the
//! way a workload sees the agent.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::json;
use signet_identity::bundle::certificates_to_pem;
use signet_identity::{PrivateKey, X509Svid};
use signet_wire::workload::*;
use signet_workload::SocketRole;
use signet_workload::{Backoff, X509Context, connect_to, split_der, status_error, with_header};

use crate::admin_cli::Output;

#[derive(Debug, Args)]
pub struct ApiOpts {
    #[arg(long, alias = "socket", global = true, value_parser = crate::sockets::socket_arg, help = crate::sockets::AGENT_SOCKET_HELP)]
    agent_socket: Option<PathBuf>,
    /// Output format: text, or json (one object per line).
    #[arg(long, value_enum, default_value = "text", global = true)]
    output: Output,
    /// How long `fetch x509`, `fetch jwt` and `fetch bundle` wait for an identity to be
    /// issued to this process (a new entry takes a moment to reach the
    /// agent); 0s fails at once.
    #[arg(long, global = true, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

#[derive(Debug, Subcommand)]
pub enum ApiCmd {
    /// Fetch SVIDs or bundles.
    Fetch {
        #[command(subcommand)]
        what: FetchCmd,
    },
    /// Validate a JWT-SVID.
    Validate {
        #[command(subcommand)]
        what: ValidateCmd,
    },
    /// Print every X509-SVID update as it arrives; keep retrying while no
    /// identity is issued (as SPIFFE client libraries do). Ctrl-C stops.
    Watch,
}

#[derive(Debug, Subcommand)]
pub enum FetchCmd {
    /// X509-SVIDs of this process's identities.
    X509 {
        /// Write svid.pem, svid_key.pem (0600) and bundle.pem into DIR
        /// (created 0700 if missing).
        #[arg(long)]
        write: Option<PathBuf>,
        /// With --write: the SPIFFE ID whose SVID to write when the workload
        /// has several [default: the first, by SPIFFE ID].
        #[arg(long, requires = "write")]
        svid_id: Option<String>,
    },
    /// A JWT-SVID for an audience.
    Jwt {
        /// Audience (`aud`; repeatable, at least one).
        #[arg(long = "audience", required = true)]
        audience: Vec<String>,
        /// Only this identity's JWT-SVID, when the workload has several
        /// [default: one per identity].
        #[arg(long)]
        spiffe_id: Option<String>,
    },
    /// The X.509 trust bundles.
    Bundle,
}

#[derive(Debug, Subcommand)]
pub enum ValidateCmd {
    /// Validate a JWT-SVID for an audience.
    Jwt {
        /// The audience the token must name.
        #[arg(long)]
        audience: String,
        /// The JWT-SVID (compact serialization).
        #[arg(long)]
        token: String,
    },
}

fn status(path: &Path, e: tonic::Status) -> anyhow::Error {
    if e.code() == tonic::Code::PermissionDenied && e.message() == "no identity issued" {
        // Say who asked, and what would register it.
        let uid = rustix::process::getuid().as_raw();
        return anyhow::anyhow!(
            "no identity issued (PermissionDenied) to this process (uid {uid}); an entry that would match it:\n  signet entry create --spiffe-id spiffe://<trust-domain>/<name> --selector unix:uid:{uid}"
        );
    }
    status_error(path, e).into()
}

/// The agent is healthy when it answers the Workload API with identities or
/// with PermissionDenied (none for this caller); Unavailable means it can
/// no longer vouch for identities (banned, evicted, cannot renew).
pub async fn health(socket: Option<PathBuf>) -> anyhow::Result<()> {
    let location = crate::sockets::locate(SocketRole::Agent, socket, None)?;
    let (mut c, path) = connect_to(&location).await.context("agent is unhealthy")?;
    let unhealthy = |e| anyhow::Error::from(status_error(&path, e)).context("agent is unhealthy");
    match c.fetch_x509svid(with_header(X509svidRequest {})).await {
        Ok(mut stream) => match stream.get_mut().message().await {
            Ok(_) => println!("Agent is healthy"),
            Err(e) if e.code() == tonic::Code::PermissionDenied => println!("Agent is healthy"),
            Err(e) => return Err(unhealthy(e)),
        },
        Err(e) if e.code() == tonic::Code::PermissionDenied => println!("Agent is healthy"),
        Err(e) => return Err(unhealthy(e)),
    }
    Ok(())
}

pub async fn run(cmd: ApiCmd, opts: ApiOpts) -> anyhow::Result<()> {
    let location = crate::sockets::locate(SocketRole::Agent, opts.agent_socket.clone(), None)?;
    let (mut c, path) = connect_to(&location).await?;
    let status = |e| status(&path, e);
    match cmd {
        ApiCmd::Fetch {
            what: FetchCmd::X509 { write, svid_id },
        } => {
            let resp = wait_for_identity(opts.timeout, || {
                let mut c = c.clone();
                async move { first(c.fetch_x509svid(with_header(X509svidRequest {})).await).await }
            })
            .await
            .map_err(status)?;
            print_x509(&resp, write.as_deref(), svid_id.as_deref(), opts.output)?;
        }
        ApiCmd::Fetch {
            what: FetchCmd::Jwt {
                audience,
                spiffe_id,
            },
        } => {
            let spiffe_id = spiffe_id.unwrap_or_default();
            let r = wait_for_identity(opts.timeout, || {
                let mut c = c.clone();
                let request = JwtsvidRequest {
                    audience: audience.clone(),
                    spiffe_id: spiffe_id.clone(),
                };
                async move { Ok(c.fetch_jwtsvid(with_header(request)).await?.into_inner()) }
            })
            .await
            .map_err(status)?;
            match opts.output {
                Output::Json => println!(
                    "{}",
                    json!({ "svids": r.svids.iter().map(|s| json!({"spiffe_id": s.spiffe_id, "token": s.svid})).collect::<Vec<_>>() })
                ),
                Output::Text => {
                    for s in &r.svids {
                        println!("SPIFFE ID: {}", s.spiffe_id);
                        println!("Token:     {}", s.svid);
                    }
                }
            }
        }
        ApiCmd::Fetch {
            what: FetchCmd::Bundle,
        } => {
            let resp = wait_for_identity(opts.timeout, || {
                let mut c = c.clone();
                async move {
                    first(
                        c.fetch_x509_bundles(with_header(X509BundlesRequest {}))
                            .await,
                    )
                    .await
                }
            })
            .await
            .map_err(status)?;
            let mut tds: Vec<_> = resp.bundles.iter().collect();
            tds.sort();
            for (td, der) in tds {
                let pem = certificates_to_pem(&split_der(der)?);
                match opts.output {
                    Output::Json => println!("{}", json!({ "trust_domain": td, "pem": pem })),
                    Output::Text => {
                        println!("# {td}");
                        print!("{pem}");
                    }
                }
            }
        }
        ApiCmd::Validate {
            what: ValidateCmd::Jwt { audience, token },
        } => {
            let r = c
                .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
                    audience,
                    svid: token,
                }))
                .await
                .map_err(status)?
                .into_inner();
            opts.output.print(
                json!({ "valid": true, "spiffe_id": r.spiffe_id }),
                format_args!("Valid JWT-SVID for {}", r.spiffe_id),
            );
        }
        ApiCmd::Watch => {
            let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
            let mut client = Some(c);
            loop {
                let why = match client.take() {
                    None => match connect_to(&location).await {
                        Ok((c, _)) => {
                            client = Some(c);
                            continue;
                        }
                        Err(e) => e.to_string(),
                    },
                    Some(mut c) => {
                        let result = async {
                            let mut stream = c
                                .fetch_x509svid(with_header(X509svidRequest {}))
                                .await?
                                .into_inner();
                            while let Some(resp) = stream.message().await? {
                                print_x509(&resp, None, None, opts.output)
                                    .map_err(|e| tonic::Status::internal(e.to_string()))?;
                                backoff.reset();
                            }
                            Ok::<(), tonic::Status>(())
                        }
                        .await;
                        match result {
                            Ok(()) => "the agent closed the stream".to_string(),
                            Err(e) => format!("{} ({:?})", e.message(), e.code()),
                        }
                    }
                };
                opts.output
                    .print(json!({ "waiting": why }), format_args!("waiting: {why}"));
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                }
            }
        }
    }
    Ok(())
}

/// The first message of a stream the agent opened.
async fn first<T>(
    opened: Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>,
) -> Result<T, tonic::Status> {
    opened?
        .into_inner()
        .message()
        .await?
        .ok_or_else(|| tonic::Status::unavailable("the agent closed the stream"))
}

/// Retries `attempt` while the agent answers PermissionDenied with "no
/// identity issued" (none for this process yet), for up to `timeout`, saying once on stderr
/// that it waits; any other answer, or the last refusal, is returned.
async fn wait_for_identity<T, F, Fut>(timeout: Duration, mut attempt: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(250));
    let mut said = false;
    loop {
        match attempt().await {
            // Only "no identity issued" can change by waiting; a caller
            // whose attestation failed stays refused.
            Err(e)
                if e.code() == tonic::Code::PermissionDenied
                    && e.message() == "no identity issued"
                    && tokio::time::Instant::now() + backoff.step() < deadline =>
            {
                if !said {
                    eprintln!(
                        "waiting up to {} for an identity for this process ({})",
                        humantime::format_duration(timeout),
                        e.message()
                    );
                    said = true;
                }
                tokio::time::sleep(backoff.next_delay()).await;
            }
            other => return other,
        }
    }
}

fn print_x509(
    resp: &X509svidResponse,
    write: Option<&std::path::Path>,
    svid_id: Option<&str>,
    out: Output,
) -> anyhow::Result<()> {
    for s in &resp.svids {
        let svid = X509Svid::new(
            split_der(&s.x509_svid)?,
            PrivateKey::from_pkcs8_der(s.x509_svid_key.clone()),
        )?;
        let expires = humantime::format_rfc3339_seconds(svid.not_after());
        match out {
            Output::Json => println!(
                "{}",
                json!({
                    "spiffe_id": s.spiffe_id,
                    "serial": svid.serial(),
                    "expires_at": expires.to_string(),
                    // The signing authority's id, as `signet authority x509 show` prints it.
                    "authority_id": svid.chain().first().and_then(|c| signet_identity::x509_svid::issuer_authority_id(c)),
                })
            ),
            Output::Text => println!(
                "SPIFFE ID: {}  serial {}  expires {expires}",
                s.spiffe_id,
                svid.serial()
            ),
        }
    }
    if let Some(dir) = write {
        if !dir.exists() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("--write {}: cannot create it", dir.display()))?;
        }
        if !dir.is_dir() {
            bail!("--write {}: not a directory", dir.display());
        }
        let ctx = X509Context::from_response(resp)?;
        if let Some(warning) = ctx.ambiguity(svid_id) {
            eprintln!("warning: {warning}");
        }
        let svid = ctx.svid(svid_id).with_context(|| {
            format!(
                "--svid-id {}: not among this workload's identities ({})",
                svid_id.unwrap_or_default(),
                ctx.svids
                    .iter()
                    .map(|s| s.spiffe_id().as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        let own_td = svid.spiffe_id().trust_domain();
        let bundle_pem = ctx
            .bundles
            .iter()
            .find(|b| *b.trust_domain() == own_td)
            .map(|b| b.x509_pem())
            .context("the agent sent no bundle for the SVID's trust domain")?;
        signet_workload::atomic_file::write(
            &dir.join("svid.pem"),
            svid.chain_pem().as_bytes(),
            0o644,
        )?;
        signet_workload::atomic_file::write(
            &dir.join("svid_key.pem"),
            svid.private_key().to_pem().as_bytes(),
            signet_workload::atomic_file::SECRET_MODE,
        )?;
        signet_workload::atomic_file::write(&dir.join("bundle.pem"), bundle_pem.as_bytes(), 0o644)?;
        if matches!(out, Output::Text) {
            println!(
                "Written to {}: svid.pem, svid_key.pem (0600), bundle.pem",
                dir.display()
            );
        }
    }
    Ok(())
}
