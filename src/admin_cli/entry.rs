//! `signet entry`: create, update, delete, show registration entries.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use signet_wire::admin::*;
use signet_wire::types;

use super::format::{entry_json, print_entries, print_entry, wire_from_json};
use super::{AdminClient, AdminOpts, Output, client, read_input, status};

#[derive(Debug, Args)]
pub struct EntryFields {
    /// SPIFFE ID the workload gets.
    #[arg(long)]
    spiffe_id: Option<String>,
    /// Parent: the agent (or node-alias entry) the workload runs under. Under
    /// `signet run` it defaults to the local agent.
    #[arg(long)]
    parent_id: Option<String>,
    /// Selector `type:value` (repeatable); all must match.
    #[arg(long = "selector")]
    selectors: Vec<String>,
    /// X509-SVID TTL, e.g. 1h (default: the server's).
    #[arg(long, value_parser = humantime::parse_duration)]
    x509_ttl: Option<std::time::Duration>,
    /// JWT-SVID TTL, e.g. 5m (default: the server's).
    #[arg(long, value_parser = humantime::parse_duration)]
    jwt_ttl: Option<std::time::Duration>,
    /// DNS SAN (repeatable); the first is also the certificate's CN.
    #[arg(long = "dns-name")]
    dns_names: Vec<String>,
    /// Trust domain whose bundle the workload also receives (repeatable).
    #[arg(long = "federates-with")]
    federates_with: Vec<String>,
    /// The workload may use the admin API (`--admin=false` to unset on update).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    admin: Option<bool>,
    /// The workload is a downstream (nested) server (`=false` to unset).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    downstream: Option<bool>,
    /// A node-alias entry: agents with all these node selectors become this
    /// ID as a parent (`=false` to unset).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    node: Option<bool>,
    /// Unix time after which the entry no longer applies.
    #[arg(long)]
    expires_at: Option<i64>,
}

impl EntryFields {
    fn to_wire(&self, id: String) -> types::Entry {
        self.overlay(types::Entry {
            id,
            ..types::Entry::default()
        })
    }

    /// `entry` with the fields given as flags replaced (a list flag
    /// replaces the whole list); the others kept.
    fn overlay(&self, mut entry: types::Entry) -> types::Entry {
        fn set<T: Clone>(field: &mut T, value: Option<&T>) {
            if let Some(v) = value {
                *field = v.clone();
            }
        }
        fn set_list(field: &mut Vec<String>, value: &[String]) {
            if !value.is_empty() {
                *field = value.to_vec();
            }
        }
        set(&mut entry.spiffe_id, self.spiffe_id.as_ref());
        set(&mut entry.parent_id, self.parent_id.as_ref());
        set_list(&mut entry.selectors, &self.selectors);
        set(
            &mut entry.x509_ttl,
            self.x509_ttl.map(|d| d.as_secs()).as_ref(),
        );
        set(
            &mut entry.jwt_ttl,
            self.jwt_ttl.map(|d| d.as_secs()).as_ref(),
        );
        set_list(&mut entry.dns_names, &self.dns_names);
        set_list(&mut entry.federates_with, &self.federates_with);
        set(&mut entry.admin, self.admin.as_ref());
        set(&mut entry.downstream, self.downstream.as_ref());
        set(&mut entry.node, self.node.as_ref());
        set(&mut entry.expires_at, self.expires_at.as_ref());
        entry
    }
}

