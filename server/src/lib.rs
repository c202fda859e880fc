//! Signet's server (control plane): the certificate authority, where its
//! keys live, the datastore, node attestation, and the admin and node APIs.
//!
//! Role: [`Server`] owns the CA ([`ca`]) and the datastore ([`datastore`]),
//! keeps the CA rotating and its bundle and journal persisted, and follows
//! the change feed so every API can push what changed; [`start`] and
//! [`run`] wire it all as `signet server` runs it ([`lifecycle`]). APIs: [`admin`]
//! (Unix socket, mode 0600) for operators, [`node`] (mTLS over TCP) for
//! agents, which prove who they are with [`attest::node`].
//!
//! Depends on: `signet-identity` for the SPIFFE types, `signet-wire` for the
//! protocols, `signet-tls` for the node API's verifier, `signet-unix` for
//! the admin socket; rcgen and aws-lc-rs for keys and certificates,
//! jsonwebtoken for JWT-SVIDs, sqlx for the datastore.
//!
//! Invariants: keys are generated where they are used and stored 0600;
//! SVIDs are built exactly as DESIGN.md section 3 says; the bundle's
//! sequence increases on every change; an agent only gets what its
//! registration entries authorize (DESIGN.md section 6).

pub mod admin;
pub mod attest;
pub mod authz;
pub mod ca;
pub mod clock;
pub mod datastore;
pub mod downstream;
pub mod federation;
mod https;
pub mod key_manager;
pub mod lifecycle;
pub mod logger;
pub mod node;
pub mod oidc;
pub mod telemetry;
pub mod vault;

pub use ca::{Ca, CaConfig, CaError, SvidOptions, UpstreamAuthority, UpstreamCa};
pub use clock::{Clock, ManualClock, SystemClock};
pub use key_manager::{KeyManager, KeyType};
pub use lifecycle::{OidcInfo, RunConfig, RunError, Running, Upstream, run, start};

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use signet_identity::{Bundle, Entry, SpiffeId, TrustDomain};
use tokio::sync::{Notify, watch};

use crate::ca::CaJournal;
use crate::datastore::{Change, Datastore, DatastoreError, JoinToken};

/// The path of the SPIFFE ID of the agent inside `signet run`, which
/// [`Server::attest_local_agent`] issues its identity to.
pub const LOCAL_AGENT_PATH: &str = "/signet/agent/local";

/// How long the change feed keeps a change: every server reads it every
/// second or so; a follower further behind than this reads the full state.
pub const CHANGE_RETENTION: Duration = Duration::from_secs(3600);

/// Server settings beyond the CA's.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub ca: CaConfig,
    /// Names this server's CA journal in a shared datastore.
    pub server_id: String,
    /// Default life of join tokens.
    pub join_token_ttl: Duration,
    /// Life of agent X509-SVIDs.
    pub agent_svid_ttl: Duration,
    /// Parent of entries created without one (the local agent of the
    /// combined core).
    pub default_parent_id: Option<SpiffeId>,
    /// Agents whose SVID expired this long ago are removed at the next
    /// maintenance step (banned ones stay: their record is the ban).
    pub purge_expired_agents_after: Option<Duration>,
}

impl ServerConfig {
    pub fn new(trust_domain: TrustDomain) -> Self {
        Self {
            ca: CaConfig::new(trust_domain),
            server_id: "signet-server".into(),
            join_token_ttl: Duration::from_secs(600),
            agent_svid_ttl: Duration::from_secs(3600),
            default_parent_id: None,
            purge_expired_agents_after: None,
        }
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.ca.trust_domain
    }
}

/// Server failures, mapped to gRPC statuses at each API's edge.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error(transparent)]
    Datastore(#[from] DatastoreError),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("CA journal in the datastore is unreadable: {0}")]
    Journal(String),
}

/// Adds every X.509 authority and JWT key of `from` to `into`, with their
/// taint marks.
fn merge_keys(into: &mut Bundle, from: &Bundle) {
    for cert in from.x509_authorities() {
        into.add_x509_authority(cert.clone());
        if let Some(id) = signet_identity::x509_svid::authority_id(cert)
            && from.is_tainted(&id)
        {
            into.set_tainted(&id, true);
        }
    }
    for key in from.jwt_authorities() {
        if into.jwt_authority(key.kid()).is_none() {
            into.add_jwt_authority(key.clone());
            if from.is_tainted(key.kid()) {
                into.set_tainted(key.kid(), true);
            }
        }
    }
}

