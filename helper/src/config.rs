//! The helper's settings: flags over the TOML file, checked with every
//! problem reported at once.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::bail;
use clap::Args;
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use signet_workload::atomic_file::{self, Owner};
use signet_workload::settings::overlay;
use signet_workload::{SocketLocation, SocketRole};

use crate::Output;

/// How long `--once` waits for the first SVID by default.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a reload command may run before it is killed.
pub(crate) const CMD_TIMEOUT: Duration = Duration::from_secs(60);
/// Retry delays after a failed write or JWT fetch.
pub(crate) const MIN_RETRY: Duration = Duration::from_millis(500);
pub(crate) const MAX_RETRY: Duration = Duration::from_secs(30);
/// The file name `--once` and the daemon probe the directory with.
pub(crate) const PROBE_FILE: &str = ".signet-helper-probe";

#[derive(Debug, Args)]
pub struct HelperArgs {
    /// TOML file with the same keys as the flags (snake_case); flags override it.
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    /// Check the configuration and that the directory is writable, then exit.
    #[arg(long)]
    pub(crate) check_config: bool,
    /// How events (files written, reloads) are printed on stdout.
    #[arg(long, value_enum, default_value = "text")]
    pub(crate) output: Output,
    #[command(flatten)]
    pub(crate) settings: HelperSettings,
}

/// The configuration file, and the flags: one key per flag.
#[derive(Debug, Default, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HelperSettings {
    #[arg(long, alias = "socket", value_parser = signet_workload::location::parse_socket_path, help = signet_workload::location::AGENT_SOCKET_HELP)]
    #[serde(alias = "socket")]
    pub(crate) agent_socket: Option<PathBuf>,
    /// `--agent-socket` when given as a flag: it comes before the
    /// environment, which comes before the file's `agent_socket`.
    #[arg(skip)]
    #[serde(skip)]
    pub(crate) agent_socket_flag: Option<PathBuf>,
    /// Directory to write the files into (must exist).
    #[arg(long)]
    pub(crate) dir: Option<PathBuf>,
    /// File name of the X509-SVID chain, leaf first [default: svid.pem].
    #[arg(long)]
    pub(crate) svid_file: Option<String>,
    /// File name of the SVID's private key, PKCS#8 PEM [default: svid_key.pem].
    #[arg(long)]
    pub(crate) key_file: Option<String>,
    /// File name of the trust bundle (CA certificates, PEM) [default: bundle.pem].
    #[arg(long)]
    pub(crate) bundle_file: Option<String>,
    /// Also put the federated trust domains' CA certificates into the bundle file.
    #[arg(long)]
    #[serde(default)]
    pub(crate) include_federated: bool,
    /// Mode of the certificate and bundle files, octal [default: 0644].
    #[arg(long)]
    pub(crate) cert_mode: Option<String>,
    /// Mode of the key and JWT files, octal, nothing for others [default: 0600].
    #[arg(long)]
    pub(crate) key_mode: Option<String>,
    /// Owner of the written files, a user name or uid (needs root), e.g. postgres.
    #[arg(long)]
    pub(crate) owner: Option<String>,
    /// Group of the written files, a group name or gid (needs root or membership).
    #[arg(long)]
    pub(crate) group: Option<String>,
    /// Command to run after every update, e.g. /usr/bin/pg_ctl.
    #[arg(long)]
    pub(crate) cmd: Option<String>,
    /// Arguments of --cmd, split at whitespace (in the file also a list of strings).
    #[arg(long)]
    pub(crate) cmd_args: Option<CmdArgs>,
    /// Signal to send after every update to the pid in --pid-file, e.g. HUP.
    #[arg(long)]
    pub(crate) signal: Option<String>,
    /// File whose first line is the pid to signal, e.g. PostgreSQL's postmaster.pid.
    #[arg(long)]
    pub(crate) pid_file: Option<PathBuf>,
    /// Audience of a JWT-SVID to keep fresh (repeatable; one token file per audience).
    #[arg(long = "jwt-audience")]
    #[serde(default)]
    pub(crate) jwt_audience: Vec<String>,
    /// File name of the JWT-SVID when there is one audience [default: jwt_svid.token].
    #[arg(long)]
    pub(crate) jwt_file: Option<String>,
    /// Write this SPIFFE ID's SVID when the workload has several [default: the first].
    #[arg(long)]
    pub(crate) svid_id: Option<String>,
    /// Write the files once and exit (for init steps).
    #[arg(long)]
    #[serde(default)]
    pub(crate) once: bool,
    /// How long --once waits for the first SVID, e.g. 30s [default: 10s].
    #[arg(long)]
    pub(crate) timeout: Option<String>,
    /// Serve GET /live and /ready (HTTP) on this address, e.g. 127.0.0.1:8088 (not with --once).
    #[arg(long)]
    pub(crate) health_listen: Option<String>,
}

