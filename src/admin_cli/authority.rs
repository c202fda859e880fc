//! `signet authority x509|jwt`: this server's signing authorities, and the
//! operations for a suspected key compromise (prepare, activate, taint,
//! revoke), as SPIRE's `localauthority` commands; `signet
//! upstream-authority` for an upstream CA's roots, as SPIRE's
//! `upstreamauthority`.

use clap::Subcommand;
use serde_json::json;
use signet_wire::admin::*;

use super::{AdminOpts, client, status};

#[derive(Debug, Subcommand)]
pub enum AuthorityCmd {
    /// X.509 authorities (the CA certificates SVIDs chain to), by subject
    /// key id.
    X509 {
        #[command(subcommand)]
        op: AuthorityOp,
    },
    /// JWT signing keys, by key id (kid).
    Jwt {
        #[command(subcommand)]
        op: AuthorityOp,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuthorityOp {
    /// The active, prepared and old authorities: id, key, expiry, taint.
    Show,
    /// Make a new authority now and publish it in the bundle (replacing a
    /// prepared one); agents and federated peers learn it before it signs.
    Prepare,
    /// Sign with the prepared authority from now on; the active one becomes
    /// old (its key is deleted).
    Activate {
        /// The prepared authority's id (as `show` prints it).
        #[arg(long)]
        authority_id: String,
    },
    /// Mark an old authority as compromised: every SVID it signed is
    /// replaced at once, everywhere. It still verifies until revoked.
    Taint {
        /// The old authority's id (as `show` prints it).
        #[arg(long)]
        authority_id: String,
    },
    /// Remove a tainted old authority from the bundle: nothing it signed
    /// verifies any more.
    Revoke {
        /// The tainted old authority's id (as `show` prints it).
        #[arg(long)]
        authority_id: String,
    },
}

/// `signet upstream-authority`: the upstream CA's roots the bundle holds.
#[derive(Debug, Subcommand)]
pub enum UpstreamAuthorityCmd {
    /// The upstream roots in the bundle: subject key id, expiry, taint, and
    /// whether the active or prepared authority chains to them.
    Show,
    /// Mark an upstream root as compromised: every SVID chaining to it is
    /// replaced at once. Replace the upstream CA files and prepare and
    /// activate a new authority (`signet authority x509`) first.
    Taint {
        /// The root's subject key id, in hex (as `show` or `openssl x509
        /// -noout -ext subjectKeyIdentifier` prints it).
        #[arg(long)]
        subject_key_id: String,
    },
    /// Remove a tainted upstream root from the bundle for good, even while
    /// an upstream bundle file still lists it.
    Revoke {
        /// The tainted root's subject key id, in hex.
        #[arg(long)]
        subject_key_id: String,
    },
}

pub async fn upstream_authority(cmd: UpstreamAuthorityCmd, opts: AdminOpts) -> anyhow::Result<()> {
    let op = match cmd {
        UpstreamAuthorityCmd::Show => AuthorityOp::Show,
        UpstreamAuthorityCmd::Taint { subject_key_id } => AuthorityOp::Taint {
            authority_id: subject_key_id,
        },
        UpstreamAuthorityCmd::Revoke { subject_key_id } => AuthorityOp::Revoke {
            authority_id: subject_key_id,
        },
    };
    run(AuthorityKind::UpstreamX509, op, opts).await
}

pub async fn authority(cmd: AuthorityCmd, opts: AdminOpts) -> anyhow::Result<()> {
    match cmd {
        AuthorityCmd::X509 { op } => run(AuthorityKind::X509, op, opts).await,
        AuthorityCmd::Jwt { op } => run(AuthorityKind::Jwt, op, opts).await,
    }
}

async fn run(kind: AuthorityKind, op: AuthorityOp, opts: AdminOpts) -> anyhow::Result<()> {
    let req = |authority_id: String| AuthorityRequest {
        kind: kind as i32,
        authority_id,
    };
    let mut c = client(&opts).await?;
    let r = match op {
        AuthorityOp::Show => c.list_authorities(req(String::new())).await,
        AuthorityOp::Prepare => c.prepare_authority(req(String::new())).await,
        AuthorityOp::Activate { authority_id } => c.activate_authority(req(authority_id)).await,
        AuthorityOp::Taint { authority_id } => c.taint_authority(req(authority_id)).await,
        AuthorityOp::Revoke { authority_id } => c.revoke_authority(req(authority_id)).await,
    }
    .map_err(status)?
    .into_inner();
    let list: Vec<serde_json::Value> = r
        .authorities
        .iter()
        .map(|a| {
            json!({
                "authority_id": a.authority_id,
                "state": a.state,
                "key_id": a.key_id,
                "not_after": a.not_after,
                "tainted": a.tainted,
            })
        })
        .collect();
    let mut text = String::new();
    for a in &r.authorities {
        let not_after = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(a.not_after.max(0) as u64),
        );
        text.push_str(&format!(
            "{:<9} {}  expires {not_after}{}{}\n",
            a.state,
            a.authority_id,
            if a.tainted { "  TAINTED" } else { "" },
            if a.key_id.is_empty() {
                String::new()
            } else {
                format!("  key {}", a.key_id)
            },
        ));
    }
    text.push_str(&format!("Bundle sequence: {}", r.bundle_sequence));
    opts.output.print(
        json!({ "authorities": list, "bundle_sequence": r.bundle_sequence }),
        text,
    );
    Ok(())
}
