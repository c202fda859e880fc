//! Sidecar configuration: a TOML file with one `[[listener]]` table per
//! listener, or the same keys as command-line flags for a single listener.
//! Loading reports every problem at once and binds nothing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use signet_identity::{SpiffeId, TrustDomain};

use crate::pattern::IdPattern;

/// Per-listener limits; the defaults suit a sidecar in front of one app.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_ENTRYPOINT: &str = "signet/authz/allow";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid proxy configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

/// The file as written.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyFile {
    /// Agent socket (Workload API); `socket` is its older name.
    #[serde(alias = "socket")]
    pub agent_socket: Option<PathBuf>,
    /// Health and metrics endpoint (`/ready`, `/live`, `/metrics`).
    pub admin_listen: Option<String>,
    pub drain_timeout: Option<String>,
    /// Which of this workload's SVIDs to present (default: the first).
    pub svid_id: Option<String>,
    /// Connection worker threads (default: one per core).
    pub workers: Option<usize>,
    #[serde(default, rename = "listener")]
    pub listeners: Vec<ListenerFile>,
}

/// A string or a list of strings.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// One listener as written.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerFile {
    pub name: Option<String>,
    /// `inbound` (mTLS in, plaintext to the app) or `outbound` (plaintext
    /// from the app, mTLS out).
    pub mode: Option<String>,
    pub listen: Option<String>,
    pub to: Option<String>,
    /// Named as the flag (`--allow-id`); `allow_ids` is the older name.
    #[serde(default, rename = "allow_id", alias = "allow_ids")]
    pub allow_ids: Vec<String>,
    /// Named as the flag (`--allow-trust-domain`); `allow_trust_domains`
    /// is the older name.
    #[serde(default, rename = "allow_trust_domain", alias = "allow_trust_domains")]
    pub allow_trust_domains: Vec<String>,
    pub policy: Option<PathBuf>,
    pub entrypoint: Option<String>,
    pub policy_data: Option<PathBuf>,
    #[serde(default)]
    pub http: bool,
    /// HTTP mode: pass encoded slashes and backslashes (%2F, %5C) in paths
    /// to the app instead of answering 400. Insecure: the policy and the
    /// app may read such a path differently.
    #[serde(default)]
    pub insecure_keep_escaped_slashes: bool,
    /// SPIFFE IDs or patterns the server may present (a string or a list).
    #[serde(default, deserialize_with = "one_or_many")]
    pub server_id: Vec<String>,
    /// Or any server of these trust domains (a string or a list).
    #[serde(default, deserialize_with = "one_or_many")]
    pub server_trust_domain: Vec<String>,
    pub sni: Option<String>,
    #[serde(default)]
    pub tls12: bool,
    pub connect_timeout: Option<String>,
    pub handshake_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub max_connections: Option<usize>,
    pub decision_cache: Option<usize>,
    /// HTTP mode: the protocol spoken to the app: `http1` (default),
    /// `http2` (cleartext, prior knowledge) or `auto` (the caller's).
    pub app_protocol: Option<String>,
    /// A `unix:` listen socket's mode, octal (default 0660).
    pub listen_mode: Option<String>,
    /// A `unix:` listen socket's owner: `USER`, `USER:GROUP` or `:GROUP`
    /// (names or numeric IDs; default: this process's).
    pub listen_owner: Option<String>,
    /// Inbound TCP mode: send the caller's address to the app in a PROXY
    /// protocol header, `v1` (text) or `v2` (binary).
    pub proxy_protocol_to_app: Option<String>,
    /// Inbound: every connection starts with a PROXY protocol header (v1 or
    /// v2) from the load balancer in front; its source address is the
    /// caller's.
    #[serde(default)]
    pub accept_proxy_protocol: bool,
}

