//! TLS configurations of the sidecar: rustls on aws-lc-rs, TLS 1.3 unless
//! TLS 1.2 is asked for, SPIFFE verifiers on both sides. Rejections carry a
//! reason that the listener logs and counts.

use std::collections::HashSet;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::crypto::aws_lc_rs::cipher_suite;
use rustls::pki_types::ServerName;
use signet_core::tls::{Authorizer, SpiffeClientVerifier, SpiffeServerVerifier};
use signet_identity::{SpiffeId, TrustDomain};

use crate::identity::Identity;

static TLS13_ONLY: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
static TLS13_AND_12: [&rustls::SupportedProtocolVersion; 2] =
    [&rustls::version::TLS13, &rustls::version::TLS12];

fn versions(tls12: bool) -> &'static [&'static rustls::SupportedProtocolVersion] {
    if tls12 { &TLS13_AND_12 } else { &TLS13_ONLY }
}

/// aws-lc-rs with AES-128-GCM preferred, as Envoy (BoringSSL) and most
/// TLS stacks negotiate it: as strong in practice and faster than AES-256.
pub fn provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    p.cipher_suites = vec![
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        cipher_suite::TLS13_AES_256_GCM_SHA384,
        cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        cipher_suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(p)
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
        rustls::Error::PeerIncompatible(_)
        | rustls::Error::AlertReceived(rustls::AlertDescription::ProtocolVersion) => {
            "protocol_version"
        }
        rustls::Error::AlertReceived(_) => "peer_alert",
        _ => "tls",
    }
}

/// Why a handshake failed, for the log: rustls' error, plus what to do
/// about it when the cause is a TLS version mismatch.
pub fn failure_reason(e: &std::io::Error) -> String {
    if failure_class(e) == "protocol_version" {
        format!(
            "{e} (the peer speaks only TLS 1.2 or older; this listener speaks TLS 1.3 \
             unless started with --tls12 / tls12 = true)"
        )
    } else {
        e.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(e: rustls::Error) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }

    #[test]
    fn a_tls12_only_peer_is_explained() {
        let e = io(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::SupportedVersionsExtensionRequired,
        ));
        assert_eq!(failure_class(&e), "protocol_version");
        assert!(
            failure_reason(&e).contains("--tls12"),
            "{}",
            failure_reason(&e)
        );

        let e = io(rustls::Error::AlertReceived(
            rustls::AlertDescription::ProtocolVersion,
        ));
        assert_eq!(failure_class(&e), "protocol_version");
    }

    #[test]
    fn other_failures_keep_their_reason() {
        let e = io(rustls::Error::NoCertificatesPresented);
        assert_eq!(failure_class(&e), "no_peer_certificate");
        assert!(!failure_reason(&e).contains("--tls12"));
        let e = std::io::Error::other("reset");
        assert_eq!(failure_class(&e), "io");
        assert_eq!(failure_reason(&e), "reset");
    }
}
