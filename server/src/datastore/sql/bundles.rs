//! Trust bundles (own and federated) and the servers' CA journals.

use signet_identity::{Bundle, TrustDomain};
use sqlx::Row;

use super::{SqlDatastore, corrupt, query_err};
use crate::datastore::{ChangeKind, Result};

impl SqlDatastore {
    pub(super) async fn put_bundle(&self, bundle: &Bundle) -> Result<()> {
        let data = bundle.to_json().map_err(|e| corrupt("bundle", e))?;
        let mut w = self.write("storing a bundle").await?;
        sqlx::query(
            "INSERT INTO bundles (trust_domain, data) VALUES ($1, $2) \
             ON CONFLICT (trust_domain) DO UPDATE SET data = excluded.data",
        )
        .bind(bundle.trust_domain().to_string())
        .bind(data)
        .execute(&mut *w.tx)
        .await
        .map_err(query_err("storing a bundle"))?;
        w.commit(Some(ChangeKind::BundleUpdated {
            trust_domain: bundle.trust_domain().clone(),
        }))
        .await?;
        Ok(())
    }

    pub(super) async fn get_bundle(&self, td: &TrustDomain) -> Result<Option<Bundle>> {
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

    pub(super) async fn list_bundles(&self) -> Result<Vec<Bundle>> {
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

    pub(super) async fn delete_bundle(&self, td: &TrustDomain) -> Result<bool> {
        let mut w = self.write("deleting a bundle").await?;
        let n = sqlx::query("DELETE FROM bundles WHERE trust_domain = $1")
            .bind(td.to_string())
            .execute(&mut *w.tx)
            .await
            .map_err(query_err("deleting a bundle"))?
            .rows_affected();
        let change = (n > 0).then(|| ChangeKind::BundleDeleted {
            trust_domain: td.clone(),
        });
        w.commit(change).await?;
        Ok(n > 0)
    }

    pub(super) async fn put_ca_journal(&self, server_id: &str, journal_json: &str) -> Result<()> {
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

    pub(super) async fn get_ca_journal(&self, server_id: &str) -> Result<Option<String>> {
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

    pub(super) async fn list_ca_journals(&self) -> Result<Vec<(String, String)>> {
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
}
