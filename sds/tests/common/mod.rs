//! One process wired like `signet agent` with SDS: server, loopback mTLS
//! agent API, local agent, SDS on a Unix socket, and an entry for this
//! process's uid. Shared by the SDS tests and benchmark.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use signet_agent as agent;
use signet_agent::attest::UnixAttestor;
use signet_agent::workload_api::bind_agent_socket;
use signet_identity::{Entry, Selector, TrustDomain};
use signet_sds::{SdsOptions, SdsService};
use signet_server::attest::node::NodeAttestor;
use signet_server::key_manager::memory::MemoryKeyManager;
use signet_server::node::serve_node;
use signet_server::{Server, ServerConfig};
use signet_server::{SystemClock, datastore};

pub struct Setup {
    pub dir: tempfile::TempDir,
    pub server: Arc<Server>,
    pub sock: PathBuf,
    pub entry: Entry,
    _stop: tokio::sync::watch::Sender<bool>,
}

pub async fn start() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store = datastore::open(&format!("sqlite://{}", dir.path().join("sds.db").display()))
        .await
        .unwrap();
    let td = TrustDomain::parse("example.org").unwrap();
    let server = Server::start(
        ServerConfig::new(td.clone()),
        store,
        Arc::new(SystemClock),
        Arc::new(MemoryKeyManager::default()),
        None,
    )
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_node(
        server.clone(),
        Vec::<Arc<dyn NodeAttestor>>::new(),
        listener,
        std::future::pending(),
    ));
    {
        let server = server.clone();
        tokio::spawn(async move {
            server
                .follow_changes(Duration::from_secs(1), std::future::pending())
                .await
        });
    }
    let agent_id = td.id_with_path("/signet/agent/local").unwrap();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let (handle, _task) = agent::start_local(
        server.attest_local_agent(&agent_id).await.unwrap(),
        addr,
        agent::DEFAULT_SVID_CACHE_SIZE,
        stop_rx,
    )
    .await
    .unwrap();
    let sock = dir.path().join("agent.sock");
    let l = bind_agent_socket(&sock).unwrap();
    let sds = SdsService::new(
        handle.clone(),
        Arc::new(UnixAttestor::default()),
        SdsOptions::default(),
    );
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(sds.into_service())
            .serve_with_incoming(signet_unix::incoming(l)),
    );
    let sel = Selector::parse(&format!("unix:uid:{}", signet_testkit::uid())).unwrap();
    let entry = server
        .create_entry(Entry::new(
            td.id_with_path("/envoy").unwrap(),
            agent_id,
            vec![sel],
        ))
        .await
        .unwrap();
    // Tests start from an agent that holds the entry's SVID, so a first
    // response never races its minting.
    let mut snapshots = handle.snapshot();
    tokio::time::timeout(
        Duration::from_secs(30),
        snapshots.wait_for(|s| s.svids.contains_key(&entry.id)),
    )
    .await
    .expect("the agent mints the entry's SVID")
    .unwrap();
    Setup {
        dir,
        server,
        sock,
        entry,
        _stop: stop,
    }
}
