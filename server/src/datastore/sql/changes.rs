//! The change feed: every write appends what it changed, in revision
//! order; followers read it after a revision; old changes are pruned.

use sqlx::Row;

use super::{CHANGE_FEED_LOCK, Dialect, SqlDatastore, corrupt, query_err};
use crate::datastore::{Change, ChangeKind, Result};

impl SqlDatastore {
    /// Appends a change in the writer's transaction. On PostgreSQL the
    /// revision comes from a sequence, and sequence values are handed out
    /// in call order, not commit order: without the lock, a follower could
    /// read revision 8 before revision 7 commits and skip 7 for good. The
    /// transaction-scoped lock, taken as the writer's last step and held to
    /// its commit, makes revisions become visible in increasing order.
    pub(super) async fn record_change(
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

    pub(super) async fn current_revision(&self) -> Result<u64> {
        let n: Option<i64> = sqlx::query("SELECT MAX(revision) FROM changes")
            .fetch_one(&self.pool)
            .await
            .map_err(query_err("reading the change feed"))?
            .try_get(0)
            .map_err(query_err("reading the change feed"))?;
        Ok(n.unwrap_or(0).max(0) as u64)
    }

    pub(super) async fn prune_changes(&self, before: i64) -> Result<u64> {
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

    pub(super) async fn changes_since(&self, after: u64, limit: u32) -> Result<Vec<Change>> {
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
