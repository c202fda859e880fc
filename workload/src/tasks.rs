//! The long-running tasks of a service (the server's, the agent's): each
//! runs until the stop; one that ends before it is a failure of the
//! service. [`run_until`] is how every service runs until SIGTERM.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

/// Resolves once `stop` turns true, or its sender is gone: the stop signal
/// every long-running task takes.
pub async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// A service's tasks.
#[derive(Debug)]
pub struct Tasks<E> {
    set: JoinSet<Result<(), E>>,
}

impl<E> Default for Tasks<E> {
    fn default() -> Self {
        Self {
            set: JoinSet::new(),
        }
    }
}

impl<E: Send + 'static> Tasks<E> {
    pub fn spawn(&mut self, task: impl Future<Output = Result<(), E>> + Send + 'static) {
        self.set.spawn(task);
    }

    /// Resolves when a task ends: with its error, or with why it ended
    /// without one (it returned, or panicked). Pending while all run.
    pub async fn ended(&mut self) -> Result<E, String> {
        match self.set.join_next().await {
            Some(Ok(Err(e))) => Ok(e),
            Some(Ok(Ok(()))) => Err("a task stopped unexpectedly".into()),
            Some(Err(e)) => Err(format!("a task panicked: {e}")),
            None => std::future::pending().await,
        }
    }

    /// After the stop: waits up to `within` for every task to end (they
    /// finish the calls in flight); says whether they all did.
    pub async fn drain(&mut self, within: Duration) -> bool {
        let all = async { while self.set.join_next().await.is_some() {} };
        tokio::time::timeout(within, all).await.is_ok()
    }
}

/// A started service.
pub trait Service: Sized {
    type Error;
    /// Resolves when the service fails (a task ended before the stop).
    fn failed(&mut self) -> impl Future<Output = Self::Error>;
    /// After the stop: lets calls in flight finish, then cleans up.
    fn drain(self) -> impl Future<Output = ()>;
}

/// Runs the service `start` starts (with the receiving end of `stop`)
/// until `shutdown` resolves or it fails; `ready` is called once it
/// serves. Then sends the stop and drains it.
pub async fn run_until<S: Service>(
    start: impl Future<Output = Result<S, S::Error>>,
    stop: watch::Sender<bool>,
    ready: impl FnOnce(&S),
    shutdown: impl Future<Output = ()>,
) -> Result<(), S::Error> {
    let mut service = start.await?;
    ready(&service);
    let result = tokio::select! {
        _ = shutdown => {
            tracing::info!("shutting down");
            Ok(())
        }
        e = service.failed() => Err(e),
    };
    let _ = stop.send(true);
    service.drain().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_ends_before_the_stop_is_a_failure() {
        let mut tasks: Tasks<String> = Tasks::default();
        tasks.spawn(std::future::pending());
        tasks.spawn(async { Err("admin API: address in use".to_string()) });
        assert_eq!(
            tasks.ended().await,
            Ok("admin API: address in use".to_string())
        );
        tasks.spawn(async { Ok(()) });
        assert_eq!(
            tasks.ended().await,
            Err("a task stopped unexpectedly".to_string())
        );
        // The pending task outlives a short drain.
        assert!(!tasks.drain(Duration::from_millis(10)).await);
    }

    #[tokio::test]
    async fn tasks_that_honour_the_stop_drain() {
        let (stop, rx) = watch::channel(false);
        let mut tasks: Tasks<String> = Tasks::default();
        for _ in 0..3 {
            let rx = rx.clone();
            tasks.spawn(async move {
                stopped(rx).await;
                Ok(())
            });
        }
        stop.send(true).unwrap();
        assert!(tasks.drain(Duration::from_secs(10)).await);
    }
}
