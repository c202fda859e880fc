//! Signet's agent: attests its node to the server, follows the server's
//! push stream of authorized entries, generates workload keys locally, has
//! them signed in batches, rotates SVIDs at half-life (±10 % jitter), and
//! publishes the result to the Workload API ([`workload_api`]) as a
//! snapshot on a `watch` channel. Workloads are identified by kernel facts
//! ([`attest`]).
//!
//! Outages: the agent keeps serving cached SVIDs until they expire and
//! reconnects with backoff. Evicted or banned: it stops serving identities
//! it can no longer vouch for.
//!
//! Depends on: `signet-wire` (node and Workload API protocols),
//! `signet-tls` (the node API client's verifier), `signet-unix` (the
//! Workload API socket and its pinned callers), `signet-identity`; never on
//! the server crate (its tests use it to issue).

pub mod attest;
mod demand;
mod identity;
pub mod lifecycle;
pub mod node_client;
pub mod server_address;
pub mod workload_api;

pub use demand::{Demand, StreamDemand};
use identity::{Identity, attest, load_identity, persist_identity};
pub use lifecycle::{ExtraServices, Running, run, start};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use signet_identity::{Bundle, BundleSet, BundleSource, Entry, X509Svid};
use tokio::sync::watch;

use node_client::{ClientError, NodeClient};
use server_address::ServerAddress;
use signet_wire::bundle_from_wire;

/// A session with a server that lasted this long resets the reconnection
/// backoff when it ends.
const HEALTHY_SESSION: Duration = Duration::from_secs(10);

/// Entries per MintX509Svids call.
const MINT_BATCH: usize = 500;

/// What the Workload API serves from: one consistent view.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Entries authorized for this agent (shared: a new snapshot with the
    /// same entries costs no copy, and streams see that they are the same).
    pub entries: Arc<Vec<Entry>>,
    /// Own and federated bundles.
    pub bundles: BundleSet,
    /// Current X509-SVID of each entry, by entry id.
    pub svids: HashMap<String, Arc<X509Svid>>,
    /// Change-feed revision the entries reflect.
    pub revision: u64,
    /// False while the agent cannot vouch for its identities.
    pub healthy: bool,
}

/// How the agent proves its node.
#[derive(Debug, Clone)]
pub enum NodeAttestation {
    JoinToken(String),
    /// Node certificate chain (PEM) and key (PKCS#8 PEM) files.
    X509Pop {
        cert: PathBuf,
        key: PathBuf,
    },
    /// The agent SVID is handed over directly (the combined core).
    Preissued,
}

/// Agent settings.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Servers by name or IP, tried in order (a name's every address in
    /// turn); names are resolved again at each reconnect.
    pub servers: Vec<ServerAddress>,
    /// Bundle trusted for the server before the first attestation; `None`
    /// only with the insecure bootstrap (the server is not verified then).
    pub bootstrap_bundle: Option<Bundle>,
    pub attestation: NodeAttestation,
    /// Where the agent SVID and bundle persist (none: memory only).
    pub data_dir: Option<PathBuf>,
    /// Most workload SVIDs kept: entries a workload is streaming are always
    /// kept; others are minted ahead while there is room, and evicted least
    /// recently served first.
    pub svid_cache_size: usize,
    /// Failed over to a server other than the first, the agent checks the
    /// first again every this long (plus up to half of it, at random) and
    /// moves back once it answers, so load returns to a server that comes
    /// back. `None`: stay where it is.
    pub rebalance_after: Option<Duration>,
}

/// Default of [`AgentConfig::rebalance_after`].
pub const DEFAULT_REBALANCE_AFTER: Duration = Duration::from_secs(300);

impl AgentConfig {
    /// The combined core's own agent: handed the identity its server
    /// issued it in process (`Server::attest_local_agent`, with `bundle`),
    /// it reaches the server at `server_addr` over mTLS like any other
    /// agent and keeps nothing on disk.
    pub fn local(server_addr: SocketAddr, bundle: Bundle, svid_cache_size: usize) -> Self {
        AgentConfig {
            servers: vec![server_addr.into()],
            bootstrap_bundle: Some(bundle),
            attestation: NodeAttestation::Preissued,
            data_dir: None,
            svid_cache_size,
            rebalance_after: None,
        }
    }
}

