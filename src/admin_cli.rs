//! Admin commands over the server's admin socket: entries, join tokens,
//! agents, bundles, minting and the health check.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};
use signet_identity::bundle::certificates_to_pem;
use signet_identity::{Bundle, CertificateDer, TrustDomain};
use signet_server::admin::connect_admin;
use signet_wire::admin::*;
use signet_wire::types;
use signet_workload::{SocketRole, explain_connect_error};

#[derive(Debug, Clone, Copy, Default, ValueEnum)]
pub enum Output {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct AdminOpts {
    #[arg(long, alias = "socket", global = true, value_parser = crate::sockets::socket_arg, help = crate::sockets::ADMIN_SOCKET_HELP)]
    admin_socket: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text", global = true)]
    output: Output,
}

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

fn entry_json(e: &types::Entry) -> Value {
    json!({
        "id": e.id, "spiffe_id": e.spiffe_id, "parent_id": e.parent_id, "selectors": e.selectors,
        "x509_ttl": e.x509_ttl, "jwt_ttl": e.jwt_ttl, "dns_names": e.dns_names,
        "federates_with": e.federates_with, "admin": e.admin, "downstream": e.downstream,
        "node": e.node, "expires_at": e.expires_at, "revision": e.revision,
    })
}

/// An entry of a `--data` file, in the `--output json` shape.
fn wire_from_json(v: &Value) -> anyhow::Result<types::Entry> {
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
    let list = |k: &str| -> anyhow::Result<Vec<String>> {
        match &v[k] {
            Value::Null => Ok(Vec::new()),
            Value::Array(a) => a
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_owned)
                        .with_context(|| format!("{k}: expected strings"))
                })
                .collect(),
            _ => bail!("{k}: expected a list of strings"),
        }
    };
    Ok(types::Entry {
        id: String::new(),
        spiffe_id: s("spiffe_id"),
        parent_id: s("parent_id"),
        selectors: list("selectors")?,
        x509_ttl: v["x509_ttl"].as_u64().unwrap_or(0),
        jwt_ttl: v["jwt_ttl"].as_u64().unwrap_or(0),
        dns_names: list("dns_names")?,
        federates_with: list("federates_with")?,
        admin: v["admin"].as_bool().unwrap_or(false),
        downstream: v["downstream"].as_bool().unwrap_or(false),
        node: v["node"].as_bool().unwrap_or(false),
        expires_at: v["expires_at"].as_i64().unwrap_or(0),
        revision: 0,
    })
}

fn print_entry(e: &types::Entry) {
    println!("Entry ID         : {}", e.id);
    println!("SPIFFE ID        : {}", e.spiffe_id);
    println!("Parent ID        : {}", e.parent_id);
    println!("Revision         : {}", e.revision);
    let ttl = |t: u64| {
        if t == 0 {
            "default".to_string()
        } else {
            format!("{t}s")
        }
    };
    println!("X509-SVID TTL    : {}", ttl(e.x509_ttl));
    println!("JWT-SVID TTL     : {}", ttl(e.jwt_ttl));
    for s in &e.selectors {
        println!("Selector         : {s}");
    }
    for d in &e.dns_names {
        println!("DNS name         : {d}");
    }
    for f in &e.federates_with {
        println!("Federates with   : {f}");
    }
    for (flag, on) in [
        ("admin", e.admin),
        ("downstream", e.downstream),
        ("node", e.node),
    ] {
        if on {
            println!("Flag             : {flag}");
        }
    }
    println!();
}

fn print_entries(out: Output, entries: &[types::Entry]) {
    match out {
        Output::Json => println!(
            "{}",
            json!({ "entries": entries.iter().map(entry_json).collect::<Vec<_>>() })
        ),
        Output::Text => {
            println!(
                "Found {} entr{}",
                entries.len(),
                if entries.len() == 1 { "y" } else { "ies" }
            );
            entries.iter().for_each(print_entry);
        }
    }
}

