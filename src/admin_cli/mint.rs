//! `signet x509 mint` and `signet jwt mint`.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Subcommand;
use serde_json::json;
use signet_identity::CertificateDer;
use signet_identity::bundle::certificates_to_pem;
use signet_wire::admin::*;

use super::format::bundle_text;
use super::{AdminOpts, BundleFormat, Output, client, status};

#[derive(Debug, Subcommand)]
pub enum X509Cmd {
    /// Mint an X509-SVID; the key is generated here and never sent.
    Mint {
        /// The SPIFFE ID to mint for (in the server's trust domain).
        #[arg(long)]
        spiffe_id: String,
        /// Lifetime, e.g. 1h [default: the server's X509-SVID TTL].
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<std::time::Duration>,
        /// DNS SAN (repeatable); the first is also the certificate's CN.
        #[arg(long = "dns-name")]
        dns_names: Vec<String>,
        /// Write svid.pem, svid_key.pem (0600) and bundle.pem into DIR.
        #[arg(long)]
        write: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum JwtCmd {
    /// Mint a JWT-SVID.
    Mint {
        /// The SPIFFE ID to mint for (the token's `sub`).
        #[arg(long)]
        spiffe_id: String,
        /// Audience (`aud`; repeatable, at least one).
        #[arg(long = "audience", required = true)]
        audience: Vec<String>,
        /// Lifetime, e.g. 5m [default: the server's JWT-SVID TTL].
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<std::time::Duration>,
    },
}

pub async fn x509(cmd: X509Cmd, opts: AdminOpts) -> anyhow::Result<()> {
    let X509Cmd::Mint {
        spiffe_id,
        ttl,
        dns_names,
        write,
    } = cmd;
    if let Some(dir) = &write
        && !dir.is_dir()
    {
        bail!("--write {}: not a directory", dir.display());
    }
    let mut c = client(&opts).await?;
    let key = rcgen::KeyPair::generate().context("cannot generate a key")?;
    let r = c
        .mint_x509_svid(MintX509SvidRequest {
            spiffe_id,
            public_key: rcgen::PublicKeyData::subject_public_key_info(&key),
            csr: Vec::new(),
            ttl: ttl.map(|d| d.as_secs()).unwrap_or(0),
            dns_names,
        })
        .await
        .map_err(status)?
        .into_inner();
    let svid = r.svid.context("the server returned no SVID")?;
    let chain: Vec<CertificateDer<'static>> = svid
        .cert_chain
        .iter()
        .cloned()
        .map(CertificateDer::from)
        .collect();
    let chain_pem = certificates_to_pem(&chain);
    let key_pem = zeroize::Zeroizing::new(key.serialize_pem());
    let bundle_pem = match &r.bundle {
        Some(b) => bundle_text(b, BundleFormat::Pem)?,
        None => String::new(),
    };
    match (&write, opts.output) {
        (Some(dir), _) => {
            signet_workload::atomic_file::write(
                &dir.join("svid.pem"),
                chain_pem.as_bytes(),
                0o644,
            )?;
            signet_workload::atomic_file::write(
                &dir.join("svid_key.pem"),
                key_pem.as_bytes(),
                signet_workload::atomic_file::SECRET_MODE,
            )?;
            signet_workload::atomic_file::write(
                &dir.join("bundle.pem"),
                bundle_pem.as_bytes(),
                0o644,
            )?;
            match opts.output {
                Output::Json => println!(
                    "{}",
                    json!({ "spiffe_id": svid.spiffe_id, "serial": svid.serial, "expires_at": svid.expires_at, "dir": dir })
                ),
                Output::Text => {
                    println!("X509-SVID for {} (serial {})", svid.spiffe_id, svid.serial);
                    println!(
                        "Written to {}: svid.pem, svid_key.pem (0600), bundle.pem",
                        dir.display()
                    );
                }
            }
        }
        (None, Output::Json) => println!(
            "{}",
            json!({
                "spiffe_id": svid.spiffe_id, "serial": svid.serial, "expires_at": svid.expires_at,
                "svid_pem": chain_pem, "key_pem": key_pem.as_str(), "bundle_pem": bundle_pem,
            })
        ),
        (None, Output::Text) => {
            print!("{chain_pem}");
            print!("{}", key_pem.as_str());
        }
    }
    Ok(())
}

pub async fn jwt(cmd: JwtCmd, opts: AdminOpts) -> anyhow::Result<()> {
    let JwtCmd::Mint {
        spiffe_id,
        audience,
        ttl,
    } = cmd;
    let mut c = client(&opts).await?;
    let r = c
        .mint_jwt_svid(MintJwtSvidRequest {
            spiffe_id,
            audience,
            ttl: ttl.map(|d| d.as_secs()).unwrap_or(0),
        })
        .await
        .map_err(status)?
        .into_inner();
    opts.output.print(
        json!({ "token": r.token, "expires_at": r.expires_at }),
        format_args!("{}", r.token),
    );
    Ok(())
}