/// Default bound of the workload SVID cache.
pub const DEFAULT_SVID_CACHE_SIZE: usize = 1000;

/// Agent failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("agent state in {path}: {reason}")]
    State { path: PathBuf, reason: String },
    #[error("no server address is configured")]
    NoServer,
    #[error("the local agent cannot be attested: {0}")]
    Local(String),
    #[error("the server refused this agent: {0}")]
    Refused(String),
    #[error("cannot bind the agent socket {path}: {reason}")]
    Socket { path: PathBuf, reason: String },
    #[error("the agent stopped: {0}")]
    Stopped(String),
}

/// A running agent's handle: the snapshot the Workload API reads.
#[derive(Debug, Clone)]
pub struct AgentHandle {
    snapshot: watch::Receiver<Arc<Snapshot>>,
    client: Arc<tokio::sync::Mutex<Option<NodeClient>>>,
    demand: Arc<Demand>,
}

impl AgentHandle {
    /// What workloads ask for (the Workload API reports into it).
    pub fn demand(&self) -> Arc<Demand> {
        self.demand.clone()
    }

    pub fn snapshot(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshot.clone()
    }

    /// A JWT-SVID for an authorized entry, minted by the server.
    pub async fn mint_jwt(
        &self,
        entry_id: &str,
        audience: &[String],
    ) -> Result<(String, i64), AgentError> {
        let mut guard = self.client.lock().await;
        let client = guard
            .as_mut()
            .ok_or(AgentError::Client(ClientError::Protocol(
                "not connected to the server".into(),
            )))?;
        let r = client
            .grpc()
            .mint_jwt_svid(signet_wire::node::MintJwtSvidRequest {
                entry_id: entry_id.to_owned(),
                audience: audience.to_vec(),
            })
            .await
            .map_err(ClientError::from)?
            .into_inner();
        Ok((r.token, r.expires_at))
    }
}

/// Whether `svid` is past its rotation point (see [`rotation_point`]).
pub fn rotation_due(svid: &X509Svid, now: SystemTime) -> bool {
    rotation_point(svid).is_none_or(|at| now >= at)
}

/// When `svid` is to be rotated: half its life, moved by a per-SVID jitter
/// of up to ±10 % so a fleet does not rotate in lockstep. `None` for a
/// leaf that cannot be read (rotate it now).
pub fn rotation_point(svid: &X509Svid) -> Option<SystemTime> {
    let leaf = svid.chain().first()?;
    let info = signet_identity::x509_svid::inspect_leaf(leaf).ok()?;
    // The server backdates NotBefore by 10 s against clock skew; the life
    // the half-life is taken of starts at issuance.
    let issued = info.not_before + signet_identity::x509_svid::BACKDATE.as_secs() as i64;
    let life = (info.not_after - issued).max(1) as f64;
    // Jitter derived from the serial: stable for one SVID, spread across many.
    let seed = info
        .serial
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    let jitter = (f64::from(seed % 2001) / 1000.0 - 1.0) * 0.1; // -0.1 ..= 0.1
    let rotate_at = issued as f64 + life * (0.5 + jitter / 2.0);
    Some(UNIX_EPOCH + std::time::Duration::from_secs_f64(rotate_at.max(0.0)))
}

/// Starts the agent's loop; returns its handle once it has an identity
/// (serving it is [`start`]'s).
pub async fn spawn(
    config: AgentConfig,
    preissued: Option<(X509Svid, Bundle)>,
    stop: watch::Receiver<bool>,
) -> Result<(AgentHandle, tokio::task::JoinHandle<()>), AgentError> {
    if config.servers.is_empty() {
        return Err(AgentError::NoServer);
    }
    let identity = match preissued {
        Some((svid, bundle)) => Identity {
            svid,
            bundle,
            can_reattest: false,
        },
        None => match load_identity(&config)? {
            Some(id) => id,
            None => attest(&config).await?,
        },
    };
    persist_identity(&config, &identity)?;
    let mut initial = Snapshot {
        healthy: true,
        ..Default::default()
    };
    initial.bundles.insert(identity.bundle.clone());
    let (tx, rx) = watch::channel(Arc::new(initial));
    let client = Arc::new(tokio::sync::Mutex::new(None));
    let demand = Arc::new(Demand::default());
    let handle = AgentHandle {
        snapshot: rx,
        client: client.clone(),
        demand: demand.clone(),
    };
    let task = tokio::spawn(agent_loop(config, identity, tx, client, demand, stop));
    Ok((handle, task))
}

