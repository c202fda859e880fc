//! TLS configurations of the sidecar: rustls on aws-lc-rs, TLS 1.3 unless
//! TLS 1.2 is asked for, SPIFFE verifiers on both sides. Rejections carry a
//! reason that the listener logs and counts.

use std::collections::HashSet;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use signet_core::tls::{Authorizer, SpiffeClientVerifier, SpiffeServerVerifier, provider};
use signet_identity::{SpiffeId, TrustDomain};

use crate::identity::Identity;

static TLS13_ONLY: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
static TLS13_AND_12: [&rustls::SupportedProtocolVersion; 2] =
    [&rustls::version::TLS13, &rustls::version::TLS12];

fn versions(tls12: bool) -> &'static [&'static rustls::SupportedProtocolVersion] {
    if tls12 { &TLS13_AND_12 } else { &TLS13_ONLY }
}

/// The handshake-time allow-list: a peer passes when its ID is listed or
/// its trust domain is; with both lists empty every verified peer passes
/// (the policy then decides).
pub fn allow_list(ids: &[SpiffeId], trust_domains: &[TrustDomain]) -> Authorizer {
    let ids: HashSet<String> = ids.iter().map(|i| i.as_str().to_string()).collect();
    let tds: HashSet<String> = trust_domains
        .iter()
        .map(|t| t.as_str().to_string())
        .collect();
    Arc::new(move |id: &SpiffeId| {
        (ids.is_empty() && tds.is_empty())
            || ids.contains(id.as_str())
            || tds.contains(id.trust_domain_str())
    })
}

/// Inbound: requires a client X509-SVID that chains to the bundle of its
/// trust domain and passes `authorize`.
pub fn server_config(
    identity: &Identity,
    authorize: Authorizer,
    tls12: bool,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig, rustls::Error> {
    let verifier = Arc::new(SpiffeClientVerifier::new(
        identity.bundles(),
        authorize,
        true,
    ));
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions(tls12))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(identity.cert());
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Outbound: presents our SVID and accepts only a server presenting
/// exactly `server_id`.
pub fn client_config(
    identity: &Identity,
    server_id: &SpiffeId,
    tls12: bool,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let want = server_id.clone();
    let verifier = Arc::new(SpiffeServerVerifier::new(
        identity.bundles(),
        Arc::new(move |id: &SpiffeId| *id == want),
    ));
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions(tls12))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(identity.cert()))
}

/// The name sent as SNI: `--sni`, else the host of `to` when it is a DNS
/// name (an IP address sends no SNI; SPIFFE checks the ID, not the name).
pub fn server_name(sni: Option<&str>, host: &str) -> Result<ServerName<'static>, String> {
    let name = sni.unwrap_or(host);
    ServerName::try_from(name.to_string())
        .map_err(|e| format!("{name:?} is not a server name: {e}"))
}

/// Why a handshake failed, as a metric label.
pub fn failure_class(e: &std::io::Error) -> &'static str {
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return "io";
    };
    match tls {
        rustls::Error::NoCertificatesPresented => "no_peer_certificate",
        rustls::Error::General(m) if m.contains("is not authorized") => "not_authorized",
        rustls::Error::General(m) if m.contains("X509-SVID rejected") => "untrusted_peer",
        rustls::Error::InvalidCertificate(_) => "untrusted_peer",
        rustls::Error::AlertReceived(_) => "peer_alert",
        _ => "tls",
    }
}
