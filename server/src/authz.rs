//! Which entries an agent may receive (security invariant 1).
//!
//! An agent is the parent of: itself, and every node-alias entry (`node`
//! flag) whose selectors are all among the agent's node selectors. It may
//! receive the entries parented to any of those IDs, and, transitively, the
//! entries parented to the SPIFFE IDs of entries it received (nested
//! workloads), up to a fixed depth. Nothing else: every minting request is
//! checked against this set.

use std::collections::HashSet;

use signet_identity::{Entry, SpiffeId};

use crate::datastore::{AttestedNode, Datastore, EntryFilter, Result, SelectorMatch};

/// Longest parent chain followed below the agent.
pub const MAX_DEPTH: usize = 8;

/// Whether `entry` still applies at `now` (unix seconds).
fn live(entry: &Entry, now: i64) -> bool {
    entry
        .expires_at
        .is_none_or(|t| i64::try_from(t).unwrap_or(i64::MAX) > now)
}

/// The IDs the agent is a parent as at `now`: its own and those of the
/// node-alias entries, not expired, whose selectors it all has.
pub async fn agent_parent_ids(
    store: &dyn Datastore,
    node: &AttestedNode,
    now: i64,
) -> Result<Vec<SpiffeId>> {
    let mut ids = vec![node.spiffe_id.clone()];
    if !node.selectors.is_empty() {
        let filter = EntryFilter {
            node_only: true,
            selectors: Some((node.selectors.clone(), SelectorMatch::Subset)),
            ..Default::default()
        };
        for alias in store.list_entries(&filter).await? {
            if live(&alias, now) && !ids.contains(&alias.spiffe_id) {
                ids.push(alias.spiffe_id);
            }
        }
    }
    Ok(ids)
}

/// Every workload entry the agent is authorized for at `now` (unix
/// seconds), ordered by entry id. Node-alias entries and expired entries
/// are left out.
pub async fn authorized_entries(
    store: &dyn Datastore,
    node: &AttestedNode,
    now: i64,
) -> Result<Vec<Entry>> {
    Ok(authorized_entries_and_parents(store, node, now).await?.0)
}

/// [`authorized_entries`], and every parent ID whose children were looked
/// up (the agent, its node aliases, the nested parents): a change to an
/// entry under none of them (and not a node alias) cannot change the set.
pub async fn authorized_entries_and_parents(
    store: &dyn Datastore,
    node: &AttestedNode,
    now: i64,
) -> Result<(Vec<Entry>, HashSet<SpiffeId>)> {
    let mut visited: HashSet<SpiffeId> = HashSet::new();
    let mut frontier = agent_parent_ids(store, node, now).await?;
    let mut seen_entries: HashSet<String> = HashSet::new();
    let mut out = Vec::new();
    for _ in 0..MAX_DEPTH {
        frontier.retain(|id| visited.insert(id.clone()));
        if frontier.is_empty() {
            break;
        }
        let mut next = Vec::new();
        for entry in store.list_entries_by_parents(&frontier).await? {
            if entry.node || !live(&entry, now) || !seen_entries.insert(entry.id.clone()) {
                continue;
            }
            next.push(entry.spiffe_id.clone());
            out.push(entry);
        }
        frontier = next;
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok((out, visited))
}

/// The authorized entry with this id, or `None` when the agent may not
/// have it (whether or not it exists).
pub async fn authorized_entry(
    store: &dyn Datastore,
    node: &AttestedNode,
    entry_id: &str,
    now: i64,
) -> Result<Option<Entry>> {
    Ok(authorized_entries(store, node, now)
        .await?
        .into_iter()
        .find(|e| e.id == entry_id))
}

#[cfg(test)]
mod tests;