/// The agent's main loop: connect, subscribe, keep SVIDs fresh; on loss of
/// the server, back off and reconnect while serving the cache.
async fn agent_loop(
    config: AgentConfig,
    mut identity: Identity,
    tx: watch::Sender<Arc<Snapshot>>,
    shared_client: Arc<tokio::sync::Mutex<Option<NodeClient>>>,
    demand: Arc<Demand>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff =
        signet_workload::Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    let mut server_index = 0usize;
    // Spreads the agents over the addresses a name resolves to.
    let seed = agent_seed(&identity);
    loop {
        if *stop.borrow() {
            return;
        }
        let addrs = server_address::resolve_all(&config.servers, seed).await;
        let started = std::time::Instant::now();
        let index = server_index % addrs.len().max(1);
        // Away from the first server, a probe watches for its return.
        let (bundle, svid) = (identity.bundle.clone(), identity.svid.clone());
        let probe = async {
            match config.rebalance_after {
                Some(every) if index != 0 => {
                    probe_first_server(&config, every, seed, bundle, svid).await
                }
                _ => std::future::pending().await,
            }
        };
        let outcome = match addrs.get(index) {
            Some(&addr) => tokio::select! {
                r = session(&config, addr, &mut identity, &tx, &shared_client, &demand) => r.map_err(|e| (addr.to_string(), e)),
                first = probe => {
                    tracing::info!(from = %addr, to = %first, "the first server answers again: moving back to it");
                    server_index = 0;
                    backoff.reset();
                    *shared_client.lock().await = None;
                    continue;
                }
                _ = stop.changed() => return,
            },
            None => Err((
                "(none)".to_string(),
                AgentError::Client(ClientError::Protocol("no server address resolves".into())),
            )),
        };
        *shared_client.lock().await = None;
        match outcome {
            Ok(()) => backoff.reset(),
            Err((_, AgentError::Refused(why))) => {
                tracing::error!(reason = %why, "the server refuses this agent; no longer serving identities");
                tx.send_modify(|s| {
                    let mut next = Snapshot {
                        healthy: false,
                        bundles: s.bundles.clone(),
                        ..Default::default()
                    };
                    next.revision = s.revision;
                    *s = Arc::new(next);
                });
                if identity.can_reattest
                    && !matches!(config.attestation, NodeAttestation::Preissued)
                {
                    match attest(&config).await {
                        Ok(id) => {
                            identity = id;
                            if let Err(e) = persist_identity(&config, &identity) {
                                tracing::error!(error = %e, "cannot persist the agent identity");
                            }
                            continue;
                        }
                        Err(e) => tracing::error!(error = %e, "re-attestation failed"),
                    }
                }
                // Wait for a stop; nothing more can be done without an operator.
                let _ = stop.changed().await;
                return;
            }
            Err((addr, e)) => {
                // A session that served for a while was a success: the
                // next server is tried at once, not after earlier
                // failures' longer delays.
                if started.elapsed() >= HEALTHY_SESSION {
                    backoff.reset();
                }
                tracing::warn!(server = %addr, error = %e, retry_within = ?backoff.step(), "lost the server; serving cached SVIDs");
                server_index += 1;
            }
        }
        // Drop SVIDs that expired while the server was away.
        tx.send_if_modified(|s| {
            let now = SystemTime::now();
            if s.svids.values().any(|v| v.not_after() <= now) {
                let mut next = (**s).clone();
                next.svids.retain(|_, v| v.not_after() > now);
                *s = Arc::new(next);
                true
            } else {
                false
            }
        });
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = stop.changed() => return,
        }
    }
}

/// A per-agent number: the hash of its SPIFFE ID.
fn agent_seed(identity: &Identity) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    identity.svid.spiffe_id().to_string().hash(&mut h);
    h.finish()
}

