//! `[oidc]` of the server's settings: the OIDC discovery provider
//! (`--oidc-listen`; HTTPS with `--oidc-cert`/`--oidc-key`, a self-signed
//! certificate by default, or plain HTTP behind a proxy with
//! `--oidc-insecure-http`).

use std::path::PathBuf;

use clap::Args;
use serde::{Deserialize, Serialize};
use signet_server::oidc::{OidcProvider, OidcTransport};

#[derive(Debug, Default, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcSettings {
    /// Serve OIDC discovery (`/.well-known/openid-configuration` and the
    /// JWT signing keys at `/keys`) on this address (port 0 picks one).
    /// JWT-SVIDs then carry `iss` = --jwt-issuer, or this provider's own
    /// URL. Config file: `listen` in `[oidc]`.
    #[arg(long = "oidc-listen", id = "oidc_listen")]
    listen: Option<String>,
    /// With --oidc-key: the certificate chain (PEM) the provider presents,
    /// read again when it changes [default: a self-signed one from a CA
    /// kept in DATA_DIR/oidc/ca.pem, for local use].
    #[arg(long = "oidc-cert", id = "oidc_cert")]
    cert: Option<PathBuf>,
    /// The --oidc-cert's private key (PEM).
    #[arg(long = "oidc-key", id = "oidc_key")]
    key: Option<PathBuf>,
    /// Serve plain HTTP, for a TLS-terminating proxy in front (set
    /// --jwt-issuer to the proxy's https URL).
    #[arg(long = "oidc-insecure-http", id = "oidc_insecure_http")]
    #[serde(default)]
    insecure_http: bool,
}

impl OidcSettings {
    /// The provider, if one is asked for; problems go to `problems`.
    pub fn resolve(self, problems: &mut Vec<String>) -> Option<OidcProvider> {
        let Some(listen) = self.listen else {
            if self.cert.is_some() || self.key.is_some() || self.insecure_http {
                problems
                    .push("oidc: cert, key and insecure_http need listen (--oidc-listen)".into());
            }
            return None;
        };
        let listen = listen
            .parse()
            .map_err(|e| problems.push(format!("oidc.listen {listen:?}: {e} (expected IP:PORT)")))
            .ok();
        let transport = match (self.cert, self.key, self.insecure_http) {
            (Some(_), Some(_), true) => {
                problems.push(
                    "oidc: insecure_http serves no certificate; drop cert and key or insecure_http"
                        .into(),
                );
                None
            }
            (Some(cert), Some(key), false) => Some(OidcTransport::Https { cert, key }),
            (None, None, true) => Some(OidcTransport::Http),
            (None, None, false) => Some(OidcTransport::SelfSigned),
            _ => {
                problems.push("oidc: cert and key go together".into());
                None
            }
        };
        Some(OidcProvider {
            listen: listen?,
            transport: transport?,
        })
    }
}
