//! Table tests of invariant 1: each row is an entry and whether agent A may
//! have it. Every rule of `authorized_entries` has a row that fails when the
//! rule is weakened (any-selector alias match, no expiry filter on aliases
//! or workloads, no depth limit, another agent's entries).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::datastore::{self, AttestedNode};
use signet_identity::{Selector, SpiffeId};

const NOW: i64 = 1_900_000_000;

fn id(path: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://example.org{path}")).unwrap()
}

fn sel(s: &str) -> Selector {
    Selector::parse(s).unwrap()
}

fn node(path: &str, selectors: &[&str]) -> AttestedNode {
    AttestedNode {
        spiffe_id: id(path),
        attestor: "x509pop".into(),
        selectors: selectors.iter().map(|s| sel(s)).collect(),
        svid_serial: "01".into(),
        svid_expires_at: NOW + 3600,
        banned: false,
        can_reattest: true,
    }
}

struct Row {
    spiffe_id: &'static str,
    parent: &'static str,
    selectors: &'static [&'static str],
    node: bool,
    expires_at: Option<i64>,
    /// Whether agent A may have it (node aliases are never handed out).
    allowed: bool,
}

const A: &str = "/signet/agent/x509pop/a";
const B: &str = "/signet/agent/x509pop/b";

const ROWS: &[Row] = &[
    // Parented to the agent itself.
    Row {
        spiffe_id: "/direct",
        parent: A,
        selectors: &["unix:uid:1"],
        node: false,
        expires_at: None,
        allowed: true,
    },
    Row {
        spiffe_id: "/still-valid",
        parent: A,
        selectors: &["unix:uid:1"],
        node: false,
        expires_at: Some(NOW + 60),
        allowed: true,
    },
    Row {
        spiffe_id: "/expired",
        parent: A,
        selectors: &["unix:uid:1"],
        node: false,
        expires_at: Some(NOW - 1),
        allowed: false,
    },
    // Another agent's workload.
    Row {
        spiffe_id: "/of-b",
        parent: B,
        selectors: &["unix:uid:1"],
        node: false,
        expires_at: None,
        allowed: false,
    },
    // A node alias whose one selector A has.
    Row {
        spiffe_id: "/nodes/one",
        parent: "/signet/server",
        selectors: &["x509pop:subject:cn:a"],
        node: true,
        expires_at: None,
        allowed: false,
    },
    Row {
        spiffe_id: "/under-one",
        parent: "/nodes/one",
        selectors: &["unix:uid:1"],
        node: false,
        expires_at: None,
        allowed: true,
    },
    // A node alias with two selectors, only one of which A has.
    Row {
        spiffe_id: "/nodes/two",
        parent: "/signet/server",
        selectors: &["x509pop:subject:cn:a", "x509pop:subject:cn:other"],
        node: true,
        expires_at: None,
        allowed: false,
    },
    Row {
        spiffe_id: "/under-two",
        parent: "/nodes/two",
        selectors: &["unix:uid:1"],
        node: false,
        expires_at: None,
        allowed: false,
    },
    // An expired node alias A otherwise matches.
    Row {
        spiffe_id: "/nodes/gone",
        parent: "/signet/server",
        selectors: &["x509pop:subject:cn:a"],
        node: true,
        expires_at: Some(NOW - 1),
        allowed: false,
    },
    Row {
        spiffe_id: "/under-gone",
        parent: "/nodes/gone",
        selectors: &["unix:uid:1"],
        node: false,
        expires_at: None,
        allowed: false,
    },
    // A nested chain below A: depth 1..=MAX_DEPTH is followed, no deeper.
    Row {
        spiffe_id: "/n1",
        parent: A,
        selectors: &["unix:uid:1"],
        node: false,
        expires_at: None,
        allowed: true,
    },
    Row {
        spiffe_id: "/n2",
        parent: "/n1",
        selectors: &["unix:uid:1"],
        node: false,
        expires_at: None,
        allowed: true,
    },
    Row {
        spiffe_id: "/n3",
        parent: "/n2",
        selectors: &["unix:uid:1"],
        node: false,
        expires_at: None,
        allowed: true,
    },
    Row {
        spiffe_id: "/n4",
        parent: "/n3",
        selectors: &["unix:uid:1"],
        node: false,
        expires_at: None,
        allowed: true,
    },
    Row {
        spiffe_id: "/n5",
        parent: "/n4",
        selectors: &["unix:uid:1"],
        node: false,
        expires_at: None,
        allowed: true,
    },
    Row {
        spiffe_id: "/n6",
        parent: "/n5",
        selectors: &["unix:uid:1"],
        node: false,
        expires_at: None,
        allowed: true,
    },
    Row {
        spiffe_id: "/n7",
        parent: "/n6",
        selectors: &["unix:uid:1"],
        node: false,
        expires_at: None,
        allowed: true,
    },
    Row {
        spiffe_id: "/n8",
        parent: "/n7",
        selectors: &["unix:uid:1"],
        node: false,
        expires_at: None,
        allowed: true,
    },
    Row {
        spiffe_id: "/n9",
        parent: "/n8",
        selectors: &["unix:uid:1"],
        node: false,
        expires_at: None,
        allowed: false,
    },
    // Below an expired link the chain is cut.
    Row {
        spiffe_id: "/below-expired",
        parent: "/expired",
        selectors: &["unix:uid:1"],
        node: false,
        expires_at: None,
        allowed: false,
    },
];