/// Waits until the first of the agent's servers accepts a connection (mTLS
/// with the agent's SVID), trying every `every` plus a random part of up to
/// half of it, so a fleet does not move back at the same instant.
async fn probe_first_server(
    config: &AgentConfig,
    every: Duration,
    seed: u64,
    bundle: Bundle,
    svid: X509Svid,
) -> SocketAddr {
    loop {
        tokio::time::sleep(jittered(every)).await;
        let Some(&first) = server_address::resolve_all(&config.servers, seed)
            .await
            .first()
        else {
            continue;
        };
        let connect = NodeClient::connect(first, bundle.clone(), Some(&svid));
        match tokio::time::timeout(Duration::from_secs(5), connect).await {
            Ok(Ok(_)) => return first,
            Ok(Err(e)) => {
                tracing::debug!(server = %first, error = %e, "the first server is still away")
            }
            Err(_) => tracing::debug!(server = %first, "the first server is still away (timeout)"),
        }
    }
}

/// `base` plus a random part of up to half of it.
fn jittered(base: Duration) -> Duration {
    base + base.mul_f64((random_u64() % 1000) as f64 / 2000.0)
}

/// A random number (from the standard library's randomly keyed hasher):
/// for jitter and spreading, never for secrets.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

fn is_refusal(e: &ClientError) -> bool {
    matches!(e, ClientError::Status(s) if s.code() == tonic::Code::PermissionDenied)
}

/// One connected session with the server. Returns `Ok` when the agent
/// renewed its SVID and must reconnect to present it.
async fn session(
    config: &AgentConfig,
    addr: SocketAddr,
    identity: &mut Identity,
    tx: &watch::Sender<Arc<Snapshot>>,
    shared_client: &Arc<tokio::sync::Mutex<Option<NodeClient>>>,
    demand: &Demand,
) -> Result<(), AgentError> {
    let mut client =
        NodeClient::connect(addr, identity.bundle.clone(), Some(&identity.svid)).await?;
    // A resumed subscription sends only what changed since what is held.
    let (since, known) = {
        let s = tx.borrow();
        let known: Vec<(String, u64)> = s
            .entries
            .iter()
            .map(|e| (e.id.clone(), e.revision))
            .collect();
        (s.revision, known)
    };
    let mut updates = client.subscribe_deltas(since, known).await.map_err(|e| {
        if is_refusal(&e) {
            AgentError::Refused(e.to_string())
        } else {
            e.into()
        }
    })?;
    *shared_client.lock().await = Some(client.clone());
    tx.send_modify(|s| {
        if !s.healthy {
            let mut next = (**s).clone();
            next.healthy = true;
            *s = Arc::new(next);
        }
    });
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // Nothing is minted before the server's first answer has brought the
    // entries up to date: entries deleted while the agent was away would
    // be asked for, and the server refuses a batch holding one.
    let mut synced = false;
    loop {
        tokio::select! {
            msg = updates.message() => {
                let msg = match msg {
                    Ok(Some(m)) => m,
                    Ok(None) => return Err(ClientError::Protocol("the server closed the subscription".into()).into()),
                    Err(s) if s.code() == tonic::Code::PermissionDenied => return Err(AgentError::Refused(s.message().to_owned())),
                    Err(s) => return Err(ClientError::from(s).into()),
                };
                let upserts: Vec<Entry> = msg.entries.iter().filter_map(|e| Entry::try_from(e).ok()).collect();
                let entries = Arc::new(if msg.delta {
                    apply_delta(&tx.borrow().entries, upserts, &msg.removed_entry_ids)
                } else {
                    upserts
                });
                let mut bundles = BundleSet::new();
                for b in &msg.bundles {
                    match bundle_from_wire(b) {
                        Ok(b) => bundles.insert(b),
                        Err(e) => tracing::warn!(error = %e, "ignoring a bundle the server sent"),
                    }
                }
                if let Some(own) = bundles.bundle_for(identity.bundle.trust_domain().as_str()) {
                    identity.bundle = own.clone();
                }
                let previous = tx.borrow().clone();
                let mut svids = previous.svids.clone();
                // By id, once: with thousands of entries, scanning the list for
                // each SVID (or each old entry) made every message quadratic.
                let held: HashMap<&str, u64> = entries.iter().map(|e| (e.id.as_str(), e.revision)).collect();
                svids.retain(|id, _| held.contains_key(id.as_str()));
                // The own bundle changed (an authority tainted or revoked):
                // SVIDs from a tainted authority are replaced now, those
                // that no longer verify are not served again.
                let td = identity.bundle.trust_domain().as_str();
                let bundle_changed = match (previous.bundles.bundle_for(td), bundles.bundle_for(td)) {
                    (Some(a), Some(b)) => !a.same_keys(b),
                    _ => true,
                };
                if bundle_changed {
                    let before = svids.len();
                    svids.retain(|_, svid| still_trusted(svid, &bundles));
                    if svids.len() != before {
                        tracing::warn!(replaced = before - svids.len(), "SVIDs from a tainted or revoked authority dropped; minting new ones");
                    }
                }
                // An entry whose SPIFFE ID, TTL or DNS names changed needs a new SVID.
                for p in previous.entries.iter() {
                    if held.get(p.id.as_str()).is_some_and(|r| *r != p.revision) {
                        svids.remove(&p.id);
                    }
                }
                drop(held);
                let mut next = Snapshot { entries, bundles, svids, revision: msg.revision, healthy: true };
                mint_missing(&mut client, &mut next, demand, config.svid_cache_size, tx).await?;
                tx.send_replace(Arc::new(next));
                synced = true;
                if let Err(e) = persist_identity(config, identity) {
                    tracing::warn!(error = %e, "cannot persist the bundle");
                }
                // Its own SVID tainted: renewed now, before an operator's
                // revoke can leave it unverifiable.
                if bundle_changed && tainted(&identity.svid, &identity.bundle) {
                    return renew_own(&mut client, config, identity).await;
                }
            }
            _ = demand.wake.notified(), if synced => {
                // A workload waits for an entry whose SVID is not cached.
                let current = tx.borrow().clone();
                let mut next = (*current).clone();
                mint_missing(&mut client, &mut next, demand, config.svid_cache_size, tx).await?;
                if next.svids.len() != current.svids.len() || next.svids.keys().any(|k| !current.svids.contains_key(k)) {
                    tx.send_replace(Arc::new(next));
                }
            }
            _ = tick.tick(), if synced => {
                let now = SystemTime::now();
                if rotation_due(&identity.svid, now) || tainted(&identity.svid, &identity.bundle) {
                    return renew_own(&mut client, config, identity).await;
                }
                let current = tx.borrow().clone();
                if current.svids.values().any(|s| rotation_due(s, now)) {
                    let mut next = (*current).clone();
                    next.svids.retain(|_, s| !rotation_due(s, now));
                    mint_missing(&mut client, &mut next, demand, config.svid_cache_size, tx).await?;
                    tx.send_replace(Arc::new(next));
                }
            }
        }
    }
}

