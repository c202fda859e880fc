//! The SPIFFE Workload API on the agent's Unix socket.
//!
//! Rules (SPIFFE Workload Endpoint and Workload API specs): every request
//! carries the `workload.spiffe.io: true` metadata or gets InvalidArgument;
//! the caller is identified from the kernel (SO_PEERCRED + /proc), never
//! from what it sends; a caller no entry matches gets PermissionDenied;
//! every stream message carries the full current state, pushed again on
//! rotation, entry change and bundle change.

use std::collections::HashMap;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use signet_identity::{Entry, JwtSvid, selector};
use tokio::net::UnixListener;
use tokio::sync::{Mutex, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{AgentHandle, Snapshot, StreamDemand};
use crate::attest::{PinnedPeer, UnixAttestor, WorkloadAttestError};
use signet_unix::UnixPeer;
use signet_wire::workload::spiffe_workload_api_server::{
    SpiffeWorkloadApi, SpiffeWorkloadApiServer,
};
use signet_wire::workload::*;

/// The metadata key every Workload API request must carry.
pub use signet_wire::WORKLOAD_SECURITY_HEADER as SECURITY_HEADER;

/// Most audiences one JWT-SVID request may name.
pub const MAX_AUDIENCES: usize = 16;
/// Longest audience accepted, in bytes.
pub const MAX_AUDIENCE_LEN: usize = 512;
/// Most JWT-SVIDs the agent keeps for reuse; past it, expired ones are
/// dropped and then the oldest.
const JWT_CACHE_MAX: usize = 1024;

/// Checks the audiences of a JWT-SVID request (security invariant 8: what a
/// local caller sends is bounded).
fn check_audience(audience: &[String]) -> Result<(), Status> {
    if audience.is_empty() || audience.iter().any(String::is_empty) {
        return Err(Status::invalid_argument("audience must be specified"));
    }
    if audience.len() > MAX_AUDIENCES {
        return Err(Status::invalid_argument(format!(
            "{} audiences requested; at most {MAX_AUDIENCES}",
            audience.len()
        )));
    }
    if let Some(long) = audience.iter().find(|a| a.len() > MAX_AUDIENCE_LEN) {
        return Err(Status::invalid_argument(format!(
            "an audience of {} bytes; at most {MAX_AUDIENCE_LEN}",
            long.len()
        )));
    }
    Ok(())
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// A JWT-SVID kept until close to its expiry.
#[derive(Clone)]
struct CachedJwt {
    token: String,
    expires_at: i64,
    issued_at: i64,
    /// The signing key's id: a token whose key is tainted or revoked is not
    /// handed out again.
    kid: Option<String>,
}

/// JWT-SVIDs by (entry id, sorted audience).
type JwtCache = HashMap<(String, Vec<String>), CachedJwt>;

/// The Workload API service.
#[derive(Clone)]
pub struct WorkloadApi {
    agent: AgentHandle,
    attestor: Arc<UnixAttestor>,
    jwt_cache: Arc<Mutex<JwtCache>>,
}

impl std::fmt::Debug for WorkloadApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadApi").finish_non_exhaustive()
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl WorkloadApi {
    pub fn new(agent: AgentHandle, attestor: Arc<UnixAttestor>) -> Self {
        Self {
            agent,
            attestor,
            jwt_cache: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    pub fn into_service(self) -> SpiffeWorkloadApiServer<Self> {
        SpiffeWorkloadApiServer::new(self)
    }

    /// Checks the security header and attests the caller.
    async fn caller<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        let header = req
            .metadata()
            .get(SECURITY_HEADER)
            .and_then(|v| v.to_str().ok());
        if header != Some("true") {
            return Err(Status::invalid_argument(
                "security header missing from request",
            ));
        }
        vouching(&self.agent.snapshot().borrow())?;
        attest_peer(unix_peer(req)?, &self.attestor).await
    }
}

/// The process at the other end of a Unix-socket request: its selectors,
/// from the kernel (SO_PEERCRED and /proc), and its pin, taken when the
/// connection was accepted (security invariant 2).
#[derive(Debug, Clone)]
pub struct Caller {
    pub selectors: Vec<signet_identity::Selector>,
    pin: Arc<PinnedPeer>,
    attestor: Arc<UnixAttestor>,
    matched: Arc<std::sync::Mutex<Option<Matched>>>,
}

/// The entry list a caller was last matched against, and the indices of
/// its entries that matched.
type Matched = (Arc<Vec<Entry>>, Vec<usize>);

impl Caller {
    /// The entries this caller's selectors match ([`matching`]), kept
    /// while the agent's entries stay the same: a stream answers every
    /// SVID and bundle change, and matching anew would cost every entry
    /// times every stream each time.
    pub fn matching<'a>(&self, s: &'a Snapshot) -> Vec<&'a Entry> {
        let mut memo = self
            .matched
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let at = match memo.as_ref() {
            Some((entries, at)) if Arc::ptr_eq(entries, &s.entries) => at.clone(),
            _ => {
                let at = matching_at(s, &self.selectors);
                *memo = Some((s.entries.clone(), at.clone()));
                at
            }
        };
        at.iter().map(|i| &s.entries[*i]).collect()
    }

    /// PermissionDenied once the caller is no longer the process that
    /// connected (exited, pid reused, another executable): checked before
    /// every message a stream sends.
    pub fn still_connected(&self) -> Result<(), Status> {
        self.attestor
            .verify(&self.pin)
            .map_err(|e| refused(&self.pin, e))
    }
}

/// The peer of a Unix-socket request, as pinned when its connection was
/// accepted.
pub fn unix_peer<T>(req: &Request<T>) -> Result<UnixPeer, Status> {
    req.extensions()
        .get::<UnixPeer>()
        .cloned()
        .ok_or_else(|| Status::internal("the caller's credentials are unavailable"))
}

/// Attests the caller of a Unix-socket request. Shared with Envoy SDS,
/// which sends no security header. The /proc reads and executable hashing
/// run on the blocking pool, a few callers at a time (see
/// [`UnixAttestor::attest_blocking`]), never on the runtime's threads.
pub async fn attest_peer(peer: UnixPeer, attestor: &Arc<UnixAttestor>) -> Result<Caller, Status> {
    let pin = peer.pin.map_err(|e| {
        tracing::warn!(error = %e, "workload attestation failed: the caller could not be pinned when it connected");
        Status::permission_denied(format!("workload attestation failed: {e}"))
    })?;
    let selectors = attestor
        .clone()
        .attest_blocking(pin.clone())
        .await
        .map_err(|e| refused(&pin, e))?;
    // What a refused caller looked like, for whoever wonders why.
    tracing::debug!(
        pid = pin.cred().pid,
        uid = pin.cred().uid,
        selectors = %selectors.iter().map(ToString::to_string).collect::<Vec<_>>().join(" "),
        "caller attested"
    );
    Ok(Caller {
        selectors,
        pin,
        attestor: attestor.clone(),
        matched: Arc::default(),
    })
}

fn refused(pin: &PinnedPeer, e: WorkloadAttestError) -> Status {
    tracing::warn!(pid = pin.cred().pid, error = %e, "workload attestation failed");
    Status::permission_denied(format!("workload attestation failed: {e}"))
}

/// Entries whose selectors all match the caller's, ordered by SPIFFE ID
/// (then entry id): the first is the caller's default SVID, the same on
/// every agent and after every restart, whatever order entries arrive in.
pub fn matching<'a>(
    snapshot: &'a Snapshot,
    selectors: &[signet_identity::Selector],
) -> Vec<&'a Entry> {
    matching_at(snapshot, selectors)
        .into_iter()
        .map(|i| &snapshot.entries[i])
        .collect()
}

