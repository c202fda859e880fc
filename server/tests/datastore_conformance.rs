//! One conformance suite, run against every datastore: SQLite (a file in a
//! temp dir) and PostgreSQL (a real server started for the test).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use signet_identity::{Bundle, Entry, Selector, SpiffeId, TrustDomain};
use signet_server::datastore::{
    self, AttestedNode, ChangeKind, Datastore, DatastoreError, EntryFilter, JoinToken,
    SelectorMatch,
};

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn sel(s: &str) -> Selector {
    Selector::parse(s).unwrap()
}

fn entry(spiffe: &str, parent: &str, selectors: &[&str]) -> Entry {
    Entry::new(
        id(spiffe),
        id(parent),
        selectors.iter().map(|s| sel(s)).collect(),
    )
}

const AGENT: &str = "spiffe://example.org/agent/a";

async fn entries(store: &dyn Datastore) {
    let created = store
        .create_entry(entry(
            "spiffe://example.org/web",
            AGENT,
            &["unix:uid:1", "unix:gid:1"],
        ))
        .await
        .unwrap();
    assert_eq!(created.id.len(), 32);
    assert_eq!(created.revision, 1);
    assert_eq!(
        store.get_entry(&created.id).await.unwrap().unwrap(),
        created
    );
    assert_eq!(store.count_entries().await.unwrap(), 1);

    // The same SPIFFE ID, parent and selector set (in any order) is a duplicate.
    let dup = store
        .create_entry(entry(
            "spiffe://example.org/web",
            AGENT,
            &["unix:gid:1", "unix:uid:1"],
        ))
        .await;
    assert!(
        matches!(dup, Err(DatastoreError::DuplicateEntry { existing_id }) if existing_id == created.id)
    );
    // A different selector set is not.
    let other = store
        .create_entry(entry("spiffe://example.org/web", AGENT, &["unix:uid:1"]))
        .await
        .unwrap();

    // Update bumps the revision; a stale revision is a conflict.
    let mut changed = created.clone();
    changed.dns_names = vec!["web.example.org".into()];
    let updated = store.update_entry(changed.clone()).await.unwrap();
    assert_eq!(updated.revision, 2);
    assert!(matches!(
        store.update_entry(changed).await,
        Err(DatastoreError::Conflict { .. })
    ));
    // Updating into another entry's identity is a duplicate.
    let mut clash = other.clone();
    clash.selectors = vec![sel("unix:uid:1"), sel("unix:gid:1")];
    assert!(matches!(
        store.update_entry(clash).await,
        Err(DatastoreError::DuplicateEntry { .. })
    ));
    let mut missing = other.clone();
    missing.id = "nope".into();
    assert!(matches!(
        store.update_entry(missing).await,
        Err(DatastoreError::EntryNotFound(_))
    ));

    let deleted = store.delete_entry(&other.id).await.unwrap();
    assert_eq!(deleted.id, other.id);
    assert!(store.get_entry(&other.id).await.unwrap().is_none());
    assert!(matches!(
        store.delete_entry(&other.id).await,
        Err(DatastoreError::EntryNotFound(_))
    ));
    store.delete_entry(&created.id).await.unwrap();
    assert_eq!(store.count_entries().await.unwrap(), 0);
}

