//! What workloads ask the agent for: which entries have open streams
//! (never evicted from the cache) and when each SVID was last served.

use std::collections::HashMap;
use std::sync::Arc;

/// What workloads are asking for: entries with open streams (never
/// evicted) and when each entry's SVID was last served.
#[derive(Debug, Default)]
pub struct Demand {
    state: std::sync::Mutex<DemandState>,
    /// Wakes the agent to mint an entry a workload waits for.
    pub(crate) wake: tokio::sync::Notify,
}

#[derive(Debug, Default)]
pub(crate) struct DemandState {
    pub(crate) streaming: HashMap<String, usize>,
    pub(crate) last_served: HashMap<String, std::time::Instant>,
}

impl Demand {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, DemandState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records that `ids` were just served or wanted; wakes the agent when
    /// one of them has no SVID yet.
    pub fn touch(&self, ids: &[String], missing: bool) {
        let now = std::time::Instant::now();
        let mut st = self.lock();
        for id in ids {
            st.last_served.insert(id.clone(), now);
        }
        drop(st);
        if missing {
            self.wake.notify_one();
        }
    }

    pub(crate) fn is_streaming(&self, id: &str) -> bool {
        self.lock().streaming.get(id).is_some_and(|n| *n > 0)
    }
}

/// Registers the entries one workload stream is serving; unregisters them
/// when dropped.
#[derive(Debug)]
pub struct StreamDemand {
    demand: Arc<Demand>,
    ids: Vec<String>,
}

impl StreamDemand {
    pub fn new(demand: Arc<Demand>) -> Self {
        Self {
            demand,
            ids: Vec::new(),
        }
    }

    /// Replaces the set of entries this stream serves.
    pub fn set(&mut self, ids: Vec<String>) {
        if ids == self.ids {
            return;
        }
        let mut st = self.demand.lock();
        for id in &self.ids {
            if let Some(n) = st.streaming.get_mut(id) {
                *n = n.saturating_sub(1);
            }
        }
        for id in &ids {
            *st.streaming.entry(id.clone()).or_default() += 1;
        }
        st.streaming.retain(|_, n| *n > 0);
        drop(st);
        self.ids = ids;
    }
}

impl Drop for StreamDemand {
    fn drop(&mut self) {
        self.set(Vec::new());
    }
}
