//! Where Envoy reaches Check besides the agent socket: `--authz-listen` of
//! an agent, `--listen` of `signet authz`. IP:PORT (plain gRPC: loopback or
//! a trusted network) or unix:/PATH (a socket made 0666 in a directory
//! checked as the agent's is).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use signet_extauthz::ExtAuthz;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};

/// A listener as configured.
#[derive(Debug, Clone)]
pub enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl Listen {
    /// Parses `s`, the value of `flag` (named in errors).
    pub fn parse(flag: &str, s: &str) -> anyhow::Result<Listen> {
        if let Some(path) = s
            .strip_prefix("unix://")
            .or_else(|| s.strip_prefix("unix:"))
        {
            anyhow::ensure!(
                path.starts_with('/'),
                "{flag} {s}: a Unix socket path must be absolute"
            );
            return Ok(Listen::Unix(PathBuf::from(path)));
        }
        s.parse()
            .map(Listen::Tcp)
            .with_context(|| format!("{flag} {s:?}: expected IP:PORT or unix:/PATH"))
    }

    /// Binds it (a Unix socket another process serves is left alone).
    pub async fn bind(&self) -> anyhow::Result<Bound> {
        Ok(match self {
            Listen::Tcp(addr) => Bound::Tcp(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr}"))?,
            ),
            Listen::Unix(path) => {
                let listener = signet_unix::bind(path, 0o666, 0o755)
                    .with_context(|| format!("cannot listen on {}", path.display()))?;
                Bound::Unix {
                    identity: signet_unix::socket_identity(path),
                    listener,
                    path: path.clone(),
                }
            }
        })
    }
}

/// A bound listener.
#[derive(Debug)]
pub enum Bound {
    Tcp(tokio::net::TcpListener),
    Unix {
        listener: tokio::net::UnixListener,
        path: PathBuf,
        identity: Option<signet_unix::SocketIdentity>,
    },
}

impl Bound {
    /// Where it listens, as banners print it.
    pub fn describe(&self) -> String {
        match self {
            Bound::Tcp(l) => l
                .local_addr()
                .map_or_else(|e| format!("(address unknown: {e})"), |a| a.to_string()),
            Bound::Unix { path, .. } => format!("unix:{}", path.display()),
        }
    }

    /// Serves Check until `shutdown`; a Unix socket it made is removed.
    pub async fn serve(
        self,
        service: ExtAuthz,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let server = tonic::transport::Server::builder().add_service(service.into_service());
        match self {
            Bound::Tcp(listener) => {
                server
                    .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
                    .await?;
            }
            Bound::Unix {
                listener,
                path,
                identity,
            } => {
                server
                    .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
                    .await?;
                signet_unix::remove_if_ours(&path, identity);
            }
        }
        Ok(())
    }
}