/// Command arguments: a whitespace-separated string (the flag, or the file
/// in spiffe-helper's style) or a TOML list (arguments with spaces).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "CmdArgsFile")]
pub struct CmdArgs(Vec<String>);

#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum CmdArgsFile {
    Line(String),
    List(Vec<String>),
}

impl From<CmdArgsFile> for CmdArgs {
    fn from(f: CmdArgsFile) -> Self {
        match f {
            CmdArgsFile::Line(s) => s.parse().unwrap_or_default(),
            CmdArgsFile::List(v) => CmdArgs(v),
        }
    }
}

impl FromStr for CmdArgs {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(CmdArgs(s.split_whitespace().map(str::to_owned).collect()))
    }
}

/// A checked helper configuration.
#[derive(Debug, Clone)]
pub struct HelperConfig {
    pub agent_socket: SocketLocation,
    pub dir: PathBuf,
    pub svid_file: String,
    pub key_file: String,
    pub bundle_file: String,
    pub include_federated: bool,
    pub cert_mode: u32,
    pub key_mode: u32,
    pub owner: Owner,
    pub cmd: Option<(String, Vec<String>)>,
    pub signal: Option<(Signal, PathBuf)>,
    pub jwts: Vec<JwtTarget>,
    pub svid_id: Option<String>,
    pub once: bool,
    pub timeout: Duration,
    pub health_listen: Option<SocketAddr>,
}

/// One JWT-SVID kept fresh in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtTarget {
    pub audience: String,
    pub file: String,
}

impl TryFrom<HelperSettings> for HelperConfig {
    type Error = anyhow::Error;

    /// Checks everything and reports every problem at once.
    fn try_from(s: HelperSettings) -> anyhow::Result<Self> {
        let mut problems: Vec<String> = Vec::new();
        let dir = s.dir.unwrap_or_else(|| {
            problems.push("dir is required: the directory to write the files into".into());
            PathBuf::new()
        });
        let mut names = BTreeSet::new();
        let mut file_name = |key: &str, value: Option<String>, default: &str| {
            let name = value.unwrap_or_else(|| default.to_owned());
            if let Err(why) = check_file_name(&name) {
                problems.push(format!("{key} {name:?}: {why}"));
            } else if !names.insert(name.clone()) {
                problems.push(format!("{key} {name:?}: another file has the same name"));
            }
            name
        };
        let svid_file = file_name("svid_file", s.svid_file, "svid.pem");
        let key_file = file_name("key_file", s.key_file, "svid_key.pem");
        let bundle_file = file_name("bundle_file", s.bundle_file, "bundle.pem");
        let mut jwts = Vec::new();
        match (s.jwt_audience.as_slice(), s.jwt_file) {
            ([], Some(_)) => problems.push("jwt_file is set but there is no jwt_audience".into()),
            ([], None) => {}
            ([one], file) => jwts.push(JwtTarget {
                audience: one.clone(),
                file: file_name("jwt_file", file, "jwt_svid.token"),
            }),
            (many, Some(_)) => problems.push(format!(
                "jwt_file names one file but there are {} audiences; leave it out to get jwt_svid.<audience>.token per audience",
                many.len()
            )),
            (many, None) => {
                for aud in many {
                    jwts.push(JwtTarget {
                        audience: aud.clone(),
                        file: file_name("jwt_audience", Some(jwt_file_for(aud)), ""),
                    });
                }
            }
        }
        if s.jwt_audience.iter().any(|a| a.trim().is_empty()) {
            problems.push("jwt_audience: an audience is empty".into());
        }
        let mut mode = |key: &str, value: Option<String>, default: u32, secret: bool| {
            let Some(text) = value else { return default };
            match parse_mode(&text) {
                Ok(m) if m & 0o400 == 0 => {
                    problems.push(format!(
                        "{key} {text:?}: the owner must be able to read the file"
                    ));
                    default
                }
                Ok(m) if secret && m & 0o007 != 0 => {
                    problems.push(format!(
                        "{key} {text:?}: other users could use the private key or token; use 0600 or 0640"
                    ));
                    default
                }
                Ok(m) => m,
                Err(why) => {
                    problems.push(format!("{key} {text:?}: {why}"));
                    default
                }
            }
        };
        let cert_mode = mode("cert_mode", s.cert_mode, 0o644, false);
        let key_mode = mode("key_mode", s.key_mode, atomic_file::SECRET_MODE, true);
        let mut owner = Owner::default();
        if let Some(o) = &s.owner {
            match lookup_user(o) {
                Ok(uid) => owner.uid = Some(uid),
                Err(why) => problems.push(format!("owner {o:?}: {why}")),
            }
        }
        if let Some(g) = &s.group {
            match lookup_group(g) {
                Ok(gid) => owner.gid = Some(gid),
                Err(why) => problems.push(format!("group {g:?}: {why}")),
            }
        }
        let cmd = match (s.cmd, s.cmd_args) {
            (Some(c), _) if c.trim().is_empty() => {
                problems.push("cmd is empty".into());
                None
            }
            (Some(c), args) => Some((c, args.unwrap_or_default().0)),
            (None, Some(_)) => {
                problems.push("cmd_args is set but there is no cmd".into());
                None
            }
            (None, None) => None,
        };
        let signal = match (s.signal, s.pid_file) {
            (Some(sig), Some(pid_file)) => match parse_signal(&sig) {
                Ok(sig) => Some((sig, pid_file)),
                Err(why) => {
                    problems.push(format!("signal {sig:?}: {why}"));
                    None
                }
            },
            (Some(_), None) => {
                problems.push("signal needs pid_file: the file holding the pid to signal".into());
                None
            }
            (None, Some(_)) => {
                problems.push("pid_file needs signal: the signal to send, e.g. HUP".into());
                None
            }
            (None, None) => None,
        };
        let timeout = match &s.timeout {
            None => DEFAULT_TIMEOUT,
            Some(t) => match humantime::parse_duration(t) {
                Ok(d) if !d.is_zero() => d,
                Ok(_) => {
                    problems.push(format!("timeout {t:?}: must be more than zero"));
                    DEFAULT_TIMEOUT
                }
                Err(e) => {
                    problems.push(format!("timeout {t:?}: {e}"));
                    DEFAULT_TIMEOUT
                }
            },
        };
        let health_listen = s.health_listen.as_ref().and_then(|a| match a.parse() {
            Ok(addr) => Some(addr),
            Err(_) => {
                problems.push(format!(
                    "health_listen {a:?}: not an IP address and port, e.g. 127.0.0.1:8088"
                ));
                None
            }
        });
        let agent_socket =
            SocketLocation::resolve(SocketRole::Agent, s.agent_socket_flag, s.agent_socket)
                .map_err(|e| problems.push(e.to_string()))
                .ok();
        let (Some(agent_socket), true) = (agent_socket, problems.is_empty()) else {
            bail!(
                "invalid helper configuration:\n  - {}",
                problems.join("\n  - ")
            );
        };
        Ok(HelperConfig {
            agent_socket,
            dir,
            svid_file,
            key_file,
            bundle_file,
            include_federated: s.include_federated,
            cert_mode,
            key_mode,
            owner,
            cmd,
            signal,
            jwts,
            svid_id: s.svid_id,
            once: s.once,
            timeout,
            health_listen,
        })
    }
}

