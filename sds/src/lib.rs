//! Envoy SDS (`envoy.service.secret.v3.SecretDiscoveryService`) over the
//! Signet agent's state, served on the agent socket beside the Workload
//! API.
//!
//! Role: hand Envoy its certificates and validation contexts, and push every
//! rotation and bundle change. Envoy is attested like any workload (by its
//! pid's kernel facts) and only ever gets its own entries' SVIDs.
//!
//! Resource names, as SPIRE defines them: a SPIFFE ID names that SVID's
//! `TlsCertificate`; `default` the caller's first SVID; a trust-domain ID
//! (`spiffe://example.org`) that trust domain's validation context;
//! `ROOTCA` the own trust domain's; `ALL` every trust domain (own and
//! federated) as an `envoy.tls.cert_validator.spiffe` validator. An empty
//! list means everything the caller may have. Unknown names are left out of
//! the answer (SPIRE does the same); Envoy keeps waiting for them.
//!
//! Depends on: `signet-agent` (the agent snapshot, workload attestation),
//! `envoy-types` (the SDS protocol and TLS types).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{DataSource, TypedExtensionConfig, data_source};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, SpiffeCertValidatorConfig, TlsCertificate, secret,
    spiffe_cert_validator_config,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::{
    SecretDiscoveryService, SecretDiscoveryServiceServer,
};
use envoy_types::pb::google::protobuf::Any;
use signet_agent::attest::UnixAttestor;
use signet_agent::workload_api::{Caller, attest_peer, unix_peer};
use signet_agent::{AgentHandle, Snapshot, StreamDemand};
use signet_identity::{Bundle, X509Svid};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// The type URL of SDS resources.
pub const SECRET_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
/// Name of Envoy's SPIFFE certificate validator extension.
pub const SPIFFE_VALIDATOR: &str = "envoy.tls.cert_validator.spiffe";

/// SDS settings.
#[derive(Debug, Clone, Copy)]
pub struct SdsOptions {
    /// Send `ALL` (and trust-domain contexts) as the SPIFFE validator; when
    /// false, plain `trusted_ca` PEM is sent instead.
    pub spiffe_validator: bool,
}

impl Default for SdsOptions {
    fn default() -> Self {
        Self {
            spiffe_validator: true,
        }
    }
}

/// The SDS service.
#[derive(Clone)]
pub struct SdsService {
    agent: AgentHandle,
    attestor: Arc<UnixAttestor>,
    options: SdsOptions,
}

impl std::fmt::Debug for SdsService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SdsService")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn pem_source(pem: String) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(data_source::Specifier::InlineBytes(pem.into_bytes())),
        ..Default::default()
    })
}

fn tls_certificate(name: &str, svid: &X509Svid) -> Secret {
    Secret {
        name: name.to_owned(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: pem_source(svid.chain_pem()),
            private_key: pem_source(svid.private_key().to_pem().to_string()),
            ..Default::default()
        })),
    }
}