/// Longest wait between two attempts to reach a remote upstream CA.
const REMOTE_RETRY_MAX: Duration = Duration::from_secs(30);

/// Changes read per change-feed query.
const FOLLOW_BATCH: u32 = 1000;
/// Changes kept for subscriptions; a subscription further behind
/// recomputes its agent's entries.
const RECENT_CHANGES: usize = 10_000;

/// Every change after revision `after`, oldest first (at most
/// [`RECENT_CHANGES`]).
#[derive(Debug)]
struct RecentChanges {
    after: u64,
    changes: std::collections::VecDeque<Change>,
}

impl RecentChanges {
    fn push(&mut self, batch: Vec<Change>) {
        self.changes.extend(batch);
        while self.changes.len() > RECENT_CHANGES {
            if let Some(dropped) = self.changes.pop_front() {
                self.after = dropped.revision;
            }
        }
    }
}

/// The running server state shared by its APIs.
pub struct Server {
    config: ServerConfig,
    ca: Ca,
    store: Arc<dyn Datastore>,
    clock: Arc<dyn Clock>,
    /// Latest change-feed revision seen; APIs that push wait on it.
    revision: watch::Sender<u64>,
    /// The changes the follower read, so each subscription can tell
    /// whether one concerns its agent without reading the datastore.
    recent: std::sync::RwLock<RecentChanges>,
    /// Poked after local writes so the feed is read at once.
    wrote: Notify,
    /// Poked when federation relationships change or a refresh is asked
    /// for, so the refresher acts at once.
    pub(crate) federation_poke: Notify,
    /// The CA came from the datastore's journal (false: created at start).
    resumed: bool,
    /// With a remote upstream CA: when to ask it again, and its last error.
    remote: std::sync::Mutex<RemoteStatus>,
    /// A nested server's upstream's bundle, as last fetched: published
    /// with ours.
    upstream_bundle: std::sync::RwLock<Option<Bundle>>,
    /// Our JWT keys the upstream holds (by kid).
    published_jwt: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

/// How asking a remote upstream CA for the next authority goes.
#[derive(Debug)]
struct RemoteStatus {
    retry_at: std::time::Instant,
    backoff: signet_workload::backoff::Backoff,
    /// Since when, and why, it fails (cleared by a success).
    failing: Option<(SystemTime, String)>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("trust_domain", self.config.trust_domain())
            .field("server_id", &self.config.server_id)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Opens the CA (resuming from the datastore's journal for this server
    /// id, or creating one) and publishes the bundle.
    pub async fn start(
        config: ServerConfig,
        store: Arc<dyn Datastore>,
        clock: Arc<dyn Clock>,
        keys: Arc<dyn KeyManager>,
        upstream: Option<UpstreamCa>,
    ) -> Result<Arc<Self>, ServerError> {
        let journal = store.get_ca_journal(&config.server_id).await?;
        let resumed = journal.is_some();
        let (cfg, ca_clock) = (config.ca.clone(), clock.clone());
        let (files, remote) = match upstream {
            Some(UpstreamCa::Files(files)) => (Some(*files), None),
            Some(UpstreamCa::Remote(remote)) => (None, Some(remote)),
            None => (None, None),
        };
        let ca = match (journal, remote) {
            (Some(json), remote) => {
                let journal: CaJournal =
                    serde_json::from_str(&json).map_err(|e| ServerError::Journal(e.to_string()))?;
                match remote {
                    Some(remote) => Ca::restore_remote(cfg, ca_clock, keys, remote, journal)?,
                    None => Ca::restore(cfg, ca_clock, keys, files, journal)?,
                }
            }
            (None, Some(remote)) => Ca::new_remote(cfg, ca_clock, keys, remote).await?,
            (None, None) => Ca::new(cfg, ca_clock, keys, files)?,
        };
        let revision = store.current_revision().await?;
        let server = Arc::new(Self {
            config,
            ca,
            store,
            clock,
            revision: watch::Sender::new(revision),
            recent: std::sync::RwLock::new(RecentChanges {
                after: revision,
                changes: std::collections::VecDeque::new(),
            }),
            wrote: Notify::new(),
            federation_poke: Notify::new(),
            resumed,
            remote: std::sync::Mutex::new(RemoteStatus {
                retry_at: std::time::Instant::now(),
                backoff: signet_workload::backoff::Backoff::new(
                    Duration::from_secs(1),
                    REMOTE_RETRY_MAX,
                ),
                failing: None,
            }),
            upstream_bundle: std::sync::RwLock::new(None),
            published_jwt: std::sync::Mutex::new(std::collections::BTreeSet::new()),
        });
        server.persist_ca().await?;
        Ok(server)
    }

    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        self.config.trust_domain()
    }

    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    /// Whether the CA was resumed from the datastore (false: a new CA was
    /// created when this server started).
    pub fn resumed_ca(&self) -> bool {
        self.resumed
    }