async fn filters(store: &dyn Datastore) {
    let a = store
        .create_entry(entry("spiffe://example.org/a", AGENT, &["k:1"]))
        .await
        .unwrap();
    let ab = store
        .create_entry(entry("spiffe://example.org/ab", AGENT, &["k:1", "k:2"]))
        .await
        .unwrap();
    let abc = store
        .create_entry(entry(
            "spiffe://example.org/abc",
            "spiffe://example.org/agent/b",
            &["k:1", "k:2", "k:3"],
        ))
        .await
        .unwrap();
    let mut fed = entry("spiffe://example.org/fed", AGENT, &["k:9"]);
    fed.federates_with = vec![TrustDomain::parse("partner.org").unwrap()];
    let fed = store.create_entry(fed).await.unwrap();
    let mut alias = entry(
        "spiffe://example.org/cluster",
        "spiffe://example.org/signet/server",
        &["node:x"],
    );
    alias.node = true;
    let alias = store.create_entry(alias).await.unwrap();

    let ids = |v: Vec<Entry>| {
        let mut ids: Vec<String> = v
            .into_iter()
            .map(|e| e.spiffe_id.path().to_owned())
            .collect();
        ids.sort();
        ids
    };
    let by = |sels: &[&str], m: SelectorMatch| EntryFilter {
        selectors: Some((sels.iter().map(|s| sel(s)).collect(), m)),
        ..Default::default()
    };
    for (selectors, mode, expected) in [
        (["k:1", "k:2"], SelectorMatch::Exact, &["/ab"][..]),
        (["k:1", "k:2"], SelectorMatch::Subset, &["/a", "/ab"]),
        (["k:1", "k:2"], SelectorMatch::Superset, &["/ab", "/abc"]),
        (["k:3", "k:9"], SelectorMatch::Any, &["/abc", "/fed"]),
    ] {
        assert_eq!(
            ids(store.list_entries(&by(&selectors, mode)).await.unwrap()),
            expected,
            "{mode:?} of {selectors:?}"
        );
    }
    for (mode, expected) in [
        (SelectorMatch::Exact, 0),
        (SelectorMatch::Subset, 0),
        (SelectorMatch::Superset, 5),
        (SelectorMatch::Any, 0),
    ] {
        assert_eq!(
            store.list_entries(&by(&[], mode)).await.unwrap().len(),
            expected,
            "{mode:?} of no selectors"
        );
    }
    // Filters combine with AND.
    let f = EntryFilter {
        parent_id: Some(id(AGENT)),
        selectors: Some((vec![sel("k:1"), sel("k:2")], SelectorMatch::Subset)),
        ..Default::default()
    };
    assert_eq!(ids(store.list_entries(&f).await.unwrap()), ["/a", "/ab"]);
    let f = EntryFilter {
        parent_id: Some(id(AGENT)),
        selectors: Some((vec![sel("k:2")], SelectorMatch::Superset)),
        ..Default::default()
    };
    assert_eq!(ids(store.list_entries(&f).await.unwrap()), ["/ab"]);
    let f = EntryFilter {
        parent_id: Some(id(AGENT)),
        ..Default::default()
    };
    assert_eq!(
        ids(store.list_entries(&f).await.unwrap()),
        ["/a", "/ab", "/fed"]
    );
    let f = EntryFilter {
        spiffe_id: Some(id("spiffe://example.org/abc")),
        ..Default::default()
    };
    assert_eq!(
        store.list_entries(&f).await.unwrap(),
        std::slice::from_ref(&abc)
    );
    let f = EntryFilter {
        id: Some(a.id.clone()),
        ..Default::default()
    };
    assert_eq!(
        store.list_entries(&f).await.unwrap(),
        std::slice::from_ref(&a)
    );
    let f = EntryFilter {
        federates_with: Some(TrustDomain::parse("partner.org").unwrap()),
        ..Default::default()
    };
    assert_eq!(
        store.list_entries(&f).await.unwrap(),
        std::slice::from_ref(&fed)
    );
    let f = EntryFilter {
        node_only: true,
        ..Default::default()
    };
    assert_eq!(
        store.list_entries(&f).await.unwrap(),
        std::slice::from_ref(&alias)
    );
    let all = store.list_entries(&EntryFilter::default()).await.unwrap();
    assert!(all.windows(2).all(|w| w[0].id < w[1].id), "ordered by id");

    let by_parents = store
        .list_entries_by_parents(&[id(AGENT), id("spiffe://example.org/agent/b")])
        .await
        .unwrap();
    assert_eq!(ids(by_parents), ["/a", "/ab", "/abc", "/fed"]);
    assert!(
        store
            .list_entries_by_parents(&[id("spiffe://example.org/none")])
            .await
            .unwrap()
            .is_empty()
    );
    for e in [a, ab, abc, fed, alias] {
        store.delete_entry(&e.id).await.unwrap();
    }
}