/// An address to listen on or connect to: `IP:PORT` or `unix:/PATH`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl Endpoint {
    /// Parses `IP:PORT` or `unix:/ABSOLUTE/PATH`.
    pub fn parse(s: &str) -> Result<Endpoint, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            let path = Path::new(path);
            if !path.is_absolute() {
                return Err(format!("{s:?}: a unix: socket path must be absolute"));
            }
            return Ok(Endpoint::Unix(path.to_path_buf()));
        }
        s.parse().map(Endpoint::Tcp).map_err(|_| {
            format!("{s:?} is not an IP address and port (e.g. 127.0.0.1:8443) or unix:/PATH")
        })
    }

    pub fn tcp(&self) -> Option<SocketAddr> {
        match self {
            Endpoint::Tcp(a) => Some(*a),
            Endpoint::Unix(_) => None,
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp(a) => write!(f, "{a}"),
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// What the sidecar speaks to the app in HTTP mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AppProtocol {
    /// HTTP/1.1 keep-alive, whatever the caller speaks.
    #[default]
    Http1,
    /// HTTP/2 over cleartext with prior knowledge (gRPC apps).
    Http2,
    /// The caller's protocol: HTTP/2 callers get HTTP/2 to the app.
    Auto,
}

/// The PROXY protocol header version sent to the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtocol {
    V1,
    V2,
}

/// Mode and owner of a `unix:` listen socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnixSocketOptions {
    pub mode: u32,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

impl Default for UnixSocketOptions {
    fn default() -> Self {
        UnixSocketOptions {
            mode: 0o660,
            uid: None,
            gid: None,
        }
    }
}

/// A checked configuration.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The agent socket the config file names, if any (flags and the
    /// environment come first).
    pub agent_socket: Option<PathBuf>,
    pub admin_listen: Option<SocketAddr>,
    pub drain_timeout: Duration,
    pub svid_id: Option<SpiffeId>,
    /// Connection worker threads, each a single-threaded runtime that
    /// accepts on its own socket of every listener and serves what it
    /// accepts (`None`: one per core).
    pub workers: Option<usize>,
    pub listeners: Vec<ListenerConfig>,
}

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub name: String,
    pub listen: Endpoint,
    /// For a `unix:` listen address.
    pub unix: UnixSocketOptions,
    /// Every connection starts with a PROXY protocol header (inbound).
    pub accept_proxy_protocol: bool,
    pub limits: Limits,
    pub mode: Mode,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub connect_timeout: Duration,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// Accept TLS 1.2 as well as 1.3.
    pub tls12: bool,
}

#[derive(Debug, Clone)]
pub enum Mode {
    Inbound(Inbound),
    Outbound(Outbound),
}

#[derive(Debug, Clone)]
pub struct Inbound {
    /// The app, plaintext on loopback or a Unix socket.
    pub to: Endpoint,
    /// SPIFFE IDs or patterns (see [`crate::pattern`]).
    pub allow_ids: Vec<IdPattern>,
    pub allow_trust_domains: Vec<TrustDomain>,
    pub policy: Option<PolicyRef>,
    /// Authorize and forward per HTTP request (HTTP/1.1 and HTTP/2).
    pub http: bool,
    /// HTTP mode: keep %2F and %5C in paths rather than refuse them.
    pub insecure_keep_escaped_slashes: bool,
    /// HTTP mode: the protocol spoken to the app.
    pub app_protocol: AppProtocol,
    /// TCP mode: a PROXY protocol header to the app first.
    pub proxy_protocol_to_app: Option<ProxyProtocol>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRef {
    pub path: PathBuf,
    pub entrypoint: String,
    pub data: Option<PathBuf>,
    /// Connection-level decisions cached (0 = off).
    pub decision_cache: usize,
}

#[derive(Debug, Clone)]
pub struct Outbound {
    /// `host:port` of the remote sidecar or Envoy, or `unix:/PATH`.
    pub to: String,
    /// SPIFFE IDs or patterns the server may present...
    pub server_ids: Vec<IdPattern>,
    /// ... or any server of these trust domains.
    pub server_trust_domains: Vec<TrustDomain>,
    pub sni: Option<String>,
}

impl ProxyConfig {
    /// Reads and checks a TOML file.
    pub fn from_file(path: &std::path::Path) -> Result<ProxyConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let file: ProxyFile = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        ProxyConfig::try_from(file)
    }
}

fn duration(
    problems: &mut Vec<String>,
    what: &str,
    value: Option<&str>,
    default: Duration,
) -> Duration {
    match value {
        None => default,
        Some(s) => match humantime::parse_duration(s) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                problems.push(format!("{what}: must be more than zero"));
                default
            }
            Err(e) => {
                problems.push(format!("{what}: {s:?} is not a duration ({e})"));
                default
            }
        },
    }
}