    pub fn store(&self) -> &Arc<dyn Datastore> {
        &self.store
    }

    pub fn now(&self) -> SystemTime {
        self.clock.now()
    }

    pub fn now_secs(&self) -> i64 {
        self.clock
            .now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
    }

    /// A receiver that sees every new change-feed revision.
    pub fn watch_revision(&self) -> watch::Receiver<u64> {
        self.revision.subscribe()
    }

    /// Call after a local write so pushes go out without waiting for a poll.
    pub fn wrote(&self) {
        self.wrote.notify_one();
    }

    /// Writes the CA journal and, when its keys changed, the own bundle.
    async fn persist_ca(&self) -> Result<(), ServerError> {
        let journal = serde_json::to_string(&self.ca.journal()?)
            .map_err(|e| ServerError::Journal(e.to_string()))?;
        self.store
            .put_ca_journal(&self.config.server_id, &journal)
            .await?;
        self.publish_bundle().await
    }

    /// Runs an operator's CA operation (`Ca::prepare`, `activate`, `taint`,
    /// `revoke`), then saves the journal and publishes the bundle at once.
    pub async fn change_authorities<T>(
        &self,
        op: impl FnOnce(&Ca) -> Result<T, CaError>,
    ) -> Result<T, ServerError> {
        let out = op(&self.ca)?;
        self.persist_ca().await?;
        Ok(out)
    }

    /// An operator's `prepare`. With a remote upstream CA the X.509
    /// authority is signed there first, with no lock held.
    pub async fn prepare_authority(
        &self,
        kind: ca::AuthorityKind,
    ) -> Result<ca::AuthorityInfo, ServerError> {
        if kind == ca::AuthorityKind::X509 && self.ca.remote_upstream().is_some() {
            let minted = self.ca.mint_remote().await?;
            self.remote_answered();
            return self
                .change_authorities(|ca| {
                    ca.install_remote(minted, true)?;
                    ca.find(kind, ca::AuthorityState::Prepared)
                })
                .await;
        }
        self.change_authorities(|ca| ca.prepare(kind)).await
    }

    /// The remote upstream CA signed: attempts start again from the
    /// shortest backoff, and a failure it was in is over.
    fn remote_answered(&self) {
        let mut status = self
            .remote
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        status.backoff.reset();
        status.retry_at = std::time::Instant::now();
        if let Some((since, _)) = status.failing.take() {
            tracing::info!(
                failing_since = %humantime::format_rfc3339_seconds(since),
                "the upstream CA answers again"
            );
        }
        metrics::counter!("signet_server_upstream_mints_total", "result" => "ok").increment(1);
        metrics::gauge!("signet_server_upstream_up").set(1.0);
    }

    /// With a remote upstream CA: `None` while it answers (or there is
    /// none), else since when and why asking it for the next authority
    /// fails. The active authority signs meanwhile, until it expires.
    pub fn upstream_failing(&self) -> Option<(SystemTime, String)> {
        self.remote
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .failing
            .clone()
    }