#[derive(Debug, Subcommand)]
pub enum EntryCmd {
    /// Register a workload (or node-alias) entry, or many from a JSON file.
    Create {
        #[command(flatten)]
        fields: EntryFields,
        /// Create every entry of a JSON file ({"entries": [...]}, the format
        /// `signet entry show --output json` prints; - for stdin).
        #[arg(long, conflicts_with_all = ["spiffe_id", "parent_id", "selectors"])]
        data: Option<PathBuf>,
    },
    /// List entries, filtered by any of the flags.
    Show {
        /// Only the entry with this ID.
        #[arg(long)]
        id: Option<String>,
        /// Only entries with this SPIFFE ID.
        #[arg(long)]
        spiffe_id: Option<String>,
        /// Only entries with this parent ID.
        #[arg(long)]
        parent_id: Option<String>,
        /// Only entries with these selectors (repeatable; see --match).
        #[arg(long = "selector")]
        selectors: Vec<String>,
        /// How --selector matches: exact, subset, superset or any.
        #[arg(long = "match", default_value = "exact")]
        match_mode: String,
        /// Only entries federating with this trust domain.
        #[arg(long)]
        federates_with: Option<String>,
    },
    /// Change the fields given as flags of an entry; the others stay (a
    /// list flag such as --selector replaces that whole list).
    Update {
        /// The entry's ID (`signet entry show` prints it).
        #[arg(long)]
        id: String,
        #[command(flatten)]
        fields: EntryFields,
    },
    /// Delete an entry, by --id or by --spiffe-id (with --parent-id when
    /// several entries have that SPIFFE ID).
    Delete {
        /// The entry's ID.
        #[arg(long, required_unless_present = "spiffe_id", conflicts_with_all = ["spiffe_id", "parent_id"])]
        id: Option<String>,
        /// The SPIFFE ID of the entry to delete.
        #[arg(long)]
        spiffe_id: Option<String>,
        /// With --spiffe-id: the entry's parent ID.
        #[arg(long, requires = "spiffe_id")]
        parent_id: Option<String>,
    },
    /// Count entries.
    Count,
}

/// Evicting or banning `signet run`'s local agent cuts off every workload
/// of the host: only with --yes.
pub(super) fn refuse_local_agent_unless(
    spiffe_id: &str,
    yes: bool,
    what: &str,
) -> anyhow::Result<()> {
    if !yes && spiffe_id.ends_with(signet_server::LOCAL_AGENT_PATH) {
        bail!(
            "{spiffe_id} is the local agent of `signet run`: to {what} it stops every workload on this host from getting identities (until signet run restarts); add --yes if that is what you want"
        );
    }
    Ok(())
}

pub async fn entry(cmd: EntryCmd, opts: AdminOpts) -> anyhow::Result<()> {
    let mut c = client(&opts).await?;
    match cmd {
        EntryCmd::Create {
            data: Some(path), ..
        } => {
            let doc: Value = serde_json::from_slice(&read_input(&path)?)
                .with_context(|| format!("{} is not JSON", path.display()))?;
            let items = doc["entries"]
                .as_array()
                .with_context(|| format!("{}: expected {{\"entries\": [...]}}", path.display()))?;
            let mut created = Vec::new();
            let mut failed = 0usize;
            for (i, item) in items.iter().enumerate() {
                let wire = wire_from_json(item)
                    .with_context(|| format!("{} entry {i}", path.display()))?;
                match c
                    .create_entry(CreateEntryRequest { entry: Some(wire) })
                    .await
                {
                    Ok(r) => created.push(with_warnings(r.into_inner(), &format!("entry {i}: "))),
                    Err(e) => {
                        failed += 1;
                        eprintln!("entry {i}: {}", e.message());
                    }
                }
            }
            opts.output.print(
                json!({ "entries": created.iter().map(entry_json).collect::<Vec<_>>(), "failed": failed }),
                format_args!("Created {} entries, {failed} failed", created.len()),
            );
            if failed > 0 {
                bail!("{failed} of {} entries were not created", items.len());
            }
        }
        EntryCmd::Create { fields, data: None } => {
            let r = c
                .create_entry(CreateEntryRequest {
                    entry: Some(fields.to_wire(String::new())),
                })
                .await
                .map_err(status)?;
            let e = with_warnings(r.into_inner(), "");
            match opts.output {
                Output::Json => println!("{}", entry_json(&e)),
                Output::Text => print_entry(&e),
            }
        }
        EntryCmd::Update { id, fields } => {
            let e = update_entry(&mut c, &id, &fields).await?;
            match opts.output {
                Output::Json => println!("{}", entry_json(&e)),
                Output::Text => print_entry(&e),
            }
        }
        EntryCmd::Delete {
            id,
            spiffe_id,
            parent_id,
        } => {
            let id = match (id, spiffe_id) {
                (Some(id), _) => id,
                (None, Some(spiffe_id)) => {
                    the_entry(&mut c, &spiffe_id, parent_id.as_deref())
                        .await?
                        .id
                }
                (None, None) => bail!("give --id or --spiffe-id"),
            };
            let r = c
                .delete_entry(DeleteEntryRequest { id })
                .await
                .map_err(status)?;
            let e = r.into_inner().entry.unwrap_or_default();
            opts.output.print(
                json!({ "deleted": entry_json(&e) }),
                format_args!("Deleted entry {}", e.id),
            );
        }
        EntryCmd::Show {
            id,
            spiffe_id,
            parent_id,
            selectors,
            match_mode,
            federates_with,
        } => {
            let r = c
                .list_entries(ListEntriesRequest {
                    id: id.unwrap_or_default(),
                    spiffe_id: spiffe_id.unwrap_or_default(),
                    parent_id: parent_id.unwrap_or_default(),
                    selectors,
                    r#match: match_mode,
                    federates_with: federates_with.unwrap_or_default(),
                })
                .await
                .map_err(status)?;
            print_entries(opts.output, &r.into_inner().entries);
        }
        EntryCmd::Count => {
            let n = c
                .count_entries(CountEntriesRequest {})
                .await
                .map_err(status)?
                .into_inner()
                .count;
            match opts.output {
                Output::Json => println!("{}", json!({ "count": n })),
                Output::Text => {
                    println!("{n} registration entr{}", if n == 1 { "y" } else { "ies" })
                }
            }
        }
    }
    Ok(())
}

