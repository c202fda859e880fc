//! `signet helper`: writes this workload's X509-SVID, private key, trust
//! bundle and JWT-SVIDs to files, for programs that only read files
//! (PostgreSQL, nginx, JDBC), and reloads them (a command, or a signal to
//! the pid in a pid file) after every update. `--once` writes once and
//! exits, for init steps.
//!
//! Every write goes through [`signet_workload::atomic_file`]: a reader sees the
//! old file or the new one, and the key is never readable by others, not
//! even briefly. The identity comes from [`watch_x509`], which keeps one
//! FetchX509SVID stream open and retries with backoff while the agent is
//! unreachable.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};
use clap::Args;
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use serde_json::json;
use signet_identity::JwtSvid;
use signet_workload::atomic_file::{self, Owner};
use signet_workload::settings::overlay;
use signet_workload::{Backoff, SocketLocation, SocketRole};
use signet_workload::{X509Context, X509State, X509Watcher, fetch_jwt, watch_x509};
use tokio::sync::watch;

/// How the helper reports what it does on stdout.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    #[default]
    Text,
    Json,
}

/// How long `--once` waits for the first SVID by default.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a reload command may run before it is killed.
const CMD_TIMEOUT: Duration = Duration::from_secs(60);
/// Retry delays after a failed write or JWT fetch.
const MIN_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(30);
/// The file name `--once` and the daemon probe the directory with.
const PROBE_FILE: &str = ".signet-helper-probe";

#[derive(Debug, Args)]
pub struct HelperArgs {
    /// TOML file with the same keys as the flags (snake_case); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Check the configuration and that the directory is writable, then exit.
    #[arg(long)]
    check_config: bool,
    /// How events (files written, reloads) are printed on stdout.
    #[arg(long, value_enum, default_value = "text")]
    output: Output,
    #[command(flatten)]
    settings: HelperSettings,
}

/// The configuration file, and the flags: one key per flag.
#[derive(Debug, Default, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HelperSettings {
    #[arg(long, alias = "socket", value_parser = signet_workload::location::parse_socket_path, help = signet_workload::location::AGENT_SOCKET_HELP)]
    #[serde(alias = "socket")]
    agent_socket: Option<PathBuf>,
    /// `--agent-socket` when given as a flag: it comes before the
    /// environment, which comes before the file's `agent_socket`.
    #[arg(skip)]
    #[serde(skip)]
    agent_socket_flag: Option<PathBuf>,
    /// Directory to write the files into (must exist).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// File name of the X509-SVID chain, leaf first [default: svid.pem].
    #[arg(long)]
    svid_file: Option<String>,
    /// File name of the SVID's private key, PKCS#8 PEM [default: svid_key.pem].
    #[arg(long)]
    key_file: Option<String>,
    /// File name of the trust bundle (CA certificates, PEM) [default: bundle.pem].
    #[arg(long)]
    bundle_file: Option<String>,
    /// Also put the federated trust domains' CA certificates into the bundle file.
    #[arg(long)]
    #[serde(default)]
    include_federated: bool,
    /// Mode of the certificate and bundle files, octal [default: 0644].
    #[arg(long)]
    cert_mode: Option<String>,
    /// Mode of the key and JWT files, octal, nothing for others [default: 0600].
    #[arg(long)]
    key_mode: Option<String>,
    /// Owner of the written files, a user name or uid (needs root), e.g. postgres.
    #[arg(long)]
    owner: Option<String>,
    /// Group of the written files, a group name or gid (needs root or membership).
    #[arg(long)]
    group: Option<String>,
    /// Command to run after every update, e.g. /usr/bin/pg_ctl.
    #[arg(long)]
    cmd: Option<String>,
    /// Arguments of --cmd, split at whitespace (in the file also a list of strings).
    #[arg(long)]
    cmd_args: Option<CmdArgs>,
    /// Signal to send after every update to the pid in --pid-file, e.g. HUP.
    #[arg(long)]
    signal: Option<String>,
    /// File whose first line is the pid to signal, e.g. PostgreSQL's postmaster.pid.
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// Audience of a JWT-SVID to keep fresh (repeatable; one token file per audience).
    #[arg(long = "jwt-audience")]
    #[serde(default)]
    jwt_audience: Vec<String>,
    /// File name of the JWT-SVID when there is one audience [default: jwt_svid.token].
    #[arg(long)]
    jwt_file: Option<String>,
    /// Write this SPIFFE ID's SVID when the workload has several [default: the first].
    #[arg(long)]
    svid_id: Option<String>,
    /// Write the files once and exit (for init steps).
    #[arg(long)]
    #[serde(default)]
    once: bool,
    /// How long --once waits for the first SVID, e.g. 30s [default: 10s].
    #[arg(long)]
    timeout: Option<String>,
    /// Serve GET /live and /ready (HTTP) on this address, e.g. 127.0.0.1:8088 (not with --once).
    #[arg(long)]
    health_listen: Option<String>,
}