/// [`matching`], as indices into the snapshot's entries.
fn matching_at(snapshot: &Snapshot, selectors: &[signet_identity::Selector]) -> Vec<usize> {
    let entries = &snapshot.entries;
    let mut found: Vec<usize> = (0..entries.len())
        .filter(|i| selector::all_match(&entries[*i].selectors, selectors))
        .collect();
    found.sort_by(|a, b| {
        let (a, b) = (&entries[*a], &entries[*b]);
        (a.spiffe_id.as_str(), a.id.as_str()).cmp(&(b.spiffe_id.as_str(), b.id.as_str()))
    });
    found
}

/// Unavailable while the agent cannot vouch for identities (banned,
/// evicted, unable to renew): callers should not mistake that for "no
/// identity for you".
fn vouching(snapshot: &Snapshot) -> Result<(), Status> {
    if snapshot.healthy {
        Ok(())
    } else {
        Err(Status::unavailable(
            "the agent cannot vouch for identities right now",
        ))
    }
}

fn no_identity() -> Status {
    Status::permission_denied("no identity issued")
}

fn der_concat<'a>(
    certs: impl IntoIterator<Item = &'a rustls_pki_types::CertificateDer<'static>>,
) -> Vec<u8> {
    certs
        .into_iter()
        .flat_map(|c| c.as_ref().iter().copied())
        .collect()
}

