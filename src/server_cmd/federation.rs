//! `[federation]` of the server's settings: the SPIFFE bundle endpoint
//! (`--federation-listen`, and with `--federation-web-cert` and
//! `--federation-web-key` the `https_web` profile instead of
//! `https_spiffe`).

use std::path::PathBuf;

use clap::Args;
use serde::{Deserialize, Serialize};
use signet_server::federation::{BundleEndpoint, EndpointProfile};

#[derive(Debug, Default, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationSettings {
    /// Serve this trust domain's SPIFFE bundle endpoint (HTTPS) on this
    /// address, for other trust domains to federate with (port 0 picks
    /// one). Config file: `listen` in `[federation]`.
    #[arg(long = "federation-listen", id = "federation_listen")]
    listen: Option<String>,
    /// With --federation-web-key: the endpoint presents this certificate
    /// chain (PEM, from a web PKI; read again when it changes): the
    /// https_web profile. Without: the server's own SVID (https_spiffe).
    #[arg(long = "federation-web-cert", id = "federation_web_cert")]
    web_cert: Option<PathBuf>,
    /// The https_web certificate's private key (PEM).
    #[arg(long = "federation-web-key", id = "federation_web_key")]
    web_key: Option<PathBuf>,
    /// How often federated servers should fetch the bundle again (its
    /// `spiffe_refresh_hint`) [default: 5m].
    #[arg(long = "federation-refresh-hint", id = "federation_refresh_hint")]
    refresh_hint: Option<String>,
}

impl FederationSettings {
    #[cfg(test)]
    pub fn listening_on(addr: &str) -> Self {
        Self {
            listen: Some(addr.into()),
            ..Self::default()
        }
    }

    /// The bundle endpoint, if one is asked for; problems go to `problems`.
    pub fn resolve(self, problems: &mut Vec<String>) -> Option<BundleEndpoint> {
        let Some(listen) = self.listen else {
            if self.web_cert.is_some() || self.web_key.is_some() || self.refresh_hint.is_some() {
                problems.push(
                    "federation: web_cert, web_key and refresh_hint need listen (--federation-listen)"
                        .into(),
                );
            }
            return None;
        };
        let listen = listen
            .parse()
            .map_err(|e| {
                problems.push(format!(
                    "federation.listen {listen:?}: {e} (expected IP:PORT)"
                ))
            })
            .ok();
        let profile = match (self.web_cert, self.web_key) {
            (Some(cert), Some(key)) => Some(EndpointProfile::HttpsWeb { cert, key }),
            (None, None) => Some(EndpointProfile::HttpsSpiffe),
            _ => {
                problems.push("federation: web_cert and web_key go together".into());
                None
            }
        };
        let hint = self.refresh_hint.as_deref().unwrap_or("5m");
        let refresh_hint = humantime::parse_duration(hint)
            .map_err(|e| problems.push(format!("federation.refresh_hint {hint:?}: {e}")))
            .ok()
            .filter(|d| {
                let ok = !d.is_zero();
                if !ok {
                    problems.push("federation.refresh_hint must be longer than zero".into());
                }
                ok
            });
        Some(BundleEndpoint {
            listen: listen?,
            profile: profile?,
            refresh_hint: refresh_hint?,
        })
    }
}
