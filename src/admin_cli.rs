//! Admin commands over the server's admin socket: entries, join tokens,
//! agents, bundles, minting and the health check.

mod authority;
mod bundle;
mod entry;
mod federation;
mod format;
mod logger;
mod mint;
mod node;
mod oidc;

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde_json::json;
use signet_server::admin::connect_admin;
use signet_wire::admin::*;
use signet_workload::{SocketRole, explain_connect_error};

pub use authority::{AuthorityCmd, UpstreamAuthorityCmd, authority, upstream_authority};
pub use bundle::{BundleCmd, BundleFormat, bundle};
pub use entry::{EntryCmd, entry};
pub use federation::{FederationCmd, federation};
pub use logger::{LoggerCmd, logger};
pub use mint::{JwtCmd, X509Cmd, jwt, x509};
pub use node::{AgentCmd, TokenCmd, agent, token};
pub use oidc::{OidcProviderArgs, oidc_provider};

#[derive(Debug, Clone, Copy, Default, ValueEnum)]
pub enum Output {
    #[default]
    Text,
    Json,
}

impl Output {
    /// Prints one result: `json` as a line of JSON for scripts, or `text`
    /// for people.
    pub fn print(self, json: serde_json::Value, text: impl std::fmt::Display) {
        match self {
            Output::Json => println!("{json}"),
            Output::Text => println!("{text}"),
        }
    }
}

#[derive(Debug, Args)]
pub struct AdminOpts {
    #[arg(long, alias = "socket", global = true, value_parser = crate::sockets::socket_arg, help = crate::sockets::ADMIN_SOCKET_HELP)]
    admin_socket: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text", global = true)]
    output: Output,
    /// Reach the admin API over mTLS at a server's `--admin-listen`
    /// address (`https://HOST:PORT` or `HOST:PORT`) instead of the admin
    /// socket, as this workload: with its X509-SVID from the Workload API
    /// (SPIFFE_ENDPOINT_SOCKET, else /run/signet/agent.sock), whose entry
    /// needs the admin flag.
    #[arg(long, global = true, conflicts_with = "admin_socket")]
    server_url: Option<String>,
}

/// The admin socket this command talks to, for errors that name it.
static ADMIN_SOCKET: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
/// With --server-url: the URL and the SPIFFE ID presented, for errors.
static REMOTE: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();

async fn client(
    opts: &AdminOpts,
) -> anyhow::Result<admin_client::AdminClient<tonic::transport::Channel>> {
    if let Some(url) = &opts.server_url {
        return remote_client(url).await;
    }
    let location = crate::sockets::locate(SocketRole::Admin, opts.admin_socket.clone(), None)?;
    let path = location.client_path();
    let _ = ADMIN_SOCKET.set(path.clone());
    connect_admin(path.clone()).await.map_err(|e| {
        let hint = if path.exists() {
            ""
        } else {
            "; is signet server or signet run running?"
        };
        anyhow::anyhow!(
            "cannot reach the admin API: {} ({}{hint})",
            explain_connect_error(&path, &e),
            location.origin()
        )
    })
}

/// An admin client over mTLS to `url` (a server's `--admin-listen`),
/// presenting this workload's X509-SVID.
async fn remote_client(url: &str) -> anyhow::Result<AdminClient> {
    use signet_wire::workload::X509svidRequest;
    let hostport = url
        .strip_prefix("https://")
        .unwrap_or(url)
        .trim_end_matches('/');
    if hostport.contains("://") {
        anyhow::bail!("--server-url {url:?}: give https://HOST:PORT or HOST:PORT");
    }
    let addr = tokio::net::lookup_host(hostport)
        .await
        .with_context(|| format!("--server-url {url:?}: cannot resolve {hostport}"))?
        .next()
        .with_context(|| format!("--server-url {url:?}: no address for {hostport}"))?;
    let location = crate::sockets::locate(SocketRole::Agent, None, None)?;
    let (mut workload, path) = signet_workload::connect_to(&location)
        .await
        .with_context(|| {
            format!(
                "--server-url needs this workload's X509-SVID ({})",
                location.origin()
            )
        })?;
    let first = workload
        .fetch_x509svid(signet_workload::with_header(X509svidRequest {}))
        .await
        .map_err(|e| signet_workload::status_error(&path, e))?
        .into_inner()
        .message()
        .await
        .map_err(|e| signet_workload::status_error(&path, e))?
        .context("the Workload API sent no X509-SVID")?;
    let ctx = signet_workload::X509Context::from_response(&first)?;
    let _ = REMOTE.set((url.to_owned(), ctx.default_svid().spiffe_id().to_string()));
    // The server may be of a federated trust domain (an admin ID there).
    let channel =
        signet_agent::node_client::server_channel(addr, ctx.bundles.clone(), ctx.default_svid())
            .await
            .with_context(|| format!("cannot reach the admin API at {url}"))?;
    Ok(admin_client::AdminClient::new(channel))
}

