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

use std::collections::BTreeSet;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use signet_identity::{Bundle, Entry, SpiffeId, TrustDomain};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Row};
use tokio::sync::Mutex;

use super::{
    AttestedNode, Change, ChangeKind, Datastore, DatastoreError, EntryFilter, JoinToken, Result,
    SelectorMatch,
};

/// Schema version this build writes and understands.
pub const SCHEMA_VERSION: i64 = 2;

/// Forward migrations: `MIGRATIONS[n]` takes a version `n + 1` schema to
/// version `n + 2`. A new database is made at version 1 and brought up by
/// these too, so every database takes the same path.
const MIGRATIONS: &[&[&str]] = &[
    // 2: when each change was recorded, so the feed can be pruned by age.
    &["ALTER TABLE changes ADD COLUMN created_at BIGINT NOT NULL DEFAULT 0"],
];

/// PostgreSQL advisory lock keys ("SIGNET" + a number).
const MIGRATION_LOCK: i64 = 0x5349_474e_4554_0001;
const CHANGE_FEED_LOCK: i64 = 0x5349_474e_4554_0002;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Sqlite,
    Postgres,
}

/// A datastore on SQLite or PostgreSQL.
#[derive(Debug)]
pub struct SqlDatastore {
    pool: AnyPool,
    dialect: Dialect,
    /// Serializes this process's writes (SQLite has one writer).
    write: Mutex<()>,
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

fn identity_key(e: &Entry) -> String {
    let (id, parent, selectors) = e.identity_key();
    format!("{id}\n{parent}\n{}", selectors.join("\n"))
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

    /// Appends a change in the writer's transaction. On PostgreSQL the
    /// revision comes from a sequence, and sequence values are handed out
    /// in call order, not commit order: without the lock, a follower could
    /// read revision 8 before revision 7 commits and skip 7 for good. The
    /// transaction-scoped lock, taken as the writer's last step and held to
    /// its commit, makes revisions become visible in increasing order.
    async fn record_change(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        kind: &ChangeKind,
    ) -> Result<()> {
        let data = serde_json::to_string(kind).map_err(|e| corrupt("change", e))?;
        if self.dialect == Dialect::Postgres {
            sqlx::query("SELECT 1 FROM pg_advisory_xact_lock($1)")
                .bind(CHANGE_FEED_LOCK)
                .execute(&mut **tx)
                .await
                .map_err(query_err("locking the change feed"))?;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        sqlx::query("INSERT INTO changes (data, created_at) VALUES ($1, $2)")
            .bind(data)
            .bind(now)
            .execute(&mut **tx)
            .await
            .map_err(query_err("recording a change"))?;
        Ok(())
    }

    fn decode_entry(data: &str) -> Result<Entry> {
        serde_json::from_str(data).map_err(|e| corrupt("entry", e))
    }

    async fn entry_by_id(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        id: &str,
    ) -> Result<Option<Entry>> {
        let row = sqlx::query("SELECT data FROM entries WHERE id = $1")
            .bind(id.to_owned())
            .fetch_optional(&mut **tx)
            .await
            .map_err(query_err("reading an entry"))?;
        row.map(|r| {
            Self::decode_entry(
                &r.try_get::<String, _>(0)
                    .map_err(query_err("reading an entry"))?,
            )
        })
        .transpose()
    }

    async fn duplicate_of(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        key: &str,
        except: &str,
    ) -> Result<Option<String>> {
        let row = sqlx::query("SELECT id FROM entries WHERE identity_key = $1 AND id <> $2")
            .bind(key.to_owned())
            .bind(except.to_owned())
            .fetch_optional(&mut **tx)
            .await
            .map_err(query_err("checking for duplicates"))?;
        row.map(|r| {
            r.try_get::<String, _>(0)
                .map_err(query_err("checking for duplicates"))
        })
        .transpose()
    }

    async fn write_selectors(tx: &mut sqlx::Transaction<'_, sqlx::Any>, e: &Entry) -> Result<()> {
        sqlx::query("DELETE FROM entry_selectors WHERE entry_id = $1")
            .bind(e.id.clone())
            .execute(&mut **tx)
            .await
            .map_err(query_err("writing selectors"))?;
        let unique: BTreeSet<String> = e.selectors.iter().map(ToString::to_string).collect();
        for s in unique {
            sqlx::query("INSERT INTO entry_selectors (entry_id, selector) VALUES ($1, $2)")
                .bind(e.id.clone())
                .bind(s)
                .execute(&mut **tx)
                .await
                .map_err(query_err("writing selectors"))?;
        }
        Ok(())
    }

    /// The id of the entry stored under an identity key, read outside any
    /// transaction (after a unique violation aborted ours).
    async fn id_for_key(&self, key: &str) -> Option<String> {
        sqlx::query("SELECT id FROM entries WHERE identity_key = $1")
            .bind(key.to_owned())
            .fetch_optional(&self.pool)
            .await
            .ok()
            .flatten()
            .and_then(|r| r.try_get::<String, _>(0).ok())
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
    async fn create_entry(&self, mut entry: Entry) -> Result<Entry> {
        if entry.id.is_empty() {
            entry.id = random_id()?;
        }
        entry.revision = 1;
        let key = identity_key(&entry);
        let data = serde_json::to_string(&entry).map_err(|e| corrupt("entry", e))?;
        let _w = self.writer().await;
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(query_err("creating an entry"))?;
        if let Some(existing_id) = Self::duplicate_of(&mut tx, &key, &entry.id).await? {
            return Err(DatastoreError::DuplicateEntry { existing_id });
        }
        let inserted = sqlx::query(
            "INSERT INTO entries (id, spiffe_id, parent_id, identity_key, node, revision, data) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(entry.id.clone())
        .bind(entry.spiffe_id.to_string())
        .bind(entry.parent_id.to_string())
        .bind(key.clone())
        .bind(i64::from(entry.node))
        .bind(entry.revision as i64)
        .bind(data)
        .execute(&mut *tx)
        .await;
        if let Err(e) = inserted {
            if Self::unique_violation(&e) {
                // Another server won the race for the same identity.
                drop(tx);
                let existing_id = self
                    .id_for_key(&key)
                    .await
                    .unwrap_or_else(|| entry.id.clone());
                return Err(DatastoreError::DuplicateEntry { existing_id });
            }
            return Err(query_err("creating an entry")(e));
        }
        Self::write_selectors(&mut tx, &entry).await?;
        self.record_change(
            &mut tx,
            &ChangeKind::EntryCreated {
                entry_id: entry.id.clone(),
                parent_id: entry.parent_id.clone(),
            },
        )
        .await?;
        tx.commit().await.map_err(query_err("creating an entry"))?;
        Ok(entry)
    }

    async fn update_entry(&self, mut entry: Entry) -> Result<Entry> {
        let _w = self.writer().await;
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(query_err("updating an entry"))?;
        let old = Self::entry_by_id(&mut tx, &entry.id)
            .await?
            .ok_or_else(|| DatastoreError::EntryNotFound(entry.id.clone()))?;
        if entry.revision != 0 && entry.revision != old.revision {
            return Err(DatastoreError::Conflict {
                id: entry.id.clone(),
                expected: entry.revision,
            });
        }
        let key = identity_key(&entry);
        if let Some(existing_id) = Self::duplicate_of(&mut tx, &key, &entry.id).await? {
            return Err(DatastoreError::DuplicateEntry { existing_id });
        }
        entry.revision = old.revision + 1;
        let data = serde_json::to_string(&entry).map_err(|e| corrupt("entry", e))?;
        let updated = sqlx::query(
            "UPDATE entries SET spiffe_id = $1, parent_id = $2, identity_key = $3, node = $4, revision = $5, data = $6 \
             WHERE id = $7 AND revision = $8",
        )
        .bind(entry.spiffe_id.to_string())
        .bind(entry.parent_id.to_string())
        .bind(key.clone())
        .bind(i64::from(entry.node))
        .bind(entry.revision as i64)
        .bind(data)
        .bind(entry.id.clone())
        .bind(old.revision as i64)
        .execute(&mut *tx)
        .await;
        let updated = match updated {
            Ok(updated) => updated,
            Err(e) if Self::unique_violation(&e) => {
                // Another server stored the same identity meanwhile.
                drop(tx);
                let existing_id = self
                    .id_for_key(&key)
                    .await
                    .unwrap_or_else(|| String::from("(concurrent)"));
                return Err(DatastoreError::DuplicateEntry { existing_id });
            }
            Err(e) => return Err(query_err("updating an entry")(e)),
        };
        if updated.rows_affected() != 1 {
            return Err(DatastoreError::Conflict {
                id: entry.id.clone(),
                expected: old.revision,
            });
        }
        Self::write_selectors(&mut tx, &entry).await?;
        self.record_change(
            &mut tx,
            &ChangeKind::EntryUpdated {
                entry_id: entry.id.clone(),
                parent_id: entry.parent_id.clone(),
                old_parent_id: old.parent_id.clone(),
            },
        )
        .await?;
        tx.commit().await.map_err(query_err("updating an entry"))?;
        Ok(entry)
    }

    async fn delete_entry(&self, id: &str) -> Result<Entry> {
        let _w = self.writer().await;
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(query_err("deleting an entry"))?;
        let old = Self::entry_by_id(&mut tx, id)
            .await?
            .ok_or_else(|| DatastoreError::EntryNotFound(id.to_owned()))?;
        sqlx::query("DELETE FROM entry_selectors WHERE entry_id = $1")
            .bind(id.to_owned())
            .execute(&mut *tx)
            .await
            .map_err(query_err("deleting an entry"))?;
        let deleted = sqlx::query("DELETE FROM entries WHERE id = $1")
            .bind(id.to_owned())
            .execute(&mut *tx)
            .await
            .map_err(query_err("deleting an entry"))?
            .rows_affected();
        if deleted != 1 {
            // Deleted by another server since we read it.
            return Err(DatastoreError::EntryNotFound(id.to_owned()));
        }
        self.record_change(
            &mut tx,
            &ChangeKind::EntryDeleted {
                entry_id: id.to_owned(),
                parent_id: old.parent_id.clone(),
            },
        )
        .await?;
        tx.commit().await.map_err(query_err("deleting an entry"))?;
        Ok(old)
    }

    async fn get_entry(&self, id: &str) -> Result<Option<Entry>> {
        let row = sqlx::query("SELECT data FROM entries WHERE id = $1")
            .bind(id.to_owned())
            .fetch_optional(&self.pool)
            .await
            .map_err(query_err("reading an entry"))?;
        row.map(|r| {
            Self::decode_entry(
                &r.try_get::<String, _>(0)
                    .map_err(query_err("reading an entry"))?,
            )
        })
        .transpose()
    }

    async fn list_entries(&self, filter: &EntryFilter) -> Result<Vec<Entry>> {
        let mut sql = String::from("SELECT data FROM entries WHERE 1 = 1");
        let mut binds: Vec<String> = Vec::new();
        let mut bind = |sql: &mut String, clause: &str, v: String| {
            binds.push(v);
            sql.push_str(&clause.replace("{}", &format!("${}", binds.len())));
        };
        if let Some(id) = &filter.id {
            bind(&mut sql, " AND id = {}", id.clone());
        }
        if let Some(id) = &filter.spiffe_id {
            bind(&mut sql, " AND spiffe_id = {}", id.to_string());
        }
        if let Some(id) = &filter.parent_id {
            bind(&mut sql, " AND parent_id = {}", id.to_string());
        }
        if filter.node_only {
            sql.push_str(" AND node = 1");
        }
        let wanted: BTreeSet<String> = filter
            .selectors
            .as_ref()
            .map(|(s, _)| s.iter().map(ToString::to_string).collect())
            .unwrap_or_default();
        if let Some((_, mode)) = &filter.selectors
            // Every entry's selectors include the empty set.
            && !(wanted.is_empty() && *mode == SelectorMatch::Superset)
        {
            if wanted.is_empty() {
                // Entries have at least one selector: none equals, is a
                // subset of or intersects the empty set.
                return Ok(Vec::new());
            }
            let start = binds.len();
            let list = placeholders(start, wanted.len());
            binds.extend(wanted.iter().cloned());
            match mode {
                SelectorMatch::Exact | SelectorMatch::Superset => sql.push_str(&format!(
                    " AND id IN (SELECT entry_id FROM entry_selectors WHERE selector IN ({list}) \
                     GROUP BY entry_id HAVING COUNT(*) = {})",
                    wanted.len()
                )),
                SelectorMatch::Subset | SelectorMatch::Any => sql.push_str(&format!(
                    " AND id IN (SELECT entry_id FROM entry_selectors WHERE selector IN ({list}))"
                )),
            }
        }
        sql.push_str(" ORDER BY id");
        // Only placeholders and constants are formatted in; values are bound.
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for b in binds {
            q = q.bind(b);
        }
        let rows = q
            .fetch_all(&self.pool)
            .await
            .map_err(query_err("listing entries"))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let e = Self::decode_entry(
                &r.try_get::<String, _>(0)
                    .map_err(query_err("listing entries"))?,
            )?;
            let has: BTreeSet<String> = e.selectors.iter().map(ToString::to_string).collect();
            let keep = match &filter.selectors {
                Some((_, SelectorMatch::Exact)) => has == wanted,
                Some((_, SelectorMatch::Subset)) => has.is_subset(&wanted),
                _ => true,
            } && filter
                .federates_with
                .as_ref()
                .is_none_or(|td| e.federates_with.contains(td));
            if keep {
                out.push(e);
            }
        }
        Ok(out)
    }

    async fn count_entries(&self) -> Result<u64> {
        let n: i64 = sqlx::query("SELECT COUNT(*) FROM entries")
            .fetch_one(&self.pool)
            .await
            .map_err(query_err("counting entries"))?
            .try_get(0)
            .map_err(query_err("counting entries"))?;
        Ok(n.max(0) as u64)
    }

    async fn list_entries_by_parents(&self, parents: &[SpiffeId]) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        for chunk in parents.chunks(500) {
            let sql = format!(
                "SELECT data FROM entries WHERE parent_id IN ({}) ORDER BY id",
                placeholders(0, chunk.len())
            );
            // Only placeholders are formatted in; values are bound.
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for p in chunk {
                q = q.bind(p.to_string());
            }
            for r in q
                .fetch_all(&self.pool)
                .await
                .map_err(query_err("listing entries by parent"))?
            {
                out.push(Self::decode_entry(
                    &r.try_get::<String, _>(0)
                        .map_err(query_err("listing entries by parent"))?,
                )?);
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    async fn put_node(&self, node: &AttestedNode) -> Result<()> {
        let data = serde_json::to_string(node).map_err(|e| corrupt("node", e))?;
        let _w = self.writer().await;
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(query_err("storing a node"))?;
        sqlx::query(
            "INSERT INTO nodes (spiffe_id, data) VALUES ($1, $2) ON CONFLICT (spiffe_id) DO UPDATE SET data = excluded.data",
        )
        .bind(node.spiffe_id.to_string())
        .bind(data)
        .execute(&mut *tx)
        .await
        .map_err(query_err("storing a node"))?;
        self.record_change(
            &mut tx,
            &ChangeKind::NodeUpdated {
                spiffe_id: node.spiffe_id.clone(),
            },
        )
        .await?;
        tx.commit().await.map_err(query_err("storing a node"))?;
        Ok(())
    }

    async fn swap_node(
        &self,
        current: Option<&AttestedNode>,
        updated: &AttestedNode,
    ) -> Result<bool> {
        let data = serde_json::to_string(updated).map_err(|e| corrupt("node", e))?;
        let id = updated.spiffe_id.to_string();
        let _w = self.writer().await;
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(query_err("storing a node"))?;
        let stored: Option<String> = sqlx::query("SELECT data FROM nodes WHERE spiffe_id = $1")
            .bind(id.clone())
            .fetch_optional(&mut *tx)
            .await
            .map_err(query_err("reading a node"))?
            .map(|r| r.try_get(0))
            .transpose()
            .map_err(query_err("reading a node"))?;
        let parsed: Option<AttestedNode> = stored
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
            .map_err(|e| corrupt("node", e))?;
        if parsed.as_ref() != current {
            return Ok(false);
        }
        // The compare is repeated by the write itself, against the exact
        // text read, so a writer on another connection (or server) that
        // got in between makes it change nothing.
        let written = match &stored {
            None => sqlx::query(
                "INSERT INTO nodes (spiffe_id, data) VALUES ($1, $2) ON CONFLICT (spiffe_id) DO NOTHING",
            )
            .bind(id.clone())
            .bind(data)
            .execute(&mut *tx)
            .await,
            Some(raw) => sqlx::query("UPDATE nodes SET data = $1 WHERE spiffe_id = $2 AND data = $3")
                .bind(data)
                .bind(id.clone())
                .bind(raw.clone())
                .execute(&mut *tx)
                .await,
        }
        .map_err(query_err("storing a node"))?
        .rows_affected();
        if written != 1 {
            return Ok(false);
        }
        self.record_change(
            &mut tx,
            &ChangeKind::NodeUpdated {
                spiffe_id: updated.spiffe_id.clone(),
            },
        )
        .await?;
        tx.commit().await.map_err(query_err("storing a node"))?;
        Ok(true)
    }

    async fn get_node(&self, spiffe_id: &SpiffeId) -> Result<Option<AttestedNode>> {
        let row = sqlx::query("SELECT data FROM nodes WHERE spiffe_id = $1")
            .bind(spiffe_id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(query_err("reading a node"))?;
        row.map(|r| {
            let data: String = r.try_get(0).map_err(query_err("reading a node"))?;
            serde_json::from_str(&data).map_err(|e| corrupt("node", e))
        })
        .transpose()
    }

    async fn list_nodes(&self) -> Result<Vec<AttestedNode>> {
        let rows = sqlx::query("SELECT data FROM nodes ORDER BY spiffe_id")
            .fetch_all(&self.pool)
            .await
            .map_err(query_err("listing nodes"))?;
        rows.iter()
            .map(|r| {
                let data: String = r.try_get(0).map_err(query_err("listing nodes"))?;
                serde_json::from_str(&data).map_err(|e| corrupt("node", e))
            })
            .collect()
    }

    async fn delete_node(&self, spiffe_id: &SpiffeId) -> Result<bool> {
        let _w = self.writer().await;
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(query_err("deleting a node"))?;
        let n = sqlx::query("DELETE FROM nodes WHERE spiffe_id = $1")
            .bind(spiffe_id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(query_err("deleting a node"))?
            .rows_affected();
        if n > 0 {
            self.record_change(
                &mut tx,
                &ChangeKind::NodeDeleted {
                    spiffe_id: spiffe_id.clone(),
                },
            )
            .await?;
        }
        tx.commit().await.map_err(query_err("deleting a node"))?;
        Ok(n > 0)
    }

    async fn create_join_token(&self, token: &JoinToken) -> Result<()> {
        let _w = self.writer().await;
        sqlx::query("INSERT INTO join_tokens (hash, expires_at, agent_id) VALUES ($1, $2, $3)")
            .bind(token.hash.clone())
            .bind(token.expires_at)
            .bind(token.agent_id.as_ref().map(ToString::to_string))
            .execute(&self.pool)
            .await
            .map_err(|e| {
                if Self::unique_violation(&e) {
                    DatastoreError::DuplicateToken
                } else {
                    query_err("storing a join token")(e)
                }
            })?;
        Ok(())
    }

    async fn take_join_token(&self, hash: &str) -> Result<Option<JoinToken>> {
        let _w = self.writer().await;
        let row = sqlx::query(
            "DELETE FROM join_tokens WHERE hash = $1 RETURNING hash, expires_at, agent_id",
        )
        .bind(hash.to_owned())
        .fetch_optional(&self.pool)
        .await
        .map_err(query_err("taking a join token"))?;
        row.map(|r| {
            let agent_id: Option<String> =
                r.try_get(2).map_err(query_err("taking a join token"))?;
            Ok(JoinToken {
                hash: r.try_get(0).map_err(query_err("taking a join token"))?,
                expires_at: r.try_get(1).map_err(query_err("taking a join token"))?,
                agent_id: agent_id
                    .map(|a| SpiffeId::parse(&a).map_err(|e| corrupt("join token agent id", e)))
                    .transpose()?,
            })
        })
        .transpose()
    }

    async fn prune_join_tokens(&self, now: i64) -> Result<u64> {
        let _w = self.writer().await;
        Ok(sqlx::query("DELETE FROM join_tokens WHERE expires_at < $1")
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(query_err("pruning join tokens"))?
            .rows_affected())
    }

    async fn put_bundle(&self, bundle: &Bundle) -> Result<()> {
        let data = bundle.to_json().map_err(|e| corrupt("bundle", e))?;
        let _w = self.writer().await;
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(query_err("storing a bundle"))?;
        sqlx::query(
            "INSERT INTO bundles (trust_domain, data) VALUES ($1, $2) \
             ON CONFLICT (trust_domain) DO UPDATE SET data = excluded.data",
        )
        .bind(bundle.trust_domain().to_string())
        .bind(data)
        .execute(&mut *tx)
        .await
        .map_err(query_err("storing a bundle"))?;
        self.record_change(
            &mut tx,
            &ChangeKind::BundleUpdated {
                trust_domain: bundle.trust_domain().clone(),
            },
        )
        .await?;
        tx.commit().await.map_err(query_err("storing a bundle"))?;
        Ok(())
    }

    async fn get_bundle(&self, td: &TrustDomain) -> Result<Option<Bundle>> {
        let row = sqlx::query("SELECT data FROM bundles WHERE trust_domain = $1")
            .bind(td.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(query_err("reading a bundle"))?;
        row.map(|r| {
            let data: String = r.try_get(0).map_err(query_err("reading a bundle"))?;
            Bundle::parse_json(td.clone(), data.as_bytes()).map_err(|e| corrupt("bundle", e))
        })
        .transpose()
    }

    async fn list_bundles(&self) -> Result<Vec<Bundle>> {
        let rows = sqlx::query("SELECT trust_domain, data FROM bundles ORDER BY trust_domain")
            .fetch_all(&self.pool)
            .await
            .map_err(query_err("listing bundles"))?;
        rows.iter()
            .map(|r| {
                let td: String = r.try_get(0).map_err(query_err("listing bundles"))?;
                let data: String = r.try_get(1).map_err(query_err("listing bundles"))?;
                let td = TrustDomain::parse(&td).map_err(|e| corrupt("bundle trust domain", e))?;
                Bundle::parse_json(td, data.as_bytes()).map_err(|e| corrupt("bundle", e))
            })
            .collect()
    }

    async fn delete_bundle(&self, td: &TrustDomain) -> Result<bool> {
        let _w = self.writer().await;
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(query_err("deleting a bundle"))?;
        let n = sqlx::query("DELETE FROM bundles WHERE trust_domain = $1")
            .bind(td.to_string())
            .execute(&mut *tx)
            .await
            .map_err(query_err("deleting a bundle"))?
            .rows_affected();
        if n > 0 {
            self.record_change(
                &mut tx,
                &ChangeKind::BundleDeleted {
                    trust_domain: td.clone(),
                },
            )
            .await?;
        }
        tx.commit().await.map_err(query_err("deleting a bundle"))?;
        Ok(n > 0)
    }

    async fn put_ca_journal(&self, server_id: &str, journal_json: &str) -> Result<()> {
        let _w = self.writer().await;
        sqlx::query(
            "INSERT INTO ca_journals (server_id, data) VALUES ($1, $2) \
             ON CONFLICT (server_id) DO UPDATE SET data = excluded.data",
        )
        .bind(server_id.to_owned())
        .bind(journal_json.to_owned())
        .execute(&self.pool)
        .await
        .map_err(query_err("storing the CA journal"))?;
        Ok(())
    }

    async fn get_ca_journal(&self, server_id: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT data FROM ca_journals WHERE server_id = $1")
            .bind(server_id.to_owned())
            .fetch_optional(&self.pool)
            .await
            .map_err(query_err("reading the CA journal"))?;
        row.map(|r| {
            r.try_get::<String, _>(0)
                .map_err(query_err("reading the CA journal"))
        })
        .transpose()
    }

    async fn list_ca_journals(&self) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query("SELECT server_id, data FROM ca_journals ORDER BY server_id")
            .fetch_all(&self.pool)
            .await
            .map_err(query_err("listing CA journals"))?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get(0).map_err(query_err("listing CA journals"))?,
                    r.try_get(1).map_err(query_err("listing CA journals"))?,
                ))
            })
            .collect()
    }

    async fn current_revision(&self) -> Result<u64> {
        let n: Option<i64> = sqlx::query("SELECT MAX(revision) FROM changes")
            .fetch_one(&self.pool)
            .await
            .map_err(query_err("reading the change feed"))?
            .try_get(0)
            .map_err(query_err("reading the change feed"))?;
        Ok(n.unwrap_or(0).max(0) as u64)
    }

    async fn prune_changes(&self, before: i64) -> Result<u64> {
        let _w = self.writer().await;
        let done = sqlx::query(
            "DELETE FROM changes WHERE created_at < $1 \
             AND revision < (SELECT MAX(revision) FROM changes)",
        )
        .bind(before)
        .execute(&self.pool)
        .await
        .map_err(query_err("pruning the change feed"))?;
        Ok(done.rows_affected())
    }

    async fn changes_since(&self, after: u64, limit: u32) -> Result<Vec<Change>> {
        let rows = sqlx::query(
            "SELECT revision, data FROM changes WHERE revision > $1 ORDER BY revision LIMIT $2",
        )
        .bind(after as i64)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(query_err("reading the change feed"))?;
        rows.iter()
            .map(|r| {
                let revision: i64 = r.try_get(0).map_err(query_err("reading the change feed"))?;
                let data: String = r.try_get(1).map_err(query_err("reading the change feed"))?;
                Ok(Change {
                    revision: revision.max(0) as u64,
                    kind: serde_json::from_str(&data).map_err(|e| corrupt("change", e))?,
                })
            })
            .collect()
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