/// Command arguments: a whitespace-separated string (the flag, or the file
/// in spiffe-helper's style) or a TOML list (arguments with spaces).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "CmdArgsFile")]
pub struct CmdArgs(Vec<String>);

#[derive(Deserialize)]
#[serde(untagged)]
enum CmdArgsFile {
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
fn check_file_name(name: &str) -> Result<(), &'static str> {
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
fn jwt_file_for(audience: &str) -> String {
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
fn parse_mode(text: &str) -> Result<u32, &'static str> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    if digits.is_empty() || !digits.chars().all(|c| ('0'..='7').contains(&c)) {
        return Err("not an octal mode such as 0644");
    }
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => Err("only permission bits (at most 0777) are allowed"),
    }
}

fn parse_signal(text: &str) -> Result<Signal, String> {
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

fn lookup_group(text: &str) -> Result<u32, String> {
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
    fn resolve(self) -> anyhow::Result<(HelperConfig, bool, Output)> {
        // The socket's flag comes before the environment, the file's after.
        let mut flags = self.settings;
        let socket_flag = flags.agent_socket.take();
        let mut settings = overlay(&flags, self.config.as_deref())?;
        settings.agent_socket_flag = socket_flag;
        let config = HelperConfig::try_from(settings)?;
        Ok((config, self.check_config, self.output))
    }
}

/// Checks that `dir` is a directory we can write files into, with the
/// configured owner, by writing and removing a probe file.
fn probe_dir(dir: &Path, owner: Owner) -> anyhow::Result<()> {
    let meta = std::fs::metadata(dir).with_context(|| format!("dir {}", dir.display()))?;
    if !meta.is_dir() {
        bail!("dir {}: not a directory", dir.display());
    }
    let probe = dir.join(PROBE_FILE);
    atomic_file::write_owned(&probe, b"", atomic_file::SECRET_MODE, owner).map_err(|e| {
        if owner != Owner::default() && e.kind() == std::io::ErrorKind::PermissionDenied {
            anyhow!(
                "cannot write files owned by {owner:?} into {}: {e} (changing the owner needs root)",
                dir.display()
            )
        } else {
            anyhow!("cannot write files into {}: {e}", dir.display())
        }
    })?;
    std::fs::remove_file(&probe).with_context(|| format!("cannot remove {}", probe.display()))?;
    Ok(())
}

/// What one X509 write put on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Written {
    spiffe_id: String,
    serial: String,
    expires_at: SystemTime,
    /// The certificate and bundle PEM, to skip rewriting unchanged state.
    public: String,
}

