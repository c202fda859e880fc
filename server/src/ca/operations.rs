//! CA operations for a suspected key compromise, with SPIRE's rules: prepare
//! the next authority now, activate it, taint the old one (whatever it
//! signed is replaced at once), revoke it (it leaves the bundle). Only an
//! old authority, no longer active, may be tainted; only a tainted one may
//! be revoked. Every change alters the bundle, whose sequence the caller
//! bumps when it publishes it.
//!
//! With an upstream CA the bundle holds the upstream's roots; those are
//! tainted and revoked as upstream authorities (SPIRE's
//! `upstreamauthority`), once the upstream CA files were replaced and a
//! new authority chaining to the new upstream is active.

use std::collections::BTreeSet;
use std::sync::{Arc, PoisonError};
use std::time::SystemTime;

use signet_identity::x509_svid::{authority_id, chain_authority_ids};

use super::authority::{new_jwt_key, new_x509_authority};
use super::{Ca, CaError, CaState, UpstreamAuthority, X509Authority};

/// Which kind of signing authority an operation is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthorityKind {
    X509,
    Jwt,
    /// The upstream CA's roots the bundle holds, by subject key id.
    UpstreamX509,
}

impl std::fmt::Display for AuthorityKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AuthorityKind::X509 => "X.509",
            AuthorityKind::Jwt => "JWT",
            AuthorityKind::UpstreamX509 => "upstream X.509",
        })
    }
}

/// Where an authority stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthorityState {
    /// Signs now (upstream: the active authority chains to it).
    Active,
    /// Published in the bundle, to sign next (upstream: the prepared
    /// authority chains to it).
    Prepared,
    /// Signed before; still in the bundle until it expires or is revoked.
    Old,
}

impl AuthorityState {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthorityState::Active => "active",
            AuthorityState::Prepared => "prepared",
            AuthorityState::Old => "old",
        }
    }
}

/// One authority of this server's CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorityInfo {
    /// X.509: the CA certificate's Subject Key Identifier (hex); JWT: the kid.
    pub id: String,
    pub state: AuthorityState,
    /// The key manager's name for its private key (none once retired).
    pub key_id: Option<String>,
    pub not_after: SystemTime,
    pub tainted: bool,
}

/// Why an operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthorityError {
    #[error("no {kind} authority has id {id:?} (see `signet {cli} show`)", cli = cli(*.kind))]
    Unknown { kind: AuthorityKind, id: String },
    #[error(
        "the {kind} authority {id} is active: only an old authority can be tainted or revoked (prepare and activate a new one first)"
    )]
    Active { kind: AuthorityKind, id: String },
    #[error(
        "the {kind} authority {id} is prepared, not old: only an old authority can be tainted or revoked"
    )]
    Prepared { kind: AuthorityKind, id: String },
    #[error("the {kind} authority {id} is already tainted")]
    AlreadyTainted { kind: AuthorityKind, id: String },
    #[error("the {kind} authority {id} is not tainted: taint it before revoking it")]
    NotTainted { kind: AuthorityKind, id: String },
    #[error("no {kind} authority is prepared: run `signet {cli} prepare` first", cli = cli(*.kind))]
    NothingPrepared { kind: AuthorityKind },
    #[error("the prepared {kind} authority is {prepared}, not {id}")]
    NotPrepared {
        kind: AuthorityKind,
        id: String,
        prepared: String,
    },
    #[error(
        "this CA's X.509 authorities are signed by an upstream CA, whose roots are what the bundle holds: taint or revoke at the upstream authority (`signet upstream-authority`)"
    )]
    Upstream,
    #[error(
        "no upstream CA is configured: the X.509 authorities are this server's own (`signet authority x509`)"
    )]
    NoUpstream,
    #[error(
        "the upstream X.509 authority {id} signs the {state} authority: replace the upstream CA files (certificate, key, bundle) with the new CA, run `signet authority x509 prepare` and `activate`, then taint it"
    )]
    UpstreamInUse { id: String, state: &'static str },
    #[error(
        "the upstream X.509 authority {id} signs the active authority of server {server_id} (same datastore): replace the upstream CA files there and run `signet authority x509 prepare` and `activate` against it, then taint"
    )]
    UpstreamInUseElsewhere { id: String, server_id: String },
    #[error(
        "this CA's X.509 authorities are signed by a remote upstream: prepare them through the server (`signet authority x509 prepare`)"
    )]
    RemotePrepare,
    #[error(
        "upstream authorities are prepared by replacing the upstream CA files; then `signet authority x509 prepare` makes an authority that chains to the new one"
    )]
    UpstreamPrepare,
    #[error(
        "the upstream CA in {path} chains to the {why} authority {id}: replace the upstream CA files with a new CA first"
    )]
    UpstreamCompromised {
        id: String,
        why: &'static str,
        path: std::path::PathBuf,
    },
}

