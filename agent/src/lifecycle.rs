//! An agent as `signet agent` runs it: attested (or handed its identity,
//! inside `signet run`), its loop running, the agent socket bound
//! world-connectable and serving the Workload API plus the services the
//! caller adds (Envoy SDS), the socket watched and, at exit, removed if it
//! is still ours. `signet agent`, `signet run`, the benches and the SDS
//! tests all start an agent through [`start`].

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use signet_identity::{Bundle, X509Svid};
use signet_workload::tasks::{Service, Tasks, run_until, stopped};
use tokio::sync::watch;
use tonic::service::Routes;

use crate::attest::UnixAttestor;
use crate::workload_api::{WorkloadApi, bind_agent_socket};
use crate::{AgentConfig, AgentError, AgentHandle};

/// How long in-flight calls get to finish after a stop.
const DRAIN: Duration = Duration::from_secs(10);

/// The services served on the agent socket beside the Workload API, built
/// from the agent's handle and its workload attestor (Envoy SDS is one).
pub type ExtraServices = Box<dyn FnOnce(&AgentHandle, &Arc<UnixAttestor>) -> Routes + Send>;

/// A started agent: its tasks run until the `stop` given to [`start`]
/// turns true, or one of them fails ([`Service::failed`]).
#[derive(Debug)]
pub struct Running {
    pub handle: AgentHandle,
    pub socket: PathBuf,
    socket_identity: Option<signet_unix::SocketIdentity>,
    tasks: Tasks<AgentError>,
}

/// Starts an agent: returns once it has an identity and its socket is
/// bound. `preissued`: the identity its server handed it in process
/// (`signet run`); otherwise it attests as `config.attestation` says, or
/// resumes the identity kept in its data dir.
pub async fn start(
    config: AgentConfig,
    preissued: Option<(X509Svid, Bundle)>,
    socket: PathBuf,
    extra: ExtraServices,
    stop: watch::Receiver<bool>,
) -> Result<Running, AgentError> {
    let (handle, agent_task) = crate::spawn(config, preissued, stop.clone()).await?;
    let listener = bind_agent_socket(&socket).map_err(|e| AgentError::Socket {
        path: socket.clone(),
        reason: e.to_string(),
    })?;
    let socket_identity = signet_unix::socket_identity(&socket);
    let attestor = Arc::new(UnixAttestor::default());
    let routes = extra(&handle, &attestor)
        .add_service(WorkloadApi::new(handle.clone(), attestor).into_service());
    let mut tasks = Tasks::default();
    tasks.spawn({
        let stop = stop.clone();
        async move {
            let _ = agent_task.await;
            if *stop.borrow() {
                Ok(())
            } else {
                Err(AgentError::Stopped("the agent loop ended".into()))
            }
        }
    });
    tasks.spawn({
        let stop = stopped(stop.clone());
        async move {
            tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(Duration::from_secs(30)))
                .add_routes(routes)
                .serve_with_incoming_shutdown(signet_unix::incoming(listener), stop)
                .await
                .map_err(|e| AgentError::Stopped(format!("agent socket: {e}")))
        }
    });
    tasks.spawn({
        let path = socket.clone();
        let stop = stopped(stop);
        async move {
            signet_unix::watch_socket(path, socket_identity, stop).await;
            Ok(())
        }
    });
    Ok(Running {
        handle,
        socket,
        socket_identity,
        tasks,
    })
}

impl Service for Running {
    type Error = AgentError;

    async fn failed(&mut self) -> AgentError {
        self.tasks.ended().await.unwrap_or_else(AgentError::Stopped)
    }

    /// Waits up to 10 s for in-flight calls, then removes the agent socket
    /// if it is still ours.
    async fn drain(mut self) {
        if !self.tasks.drain(DRAIN).await {
            tracing::warn!("agent drain took longer than 10 s; stopping anyway");
        }
        signet_unix::remove_if_ours(&self.socket, self.socket_identity);
    }
}

/// Runs an agent until `shutdown` resolves (then drains) or a task fails;
/// `ready` is called once it serves.
pub async fn run(
    config: AgentConfig,
    socket: PathBuf,
    extra: ExtraServices,
    ready: impl FnOnce(&Running),
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let (stop, stop_rx) = watch::channel(false);
    let started = start(config, None, socket, extra, stop_rx);
    run_until(started, stop, ready, shutdown).await
}
