//! Signet in one process, wired as `signet run` wires it: a server and
//! its local agent started through the shipped entry points
//! (`signet_server::start`, `signet_agent::start`), Envoy SDS beside the
//! Workload API on the agent socket, and an entry for this process's uid
//! whose SVID the agent already holds. For tests and benches that need a
//! real agent without a child process.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use signet_agent::AgentConfig;
use signet_identity::{Entry, Selector, SpiffeId, TrustDomain};
use signet_sds::{SdsOptions, SdsService};
use signet_server::{RunConfig, Server};

#[derive(Debug)]
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub server: Arc<Server>,
    pub sock: PathBuf,
    pub entry: Entry,
    /// The local agent's SPIFFE ID (the parent of entries it serves).
    pub agent_id: SpiffeId,
    _stop: tokio::sync::watch::Sender<bool>,
    _running: (signet_server::Running, signet_agent::Running),
}

/// [`start_for`] with an entry at `/envoy`.
pub async fn start() -> Setup {
    start_for("/envoy").await
}

/// A server and its local agent, started as `signet run` starts them,
/// with an entry at `path` for this process's uid.
///
/// # Panics
/// When any part cannot start: this is test support.
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub async fn start_for(path: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let td = TrustDomain::parse("example.org").unwrap();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let server = signet_server::start(
        RunConfig::in_dir(td.clone(), &dir.path().join("server")),
        stop_rx.clone(),
    )
    .await
    .unwrap();
    let agent_id = td.id_with_path(signet_server::LOCAL_AGENT_PATH).unwrap();
    let issued = server.server.attest_local_agent(&agent_id).await.unwrap();
    let config = AgentConfig::local(
        server.node_addr,
        issued.1.clone(),
        signet_agent::DEFAULT_SVID_CACHE_SIZE,
    );
    let sock = dir.path().join("agent.sock");
    let agent = signet_agent::start(
        config,
        Some(issued),
        sock.clone(),
        SdsService::on_agent_socket(SdsOptions::default()),
        stop_rx,
    )
    .await
    .unwrap();
    let handle = agent.handle.clone();
    let sel = Selector::parse(&format!("unix:uid:{}", signet_testkit::uid())).unwrap();
    let entry = server
        .server
        .create_entry(Entry::new(
            td.id_with_path(path).unwrap(),
            agent_id.clone(),
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
        server: server.server.clone(),
        sock,
        entry,
        agent_id,
        _stop: stop,
        _running: (server, agent),
    }
}
