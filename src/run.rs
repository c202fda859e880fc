//! `signet run`: the combined server and agent in one process.
//!
//! At this stage it brings up the certificate authority (self-signed root,
//! or an upstream CA), keeps it rotating, and publishes the trust bundle
//! under the data directory. The datastore, the agent and the Workload API
//! socket join it as they land.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use signet_core::ca::{CaJournal, Rotation};
use signet_core::key_manager::disk::DiskKeyManager;
use signet_core::{Ca, CaConfig, KeyType, SystemClock, UpstreamAuthority, atomic_file};
use signet_identity::TrustDomain;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Trust domain of this deployment.
    #[arg(long, env = "SIGNET_TRUST_DOMAIN", default_value = "example.org", value_parser = parse_td)]
    trust_domain: TrustDomain,

    /// Directory for keys, bundle and (later) the SQLite store.
    #[arg(long, env = "SIGNET_DATA_DIR", default_value = ".signet")]
    data_dir: PathBuf,

    /// CA key type: ec-p256, ec-p384 or rsa-2048.
    #[arg(long, default_value = "ec-p256")]
    ca_key_type: KeyType,

    /// Lifetime of each CA signing authority and JWT key.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    ca_ttl: Duration,

    /// Default X509-SVID lifetime.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    x509_svid_ttl: Duration,

    /// Default JWT-SVID lifetime.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    jwt_svid_ttl: Duration,

    /// Upstream CA certificate (PEM): our CA becomes its intermediate.
    #[arg(long, requires = "upstream_key")]
    upstream_cert: Option<PathBuf>,

    /// Private key (PKCS#8 PEM) of the upstream CA.
    #[arg(long, requires = "upstream_cert")]
    upstream_key: Option<PathBuf>,

    /// Root bundle (PEM) of the upstream CA, when its certificate is not the root.
    #[arg(long, requires = "upstream_cert")]
    upstream_bundle: Option<PathBuf>,
}

fn parse_td(s: &str) -> Result<TrustDomain, String> {
    TrustDomain::parse(s).map_err(|e| e.to_string())
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut config = CaConfig::new(args.trust_domain.clone());
    config.key_type = args.ca_key_type;
    config.ca_ttl = args.ca_ttl;
    config.x509_svid_ttl = args.x509_svid_ttl;
    config.jwt_svid_ttl = args.jwt_svid_ttl;

    let upstream = match (&args.upstream_cert, &args.upstream_key) {
        (Some(cert), Some(key)) => Some(UpstreamAuthority::load(
            cert,
            key,
            args.upstream_bundle.as_deref(),
        )?),
        _ => None,
    };
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create data dir {}", args.data_dir.display()))?;
    let keys = Arc::new(DiskKeyManager::new(args.data_dir.join("keys"))?);
    let journal_path = args.data_dir.join("ca_journal.json");
    let ca = match read_journal(&journal_path)? {
        Some(journal) => Ca::restore(config, Arc::new(SystemClock), keys, upstream, journal)
            .with_context(|| format!("cannot resume the CA from {}", journal_path.display()))?,
        None => Ca::new(config, Arc::new(SystemClock), keys, upstream)?,
    };
    write_journal(&ca, &journal_path)?;
    publish_bundle(&ca, &args.data_dir)?;
    print_banner(&ca, &args);

    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let r: Rotation = ca.rotate()?;
                if r != Rotation::default() {
                    write_journal(&ca, &journal_path)?;
                }
                if r.bundle_changed {
                    publish_bundle(&ca, &args.data_dir)?;
                }
            }
            signal = tokio::signal::ctrl_c() => {
                signal.context("cannot listen for Ctrl-C")?;
                tracing::info!("shutting down");
                println!("signet stopped");
                return Ok(());
            }
        }
    }
}

/// Reads the CA journal; a missing file means a first start. A file that
/// exists but cannot be read is an error: never start over on top of it.
fn read_journal(path: &Path) -> anyhow::Result<Option<CaJournal>> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let journal = serde_json::from_slice(&text).with_context(|| {
        format!(
            "{} is corrupt; refusing to start over on top of it",
            path.display()
        )
    })?;
    Ok(Some(journal))
}

fn write_journal(ca: &Ca, path: &Path) -> anyhow::Result<()> {
    let json = serde_json::to_vec_pretty(&ca.journal()?)?;
    atomic_file::write(path, &json, 0o600)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Writes `bundle.pem` and `bundle.json` (SPIFFE format) atomically.
fn publish_bundle(ca: &Ca, dir: &Path) -> anyhow::Result<()> {
    let bundle = ca.bundle();
    let pem_path = dir.join("bundle.pem");
    atomic_file::write(&pem_path, bundle.x509_pem().as_bytes(), 0o644)
        .with_context(|| format!("cannot write {}", pem_path.display()))?;
    let json_path = dir.join("bundle.json");
    let json = serde_json::to_string_pretty(&bundle.to_json_value()?)?;
    atomic_file::write(&json_path, json.as_bytes(), 0o644)
        .with_context(|| format!("cannot write {}", json_path.display()))?;
    Ok(())
}

fn print_banner(ca: &Ca, args: &RunArgs) {
    let authority = ca.x509_authority();
    let bundle = ca.bundle();
    let until = humantime::format_rfc3339_seconds(authority.not_after());
    let dir = args.data_dir.display();
    println!("signet is running");
    println!("  trust domain   {}", ca.trust_domain());
    println!("  data dir       {dir}");
    println!(
        "  CA             {} key, active until {until}",
        args.ca_key_type
    );
    println!(
        "  trust bundle   {dir}/bundle.pem and {dir}/bundle.json (sequence {}, {} X.509 authorities, {} JWT keys)",
        bundle.sequence(),
        bundle.x509_authorities().len(),
        bundle.jwt_authorities().count()
    );
    println!(
        "  SVID TTLs      X509 {}, JWT {}",
        humantime::format_duration(args.x509_svid_ttl),
        humantime::format_duration(args.jwt_svid_ttl)
    );
    println!();
    println!("Try:");
    println!("  openssl x509 -in {dir}/bundle.pem -noout -subject -ext subjectAltName,keyUsage");
    println!("  cat {dir}/bundle.json");
    println!();
    println!("The CA rotates on SPIRE's schedule and rewrites the bundle files when keys change.");
    println!("Not yet in this build: the datastore, the agent and its Workload API socket,");
    println!("Envoy SDS, the sidecar and the helper (see README.md, \"Status\").");
    println!("Press Ctrl-C to stop.");
}
