//! Connecting to Signet's Unix sockets as a client: a gRPC channel that
//! refuses a socket served by another user than this one or root
//! (`--trust-socket-owner` widens it), errors that say what is wrong with
//! the socket, and Workload API addresses (`unix:///path`).

use std::io;
use std::path::{Path, PathBuf};

use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

static TRUSTED_OWNERS: std::sync::OnceLock<Vec<u32>> = std::sync::OnceLock::new();

/// Users whose sockets clients of this process accept besides their own
/// and root's (`--trust-socket-owner`); set once, at start.
pub fn trust_socket_owners(uids: Vec<u32>) {
    let _ = TRUSTED_OWNERS.set(uids);
}

/// Refuses a socket served by a process of another user than this one or
/// root (security invariant 8): such a server may be anyone's, put where a
/// client expected Signet, to hand it a CA or an identity of its choice.
/// The kernel reports who serves a Unix socket; a path cannot fake it.
fn check_server_owner(path: &Path, stream: &UnixStream) -> io::Result<()> {
    let uid = stream.peer_cred()?.uid();
    let me = rustix::process::geteuid().as_raw();
    let trusted = TRUSTED_OWNERS.get().is_some_and(|t| t.contains(&uid));
    if uid == me || uid == 0 || trusted {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!(
            "refusing {}: it is served by a process of uid {uid}, neither this user (uid {me}) nor root, so anyone could have put it there; if that is your agent or server, pass --trust-socket-owner {uid}",
            path.display()
        ),
    ))
}

/// A gRPC channel to the socket at `path`, served by this user, root or a
/// trusted owner (see [`trust_socket_owners`]).
pub async fn channel(path: PathBuf) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = UnixStream::connect(&path).await?;
                check_server_owner(&path, &stream)?;
                Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
}

/// Why connecting to the socket at `path` failed, in words that say what
/// to do: nothing there, nothing serving it, not allowed (and whose it
/// is), or a socket of a user this client does not trust.
pub fn explain_connect_error(path: &Path, err: &(dyn std::error::Error + 'static)) -> String {
    use std::os::unix::fs::MetadataExt;
    let mut source = Some(err);
    let io = std::iter::from_fn(|| {
        let e = source?;
        source = e.source();
        Some(e)
    })
    .find_map(|e| e.downcast_ref::<io::Error>());
    let shown = path.display();
    let Some(io) = io else {
        return format!("cannot connect to {shown}: {err}");
    };
    match io.kind() {
        io::ErrorKind::NotFound => format!("no socket at {shown}"),
        io::ErrorKind::ConnectionRefused => {
            format!("nothing is serving {shown} (a socket file left by a server that stopped)")
        }
        io::ErrorKind::PermissionDenied if io.get_ref().is_some() => io.to_string(),
        io::ErrorKind::PermissionDenied => {
            let me = rustix::process::geteuid().as_raw();
            match std::fs::metadata(path) {
                Ok(m) => format!(
                    "permission denied on {shown} (mode {:o}, owner uid {}; this is uid {me}): run the command as its owner or root",
                    m.mode() & 0o777,
                    m.uid()
                ),
                Err(_) => format!(
                    "permission denied on {shown} or a directory above it (this is uid {me}): run the command as the socket's owner or root"
                ),
            }
        }
        _ => format!("cannot connect to {shown}: {io}"),
    }
}

/// The path of a Workload API address as `SPIFFE_ENDPOINT_SOCKET` writes
/// it (`unix:///abs/path` or `unix:/abs/path`), or a bare path.
pub fn endpoint_path(addr: &str) -> Result<PathBuf, String> {
    let path = match addr.strip_prefix("unix://") {
        Some(rest) => rest,
        None => match addr.strip_prefix("unix:") {
            Some(rest) => rest,
            None if addr.contains("://") => {
                return Err(format!(
                    "{addr:?}: only unix:// Workload API addresses are supported"
                ));
            }
            None => addr,
        },
    };
    if !path.starts_with('/') {
        return Err(format!("{addr:?}: the socket path must be absolute"));
    }
    Ok(PathBuf::from(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_addresses() {
        assert_eq!(
            endpoint_path("unix:///tmp/a.sock").unwrap(),
            PathBuf::from("/tmp/a.sock")
        );
        assert_eq!(
            endpoint_path("unix:/tmp/a.sock").unwrap(),
            PathBuf::from("/tmp/a.sock")
        );
        assert_eq!(
            endpoint_path("/tmp/a.sock").unwrap(),
            PathBuf::from("/tmp/a.sock")
        );
        assert!(endpoint_path("tcp://127.0.0.1:1").is_err());
        assert!(endpoint_path("unix://relative.sock").is_err());
    }
}