fn socket_addr(problems: &mut Vec<String>, what: &str, value: Option<&str>) -> Option<SocketAddr> {
    match value {
        None => {
            problems.push(format!("{what}: missing"));
            None
        }
        Some(s) => match s.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                problems.push(format!(
                    "{what}: {s:?} is not an IP address and port (e.g. 127.0.0.1:8443)"
                ));
                None
            }
        },
    }
}

fn endpoint(problems: &mut Vec<String>, what: &str, value: Option<&str>) -> Option<Endpoint> {
    match value {
        None => {
            problems.push(format!("{what}: missing"));
            None
        }
        Some(s) => Endpoint::parse(s)
            .map_err(|e| problems.push(format!("{what}: {e}")))
            .ok(),
    }
}

/// `USER`, `USER:GROUP` or `:GROUP`, by name or numeric ID.
fn owner(s: &str) -> Result<(Option<u32>, Option<u32>), String> {
    use nix::unistd::{Group, User};
    let (user, group) = match s.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (s, None),
    };
    let uid = match user {
        "" => None,
        u => Some(match u.parse::<u32>() {
            Ok(n) => n,
            Err(_) => match User::from_name(u) {
                Ok(Some(found)) => found.uid.as_raw(),
                Ok(None) => return Err(format!("{s:?}: no user named {u:?}")),
                Err(e) => return Err(format!("{s:?}: cannot look up user {u:?}: {e}")),
            },
        }),
    };
    let gid = match group {
        None | Some("") => None,
        Some(g) => Some(match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => match Group::from_name(g) {
                Ok(Some(found)) => found.gid.as_raw(),
                Ok(None) => return Err(format!("{s:?}: no group named {g:?}")),
                Err(e) => return Err(format!("{s:?}: cannot look up group {g:?}: {e}")),
            },
        }),
    };
    if uid.is_none() && gid.is_none() {
        return Err(format!("{s:?}: expected USER, USER:GROUP or :GROUP"));
    }
    Ok((uid, gid))
}

/// More connection workers than this is a typo.
const MAX_WORKERS: usize = 1024;

impl TryFrom<ProxyFile> for ProxyConfig {
    type Error = ConfigError;

    fn try_from(file: ProxyFile) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();
        let admin_listen = file
            .admin_listen
            .as_deref()
            .and_then(|a| socket_addr(&mut problems, "admin_listen", Some(a)));
        let drain_timeout = duration(
            &mut problems,
            "drain_timeout",
            file.drain_timeout.as_deref(),
            DEFAULT_DRAIN_TIMEOUT,
        );
        let svid_id = file
            .svid_id
            .as_deref()
            .and_then(|s| match SpiffeId::parse(s) {
                Ok(id) => Some(id),
                Err(e) => {
                    problems.push(format!("svid_id: {s:?}: {e}"));
                    None
                }
            });
        if let Some(n) = file.workers
            && !(1..=MAX_WORKERS).contains(&n)
        {
            problems.push(format!("workers: {n}: must be between 1 and {MAX_WORKERS}"));
        }
        if file.listeners.is_empty() {
            problems.push("no listener: add a [[listener]] table".into());
        }
        let mut listeners = Vec::new();
        for (i, l) in file.listeners.into_iter().enumerate() {
            let name = l.name.clone().unwrap_or_else(|| format!("listener{i}"));
            if let Some(listener) = check_listener(&mut problems, name, l) {
                listeners.push(listener);
            }
        }
        let mut seen = std::collections::HashSet::new();
        // Port 0 asks the OS for a free port: never a clash.
        for l in listeners
            .iter()
            .filter(|l| l.listen.tcp().is_none_or(|a| a.port() != 0))
        {
            if !seen.insert(&l.listen) {
                problems.push(format!("{}: {} is used twice", l.name, l.listen));
            }
        }
        if !problems.is_empty() {
            return Err(ConfigError::Invalid(problems));
        }
        Ok(ProxyConfig {
            agent_socket: file.agent_socket,
            admin_listen,
            drain_timeout,
            svid_id,
            workers: file.workers,
            listeners,
        })
    }
}