async fn nodes_tokens_bundles_journals(store: Arc<dyn Datastore>) {
    let node = AttestedNode {
        spiffe_id: id("spiffe://example.org/signet/agent/x509pop/abc"),
        attestor: "x509pop".into(),
        selectors: vec![sel("x509pop:subject:cn:n1")],
        svid_serial: "01".into(),
        svid_expires_at: 100,
        banned: false,
        can_reattest: true,
    };
    store.put_node(&node).await.unwrap();
    let mut banned = node.clone();
    banned.banned = true;
    store.put_node(&banned).await.unwrap();
    assert_eq!(
        store.get_node(&node.spiffe_id).await.unwrap().unwrap(),
        banned
    );
    assert_eq!(
        store.list_nodes().await.unwrap(),
        std::slice::from_ref(&banned)
    );
    assert!(store.delete_node(&node.spiffe_id).await.unwrap());
    assert!(!store.delete_node(&node.spiffe_id).await.unwrap());
    assert!(store.get_node(&node.spiffe_id).await.unwrap().is_none());

    // swap_node writes only over the record as read.
    assert!(
        store.swap_node(None, &node).await.unwrap(),
        "insert when absent"
    );
    assert!(!store.swap_node(None, &node).await.unwrap(), "present now");
    let renewed = AttestedNode {
        svid_serial: "02".into(),
        ..node.clone()
    };
    assert!(store.swap_node(Some(&node), &banned).await.unwrap());
    assert!(
        !store.swap_node(Some(&node), &renewed).await.unwrap(),
        "a renewal over the pre-ban record changes nothing"
    );
    assert_eq!(
        store.get_node(&node.spiffe_id).await.unwrap().unwrap(),
        banned
    );
    // Many writers over the same record: exactly one wins.
    let mut racers = Vec::new();
    for i in 0..16 {
        let store = store.clone();
        let (from, to) = (
            banned.clone(),
            AttestedNode {
                svid_serial: format!("r{i}"),
                ..banned.clone()
            },
        );
        racers.push(tokio::spawn(async move {
            store.swap_node(Some(&from), &to).await.unwrap()
        }));
    }
    let mut won = 0;
    for r in racers {
        won += usize::from(r.await.unwrap());
    }
    assert_eq!(won, 1, "exactly one concurrent swap wins");
    assert!(store.delete_node(&node.spiffe_id).await.unwrap());
    assert!(
        !store.swap_node(Some(&banned), &renewed).await.unwrap(),
        "gone: nothing re-created"
    );
    assert!(store.get_node(&node.spiffe_id).await.unwrap().is_none());

    // Join tokens are single use even when raced.
    let token = JoinToken {
        hash: "h1".into(),
        expires_at: 50,
        agent_id: Some(id("spiffe://example.org/fixed")),
    };
    store.create_join_token(&token).await.unwrap();
    assert!(matches!(
        store.create_join_token(&token).await,
        Err(DatastoreError::DuplicateToken)
    ));
    let mut racers = Vec::new();
    for _ in 0..20 {
        let s = store.clone();
        racers.push(tokio::spawn(async move {
            s.take_join_token("h1").await.unwrap()
        }));
    }
    let mut won = Vec::new();
    for r in racers {
        if let Some(t) = r.await.unwrap() {
            won.push(t);
        }
    }
    assert_eq!(won, [token], "exactly one taker");
    store
        .create_join_token(&JoinToken {
            hash: "old".into(),
            expires_at: 10,
            agent_id: None,
        })
        .await
        .unwrap();
    store
        .create_join_token(&JoinToken {
            hash: "new".into(),
            expires_at: 1000,
            agent_id: None,
        })
        .await
        .unwrap();
    assert_eq!(store.prune_join_tokens(500).await.unwrap(), 1);
    assert!(store.take_join_token("old").await.unwrap().is_none());
    assert!(store.take_join_token("new").await.unwrap().is_some());

    // Bundles round-trip with real certificates.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = p.self_signed(&key).unwrap();
    let td = TrustDomain::parse("partner.org").unwrap();
    let mut bundle = Bundle::new(td.clone());
    bundle.add_x509_authority(cert.der().clone());
    bundle.set_sequence(4);
    store.put_bundle(&bundle).await.unwrap();
    assert_eq!(store.get_bundle(&td).await.unwrap().unwrap(), bundle);
    assert_eq!(
        store.list_bundles().await.unwrap(),
        std::slice::from_ref(&bundle)
    );
    assert!(store.delete_bundle(&td).await.unwrap());
    assert!(store.get_bundle(&td).await.unwrap().is_none());

    store.put_ca_journal("s1", "{\"v\":1}").await.unwrap();
    store.put_ca_journal("s1", "{\"v\":2}").await.unwrap();
    assert_eq!(
        store.get_ca_journal("s1").await.unwrap().as_deref(),
        Some("{\"v\":2}")
    );
    assert!(store.get_ca_journal("s2").await.unwrap().is_none());
    store.put_ca_journal("s0", "{\"v\":0}").await.unwrap();
    assert_eq!(
        store.list_ca_journals().await.unwrap(),
        [
            ("s0".to_owned(), "{\"v\":0}".to_owned()),
            ("s1".to_owned(), "{\"v\":2}".to_owned()),
        ],
        "every server's journal, by server id"
    );
    // Journals are not in the change feed.
    let before = store.current_revision().await.unwrap();
    store.put_ca_journal("s1", "{\"v\":3}").await.unwrap();
    assert_eq!(store.current_revision().await.unwrap(), before);
}