    /// With a remote upstream CA, asks it for the next X.509 authority
    /// when the rotation schedule wants one; a failure is logged and
    /// retried with backoff (the active authority signs meanwhile).
    /// True when an authority was installed.
    async fn prepare_from_remote(&self) -> bool {
        if !self.ca.remote_prepare_due() {
            return false;
        }
        let lock = || {
            self.remote
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        if lock().retry_at > std::time::Instant::now() {
            return false;
        }
        let result = match self.ca.mint_remote().await {
            Ok(minted) => self.ca.install_remote(minted, false),
            Err(e) => Err(e),
        };
        let e = match result {
            Ok(installed) => {
                self.remote_answered();
                return installed;
            }
            Err(e) => e,
        };
        let mut status = lock();
        let delay = status.backoff.next_delay();
        status.retry_at = std::time::Instant::now() + delay;
        let since = status.failing.as_ref().map_or(self.now(), |f| f.0);
        status.failing = Some((since, e.to_string()));
        let active_until = self.ca.x509_authority().not_after();
        tracing::warn!(
            error = %e,
            retry_in = ?delay,
            failing_since = %humantime::format_rfc3339_seconds(since),
            active_authority_expires = %humantime::format_rfc3339_seconds(active_until),
            "cannot get the next X.509 authority from the upstream CA; the active one signs until it expires"
        );
        metrics::counter!("signet_server_upstream_mints_total", "result" => "error").increment(1);
        metrics::gauge!("signet_server_upstream_up").set(0.0);
        false
    }

    /// A nested server: fetches the upstream's bundle (its roots, its JWT
    /// keys and those of every downstream) to publish with ours. A failure
    /// keeps the last one.
    async fn follow_upstream(&self) {
        let Some(remote) = self.ca.remote_upstream() else {
            return;
        };
        match remote.fetch_bundle().await {
            None => {}
            Some(Ok(bundle)) => {
                if bundle.trust_domain() != self.trust_domain() {
                    tracing::warn!(upstream = remote.describe(), trust_domain = %bundle.trust_domain(), "the upstream's bundle is of another trust domain; ignored");
                    return;
                }
                *self
                    .upstream_bundle
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(bundle);
            }
            Some(Err(e)) => {
                tracing::debug!(upstream = remote.describe(), error = %e, "cannot fetch the upstream's bundle; the last one stays");
            }
        }
    }

    /// A nested server: publishes our JWT keys (active and prepared) in
    /// the upstream's bundle, each once, so JWT-SVIDs we sign verify with
    /// the root trust domain's keys. Retried at every tick until it works.
    async fn publish_jwt_keys_upstream(&self) {
        let Some(remote) = self.ca.remote_upstream() else {
            return;
        };
        for key in self.ca.own_jwt_keys() {
            let done = self
                .published_jwt
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .contains(key.kid());
            if done {
                continue;
            }
            match remote
                .publish_jwt_key(key.kid(), key.spki(), key.not_after())
                .await
            {
                Ok(true) => {
                    tracing::info!(
                        kid = key.kid(),
                        upstream = remote.describe(),
                        "JWT key published upstream"
                    );
                    self.published_jwt
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(key.kid().to_owned());
                }
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(kid = key.kid(), upstream = remote.describe(), error = %e, "cannot publish a JWT key upstream; retrying");
                    return;
                }
            }
        }
    }

    /// Refuses to taint the upstream authority `id` while another server
    /// on this datastore signs under it: its agents would replace their
    /// SVIDs with ones that are tainted again, over and over.
    pub async fn upstream_unused_elsewhere(&self, id: &str) -> Result<(), ServerError> {
        for (server_id, json) in self.store.list_ca_journals().await? {
            if server_id == self.config.server_id {
                continue;
            }
            let Ok(journal) = serde_json::from_str::<CaJournal>(&json) else {
                continue;
            };
            let Some(active) = journal.x509.first() else {
                continue;
            };
            let pem = format!("{}\n{}", active.cert_pem, active.intermediates_pem);
            let chain =
                signet_identity::bundle::certificates_from_pem(pem.as_bytes()).unwrap_or_default();
            if signet_identity::x509_svid::chain_authority_ids(&chain)
                .iter()
                .any(|i| i == id)
            {
                return Err(
                    ca::CaError::Authority(ca::AuthorityError::UpstreamInUseElsewhere {
                        id: id.to_owned(),
                        server_id,
                    })
                    .into(),
                );
            }
        }
        Ok(())
    }

