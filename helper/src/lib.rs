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

mod config;
mod reload;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};
use serde_json::json;
use signet_identity::JwtSvid;
use signet_workload::atomic_file::{self, Owner};
use signet_workload::{Backoff, SocketLocation};
use signet_workload::{X509Context, X509State, X509Watcher, fetch_jwt, watch_x509};
use tokio::sync::watch;

pub use config::{HelperArgs, HelperConfig, HelperSettings, JwtTarget, lookup_user};
use config::{MAX_RETRY, MIN_RETRY, PROBE_FILE};
use reload::reload;

/// How the helper reports what it does on stdout.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    #[default]
    Text,
    Json,
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

    /// Where the health endpoint bound (with port 0 configured, the only
    /// way to learn the port).
    fn health(self, addr: std::net::SocketAddr) {
        match self.0 {
            Output::Json => println!(
                "{}",
                json!({ "event": "health_listening", "address": addr.to_string() })
            ),
            Output::Text => println!("health endpoint: {addr} (/live /ready)"),
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
            let addr = listener.local_addr().unwrap_or(addr);
            events.health(addr);
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
