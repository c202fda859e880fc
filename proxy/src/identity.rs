//! The sidecar's own identity: the certificate it presents and the bundles
//! it verifies peers with, kept current from the Workload API stream. New
//! handshakes read them at once; established connections keep theirs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use signet_identity::{BundleSet, SpiffeId, X509Svid};
use signet_tls::{RotatingCert, SharedBundles};
use signet_workload::X509Watcher;
use tokio::sync::watch;

/// What the sidecar presents and trusts. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Identity {
    cert: Arc<RotatingCert>,
    bundles: SharedBundles,
    current: Arc<watch::Sender<Option<Current>>>,
    /// Moves on whenever the SVID or the bundles change: TLS sessions made
    /// before (tickets carry both peers' certificates of then) are not
    /// resumed after.
    generation: Arc<AtomicU64>,
}

/// The SVID in use: its ID and serial, for logs, XFCC and health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Current {
    pub id: SpiffeId,
    pub serial: String,
}

impl Default for Identity {
    fn default() -> Self {
        Self::new()
    }
}

impl Identity {
    /// No identity yet: listeners wait until [`Identity::set`] is called.
    pub fn new() -> Self {
        Identity {
            cert: Arc::new(RotatingCert::new()),
            bundles: SharedBundles::default(),
            current: Arc::new(watch::channel(None).0),
            generation: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Presents `svid` and trusts `bundles` from now on.
    pub fn set(&self, svid: &X509Svid, bundles: BundleSet) -> Result<(), rustls::Error> {
        self.cert.set(svid)?;
        self.bundles.set(bundles);
        self.generation.fetch_add(1, Ordering::Relaxed);
        self.current.send_replace(Some(Current {
            id: svid.spiffe_id().clone(),
            serial: svid.serial().to_string(),
        }));
        Ok(())
    }

    /// Trusts `bundles` from now on, if they differ from those trusted.
    fn trust(&self, bundles: &BundleSet) {
        if *self.bundles.get() != *bundles {
            self.bundles.set(bundles.clone());
            self.generation.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Which SVID and bundles are in use: changes whenever either does.
    pub fn generation(&self) -> Arc<AtomicU64> {
        self.generation.clone()
    }

    /// Keeps this identity current from `watcher` (the SVID named `svid_id`,
    /// else the default one) until the returned task is aborted.
    pub fn follow(
        &self,
        watcher: X509Watcher,
        svid_id: Option<SpiffeId>,
    ) -> tokio::task::JoinHandle<()> {
        let identity = self.clone();
        let mut rx = watcher.subscribe();
        tokio::spawn(async move {
            let mut warned = None;
            loop {
                let state = rx.borrow_and_update().clone();
                if let Some(ctx) = state.context() {
                    let ambiguity = ctx.ambiguity(svid_id.as_ref().map(SpiffeId::as_str));
                    if ambiguity.is_some() && ambiguity != warned {
                        tracing::warn!("{}", ambiguity.as_deref().unwrap_or_default());
                    }
                    warned = ambiguity;
                    match ctx.svid(svid_id.as_ref().map(SpiffeId::as_str)) {
                        Some(svid) => {
                            let changed =
                                identity.current().is_none_or(|c| c.serial != svid.serial());
                            if changed {
                                match identity.set(svid, ctx.bundles.clone()) {
                                    Ok(()) => tracing::info!(
                                        spiffe_id = %svid.spiffe_id(),
                                        serial = svid.serial(),
                                        "presenting X509-SVID"
                                    ),
                                    Err(e) => {
                                        tracing::error!(error = %e, "cannot use the X509-SVID")
                                    }
                                }
                            } else {
                                identity.trust(&ctx.bundles);
                            }
                        }
                        None => tracing::error!(
                            wanted = ?svid_id.as_ref().map(SpiffeId::as_str),
                            offered = ?ctx.svids.iter().map(|s| s.spiffe_id().as_str()).collect::<Vec<_>>(),
                            "the Workload API does not offer the configured svid_id"
                        ),
                    }
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
    }

    pub fn cert(&self) -> Arc<RotatingCert> {
        self.cert.clone()
    }

    pub fn bundles(&self) -> SharedBundles {
        self.bundles.clone()
    }

    /// The SVID in use, if any.
    pub fn current(&self) -> Option<Current> {
        self.current.borrow().clone()
    }

    /// Waits until an SVID is in use.
    pub async fn ready(&self) -> Current {
        let mut rx = self.current.subscribe();
        loop {
            if let Some(c) = rx.borrow_and_update().clone() {
                return c;
            }
            // The sender lives in `self`, so the channel cannot close here.
            let _ = rx.changed().await;
        }
    }
}