/// The X509-SVID response for the caller, or `None` while its SVIDs are
/// still being minted.
fn x509_response(
    snapshot: &Snapshot,
    entries: &[&Entry],
) -> Result<Option<X509svidResponse>, Status> {
    vouching(snapshot)?;
    if entries.is_empty() {
        return Err(no_identity());
    }
    let mut svids = Vec::new();
    let mut federated = HashMap::new();
    for e in entries {
        let Some(svid) = snapshot.svids.get(&e.id) else {
            continue;
        };
        let td = svid.spiffe_id().trust_domain_str();
        let bundle = snapshot
            .bundles
            .iter()
            .find(|b| b.trust_domain().as_str() == td);
        svids.push(X509svid {
            spiffe_id: svid.spiffe_id().to_string(),
            x509_svid: der_concat(svid.chain()),
            x509_svid_key: svid.private_key().pkcs8_der().to_vec(),
            bundle: bundle
                .map(|b| der_concat(b.x509_authorities()))
                .unwrap_or_default(),
            hint: String::new(),
        });
        for ftd in &e.federates_with {
            if let Some(b) = snapshot.bundles.iter().find(|b| b.trust_domain() == ftd) {
                federated.insert(ftd.id().to_string(), der_concat(b.x509_authorities()));
            }
        }
    }
    if svids.is_empty() {
        return Ok(None);
    }
    Ok(Some(X509svidResponse {
        svids,
        crl: Vec::new(),
        federated_bundles: federated,
    }))
}

/// The bundles a caller with `entries` trusts, as SPIRE hands them out:
/// its own trust domain's, and those of the trust domains its entries
/// federate with (not every bundle the agent holds for other workloads).
pub fn trusted_bundles<'a>(
    snapshot: &'a Snapshot,
    entries: &[&Entry],
) -> Vec<&'a signet_identity::Bundle> {
    snapshot
        .bundles
        .iter()
        .filter(|b| {
            entries.iter().any(|e| {
                e.spiffe_id.is_member_of(b.trust_domain())
                    || e.federates_with.contains(b.trust_domain())
            })
        })
        .collect()
}

/// The bundles the caller trusts ([`trusted_bundles`]), keyed by
/// trust-domain SPIFFE ID and encoded by `encode`, for a caller that
/// still has an identity.
fn bundles_by_trust_domain(
    s: &Snapshot,
    caller: &Caller,
    encode: impl Fn(&signet_identity::Bundle) -> Vec<u8>,
) -> Result<HashMap<String, Vec<u8>>, Status> {
    vouching(s)?;
    let entries = caller.matching(s);
    if entries.is_empty() {
        return Err(no_identity());
    }
    Ok(trusted_bundles(s, &entries)
        .into_iter()
        .map(|b| (b.trust_domain().id().to_string(), encode(b)))
        .collect())
}

/// Streams `build(snapshot)` on every snapshot change that alters it.
fn stream_from<T, F>(agent: &AgentHandle, build: F) -> BoxStream<T>
where
    T: PartialEq + Clone + Send + 'static,
    F: Fn(&Snapshot) -> Result<Option<T>, Status> + Send + 'static,
{
    let mut rx = agent.snapshot();
    let (tx, out) = mpsc::channel(4);
    tokio::spawn(async move {
        let mut last: Option<T> = None;
        loop {
            let snapshot = rx.borrow_and_update().clone();
            match build(&snapshot) {
                Ok(Some(msg)) if last.as_ref() != Some(&msg) => {
                    if tx.send(Ok(msg.clone())).await.is_err() {
                        return;
                    }
                    last = Some(msg);
                }
                Ok(_) => {}
                Err(status) => {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return },
                _ = tx.closed() => return,
            }
        }
    });
    Box::pin(ReceiverStream::new(out))
}