async fn change_feed(store: &dyn Datastore) {
    let start = store.current_revision().await.unwrap();
    let e = store
        .create_entry(entry("spiffe://example.org/feed", AGENT, &["f:1"]))
        .await
        .unwrap();
    let mut u = e.clone();
    u.parent_id = id("spiffe://example.org/agent/other");
    store.update_entry(u).await.unwrap();
    store.delete_entry(&e.id).await.unwrap();
    let changes = store.changes_since(start, 100).await.unwrap();
    assert_eq!(changes.len(), 3);
    assert!(
        changes.windows(2).all(|w| w[0].revision < w[1].revision),
        "strictly increasing"
    );
    assert!(
        matches!(&changes[0].kind, ChangeKind::EntryCreated { entry_id, .. } if *entry_id == e.id)
    );
    assert!(
        matches!(&changes[1].kind, ChangeKind::EntryUpdated { old_parent_id, .. } if old_parent_id.as_str() == AGENT)
    );
    assert!(matches!(&changes[2].kind, ChangeKind::EntryDeleted { .. }));
    assert_eq!(store.current_revision().await.unwrap(), changes[2].revision);
    // Paging.
    let first = store.changes_since(start, 2).await.unwrap();
    assert_eq!(first.len(), 2);
    let rest = store.changes_since(first[1].revision, 100).await.unwrap();
    assert_eq!(rest, changes[2..]);

    // Pruning: nothing recorded after the cutoff goes; everything before it
    // goes except the newest change, so the revision never goes back.
    let newest = store.current_revision().await.unwrap();
    assert_eq!(store.prune_changes(0).await.unwrap(), 0);
    assert_eq!(store.changes_since(start, 100).await.unwrap().len(), 3);
    let far_future = i64::MAX / 2;
    assert!(store.prune_changes(far_future).await.unwrap() >= 2);
    assert_eq!(store.current_revision().await.unwrap(), newest);
    let left = store.changes_since(0, 100).await.unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].revision, newest);
    // New changes continue above it.
    let again = store
        .create_entry(entry("spiffe://example.org/feed2", AGENT, &["f:2"]))
        .await
        .unwrap();
    assert!(store.current_revision().await.unwrap() > newest);
    store.delete_entry(&again.id).await.unwrap();
}