    /// Stores the own bundle when its keys changed.
    async fn publish_bundle(&self) -> Result<(), ServerError> {
        let bundle = self.published_bundle().await?;
        let stored = self.store.get_bundle(self.trust_domain()).await?;
        if stored.as_ref().is_none_or(|s| !s.same_keys(&bundle)) {
            self.store.put_bundle(&bundle).await?;
            self.wrote();
        }
        Ok(())
    }

    /// The own trust bundle to publish: the keys of every server's CA that
    /// shares this datastore (their journals' bundles), so agents of one
    /// server trust SVIDs of all. The sequence moves past the stored one.
    async fn published_bundle(&self) -> Result<Bundle, ServerError> {
        let mut bundle = self.ca.bundle();
        // Upstream roots revoked on any server stay out of the bundle of all.
        let mut revoked = self.ca.revoked();
        for (server_id, json) in self.store.list_ca_journals().await? {
            if server_id == self.config.server_id {
                continue;
            }
            let Ok(journal) = serde_json::from_str::<CaJournal>(&json) else {
                tracing::warn!(
                    server_id,
                    "ignoring an unreadable CA journal of another server"
                );
                continue;
            };
            if journal.trust_domain != self.trust_domain().as_str() {
                continue;
            }
            revoked.extend(journal.revoked.iter().cloned());
            let Ok(theirs) = Bundle::parse_json(
                self.trust_domain().clone(),
                journal.bundle.to_string().as_bytes(),
            ) else {
                continue;
            };
            // Keys of a server that stopped rotating leave once expired.
            let now = self.now_secs();
            for cert in theirs.x509_authorities() {
                let live = signet_identity::x509_svid::certificate_not_after(cert)
                    .is_some_and(|t| t > now);
                if live {
                    bundle.add_x509_authority(cert.clone());
                    if let Some(id) = signet_identity::x509_svid::authority_id(cert)
                        && theirs.is_tainted(&id)
                    {
                        bundle.set_tainted(&id, true);
                    }
                }
            }
            for key in theirs.jwt_authorities() {
                let live = journal.jwt_expiry.get(key.kid()).is_some_and(|t| *t > now);
                if live && bundle.jwt_authority(key.kid()).is_none() {
                    bundle.add_jwt_authority(key.clone());
                    if theirs.is_tainted(key.kid()) {
                        bundle.set_tainted(key.kid(), true);
                    }
                }
            }
        }
        // A nested server publishes its upstream's keys too (its roots,
        // the JWT keys of every level).
        let upstream = self
            .upstream_bundle
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some(up) = upstream {
            merge_keys(&mut bundle, &up);
        }
        bundle.remove_x509_authorities(|c| {
            signet_identity::x509_svid::authority_id(c).is_some_and(|id| revoked.contains(&id))
        });
        let stored = self.store.get_bundle(self.trust_domain()).await?;
        let seq = match &stored {
            Some(s) if s.same_keys(&bundle) => s.sequence(),
            Some(s) => s.sequence().max(bundle.sequence()) + 1,
            None => bundle.sequence(),
        };
        bundle.set_sequence(seq);
        Ok(bundle)
    }

    /// One maintenance step: CA rotation, bundle and journal persistence
    /// (and other servers' rotations, in a shared datastore), expired join
    /// tokens, changes older than [`CHANGE_RETENTION`]. Run it every few
    /// seconds.
    pub async fn tick(&self) -> Result<(), ServerError> {
        self.follow_upstream().await;
        let prepared = self.prepare_from_remote().await;
        let r = self.ca.rotate()?;
        self.publish_jwt_keys_upstream().await;
        if prepared || r != crate::ca::Rotation::default() {
            self.persist_ca().await?;
        } else {
            self.publish_bundle().await?;
        }
        self.store.prune_join_tokens(self.now_secs()).await?;
        if let Some(after) = self.config.purge_expired_agents_after {
            self.purge_expired_agents(after).await?;
        }
        let pruned = self
            .store
            .prune_changes(self.now_secs() - CHANGE_RETENTION.as_secs() as i64)
            .await?;
        if pruned > 0 {
            tracing::debug!(pruned, "change feed pruned");
        }
        Ok(())
    }