fn json_to_prost(v: &serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.iter().map(json_to_prost).collect(),
        }),
        serde_json::Value::Object(m) => Kind::StructValue(json_object_to_struct(m)),
    };
    prost_types::Value { kind: Some(kind) }
}

fn json_object_to_struct(m: &serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: m
            .iter()
            .map(|(k, v)| (k.clone(), json_to_prost(v)))
            .collect(),
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApi {
    type FetchX509SVIDStream = BoxStream<X509svidResponse>;
    type FetchX509BundlesStream = BoxStream<X509BundlesResponse>;
    type FetchJWTBundlesStream = BoxStream<JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        req: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let caller = self.caller(&req).await?;
        let first = self.agent.snapshot().borrow().clone();
        if caller.matching(&first).is_empty() {
            return Err(no_identity());
        }
        // The entries this stream serves are never evicted from the agent's
        // cache while it is open; a missing SVID is minted on demand.
        let demand = self.agent.demand();
        let stream_demand = std::sync::Mutex::new(StreamDemand::new(demand.clone()));
        Ok(Response::new(stream_from(&self.agent, move |s| {
            caller.still_connected()?;
            let entries = caller.matching(s);
            let ids: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
            let missing = entries.iter().any(|e| !s.svids.contains_key(&e.id));
            stream_demand
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .set(ids.clone());
            demand.touch(&ids, missing);
            x509_response(s, &entries)
        })))
    }

    async fn fetch_x509_bundles(
        &self,
        req: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        let caller = self.caller(&req).await?;
        if caller.matching(&self.agent.snapshot().borrow()).is_empty() {
            return Err(no_identity());
        }
        Ok(Response::new(stream_from(&self.agent, move |s| {
            caller.still_connected()?;
            bundles_by_trust_domain(s, &caller, |b| der_concat(b.x509_authorities())).map(
                |bundles| {
                    Some(X509BundlesResponse {
                        crl: Vec::new(),
                        bundles,
                    })
                },
            )
        })))
    }

    async fn fetch_jwtsvid(
        &self,
        req: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        let selectors = self.caller(&req).await?.selectors;
        let r = req.into_inner();
        check_audience(&r.audience)?;
        let snapshot = self.agent.snapshot().borrow().clone();
        let mut entries = matching(&snapshot, &selectors);
        if !r.spiffe_id.is_empty() {
            entries.retain(|e| e.spiffe_id.as_str() == r.spiffe_id);
        }
        if entries.is_empty() {
            return Err(no_identity());
        }
        let mut audience = r.audience.clone();
        audience.sort();
        let mut svids = Vec::new();
        for e in entries {
            let key = (e.id.clone(), audience.clone());
            let now = now_secs();
            let cached = self.jwt_cache.lock().await.get(&key).cloned();
            // Reuse a token until half of its life is gone.
            let own = signet_identity::BundleSource::bundle_for(
                &snapshot.bundles,
                e.spiffe_id.trust_domain_str(),
            );
            let key_good = |kid: &Option<String>| match (own, kid) {
                (Some(b), Some(kid)) => b.jwt_authority(kid).is_some() && !b.is_tainted(kid),
                _ => true,
            };
            let token = match cached.filter(|c| {
                now < c.issued_at + (c.expires_at - c.issued_at) / 2 && key_good(&c.kid)
            }) {
                Some(c) => c.token,
                None => {
                    let (token, expires_at) = self.agent.mint_jwt(&e.id, &r.audience).await.map_err(|err| {
                        tracing::warn!(entry_id = %e.id, error = %err, "cannot mint a JWT-SVID");
                        Status::unavailable(format!("cannot mint a JWT-SVID: {err}"))
                    })?;
                    let mut cache = self.jwt_cache.lock().await;
                    cache.retain(|_, c| c.expires_at > now);
                    while cache.len() >= JWT_CACHE_MAX {
                        let Some(oldest) = cache
                            .iter()
                            .min_by_key(|(_, c)| c.issued_at)
                            .map(|(k, _)| k.clone())
                        else {
                            break;
                        };
                        cache.remove(&oldest);
                    }
                    cache.insert(
                        key,
                        CachedJwt {
                            kid: signet_identity::jwt_svid::key_id_insecure(&token),
                            token: token.clone(),
                            expires_at,
                            issued_at: now,
                        },
                    );
                    token
                }
            };
            svids.push(Jwtsvid {
                spiffe_id: e.spiffe_id.to_string(),
                svid: token,
                hint: String::new(),
            });
        }
        Ok(Response::new(JwtsvidResponse { svids }))
    }

    async fn fetch_jwt_bundles(
        &self,
        req: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        let caller = self.caller(&req).await?;
        if caller.matching(&self.agent.snapshot().borrow()).is_empty() {
            return Err(no_identity());
        }
        Ok(Response::new(stream_from(&self.agent, move |s| {
            caller.still_connected()?;
            bundles_by_trust_domain(s, &caller, |b| b.jwks_json().to_string().into_bytes())
                .map(|bundles| Some(JwtBundlesResponse { bundles }))
        })))
    }

    async fn validate_jwtsvid(
        &self,
        req: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        self.caller(&req).await?;
        let r = req.into_inner();
        if r.audience.is_empty() || r.audience.len() > MAX_AUDIENCE_LEN {
            return Err(Status::invalid_argument(format!(
                "one audience of 1 to {MAX_AUDIENCE_LEN} bytes must be specified"
            )));
        }
        if r.svid.is_empty() {
            return Err(Status::invalid_argument("svid must be specified"));
        }
        let snapshot = self.agent.snapshot().borrow().clone();
        let svid = JwtSvid::verify(&r.svid, &snapshot.bundles, &r.audience, SystemTime::now())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(ValidateJwtsvidResponse {
            spiffe_id: svid.spiffe_id().to_string(),
            claims: Some(json_object_to_struct(svid.claims())),
        }))
    }
}

