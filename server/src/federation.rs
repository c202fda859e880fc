//! SPIFFE Federation: this trust domain's bundle endpoint ([`endpoint`]),
//! the relationships with other trust domains ([`relationship`]) and the
//! fetching of their bundles ([`refresh`]).

pub mod endpoint;
pub mod refresh;
pub mod relationship;

pub use endpoint::{BundleEndpoint, EndpointProfile};
pub(crate) use endpoint::{prepare, serve_bundle_endpoint};
pub use relationship::{EndpointAuth, Relationship};

use signet_identity::{Bundle, TrustDomain};

use crate::{Server, ServerError};

impl Server {
    /// Creates a relationship with another trust domain; `bootstrap` is
    /// that trust domain's bundle to start from (needed for `https_spiffe`
    /// unless one is stored already).
    pub async fn create_federation(
        &self,
        rel: Relationship,
        bootstrap: Option<Bundle>,
    ) -> Result<Relationship, ServerError> {
        self.put_federation(rel, bootstrap, true).await
    }

    /// Replaces a relationship (which must exist).
    pub async fn update_federation(
        &self,
        rel: Relationship,
        bootstrap: Option<Bundle>,
    ) -> Result<Relationship, ServerError> {
        self.put_federation(rel, bootstrap, false).await
    }

    async fn put_federation(
        &self,
        rel: Relationship,
        bootstrap: Option<Bundle>,
        create: bool,
    ) -> Result<Relationship, ServerError> {
        let td = rel
            .check(self.trust_domain())
            .map_err(|e| ServerError::InvalidArgument(e.to_string()))?;
        if let Some(b) = &bootstrap
            && *b.trust_domain() != td
        {
            return Err(ServerError::InvalidArgument(format!(
                "the bootstrap bundle is of {}, not of {td}",
                b.trust_domain()
            )));
        }
        let needs_bundle = matches!(rel.auth, EndpointAuth::HttpsSpiffe { .. });
        if needs_bundle && bootstrap.is_none() && self.store().get_bundle(&td).await?.is_none() {
            return Err(ServerError::InvalidArgument(format!(
                "https_spiffe needs a bundle of {td} to authenticate its endpoint: give one (--trust-domain-bundle) or set it first (signet bundle set)"
            )));
        }
        self.store().put_federation(&rel, create).await?;
        if let Some(b) = bootstrap {
            self.store().put_bundle(&b).await?;
            self.wrote();
        }
        tracing::info!(trust_domain = %td, url = %rel.bundle_endpoint_url, profile = rel.auth.profile(), "federation relationship {}", if create { "created" } else { "updated" });
        self.federation_poke.notify_one();
        Ok(rel)
    }

    /// Deletes a relationship and withdraws the foreign bundle with it.
    pub async fn delete_federation(&self, td: &TrustDomain) -> Result<(), ServerError> {
        if !self.store().delete_federation(td).await? {
            return Err(ServerError::NotFound(format!(
                "no federation relationship with {td}"
            )));
        }
        self.store().delete_bundle(td).await?;
        self.wrote();
        self.federation_poke.notify_one();
        tracing::info!(trust_domain = %td, "federation relationship deleted; its bundle withdrawn");
        Ok(())
    }

    pub async fn list_federations(&self) -> Result<Vec<Relationship>, ServerError> {
        Ok(self.store().list_federations().await?)
    }

    pub async fn get_federation(&self, td: &TrustDomain) -> Result<Relationship, ServerError> {
        self.store()
            .get_federation(td)
            .await?
            .ok_or_else(|| ServerError::NotFound(format!("no federation relationship with {td}")))
    }

    /// Fetches every federated bundle now rather than when due.
    pub fn refresh_federations(&self) {
        self.federation_poke.notify_one();
    }
}
