//! The server's datastore: registration entries, attested nodes, join
//! tokens, bundles, the CA journal and an entry change feed.
//!
//! One trait, [`Datastore`], implemented once ([`sql`]) for SQLite
//! (embedded, the default; `sqlite:///path/to/signet.db`) and PostgreSQL
//! (several servers sharing one database; `postgres://...`). [`open`] picks
//! the backend from the URL. Both pass one conformance suite
//! (`core/tests/datastore_conformance.rs`).
//!
//! Rules every implementation keeps:
//! - Writes are transactional (security invariant 7).
//! - Opening never re-initialises existing data: a corrupt or unreachable
//!   database is an error naming the problem (security invariant 6).
//! - Every write that changes what an agent may receive (entries, nodes,
//!   bundles) appends a [`Change`] with a new, strictly increasing revision
//!   in the same transaction, so servers can follow the feed and agents can
//!   resume from a revision.

pub mod sql;

use std::fmt;

use serde::{Deserialize, Serialize};
use signet_identity::{Entry, Selector, SpiffeId, TrustDomain};

pub use sql::{open, redact_url};

/// Datastore failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DatastoreError {
    #[error("cannot open the datastore at {url}: {reason}")]
    Open { url: String, reason: String },
    #[error("datastore schema: {0}")]
    Schema(String),
    #[error(
        "an entry with the same SPIFFE ID, parent ID and selectors already exists (id {existing_id})"
    )]
    DuplicateEntry { existing_id: String },
    #[error("no entry with id {0}")]
    EntryNotFound(String),
    #[error("entry {id} was changed concurrently (expected revision {expected})")]
    Conflict { id: String, expected: u64 },
    #[error("no attested node with SPIFFE ID {0}")]
    NodeNotFound(String),
    #[error("a join token with that value already exists")]
    DuplicateToken,
    #[error("a federation relationship with {0} already exists")]
    DuplicateFederation(String),
    #[error("no federation relationship with {0}")]
    FederationNotFound(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("datastore query failed: {0}")]
    Query(String),
}

pub type Result<T> = std::result::Result<T, DatastoreError>;

/// Which entries to list. Empty fields do not filter; set fields combine
/// with AND.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryFilter {
    pub id: Option<String>,
    pub spiffe_id: Option<SpiffeId>,
    pub parent_id: Option<SpiffeId>,
    /// Selectors and how they must match the entry's selector set.
    pub selectors: Option<(Vec<Selector>, SelectorMatch)>,
    pub federates_with: Option<TrustDomain>,
    /// Only entries with the `node` flag (node-alias entries).
    pub node_only: bool,
}

/// How a selector filter matches an entry's selectors (SPIRE's match modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SelectorMatch {
    /// The entry's selectors equal the given set.
    #[default]
    Exact,
    /// The entry's selectors are a subset of the given set (what a workload
    /// with these observed selectors is entitled to).
    Subset,
    /// The entry's selectors include all of the given set.
    Superset,
    /// The entry has at least one of the given selectors.
    Any,
}

/// An agent that completed node attestation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestedNode {
    /// The agent's SPIFFE ID, `spiffe://<td>/signet/agent/<attestor>/<id>`.
    pub spiffe_id: SpiffeId,
    /// Node attestor name: `join_token`, `x509pop`.
    pub attestor: String,
    /// Node selectors the attestor produced (`x509pop:subject:cn:node-1`).
    pub selectors: Vec<Selector>,
    /// Serial (lowercase hex) of the agent SVID currently valid.
    pub svid_serial: String,
    /// NotAfter of that SVID, unix seconds.
    pub svid_expires_at: i64,
    /// A banned node is refused for good until unbanned.
    pub banned: bool,
    /// Whether the attestor allows re-attestation after eviction.
    pub can_reattest: bool,
}

impl From<&AttestedNode> for signet_wire::types::AttestedNode {
    fn from(n: &AttestedNode) -> Self {
        Self {
            spiffe_id: n.spiffe_id.to_string(),
            attestor: n.attestor.clone(),
            selectors: n.selectors.iter().map(ToString::to_string).collect(),
            svid_serial: n.svid_serial.clone(),
            svid_expires_at: n.svid_expires_at,
            banned: n.banned,
            can_reattest: n.can_reattest,
        }
    }
}

/// A join token as stored: only a hash of the token value is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// Lowercase hex SHA-256 of the token value.
    pub hash: String,
    /// Unix seconds after which the token is refused.
    pub expires_at: i64,
    /// The agent SPIFFE ID to issue, when fixed at generation time.
    pub agent_id: Option<SpiffeId>,
}

/// What a change touched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ChangeKind {
    EntryCreated {
        entry_id: String,
        parent_id: SpiffeId,
        /// A node-alias entry (before or after the change): it may change
        /// what any agent is authorized for. Older records lack it.
        #[serde(default)]
        node: bool,
    },
    EntryUpdated {
        entry_id: String,
        parent_id: SpiffeId,
        old_parent_id: SpiffeId,
        #[serde(default)]
        node: bool,
    },
    EntryDeleted {
        entry_id: String,
        parent_id: SpiffeId,
        #[serde(default)]
        node: bool,
    },
    NodeUpdated {
        spiffe_id: SpiffeId,
    },
    NodeDeleted {
        spiffe_id: SpiffeId,
    },
    BundleUpdated {
        trust_domain: TrustDomain,
    },
    BundleDeleted {
        trust_domain: TrustDomain,
    },
}

