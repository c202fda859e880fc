//! Federation relationships, one per foreign trust domain, each stored as
//! the JSON of its [`Relationship`].

use signet_identity::TrustDomain;
use sqlx::Row;

use super::{SqlDatastore, corrupt, query_err};
use crate::datastore::{DatastoreError, Result};
use crate::federation::Relationship;

impl SqlDatastore {
    pub(super) async fn put_federation(&self, rel: &Relationship, create: bool) -> Result<()> {
        let data = serde_json::to_string(rel).map_err(|e| corrupt("federation relationship", e))?;
        let doing = if create {
            "creating a federation relationship"
        } else {
            "updating a federation relationship"
        };
        let mut w = self.write(doing).await?;
        let exists = sqlx::query("SELECT 1 FROM federations WHERE trust_domain = $1")
            .bind(rel.trust_domain.clone())
            .fetch_optional(&mut *w.tx)
            .await
            .map_err(query_err(doing))?
            .is_some();
        match (create, exists) {
            (true, true) => {
                return Err(DatastoreError::DuplicateFederation(
                    rel.trust_domain.clone(),
                ));
            }
            (false, false) => {
                return Err(DatastoreError::FederationNotFound(rel.trust_domain.clone()));
            }
            _ => {}
        }
        sqlx::query(
            "INSERT INTO federations (trust_domain, data) VALUES ($1, $2) \
             ON CONFLICT (trust_domain) DO UPDATE SET data = excluded.data",
        )
        .bind(rel.trust_domain.clone())
        .bind(data)
        .execute(&mut *w.tx)
        .await
        .map_err(query_err(doing))?;
        w.commit(None).await
    }

    pub(super) async fn get_federation(&self, td: &TrustDomain) -> Result<Option<Relationship>> {
        let row = sqlx::query("SELECT data FROM federations WHERE trust_domain = $1")
            .bind(td.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(query_err("reading a federation relationship"))?;
        row.map(|r| parse(&r, 0)).transpose()
    }

    pub(super) async fn list_federations(&self) -> Result<Vec<Relationship>> {
        let rows = sqlx::query("SELECT data FROM federations ORDER BY trust_domain")
            .fetch_all(&self.pool)
            .await
            .map_err(query_err("listing federation relationships"))?;
        rows.iter().map(|r| parse(r, 0)).collect()
    }

    pub(super) async fn delete_federation(&self, td: &TrustDomain) -> Result<bool> {
        let mut w = self.write("deleting a federation relationship").await?;
        let n = sqlx::query("DELETE FROM federations WHERE trust_domain = $1")
            .bind(td.to_string())
            .execute(&mut *w.tx)
            .await
            .map_err(query_err("deleting a federation relationship"))?
            .rows_affected();
        w.commit(None).await?;
        Ok(n > 0)
    }
}

fn parse(row: &sqlx::any::AnyRow, col: usize) -> Result<Relationship> {
    let data: String = row
        .try_get(col)
        .map_err(query_err("reading a federation relationship"))?;
    serde_json::from_str(&data).map_err(|e| corrupt("federation relationship", e))
}
