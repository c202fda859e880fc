//! `[vault]` of the server's settings: an OpenBao/Vault PKI secrets engine
//! as the upstream CA (`--upstream vault`), with token, cert or AppRole
//! login.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use serde::{Deserialize, Serialize};
use signet_server::vault::{VaultAuth, VaultConfig};
use zeroize::Zeroizing;

#[derive(Debug, Default, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultSettings {
    /// With --upstream vault: the OpenBao/Vault address,
    /// https://HOST:PORT [default: $VAULT_ADDR, then $BAO_ADDR]. Config
    /// file: `addr` in `[vault]`.
    #[arg(long = "vault-addr", id = "vault_addr")]
    addr: Option<String>,
    /// The PKI secrets engine's mount path [default: pki].
    #[arg(long = "vault-pki-mount", id = "vault_pki_mount")]
    pki_mount: Option<String>,
    /// CA certificates (PEM) the server's TLS certificate chains to
    /// [default: $VAULT_CACERT, then the web PKI's roots].
    #[arg(long = "vault-ca-cert", id = "vault_ca_cert")]
    ca_cert: Option<PathBuf>,
    /// Namespace (sent as X-Vault-Namespace).
    #[arg(long = "vault-namespace", id = "vault_namespace")]
    namespace: Option<String>,
    /// Token auth: a file holding the token, read at every call [default
    /// without another login: $VAULT_TOKEN, then $BAO_TOKEN].
    #[arg(long = "vault-token-file", id = "vault_token_file")]
    token_file: Option<PathBuf>,
    /// Cert auth: the TLS client certificate (PEM) to log in with.
    #[arg(long = "vault-cert-auth-cert", id = "vault_cert_auth_cert")]
    cert_auth_cert: Option<PathBuf>,
    /// Cert auth: the client certificate's private key (PEM).
    #[arg(long = "vault-cert-auth-key", id = "vault_cert_auth_key")]
    cert_auth_key: Option<PathBuf>,
    /// Cert auth: the role to log in as [default: any that matches].
    #[arg(long = "vault-cert-auth-role", id = "vault_cert_auth_role")]
    cert_auth_role: Option<String>,
    /// Cert auth: the auth method's mount path [default: cert].
    #[arg(long = "vault-cert-auth-mount", id = "vault_cert_auth_mount")]
    cert_auth_mount: Option<String>,
    /// AppRole auth: the role id.
    #[arg(long = "vault-approle-role-id", id = "vault_approle_role_id")]
    approle_role_id: Option<String>,
    /// AppRole auth: a file holding the secret id.
    #[arg(
        long = "vault-approle-secret-id-file",
        id = "vault_approle_secret_id_file"
    )]
    approle_secret_id_file: Option<PathBuf>,
    /// AppRole auth: the auth method's mount path [default: approle].
    #[arg(long = "vault-approle-mount", id = "vault_approle_mount")]
    approle_mount: Option<String>,
}

impl VaultSettings {
    fn is_empty(&self) -> bool {
        self.addr.is_none()
            && self.pki_mount.is_none()
            && self.ca_cert.is_none()
            && self.namespace.is_none()
            && self.token_file.is_none()
            && self.cert_auth_cert.is_none()
            && self.cert_auth_key.is_none()
            && self.cert_auth_role.is_none()
            && self.cert_auth_mount.is_none()
            && self.approle_role_id.is_none()
            && self.approle_secret_id_file.is_none()
            && self.approle_mount.is_none()
    }

    /// The PKI upstream when `wanted` (`--upstream vault`); problems go to
    /// `problems`. Settings without `--upstream vault` are a problem too.
    pub fn resolve(self, wanted: bool, problems: &mut Vec<String>) -> Option<VaultConfig> {
        if !wanted {
            if !self.is_empty() {
                problems.push("vault settings are given but upstream is not \"vault\"".into());
            }
            return None;
        }
        let env = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
        };
        let Some(addr) = self.addr.or_else(|| env(&["VAULT_ADDR", "BAO_ADDR"])) else {
            problems.push("vault: the address is missing (--vault-addr or VAULT_ADDR)".into());
            return None;
        };
        let addr = url::Url::parse(&addr)
            .map_err(|e| problems.push(format!("vault.addr {addr:?}: {e}")))
            .ok()?;
        let cert = (self.cert_auth_cert, self.cert_auth_key);
        let approle = (self.approle_role_id, self.approle_secret_id_file);
        let mut logins = Vec::new();
        if let Some(file) = self.token_file {
            logins.push(VaultAuth::TokenFile(file));
        }
        match cert {
            (Some(cert), Some(key)) => logins.push(VaultAuth::Cert {
                mount: self.cert_auth_mount.unwrap_or_else(|| "cert".into()),
                role: self.cert_auth_role,
                cert,
                key,
            }),
            (None, None) => {
                if self.cert_auth_role.is_some() || self.cert_auth_mount.is_some() {
                    problems.push(
                        "vault: cert_auth_role and cert_auth_mount need cert_auth_cert and cert_auth_key"
                            .into(),
                    );
                }
            }
            _ => problems.push("vault: cert_auth_cert and cert_auth_key go together".into()),
        }
        match approle {
            (Some(role_id), Some(secret_id_file)) => logins.push(VaultAuth::AppRole {
                mount: self.approle_mount.unwrap_or_else(|| "approle".into()),
                role_id,
                secret_id_file,
            }),
            (None, None) => {
                if self.approle_mount.is_some() {
                    problems.push(
                        "vault: approle_mount needs approle_role_id and approle_secret_id_file"
                            .into(),
                    );
                }
            }
            _ => problems
                .push("vault: approle_role_id and approle_secret_id_file go together".into()),
        }
        if logins.len() > 1 {
            let names: Vec<_> = logins.iter().map(VaultAuth::name).collect();
            problems.push(format!(
                "vault: choose one way to log in, not {}",
                names.join(" and ")
            ));
            return None;
        }
        let auth = match logins.pop() {
            Some(auth) => auth,
            None => match env(&["VAULT_TOKEN", "BAO_TOKEN"]) {
                Some(token) => VaultAuth::Token(Arc::new(Zeroizing::new(token))),
                None => {
                    problems.push(
                        "vault: no way to log in: set token_file, cert_auth_cert and cert_auth_key, approle_role_id and approle_secret_id_file, or VAULT_TOKEN"
                            .into(),
                    );
                    return None;
                }
            },
        };
        Some(VaultConfig {
            addr,
            pki_mount: self.pki_mount.unwrap_or_else(|| "pki".into()),
            ca_cert: self
                .ca_cert
                .or_else(|| env(&["VAULT_CACERT", "BAO_CACERT"]).map(PathBuf::from)),
            namespace: self.namespace,
            auth,
        })
    }
}