fn node_json(n: &types::AttestedNode) -> Value {
    json!({
        "spiffe_id": n.spiffe_id, "attestor": n.attestor, "selectors": n.selectors,
        "svid_serial": n.svid_serial, "svid_expires_at": n.svid_expires_at,
        "banned": n.banned, "can_reattest": n.can_reattest,
    })
}

/// Evicting or banning `signet run`'s local agent cuts off every workload
/// of the host: only with --yes.
fn refuse_local_agent_unless(spiffe_id: &str, yes: bool, what: &str) -> anyhow::Result<()> {
    if !yes && spiffe_id.ends_with(signet_server::LOCAL_AGENT_PATH) {
        bail!(
            "{spiffe_id} is the local agent of `signet run`: to {what} it stops every workload on this host from getting identities (until signet run restarts); add --yes if that is what you want"
        );
    }
    Ok(())
}

/// Unix seconds as an RFC 3339 UTC time, for text output.
fn rfc3339(unix: i64) -> String {
    u64::try_from(unix)
        .ok()
        .and_then(|s| std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(s)))
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_else(|| unix.to_string())
}

fn print_node(out: Output, n: &types::AttestedNode) {
    match out {
        Output::Json => println!("{}", node_json(n)),
        Output::Text => {
            println!("SPIFFE ID     : {}", n.spiffe_id);
            println!("Attestor      : {}", n.attestor);
            println!("SVID serial   : {}", n.svid_serial);
            println!("SVID expires  : {}", rfc3339(n.svid_expires_at));
            println!("Banned        : {}", n.banned);
            println!("Can re-attest : {}", n.can_reattest);
            for s in &n.selectors {
                println!("Selector      : {s}");
            }
            println!();
        }
    }
}

fn bundle_text(b: &types::Bundle, format: BundleFormat) -> anyhow::Result<String> {
    Ok(match format {
        BundleFormat::Spiffe => {
            // JSON output ends with a newline, as every other output does.
            let mut text = String::from_utf8(b.spiffe_json.clone())?;
            if !text.ends_with('\n') {
                text.push('\n');
            }
            text
        }
        BundleFormat::Pem => {
            let bundle = signet_wire::bundle_from_wire(b).map_err(anyhow::Error::msg)?;
            bundle.x509_pem()
        }
    })
}

/// The admin socket this command talks to, for errors that name it.
static ADMIN_SOCKET: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

async fn client(
    opts: &AdminOpts,
) -> anyhow::Result<admin_client::AdminClient<tonic::transport::Channel>> {
    let location = crate::sockets::locate(SocketRole::Admin, opts.admin_socket.clone(), None)?;
    let path = location.client_path();
    let _ = ADMIN_SOCKET.set(path.clone());
    connect_admin(path.clone()).await.map_err(|e| {
        let hint = if path.exists() {
            ""
        } else {
            "; is signet server or signet run running?"
        };
        anyhow::anyhow!(
            "cannot reach the admin API: {} ({}{hint})",
            explain_connect_error(&path, &e),
            location.origin()
        )
    })
}

/// Turns a gRPC status into an error that names the problem; Unimplemented
/// means the socket serves something else than the admin API.
fn status(e: tonic::Status) -> anyhow::Error {
    if e.code() == tonic::Code::Unimplemented {
        let path = ADMIN_SOCKET
            .get()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "the socket".into());
        return anyhow::anyhow!(
            "{path} does not serve the admin API (it answered Unimplemented): is it an agent socket? Give the server's admin socket, the one `signet run` or `signet server` prints as \"admin socket\" (--admin-socket)"
        );
    }
    if e.message().is_empty() {
        return anyhow::anyhow!("the server answered {:?}", e.code());
    }
    anyhow::anyhow!("{}", e.message())
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
            match opts.output {
                Output::Json => println!(
                    "{}",
                    json!({ "entries": created.iter().map(entry_json).collect::<Vec<_>>(), "failed": failed })
                ),
                Output::Text => println!("Created {} entries, {failed} failed", created.len()),
            }
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
            match opts.output {
                Output::Json => println!("{}", json!({ "deleted": entry_json(&e) })),
                Output::Text => println!("Deleted entry {}", e.id),
            }
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