/// Writes the SVID, key and bundle of `ctx` into the directory (bundle
/// first, key last: a reload sees a complete set). Returns `None`, writing
/// nothing, when the SVID and bundle are those of `last`.
fn write_x509(
    config: &HelperConfig,
    ctx: &X509Context,
    last: Option<&Written>,
) -> anyhow::Result<Option<Written>> {
    let svid = ctx.svid(config.svid_id.as_deref()).ok_or_else(|| {
        let offered: Vec<_> = ctx
            .svids
            .iter()
            .map(|s| s.spiffe_id().to_string())
            .collect();
        anyhow!(
            "the agent offers no SVID for svid_id {}; it offers {}",
            config.svid_id.as_deref().unwrap_or_default(),
            offered.join(", ")
        )
    })?;
    let own_td = svid.spiffe_id().trust_domain();
    let mut bundles: Vec<_> = ctx
        .bundles
        .iter()
        .filter(|b| *b.trust_domain() == own_td || config.include_federated)
        .collect();
    // The own trust domain first, then the federated ones in name order.
    bundles.sort_by_key(|b| (*b.trust_domain() != own_td, b.trust_domain().to_string()));
    let bundle_pem: String = bundles.iter().map(|b| b.x509_pem()).collect();
    if bundle_pem.is_empty() {
        bail!("the agent sent no trust bundle for {own_td}");
    }
    let chain_pem = svid.chain_pem();
    let written = Written {
        spiffe_id: svid.spiffe_id().to_string(),
        serial: svid.serial().to_owned(),
        expires_at: svid.not_after(),
        public: format!("{chain_pem}{bundle_pem}"),
    };
    if last == Some(&written) {
        return Ok(None);
    }
    if last.is_none_or(|l| l.spiffe_id != written.spiffe_id)
        && let Some(warning) = ctx.ambiguity(config.svid_id.as_deref())
    {
        tracing::warn!("{warning}");
    }
    let write = |name: &str, contents: &[u8], mode: u32| {
        let path = config.dir.join(name);
        atomic_file::write_owned(&path, contents, mode, config.owner)
            .with_context(|| format!("cannot write {}", path.display()))
    };
    write(&config.bundle_file, bundle_pem.as_bytes(), config.cert_mode)?;
    write(&config.svid_file, chain_pem.as_bytes(), config.cert_mode)?;
    write(
        &config.key_file,
        svid.private_key().to_pem().as_bytes(),
        config.key_mode,
    )?;
    Ok(Some(written))
}

/// Fetches a JWT-SVID for `target`, writes it and says when to refresh it
/// (at half its lifetime).
async fn write_jwt(
    config: &HelperConfig,
    socket: &SocketLocation,
    target: &JwtTarget,
) -> anyhow::Result<(JwtSvid, SystemTime)> {
    let svids = fetch_jwt(
        socket,
        vec![target.audience.clone()],
        config.svid_id.clone(),
    )
    .await
    .with_context(|| format!("JWT-SVID for audience {}", target.audience))?;
    let (_, token) = svids.into_iter().next().with_context(|| {
        format!(
            "the agent returned no JWT-SVID for audience {}",
            target.audience
        )
    })?;
    let jwt = JwtSvid::parse_insecure(&token).with_context(|| {
        format!(
            "the agent sent a malformed JWT-SVID for {}",
            target.audience
        )
    })?;
    let path = config.dir.join(&target.file);
    atomic_file::write_owned(&path, token.as_bytes(), config.key_mode, config.owner)
        .with_context(|| format!("cannot write {}", path.display()))?;
    let now = unix_now();
    let issued = jwt.issued_at().unwrap_or(now).min(jwt.expiry());
    let refresh = issued + (jwt.expiry() - issued) / 2;
    let refresh_at = UNIX_EPOCH + Duration::from_secs(refresh.max(now + 1));
    Ok((jwt, refresh_at))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Prints events on stdout (text or JSON lines) for people and scripts.
#[derive(Debug, Clone, Copy)]
struct Events(Output);

impl Events {
    fn x509(self, config: &HelperConfig, w: &Written) {
        let expires = humantime::format_rfc3339_seconds(w.expires_at).to_string();
        match self.0 {
            Output::Json => println!(
                "{}",
                json!({
                    "event": "x509_written", "spiffe_id": w.spiffe_id, "serial": w.serial,
                    "expires_at": expires, "dir": config.dir,
                    "files": [config.svid_file, config.key_file, config.bundle_file],
                })
            ),
            Output::Text => println!(
                "wrote {}, {}, {} into {} for {} (serial {}, expires {expires})",
                config.svid_file,
                config.key_file,
                config.bundle_file,
                config.dir.display(),
                w.spiffe_id,
                w.serial
            ),
        }
    }

    fn jwt(self, config: &HelperConfig, target: &JwtTarget, jwt: &JwtSvid) {
        let expires =
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(jwt.expiry()))
                .to_string();
        match self.0 {
            Output::Json => println!(
                "{}",
                json!({
                    "event": "jwt_written", "spiffe_id": jwt.spiffe_id().to_string(),
                    "audience": target.audience, "file": target.file, "expires_at": expires,
                })
            ),
            Output::Text => println!(
                "wrote {} into {} for {} (audience {}, expires {expires})",
                target.file,
                config.dir.display(),
                jwt.spiffe_id(),
                target.audience
            ),
        }
    }

    fn reload(self, how: &str, outcome: &Result<String, String>) {
        match (self.0, outcome) {
            (Output::Json, Ok(detail)) => println!(
                "{}",
                json!({ "event": "reload", "how": how, "ok": true, "detail": detail })
            ),
            (Output::Json, Err(why)) => println!(
                "{}",
                json!({ "event": "reload", "how": how, "ok": false, "error": why })
            ),
            (Output::Text, Ok(detail)) => println!("reloaded: {how}: {detail}"),
            (Output::Text, Err(why)) => println!("reload failed: {how}: {why}"),
        }
    }
}