/// Renews the agent's own SVID and persists it; the session must then end:
/// the server knows only the new serial, so the caller reconnects with it.
async fn renew_own(
    client: &mut NodeClient,
    config: &AgentConfig,
    identity: &mut Identity,
) -> Result<(), AgentError> {
    let renewed = client.renew().await.map_err(|e| {
        if is_refusal(&e) {
            AgentError::Refused(e.to_string())
        } else {
            e.into()
        }
    })?;
    tracing::info!(agent_id = %renewed.spiffe_id(), serial = renewed.serial(), "agent SVID renewed");
    identity.svid = renewed;
    persist_identity(config, identity)?;
    Ok(())
}

/// Whether an authority in the SVID's chain is tainted in `bundle`.
pub fn tainted(svid: &X509Svid, bundle: &Bundle) -> bool {
    // Checked every second for the agent's own SVID: no parsing while
    // nothing is tainted, which is nearly always.
    if bundle.tainted().next().is_none() {
        return false;
    }
    signet_identity::x509_svid::chain_authority_ids(svid.chain())
        .iter()
        .any(|id| bundle.is_tainted(id))
}

/// Whether an SVID may still be served under `bundles`: nothing in its
/// chain is tainted, and it verifies (its authority was not revoked).
pub fn still_trusted(svid: &X509Svid, bundles: &BundleSet) -> bool {
    let td = svid.spiffe_id().trust_domain_str();
    let Some(own) = bundles.bundle_for(td) else {
        return true;
    };
    !tainted(svid, own)
        && signet_identity::x509_svid::verify_x509_svid(svid.chain(), bundles, SystemTime::now())
            .is_ok()
}