/// One entry of the change feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub revision: u64,
    pub kind: ChangeKind,
}

/// Persistent state of the server.
#[async_trait::async_trait]
pub trait Datastore: Send + Sync + fmt::Debug {
    /// Stores a new entry; assigns `id` when empty (a random UUID-like
    /// string) and `revision`. Refuses a duplicate (same SPIFFE ID, parent
    /// ID and selector set). The entry is assumed already validated.
    async fn create_entry(&self, entry: Entry) -> Result<Entry>;
    /// Replaces an entry by id. When `entry.revision` is non-zero it must
    /// equal the stored revision (optimistic concurrency). Returns the entry
    /// with its new revision.
    async fn update_entry(&self, entry: Entry) -> Result<Entry>;
    /// Deletes an entry by id and returns it.
    async fn delete_entry(&self, id: &str) -> Result<Entry>;
    async fn get_entry(&self, id: &str) -> Result<Option<Entry>>;
    /// Entries matching the filter, ordered by id.
    async fn list_entries(&self, filter: &EntryFilter) -> Result<Vec<Entry>>;
    async fn count_entries(&self) -> Result<u64>;
    /// Entries whose parent ID is one of `parents` (the agent's ID and the
    /// node-alias IDs it belongs to), ordered by id.
    async fn list_entries_by_parents(&self, parents: &[SpiffeId]) -> Result<Vec<Entry>>;

    /// Inserts or replaces an attested node by SPIFFE ID.
    async fn put_node(&self, node: &AttestedNode) -> Result<()>;
    /// Stores `updated` only if the stored node is still exactly `current`
    /// (`None`: no node stored), in one atomic step; false when another
    /// writer changed or deleted it first (security invariant 7: a ban is
    /// never undone by a renewal in flight). Callers re-read and decide.
    async fn swap_node(
        &self,
        current: Option<&AttestedNode>,
        updated: &AttestedNode,
    ) -> Result<bool>;
    async fn get_node(&self, spiffe_id: &SpiffeId) -> Result<Option<AttestedNode>>;
    async fn list_nodes(&self) -> Result<Vec<AttestedNode>>;
    /// Deletes a node (eviction). Returns whether it existed.
    async fn delete_node(&self, spiffe_id: &SpiffeId) -> Result<bool>;

    /// Stores a join token by its hash.
    async fn create_join_token(&self, token: &JoinToken) -> Result<()>;
    /// Atomically removes and returns the token with this hash, if present
    /// (expired or not: the caller checks expiry). Single use: a second call
    /// with the same hash returns `None`.
    async fn take_join_token(&self, hash: &str) -> Result<Option<JoinToken>>;
    /// Deletes tokens that expired before `now` (unix seconds).
    async fn prune_join_tokens(&self, now: i64) -> Result<u64>;

    /// Stores the bundle of its trust domain (own or federated), as SPIFFE
    /// bundle JSON.
    async fn put_bundle(&self, bundle: &signet_identity::Bundle) -> Result<()>;
    async fn get_bundle(&self, td: &TrustDomain) -> Result<Option<signet_identity::Bundle>>;
    async fn list_bundles(&self) -> Result<Vec<signet_identity::Bundle>>;
    async fn delete_bundle(&self, td: &TrustDomain) -> Result<bool>;
    /// Stores a federation relationship: a new one when `create` (one with
    /// that trust domain is refused), else a replacement (which must exist).
    async fn put_federation(
        &self,
        rel: &crate::federation::Relationship,
        create: bool,
    ) -> Result<()>;
    async fn get_federation(
        &self,
        td: &TrustDomain,
    ) -> Result<Option<crate::federation::Relationship>>;
    /// Every relationship, by trust domain.
    async fn list_federations(&self) -> Result<Vec<crate::federation::Relationship>>;
    async fn delete_federation(&self, td: &TrustDomain) -> Result<bool>;

    /// Stores the CA journal (JSON) of one server.
    async fn put_ca_journal(&self, server_id: &str, journal_json: &str) -> Result<()>;
    async fn get_ca_journal(&self, server_id: &str) -> Result<Option<String>>;
    /// Every server's CA journal, by server id (several servers may share
    /// one database; the own bundle is the union of theirs).
    async fn list_ca_journals(&self) -> Result<Vec<(String, String)>>;

    /// The highest revision in the change feed (0 when empty).
    async fn current_revision(&self) -> Result<u64>;
    /// Wakes when another process may have appended to the change feed
    /// (PostgreSQL: LISTEN on the channel every writer notifies on commit);
    /// `None` where only this process writes, or listening failed: the
    /// follower polls.
    async fn change_notifications(
        &self,
    ) -> Option<std::pin::Pin<Box<dyn tokio_stream::Stream<Item = ()> + Send>>> {
        None
    }
    /// Changes with revision > `after`, oldest first, at most `limit`.
    async fn changes_since(&self, after: u64, limit: u32) -> Result<Vec<Change>>;
    /// Deletes changes recorded before `before` (unix seconds), except the
    /// newest, so [`Datastore::current_revision`] never goes back; returns
    /// how many went. Followers that fell further behind read the full state.
    async fn prune_changes(&self, before: i64) -> Result<u64>;
}
