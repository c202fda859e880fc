//! `signet token` and `signet agent` (list, show, evict, ban).

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

#[derive(Debug, Subcommand)]
pub enum AgentCmd {
    /// List attested agents.
    List,
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

pub async fn agent(cmd: AgentCmd, opts: AdminOpts) -> anyhow::Result<()> {
    let mut c = client(&opts).await?;
    match cmd {
        AgentCmd::List => {
            let agents = c
                .list_agents(ListAgentsRequest {})
                .await
                .map_err(status)?
                .into_inner()
                .agents;
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
        AgentCmd::Show { spiffe_id } => {
            let agents = c
                .list_agents(ListAgentsRequest {})
                .await
                .map_err(status)?
                .into_inner()
                .agents;
            let a = agents
                .iter()
                .find(|a| a.spiffe_id == spiffe_id)
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