/// Federation relationships: created once, replaced only when they exist,
/// listed by trust domain, deleted.
async fn federations(store: &dyn Datastore) {
    use signet_server::federation::{EndpointAuth, Relationship};
    let rel = |td: &str, url: &str| Relationship {
        trust_domain: td.into(),
        bundle_endpoint_url: url.into(),
        auth: EndpointAuth::HttpsSpiffe {
            endpoint_spiffe_id: format!("spiffe://{td}/signet/server"),
        },
    };
    let b = rel("b.test", "https://b.test/");
    store.put_federation(&b, true).await.unwrap();
    assert!(matches!(
        store.put_federation(&b, true).await,
        Err(DatastoreError::DuplicateFederation(td)) if td == "b.test"
    ));
    assert!(matches!(
        store.put_federation(&rel("c.test", "https://c.test/"), false).await,
        Err(DatastoreError::FederationNotFound(td)) if td == "c.test"
    ));
    let a = Relationship {
        auth: EndpointAuth::HttpsWeb {
            ca_pem: Some("roots".into()),
        },
        ..rel("a.test", "https://a.test/bundle")
    };
    store.put_federation(&a, true).await.unwrap();
    let moved = rel("b.test", "https://b2.test/");
    store.put_federation(&moved, false).await.unwrap();
    let td = |s: &str| TrustDomain::parse(s).unwrap();
    assert_eq!(
        store.get_federation(&td("b.test")).await.unwrap(),
        Some(moved.clone())
    );
    assert_eq!(store.list_federations().await.unwrap(), vec![a, moved]);
    assert!(store.delete_federation(&td("a.test")).await.unwrap());
    assert!(!store.delete_federation(&td("a.test")).await.unwrap());
    assert!(store.get_federation(&td("a.test")).await.unwrap().is_none());
    assert!(store.delete_federation(&td("b.test")).await.unwrap());
}

async fn suite(store: Arc<dyn Datastore>) {
    federations(store.as_ref()).await;
    entries(store.as_ref()).await;
    filters(store.as_ref()).await;
    nodes_tokens_bundles_journals(store.clone()).await;
    change_feed(store.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_conforms_and_keeps_data_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("signet.db").display());
    suite(datastore::open(&url).await.unwrap()).await;

    let store = datastore::open(&url).await.unwrap();
    let kept = store
        .create_entry(entry("spiffe://example.org/kept", AGENT, &["k:1"]))
        .await
        .unwrap();
    drop(store);
    let again = datastore::open(&url).await.unwrap();
    assert_eq!(again.get_entry(&kept.id).await.unwrap().unwrap(), kept);
}

