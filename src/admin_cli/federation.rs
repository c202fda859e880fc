//! `signet federation`: relationships with other trust domains, whose
//! bundles the server fetches from their SPIFFE bundle endpoints.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;
use signet_identity::{Bundle, TrustDomain};
use signet_wire::admin::*;
use signet_wire::types;

use super::{AdminOpts, Output, client, read_input, status};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Profile {
    /// The endpoint presents an X509-SVID of the foreign trust domain.
    #[value(name = "https_spiffe")]
    HttpsSpiffe,
    /// The endpoint presents a web certificate.
    #[value(name = "https_web")]
    HttpsWeb,
}

#[derive(Debug, Args)]
pub struct RelationshipFlags {
    /// The foreign trust domain, e.g. partner.example.
    #[arg(long)]
    trust_domain: String,
    /// Where it serves its bundle, e.g. https://partner.example:8443/.
    #[arg(long)]
    bundle_endpoint_url: String,
    /// How its endpoint is authenticated.
    #[arg(long, value_enum, default_value = "https_spiffe")]
    profile: Profile,
    /// https_spiffe: the SPIFFE ID the endpoint presents (a Signet server's
    /// is spiffe://TD/signet/server; a SPIRE server's spiffe://TD/spire/server).
    #[arg(long)]
    endpoint_spiffe_id: Option<String>,
    /// https_spiffe: the foreign trust domain's bundle to start from, PEM
    /// or SPIFFE JSON as `signet bundle show` prints them (- for stdin).
    #[arg(long)]
    trust_domain_bundle: Option<PathBuf>,
    /// https_web: the roots (PEM) its certificate chains to [default: the
    /// Mozilla roots].
    #[arg(long)]
    ca_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum FederationCmd {
    /// Federate with another trust domain.
    Create(RelationshipFlags),
    /// Replace a relationship (its endpoint, profile or roots).
    Update(RelationshipFlags),
    /// Show one relationship.
    Show {
        /// The foreign trust domain.
        #[arg(long)]
        trust_domain: String,
    },
    /// List the relationships.
    List,
    /// Delete a relationship; its bundle is withdrawn with it.
    Delete {
        /// The foreign trust domain.
        #[arg(long)]
        trust_domain: String,
    },
    /// Fetch every federated bundle now rather than when due.
    Refresh,
}

impl RelationshipFlags {
    fn to_wire(&self) -> anyhow::Result<FederationRequest> {
        let td = TrustDomain::parse(&self.trust_domain)
            .with_context(|| format!("--trust-domain {:?}", self.trust_domain))?;
        let bootstrap_bundle = match &self.trust_domain_bundle {
            Some(path) => {
                let data = read_input(path)?;
                let is_json = data.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
                let bundle = if is_json {
                    Bundle::parse_json(td.clone(), &data)
                } else {
                    Bundle::from_x509_pem(td.clone(), &data)
                }
                .with_context(|| {
                    format!(
                        "--trust-domain-bundle {}: not a {} bundle",
                        path.display(),
                        if is_json { "SPIFFE JSON" } else { "PEM" }
                    )
                })?;
                Some(types::Bundle::try_from(&bundle)?)
            }
            None => None,
        };
        let (profile, endpoint_spiffe_id, web_ca_pem) = match self.profile {
            Profile::HttpsSpiffe => {
                anyhow::ensure!(
                    self.ca_file.is_none(),
                    "--ca-file is for --profile https_web"
                );
                let id = self.endpoint_spiffe_id.clone().with_context(|| {
                    format!(
                        "--profile https_spiffe needs --endpoint-spiffe-id (a Signet server's is spiffe://{td}/signet/server)"
                    )
                })?;
                ("https_spiffe", id, String::new())
            }
            Profile::HttpsWeb => {
                anyhow::ensure!(
                    self.endpoint_spiffe_id.is_none() && bootstrap_bundle.is_none(),
                    "--endpoint-spiffe-id and --trust-domain-bundle are for --profile https_spiffe"
                );
                let pem = match &self.ca_file {
                    Some(path) => String::from_utf8(read_input(path)?)
                        .with_context(|| format!("--ca-file {}: not PEM", path.display()))?,
                    None => String::new(),
                };
                ("https_web", String::new(), pem)
            }
        };
        Ok(FederationRequest {
            federation: Some(Federation {
                trust_domain: self.trust_domain.clone(),
                bundle_endpoint_url: self.bundle_endpoint_url.clone(),
                profile: profile.into(),
                endpoint_spiffe_id,
                web_ca_pem,
            }),
            bootstrap_bundle,
        })
    }
}

fn federation_json(f: &Federation) -> serde_json::Value {
    let mut v = json!({
        "trust_domain": f.trust_domain,
        "bundle_endpoint_url": f.bundle_endpoint_url,
        "profile": f.profile,
    });
    if !f.endpoint_spiffe_id.is_empty() {
        v["endpoint_spiffe_id"] = f.endpoint_spiffe_id.clone().into();
    }
    if f.profile == "https_web" {
        v["ca"] = if f.web_ca_pem.is_empty() {
            "mozilla roots".into()
        } else {
            f.web_ca_pem.clone().into()
        };
    }
    v
}

fn print_federation(output: Output, f: &Federation) {
    let auth = if f.profile == "https_spiffe" {
        format!("endpoint SPIFFE ID {}", f.endpoint_spiffe_id)
    } else if f.web_ca_pem.is_empty() {
        "web certificate, Mozilla roots".into()
    } else {
        "web certificate, roots from the CA file".into()
    };
    output.print(
        federation_json(f),
        format_args!(
            "Trust domain     : {}\nBundle endpoint  : {}\nProfile          : {} ({auth})",
            f.trust_domain, f.bundle_endpoint_url, f.profile
        ),
    );
}

pub async fn federation(cmd: FederationCmd, opts: AdminOpts) -> anyhow::Result<()> {
    let mut c = client(&opts).await?;
    match cmd {
        FederationCmd::Create(flags) => {
            let f = c
                .create_federation(flags.to_wire()?)
                .await
                .map_err(status)?
                .into_inner();
            print_federation(opts.output, &f);
        }
        FederationCmd::Update(flags) => {
            let f = c
                .update_federation(flags.to_wire()?)
                .await
                .map_err(status)?
                .into_inner();
            print_federation(opts.output, &f);
        }
        FederationCmd::Show { trust_domain } => {
            let f = c
                .get_federation(FederationName { trust_domain })
                .await
                .map_err(status)?
                .into_inner();
            print_federation(opts.output, &f);
        }
        FederationCmd::List => {
            let list = c
                .list_federations(ListFederationsRequest {})
                .await
                .map_err(status)?
                .into_inner()
                .federations;
            match opts.output {
                Output::Json => println!(
                    "{}",
                    json!({ "federations": list.iter().map(federation_json).collect::<Vec<_>>() })
                ),
                Output::Text => {
                    println!("Found {} federation relationship(s)", list.len());
                    for f in &list {
                        println!();
                        print_federation(Output::Text, f);
                    }
                }
            }
        }
        FederationCmd::Delete { trust_domain } => {
            c.delete_federation(FederationName {
                trust_domain: trust_domain.clone(),
            })
            .await
            .map_err(status)?;
            opts.output.print(
                json!({ "deleted": trust_domain }),
                format_args!("Federation with {trust_domain} deleted; its bundle withdrawn"),
            );
        }
        FederationCmd::Refresh => {
            c.refresh_federations(RefreshFederationsRequest {})
                .await
                .map_err(status)?;
            opts.output.print(
                json!({ "refresh": "requested" }),
                "Refresh requested: every federated bundle is fetched now",
            );
        }
    }
    Ok(())
}
