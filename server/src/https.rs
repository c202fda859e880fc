//! Small public HTTP(S) endpoints of the server (the SPIFFE bundle
//! endpoint, the OIDC discovery provider): a bounded accept loop over
//! hyper HTTP/1.1, with or without TLS, and certificates read from files
//! and read again when they change.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use signet_tls::RotatingCert;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

use crate::ServerError;

/// How long a client may take for its TLS handshake and request headers.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Most connections served at once; more wait in the listen queue.
const MAX_CONNECTIONS: usize = 256;
/// How often certificate and key files are checked for changes.
pub(crate) const FILE_CHECK: Duration = Duration::from_secs(5);

/// A certificate chain and its key from PEM files, read again when either
/// changes; a broken pair never replaces a good one.
#[derive(Debug)]
pub(crate) struct FileCert {
    /// What presents it, for messages ("bundle endpoint").
    what: &'static str,
    pub(crate) cert: Arc<RotatingCert>,
    cert_path: PathBuf,
    key_path: PathBuf,
    seen: (Option<SystemTime>, Option<SystemTime>),
}

impl FileCert {
    pub(crate) fn load(
        what: &'static str,
        cert_path: &Path,
        key_path: &Path,
    ) -> Result<Self, ServerError> {
        let mut file = FileCert {
            what,
            cert: Arc::new(RotatingCert::new()),
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            seen: (None, None),
        };
        file.read()?;
        Ok(file)
    }

    fn modified(path: &Path) -> Option<SystemTime> {
        std::fs::metadata(path).and_then(|m| m.modified()).ok()
    }

    fn read(&mut self) -> Result<(), ServerError> {
        let seen = (
            Self::modified(&self.cert_path),
            Self::modified(&self.key_path),
        );
        let read = |path: &Path| {
            std::fs::read(path).map_err(|e| {
                ServerError::InvalidArgument(format!(
                    "{} certificate: cannot read {}: {e}",
                    self.what,
                    path.display()
                ))
            })
        };
        let (chain, key) = (read(&self.cert_path)?, read(&self.key_path)?);
        self.cert.set_pem(&chain, &key).map_err(|e| {
            ServerError::InvalidArgument(format!(
                "{} certificate {} with key {}: {e}",
                self.what,
                self.cert_path.display(),
                self.key_path.display()
            ))
        })?;
        self.seen = seen;
        Ok(())
    }

    /// Reads the files again if either changed; a bad pair is logged and
    /// the current one stays.
    pub(crate) fn reload_if_changed(&mut self) {
        let now = (
            Self::modified(&self.cert_path),
            Self::modified(&self.key_path),
        );
        if now == self.seen {
            return;
        }
        match self.read() {
            Ok(()) => {
                tracing::info!(cert = %self.cert_path.display(), "{} certificate reloaded", self.what)
            }
            Err(e) => {
                // Not again until the files change once more.
                self.seen = now;
                tracing::error!(error = %e, "{} certificate not reloaded; the previous one stays", self.what);
            }
        }
    }
}

/// Serves `answer` on `listener` (over TLS with `tls`, plain HTTP
/// without) until `stop` resolves, calling `upkeep` every `every` (to keep
/// the presented certificate current).
pub(crate) async fn serve<A, F>(
    what: &'static str,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    (every, mut upkeep): (Duration, impl FnMut()),
    answer: A,
    stop: impl Future<Output = ()>,
) where
    A: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut keep_current = tokio::time::interval(every);
    tokio::pin!(stop);
    loop {
        let permit = tokio::select! {
            _ = &mut stop => return,
            _ = keep_current.tick() => {
                upkeep();
                continue;
            }
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let (tcp, peer) = tokio::select! {
            _ = &mut stop => return,
            conn = listener.accept() => match conn {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "{what}: accept failed");
                    continue;
                }
            },
        };
        let (tls, answer) = (tls.clone(), answer.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let served = match tls {
                None => serve_connection(tcp, answer).await,
                Some(acceptor) => {
                    match tokio::time::timeout(CLIENT_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => serve_connection(tls, answer).await,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "{what}: TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "{what}: TLS handshake timed out");
                            return;
                        }
                    }
                }
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "{what}: connection ended");
            }
        });
    }
}

async fn serve_connection<I, A, F>(io: I, answer: A) -> Result<(), hyper::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    A: Fn(Request<Incoming>) -> F + Send + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let reply = answer(req);
        async move { Ok::<_, std::convert::Infallible>(reply.await) }
    });
    hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(CLIENT_TIMEOUT)
        .serve_connection(TokioIo::new(io), service)
        .await
}

/// A JSON document (an empty body for `HEAD`).
pub(crate) fn json(head: bool, document: String) -> Response<Full<Bytes>> {
    let body = if head {
        Bytes::new()
    } else {
        Bytes::from(document)
    };
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .header("cache-control", "no-store")
        .body(Full::new(body))
        .unwrap_or_default()
}

/// A short plain-text answer.
pub(crate) fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from_static(text.as_bytes())))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use signet_testkit::pki::{Leaf, TestCa};

    fn write_pair(dir: &Path, root: &TestCa) {
        let leaf = root.leaf(&Leaf {
            dns: &["localhost"],
            ..Leaf::default()
        });
        std::fs::write(dir.join("web.pem"), leaf.pem).unwrap();
        std::fs::write(dir.join("web.key"), leaf.key_pem).unwrap();
    }

    fn presented(file: &FileCert) -> Vec<u8> {
        file.cert.current().unwrap().cert[0].to_vec()
    }

    /// A changed pair is taken; a broken one is refused and the good one
    /// stays until the files change again.
    #[test]
    fn a_file_certificate_follows_its_files_but_never_for_a_broken_pair() {
        let dir = tempfile::tempdir().unwrap();
        write_pair(dir.path(), &TestCa::new("one"));
        let (cert, key) = (dir.path().join("web.pem"), dir.path().join("web.key"));
        let mut file = FileCert::load("test endpoint", &cert, &key).unwrap();
        let first = presented(&file);
        file.reload_if_changed();
        assert_eq!(presented(&file), first, "unchanged files: nothing read");

        write_pair(dir.path(), &TestCa::new("two"));
        // Some file systems keep mtimes to the second: say it changed.
        file.seen = (None, None);
        file.reload_if_changed();
        let second = presented(&file);
        assert_ne!(second, first);

        std::fs::write(&key, "not a key").unwrap();
        file.seen = (None, None);
        file.reload_if_changed();
        assert_eq!(
            presented(&file),
            second,
            "a broken key replaced a good pair"
        );
    }
}