/// A file name inside the directory: no paths, nothing hidden or special.
pub(crate) fn check_file_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty file name");
    }
    if name.contains('/') || name.contains('\0') {
        return Err("must be a file name, not a path");
    }
    if name.starts_with('.') {
        return Err("must not start with a dot");
    }
    Ok(())
}

/// `jwt_svid.<audience>.token`, the audience reduced to safe characters.
pub(crate) fn jwt_file_for(audience: &str) -> String {
    let safe: String = audience
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("jwt_svid.{safe}.token")
}

/// Octal `0644`, `644` or `0o644`.
pub(crate) fn parse_mode(text: &str) -> Result<u32, &'static str> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    if digits.is_empty() || !digits.chars().all(|c| ('0'..='7').contains(&c)) {
        return Err("not an octal mode such as 0644");
    }
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => Err("only permission bits (at most 0777) are allowed"),
    }
}

pub(crate) fn parse_signal(text: &str) -> Result<Signal, String> {
    if let Ok(n) = text.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| format!("{n} is not a signal number"));
    }
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&name).map_err(|_| "not a signal name such as HUP, USR1 or TERM".into())
}

pub fn lookup_user(text: &str) -> Result<u32, String> {
    if let Ok(uid) = text.parse::<u32>() {
        return Ok(uid);
    }
    match nix::unistd::User::from_name(text) {
        Ok(Some(u)) => Ok(u.uid.as_raw()),
        Ok(None) => Err("no such user".into()),
        Err(e) => Err(format!("cannot look the user up: {e}")),
    }
}

pub(crate) fn lookup_group(text: &str) -> Result<u32, String> {
    if let Ok(gid) = text.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(text) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err("no such group".into()),
        Err(e) => Err(format!("cannot look the group up: {e}")),
    }
}

impl HelperArgs {
    pub(crate) fn resolve(self) -> anyhow::Result<(HelperConfig, bool, Output)> {
        // The socket's flag comes before the environment, the file's after.
        let mut flags = self.settings;
        let socket_flag = flags.agent_socket.take();
        let mut settings = overlay(&flags, self.config.as_deref())?;
        settings.agent_socket_flag = socket_flag;
        let config = HelperConfig::try_from(settings)?;
        Ok((config, self.check_config, self.output))
    }
}
