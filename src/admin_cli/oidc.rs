//! `signet oidc-provider`: the OIDC discovery provider as a process of its
//! own (as SPIRE's), beside a server or in front of several, reading the
//! JWT signing keys from a server's admin API.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use signet_identity::{Bundle, JwtSvid, TrustDomain};
use signet_server::oidc::{self, DISCOVERY_PATH, KeySource, OidcTransport, PreparedProvider};
use signet_wire::admin::*;

use super::{AdminClient, AdminOpts, client, status};
use crate::server_cmd::OidcSettings;

/// How long keys read from the server are served before asking again.
const KEYS_FRESH: Duration = Duration::from_secs(5);

#[derive(Debug, Args)]
pub struct OidcProviderArgs {
    #[command(flatten)]
    settings: OidcSettings,
    /// The issuer served; it must be the server's --jwt-issuer [default:
    /// the server's, read by minting a probe JWT-SVID].
    #[arg(long)]
    jwt_issuer: Option<String>,
    /// Where a self-signed certificate's CA and key are kept (0700).
    #[arg(long, default_value = ".signet-oidc")]
    data_dir: PathBuf,
    #[command(flatten)]
    opts: AdminOpts,
}

/// Keys from the admin API, kept for [`KEYS_FRESH`]; while the server
/// cannot be reached the last keys read are served.
struct AdminKeys {
    client: AdminClient,
    trust_domain: TrustDomain,
    cached: Mutex<Option<(Instant, Bundle)>>,
}

impl AdminKeys {
    async fn read(&self) -> Result<Bundle, String> {
        let b = self
            .client
            .clone()
            .get_bundle(GetBundleRequest::default())
            .await
            .map_err(|e| status(e).to_string())?
            .into_inner();
        Bundle::parse_json(self.trust_domain.clone(), &b.spiffe_json).map_err(|e| e.to_string())
    }
}

impl KeySource for AdminKeys {
    fn bundle(
        &self,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Bundle, String>> + Send + '_>> {
        Box::pin(async move {
            let cached = self
                .cached
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            if let Some((at, bundle)) = &cached
                && at.elapsed() < KEYS_FRESH
            {
                return Ok(bundle.clone());
            }
            match self.read().await {
                Ok(bundle) => {
                    *self.cached.lock().unwrap_or_else(PoisonError::into_inner) =
                        Some((Instant::now(), bundle.clone()));
                    Ok(bundle)
                }
                Err(e) => match cached {
                    Some((_, bundle)) => {
                        tracing::warn!(error = %e, "cannot read the signing keys from the server; serving the last ones read");
                        Ok(bundle)
                    }
                    None => Err(e),
                },
            }
        })
    }
}

/// The `iss` the server puts in JWT-SVIDs, learned from a probe it mints.
async fn server_issuer(c: &mut AdminClient, td: &TrustDomain) -> anyhow::Result<Option<String>> {
    let token = c
        .mint_jwt_svid(MintJwtSvidRequest {
            spiffe_id: format!("spiffe://{td}/signet/oidc-provider"),
            audience: vec!["signet-oidc-provider-check".into()],
            ttl: 1,
        })
        .await
        .map_err(status)
        .context("cannot mint a probe JWT-SVID to learn the server's issuer")?
        .into_inner()
        .token;
    let svid = JwtSvid::parse_insecure(&token).context("the probe JWT-SVID")?;
    Ok(svid
        .claims()
        .get("iss")
        .and_then(|v| v.as_str())
        .map(str::to_owned))
}

pub async fn oidc_provider(args: OidcProviderArgs) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    let config = args.settings.resolve(&mut problems);
    let Some(config) = config.filter(|_| problems.is_empty()) else {
        if problems.is_empty() {
            problems.push("--oidc-listen is required: the address to serve on".into());
        }
        anyhow::bail!("invalid configuration:\n  - {}", problems.join("\n  - "));
    };
    let mut c = client(&args.opts).await?;
    let own = c
        .get_bundle(GetBundleRequest::default())
        .await
        .map_err(status)?
        .into_inner();
    let td = TrustDomain::parse(&own.trust_domain)?;
    let issuer = match (server_issuer(&mut c, &td).await?, args.jwt_issuer) {
        (None, _) => anyhow::bail!(
            "the server signs JWT-SVIDs without an issuer (`iss`), so relying parties could not match them to this provider: start it with --jwt-issuer set to the URL this provider is reached at"
        ),
        (Some(server), Some(ours))
            if server.trim_end_matches('/') != ours.trim_end_matches('/') =>
        {
            anyhow::bail!(
                "--jwt-issuer {ours} is not the server's ({server}): JWT-SVIDs would name an issuer this provider does not serve"
            )
        }
        (Some(server), _) => server,
    };
    let issuer =
        oidc::check_issuer(&issuer, Some(&config.transport)).map_err(anyhow::Error::msg)?;
    let shutdown = crate::signals::shutdown()?;
    let listener = oidc::bind(&config).await?;
    let prepared = PreparedProvider::new(&config, listener, issuer, &args.data_dir)?;
    let scheme = match config.transport {
        OidcTransport::Http => "http",
        _ => "https",
    };
    println!("signet OIDC discovery provider for {td} is running");
    println!("  listen         {}", prepared.addr());
    println!(
        "  discovery      {scheme}://{}{DISCOVERY_PATH}",
        prepared.addr()
    );
    println!("  issuer         {}", prepared.issuer());
    if let Some(ca) = prepared.ca_file() {
        println!(
            "  certificate    self-signed: clients trust {}",
            ca.display()
        );
    }
    println!("Press Ctrl-C to stop.");
    let source = Arc::new(AdminKeys {
        client: c,
        trust_domain: td,
        cached: Mutex::new(None),
    });
    prepared.serve(source, shutdown).await;
    println!("signet oidc-provider stopped");
    Ok(())
}
