//! The SQL datastore: one implementation over sqlx's `Any` driver for both
//! SQLite (embedded default) and PostgreSQL (several servers on one
//! database). Only the schema's DDL differs between the two.
//!
//! SQLite runs in WAL mode with a busy timeout and foreign keys on, and
//! this process writes through one writer at a time; an existing file is
//! checked read-only before anything is written to it, and `sqlite::memory:`
//! uses a single connection (each connection would be its own database).
//!
//! PostgreSQL enforces uniqueness itself, so several servers may write at
//! once. Two advisory locks keep them safe: one serializes schema creation
//! (servers starting together on an empty database), one is taken by every
//! change-feed writer right before it appends its change, so revisions
//! (from a sequence) become visible in increasing order and a follower
//! reading `changes_since` never skips a revision that commits late.
//!
//! Every mutation the change feed carries is one [`Write`]: the writer
//! turn, a transaction, the statements, the change record, the commit. The
//! tables' code is in [`entries`], [`nodes`] (and join tokens), [`bundles`]
//! (and CA journals) and [`changes`].

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use signet_identity::{Bundle, Entry, SpiffeId, TrustDomain};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Row};
use tokio::sync::Mutex;

mod bundles;
mod changes;
mod entries;
mod federations;
mod nodes;

use super::{
    AttestedNode, Change, ChangeKind, Datastore, DatastoreError, EntryFilter, JoinToken, Result,
};
use crate::federation::Relationship;

/// Schema version this build writes and understands.
pub const SCHEMA_VERSION: i64 = 3;

/// Forward migrations: `MIGRATIONS[n]` takes a version `n + 1` schema to
/// version `n + 2`. A new database is made at version 1 and brought up by
/// these too, so every database takes the same path.
const MIGRATIONS: &[&[&str]] = &[
    // 2: when each change was recorded, so the feed can be pruned by age.
    &["ALTER TABLE changes ADD COLUMN created_at BIGINT NOT NULL DEFAULT 0"],
    // 3: federation relationships, one per foreign trust domain.
    &["CREATE TABLE federations (trust_domain TEXT PRIMARY KEY, data TEXT NOT NULL)"],
];

/// PostgreSQL advisory lock keys ("SIGNET" + a number).
const MIGRATION_LOCK: i64 = 0x5349_474e_4554_0001;
const CHANGE_FEED_LOCK: i64 = 0x5349_474e_4554_0002;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Sqlite,
    Postgres,
}

/// The PostgreSQL channel every change-feed writer notifies on commit (the
/// `pg_notify` in [`Write::commit`] names it too).
const CHANGES_CHANNEL: &str = "signet_changes";

/// A datastore on SQLite or PostgreSQL.
#[derive(Debug)]
pub struct SqlDatastore {
    pool: AnyPool,
    dialect: Dialect,
    /// Serializes this process's writes (SQLite has one writer).
    write: Mutex<()>,
    /// PostgreSQL: where to LISTEN for other servers' changes.
    listen_url: Option<ListenUrl>,
}

/// A connection URL kept for LISTEN; shown redacted.
struct ListenUrl(String);

impl std::fmt::Debug for ListenUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

/// A write in progress (see [`SqlDatastore::write`]). Dropped without
/// [`Write::commit`], it rolls back, then gives up the writer turn.
struct Write<'a> {
    store: &'a SqlDatastore,
    tx: sqlx::Transaction<'static, sqlx::Any>,
    /// What is being done, for errors.
    op: &'static str,
    _turn: Option<tokio::sync::MutexGuard<'a, ()>>,
}

impl Write<'_> {
    /// Appends `change` (if the write made one) to the change feed in the
    /// same transaction, then commits.
    async fn commit(mut self, change: Option<ChangeKind>) -> Result<()> {
        if let Some(kind) = change {
            self.store.record_change(&mut self.tx, &kind).await?;
            if self.store.dialect == Dialect::Postgres {
                // Delivered to every listening server when this commits.
                sqlx::query("SELECT pg_notify('signet_changes', '')")
                    .execute(&mut *self.tx)
                    .await
                    .map_err(query_err(self.op))?;
            }
        }
        self.tx.commit().await.map_err(query_err(self.op))
    }
}