fn validation_context(name: &str, bundles: &[&Bundle], spiffe: bool) -> Secret {
    let context = if spiffe {
        let config = SpiffeCertValidatorConfig {
            trust_domains: bundles
                .iter()
                .map(|b| spiffe_cert_validator_config::TrustDomain {
                    name: b.trust_domain().to_string(),
                    trust_bundle: pem_source(b.x509_pem()),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        CertificateValidationContext {
            custom_validator_config: Some(TypedExtensionConfig {
                name: SPIFFE_VALIDATOR.to_owned(),
                typed_config: Some(envoy_types::util::pack_any(config)),
            }),
            ..Default::default()
        }
    } else {
        let pem: String = bundles.iter().map(|b| b.x509_pem()).collect();
        CertificateValidationContext {
            trusted_ca: pem_source(pem),
            ..Default::default()
        }
    };
    Secret {
        name: name.to_owned(),
        r#type: Some(secret::Type::ValidationContext(context)),
    }
}

impl SdsService {
    pub fn new(agent: AgentHandle, attestor: Arc<UnixAttestor>, options: SdsOptions) -> Self {
        Self {
            agent,
            attestor,
            options,
        }
    }

    pub fn into_service(self) -> SecretDiscoveryServiceServer<Self> {
        SecretDiscoveryServiceServer::new(self)
    }

    /// SDS as a service of the agent socket, beside the Workload API
    /// (`signet_agent::start`'s `extra`).
    pub fn on_agent_socket(options: SdsOptions) -> signet_agent::ExtraServices {
        Box::new(move |agent, attestor| {
            tonic::service::Routes::new(
                SdsService::new(agent.clone(), attestor.clone(), options).into_service(),
            )
        })
    }

    /// The secrets named (all the caller may have when `names` is empty),
    /// by name; unknown names are left out.
    fn resolve(
        &self,
        snapshot: &Snapshot,
        caller: &Caller,
        names: &[String],
    ) -> BTreeMap<String, Secret> {
        let entries = caller.matching(snapshot);
        let svids: Vec<&X509Svid> = entries
            .iter()
            .filter_map(|e| snapshot.svids.get(&e.id).map(|s| s.as_ref()))
            .collect();
        let own_td = entries
            .first()
            .map(|e| e.spiffe_id.trust_domain())
            .or_else(|| {
                snapshot
                    .bundles
                    .iter()
                    .next()
                    .map(|b| b.trust_domain().clone())
            });
        let own_bundle = own_td
            .as_ref()
            .and_then(|td| snapshot.bundles.iter().find(|b| b.trust_domain() == td));
        // Own and federated, as far as the caller's entries federate.
        let all: Vec<&Bundle> = signet_agent::workload_api::trusted_bundles(snapshot, &entries);
        let spiffe = self.options.spiffe_validator;
        let mut out = BTreeMap::new();
        let add = |name: &str, out: &mut BTreeMap<String, Secret>| {
            let secret = match name {
                "default" => svids.first().map(|s| tls_certificate(name, s)),
                "ROOTCA" => own_bundle.map(|b| validation_context(name, &[b], false)),
                "ALL" => (!all.is_empty()).then(|| validation_context(name, &all, spiffe)),
                id => {
                    if let Some(svid) = svids.iter().find(|s| s.spiffe_id().as_str() == id) {
                        Some(tls_certificate(name, svid))
                    } else {
                        all.iter()
                            .find(|b| b.trust_domain().id().as_str() == id)
                            .map(|b| validation_context(name, &[b], false))
                    }
                }
            };
            if let Some(s) = secret {
                out.insert(name.to_owned(), s);
            }
        };
        if names.is_empty() {
            for s in &svids {
                add(s.spiffe_id().as_str(), &mut out);
            }
            for b in &all {
                add(b.trust_domain().id().as_str(), &mut out);
            }
            add("default", &mut out);
            add("ROOTCA", &mut out);
            add("ALL", &mut out);
        } else {
            for n in names {
                add(n, &mut out);
            }
        }
        out
    }

    /// The caller, attested once per stream and pinned to the process that
    /// connected (checked again before every response a stream sends).
    async fn caller<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        if !self.agent.snapshot().borrow().healthy {
            return Err(unhealthy());
        }
        attest_peer(unix_peer(req)?, &self.attestor).await
    }
}

fn unhealthy() -> Status {
    Status::unavailable("the agent cannot vouch for identities right now")
}

/// Whether a stream may answer now: not when the agent cannot vouch for
/// identities, nor when the caller's process is gone (the stream ends with
/// the reason).
fn servable(snapshot: &Snapshot, caller: &Caller) -> Result<(), Status> {
    if !snapshot.healthy {
        return Err(unhealthy());
    }
    caller.still_connected()
}

fn version_of(secrets: &BTreeMap<String, Secret>) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (name, s) in secrets {
        name.hash(&mut h);
        prost_bytes(s).hash(&mut h);
    }
    format!("{:016x}", h.finish())
}

fn version_of_one(s: &Secret) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    prost_bytes(s).hash(&mut h);
    format!("{:016x}", h.finish())
}

fn prost_bytes(s: &Secret) -> Vec<u8> {
    envoy_types::util::pack_any(s.clone()).value
}

fn pack(s: &Secret) -> Any {
    envoy_types::util::pack_any(s.clone())
}

fn nonce() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed).to_string()
}

/// Registers the entries behind the SVIDs a stream serves, so the agent
/// keeps (or mints) them.
fn register_demand(
    demand: &mut StreamDemand,
    agent: &AgentHandle,
    snapshot: &Snapshot,
    caller: &Caller,
) {
    let entries = caller.matching(snapshot);
    let ids: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
    let missing = entries.iter().any(|e| !snapshot.svids.contains_key(&e.id));
    demand.set(ids.clone());
    agent.demand().touch(&ids, missing);
}

