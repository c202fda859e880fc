//! One listener: accept, enforce the connection limit, handshake with a
//! deadline, authorize, then relay (TCP) or serve requests (HTTP).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{counter, gauge, histogram};
use serde_json::Value;
use signet_policy::input::InputBuilder;
use signet_policy::{PolicyHandle, PolicyOptions};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio_util::either::Either;

use crate::read_ahead::ReadAhead;
use signet_tls::SpiffeVerifier;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tracing::Instrument;

use crate::config::{
    Endpoint, Inbound, Limits, ListenerConfig, Mode, Outbound, PolicyRef, ProxyProtocol, host_port,
};
use crate::identity::Identity;
use crate::relay::relay;
use crate::{ProxyError, Shutdown};

/// Open connections of a listener, bounded by its limit.
#[derive(Debug)]
pub(crate) struct Active {
    slots: Arc<Semaphore>,
    max: usize,
}

impl Active {
    pub(crate) fn count(&self) -> usize {
        self.max - self.slots.available_permits()
    }
}

/// A connection on either kind of socket.
pub(crate) type Stream = Either<TcpStream, UnixStream>;

/// A listening socket registered with a worker's runtime.
pub(crate) enum Accept {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Accept {
    /// The next connection and, on TCP, the caller's address.
    async fn accept(&self) -> std::io::Result<(Stream, Option<SocketAddr>)> {
        match self {
            Accept::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                let _ = s.set_nodelay(true);
                Ok((Either::Left(s), Some(peer)))
            }
            Accept::Unix(l) => Ok((Either::Right(l.accept().await?.0), None)),
        }
    }
}

/// Connects to `to` (a TCP address or a Unix socket).
pub(crate) async fn connect(to: &Endpoint) -> std::io::Result<Stream> {
    Ok(match to {
        Endpoint::Tcp(addr) => {
            let s = TcpStream::connect(addr).await?;
            let _ = s.set_nodelay(true);
            Either::Left(s)
        }
        Endpoint::Unix(path) => Either::Right(UnixStream::connect(path).await?),
    })
}

/// Where an outbound listener connects.
enum Remote {
    Tcp { host: String, port: u16 },
    Unix(Endpoint),
}

impl std::fmt::Display for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Remote::Tcp { host, port } => write!(f, "{host}:{port}"),
            Remote::Unix(e) => write!(f, "{e}"),
        }
    }
}

enum Side {
    Inbound {
        acceptor: TlsAcceptor,
        verifier: Arc<SpiffeVerifier>,
        to: Endpoint,
        http: Option<Arc<crate::http::Forwarder>>,
        proxy_protocol_to_app: Option<ProxyProtocol>,
    },
    Outbound {
        connector: TlsConnector,
        verifier: Arc<SpiffeVerifier>,
        remote: Remote,
        name: rustls::pki_types::ServerName<'static>,
        server_id: String,
    },
}

pub(crate) struct Listener {
    name: Arc<str>,
    limits: Limits,
    /// Connections start with a PROXY protocol header.
    accept_proxy_protocol: bool,
    identity: Identity,
    policy: Option<Arc<PolicyHandle>>,
    side: Side,
    active: Arc<Active>,
    shutdown: Shutdown,
}

fn load_policy(name: &str, p: &PolicyRef) -> Result<PolicyHandle, ProxyError> {
    let fail = |source| ProxyError::Policy {
        name: name.to_string(),
        path: p.path.clone(),
        source,
    };
    let mut options = PolicyOptions::default().with_entrypoint(p.entrypoint.clone());
    if let Some(data) = &p.data {
        let text = std::fs::read(data).map_err(|e| ProxyError::Setup {
            name: name.to_string(),
            message: format!("policy data {}: {e}", data.display()),
        })?;
        let value: Value = serde_json::from_slice(&text).map_err(|e| ProxyError::Setup {
            name: name.to_string(),
            message: format!("policy data {}: not JSON: {e}", data.display()),
        })?;
        options = options.with_data(value);
    }
    let mut handle = PolicyHandle::load(&p.path, options).map_err(fail)?;
    if p.decision_cache > 0 {
        handle = handle.with_decision_cache(p.decision_cache);
    }
    Ok(handle)
}