fn check_listener(
    problems: &mut Vec<String>,
    name: String,
    l: ListenerFile,
) -> Option<ListenerConfig> {
    let before = problems.len();
    let at = |key: &str| format!("{name}.{key}");
    let listen = endpoint(problems, &at("listen"), l.listen.as_deref());
    let mut unix = UnixSocketOptions::default();
    if let Some(m) = &l.listen_mode {
        match u32::from_str_radix(m.trim_start_matches("0o"), 8) {
            Ok(mode) if mode <= 0o777 => unix.mode = mode,
            _ => problems.push(format!(
                "{}: {m:?} is not a file mode in octal (e.g. 0660)",
                at("listen_mode")
            )),
        }
    }
    if let Some(o) = &l.listen_owner {
        match owner(o) {
            Ok((uid, gid)) => (unix.uid, unix.gid) = (uid, gid),
            Err(e) => problems.push(format!("{}: {e}", at("listen_owner"))),
        }
    }
    if (l.listen_mode.is_some() || l.listen_owner.is_some())
        && !matches!(listen, Some(Endpoint::Unix(_)))
    {
        problems.push(format!(
            "{}: listen_mode and listen_owner are for a unix: listen address",
            at("listen")
        ));
    }
    let limits = Limits {
        connect_timeout: duration(
            problems,
            &at("connect_timeout"),
            l.connect_timeout.as_deref(),
            DEFAULT_CONNECT_TIMEOUT,
        ),
        handshake_timeout: duration(
            problems,
            &at("handshake_timeout"),
            l.handshake_timeout.as_deref(),
            DEFAULT_HANDSHAKE_TIMEOUT,
        ),
        idle_timeout: duration(
            problems,
            &at("idle_timeout"),
            l.idle_timeout.as_deref(),
            DEFAULT_IDLE_TIMEOUT,
        ),
        max_connections: match l.max_connections {
            Some(0) => {
                problems.push(format!("{}: must be at least 1", at("max_connections")));
                1
            }
            Some(n) => n,
            None => DEFAULT_MAX_CONNECTIONS,
        },
        tls12: l.tls12,
    };
    let mode = match l.mode.as_deref() {
        Some("inbound") => {
            let to = endpoint(problems, &at("to"), l.to.as_deref());
            let mut allow_ids = Vec::new();
            for s in &l.allow_ids {
                match IdPattern::parse(s) {
                    Ok(id) => allow_ids.push(id),
                    Err(e) => problems.push(format!("{}: {s:?}: {e}", at("allow_id"))),
                }
            }
            let mut allow_trust_domains = Vec::new();
            for s in &l.allow_trust_domains {
                match TrustDomain::parse(s) {
                    Ok(td) => allow_trust_domains.push(td),
                    Err(e) => problems.push(format!("{}: {s:?}: {e}", at("allow_trust_domain"))),
                }
            }
            let policy = l.policy.clone().map(|path| PolicyRef {
                path,
                entrypoint: l
                    .entrypoint
                    .clone()
                    .unwrap_or_else(|| DEFAULT_ENTRYPOINT.into()),
                data: l.policy_data.clone(),
                decision_cache: l.decision_cache.unwrap_or(10_000),
            });
            if l.allow_ids.is_empty() && l.allow_trust_domains.is_empty() && policy.is_none() {
                problems.push(format!(
                    "{name}: say who may connect: allow_id, allow_trust_domain or policy \
                     (--allow-id, --allow-trust-domain, --policy)"
                ));
            }
            for key in [
                ("server_id", !l.server_id.is_empty()),
                ("server_trust_domain", !l.server_trust_domain.is_empty()),
                ("sni", l.sni.is_some()),
            ] {
                if key.1 {
                    problems.push(format!("{}: only for outbound listeners", at(key.0)));
                }
            }
            if l.insecure_keep_escaped_slashes && !l.http {
                problems.push(format!(
                    "{}: only with http = true",
                    at("insecure_keep_escaped_slashes")
                ));
            }
            let app_protocol = match l.app_protocol.as_deref() {
                None | Some("http1") => AppProtocol::Http1,
                Some("http2") => AppProtocol::Http2,
                Some("auto") => AppProtocol::Auto,
                Some(other) => {
                    problems.push(format!(
                        "{}: {other:?} is not http1, http2 or auto",
                        at("app_protocol")
                    ));
                    AppProtocol::Http1
                }
            };
            if l.app_protocol.is_some() && !l.http {
                problems.push(format!("{}: only with http = true", at("app_protocol")));
            }
            let proxy_protocol_to_app = match l.proxy_protocol_to_app.as_deref() {
                None => None,
                Some("v1") => Some(ProxyProtocol::V1),
                Some("v2") => Some(ProxyProtocol::V2),
                Some(other) => {
                    problems.push(format!(
                        "{}: {other:?} is neither v1 nor v2",
                        at("proxy_protocol_to_app")
                    ));
                    None
                }
            };
            if l.proxy_protocol_to_app.is_some() && l.http {
                problems.push(format!(
                    "{}: only in TCP mode (without http = true): in HTTP mode requests \
                     to the app share connections",
                    at("proxy_protocol_to_app")
                ));
            }
            to.map(|to| {
                Mode::Inbound(Inbound {
                    to,
                    allow_ids,
                    allow_trust_domains,
                    policy,
                    http: l.http,
                    insecure_keep_escaped_slashes: l.insecure_keep_escaped_slashes,
                    app_protocol,
                    proxy_protocol_to_app,
                })
            })
        }
        Some("outbound") => {
            let to = match l.to.as_deref() {
                Some(t) if host_port(t).is_some() => Some(t.to_string()),
                Some(t) if t.starts_with("unix:") => match Endpoint::parse(t) {
                    Ok(_) => Some(t.to_string()),
                    Err(e) => {
                        problems.push(format!("{}: {e}", at("to")));
                        None
                    }
                },
                Some(t) => {
                    problems.push(format!(
                        "{}: {t:?} is not host:port or unix:/PATH",
                        at("to")
                    ));
                    None
                }
                None => {
                    problems.push(format!("{}: missing", at("to")));
                    None
                }
            };
            let mut server_ids = Vec::new();
            for s in &l.server_id {
                match IdPattern::parse(s) {
                    Ok(id) => server_ids.push(id),
                    Err(e) => problems.push(format!("{}: {s:?}: {e}", at("server_id"))),
                }
            }
            let mut server_trust_domains = Vec::new();
            for s in &l.server_trust_domain {
                match TrustDomain::parse(s) {
                    Ok(td) => server_trust_domains.push(td),
                    Err(e) => problems.push(format!("{}: {s:?}: {e}", at("server_trust_domain"))),
                }
            }
            let known = if l.server_id.is_empty() && l.server_trust_domain.is_empty() {
                problems.push(format!(
                    "{}: missing (the SPIFFE ID the server must present; or server_trust_domain)",
                    at("server_id")
                ));
                false
            } else {
                server_ids.len() == l.server_id.len()
                    && server_trust_domains.len() == l.server_trust_domain.len()
            };
            for key in [
                ("allow_id", !l.allow_ids.is_empty()),
                ("allow_trust_domain", !l.allow_trust_domains.is_empty()),
                ("policy", l.policy.is_some()),
                ("http", l.http),
                (
                    "insecure_keep_escaped_slashes",
                    l.insecure_keep_escaped_slashes,
                ),
                ("app_protocol", l.app_protocol.is_some()),
                ("proxy_protocol_to_app", l.proxy_protocol_to_app.is_some()),
                ("accept_proxy_protocol", l.accept_proxy_protocol),
            ] {
                if key.1 {
                    problems.push(format!("{}: only for inbound listeners", at(key.0)));
                }
            }
            match to {
                Some(to) if known => Some(Mode::Outbound(Outbound {
                    to,
                    server_ids,
                    server_trust_domains,
                    sni: l.sni,
                })),
                _ => None,
            }
        }
        Some(other) => {
            problems.push(format!(
                "{}: {other:?} is neither \"inbound\" nor \"outbound\"",
                at("mode")
            ));
            None
        }
        None => {
            problems.push(format!("{}: missing (inbound or outbound)", at("mode")));
            None
        }
    };
    if problems.len() > before {
        return None;
    }
    Some(ListenerConfig {
        name,
        listen: listen?,
        unix,
        accept_proxy_protocol: l.accept_proxy_protocol,
        limits,
        mode: mode?,
    })
}