/// Turns a gRPC status into an error that names the problem; Unimplemented
/// means the socket serves something else than the admin API.
fn status(e: tonic::Status) -> anyhow::Error {
    if e.code() == tonic::Code::Unimplemented {
        let path = ADMIN_SOCKET
            .get()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "the socket".into());
        return anyhow::anyhow!(
            "{path} does not serve the admin API (it answered Unimplemented): is it an agent socket? Give the server's admin socket, the one `signet run` or `signet server` prints as \"admin socket\" (--admin-socket)"
        );
    }
    if let Some((url, id)) = REMOTE.get()
        && matches!(
            e.code(),
            tonic::Code::Unknown | tonic::Code::Unavailable | tonic::Code::Cancelled
        )
    {
        // TLS 1.3: a server that refuses our certificate says so after the
        // client's side of the handshake, as the first call fails (as a
        // transport error or a canceled call, depending on timing).
        return anyhow::anyhow!(
            "the admin API at {url} closed the connection ({}): it refused this workload's X509-SVID ({id}: not of its trust domain nor one of its admin IDs), or it is unreachable",
            e.message()
        );
    }
    if e.message().is_empty() {
        return anyhow::anyhow!("the server answered {:?}", e.code());
    }
    anyhow::anyhow!("{}", e.message())
}

type AdminClient = admin_client::AdminClient<tonic::transport::Channel>;

fn read_input(path: &Path) -> anyhow::Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
        Ok(buf)
    } else {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
    }
}

/// `healthcheck --url`: GET the URL (plain HTTP) within 5 s; healthy on 2xx.
pub async fn http_health(url: &str) -> anyhow::Result<()> {
    use http_body_util::{BodyExt, Empty};
    let uri: hyper::Uri = url
        .parse()
        .with_context(|| format!("{url:?} is not a URL"))?;
    if uri.scheme_str() != Some("http") {
        anyhow::bail!("{url:?}: only http:// URLs can be checked");
    }
    let host = uri.host().context("the URL has no host")?.to_string();
    let port = uri.port_u16().unwrap_or(80);
    let check = async {
        let stream = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .with_context(|| format!("cannot connect to {host}:{port}"))?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let req = hyper::Request::get(path)
            .header(hyper::header::HOST, format!("{host}:{port}"))
            .body(Empty::<bytes::Bytes>::new())?;
        let resp = send.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        let body = String::from_utf8_lossy(&body);
        if !status.is_success() {
            anyhow::bail!("{url} answered {status}: {}", body.trim());
        }
        println!("{url}: {status} {}", body.trim());
        Ok(())
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), check)
        .await
        .with_context(|| format!("{url} did not answer within 5 s"))?
}

pub async fn healthcheck(opts: &AdminOpts) -> anyhow::Result<()> {
    let mut c = client(opts).await?;
    let h = c
        .health(HealthRequest {})
        .await
        .map_err(status)?
        .into_inner();
    match opts.output {
        Output::Json => println!(
            "{}",
            json!({ "healthy": true, "trust_domain": h.trust_domain, "bundle_sequence": h.bundle_sequence, "entries": h.entries, "agents": h.agents })
        ),
        Output::Text => println!(
            "Server is healthy: trust domain {}, bundle sequence {}, {} entries, {} agents",
            h.trust_domain, h.bundle_sequence, h.entries, h.agents
        ),
    }
    Ok(())
}