/// Binds the agent socket, world-connectable like SPIRE's public socket:
/// attestation, not file permissions, decides who gets what.
pub fn bind_agent_socket(path: &Path) -> std::io::Result<UnixListener> {
    signet_unix::bind(path, 0o777, 0o755)
}

#[cfg(test)]
mod tests {
    use super::*;
    use signet_identity::{Bundle, BundleSet, SpiffeId, TrustDomain};

    fn entry(id: &str, federates_with: &[&str]) -> Entry {
        let parent = SpiffeId::parse("spiffe://example.org/signet/agent/a").unwrap();
        let mut e = Entry::new(SpiffeId::parse(id).unwrap(), parent, Vec::new());
        e.federates_with = federates_with
            .iter()
            .map(|td| TrustDomain::parse(td).unwrap())
            .collect();
        e
    }

    fn names(bundles: &[&Bundle]) -> Vec<String> {
        bundles
            .iter()
            .map(|b| b.trust_domain().to_string())
            .collect()
    }

    /// A workload trusts its own trust domain and those its entries
    /// federate with, not every bundle its node holds for others.
    #[test]
    fn a_caller_trusts_only_the_trust_domains_its_entries_federate_with() {
        let mut snapshot = Snapshot::default();
        let mut set = BundleSet::new();
        for td in ["example.org", "partner.test", "other.test"] {
            set.insert(Bundle::new(TrustDomain::parse(td).unwrap()));
        }
        snapshot.bundles = set;
        let plain = entry("spiffe://example.org/a", &[]);
        let partner = entry("spiffe://example.org/b", &["partner.test"]);
        assert_eq!(
            names(&trusted_bundles(&snapshot, &[&plain])),
            ["example.org"]
        );
        let mut both = names(&trusted_bundles(&snapshot, &[&plain, &partner]));
        both.sort();
        assert_eq!(both, ["example.org", "partner.test"]);
        assert!(trusted_bundles(&snapshot, &[]).is_empty());
    }
}