async fn store_with_rows() -> (tempfile::TempDir, std::sync::Arc<dyn Datastore>, Vec<Entry>) {
    let dir = tempfile::tempdir().unwrap();
    let store = datastore::open(&format!(
        "sqlite://{}",
        dir.path().join("authz.db").display()
    ))
    .await
    .unwrap();
    let mut created = Vec::new();
    for row in ROWS {
        let mut entry = Entry::new(
            id(row.spiffe_id),
            id(row.parent),
            row.selectors.iter().map(|s| sel(s)).collect(),
        );
        entry.node = row.node;
        entry.expires_at = row.expires_at.map(|t| t as u64);
        created.push(store.create_entry(entry).await.unwrap());
    }
    (dir, store, created)
}

#[tokio::test]
async fn agent_a_gets_exactly_the_allowed_rows() {
    let (_dir, store, created) = store_with_rows().await;
    let a = node(A, &["x509pop:subject:cn:a", "x509pop:ca:fingerprint:aa"]);
    let got: Vec<String> = authorized_entries(store.as_ref(), &a, NOW)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.spiffe_id.path().to_string())
        .collect();
    for row in ROWS {
        assert_eq!(
            got.contains(&row.spiffe_id.to_string()),
            row.allowed,
            "{}: allowed should be {} (got {got:?})",
            row.spiffe_id,
            row.allowed
        );
    }
    // A minting request names entries by id: one A may not have is refused.
    for (row, entry) in ROWS.iter().zip(&created) {
        let found = authorized_entry(store.as_ref(), &a, &entry.id, NOW)
            .await
            .unwrap();
        assert_eq!(found.is_some(), row.allowed, "{} by id", row.spiffe_id);
    }
}

#[tokio::test]
async fn agent_b_gets_its_own_and_nothing_of_a() {
    let (_dir, store, _) = store_with_rows().await;
    let b = node(B, &["x509pop:subject:cn:b"]);
    let got: Vec<String> = authorized_entries(store.as_ref(), &b, NOW)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.spiffe_id.path().to_string())
        .collect();
    assert_eq!(got, ["/of-b"]);
}

#[tokio::test]
async fn parent_ids_leave_out_partial_and_expired_aliases() {
    let (_dir, store, _) = store_with_rows().await;
    let a = node(A, &["x509pop:subject:cn:a"]);
    let ids: Vec<String> = agent_parent_ids(store.as_ref(), &a, NOW)
        .await
        .unwrap()
        .iter()
        .map(|i| i.path().to_string())
        .collect();
    assert_eq!(ids, [A, "/nodes/one"]);
    // Before the alias expired, it counted.
    let earlier: Vec<String> = agent_parent_ids(store.as_ref(), &a, NOW - 3600)
        .await
        .unwrap()
        .iter()
        .map(|i| i.path().to_string())
        .collect();
    assert!(earlier.contains(&"/nodes/gone".to_string()), "{earlier:?}");
}