/// The CLI command of `kind`, for hints in errors.
fn cli(kind: AuthorityKind) -> &'static str {
    match kind {
        AuthorityKind::X509 => "authority x509",
        AuthorityKind::Jwt => "authority jwt",
        AuthorityKind::UpstreamX509 => "upstream-authority",
    }
}

impl Ca {
    /// The authorities of `kind`: active, prepared, then old ones still in
    /// the bundle (X.509 old ones only without an upstream CA).
    pub fn authorities(&self, kind: AuthorityKind) -> Vec<AuthorityInfo> {
        let s = self.state();
        let mut out = Vec::new();
        match kind {
            AuthorityKind::X509 => {
                let own = [Some(&s.x509_current), s.x509_next.as_ref()];
                for (a, state) in own
                    .into_iter()
                    .zip([AuthorityState::Active, AuthorityState::Prepared])
                {
                    let Some(a) = a else { continue };
                    let id = authority_id(&a.cert).unwrap_or_default();
                    out.push(AuthorityInfo {
                        tainted: s.bundle.is_tainted(&id),
                        id,
                        state,
                        key_id: Some(a.key_id.clone()),
                        not_after: a.not_after,
                    });
                }
                if !self.has_upstream(&s) {
                    for cert in s.bundle.x509_authorities() {
                        let Some(id) = authority_id(cert) else {
                            continue;
                        };
                        if out.iter().any(|o| o.id == id) {
                            continue;
                        }
                        let not_after = signet_identity::x509_svid::certificate_not_after(cert)
                            .map_or(SystemTime::UNIX_EPOCH, super::secs_to_time);
                        out.push(AuthorityInfo {
                            tainted: s.bundle.is_tainted(&id),
                            id,
                            state: AuthorityState::Old,
                            key_id: None,
                            not_after,
                        });
                    }
                }
            }
            AuthorityKind::UpstreamX509 => {
                if !self.has_upstream(&s) {
                    return out;
                }
                let names = |a: Option<&Arc<X509Authority>>, id: &str| {
                    a.is_some_and(|a| {
                        let mut chain = vec![a.cert.clone()];
                        chain.extend(a.intermediates.iter().cloned());
                        chain_authority_ids(&chain).iter().any(|i| i == id)
                    })
                };
                for cert in s.bundle.x509_authorities() {
                    let Some(id) = authority_id(cert) else {
                        continue;
                    };
                    let state = if names(Some(&s.x509_current), &id) {
                        AuthorityState::Active
                    } else if names(s.x509_next.as_ref(), &id) {
                        AuthorityState::Prepared
                    } else {
                        AuthorityState::Old
                    };
                    let not_after = signet_identity::x509_svid::certificate_not_after(cert)
                        .map_or(SystemTime::UNIX_EPOCH, super::secs_to_time);
                    out.push(AuthorityInfo {
                        tainted: s.bundle.is_tainted(&id),
                        id,
                        state,
                        key_id: None,
                        not_after,
                    });
                }
            }
            AuthorityKind::Jwt => {
                let own = [Some(&s.jwt_current), s.jwt_next.as_ref()];
                for (k, state) in own
                    .into_iter()
                    .zip([AuthorityState::Active, AuthorityState::Prepared])
                {
                    let Some(k) = k else { continue };
                    out.push(AuthorityInfo {
                        id: k.kid.clone(),
                        state,
                        key_id: Some(k.key_id.clone()),
                        not_after: k.not_after,
                        tainted: s.bundle.is_tainted(&k.kid),
                    });
                }
                for (kid, not_after) in &s.jwt_expiry {
                    if out.iter().any(|o| &o.id == kid) || s.bundle.jwt_authority(kid).is_none() {
                        continue;
                    }
                    out.push(AuthorityInfo {
                        id: kid.clone(),
                        state: AuthorityState::Old,
                        key_id: None,
                        not_after: *not_after,
                        tainted: s.bundle.is_tainted(kid),
                    });
                }
            }
        }
        out
    }

    /// Ids of the upstream authorities an operator revoked.
    pub fn revoked(&self) -> BTreeSet<String> {
        self.state().revoked.clone()
    }