#[tokio::test]
async fn sqlite_refuses_corrupt_and_foreign_files_and_leaves_them_alone() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, vec![0x42u8; 8192]).unwrap();
    let err = datastore::open(&format!("sqlite://{}", garbage.display()))
        .await
        .unwrap_err();
    assert!(matches!(err, DatastoreError::Open { .. }), "{err}");
    assert_eq!(std::fs::read(&garbage).unwrap(), vec![0x42u8; 8192]);

    // A SQLite database of another program.
    let foreign = dir.path().join("foreign.db");
    {
        use sqlx::Connection;
        let url = format!("sqlite://{}?mode=rwc", foreign.display());
        let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query("CREATE TABLE invoices (id INTEGER)")
            .execute(&mut c)
            .await
            .unwrap();
    }
    let before = std::fs::read(&foreign).unwrap();
    let err = datastore::open(&format!("sqlite://{}", foreign.display()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not a Signet datastore"), "{err}");
    assert_eq!(
        std::fs::read(&foreign).unwrap(),
        before,
        "foreign file changed"
    );
    assert!(
        !dir.path().join("foreign.db-wal").exists(),
        "foreign file switched to WAL"
    );

    let err = datastore::open("mysql://x").await.unwrap_err();
    assert!(matches!(err, DatastoreError::Open { .. }), "{err}");
    assert!(
        err.to_string().contains("`mysql`"),
        "names the scheme: {err}"
    );
}

/// A database made by a build of schema version 1 (its exact DDL) opens and
/// is upgraded in place: its entries, nodes and change feed are kept, new
/// changes are recorded with their time, federation relationships can be
/// stored, and the version is the current one.
#[tokio::test]
async fn a_version_1_database_is_upgraded_and_keeps_its_data() {
    use sqlx::{Connection, Row};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.db");
    let url = format!("sqlite://{}", path.display());
    {
        let mut c = sqlx::SqliteConnection::connect(&format!("{url}?mode=rwc"))
            .await
            .unwrap();
        for stmt in [
            "CREATE TABLE signet_schema (version BIGINT NOT NULL)",
            "CREATE TABLE entries (id TEXT PRIMARY KEY, spiffe_id TEXT NOT NULL, parent_id TEXT NOT NULL, identity_key TEXT NOT NULL UNIQUE, node BIGINT NOT NULL, revision BIGINT NOT NULL, data TEXT NOT NULL)",
            "CREATE INDEX entries_spiffe_id ON entries (spiffe_id)",
            "CREATE INDEX entries_parent_id ON entries (parent_id)",
            "CREATE TABLE entry_selectors (entry_id TEXT NOT NULL REFERENCES entries (id) ON DELETE CASCADE, selector TEXT NOT NULL, PRIMARY KEY (entry_id, selector))",
            "CREATE INDEX entry_selectors_selector ON entry_selectors (selector)",
            "CREATE TABLE nodes (spiffe_id TEXT PRIMARY KEY, data TEXT NOT NULL)",
            "CREATE TABLE join_tokens (hash TEXT PRIMARY KEY, expires_at BIGINT NOT NULL, agent_id TEXT)",
            "CREATE TABLE bundles (trust_domain TEXT PRIMARY KEY, data TEXT NOT NULL)",
            "CREATE TABLE ca_journals (server_id TEXT PRIMARY KEY, data TEXT NOT NULL)",
            "CREATE TABLE changes (revision INTEGER PRIMARY KEY AUTOINCREMENT, data TEXT NOT NULL)",
            "INSERT INTO signet_schema (version) VALUES (1)",
            r#"INSERT INTO entries VALUES ('e1', 'spiffe://example.org/old', 'spiffe://example.org/agent', 'spiffe://example.org/old
spiffe://example.org/agent
unix:uid:1', 0, 1, '{"id":"e1","spiffe_id":"spiffe://example.org/old","parent_id":"spiffe://example.org/agent","selectors":["unix:uid:1"],"revision":1}')"#,
            "INSERT INTO entry_selectors VALUES ('e1', 'unix:uid:1')",
            r#"INSERT INTO changes (data) VALUES ('{"kind":"entry_created","entry_id":"e1","parent_id":"spiffe://example.org/agent"}')"#,
        ] {
            sqlx::query(stmt).execute(&mut c).await.unwrap();
        }
    }
    let store = datastore::open(&url).await.unwrap();
    let old = store
        .get_entry("e1")
        .await
        .unwrap()
        .expect("the v1 entry is kept");
    assert_eq!(old.spiffe_id.as_str(), "spiffe://example.org/old");
    assert_eq!(store.current_revision().await.unwrap(), 1);
    let new = store
        .create_entry(entry("spiffe://example.org/new", AGENT, &["n:1"]))
        .await
        .unwrap();
    assert_eq!(store.current_revision().await.unwrap(), 2);
    let feed = store.changes_since(0, 10).await.unwrap();
    assert!(
        matches!(&feed[0].kind, ChangeKind::EntryCreated { entry_id, .. } if entry_id == "e1"),
        "{feed:?}"
    );
    assert_eq!(feed.len(), 2);
    drop(store);
    let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let version: i64 = sqlx::query("SELECT version FROM signet_schema")
        .fetch_one(&mut c)
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, signet_server::datastore::sql::SCHEMA_VERSION);
    let stamped: i64 = sqlx::query("SELECT created_at FROM changes WHERE revision = 2")
        .fetch_one(&mut c)
        .await
        .unwrap()
        .get(0);
    assert!(
        stamped > 1_700_000_000,
        "the new change has its time: {stamped}"
    );
    drop(c);
    // Opening again finds it current and changes nothing.
    let again = datastore::open(&url).await.unwrap();
    assert_eq!(again.get_entry(&new.id).await.unwrap().unwrap(), new);
}

