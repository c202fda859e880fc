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
    /// Federate with another trust domain, or with every one of a JSON
    /// file (--data).
    Create {
        #[command(flatten)]
        flags: Option<RelationshipFlags>,
        /// Create every relationship of a JSON file ({"federations": [...]},
        /// the format `signet federation list --output json` prints, each
        /// with an optional `trust_domain_bundle`; SPIRE's
        /// `federation_relationships` also reads; - for stdin).
        #[arg(long, conflicts_with_all = ["trust_domain", "bundle_endpoint_url"])]
        data: Option<PathBuf>,
    },
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

/// A relationship as given, its files read: from flags or a `--data` file.
struct Spec {
    trust_domain: String,
    bundle_endpoint_url: String,
    profile: Profile,
    endpoint_spiffe_id: Option<String>,
    /// The bootstrap bundle (PEM or SPIFFE JSON) and where it came from.
    bundle: Option<(Vec<u8>, String)>,
    /// https_web roots (PEM) and where they came from.
    ca_pem: Option<(Vec<u8>, String)>,
}

/// One relationship of a `--data` file: the fields `federation list
/// --output json` prints, plus the bootstrap bundle; SPIRE's names
/// (`federation_relationships`, `bundle_endpoint_profile`) are accepted.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RelationshipDoc {
    trust_domain: String,
    bundle_endpoint_url: String,
    #[serde(alias = "bundle_endpoint_profile", default = "https_spiffe")]
    profile: String,
    endpoint_spiffe_id: Option<String>,
    /// PEM, or SPIFFE bundle JSON as a string or an object.
    trust_domain_bundle: Option<serde_json::Value>,
    /// https_web: the roots (PEM); "mozilla roots" or absent for the default.
    ca: Option<String>,
}

fn https_spiffe() -> String {
    "https_spiffe".into()
}

impl RelationshipFlags {
    fn to_spec(&self) -> anyhow::Result<Spec> {
        let read = |flag: &str, path: &Option<PathBuf>| -> anyhow::Result<_> {
            path.as_ref()
                .map(|p| Ok((read_input(p)?, format!("{flag} {}", p.display()))))
                .transpose()
        };
        Ok(Spec {
            trust_domain: self.trust_domain.clone(),
            bundle_endpoint_url: self.bundle_endpoint_url.clone(),
            profile: self.profile,
            endpoint_spiffe_id: self.endpoint_spiffe_id.clone(),
            bundle: read("--trust-domain-bundle", &self.trust_domain_bundle)?,
            ca_pem: read("--ca-file", &self.ca_file)?,
        })
    }
}

impl RelationshipDoc {
    fn into_spec(self) -> anyhow::Result<Spec> {
        let profile = match self.profile.as_str() {
            "https_spiffe" => Profile::HttpsSpiffe,
            "https_web" => Profile::HttpsWeb,
            other => anyhow::bail!("profile {other:?}: expected https_spiffe or https_web"),
        };
        let bundle = self.trust_domain_bundle.map(|b| {
            let data = match b {
                serde_json::Value::String(s) => s.into_bytes(),
                other => other.to_string().into_bytes(),
            };
            (data, "trust_domain_bundle".to_owned())
        });
        let ca_pem = self
            .ca
            .filter(|ca| ca != "mozilla roots")
            .map(|ca| (ca.into_bytes(), "ca".to_owned()));
        Ok(Spec {
            trust_domain: self.trust_domain,
            bundle_endpoint_url: self.bundle_endpoint_url,
            profile,
            endpoint_spiffe_id: self.endpoint_spiffe_id,
            bundle,
            ca_pem,
        })
    }
}

impl Spec {
    fn to_wire(&self) -> anyhow::Result<FederationRequest> {
        let td = TrustDomain::parse(&self.trust_domain)
            .with_context(|| format!("trust domain {:?}", self.trust_domain))?;
        let bootstrap_bundle = match &self.bundle {
            Some((data, source)) => {
                let is_json = data.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
                let bundle = if is_json {
                    Bundle::parse_json(td.clone(), data)
                } else {
                    Bundle::from_x509_pem(td.clone(), data)
                }
                .with_context(|| {
                    format!(
                        "{source}: not a {} bundle",
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
                    self.ca_pem.is_none(),
                    "--ca-file (ca) is for the https_web profile"
                );
                let id = self.endpoint_spiffe_id.clone().with_context(|| {
                    format!(
                        "the https_spiffe profile needs --endpoint-spiffe-id (a Signet server's is spiffe://{td}/signet/server)"
                    )
                })?;
                ("https_spiffe", id, String::new())
            }
            Profile::HttpsWeb => {
                anyhow::ensure!(
                    self.endpoint_spiffe_id.is_none() && bootstrap_bundle.is_none(),
                    "--endpoint-spiffe-id and --trust-domain-bundle are for the https_spiffe profile"
                );
                let pem = match &self.ca_pem {
                    Some((data, source)) => String::from_utf8(data.clone())
                        .with_context(|| format!("{source}: not PEM"))?,
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

/// `federation create --data FILE`: every relationship of the file, all
/// checked before any is sent; then each on its own (one the server
/// refuses does not stop the rest).
async fn create_many(
    c: &mut super::AdminClient,
    path: &std::path::Path,
    output: Output,
) -> anyhow::Result<()> {
    let doc: serde_json::Value = serde_json::from_slice(&read_input(path)?)
        .with_context(|| format!("{} is not JSON", path.display()))?;
    let items = doc
        .get("federations")
        .or_else(|| doc.get("federation_relationships"))
        .and_then(|v| v.as_array())
        .with_context(|| format!("{}: expected {{\"federations\": [...]}}", path.display()))?;
    let requests = items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            serde_json::from_value::<RelationshipDoc>(item.clone())
                .map_err(anyhow::Error::from)
                .and_then(RelationshipDoc::into_spec)
                .and_then(|spec| spec.to_wire())
                .with_context(|| {
                    format!("{} relationship {i}; nothing was created", path.display())
                })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut created = Vec::new();
    let mut failed = 0usize;
    for (i, request) in requests.into_iter().enumerate() {
        match c.create_federation(request).await {
            Ok(r) => created.push(r.into_inner()),
            Err(e) => {
                failed += 1;
                eprintln!("relationship {i}: {}", status(e));
            }
        }
    }
    output.print(
        json!({ "federations": created.iter().map(federation_json).collect::<Vec<_>>(), "failed": failed }),
        format_args!("Created {} federation relationship(s), {failed} failed", created.len()),
    );
    anyhow::ensure!(
        failed == 0,
        "{failed} of {} relationships were not created",
        items.len()
    );
    Ok(())
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
        FederationCmd::Create {
            data: Some(path), ..
        } => create_many(&mut c, &path, opts.output).await?,
        FederationCmd::Create { flags, data: None } => {
            let flags =
                flags.context("give --trust-domain and --bundle-endpoint-url, or --data FILE")?;
            let f = c
                .create_federation(flags.to_spec()?.to_wire()?)
                .await
                .map_err(status)?
                .into_inner();
            print_federation(opts.output, &f);
        }
        FederationCmd::Update(flags) => {
            let f = c
                .update_federation(flags.to_spec()?.to_wire()?)
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