    /// Prepares a new authority of `kind` now and publishes it in the
    /// bundle; a previously prepared one is dropped (its key may be the
    /// suspect one).
    pub fn prepare(&self, kind: AuthorityKind) -> Result<AuthorityInfo, CaError> {
        let now = self.clock.now();
        let mut retired = Vec::new();
        self.change(|s| {
            match kind {
                AuthorityKind::X509 => {
                    if let Some(old) = s.x509_next.take() {
                        s.bundle.remove_x509_authorities(|c| *c == old.cert);
                        retired.push(old.key_id.clone());
                    }
                    s.x509_next = Some(Arc::new(self.new_x509_authority(s, now)?));
                }
                AuthorityKind::UpstreamX509 => return Err(AuthorityError::UpstreamPrepare.into()),
                AuthorityKind::Jwt => {
                    let next = Arc::new(new_jwt_key(&self.config, self.keys.as_ref(), now)?);
                    if let Some(old) = s.jwt_next.take() {
                        s.bundle.remove_jwt_authority(&old.kid);
                        s.jwt_expiry.remove(&old.kid);
                        retired.push(old.key_id.clone());
                    }
                    s.bundle.add_jwt_authority(next.authority.clone());
                    s.jwt_expiry.insert(next.kid.clone(), next.not_after);
                    s.jwt_next = Some(next);
                }
            }
            Ok(())
        })?;
        self.forget_keys(retired);
        self.find(kind, AuthorityState::Prepared)
    }

    /// Makes the prepared authority `id` the active one; the active one
    /// becomes old (its key is deleted: nothing signs with it again).
    pub fn activate(&self, kind: AuthorityKind, id: &str) -> Result<AuthorityInfo, CaError> {
        let mut retired = Vec::new();
        self.change(|s| {
            let prepared = match kind {
                AuthorityKind::X509 => s
                    .x509_next
                    .as_ref()
                    .map(|a| authority_id(&a.cert).unwrap_or_default()),
                AuthorityKind::Jwt => s.jwt_next.as_ref().map(|k| k.kid.clone()),
                AuthorityKind::UpstreamX509 => return Err(AuthorityError::UpstreamPrepare.into()),
            }
            .ok_or(AuthorityError::NothingPrepared { kind })?;
            if prepared != id {
                return Err(AuthorityError::NotPrepared {
                    kind,
                    id: id.to_owned(),
                    prepared,
                }
                .into());
            }
            match kind {
                AuthorityKind::X509 => {
                    if let Some(next) = s.x509_next.take() {
                        retired.push(std::mem::replace(&mut s.x509_current, next).key_id.clone());
                    }
                }
                AuthorityKind::Jwt => {
                    if let Some(next) = s.jwt_next.take() {
                        retired.push(std::mem::replace(&mut s.jwt_current, next).key_id.clone());
                    }
                }
                AuthorityKind::UpstreamX509 => {}
            }
            Ok(())
        })?;
        self.forget_keys(retired);
        self.find(kind, AuthorityState::Active)
    }

    /// Taints the old authority `id`: it still verifies, but everything it
    /// signed is to be replaced now.
    pub fn taint(&self, kind: AuthorityKind, id: &str) -> Result<(), CaError> {
        self.check_old(kind, id)?;
        self.change(|s| {
            if !s.bundle.set_tainted(id, true) {
                return Err(AuthorityError::AlreadyTainted {
                    kind,
                    id: id.to_owned(),
                }
                .into());
            }
            Ok(())
        })
    }

    /// Revokes the tainted old authority `id`: it leaves the bundle, and
    /// nothing it signed verifies any more.
    pub fn revoke(&self, kind: AuthorityKind, id: &str) -> Result<(), CaError> {
        self.check_old(kind, id)?;
        self.change(|s| {
            if !s.bundle.is_tainted(id) {
                return Err(AuthorityError::NotTainted {
                    kind,
                    id: id.to_owned(),
                }
                .into());
            }
            match kind {
                AuthorityKind::X509 => {
                    s.bundle
                        .remove_x509_authorities(|c| authority_id(c).as_deref() == Some(id));
                }
                AuthorityKind::Jwt => {
                    s.bundle.remove_jwt_authority(id);
                    s.jwt_expiry.remove(id);
                }
                AuthorityKind::UpstreamX509 => {
                    s.bundle
                        .remove_x509_authorities(|c| authority_id(c).as_deref() == Some(id));
                    s.revoked.insert(id.to_owned());
                }
            }
            Ok(())
        })
    }