/// Runs the command and sends the signal, after files changed. Failures are
/// reported and do not stop the helper: the files are already in place.
async fn reload(config: &HelperConfig, events: Events) {
    if let Some((cmd, args)) = &config.cmd {
        let how = format!("{cmd} {}", args.join(" "));
        let outcome = run_cmd(cmd, args).await;
        match &outcome {
            Ok(_) => tracing::info!(command = %how.trim(), "reload command succeeded"),
            Err(why) => tracing::error!(command = %how.trim(), "reload command failed: {why}"),
        }
        events.reload(how.trim(), &outcome);
    }
    if let Some((signal, pid_file)) = &config.signal {
        let how = format!("{signal} to the pid in {}", pid_file.display());
        let outcome = send_signal(*signal, pid_file, config.owner.uid);
        match &outcome {
            Ok(detail) => tracing::info!(%signal, pid_file = %pid_file.display(), "{detail}"),
            Err(why) => {
                tracing::warn!(%signal, pid_file = %pid_file.display(), "not signalled: {why}")
            }
        }
        events.reload(&how, &outcome);
    }
}

async fn run_cmd(cmd: &str, args: &[String]) -> Result<String, String> {
    let child = tokio::process::Command::new(cmd)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(CMD_TIMEOUT, child).await {
        Err(_) => Err(format!("still running after {CMD_TIMEOUT:?}; killed")),
        Ok(Err(e)) => Err(format!("cannot start it: {e}")),
        Ok(Ok(out)) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let text = text.trim().chars().take(500).collect::<String>();
            if out.status.success() {
                Ok(format!("{}: {text}", out.status))
            } else {
                Err(format!("{}: {text}", out.status))
            }
        }
    }
}

/// Sends `signal` to the process a pid file names, only if it is the
/// process the file's writer meant: it runs as the file's owner (or as
/// `owner`, the helper's `--owner`) and was already running when the file
/// was last written. Whoever can write the pid file chooses the pid; these
/// checks keep a helper running as root from signalling another user's
/// (or root's) process for them, or a process that reused a stale pid. The
/// signal goes through a pidfd opened before the checks, so it reaches the
/// process checked or none.
fn send_signal(signal: Signal, pid_file: &Path, owner: Option<u32>) -> Result<String, String> {
    use std::os::unix::fs::MetadataExt;
    let file = std::fs::File::open(pid_file).map_err(|e| format!("cannot read it: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read it: {e}"))?;
    let text = std::io::read_to_string(&file).map_err(|e| format!("cannot read it: {e}"))?;
    let pid: i32 = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .filter(|p| *p > 0)
        .ok_or_else(|| "its first line is not a pid".to_string())?;
    let pidfd = rustix::process::Pid::from_raw(pid)
        .ok_or_else(|| format!("{pid} is not a pid"))
        .and_then(|p| {
            rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty())
                .map_err(|e| format!("pid {pid} is not running ({e})"))
        })?;
    let want_uid = owner.unwrap_or(meta.uid());
    let proc_uid = proc_uid(pid).ok_or_else(|| format!("pid {pid} is not running"))?;
    if proc_uid != want_uid {
        return Err(format!(
            "pid {pid} runs as uid {proc_uid}, but the pid file belongs to uid {want_uid}: refusing to signal another user's process"
        ));
    }
    let started = proc_start(pid).ok_or_else(|| format!("pid {pid} is not running"))?;
    // The start time has clock-tick resolution; a second of slack.
    let written = meta.mtime();
    if started > written + 1 {
        return Err(format!(
            "pid {pid} started after the pid file was written: it is not the process the file names (a stale pid file?)"
        ));
    }
    let sig = rustix::process::Signal::from_named_raw(signal as i32)
        .ok_or_else(|| format!("{signal} cannot be sent"))?;
    rustix::process::pidfd_send_signal(&pidfd, sig)
        .map_err(|e| format!("cannot signal pid {pid}: {e}"))?;
    Ok(format!("sent {signal} to pid {pid}"))
}