#[tokio::test]
async fn sqlite_refuses_a_newer_schema_and_keeps_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("signet.db");
    let url = format!("sqlite://{}", path.display());
    let kept = datastore::open(&url)
        .await
        .unwrap()
        .create_entry(entry("spiffe://example.org/kept", AGENT, &["k:1"]))
        .await
        .unwrap();
    {
        use sqlx::Connection;
        let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query("UPDATE signet_schema SET version = version + 1")
            .execute(&mut c)
            .await
            .unwrap();
    }
    let err = datastore::open(&url).await.unwrap_err();
    assert!(matches!(err, DatastoreError::Schema(_)), "{err}");
    assert!(err.to_string().contains("newer"), "{err}");
    {
        use sqlx::Connection;
        let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query("UPDATE signet_schema SET version = version - 1")
            .execute(&mut c)
            .await
            .unwrap();
    }
    let again = datastore::open(&url).await.unwrap();
    assert_eq!(again.get_entry(&kept.id).await.unwrap().unwrap(), kept);
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_in_memory_conforms() {
    suite(datastore::open("sqlite::memory:").await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_conforms_and_keeps_data_across_reopen() {
    let pg = common::postgres::Postgres::start();
    let url = pg.database("signet_conformance").await;
    suite(datastore::open(&url).await.unwrap()).await;
    let store = datastore::open(&url).await.unwrap();
    let kept = store
        .create_entry(entry("spiffe://example.org/kept", AGENT, &["k:1"]))
        .await
        .unwrap();
    drop(store);
    assert_eq!(
        datastore::open(&url)
            .await
            .unwrap()
            .get_entry(&kept.id)
            .await
            .unwrap()
            .unwrap(),
        kept
    );

    // Two servers on one database: a duplicate raced from both is refused once.
    let (s1, s2) = (
        datastore::open(&url).await.unwrap(),
        datastore::open(&url).await.unwrap(),
    );
    let e = entry("spiffe://example.org/raced", AGENT, &["r:1"]);
    let (r1, r2) = tokio::join!(s1.create_entry(e.clone()), s2.create_entry(e));
    assert!(
        r1.is_ok() != r2.is_ok(),
        "exactly one server creates it: {r1:?} {r2:?}"
    );

    // A database of another program is left alone.
    let other = pg.database("someone_else").await;
    {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&other).await.unwrap();
        sqlx::query("CREATE TABLE invoices (id INTEGER)")
            .execute(&mut c)
            .await
            .unwrap();
    }
    let err = datastore::open(&other).await.unwrap_err();
    assert!(err.to_string().contains("not a Signet datastore"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_several_servers_share_one_database() {
    let pg = common::postgres::Postgres::start();
    let url = pg.database("signet_shared").await;

    // Servers starting together on an empty database: one creates the
    // schema, the others find it.
    let opening: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { datastore::open(&url).await })
        })
        .collect();
    let mut stores: Vec<Arc<dyn Datastore>> = Vec::new();
    for o in opening {
        stores.push(o.await.unwrap().unwrap());
    }
    let (s1, s2) = (stores[0].clone(), stores[1].clone());

    // A join token taken from both servers at once is taken once.
    let token = JoinToken {
        hash: "shared".into(),
        expires_at: 50,
        agent_id: None,
    };
    s1.create_join_token(&token).await.unwrap();
    let mut racers = Vec::new();
    for i in 0..20 {
        let s = stores[i % stores.len()].clone();
        racers.push(tokio::spawn(async move {
            s.take_join_token("shared").await.unwrap()
        }));
    }
    let mut won = 0;
    for r in racers {
        won += usize::from(r.await.unwrap().is_some());
    }
    assert_eq!(won, 1, "exactly one taker across servers");

    // A follower polling the feed while two servers write sees every
    // change, in revision order, with no revision appearing late.
    let start = s1.current_revision().await.unwrap();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let follower = {
        let store = stores[2].clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut last = start;
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                let batch = store.changes_since(last, 1000).await.unwrap();
                for c in batch {
                    assert!(c.revision > last);
                    last = c.revision;
                    seen.push(c);
                }
                if finished {
                    return seen;
                }
                tokio::task::yield_now().await;
            }
        })
    };
    let mut writers = Vec::new();
    for w in 0..8 {
        let store = if w % 2 == 0 { s1.clone() } else { s2.clone() };
        writers.push(tokio::spawn(async move {
            for i in 0..15 {
                let e = store
                    .create_entry(entry(
                        &format!("spiffe://example.org/w{w}/{i}"),
                        AGENT,
                        &["m:1"],
                    ))
                    .await
                    .unwrap();
                if i % 3 == 0 {
                    store.delete_entry(&e.id).await.unwrap();
                }
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = follower.await.unwrap();
    let all = s2.changes_since(start, 10_000).await.unwrap();
    assert_eq!(all.len(), 8 * (15 + 5));
    assert_eq!(seen, all, "the follower missed or reordered changes");

    // Concurrent deletes of one entry: one wins, the other finds nothing.
    let e = s1
        .create_entry(entry("spiffe://example.org/deleted-twice", AGENT, &["d:1"]))
        .await
        .unwrap();
    let (d1, d2) = tokio::join!(s1.delete_entry(&e.id), s2.delete_entry(&e.id));
    assert!(d1.is_ok() != d2.is_ok(), "{d1:?} {d2:?}");
    let deletions = s1
        .changes_since(all.last().unwrap().revision, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|c| matches!(c.kind, ChangeKind::EntryDeleted { .. }))
        .count();
    assert_eq!(deletions, 1);

    // A newer schema (written by a newer signet) is refused.
    {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::query("UPDATE signet_schema SET version = version + 1")
            .execute(&mut c)
            .await
            .unwrap();
    }
    let err = datastore::open(&url).await.unwrap_err();
    assert!(err.to_string().contains("newer"), "{err}");
}

/// A change written through one server wakes the others as it commits
/// (LISTEN/NOTIFY), rather than at their next poll; SQLite, written by one
/// process only, has nothing to listen to.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_writes_wake_the_other_servers() {
    use tokio_stream::StreamExt;
    let pg = common::postgres::Postgres::start();
    let url = pg.database("signet_notify").await;
    let writer = datastore::open(&url).await.unwrap();
    let follower = datastore::open(&url).await.unwrap();
    let mut wakes = follower
        .change_notifications()
        .await
        .expect("PostgreSQL can be listened to");
    let deadline = signet_testkit::DEADLINE;

    writer
        .create_entry(entry(
            "spiffe://example.org/notified",
            AGENT,
            &["unix:uid:7"],
        ))
        .await
        .unwrap();
    tokio::time::timeout(deadline, wakes.next())
        .await
        .expect("a notification for the committed change")
        .expect("the stream goes on");

    // And for every later one.
    writer
        .create_entry(entry("spiffe://example.org/again", AGENT, &["unix:uid:8"]))
        .await
        .unwrap();
    tokio::time::timeout(deadline, wakes.next())
        .await
        .expect("a notification for the second change")
        .expect("the stream goes on");

    let dir = tempfile::tempdir().unwrap();
    let sqlite = datastore::open(&format!(
        "sqlite://{}",
        dir.path().join("d.sqlite3").display()
    ))
    .await
    .unwrap();
    assert!(sqlite.change_notifications().await.is_none());
}