/// Splits `host:port` (`[v6]:port` too).
pub fn host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    (!host.is_empty()).then_some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ProxyConfig, ConfigError> {
        ProxyConfig::try_from(toml::from_str::<ProxyFile>(text).unwrap())
    }

    #[test]
    fn a_good_file_parses() {
        let c = parse(
            r#"
            admin_listen = "127.0.0.1:9901"
            workers = 3
            [[listener]]
            name = "in"
            mode = "inbound"
            listen = "0.0.0.0:8443"
            to = "127.0.0.1:8080"
            allow_trust_domains = ["example.org"]  # the older name still reads
            http = true
            idle_timeout = "5m"
            [[listener]]
            mode = "outbound"
            listen = "127.0.0.1:9000"
            to = "db.internal:5432"
            server_id = "spiffe://example.org/db"
            "#,
        )
        .unwrap();
        assert_eq!(c.listeners.len(), 2);
        assert!(
            matches!(&c.listeners[0].mode, Mode::Inbound(i) if i.allow_trust_domains.len() == 1)
        );
        assert_eq!(c.workers, Some(3));
        assert_eq!(c.listeners[0].limits.idle_timeout, Duration::from_secs(300));
        assert!(matches!(&c.listeners[0].mode, Mode::Inbound(i) if i.http));
        assert!(
            matches!(&c.listeners[1].mode, Mode::Outbound(o) if o.server_ids[0].to_string() == "spiffe://example.org/db")
        );
        assert_eq!(c.listeners[1].name, "listener1");
    }

    #[test]
    fn server_ids_and_trust_domains_read_as_one_or_a_list() {
        let c = parse(
            r#"
            [[listener]]
            mode = "outbound"
            listen = "127.0.0.1:9000"
            to = "db.internal:5432"
            server_id = ["spiffe://example.org/db", "spiffe://example.org/ns/*/sa/db"]
            server_trust_domain = "partner.test"
            [[listener]]
            mode = "inbound"
            listen = "127.0.0.1:9001"
            to = "127.0.0.1:8080"
            allow_id = ["spiffe://example.org/ns/prod/**"]
            "#,
        )
        .unwrap();
        let Mode::Outbound(o) = &c.listeners[0].mode else {
            panic!("not outbound");
        };
        assert_eq!(o.server_ids.len(), 2);
        assert_eq!(o.server_trust_domains[0].as_str(), "partner.test");
        let Mode::Inbound(i) = &c.listeners[1].mode else {
            panic!("not inbound");
        };
        assert!(!i.allow_ids[0].is_exact());
    }

    #[test]
    fn every_problem_is_named() {
        let err = parse(
            r#"
            workers = 0
            [[listener]]
            mode = "inbound"
            listen = "nowhere"
            to = "127.0.0.1:8080"
            allow_id = ["spiffe://Bad/x"]
            idle_timeout = "soon"
            insecure_keep_escaped_slashes = true
            [[listener]]
            mode = "outbound"
            listen = "127.0.0.1:9000"
            to = "no-port"
            insecure_keep_escaped_slashes = true
            "#,
        )
        .unwrap_err()
        .to_string();
        for needle in [
            "workers: 0: must be between 1 and 1024",
            "listener0.listen: \"nowhere\"",
            "listener0.allow_id: \"spiffe://Bad/x\"",
            "listener0.idle_timeout: \"soon\"",
            "listener1.to: \"no-port\"",
            "listener1.server_id: missing",
            "listener0.insecure_keep_escaped_slashes: only with http = true",
            "listener1.insecure_keep_escaped_slashes: only for inbound listeners",
        ] {
            assert!(err.contains(needle), "{needle} not in {err}");
        }
    }

    #[test]
    fn an_inbound_listener_must_say_who_may_connect() {
        let err = parse(
            "[[listener]]\nmode = \"inbound\"\nlisten = \"127.0.0.1:1\"\nto = \"127.0.0.1:2\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("say who may connect"), "{err}");
    }

    #[test]
    fn an_address_used_twice_is_named_but_port_zero_is_not() {
        let twice = |port: u16| {
            let l = format!(
                "[[listener]]\nmode = \"outbound\"\nlisten = \"127.0.0.1:{port}\"\nto = \"a:1\"\nserver_id = \"spiffe://td/x\"\n"
            );
            parse(&[l.clone(), l].concat())
        };
        let err = twice(9000).unwrap_err().to_string();
        assert!(
            err.contains("listener1: 127.0.0.1:9000 is used twice"),
            "{err}"
        );
        assert_eq!(twice(0).unwrap().listeners.len(), 2);
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = toml::from_str::<ProxyFile>("[[listener]]\nlisen = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("lisen"), "{err}");
    }

    #[test]
    fn host_port_splits() {
        assert_eq!(host_port("a.b:80"), Some(("a.b", 80)));
        assert_eq!(host_port("[::1]:443"), Some(("::1", 443)));
        assert_eq!(host_port("a.b"), None);
        assert_eq!(host_port(":80"), None);
    }
}
