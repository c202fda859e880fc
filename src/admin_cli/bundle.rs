//! `signet bundle`: show, set, delete trust bundles.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use serde_json::{Value, json};
use signet_identity::{Bundle, TrustDomain};
use signet_wire::admin::*;
use signet_wire::types;

use super::format::bundle_text;
use super::{AdminOpts, Output, client, read_input, status};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum BundleFormat {
    Pem,
    Spiffe,
}

#[derive(Debug, Subcommand)]
pub enum BundleCmd {
    /// Show the own bundle (or a federated one with --trust-domain).
    Show {
        /// A federated trust domain whose bundle to show [default: the own one].
        #[arg(long)]
        trust_domain: Option<String>,
        /// pem: the X.509 authorities; spiffe: the SPIFFE bundle (JWKS, with
        /// the JWT keys and the sequence number).
        #[arg(long, value_enum, default_value = "pem")]
        format: BundleFormat,
    },
    /// List every bundle (own and federated).
    List {
        /// pem or spiffe (see `bundle show --help`).
        #[arg(long, value_enum, default_value = "pem")]
        format: BundleFormat,
    },
    /// Set a federated trust domain's bundle from a file (or - for stdin).
    Set {
        /// The federated trust domain, e.g. partner.example.
        #[arg(long)]
        trust_domain: String,
        /// The bundle file (- for stdin).
        #[arg(long)]
        path: PathBuf,
        /// The file's format: pem (X.509 authorities) or spiffe (SPIFFE bundle JSON).
        #[arg(long, value_enum, default_value = "pem")]
        format: BundleFormat,
    },
    /// Delete a federated trust domain's bundle.
    Delete {
        /// The federated trust domain.
        #[arg(long)]
        trust_domain: String,
    },
}

pub async fn bundle(cmd: BundleCmd, opts: AdminOpts) -> anyhow::Result<()> {
    let mut c = client(&opts).await?;
    match cmd {
        BundleCmd::Show {
            trust_domain,
            format,
        } => {
            let b = c
                .get_bundle(GetBundleRequest {
                    trust_domain: trust_domain.unwrap_or_default(),
                })
                .await
                .map_err(status)?
                .into_inner();
            match opts.output {
                Output::Json => println!("{}", String::from_utf8(b.spiffe_json)?),
                Output::Text => print!("{}", bundle_text(&b, format)?),
            }
        }
        BundleCmd::List { format } => {
            let bundles = c
                .list_bundles(ListBundlesRequest {})
                .await
                .map_err(status)?
                .into_inner()
                .bundles;
            for b in &bundles {
                match (opts.output, format) {
                    (Output::Json, _) | (_, BundleFormat::Spiffe) => {
                        let doc: Value = serde_json::from_slice(&b.spiffe_json)?;
                        println!(
                            "{}",
                            json!({ "trust_domain": b.trust_domain, "bundle": doc })
                        );
                    }
                    (Output::Text, BundleFormat::Pem) => {
                        println!("****************************************");
                        println!("* {}", b.trust_domain);
                        println!("****************************************");
                        print!("{}", bundle_text(b, format)?);
                    }
                }
            }
        }
        BundleCmd::Set {
            trust_domain,
            path,
            format,
        } => {
            let td = TrustDomain::parse(&trust_domain)
                .with_context(|| format!("--trust-domain {trust_domain:?}"))?;
            let data = read_input(&path)?;
            let bundle = match format {
                BundleFormat::Pem => Bundle::from_x509_pem(td, &data),
                BundleFormat::Spiffe => Bundle::parse_json(td, &data),
            }
            .with_context(|| format!("{} is not a valid {format:?} bundle", path.display()))?;
            let wire = types::Bundle::try_from(&bundle)?;
            c.set_bundle(wire).await.map_err(status)?;
            opts.output.print(
                json!({ "set": trust_domain }),
                format_args!("Bundle of {trust_domain} set"),
            );
        }
        BundleCmd::Delete { trust_domain } => {
            c.delete_bundle(DeleteBundleRequest {
                trust_domain: trust_domain.clone(),
            })
            .await
            .map_err(status)?;
            opts.output.print(
                json!({ "deleted": trust_domain }),
                format_args!("Bundle of {trust_domain} deleted"),
            );
        }
    }
    Ok(())
}
