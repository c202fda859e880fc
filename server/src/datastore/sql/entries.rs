//! Registration entries and their selectors.

use std::collections::BTreeSet;

use signet_identity::{Entry, SpiffeId};
use sqlx::Row;

use super::{SqlDatastore, corrupt, placeholders, query_err, random_id};
use crate::datastore::{ChangeKind, DatastoreError, EntryFilter, Result, SelectorMatch};

fn identity_key(e: &Entry) -> String {
    let (id, parent, selectors) = e.identity_key();
    format!("{id}\n{parent}\n{}", selectors.join("\n"))
}

impl SqlDatastore {
    pub(super) async fn create_entry(&self, mut entry: Entry) -> Result<Entry> {
        if entry.id.is_empty() {
            entry.id = random_id()?;
        }
        entry.revision = 1;
        let key = identity_key(&entry);
        let data = serde_json::to_string(&entry).map_err(|e| corrupt("entry", e))?;
        let mut w = self.write("creating an entry").await?;
        if let Some(existing_id) = Self::duplicate_of(&mut w.tx, &key, &entry.id).await? {
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
        .execute(&mut *w.tx)
        .await;
        if let Err(e) = inserted {
            if Self::unique_violation(&e) {
                // Another server won the race for the same identity.
                drop(w);
                let existing_id = self
                    .id_for_key(&key)
                    .await
                    .unwrap_or_else(|| entry.id.clone());
                return Err(DatastoreError::DuplicateEntry { existing_id });
            }
            return Err(query_err("creating an entry")(e));
        }
        Self::write_selectors(&mut w.tx, &entry).await?;
        w.commit(Some(ChangeKind::EntryCreated {
            entry_id: entry.id.clone(),
            parent_id: entry.parent_id.clone(),
            node: entry.node,
        }))
        .await?;
        Ok(entry)
    }

    pub(super) async fn update_entry(&self, mut entry: Entry) -> Result<Entry> {
        let mut w = self.write("updating an entry").await?;
        let old = Self::entry_by_id(&mut w.tx, &entry.id)
            .await?
            .ok_or_else(|| DatastoreError::EntryNotFound(entry.id.clone()))?;
        if entry.revision != 0 && entry.revision != old.revision {
            return Err(DatastoreError::Conflict {
                id: entry.id.clone(),
                expected: entry.revision,
            });
        }
        let key = identity_key(&entry);
        if let Some(existing_id) = Self::duplicate_of(&mut w.tx, &key, &entry.id).await? {
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
        .execute(&mut *w.tx)
        .await;
        let updated = match updated {
            Ok(updated) => updated,
            Err(e) if Self::unique_violation(&e) => {
                // Another server stored the same identity meanwhile.
                drop(w);
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
        Self::write_selectors(&mut w.tx, &entry).await?;
        w.commit(Some(ChangeKind::EntryUpdated {
            entry_id: entry.id.clone(),
            parent_id: entry.parent_id.clone(),
            old_parent_id: old.parent_id.clone(),
            node: entry.node || old.node,
        }))
        .await?;
        Ok(entry)
    }

    pub(super) async fn delete_entry(&self, id: &str) -> Result<Entry> {
        let mut w = self.write("deleting an entry").await?;
        let old = Self::entry_by_id(&mut w.tx, id)
            .await?
            .ok_or_else(|| DatastoreError::EntryNotFound(id.to_owned()))?;
        sqlx::query("DELETE FROM entry_selectors WHERE entry_id = $1")
            .bind(id.to_owned())
            .execute(&mut *w.tx)
            .await
            .map_err(query_err("deleting an entry"))?;
        let deleted = sqlx::query("DELETE FROM entries WHERE id = $1")
            .bind(id.to_owned())
            .execute(&mut *w.tx)
            .await
            .map_err(query_err("deleting an entry"))?
            .rows_affected();
        if deleted != 1 {
            // Deleted by another server since we read it.
            return Err(DatastoreError::EntryNotFound(id.to_owned()));
        }
        w.commit(Some(ChangeKind::EntryDeleted {
            entry_id: id.to_owned(),
            parent_id: old.parent_id.clone(),
            node: old.node,
        }))
        .await?;
        Ok(old)
    }

    pub(super) async fn get_entry(&self, id: &str) -> Result<Option<Entry>> {
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

    pub(super) async fn list_entries(&self, filter: &EntryFilter) -> Result<Vec<Entry>> {
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

    pub(super) async fn count_entries(&self) -> Result<u64> {
        let n: i64 = sqlx::query("SELECT COUNT(*) FROM entries")
            .fetch_one(&self.pool)
            .await
            .map_err(query_err("counting entries"))?
            .try_get(0)
            .map_err(query_err("counting entries"))?;
        Ok(n.max(0) as u64)
    }

    pub(super) async fn list_entries_by_parents(&self, parents: &[SpiffeId]) -> Result<Vec<Entry>> {
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
}