    /// Refuses anything but an old authority of this CA.
    fn check_old(&self, kind: AuthorityKind, id: &str) -> Result<(), CaError> {
        let upstream = self.has_upstream(&self.state());
        match kind {
            AuthorityKind::X509 if upstream => return Err(AuthorityError::Upstream.into()),
            AuthorityKind::UpstreamX509 if !upstream => {
                return Err(AuthorityError::NoUpstream.into());
            }
            _ => {}
        }
        let found = self.authorities(kind).into_iter().find(|a| a.id == id);
        let err = match found.map(|a| a.state) {
            Some(AuthorityState::Old) => return Ok(()),
            Some(state @ (AuthorityState::Active | AuthorityState::Prepared))
                if kind == AuthorityKind::UpstreamX509 =>
            {
                AuthorityError::UpstreamInUse {
                    id: id.to_owned(),
                    state: state.as_str(),
                }
            }
            Some(AuthorityState::Active) => AuthorityError::Active {
                kind,
                id: id.to_owned(),
            },
            Some(AuthorityState::Prepared) => AuthorityError::Prepared {
                kind,
                id: id.to_owned(),
            },
            None => AuthorityError::Unknown {
                kind,
                id: id.to_owned(),
            },
        };
        Err(err.into())
    }

    pub(crate) fn find(
        &self,
        kind: AuthorityKind,
        state: AuthorityState,
    ) -> Result<AuthorityInfo, CaError> {
        self.authorities(kind)
            .into_iter()
            .find(|a| a.state == state)
            .ok_or_else(|| CaError::Journal(format!("no {} {kind} authority", state.as_str())))
    }

    /// Applies `f` to a copy of the state and installs it when `f` succeeds,
    /// with the bundle's sequence moved on.
    fn change(&self, f: impl FnOnce(&mut CaState) -> Result<(), CaError>) -> Result<(), CaError> {
        let mut guard = self.state.write().unwrap_or_else(PoisonError::into_inner);
        let mut s = CaState::clone(&guard);
        f(&mut s)?;
        s.bundle.set_sequence(guard.bundle.sequence() + 1);
        tracing::info!(
            trust_domain = %self.config.trust_domain,
            bundle_sequence = s.bundle.sequence(),
            "CA authorities changed by an operator"
        );
        *guard = Arc::new(s);
        Ok(())
    }

    /// A new X.509 authority, its certificate added to the bundle (or,
    /// with an upstream CA, the upstream's roots).
    pub(super) fn new_x509_authority(
        &self,
        s: &mut CaState,
        now: SystemTime,
    ) -> Result<X509Authority, CaError> {
        if self.remote.is_some() {
            // Only the async path (`mint_remote`) reaches a remote upstream.
            return Err(AuthorityError::RemotePrepare.into());
        }
        let upstream = signing_upstream(s)?;
        let next = new_x509_authority(&self.config, self.keys.as_ref(), upstream.as_deref(), now)?;
        if upstream.is_none() {
            s.bundle.add_x509_authority(next.cert.clone());
        }
        Ok(next)
    }

    pub(super) fn forget_keys(&self, key_ids: Vec<String>) {
        for key_id in key_ids {
            if let Err(e) = self.keys.delete(&key_id) {
                tracing::warn!(key_id, error = %e, "cannot delete a retired CA key");
            }
        }
    }
}

/// The first of `ids` an operator revoked or tainted, and which it was.
pub(super) fn compromised(
    s: &CaState,
    ids: impl IntoIterator<Item = String>,
) -> Option<(String, &'static str)> {
    ids.into_iter().find_map(|id| {
        let why = if s.revoked.contains(&id) {
            "revoked"
        } else if s.bundle.is_tainted(&id) {
            "tainted"
        } else {
            return None;
        };
        Some((id, why))
    })
}

/// The upstream CA to sign a new authority with, read again from its
/// files (replacing them is how an upstream CA rotates), its roots added
/// to the bundle unless revoked. Refused while it chains to a tainted or
/// revoked authority: what it signed would be replaced at once again.
fn signing_upstream(s: &mut CaState) -> Result<Option<Arc<UpstreamAuthority>>, CaError> {
    let Some(loaded) = s.upstream.clone() else {
        return Ok(None);
    };
    let fresh = loaded.reload()?;
    let up = if fresh.same_as(&loaded) {
        loaded
    } else {
        tracing::warn!(
            cert = %loaded.cert_path().display(),
            "the upstream CA files changed: new authorities chain to the CA they hold now"
        );
        let fresh = Arc::new(fresh);
        s.upstream = Some(fresh.clone());
        fresh
    };
    if let Some((id, why)) = compromised(s, up.authority_ids()) {
        return Err(AuthorityError::UpstreamCompromised {
            id,
            why,
            path: up.cert_path().to_owned(),
        }
        .into());
    }
    add_upstream_roots(s, &up.roots);
    Ok(Some(up))
}

/// Puts an upstream's `roots` in the bundle, but never one an operator
/// revoked.
pub(super) fn add_upstream_roots(
    s: &mut CaState,
    roots: &[rustls_pki_types::CertificateDer<'static>],
) {
    for root in roots {
        if authority_id(root).is_none_or(|id| !s.revoked.contains(&id)) {
            s.bundle.add_x509_authority(root.clone());
        }
    }
}
