//! How entries, nodes and bundles are shown: text for people, JSON for scripts.

use anyhow::{Context, bail};
use serde_json::{Value, json};
use signet_wire::types;

use super::{BundleFormat, Output};

pub(super) fn entry_json(e: &types::Entry) -> Value {
    json!({
        "id": e.id, "spiffe_id": e.spiffe_id, "parent_id": e.parent_id, "selectors": e.selectors,
        "x509_ttl": e.x509_ttl, "jwt_ttl": e.jwt_ttl, "dns_names": e.dns_names,
        "federates_with": e.federates_with, "admin": e.admin, "downstream": e.downstream,
        "node": e.node, "expires_at": e.expires_at, "revision": e.revision,
    })
}

/// An entry of a `--data` file, in the `--output json` shape.
pub(super) fn wire_from_json(v: &Value) -> anyhow::Result<types::Entry> {
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

pub(super) fn print_entry(e: &types::Entry) {
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

pub(super) fn print_entries(out: Output, entries: &[types::Entry]) {
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

pub(super) fn node_json(n: &types::AttestedNode) -> Value {
    json!({
        "spiffe_id": n.spiffe_id, "attestor": n.attestor, "selectors": n.selectors,
        "svid_serial": n.svid_serial, "svid_expires_at": n.svid_expires_at,
        "banned": n.banned, "can_reattest": n.can_reattest,
    })
}

/// Unix seconds as an RFC 3339 UTC time, for text output.
pub(super) fn rfc3339(unix: i64) -> String {
    u64::try_from(unix)
        .ok()
        .and_then(|s| std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(s)))
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_else(|| unix.to_string())
}

pub(super) fn print_node(out: Output, n: &types::AttestedNode) {
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

pub(super) fn bundle_text(b: &types::Bundle, format: BundleFormat) -> anyhow::Result<String> {
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
