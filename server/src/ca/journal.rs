//! The CA journal: what a restart needs to resume with the same
//! authorities (key ids and certificates, no key material).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

use rcgen::KeyPair;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use signet_identity::Bundle;
use signet_identity::bundle::{certificates_from_pem, certificates_to_pem};

use super::authority::{jwt_key_from, x509_authority_from};
use super::{
    Ca, CaConfig, CaError, CaState, RemoteUpstream, UpstreamAuthority, secs_to_time, unix_secs,
};
use crate::clock::Clock;
use crate::key_manager::KeyManager;

const JOURNAL_VERSION: u32 = 1;

/// The persisted state of a [`Ca`]: which keys (by key-manager id) and
/// certificates are current and next, and the published bundle. Holds no
/// private key material.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaJournal {
    pub version: u32,
    pub trust_domain: String,
    /// The active authority first, then the prepared one if any.
    pub x509: Vec<JournalX509>,
    /// The active JWT key first, then the prepared one if any.
    pub jwt: Vec<JournalJwt>,
    /// The bundle in SPIFFE format.
    pub bundle: Value,
    /// Expiry (unix seconds) of every JWT key still published.
    pub jwt_expiry: BTreeMap<String, i64>,
    /// Upstream authorities an operator revoked (subject key ids): they
    /// stay out of every server's bundle even while an upstream bundle
    /// file still lists them.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub revoked: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalX509 {
    pub key_id: String,
    pub cert_pem: String,
    pub intermediates_pem: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalJwt {
    pub key_id: String,
    pub kid: String,
    pub not_before: i64,
    pub not_after: i64,
}

impl Ca {
    /// The state to persist so a restart resumes with the same authorities.
    pub fn journal(&self) -> Result<CaJournal, CaError> {
        let s = self.state();
        let x509 = std::iter::once(&s.x509_current)
            .chain(s.x509_next.as_ref())
            .map(|a| JournalX509 {
                key_id: a.key_id.clone(),
                cert_pem: certificates_to_pem(std::slice::from_ref(&a.cert)),
                intermediates_pem: certificates_to_pem(&a.intermediates),
            })
            .collect();
        let jwt = std::iter::once(&s.jwt_current)
            .chain(s.jwt_next.as_ref())
            .map(|k| JournalJwt {
                key_id: k.key_id.clone(),
                kid: k.kid.clone(),
                not_before: unix_secs(k.not_before),
                not_after: unix_secs(k.not_after),
            })
            .collect();
        Ok(CaJournal {
            version: JOURNAL_VERSION,
            trust_domain: self.config.trust_domain.to_string(),
            x509,
            jwt,
            bundle: s
                .bundle
                .to_json_value()
                .map_err(|e| CaError::Journal(e.to_string()))?,
            jwt_expiry: s
                .jwt_expiry
                .iter()
                .map(|(k, t)| (k.clone(), unix_secs(*t)))
                .collect(),
            revoked: s.revoked.clone(),
        })
    }

    /// Resumes a CA from its journal; the keys must still be in `keys`.
    /// Never falls back to a fresh CA: a journal that cannot be honoured is
    /// an error that names the problem (security invariant 6).
    pub fn restore(
        config: CaConfig,
        clock: Arc<dyn Clock>,
        keys: Arc<dyn KeyManager>,
        upstream: Option<UpstreamAuthority>,
        journal: CaJournal,
    ) -> Result<Self, CaError> {
        Self::restore_with(config, clock, keys, upstream, None, journal)
    }

    /// [`Ca::restore`] for a CA whose authorities `remote` signs.
    pub fn restore_remote(
        config: CaConfig,
        clock: Arc<dyn Clock>,
        keys: Arc<dyn KeyManager>,
        remote: Arc<dyn RemoteUpstream>,
        journal: CaJournal,
    ) -> Result<Self, CaError> {
        Self::restore_with(config, clock, keys, None, Some(remote), journal)
    }

    fn restore_with(
        config: CaConfig,
        clock: Arc<dyn Clock>,
        keys: Arc<dyn KeyManager>,
        upstream: Option<UpstreamAuthority>,
        remote: Option<Arc<dyn RemoteUpstream>>,
        journal: CaJournal,
    ) -> Result<Self, CaError> {
        let bad = |m: String| CaError::Journal(m);
        if journal.version != JOURNAL_VERSION {
            return Err(bad(format!("unsupported version {}", journal.version)));
        }
        if journal.trust_domain != config.trust_domain.as_str() {
            return Err(bad(format!(
                "it belongs to trust domain {}, not {}: this data dir (or datastore) holds the other trust domain's CA; start with --trust-domain {}, or give {} a place of its own with --data-dir (or --datastore)",
                journal.trust_domain,
                config.trust_domain,
                journal.trust_domain,
                config.trust_domain
            )));
        }
        let load = |key_id: &str| -> Result<KeyPair, CaError> {
            keys.load(key_id)?
                .ok_or_else(|| bad(format!("key {key_id} is missing from the key store")))
        };
        let mut x509 = Vec::new();
        for j in &journal.x509 {
            let mut certs =
                certificates_from_pem(j.cert_pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
            let cert = certs
                .pop()
                .ok_or_else(|| bad("empty CA certificate".into()))?;
            let intermediates = if j.intermediates_pem.trim().is_empty() {
                Vec::new()
            } else {
                certificates_from_pem(j.intermediates_pem.as_bytes())
                    .map_err(|e| bad(e.to_string()))?
            };
            x509.push(Arc::new(x509_authority_from(
                cert,
                intermediates,
                load(&j.key_id)?,
                j.key_id.clone(),
            )?));
        }
        let mut jwt = Vec::new();
        for j in &journal.jwt {
            jwt.push(Arc::new(jwt_key_from(
                j.kid.clone(),
                load(&j.key_id)?,
                j.key_id.clone(),
                secs_to_time(j.not_before),
                secs_to_time(j.not_after),
            )?));
        }
        let mut x509 = x509.into_iter();
        let mut jwt = jwt.into_iter();
        let bundle = Bundle::parse_json(
            config.trust_domain.clone(),
            journal.bundle.to_string().as_bytes(),
        )
        .map_err(|e| bad(format!("bundle: {e}")))?;
        let state = CaState {
            x509_current: x509
                .next()
                .ok_or_else(|| bad("no X.509 authority".into()))?,
            x509_next: x509.next(),
            jwt_current: jwt.next().ok_or_else(|| bad("no JWT key".into()))?,
            jwt_next: jwt.next(),
            bundle,
            jwt_expiry: journal
                .jwt_expiry
                .iter()
                .map(|(k, t)| (k.clone(), secs_to_time(*t)))
                .collect(),
            upstream: upstream.map(Arc::new),
            revoked: journal.revoked,
        };
        let ca = Self {
            config,
            clock,
            keys,
            state: RwLock::new(Arc::new(state)),
            remote,
        };
        ca.rotate()?;
        Ok(ca)
    }
}