impl Listener {
    /// `loaded`: policies already loaded for other listeners; a listener
    /// naming the same policy (file, entrypoint, data, cache) shares it, so
    /// it is compiled, held and watched once.
    pub(crate) fn prepare(
        config: &ListenerConfig,
        identity: Identity,
        shutdown: Shutdown,
        loaded: &mut Vec<(PolicyRef, Arc<PolicyHandle>)>,
    ) -> Result<Listener, ProxyError> {
        let name: Arc<str> = config.name.as_str().into();
        let setup = |message: String| ProxyError::Setup {
            name: config.name.clone(),
            message,
        };
        let mut policy = None;
        let side = match &config.mode {
            Mode::Inbound(Inbound {
                to,
                allow_ids,
                allow_trust_domains,
                policy: policy_ref,
                http,
                insecure_keep_escaped_slashes: keep_escaped_slashes,
                app_protocol,
                proxy_protocol_to_app,
            }) => {
                if let Some(p) = policy_ref {
                    let shared = loaded.iter().find(|(r, _)| r == p).map(|(_, h)| h.clone());
                    let handle = match shared {
                        Some(h) => h,
                        None => {
                            let h = Arc::new(load_policy(&config.name, p)?);
                            loaded.push((p.clone(), h.clone()));
                            h
                        }
                    };
                    policy = Some(handle);
                }
                let alpn: &[&[u8]] = if *http { &[b"h2", b"http/1.1"] } else { &[] };
                let (tls, verifier) = crate::tls::server_config(
                    &identity,
                    crate::tls::allow_list(allow_ids, allow_trust_domains),
                    config.limits.tls12,
                    alpn,
                )
                .map_err(|e| setup(format!("TLS: {e}")))?;
                Side::Inbound {
                    acceptor: TlsAcceptor::from(Arc::new(tls)),
                    verifier,
                    to: to.clone(),
                    http: http.then(|| {
                        Arc::new(crate::http::Forwarder::new(
                            name.clone(),
                            to.clone(),
                            config.limits.connect_timeout,
                            *keep_escaped_slashes,
                            *app_protocol,
                        ))
                    }),
                    proxy_protocol_to_app: *proxy_protocol_to_app,
                }
            }
            Mode::Outbound(Outbound {
                to,
                server_ids,
                server_trust_domains,
                sni,
            }) => {
                let remote = match to.strip_prefix("unix:") {
                    Some(_) => Remote::Unix(Endpoint::parse(to).map_err(setup)?),
                    None => {
                        let (host, port) = host_port(to)
                            .ok_or_else(|| setup(format!("{to:?} is not host:port")))?;
                        Remote::Tcp {
                            host: host.to_string(),
                            port,
                        }
                    }
                };
                // A Unix socket has no host name to send; the server is
                // known by its SPIFFE ID anyway.
                let host = match &remote {
                    Remote::Tcp { host, .. } => host.as_str(),
                    Remote::Unix(_) => "localhost",
                };
                let (tls, verifier) = crate::tls::client_config(
                    &identity,
                    crate::tls::allow_list(server_ids, server_trust_domains),
                    config.limits.tls12,
                )
                .map_err(|e| setup(format!("TLS: {e}")))?;
                // Who the server may be, as logs name it.
                let server_id = server_ids
                    .iter()
                    .map(ToString::to_string)
                    .chain(server_trust_domains.iter().map(|td| format!("any of {td}")))
                    .collect::<Vec<_>>()
                    .join(", ");
                Side::Outbound {
                    connector: TlsConnector::from(Arc::new(tls)),
                    verifier,
                    name: crate::tls::server_name(sni.as_deref(), host).map_err(setup)?,
                    remote,
                    server_id,
                }
            }
        };
        let max = config.limits.max_connections;
        Ok(Listener {
            name,
            limits: config.limits.clone(),
            accept_proxy_protocol: config.accept_proxy_protocol,
            identity,
            policy,
            side,
            active: Arc::new(Active {
                slots: Arc::new(Semaphore::new(max)),
                max,
            }),
            shutdown,
        })
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn active(&self) -> Arc<Active> {
        self.active.clone()
    }

    /// Accepts on `socket` until drained, serving each connection on this
    /// thread (a worker's); waits for an identity before the first accept.
    /// `announce`: this loop logs when accepting starts (one per listener).
    pub(crate) async fn run(self: Arc<Self>, socket: Accept, announce: bool) {
        let listener = self;
        let name = listener.name.clone();
        tokio::select! {
            current = listener.identity.ready() => {
                if announce {
                    tracing::info!(listener = %name, spiffe_id = %current.id, "accepting connections");
                }
            }
            () = listener.shutdown.drained() => return,
        }
        loop {
            let accepted = tokio::select! {
                a = socket.accept() => a,
                () = listener.shutdown.drained() => return,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly.
                    tracing::warn!(listener = %name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = listener.active.slots.clone().try_acquire_owned() else {
                counter!("signet_proxy_connections_total", "listener" => name.to_string(), "result" => "limit").increment(1);
                tracing::warn!(listener = %name, peer = ?peer, limit = listener.active.max, "connection refused: connection limit reached");
                continue;
            };
            let l = listener.clone();
            let span = match peer {
                Some(peer) => tracing::info_span!("connection", listener = %name, %peer),
                None => tracing::info_span!("connection", listener = %name),
            };
            tokio::spawn(
                async move {
                    gauge!("signet_proxy_active_connections", "listener" => l.name.to_string())
                        .increment(1.0);
                    tokio::select! {
                        () = l.clone().handle(stream, peer, permit) => {}
                        () = l.shutdown.aborted() => tracing::info!("connection closed by shutdown"),
                    }
                    gauge!("signet_proxy_active_connections", "listener" => l.name.to_string())
                        .decrement(1.0);
                }
                .instrument(span),
            );
        }
    }

    async fn handle(
        self: Arc<Self>,
        stream: Stream,
        peer: Option<SocketAddr>,
        permit: OwnedSemaphorePermit,
    ) {
        let _permit = permit;
        match &self.side {
            Side::Inbound { .. } => self.inbound(stream, peer).await,
            Side::Outbound {
                connector,
                verifier,
                remote,
                name,
                server_id,
            } => {
                self.outbound(connector, verifier, remote, name, server_id, stream)
                    .await;
            }
        }
    }

    fn count(&self, metric: &'static str, result: &'static str) {
        counter!(metric, "listener" => self.name.to_string(), "result" => result).increment(1);
    }

    /// Handshakes that resumed a TLS session (no certificate exchange).
    fn count_resumed(&self, kind: Option<rustls::HandshakeKind>) {
        if kind == Some(rustls::HandshakeKind::Resumed) {
            counter!("signet_proxy_resumed_handshakes_total", "listener" => self.name.to_string())
                .increment(1);
        }
    }

    async fn inbound(&self, mut stream: Stream, mut peer: Option<SocketAddr>) {
        let Side::Inbound {
            acceptor,
            verifier,
            to,
            http,
            proxy_protocol_to_app,
        } = &self.side
        else {
            return;
        };
        let mut local = match &stream {
            Either::Left(tcp) => tcp.local_addr().ok(),
            Either::Right(_) => None,
        };
        // Behind a load balancer speaking the PROXY protocol, its header
        // names the caller (within the handshake's time limit).
        let mut prefix = Vec::new();
        if self.accept_proxy_protocol {
            let header = Box::pin(tokio::time::timeout(
                self.limits.handshake_timeout,
                crate::proxy_protocol::read_header(&mut stream),
            ))
            .await;
            match header {
                Ok(Ok((received, rest))) => {
                    if let Some(source) = received.source {
                        tracing::debug!(via = ?peer, caller = %source, "PROXY protocol header");
                        peer = Some(source);
                        local = received.destination.or(local);
                    }
                    prefix = rest;
                }
                Ok(Err(e)) => {
                    self.count("signet_proxy_handshakes_total", "proxy_protocol");
                    tracing::warn!(reason = %e, "connection rejected: PROXY protocol");
                    return;
                }
                Err(_) => {
                    self.count("signet_proxy_handshakes_total", "timeout");
                    tracing::warn!(timeout = ?self.limits.handshake_timeout, "connection rejected: no PROXY protocol header in time");
                    return;
                }
            }
        }
        // Futures only some connections or only the handshake need are
        // boxed: a connection's task keeps the size of its largest await
        // point for its whole life (see BENCHMARKS.md, memory per
        // connection).
        let mut tls = match Box::pin(tokio::time::timeout(self.limits.handshake_timeout, async {
            let tls = acceptor
                .accept(ReadAhead::with_prefix(stream, prefix))
                .await?;
            crate::tls::recheck_resumed_client(verifier, tls.get_ref().1)?;
            Ok::<_, std::io::Error>(tls)
        }))
        .await
        {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                let class = crate::tls::failure_class(&e);
                self.count("signet_proxy_handshakes_total", class);
                let reason = crate::tls::failure_reason(&e);
                tracing::warn!(%reason, class, "connection rejected: TLS handshake failed");
                return;
            }
            Err(_) => {
                self.count("signet_proxy_handshakes_total", "timeout");
                tracing::warn!(timeout = ?self.limits.handshake_timeout, "connection rejected: TLS handshake timed out");
                return;
            }
        };
        let conn = tls.get_ref().1;
        self.count("signet_proxy_handshakes_total", "ok");
        self.count_resumed(conn.handshake_kind());
        let Some(peer_leaf) = conn.peer_certificates().and_then(|c| c.first()).cloned() else {
            // The verifier requires a certificate; this cannot happen.
            self.count("signet_proxy_handshakes_total", "no_peer_certificate");
            return;
        };
        let peer_id = match signet_identity::x509_svid::inspect_leaf(&peer_leaf) {
            Ok(info) => info.id,
            Err(e) => {
                tracing::warn!(reason = %e, "connection rejected: peer certificate");
                return;
            }
        };
        let own_id = self
            .identity
            .current()
            .map(|c| c.id.to_string())
            .unwrap_or_default();
        let mut input = InputBuilder::default()
            .peer_id(peer_id.as_str())
            .own_id(own_id.clone());
        if let Some(peer) = peer {
            input = input.source(peer);
        }
        input = input.tls(
            conn.protocol_version().map(tls_version_name),
            conn.negotiated_cipher_suite()
                .and_then(|c| c.suite().as_str())
                .map(str::to_string),
            conn.server_name().map(str::to_string),
            conn.alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
        );
        if let Some(local) = local {
            input = input.destination(local);
        }
        tracing::debug!(peer_id = %peer_id, "handshake complete");
        if let Some(forwarder) = http.clone() {
            let ctx = crate::http::ConnContext {
                peer_id: peer_id.to_string(),
                own_id,
                peer_cert_hash: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&peer_leaf)),
                input,
                policy: self.policy.clone(),
            };
            Box::pin(forwarder.serve(tls, ctx, self.shutdown.clone())).await;
            return;
        }
        if let Some(policy) = &self.policy {
            let doc = input.build();
            let started = Instant::now();
            let decision = policy.evaluate_connection(&doc);
            histogram!("signet_proxy_policy_eval_seconds", "listener" => self.name.to_string())
                .record(started.elapsed().as_secs_f64());
            signet_policy::audit(&decision, &doc);
            if !decision.allow {
                self.count("signet_proxy_decisions_total", "deny");
                tracing::warn!(peer_id = %peer_id, reason = decision.reason.as_deref().unwrap_or("policy denied"), revision = %decision.revision, "connection rejected: policy denied");
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
                return;
            }
            self.count("signet_proxy_decisions_total", "allow");
        }
        // The leaf's DER was only needed to authorize: give it back before
        // the connection settles into its (long) relay.
        drop(peer_leaf);
        let app = match Box::pin(tokio::time::timeout(self.limits.connect_timeout, async {
            let mut app = connect(to).await?;
            if let Some(version) = proxy_protocol_to_app {
                let header = crate::proxy_protocol::encode(*version, peer, local)?;
                app.write_all(&header).await?;
            }
            Ok::<_, std::io::Error>(app)
        }))
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                self.count("signet_proxy_connections_total", "upstream_error");
                tracing::error!(app = %to, error = %e, "cannot reach the app");
                return;
            }
            Err(_) => {
                self.count("signet_proxy_connections_total", "upstream_timeout");
                tracing::error!(app = %to, "connecting to the app timed out");
                return;
            }
        };
        self.count("signet_proxy_connections_total", "accepted");
        tracing::info!(peer_id = %peer_id, "connection accepted");
        let r = relay(
            &mut tls,
            app,
            self.limits.idle_timeout,
            self.shutdown.aborted(),
        )
        .await;
        self.bytes(r.tls_to_plain, r.plain_to_tls);
        tracing::info!(peer_id = %peer_id, bytes_in = r.tls_to_plain, bytes_out = r.plain_to_tls, ended_by = r.ended_by.as_deref().unwrap_or("close"), "connection closed");
    }

    fn bytes(&self, received: u64, sent: u64) {
        counter!("signet_proxy_bytes_total", "listener" => self.name.to_string(), "direction" => "received").increment(received);
        counter!("signet_proxy_bytes_total", "listener" => self.name.to_string(), "direction" => "sent").increment(sent);
    }

    async fn outbound(
        &self,
        connector: &TlsConnector,
        verifier: &SpiffeVerifier,
        to: &Remote,
        name: &rustls::pki_types::ServerName<'static>,
        server_id: &str,
        app: Stream,
    ) {
        let remote = match Box::pin(tokio::time::timeout(self.limits.connect_timeout, async {
            match to {
                Remote::Tcp { host, port } => {
                    let s = TcpStream::connect((host.as_str(), *port)).await?;
                    let _ = s.set_nodelay(true);
                    Ok(Either::Left(s))
                }
                Remote::Unix(e) => connect(e).await,
            }
        }))
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                self.count("signet_proxy_connections_total", "upstream_error");
                tracing::error!(remote = %to, error = %e, "cannot reach the server");
                return;
            }
            Err(_) => {
                self.count("signet_proxy_connections_total", "upstream_timeout");
                tracing::error!(remote = %to, "connecting to the server timed out");
                return;
            }
        };
        let mut tls = match Box::pin(tokio::time::timeout(self.limits.handshake_timeout, async {
            let tls = connector
                .connect(name.clone(), ReadAhead::new(remote))
                .await?;
            crate::tls::recheck_resumed_server(verifier, tls.get_ref().1, name)?;
            Ok::<_, std::io::Error>(tls)
        }))
        .await
        {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                let class = crate::tls::failure_class(&e);
                self.count("signet_proxy_handshakes_total", class);
                let reason = crate::tls::failure_reason(&e);
                tracing::warn!(server_id, %reason, class, "server rejected: TLS handshake failed");
                return;
            }
            Err(_) => {
                self.count("signet_proxy_handshakes_total", "timeout");
                tracing::warn!(server_id, "server rejected: TLS handshake timed out");
                return;
            }
        };
        self.count("signet_proxy_handshakes_total", "ok");
        self.count_resumed(tls.get_ref().1.handshake_kind());
        self.count("signet_proxy_connections_total", "accepted");
        let r = relay(
            &mut tls,
            app,
            self.limits.idle_timeout,
            self.shutdown.aborted(),
        )
        .await;
        self.bytes(r.tls_to_plain, r.plain_to_tls);
        tracing::info!(
            server_id,
            bytes_out = r.plain_to_tls,
            bytes_in = r.tls_to_plain,
            ended_by = r.ended_by.as_deref().unwrap_or("close"),
            "connection closed"
        );
    }
}

fn tls_version_name(v: rustls::ProtocolVersion) -> String {
    match v {
        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3".into(),
        rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2".into(),
        other => format!("{other:?}"),
    }
}