type AdminClient = admin_client::AdminClient<tonic::transport::Channel>;

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
    match opts.output {
        Output::Json => println!(
            "{}",
            json!({ "token": r.token, "expires_at": r.expires_at })
        ),
        Output::Text => println!("Token: {}", r.token),
    }
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
            match opts.output {
                Output::Json => println!("{}", json!({ "evicted": node_json(&a) })),
                Output::Text => println!("Evicted agent {}", a.spiffe_id),
            }
        }
        AgentCmd::Ban { spiffe_id, yes } => {
            refuse_local_agent_unless(&spiffe_id, yes, "ban")?;
            let r = c
                .ban_agent(AgentRequest { spiffe_id })
                .await
                .map_err(status)?
                .into_inner();
            let a = r.agent.unwrap_or_default();
            match opts.output {
                Output::Json => println!("{}", json!({ "banned": node_json(&a) })),
                Output::Text => println!("Banned agent {}", a.spiffe_id),
            }
        }
    }
    Ok(())
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
            match opts.output {
                Output::Json => println!("{}", json!({ "set": trust_domain })),
                Output::Text => println!("Bundle of {trust_domain} set"),
            }
        }
        BundleCmd::Delete { trust_domain } => {
            c.delete_bundle(DeleteBundleRequest {
                trust_domain: trust_domain.clone(),
            })
            .await
            .map_err(status)?;
            match opts.output {
                Output::Json => println!("{}", json!({ "deleted": trust_domain })),
                Output::Text => println!("Bundle of {trust_domain} deleted"),
            }
        }
    }
    Ok(())
}

fn read_input(path: &Path) -> anyhow::Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
        Ok(buf)
    } else {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
    }
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
    match opts.output {
        Output::Json => println!(
            "{}",
            json!({ "token": r.token, "expires_at": r.expires_at })
        ),
        Output::Text => println!("{}", r.token),
    }
    Ok(())
}

/// `healthcheck --url`: GET the URL (plain HTTP) within 5 s; healthy on 2xx.
pub async fn http_health(url: &str) -> anyhow::Result<()> {
    use http_body_util::{BodyExt, Empty};
    let uri: hyper::Uri = url
        .parse()
        .with_context(|| format!("{url:?} is not a URL"))?;
    if uri.scheme_str() != Some("http") {
        anyhow::bail!("{url:?}: only http:// URLs can be checked");
    }
    let host = uri.host().context("the URL has no host")?.to_string();
    let port = uri.port_u16().unwrap_or(80);
    let check = async {
        let stream = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .with_context(|| format!("cannot connect to {host}:{port}"))?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let req = hyper::Request::get(path)
            .header(hyper::header::HOST, format!("{host}:{port}"))
            .body(Empty::<bytes::Bytes>::new())?;
        let resp = send.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        let body = String::from_utf8_lossy(&body);
        if !status.is_success() {
            anyhow::bail!("{url} answered {status}: {}", body.trim());
        }
        println!("{url}: {status} {}", body.trim());
        Ok(())
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), check)
        .await
        .with_context(|| format!("{url} did not answer within 5 s"))?
}

pub async fn healthcheck(opts: &AdminOpts) -> anyhow::Result<()> {
    let mut c = client(opts).await?;
    let h = c
        .health(HealthRequest {})
        .await
        .map_err(status)?
        .into_inner();
    match opts.output {
        Output::Json => println!(
            "{}",
            json!({ "healthy": true, "trust_domain": h.trust_domain, "bundle_sequence": h.bundle_sequence, "entries": h.entries, "agents": h.agents })
        ),
        Output::Text => println!(
            "Server is healthy: trust domain {}, bundle sequence {}, {} entries, {} agents",
            h.trust_domain, h.bundle_sequence, h.entries, h.agents
        ),
    }
    Ok(())
}