/// The entries held after a delta: `held` without the `removed` ids, each
/// entry of `upserts` replacing the one of its id or added at the end.
pub fn apply_delta(held: &[Entry], upserts: Vec<Entry>, removed: &[String]) -> Vec<Entry> {
    let mut by_id: HashMap<String, Entry> =
        upserts.into_iter().map(|e| (e.id.clone(), e)).collect();
    let removed: std::collections::HashSet<&str> = removed.iter().map(String::as_str).collect();
    let mut out = Vec::with_capacity(held.len() + by_id.len());
    for e in held {
        if removed.contains(e.id.as_str()) {
            continue;
        }
        out.push(by_id.remove(&e.id).unwrap_or_else(|| e.clone()));
    }
    let mut added: Vec<Entry> = by_id.into_values().collect();
    added.sort_by(|a, b| a.id.cmp(&b.id));
    out.extend(added);
    out
}

/// Mints the SVIDs the cache should hold and evicts what it should not:
/// every entry a workload streams gets one; other entries are minted ahead
/// while there is room under `bound`; beyond the bound, SVIDs no workload
/// streams are evicted, least recently served first.
///
/// Streamed entries go first: when others wait behind them (a taint
/// replaces every SVID at once), the streamed ones are published through
/// `tx` before the rest are minted.
async fn mint_missing(
    client: &mut NodeClient,
    snapshot: &mut Snapshot,
    demand: &Demand,
    bound: usize,
    tx: &watch::Sender<Arc<Snapshot>>,
) -> Result<(), AgentError> {
    let mut room = bound.saturating_sub(snapshot.svids.len());
    let (mut streamed, mut ahead) = (Vec::new(), Vec::new());
    for e in snapshot.entries.iter() {
        if snapshot.svids.contains_key(&e.id) {
            continue;
        }
        if demand.is_streaming(&e.id) {
            streamed.push(e.id.clone());
        } else if room > 0 {
            room -= 1;
            ahead.push(e.id.clone());
        }
    }
    mint(client, snapshot, &streamed).await?;
    if !streamed.is_empty() && !ahead.is_empty() {
        tx.send_replace(Arc::new(snapshot.clone()));
    }
    mint(client, snapshot, &ahead).await?;
    if streamed.len() + ahead.len() > 0 {
        tracing::info!(
            streamed = streamed.len(),
            ahead = ahead.len(),
            "workload SVIDs minted"
        );
    }
    for id in evictions(snapshot, demand, bound) {
        snapshot.svids.remove(&id);
    }
    Ok(())
}

/// Mints the SVIDs of `ids` into `snapshot`, in batches that keep every
/// message well under gRPC size limits.
async fn mint(
    client: &mut NodeClient,
    snapshot: &mut Snapshot,
    ids: &[String],
) -> Result<(), AgentError> {
    for chunk in ids.chunks(MINT_BATCH) {
        let minted = client.mint_x509_batch(chunk).await?;
        for (id, svid) in chunk.iter().zip(minted) {
            tracing::debug!(entry_id = %id, spiffe_id = %svid.spiffe_id(), serial = svid.serial(), "workload SVID minted");
            snapshot.svids.insert(id.clone(), Arc::new(svid));
        }
    }
    Ok(())
}