#[tonic::async_trait]
impl SecretDiscoveryService for SdsService {
    type StreamSecretsStream = BoxStream<DiscoveryResponse>;
    type DeltaSecretsStream = BoxStream<DeltaDiscoveryResponse>;

    async fn stream_secrets(
        &self,
        req: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let caller = self.caller(&req).await?;
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let this = self.clone();
        tokio::spawn(async move {
            let mut snapshots = this.agent.snapshot();
            let mut demand = StreamDemand::new(this.agent.demand());
            let mut names: Option<Vec<String>> = None;
            let mut sent_version = String::new();
            let mut sent_nonce = String::new();
            // A version Envoy rejected is not sent again; a change is.
            let mut rejected_version = String::new();
            loop {
                tokio::select! {
                    msg = inbound.message() => {
                        let req = match msg {
                            Ok(Some(r)) => r,
                            _ => return,
                        };
                        if !req.type_url.is_empty() && req.type_url != SECRET_TYPE_URL {
                            let _ = tx.send(Err(Status::invalid_argument(format!("unsupported type {}", req.type_url)))).await;
                            return;
                        }
                        if !req.response_nonce.is_empty() {
                            if req.response_nonce != sent_nonce {
                                continue; // a stale answer to an older response
                            }
                            if let Some(err) = &req.error_detail {
                                tracing::warn!(version = %sent_version, error = %err.message, "Envoy rejected (NACK) the secrets");
                                rejected_version = sent_version.clone();
                            }
                            if names.as_deref() == Some(req.resource_names.as_slice()) {
                                continue; // an ACK or NACK with no new subscription
                            }
                        }
                        names = Some(req.resource_names);
                        sent_version.clear(); // new names: answer even if unchanged
                    }
                    changed = snapshots.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                    _ = tx.closed() => return,
                }
                let Some(wanted) = &names else { continue };
                let snapshot = snapshots.borrow_and_update().clone();
                if let Err(refused) = servable(&snapshot, &caller) {
                    let _ = tx.send(Err(refused)).await;
                    return;
                }
                register_demand(&mut demand, &this.agent, &snapshot, &caller);
                let secrets = this.resolve(&snapshot, &caller, wanted);
                let version = version_of(&secrets);
                if version == sent_version || version == rejected_version {
                    continue;
                }
                let n = nonce();
                let response = DiscoveryResponse {
                    version_info: version.clone(),
                    resources: secrets.values().map(pack).collect(),
                    type_url: SECRET_TYPE_URL.to_owned(),
                    nonce: n.clone(),
                    ..Default::default()
                };
                if tx.send(Ok(response)).await.is_err() {
                    return;
                }
                sent_version = version;
                sent_nonce = n;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn fetch_secrets(
        &self,
        req: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        let caller = self.caller(&req).await?;
        let r = req.into_inner();
        let snapshot = self.agent.snapshot().borrow().clone();
        let secrets = self.resolve(&snapshot, &caller, &r.resource_names);
        Ok(Response::new(DiscoveryResponse {
            version_info: version_of(&secrets),
            resources: secrets.values().map(pack).collect(),
            type_url: SECRET_TYPE_URL.to_owned(),
            nonce: nonce(),
            ..Default::default()
        }))
    }

    async fn delta_secrets(
        &self,
        req: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        let caller = self.caller(&req).await?;
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let this = self.clone();
        tokio::spawn(async move {
            let mut snapshots = this.agent.snapshot();
            let mut demand = StreamDemand::new(this.agent.demand());
            // None: wildcard (everything the caller may have).
            let mut subscribed: Option<BTreeSet<String>> = None;
            let mut started = false;
            // What the client holds: name -> version.
            let mut held: HashMap<String, String> = HashMap::new();
            loop {
                tokio::select! {
                    msg = inbound.message() => {
                        let req = match msg {
                            Ok(Some(r)) => r,
                            _ => return,
                        };
                        if let Some(err) = &req.error_detail {
                            tracing::warn!(error = %err.message, "Envoy rejected (NACK) a delta update");
                        }
                        if !started {
                            started = true;
                            held.extend(req.initial_resource_versions.clone());
                            if !req.resource_names_subscribe.is_empty() {
                                subscribed = Some(BTreeSet::new());
                            }
                        }
                        if let Some(set) = &mut subscribed {
                            set.extend(req.resource_names_subscribe.iter().cloned());
                            for n in &req.resource_names_unsubscribe {
                                set.remove(n);
                                held.remove(n);
                            }
                        } else if !req.resource_names_subscribe.is_empty() {
                            subscribed = Some(req.resource_names_subscribe.iter().cloned().collect());
                        }
                    }
                    changed = snapshots.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                    _ = tx.closed() => return,
                }
                if !started {
                    continue;
                }
                let snapshot = snapshots.borrow_and_update().clone();
                if let Err(refused) = servable(&snapshot, &caller) {
                    let _ = tx.send(Err(refused)).await;
                    return;
                }
                register_demand(&mut demand, &this.agent, &snapshot, &caller);
                let names: Vec<String> = subscribed
                    .as_ref()
                    .map(|s| s.iter().cloned().collect())
                    .unwrap_or_default();
                let secrets = this.resolve(&snapshot, &caller, &names);
                let mut resources = Vec::new();
                for (name, secret) in &secrets {
                    let version = version_of_one(secret);
                    if held.get(name) != Some(&version) {
                        resources.push(Resource {
                            name: name.clone(),
                            version: version.clone(),
                            resource: Some(pack(secret)),
                            ..Default::default()
                        });
                        held.insert(name.clone(), version);
                    }
                }
                let removed: Vec<String> = held
                    .keys()
                    .filter(|n| !secrets.contains_key(*n))
                    .cloned()
                    .collect();
                for n in &removed {
                    held.remove(n);
                }
                if resources.is_empty() && removed.is_empty() {
                    continue;
                }
                let response = DeltaDiscoveryResponse {
                    system_version_info: version_of(&secrets),
                    resources,
                    type_url: SECRET_TYPE_URL.to_owned(),
                    removed_resources: removed,
                    nonce: nonce(),
                    ..Default::default()
                };
                if tx.send(Ok(response)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use signet_identity::TrustDomain;

    fn bundle(td: &str) -> Bundle {
        let mut b = Bundle::new(TrustDomain::parse(td).unwrap());
        b.add_x509_authority(signet_testkit::pki::TestCa::for_trust_domain(td).der);
        b
    }

    #[test]
    fn all_is_the_spiffe_validator_or_plain_trusted_ca() {
        let (own, partner) = (bundle("example.org"), bundle("partner.org"));
        let spiffe = validation_context("ALL", &[&own, &partner], true);
        let Some(secret::Type::ValidationContext(ctx)) = spiffe.r#type else {
            panic!("not a validation context")
        };
        let custom = ctx.custom_validator_config.expect("SPIFFE validator");
        assert_eq!(custom.name, SPIFFE_VALIDATOR);
        let any = custom.typed_config.unwrap();
        assert!(
            any.type_url.ends_with("SPIFFECertValidatorConfig"),
            "{}",
            any.type_url
        );
        let config =
            <SpiffeCertValidatorConfig as prost::Message>::decode(any.value.as_slice()).unwrap();
        let names: Vec<&str> = config
            .trust_domains
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        assert_eq!(names, ["example.org", "partner.org"]);
        assert!(ctx.trusted_ca.is_none());

        let plain = validation_context("ALL", &[&own, &partner], false);
        let Some(secret::Type::ValidationContext(ctx)) = plain.r#type else {
            panic!("not a validation context")
        };
        assert!(ctx.custom_validator_config.is_none());
        let Some(data_source::Specifier::InlineBytes(pem)) = ctx.trusted_ca.unwrap().specifier
        else {
            panic!("inline PEM")
        };
        assert_eq!(
            String::from_utf8(pem)
                .unwrap()
                .matches("BEGIN CERTIFICATE")
                .count(),
            2
        );
    }

    #[test]
    fn versions_follow_content() {
        let a = validation_context("ROOTCA", &[&bundle("example.org")], false);
        let b = validation_context("ROOTCA", &[&bundle("example.org")], false);
        assert_eq!(version_of_one(&a), version_of_one(&a.clone()));
        assert_ne!(
            version_of_one(&a),
            version_of_one(&b),
            "another key is another version"
        );
    }
}