/// The entry of a create or update answer, its warnings said on stderr.
fn with_warnings(r: EntryResponse, prefix: &str) -> types::Entry {
    for w in &r.warnings {
        eprintln!("{prefix}warning: {w}");
    }
    r.entry.unwrap_or_default()
}

/// Reads the entry, applies the flags given and writes it back if nobody
/// changed it meanwhile (the revision read); retried a few times when
/// someone did.
async fn update_entry(
    c: &mut AdminClient,
    id: &str,
    fields: &EntryFields,
) -> anyhow::Result<types::Entry> {
    const ATTEMPTS: usize = 5;
    for attempt in 1..=ATTEMPTS {
        let current = c
            .list_entries(ListEntriesRequest {
                id: id.to_string(),
                ..ListEntriesRequest::default()
            })
            .await
            .map_err(status)?
            .into_inner()
            .entries
            .into_iter()
            .next()
            .with_context(|| format!("no entry with id {id}"))?;
        match c
            .update_entry(UpdateEntryRequest {
                entry: Some(fields.overlay(current)),
            })
            .await
        {
            Ok(r) => return Ok(with_warnings(r.into_inner(), "")),
            Err(e) if e.code() == tonic::Code::Aborted && attempt < ATTEMPTS => continue,
            Err(e) => return Err(status(e)),
        }
    }
    unreachable!("the last attempt returns")
}

/// The one entry with `spiffe_id` (and `parent_id`, if given); refuses
/// none and several, listing them.
async fn the_entry(
    c: &mut AdminClient,
    spiffe_id: &str,
    parent_id: Option<&str>,
) -> anyhow::Result<types::Entry> {
    let mut found = c
        .list_entries(ListEntriesRequest {
            spiffe_id: spiffe_id.to_string(),
            parent_id: parent_id.unwrap_or_default().to_string(),
            ..ListEntriesRequest::default()
        })
        .await
        .map_err(status)?
        .into_inner()
        .entries;
    let under = parent_id
        .map(|p| format!(" under parent {p}"))
        .unwrap_or_default();
    match found.len() {
        0 => bail!("no entry has SPIFFE ID {spiffe_id}{under}"),
        1 => Ok(found.remove(0)),
        n => bail!(
            "{n} entries have SPIFFE ID {spiffe_id}{under}: {}; say which with --parent-id or --id",
            found
                .iter()
                .map(|e| format!("{} (parent {})", e.id, e.parent_id))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}
