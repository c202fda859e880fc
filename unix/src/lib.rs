//! Unix domain sockets for the admin API and the Workload API: binding
//! with the right permissions, accepting connections for a gRPC server (any
//! `:authority`, see [`authority`]), and gRPC channels to them.

pub mod authority;
pub mod peer;

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tonic::transport::server::{Connected, UdsConnectInfo};

use crate::peer::{PeerCred, PinnedPeer, WorkloadAttestError};

pub use authority::AuthorityRewrite;

/// Binds a socket at `path` with `mode`. A missing parent directory is
/// created with `dir_mode` (missing directories above it with 0755,
/// whatever the umask, so that `/run/signet/private/admin.sock` leaves
/// `/run/signet` open for the agent socket); the directory must be one nobody else controls
/// (see [`check_socket_dir`]); a stale socket file (nobody answers on it) is
/// replaced; a socket another process serves, or any other file at the
/// path, is left alone and reported.
pub fn bind(path: &Path, mode: u32, dir_mode: u32) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            if let Some(above) = dir.parent().filter(|d| !d.exists()) {
                std::fs::create_dir_all(above)?;
                std::fs::set_permissions(above, std::fs::Permissions::from_mode(0o755))?;
            }
            std::fs::create_dir(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(dir_mode))?;
        }
        check_socket_dir(dir)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if let Ok(live) = std::os::unix::net::UnixStream::connect(path) {
                let pid = rustix::net::sockopt::socket_peercred(&live)
                    .map(|c| format!(" (pid {})", c.pid.as_raw_nonzero()))
                    .unwrap_or_default();
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    format!(
                        "another process is serving {}{pid}; stop it, or choose another path",
                        path.display()
                    ),
                ));
            }
            std::fs::remove_file(path)?
        }
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; refusing to replace it",
                    path.display()
                ),
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(listener)
}

/// Refuses a socket directory another user could have prepared to swap
/// sockets in (security invariant 8): the directory, and each parent up to
/// the first sticky root-owned one (such as `/tmp`), must belong to this
/// process's user or to root and be writable by nobody else.
pub fn check_socket_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let me = rustix::process::geteuid().as_raw();
    let dir = std::fs::canonicalize(dir)?;
    let mut at = Some(dir.as_path());
    while let Some(d) = at {
        let m = std::fs::metadata(d)?;
        let mode = m.mode();
        if m.uid() == 0 && mode & 0o1000 != 0 {
            // A sticky directory of root's: others may create entries in it,
            // but not replace ours.
            return Ok(());
        }
        if m.uid() != me && m.uid() != 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "refusing to serve a socket under {}: it belongs to uid {}, neither this user (uid {me}) nor root, who could swap the socket; remove it or choose another path",
                    d.display(),
                    m.uid()
                ),
            ));
        }
        if mode & 0o022 != 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "refusing to serve a socket under {}: other users may write to it (mode {:o}) and swap the socket; make it writable by its owner only or choose another path",
                    d.display(),
                    mode & 0o7777
                ),
            ));
        }
        at = d.parent();
    }
    Ok(())
}

/// The identity of the socket file at `path`: device, inode, and change
/// time (an inode number freed by an unlink is often given to the next
/// file made).
pub type SocketIdentity = (u64, u64, i64, i64);

/// The identity of the socket at `path`, if a socket is there.
pub fn socket_identity(path: &Path) -> Option<SocketIdentity> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(path).ok()?;
    m.file_type()
        .is_socket()
        .then(|| (m.dev(), m.ino(), m.ctime(), m.ctime_nsec()))
}

/// Removes the socket at `path` if it is still the one this process bound
/// (`identity`, from [`socket_identity`] right after binding): a server
/// never deletes a socket another process bound there since.
pub fn remove_if_ours(path: &Path, identity: Option<SocketIdentity>) {
    if identity.is_some() && socket_identity(path) == identity {
        let _ = std::fs::remove_file(path);
    }
}

/// Logs (once per change) when the socket this process bound at `path`
/// (`identity`) is removed or replaced by another, so an operator learns
/// why clients no longer reach this server; returns when `stop` resolves.
pub async fn watch_socket(
    path: PathBuf,
    identity: Option<SocketIdentity>,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
    let mut lost = false;
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = tick.tick() => {}
        }
        let now = socket_identity(&path);
        match (now == identity, lost) {
            (false, false) => {
                let what = if now.is_some() {
                    "replaced by another"
                } else {
                    "removed"
                };
                tracing::error!(socket = %path.display(), "this server's socket was {what}: clients can no longer reach it there; restart it to bind the socket again");
                lost = true;
            }
            (true, true) => lost = false,
            _ => {}
        }
    }
}

/// Connections one uid (other than root) may hold open on a socket.
pub const MAX_CONNECTIONS_PER_UID: usize = 128;
/// Connections all uids together may hold open on one socket; the rest of
/// the process's descriptors stay for its other sockets (the admin API, the
/// server, files).
pub const MAX_CONNECTIONS: usize = 4096;
/// How long an accept error (out of descriptors, say) pauses accepting.
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);