/// SVIDs to drop to get back under `bound`: never one a workload streams;
/// never served first, then least recently served.
fn evictions(snapshot: &Snapshot, demand: &Demand, bound: usize) -> Vec<String> {
    let excess = snapshot.svids.len().saturating_sub(bound);
    if excess == 0 {
        return Vec::new();
    }
    let st = demand.lock();
    let mut candidates: Vec<(&String, Option<std::time::Instant>)> = snapshot
        .svids
        .keys()
        .filter(|id| st.streaming.get(*id).is_none_or(|n| *n == 0))
        .map(|id| (id, st.last_served.get(id).copied()))
        .collect();
    candidates.sort_by_key(|(_, t)| *t);
    candidates
        .into_iter()
        .take(excess)
        .map(|(id, _)| id.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use signet_server::ca::{Ca, CaConfig, SvidOptions};
    use signet_server::clock::ManualClock;
    use signet_server::key_manager::memory::MemoryKeyManager;

    #[test]
    fn a_delta_replaces_removes_and_adds_by_id() {
        let entry = |id: &str, revision: u64| {
            let mut e = Entry::new(
                signet_identity::SpiffeId::parse(&format!("spiffe://example.org/{id}")).unwrap(),
                signet_identity::SpiffeId::parse("spiffe://example.org/agent").unwrap(),
                vec![signet_identity::Selector::parse("unix:uid:1").unwrap()],
            );
            e.id = id.into();
            e.revision = revision;
            e
        };
        let held = [entry("a", 1), entry("b", 1), entry("c", 1)];
        let out = apply_delta(
            &held,
            vec![entry("d", 1), entry("b", 2)],
            &["c".to_string(), "unknown".to_string()],
        );
        let got: Vec<(&str, u64)> = out.iter().map(|e| (e.id.as_str(), e.revision)).collect();
        assert_eq!(got, [("a", 1), ("b", 2), ("d", 1)]);
        assert!(apply_delta(&held, Vec::new(), &[]).iter().eq(held.iter()));
    }

    #[test]
    fn svids_rotate_between_40_and_60_percent_of_their_life() {
        let start = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let clock = ManualClock::new(start);
        let td = signet_identity::TrustDomain::parse("example.org").unwrap();
        let ca = Ca::new(
            CaConfig::new(td),
            Arc::new(clock.clone()),
            Arc::new(MemoryKeyManager::default()),
            None,
        )
        .unwrap();
        let id = signet_identity::SpiffeId::parse("spiffe://example.org/w").unwrap();
        let mut points = Vec::new();
        for _ in 0..50 {
            let key = rcgen::KeyPair::generate().unwrap();
            let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
            let opts = SvidOptions {
                ttl: Some(Duration::from_secs(1000)),
                ..Default::default()
            };
            let chain = ca.sign_x509_svid(&spki, &id, &opts).unwrap();
            let svid = X509Svid::new(
                chain,
                signet_identity::PrivateKey::from_pkcs8_der(key.serialize_der()),
            )
            .unwrap();
            assert!(
                !rotation_due(&svid, start + Duration::from_secs(399)),
                "never before 40 %"
            );
            assert!(
                rotation_due(&svid, start + Duration::from_secs(600)),
                "always by 60 %"
            );
            let at = (400..=600)
                .find(|s| rotation_due(&svid, start + Duration::from_secs(*s)))
                .unwrap();
            points.push(at);
        }
        points.sort();
        points.dedup();
        assert!(points.len() > 10, "jitter spreads rotation: {points:?}");
    }

    fn snapshot_with(ids: &[&str]) -> Snapshot {
        let start = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let clock = ManualClock::new(start);
        let td = signet_identity::TrustDomain::parse("example.org").unwrap();
        let ca = Ca::new(
            CaConfig::new(td),
            Arc::new(clock),
            Arc::new(MemoryKeyManager::default()),
            None,
        )
        .unwrap();
        let sid = signet_identity::SpiffeId::parse("spiffe://example.org/w").unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let chain = ca
            .sign_x509_svid(
                &rcgen::PublicKeyData::subject_public_key_info(&key),
                &sid,
                &SvidOptions::default(),
            )
            .unwrap();
        let svid = Arc::new(
            X509Svid::new(
                chain,
                signet_identity::PrivateKey::from_pkcs8_der(key.serialize_der()),
            )
            .unwrap(),
        );
        let mut s = Snapshot::default();
        for id in ids {
            s.svids.insert((*id).to_owned(), svid.clone());
        }
        s
    }

    #[test]
    fn eviction_spares_streamed_entries_and_takes_the_least_recently_served() {
        let demand = Arc::new(Demand::default());
        let snap = snapshot_with(&["a", "b", "c", "d"]);
        assert!(
            evictions(&snap, &demand, 4).is_empty(),
            "nothing over the bound"
        );
        demand.touch(&["b".to_owned()], false);
        demand.touch(&["c".to_owned()], false);
        let mut streaming = StreamDemand::new(demand.clone());
        streaming.set(vec!["a".to_owned()]);
        // Two over: "a" is streamed; "d" was never served; then "b" (older than "c").
        let mut out = evictions(&snap, &demand, 2);
        out.sort();
        assert_eq!(out, ["b", "d"]);
        // Even far over the bound, a streamed entry stays.
        assert!(!evictions(&snap, &demand, 0).contains(&"a".to_owned()));
        drop(streaming);
        assert!(
            evictions(&snap, &demand, 0).contains(&"a".to_owned()),
            "released when the stream ends"
        );
    }
}