    /// Removes agents whose SVID expired more than `after` ago: they
    /// stopped renewing and can only come back by attesting again. Never a
    /// banned agent (removing its record would lift the ban) or the local
    /// agent of `signet run`.
    async fn purge_expired_agents(&self, after: Duration) -> Result<(), ServerError> {
        let before = self
            .now_secs()
            .saturating_sub(i64::try_from(after.as_secs()).unwrap_or(i64::MAX));
        let mut purged = 0u64;
        for node in self.store.list_nodes().await? {
            if node.svid_expires_at > before
                || node.banned
                || node.spiffe_id.path() == LOCAL_AGENT_PATH
            {
                continue;
            }
            if self.store.delete_node(&node.spiffe_id).await? {
                purged += 1;
                tracing::info!(agent_id = %node.spiffe_id, silent_for = ?after, "agent purged: its SVID expired and it did not come back");
            }
        }
        if purged > 0 {
            metrics::counter!("signet_server_agents_purged_total").increment(purged);
            self.wrote();
        }
        Ok(())
    }

    /// Follows the change feed until `stop` resolves: reads it after every
    /// local write and at least every `poll` (other servers may write to a
    /// shared database), and publishes the newest revision.
    pub async fn follow_changes(&self, poll: Duration, stop: impl Future<Output = ()>) {
        use tokio_stream::StreamExt;
        tokio::pin!(stop);
        // Other servers' writes, as they commit (PostgreSQL); the poll
        // stays as the fallback.
        let mut notifications = self.store.change_notifications().await;
        loop {
            let notified = async {
                match notifications.as_mut() {
                    Some(n) => n.next().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut stop => return,
                _ = self.wrote.notified() => {}
                n = notified => if n.is_none() {
                    tracing::warn!("change notifications ended; polling only");
                    notifications = None;
                },
                _ = tokio::time::sleep(poll) => {}
            }
            // Read every change since the last one seen (in batches), keep
            // them for the subscriptions, then publish the newest revision.
            loop {
                let from = *self.revision.borrow();
                match self.store.changes_since(from, FOLLOW_BATCH).await {
                    Ok(batch) => {
                        let Some(newest) = batch.last().map(|c| c.revision) else {
                            break;
                        };
                        let full = batch.len() == FOLLOW_BATCH as usize;
                        self.recent
                            .write()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .push(batch);
                        self.revision.send_replace(newest);
                        if !full {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the change feed");
                        break;
                    }
                }
            }
        }
    }

    /// The changes after revision `after` up to `to`, if this server still
    /// holds them all (`None`: ask the datastore, or recompute).
    pub fn changes_between(&self, after: u64, to: u64) -> Option<Vec<Change>> {
        let recent = self
            .recent
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if after < recent.after {
            return None;
        }
        // Oldest first: skip to the first change after `after`.
        let start = recent.changes.partition_point(|c| c.revision <= after);
        Some(
            recent
                .changes
                .range(start..)
                .take_while(|c| c.revision <= to)
                .cloned()
                .collect(),
        )
    }

    /// The own trust bundle as published (every server's CA in a shared
    /// datastore), falling back to this CA's.
    pub async fn own_bundle(&self) -> Result<Bundle, ServerError> {
        Ok(self
            .store
            .get_bundle(self.trust_domain())
            .await?
            .unwrap_or_else(|| self.ca.bundle()))
    }

    /// Every entry whose SPIFFE ID is `id` (to check the flags a caller
    /// presenting that ID has: admin, downstream).
    pub async fn entries_named(&self, id: &SpiffeId) -> Result<Vec<Entry>, ServerError> {
        let filter = datastore::EntryFilter {
            spiffe_id: Some(id.clone()),
            ..datastore::EntryFilter::default()
        };
        Ok(self.store.list_entries(&filter).await?)
    }

    /// Validates and stores a new entry.
    pub async fn create_entry(&self, mut entry: Entry) -> Result<Entry, ServerError> {
        entry.id.clear();
        entry.revision = 0;
        entry
            .check(self.trust_domain())
            .map_err(|e| ServerError::InvalidArgument(e.to_string()))?;
        let created = self.store.create_entry(entry).await?;
        self.wrote();
        tracing::info!(entry_id = %created.id, spiffe_id = %created.spiffe_id, parent_id = %created.parent_id, "entry created");
        Ok(created)
    }

    /// Validates and replaces an entry.
    pub async fn update_entry(&self, entry: Entry) -> Result<Entry, ServerError> {
        if entry.id.is_empty() {
            return Err(ServerError::InvalidArgument("entry id is required".into()));
        }
        entry
            .check(self.trust_domain())
            .map_err(|e| ServerError::InvalidArgument(e.to_string()))?;
        let updated = self.store.update_entry(entry).await?;
        self.wrote();
        tracing::info!(entry_id = %updated.id, revision = updated.revision, "entry updated");
        Ok(updated)
    }

    pub async fn delete_entry(&self, id: &str) -> Result<Entry, ServerError> {
        let deleted = self.store.delete_entry(id).await?;
        self.wrote();
        tracing::info!(entry_id = %deleted.id, "entry deleted");
        Ok(deleted)
    }

    /// Creates a single-use join token; returns its value (only a hash is
    /// stored) and expiry.
    pub async fn create_join_token(
        &self,
        ttl: Option<Duration>,
        agent_id: Option<SpiffeId>,
    ) -> Result<(String, i64), ServerError> {
        if let Some(id) = &agent_id {
            id.require_member_of(self.trust_domain())
                .map_err(|e| ServerError::InvalidArgument(format!("agent_id: {e}")))?;
            if id.is_reserved() && !id.path().starts_with(crate::node::AGENT_ID_PREFIX) {
                return Err(ServerError::InvalidArgument(format!(
                    "agent_id {id} is reserved for Signet's server: an agent's ID is under spiffe://{}{} or outside {}",
                    id.trust_domain_str(),
                    crate::node::AGENT_ID_PREFIX,
                    signet_identity::spiffe_id::RESERVED_PREFIX
                )));
            }
        }
        let mut raw = [0u8; 16];
        aws_lc_rs::rand::fill(&mut raw)
            .map_err(|_| ServerError::InvalidArgument("no randomness".into()))?;
        let token = crate::attest::node::join_token::hex(&raw);
        let expires_at =
            self.now_secs() + ttl.unwrap_or(self.config.join_token_ttl).as_secs() as i64;
        self.store
            .create_join_token(&JoinToken {
                hash: crate::attest::node::join_token::token_hash(&token),
                expires_at,
                agent_id,
            })
            .await?;
        Ok((token, expires_at))
    }
}

impl Server {
    /// Issues the combined core's own agent its SVID directly (implicit
    /// attestation: it runs inside this process) and records the node.
    pub async fn attest_local_agent(
        &self,
        agent_id: &SpiffeId,
    ) -> Result<(signet_identity::X509Svid, Bundle), ServerError> {
        use rcgen::PublicKeyData;
        let key =
            rcgen::KeyPair::generate().map_err(|e| ServerError::InvalidArgument(e.to_string()))?;
        let opts = crate::ca::SvidOptions {
            ttl: Some(self.config.agent_svid_ttl),
            dns_names: Vec::new(),
        };
        let chain = self
            .ca
            .sign_x509_svid(&key.subject_public_key_info(), agent_id, &opts)?;
        let svid = signet_identity::X509Svid::new(
            chain,
            signet_identity::PrivateKey::from_pkcs8_der(key.serialize_der()),
        )
        .map_err(|e| ServerError::InvalidArgument(e.to_string()))?;
        let expires = svid
            .not_after()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let node = crate::datastore::AttestedNode {
            spiffe_id: agent_id.clone(),
            attestor: "local".into(),
            selectors: Vec::new(),
            svid_serial: svid.serial().to_owned(),
            svid_expires_at: expires,
            banned: false,
            can_reattest: false,
        };
        let existing = self.store.get_node(agent_id).await?;
        if existing.as_ref().is_some_and(|n| n.banned) {
            return Err(ServerError::PermissionDenied(format!(
                "agent {agent_id} is banned"
            )));
        }
        if !self.store.swap_node(existing.as_ref(), &node).await? {
            return Err(ServerError::PermissionDenied(format!(
                "agent {agent_id} changed (banned?) while attesting"
            )));
        }
        self.wrote();
        Ok((svid, self.own_bundle().await?))
    }
}