fn query_err(op: &'static str) -> impl Fn(sqlx::Error) -> DatastoreError {
    move |e| DatastoreError::Query(format!("{op}: {e}"))
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> DatastoreError {
    DatastoreError::Corrupt(format!("{what}: {e}"))
}

/// The statements that create schema version 1 (then [`MIGRATIONS`]).
fn schema(dialect: Dialect) -> Vec<String> {
    let serial = match dialect {
        Dialect::Sqlite => "INTEGER PRIMARY KEY AUTOINCREMENT",
        Dialect::Postgres => "BIGSERIAL PRIMARY KEY",
    };
    vec![
        "CREATE TABLE signet_schema (version BIGINT NOT NULL)".into(),
        "CREATE TABLE entries (id TEXT PRIMARY KEY, spiffe_id TEXT NOT NULL, parent_id TEXT NOT NULL, \
         identity_key TEXT NOT NULL UNIQUE, node BIGINT NOT NULL, revision BIGINT NOT NULL, data TEXT NOT NULL)"
            .into(),
        "CREATE INDEX entries_spiffe_id ON entries (spiffe_id)".into(),
        "CREATE INDEX entries_parent_id ON entries (parent_id)".into(),
        "CREATE TABLE entry_selectors (entry_id TEXT NOT NULL REFERENCES entries (id) ON DELETE CASCADE, \
         selector TEXT NOT NULL, PRIMARY KEY (entry_id, selector))"
            .into(),
        "CREATE INDEX entry_selectors_selector ON entry_selectors (selector)".into(),
        "CREATE TABLE nodes (spiffe_id TEXT PRIMARY KEY, data TEXT NOT NULL)".into(),
        "CREATE TABLE join_tokens (hash TEXT PRIMARY KEY, expires_at BIGINT NOT NULL, agent_id TEXT)".into(),
        "CREATE TABLE bundles (trust_domain TEXT PRIMARY KEY, data TEXT NOT NULL)".into(),
        "CREATE TABLE ca_journals (server_id TEXT PRIMARY KEY, data TEXT NOT NULL)".into(),
        format!("CREATE TABLE changes (revision {serial}, data TEXT NOT NULL)"),
        "INSERT INTO signet_schema (version) VALUES (1)".into(),
    ]
}

/// `$1, $2, ...` placeholders starting after `from`.
fn placeholders(from: usize, n: usize) -> String {
    (from + 1..=from + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl SqlDatastore {
    /// Opens (creating on first use) the datastore at `url`.
    pub async fn open(url: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let open_err = |reason: String| DatastoreError::Open {
            url: redact_url(url),
            reason,
        };
        let dialect = if url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Dialect::Postgres
        } else {
            let scheme = url.split_once(':').map_or("(none)", |(s, _)| s);
            return Err(open_err(format!(
                "unsupported URL scheme `{scheme}`: use sqlite://PATH, sqlite::memory: or postgres://..."
            )));
        };
        let mut url = url.to_owned();
        if dialect == Dialect::Sqlite
            && !url.contains("mode=")
            && let Some(path) = sqlite_file(&url)
        {
            // Create the file only when there is none: an existing file is
            // opened as it is and checked, never re-created.
            let mode = if std::path::Path::new(path).exists() {
                // Setting WAL mode writes to the file: first make sure it
                // is a Signet datastore (or empty), reading it read-only.
                check_sqlite_file(path).await.map_err(|e| match e {
                    DatastoreError::Query(reason) => open_err(reason),
                    other => other,
                })?;
                "mode=rw"
            } else {
                // The datastore holds every entry and node record: only
                // the server's user may read it (SQLite gives its -wal and
                // -shm files the same mode).
                create_private_file(path)
                    .map_err(|e| open_err(format!("cannot create {path}: {e}")))?;
                "mode=rwc"
            };
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str(mode);
        }
        let options = AnyConnectOptions::from_str(&url).map_err(|e| open_err(e.to_string()))?;
        let mut pool = AnyPoolOptions::new()
            .max_connections(match dialect {
                Dialect::Sqlite => 4,
                Dialect::Postgres => 16,
            })
            .acquire_timeout(Duration::from_secs(10));
        if dialect == Dialect::Sqlite && sqlite_file(&url).is_none() {
            // Each connection to `:memory:` is its own database, gone when
            // the connection closes: use one connection, kept open.
            pool = pool
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None);
        }
        let pool = pool
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if dialect == Dialect::Sqlite {
                        for pragma in [
                            "PRAGMA journal_mode = WAL",
                            "PRAGMA busy_timeout = 5000",
                            "PRAGMA foreign_keys = ON",
                        ] {
                            sqlx::query(pragma).execute(&mut *conn).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(|e| open_err(e.to_string()))?;
        let store = Self {
            pool,
            dialect,
            write: Mutex::new(()),
            listen_url: (dialect == Dialect::Postgres).then(|| ListenUrl(url.clone())),
        };
        store.migrate().await.map_err(|e| match e {
            DatastoreError::Query(reason) => open_err(reason),
            other => other,
        })?;
        Ok(store)
    }

    /// Creates the schema in an empty database; checks the version of an
    /// existing one. Never touches a database that is not ours.
    async fn migrate(&self) -> Result<()> {
        let _w = self.write.lock().await;
        // One transaction: PostgreSQL DDL is transactional, so a failed
        // migration leaves nothing behind. Servers starting together on one
        // empty PostgreSQL database queue on an advisory lock; the first
        // creates the schema, the others then find it.
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(query_err("reading the schema"))?;
        if self.dialect == Dialect::Postgres {
            sqlx::query("SELECT 1 FROM pg_advisory_xact_lock($1)")
                .bind(MIGRATION_LOCK)
                .execute(&mut *tx)
                .await
                .map_err(query_err("locking the schema"))?;
        }
        let tables: Vec<String> = match self.dialect {
            Dialect::Sqlite => sqlx::query("SELECT name FROM sqlite_master WHERE type = 'table'")
                .fetch_all(&mut *tx)
                .await
                .map_err(query_err("reading the schema"))?
                .iter()
                .map(|r| r.try_get::<String, _>(0).unwrap_or_default())
                .filter(|n| !n.starts_with("sqlite_"))
                .collect(),
            Dialect::Postgres => sqlx::query(
                "SELECT table_name::text FROM information_schema.tables WHERE table_schema = current_schema()",
            )
            .fetch_all(&mut *tx)
            .await
            .map_err(query_err("reading the schema"))?
            .iter()
            .map(|r| r.try_get::<String, _>(0).unwrap_or_default())
            .collect(),
        };
        if tables.is_empty() {
            for stmt in schema(self.dialect) {
                // Schema DDL: constants of this file, no input.
                sqlx::query(sqlx::AssertSqlSafe(stmt))
                    .execute(&mut *tx)
                    .await
                    .map_err(query_err("creating the schema"))?;
            }
        } else if !tables.iter().any(|t| t == "signet_schema") {
            return Err(DatastoreError::Schema(format!(
                "the database has tables ({}) but is not a Signet datastore; refusing to touch it",
                tables.join(", ")
            )));
        }
        let version: i64 = sqlx::query("SELECT MAX(version) FROM signet_schema")
            .fetch_one(&mut *tx)
            .await
            .map_err(query_err("reading the schema version"))?
            .try_get::<Option<i64>, _>(0)
            .map_err(query_err("reading the schema version"))?
            .ok_or_else(|| {
                DatastoreError::Schema(
                    "the schema version table is empty; refusing to touch the database".into(),
                )
            })?;
        if version > SCHEMA_VERSION {
            return Err(DatastoreError::Schema(format!(
                "schema version {version} is newer than this build understands ({SCHEMA_VERSION}); upgrade signet"
            )));
        }
        if version < 1 {
            return Err(DatastoreError::Schema(format!(
                "unknown schema version {version}"
            )));
        }
        // Each migration and the version bump in this one transaction: a
        // failure leaves the database as it was (PostgreSQL and SQLite DDL
        // are transactional).
        for (from, statements) in MIGRATIONS.iter().enumerate().skip(version as usize - 1) {
            for stmt in *statements {
                sqlx::query(sqlx::AssertSqlSafe(*stmt))
                    .execute(&mut *tx)
                    .await
                    .map_err(query_err("migrating the schema"))?;
            }
            sqlx::query("UPDATE signet_schema SET version = $1")
                .bind(from as i64 + 2)
                .execute(&mut *tx)
                .await
                .map_err(query_err("migrating the schema"))?;
            if version > 0 && !tables.is_empty() {
                tracing::info!(from = from + 1, to = from + 2, "datastore schema upgraded");
            }
        }
        tx.commit()
            .await
            .map_err(query_err("migrating the schema"))?;
        Ok(())
    }

    /// Serializes this process's writes on SQLite (one writer at a time).
    /// PostgreSQL needs no process-wide lock: several servers write it.
    async fn writer(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match self.dialect {
            // SQLite has one writer; queue here rather than on its lock.
            Dialect::Sqlite => Some(self.write.lock().await),
            // PostgreSQL orders writers itself (row locks, unique indexes,
            // the change-feed lock in `record_change`).
            Dialect::Postgres => None,
        }
    }

    /// Starts a write: this process's writer turn (SQLite) and a
    /// transaction. Every mutation that the change feed must carry goes
    /// through one and ends with [`Write::commit`].
    async fn write(&self, op: &'static str) -> Result<Write<'_>> {
        let turn = self.writer().await;
        let tx = self.pool.begin().await.map_err(query_err(op))?;
        Ok(Write {
            store: self,
            tx,
            op,
            _turn: turn,
        })
    }

    fn unique_violation(e: &sqlx::Error) -> bool {
        matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
    }
}

/// Checks, without writing to it, that an existing SQLite file is empty or
/// a Signet datastore.
async fn check_sqlite_file(path: &str) -> Result<()> {
    use sqlx::{ConnectOptions, Connection};
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .connect()
        .await
        .map_err(query_err("reading the database file"))?;
    let tables: Vec<String> = sqlx::query("SELECT name FROM sqlite_master WHERE type = 'table'")
        .fetch_all(&mut conn)
        .await
        .map_err(query_err("reading the database file"))?
        .iter()
        .map(|r| r.try_get::<String, _>(0).unwrap_or_default())
        .filter(|n| !n.starts_with("sqlite_"))
        .collect();
    // Closing a read-only connection writes nothing.
    let _ = conn.close().await;
    if tables.is_empty() || tables.iter().any(|t| t == "signet_schema") {
        return Ok(());
    }
    Err(DatastoreError::Schema(format!(
        "the database has tables ({}) but is not a Signet datastore; refusing to touch it",
        tables.join(", ")
    )))
}

/// Creates an empty file readable and writable by its owner only (0600).
fn create_private_file(path: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map(drop)
}

/// The file a `sqlite:` URL names; `None` for in-memory databases.
fn sqlite_file(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or(rest);
    (!path.is_empty() && path != ":memory:" && !path.starts_with("file:")).then_some(path)
}

/// The URL without its password (userinfo or a `password=` parameter): the
/// one redaction for every place a datastore URL is shown.
pub fn redact_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let mut out = match (base.find("://"), base.rfind('@')) {
        (Some(s), Some(at)) if at > s => match base[s + 3..at].find(':') {
            Some(c) => format!("{}:[redacted]{}", &base[..s + 3 + c], &base[at..]),
            None => base.to_owned(),
        },
        _ => base.to_owned(),
    };
    if let Some(query) = query {
        let params: Vec<String> = query
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) if k.to_ascii_lowercase().contains("password") => {
                    format!("{k}=[redacted]")
                }
                _ => p.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

fn random_id() -> Result<String> {
    let mut b = [0u8; 16];
    aws_lc_rs::rand::fill(&mut b)
        .map_err(|_| DatastoreError::Query("the system RNG failed".into()))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

#[async_trait::async_trait]
impl Datastore for SqlDatastore {
    async fn create_entry(&self, entry: Entry) -> Result<Entry> {
        crate::telemetry::store_op("create_entry", SqlDatastore::create_entry(self, entry)).await
    }

    async fn update_entry(&self, entry: Entry) -> Result<Entry> {
        crate::telemetry::store_op("update_entry", SqlDatastore::update_entry(self, entry)).await
    }

    async fn delete_entry(&self, id: &str) -> Result<Entry> {
        crate::telemetry::store_op("delete_entry", SqlDatastore::delete_entry(self, id)).await
    }

    async fn get_entry(&self, id: &str) -> Result<Option<Entry>> {
        crate::telemetry::store_op("get_entry", SqlDatastore::get_entry(self, id)).await
    }

    async fn list_entries(&self, filter: &EntryFilter) -> Result<Vec<Entry>> {
        crate::telemetry::store_op("list_entries", SqlDatastore::list_entries(self, filter)).await
    }

    async fn count_entries(&self) -> Result<u64> {
        crate::telemetry::store_op("count_entries", SqlDatastore::count_entries(self)).await
    }

    async fn list_entries_by_parents(&self, parents: &[SpiffeId]) -> Result<Vec<Entry>> {
        crate::telemetry::store_op(
            "list_entries_by_parents",
            SqlDatastore::list_entries_by_parents(self, parents),
        )
        .await
    }

    async fn put_node(&self, node: &AttestedNode) -> Result<()> {
        crate::telemetry::store_op("put_node", SqlDatastore::put_node(self, node)).await
    }

    async fn swap_node(
        &self,
        current: Option<&AttestedNode>,
        updated: &AttestedNode,
    ) -> Result<bool> {
        crate::telemetry::store_op("swap_node", SqlDatastore::swap_node(self, current, updated))
            .await
    }

    async fn get_node(&self, spiffe_id: &SpiffeId) -> Result<Option<AttestedNode>> {
        crate::telemetry::store_op("get_node", SqlDatastore::get_node(self, spiffe_id)).await
    }

    async fn list_nodes(&self) -> Result<Vec<AttestedNode>> {
        crate::telemetry::store_op("list_nodes", SqlDatastore::list_nodes(self)).await
    }

    async fn delete_node(&self, spiffe_id: &SpiffeId) -> Result<bool> {
        crate::telemetry::store_op("delete_node", SqlDatastore::delete_node(self, spiffe_id)).await
    }

    async fn create_join_token(&self, token: &JoinToken) -> Result<()> {
        crate::telemetry::store_op(
            "create_join_token",
            SqlDatastore::create_join_token(self, token),
        )
        .await
    }

    async fn take_join_token(&self, hash: &str) -> Result<Option<JoinToken>> {
        crate::telemetry::store_op("take_join_token", SqlDatastore::take_join_token(self, hash))
            .await
    }

    async fn prune_join_tokens(&self, now: i64) -> Result<u64> {
        crate::telemetry::store_op(
            "prune_join_tokens",
            SqlDatastore::prune_join_tokens(self, now),
        )
        .await
    }

    async fn put_bundle(&self, bundle: &Bundle) -> Result<()> {
        crate::telemetry::store_op("put_bundle", SqlDatastore::put_bundle(self, bundle)).await
    }

    async fn get_bundle(&self, td: &TrustDomain) -> Result<Option<Bundle>> {
        crate::telemetry::store_op("get_bundle", SqlDatastore::get_bundle(self, td)).await
    }

    async fn list_bundles(&self) -> Result<Vec<Bundle>> {
        crate::telemetry::store_op("list_bundles", SqlDatastore::list_bundles(self)).await
    }

    async fn delete_bundle(&self, td: &TrustDomain) -> Result<bool> {
        crate::telemetry::store_op("delete_bundle", SqlDatastore::delete_bundle(self, td)).await
    }

    async fn put_federation(&self, rel: &Relationship, create: bool) -> Result<()> {
        crate::telemetry::store_op(
            "put_federation",
            SqlDatastore::put_federation(self, rel, create),
        )
        .await
    }

    async fn get_federation(&self, td: &TrustDomain) -> Result<Option<Relationship>> {
        crate::telemetry::store_op("get_federation", SqlDatastore::get_federation(self, td)).await
    }

    async fn list_federations(&self) -> Result<Vec<Relationship>> {
        crate::telemetry::store_op("list_federations", SqlDatastore::list_federations(self)).await
    }

    async fn delete_federation(&self, td: &TrustDomain) -> Result<bool> {
        crate::telemetry::store_op(
            "delete_federation",
            SqlDatastore::delete_federation(self, td),
        )
        .await
    }

    async fn put_ca_journal(&self, server_id: &str, journal_json: &str) -> Result<()> {
        crate::telemetry::store_op(
            "put_ca_journal",
            SqlDatastore::put_ca_journal(self, server_id, journal_json),
        )
        .await
    }

    async fn get_ca_journal(&self, server_id: &str) -> Result<Option<String>> {
        crate::telemetry::store_op(
            "get_ca_journal",
            SqlDatastore::get_ca_journal(self, server_id),
        )
        .await
    }

    async fn list_ca_journals(&self) -> Result<Vec<(String, String)>> {
        crate::telemetry::store_op("list_ca_journals", SqlDatastore::list_ca_journals(self)).await
    }

    async fn current_revision(&self) -> Result<u64> {
        crate::telemetry::store_op("current_revision", SqlDatastore::current_revision(self)).await
    }

    async fn prune_changes(&self, before: i64) -> Result<u64> {
        crate::telemetry::store_op("prune_changes", SqlDatastore::prune_changes(self, before)).await
    }

    async fn change_notifications(
        &self,
    ) -> Option<std::pin::Pin<Box<dyn tokio_stream::Stream<Item = ()> + Send>>> {
        use tokio_stream::StreamExt;
        let url = self.listen_url.as_ref()?;
        let listen = async {
            let mut listener = sqlx::postgres::PgListener::connect(&url.0).await?;
            listener.listen(CHANGES_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        match listen.await {
            // A lost connection is re-established by the listener (what was
            // sent meanwhile is lost: the error wakes the follower too, which
            // then reads the feed).
            Ok(listener) => Some(Box::pin(listener.into_stream().map(|_| ()))),
            Err(e) => {
                tracing::warn!(error = %e, "cannot LISTEN for other servers' changes; polling only");
                None
            }
        }
    }

    async fn changes_since(&self, after: u64, limit: u32) -> Result<Vec<Change>> {
        crate::telemetry::store_op(
            "changes_since",
            SqlDatastore::changes_since(self, after, limit),
        )
        .await
    }
}

/// Opens the datastore named by `url`.
pub async fn open(url: &str) -> Result<Arc<dyn Datastore>> {
    Ok(Arc::new(SqlDatastore::open(url).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_passwords_only() {
        assert_eq!(
            redact_url("postgres://u:s3cret@db:5432/signet?sslmode=require&password=p4ss"),
            "postgres://u:[redacted]@db:5432/signet?sslmode=require&password=[redacted]"
        );
        assert_eq!(
            redact_url("postgres://u@db/signet"),
            "postgres://u@db/signet"
        );
        assert_eq!(
            redact_url("sqlite:///var/lib/signet/x.db"),
            "sqlite:///var/lib/signet/x.db"
        );
    }

    #[test]
    fn sqlite_file_names_the_path() {
        assert_eq!(sqlite_file("sqlite:///a/b.db?mode=rw"), Some("/a/b.db"));
        assert_eq!(sqlite_file("sqlite://rel/b.db"), Some("rel/b.db"));
        assert_eq!(sqlite_file("sqlite:b.db"), Some("b.db"));
        assert_eq!(sqlite_file("sqlite::memory:"), None);
        assert_eq!(sqlite_file("postgres://x"), None);
    }
}