/// The real uid of `pid`, from /proc.
fn proc_uid(pid: i32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// When `pid` started, in seconds since the epoch (boot time from
/// /proc/stat plus the start time in clock ticks, at 100 a second).
fn proc_start(pid: i32) -> Option<i64> {
    let ticks = i64::try_from(signet_unix::peer::start_ticks(pid).ok()?).ok()?;
    let boot: i64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(boot + ticks / 100)
}

pub async fn run(args: HelperArgs) -> anyhow::Result<()> {
    let (config, check, output) = args.resolve()?;
    let socket = config.agent_socket.clone();
    probe_dir(&config.dir, config.owner)?;
    if check {
        println!(
            "configuration is valid (writing into {}, Workload API at {})",
            config.dir.display(),
            socket.client_path().display()
        );
        return Ok(());
    }
    let events = Events(output);
    tracing::info!(socket = %socket.client_path().display(), dir = %config.dir.display(), "waiting for an X509-SVID");
    let watcher = watch_x509(socket.clone());
    if config.once {
        once(&config, &socket, &watcher, events).await
    } else {
        daemon(config, socket, watcher, events).await
    }
}

/// Says once on stderr that `--once` waits, when the agent has answered
/// without an identity for us (the state after "connecting"); never ends.
async fn say_once_while_waiting(
    watcher: &X509Watcher,
    socket: &SocketLocation,
    timeout: Duration,
) -> std::convert::Infallible {
    let mut rx = watcher.subscribe();
    loop {
        if let X509State::Waiting(why) = &*rx.borrow_and_update()
            && why != signet_workload::CONNECTING
        {
            eprintln!(
                "waiting up to {} for an X509-SVID from the Workload API at {}: {why}",
                humantime::format_duration(timeout),
                socket.client_path().display()
            );
            break;
        }
        if rx.changed().await.is_err() {
            break;
        }
    }
    std::future::pending().await
}

/// `--once`: the first SVID (within the timeout), every JWT, one reload.
async fn once(
    config: &HelperConfig,
    socket: &SocketLocation,
    watcher: &X509Watcher,
    events: Events,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + config.timeout;
    let waiting = say_once_while_waiting(watcher, socket, config.timeout);
    let ready = tokio::time::timeout_at(deadline, watcher.ready());
    let ctx = match tokio::select! {
        ctx = ready => ctx,
        never = waiting => match never {},
    } {
        Ok(Some(ctx)) => ctx,
        Ok(None) | Err(_) => {
            let why = match watcher.state() {
                X509State::Waiting(why) => why,
                X509State::Ready(_) => "the watcher stopped".into(),
            };
            bail!(
                "no X509-SVID from the Workload API at {} within {:?}: {why}",
                socket.client_path().display(),
                config.timeout
            );
        }
    };
    if let Some(written) = write_x509(config, &ctx, None)? {
        events.x509(config, &written);
    }
    for target in &config.jwts {
        let mut retry = Backoff::new(MIN_RETRY, MAX_RETRY);
        loop {
            match write_jwt(config, socket, target).await {
                Ok((jwt, _)) => {
                    events.jwt(config, target, &jwt);
                    break;
                }
                Err(e) if tokio::time::Instant::now() + retry.step() < deadline => {
                    let delay = retry.next_delay();
                    tracing::warn!("{e:#}; retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
    reload(config, events).await;
    Ok(())
}

/// What the health endpoint reports.
#[derive(Debug, Clone)]
enum Health {
    Waiting(String),
    Ready(String),
}

/// Rewrites the files on every X509 update and before every JWT-SVID's
/// half-life, reloads after each change, until SIGTERM or Ctrl-C.
async fn daemon(
    config: HelperConfig,
    socket: SocketLocation,
    watcher: X509Watcher,
    events: Events,
) -> anyhow::Result<()> {
    let (health_tx, health_rx) = watch::channel(Health::Waiting("no SVID written yet".into()));
    let health_task = match config.health_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("health endpoint: cannot listen on {addr}"))?;
            tracing::info!(%addr, "health endpoint: /live /ready");
            // The sidecar's admin endpoint, with readiness from the updates
            // and no metrics of its own.
            let ready: signet_proxy::admin::Readiness =
                Arc::new(move || match &*health_rx.borrow() {
                    Health::Ready(what) => Ok(what.clone()),
                    Health::Waiting(why) => Err(why.clone()),
                });
            let render: signet_proxy::admin::Render = Arc::new(String::new);
            Some(tokio::spawn(signet_proxy::admin::serve(
                listener,
                ready,
                render,
                std::future::pending(),
            )))
        }
        None => None,
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    let mut updates = watcher.subscribe();
    let far = || tokio::time::Instant::now() + Duration::from_secs(365 * 24 * 3600);
    let mut last: Option<Written> = None;
    // Each JWT target's next refresh; all due at start.
    let mut jwt_due: Vec<tokio::time::Instant> =
        vec![tokio::time::Instant::now(); config.jwts.len()];
    let mut retry = Backoff::new(MIN_RETRY, MAX_RETRY);
    let mut retry_at = far();
    loop {
        let next_jwt = jwt_due.iter().min().copied().unwrap_or_else(far);
        tokio::select! {
            changed = updates.changed() => {
                if changed.is_err() {
                    bail!("the Workload API watcher stopped");
                }
            }
            // JWT-SVIDs are fetched once the X509-SVID is in place.
            () = tokio::time::sleep_until(next_jwt), if last.is_some() => {}
            () = tokio::time::sleep_until(retry_at) => {}
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
        retry_at = far();
        let mut changed = false;
        let mut problem = None;
        let current = updates.borrow_and_update().clone();
        match current {
            X509State::Waiting(why) => {
                if last.is_none() {
                    health_tx.send_replace(Health::Waiting(format!("no SVID yet: {why}")));
                }
                continue;
            }
            X509State::Ready(ctx) => match write_x509(&config, &ctx, last.as_ref()) {
                Ok(None) => {}
                Ok(Some(w)) => {
                    tracing::info!(spiffe_id = %w.spiffe_id, serial = %w.serial, "X509-SVID written");
                    events.x509(&config, &w);
                    last = Some(w);
                    changed = true;
                }
                Err(e) => problem = Some(format!("{e:#}")),
            },
        }
        let now = tokio::time::Instant::now();
        for (target, due) in config.jwts.iter().zip(jwt_due.iter_mut()) {
            if *due > now {
                continue;
            }
            match write_jwt(&config, &socket, target).await {
                Ok((jwt, refresh_at)) => {
                    tracing::info!(audience = %target.audience, "JWT-SVID written");
                    events.jwt(&config, target, &jwt);
                    let wait = refresh_at
                        .duration_since(SystemTime::now())
                        .unwrap_or(Duration::from_secs(1));
                    *due = tokio::time::Instant::now() + wait;
                    changed = true;
                }
                Err(e) => {
                    *due = tokio::time::Instant::now() + retry.step();
                    problem.get_or_insert(format!("{e:#}"));
                }
            }
        }
        if changed {
            reload(&config, events).await;
        }
        match (problem, &last) {
            (Some(why), _) => {
                let delay = retry.next_delay();
                tracing::error!("{why}; retrying in {delay:?}");
                health_tx.send_replace(Health::Waiting(why));
                retry_at = tokio::time::Instant::now() + delay;
            }
            (None, Some(w)) => {
                retry.reset();
                health_tx.send_replace(Health::Ready(format!(
                    "{} (serial {}) in {}",
                    w.spiffe_id,
                    w.serial,
                    config.dir.display()
                )));
            }
            (None, None) => {}
        }
    }
    if let Some(task) = health_task {
        task.abort();
    }
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests;