/// The connections accepted on `listener`, for a tonic server's
/// `serve_with_incoming`: each peer is pinned as it is accepted (see
/// [`UnixPeer`]), and each connection reads through [`AuthorityRewrite`], so
/// gRPC clients of every language are served whatever `:authority` they
/// send, and must send their first request within its deadline.
///
/// Bounded (security invariant 8): a connection past
/// [`MAX_CONNECTIONS_PER_UID`] for its uid (root excepted) or past
/// [`MAX_CONNECTIONS`] in all is closed at once; an accept error pauses
/// accepting for a moment instead of spinning.
pub fn incoming(
    listener: UnixListener,
) -> impl tokio_stream::Stream<Item = io::Result<AuthorityRewrite<Accepted>>> {
    let budget = Arc::new(Budget::default());
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let mut said_error = false;
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        said_error = false;
                        stream
                    }
                    Err(e) => {
                        if !said_error {
                            tracing::warn!(error = %e, "accepting on a Unix socket failed; pausing");
                            said_error = true;
                        }
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                },
                () = tx.closed() => return,
            };
            let uid = stream.peer_cred().map(|c| c.uid()).unwrap_or(u32::MAX);
            let Some(slot) = budget.take(uid) else {
                tracing::warn!(
                    uid,
                    "connection refused: too many open connections for this uid"
                );
                continue;
            };
            if tx
                .send(Ok(AuthorityRewrite::new(Accepted::new(stream, slot))))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Open connections per uid on one socket.
#[derive(Debug, Default)]
struct Budget {
    open: std::sync::Mutex<(usize, std::collections::HashMap<u32, usize>)>,
}

impl Budget {
    fn take(self: &Arc<Self>, uid: u32) -> Option<Slot> {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (total, by_uid) = &mut *open;
        let mine = by_uid.entry(uid).or_insert(0);
        if *total >= MAX_CONNECTIONS || (uid != 0 && *mine >= MAX_CONNECTIONS_PER_UID) {
            if *mine == 0 {
                by_uid.remove(&uid);
            }
            return None;
        }
        *mine += 1;
        *total += 1;
        Some(Slot {
            budget: self.clone(),
            uid,
        })
    }
}

/// A connection's place in its socket's budget, given back when it closes.
#[derive(Debug)]
pub struct Slot {
    budget: Arc<Budget>,
    uid: u32,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self
            .budget
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (total, by_uid) = &mut *open;
        *total = total.saturating_sub(1);
        if let Some(n) = by_uid.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                by_uid.remove(&self.uid);
            }
        }
    }
}

/// What a server knows of the peer of an accepted Unix-socket connection:
/// the kernel's credentials, and the process pinned when the connection was
/// accepted (a request's extensions carry it; security invariant 2).
#[derive(Debug, Clone)]
pub struct UnixPeer {
    pub uds: UdsConnectInfo,
    pub pin: Result<Arc<PinnedPeer>, WorkloadAttestError>,
}

/// An accepted connection and its pinned peer.
#[derive(Debug)]
pub struct Accepted {
    stream: UnixStream,
    peer: UnixPeer,
    _slot: Slot,
}

impl Accepted {
    fn new(stream: UnixStream, slot: Slot) -> Self {
        let pin = match stream.peer_cred() {
            Ok(cred) => PinnedPeer::capture(PeerCred {
                pid: cred.pid().unwrap_or(0),
                uid: cred.uid(),
                gid: cred.gid(),
            })
            .map(Arc::new),
            Err(_) => Err(WorkloadAttestError::NoPid),
        };
        let uds = stream.connect_info();
        match &pin {
            Ok(p) => tracing::debug!(
                pid = p.cred().pid,
                uid = p.cred().uid,
                "accepted and pinned a Unix-socket peer"
            ),
            Err(e) => {
                tracing::debug!(error = %e, "accepted a Unix-socket peer that could not be pinned")
            }
        }
        Accepted {
            stream,
            peer: UnixPeer { uds, pin },
            _slot: slot,
        }
    }
}

impl Connected for Accepted {
    type ConnectInfo = UnixPeer;

    fn connect_info(&self) -> UnixPeer {
        self.peer.clone()
    }
}

impl AsyncRead for Accepted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Accepted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_dirs_others_control_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mine = dir.path().join("mine");
        std::fs::create_dir(&mine).unwrap();
        std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o755)).unwrap();
        check_socket_dir(&mine).unwrap();
        // Group- or world-writable: refused, whoever owns it.
        std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = check_socket_dir(&mine).unwrap_err();
        assert!(
            err.to_string()
                .contains("other users may write to it (mode 777)"),
            "{err}"
        );
        std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o775)).unwrap();
        assert!(check_socket_dir(&mine).is_err());
        // A sticky root-owned directory (like /tmp) ends the walk.
        check_socket_dir(Path::new("/tmp")).unwrap();
    }

    #[tokio::test]
    async fn bind_sets_modes_and_refuses_to_clobber_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("private/api.sock");
        let _l = bind(&path, 0o600, 0o700).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
        drop(_l);
        // A stale socket (nobody answers) is replaced; a live one is not.
        let live = bind(&path, 0o600, 0o700).unwrap();
        let err = bind(&path, 0o600, 0o700).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
        assert!(
            err.to_string().contains(&format!(
                "another process is serving {} (pid {})",
                path.display(),
                std::process::id()
            )),
            "{err}"
        );
        let before = socket_identity(&path);
        assert!(before.is_some());
        drop(live);
        // Another bind there since: the first's cleanup leaves it alone.
        // (A file made first takes the inode number the unlink frees.)
        std::fs::remove_file(&path).unwrap();
        std::fs::write(dir.path().join("placeholder"), "").unwrap();
        let _second = bind(&path, 0o600, 0o700).unwrap();
        let second = socket_identity(&path);
        assert_ne!(before, second);
        remove_if_ours(&path, before);
        assert!(path.exists(), "removed a socket another bind made");
        remove_if_ours(&path, second);
        assert!(!path.exists());
        let file = dir.path().join("not-a-socket");
        std::fs::write(&file, "keep me").unwrap();
        assert!(bind(&file, 0o600, 0o700).is_err());
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    }
}
