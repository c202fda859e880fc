//! `signet token` and `signet agent` (list, count, show, evict, ban,
//! purge).

use anyhow::Context;
use clap::Subcommand;
use serde_json::json;
use signet_wire::admin::*;

use super::entry::refuse_local_agent_unless;
use super::format::{node_json, print_node};
use super::{AdminOpts, Output, client, status};

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Generate a single-use join token for an agent.
    Generate {
        /// Token lifetime (default 600s).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<std::time::Duration>,
        /// Fix the SPIFFE ID the agent will get.
        #[arg(long)]
        spiffe_id: Option<String>,
    },
}

/// Which agents a listing, count or purge takes.
#[derive(Debug, Default, clap::Args)]
pub struct AgentFilter {
    /// Only agents attested this way (join_token, x509pop, local).
    #[arg(long)]
    attestation_type: Option<String>,
    /// Only banned agents.
    #[arg(long)]
    banned: bool,
    /// Only agents whose SVID has expired (they have not renewed it).
    #[arg(long)]
    expired: bool,
    /// Only agents with this selector (repeatable: all of them).
    #[arg(long = "selector")]
    selectors: Vec<String>,
}

impl AgentFilter {
    fn keeps(&self, a: &signet_wire::types::AttestedNode, now: i64) -> bool {
        self.attestation_type
            .as_ref()
            .is_none_or(|t| a.attestor == *t)
            && (!self.banned || a.banned)
            && (!self.expired || a.svid_expires_at <= now)
            && self.selectors.iter().all(|s| a.selectors.contains(s))
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[derive(Debug, Subcommand)]
pub enum AgentCmd {
    /// List attested agents.
    List {
        #[command(flatten)]
        filter: AgentFilter,
    },
    /// Count attested agents.
    Count {
        #[command(flatten)]
        filter: AgentFilter,
    },
    /// Evict the agents that have not renewed their SVID for this long after
    /// it expired (they are gone, or cut off): they must attest again to
    /// come back. `signet run`'s own agent is never purged.
    Purge {
        /// How long after its SVID expired an agent counts as gone.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "24h")]
        expired_for: std::time::Duration,
        /// Say which agents would go, evict none.
        #[arg(long)]
        dry_run: bool,
    },
    /// Show one agent.
    Show {
        /// The agent's SPIFFE ID (`signet agent list` shows them).
        #[arg(long)]
        spiffe_id: String,
    },
    /// Forget an agent: it must attest again (x509pop can, join tokens cannot).
    Evict {
        /// The agent's SPIFFE ID.
        #[arg(long)]
        spiffe_id: String,
        /// Needed to evict `signet run`'s own local agent.
        #[arg(long)]
        yes: bool,
    },
    /// Refuse an agent for good.
    Ban {
        /// The agent's SPIFFE ID.
        #[arg(long)]
        spiffe_id: String,
        /// Needed to ban `signet run`'s own local agent.
        #[arg(long)]
        yes: bool,
    },
}

pub async fn token(cmd: TokenCmd, opts: AdminOpts) -> anyhow::Result<()> {
    let mut c = client(&opts).await?;
    let TokenCmd::Generate { ttl, spiffe_id } = cmd;
    let r = c
        .create_join_token(CreateJoinTokenRequest {
            ttl: ttl.map(|d| d.as_secs()).unwrap_or(0),
            agent_id: spiffe_id.unwrap_or_default(),
        })
        .await
        .map_err(status)?
        .into_inner();
    opts.output.print(
        json!({ "token": r.token, "expires_at": r.expires_at }),
        format_args!("Token: {}", r.token),
    );
    Ok(())
}

/// The attested agents `keep` takes.
async fn agents_where(
    c: &mut admin_client::AdminClient<tonic::transport::Channel>,
    keep: impl Fn(&signet_wire::types::AttestedNode) -> bool,
) -> anyhow::Result<Vec<signet_wire::types::AttestedNode>> {
    Ok(c.list_agents(ListAgentsRequest {})
        .await
        .map_err(status)?
        .into_inner()
        .agents
        .into_iter()
        .filter(|a| keep(a))
        .collect())
}

pub async fn agent(cmd: AgentCmd, opts: AdminOpts) -> anyhow::Result<()> {
    let mut c = client(&opts).await?;
    match cmd {
        AgentCmd::List { filter } => {
            let now = unix_now();
            let agents = agents_where(&mut c, |a| filter.keeps(a, now)).await?;
            match opts.output {
                Output::Json => println!(
                    "{}",
                    json!({ "agents": agents.iter().map(node_json).collect::<Vec<_>>() })
                ),
                Output::Text => {
                    println!(
                        "Found {} attested agent{}",
                        agents.len(),
                        if agents.len() == 1 { "" } else { "s" }
                    );
                    agents.iter().for_each(|a| print_node(Output::Text, a));
                }
            }
        }
        AgentCmd::Count { filter } => {
            let now = unix_now();
            let n = agents_where(&mut c, |a| filter.keeps(a, now)).await?.len();
            opts.output.print(
                json!({ "count": n }),
                format_args!("{n} attested agent{}", if n == 1 { "" } else { "s" }),
            );
        }
        AgentCmd::Purge {
            expired_for,
            dry_run,
        } => {
            let before =
                unix_now().saturating_sub(i64::try_from(expired_for.as_secs()).unwrap_or(i64::MAX));
            // A banned agent's record is its ban: never purged.
            let gone = agents_where(&mut c, |a| {
                a.svid_expires_at <= before
                    && !a.banned
                    && !a.spiffe_id.ends_with(signet_server::LOCAL_AGENT_PATH)
            })
            .await?;
            let mut purged = Vec::new();
            for a in gone {
                if !dry_run {
                    c.evict_agent(AgentRequest {
                        spiffe_id: a.spiffe_id.clone(),
                    })
                    .await
                    .map_err(status)?;
                }
                purged.push(a.spiffe_id);
            }
            let verb = if dry_run { "Would purge" } else { "Purged" };
            opts.output.print(
                json!({ "purged": purged, "dry_run": dry_run }),
                format_args!(
                    "{verb} {} agent{}{}{}",
                    purged.len(),
                    if purged.len() == 1 { "" } else { "s" },
                    if purged.is_empty() { "" } else { ":\n  " },
                    purged.join("\n  ")
                ),
            );
        }
        AgentCmd::Show { spiffe_id } => {
            let agents = agents_where(&mut c, |a| a.spiffe_id == spiffe_id).await?;
            let a = agents
                .first()
                .with_context(|| format!("no attested agent {spiffe_id}"))?;
            print_node(opts.output, a);
        }
        AgentCmd::Evict { spiffe_id, yes } => {
            refuse_local_agent_unless(&spiffe_id, yes, "evict")?;
            let r = c
                .evict_agent(AgentRequest { spiffe_id })
                .await
                .map_err(status)?
                .into_inner();
            let a = r.agent.unwrap_or_default();
            opts.output.print(
                json!({ "evicted": node_json(&a) }),
                format_args!("Evicted agent {}", a.spiffe_id),
            );
        }
        AgentCmd::Ban { spiffe_id, yes } => {
            refuse_local_agent_unless(&spiffe_id, yes, "ban")?;
            let r = c
                .ban_agent(AgentRequest { spiffe_id })
                .await
                .map_err(status)?
                .into_inner();
            let a = r.agent.unwrap_or_default();
            opts.output.print(
                json!({ "banned": node_json(&a) }),
                format_args!("Banned agent {}", a.spiffe_id),
            );
        }
    }
    Ok(())
}
