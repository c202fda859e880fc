//! Attested nodes and join tokens.

use signet_identity::SpiffeId;
use sqlx::Row;

use super::{SqlDatastore, corrupt, query_err};
use crate::datastore::{AttestedNode, ChangeKind, DatastoreError, JoinToken, Result};

impl SqlDatastore {
    pub(super) async fn put_node(&self, node: &AttestedNode) -> Result<()> {
        let data = serde_json::to_string(node).map_err(|e| corrupt("node", e))?;
        let mut w = self.write("storing a node").await?;
        sqlx::query(
            "INSERT INTO nodes (spiffe_id, data) VALUES ($1, $2) ON CONFLICT (spiffe_id) DO UPDATE SET data = excluded.data",
        )
        .bind(node.spiffe_id.to_string())
        .bind(data)
        .execute(&mut *w.tx)
        .await
        .map_err(query_err("storing a node"))?;
        w.commit(Some(ChangeKind::NodeUpdated {
            spiffe_id: node.spiffe_id.clone(),
        }))
        .await?;
        Ok(())
    }

    pub(super) async fn swap_node(
        &self,
        current: Option<&AttestedNode>,
        updated: &AttestedNode,
    ) -> Result<bool> {
        let data = serde_json::to_string(updated).map_err(|e| corrupt("node", e))?;
        let id = updated.spiffe_id.to_string();
        let mut w = self.write("storing a node").await?;
        let stored: Option<String> = sqlx::query("SELECT data FROM nodes WHERE spiffe_id = $1")
            .bind(id.clone())
            .fetch_optional(&mut *w.tx)
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
            .execute(&mut *w.tx)
            .await,
            Some(raw) => sqlx::query("UPDATE nodes SET data = $1 WHERE spiffe_id = $2 AND data = $3")
                .bind(data)
                .bind(id.clone())
                .bind(raw.clone())
                .execute(&mut *w.tx)
                .await,
        }
        .map_err(query_err("storing a node"))?
        .rows_affected();
        if written != 1 {
            return Ok(false);
        }
        w.commit(Some(ChangeKind::NodeUpdated {
            spiffe_id: updated.spiffe_id.clone(),
        }))
        .await?;
        Ok(true)
    }

    pub(super) async fn get_node(&self, spiffe_id: &SpiffeId) -> Result<Option<AttestedNode>> {
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

    pub(super) async fn list_nodes(&self) -> Result<Vec<AttestedNode>> {
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

    pub(super) async fn delete_node(&self, spiffe_id: &SpiffeId) -> Result<bool> {
        let mut w = self.write("deleting a node").await?;
        let n = sqlx::query("DELETE FROM nodes WHERE spiffe_id = $1")
            .bind(spiffe_id.to_string())
            .execute(&mut *w.tx)
            .await
            .map_err(query_err("deleting a node"))?
            .rows_affected();
        let change = (n > 0).then(|| ChangeKind::NodeDeleted {
            spiffe_id: spiffe_id.clone(),
        });
        w.commit(change).await?;
        Ok(n > 0)
    }

    pub(super) async fn create_join_token(&self, token: &JoinToken) -> Result<()> {
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

    pub(super) async fn take_join_token(&self, hash: &str) -> Result<Option<JoinToken>> {
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

    pub(super) async fn prune_join_tokens(&self, now: i64) -> Result<u64> {
        let _w = self.writer().await;
        Ok(sqlx::query("DELETE FROM join_tokens WHERE expires_at < $1")
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(query_err("pruning join tokens"))?
            .rows_affected())
    }
}
