//! The one retry schedule every Signet client uses: exponential, capped,
//! and jittered, so that 1,000 agents (or workloads) that lost the same
//! server do not come back in lockstep.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// Exponential backoff with "equal jitter": each delay is half the current
/// step plus a random part of the other half, and the step doubles up to a
/// cap. [`Backoff::reset`] after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    /// Steps from `min`, doubling, up to `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            step: min,
        }
    }

    /// The delay before the next attempt (in `[step/2, step]`), then doubles
    /// the step.
    pub fn next_delay(&mut self) -> Duration {
        let half = self.step / 2;
        let jitter = half.mul_f64(random_unit());
        let delay = half + jitter;
        self.step = (self.step * 2).min(self.max);
        delay
    }

    /// The step the next delay is drawn from (for logs).
    pub fn step(&self) -> Duration {
        self.step
    }

    /// Back to the first step, after a success.
    pub fn reset(&mut self) {
        self.step = self.min;
    }

    /// Changes the cap (a client waiting for its first identity retries
    /// sooner than one that has one); the current step is capped too.
    pub fn set_max(&mut self, max: Duration) {
        self.max = max.max(self.min);
        self.step = self.step.min(self.max);
    }
}

/// A uniform number in [0, 1) from the standard library's per-process
/// random hash keys (no generator crate for a jitter).
fn random_unit() -> f64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_within_their_jitter_and_stop_at_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let mut step = Duration::from_millis(100);
        for _ in 0..8 {
            let d = b.next_delay();
            assert!(
                d >= step / 2 && d <= step,
                "{d:?} outside [{:?}, {step:?}]",
                step / 2
            );
            step = (step * 2).min(Duration::from_secs(1));
        }
        assert_eq!(b.step(), Duration::from_secs(1));
        b.reset();
        assert_eq!(b.step(), Duration::from_millis(100));
        b.set_max(Duration::from_millis(50));
        assert_eq!(b.step(), Duration::from_millis(100), "never below min");
    }

    #[test]
    fn two_clients_do_not_retry_in_lockstep() {
        let delays = |_| {
            let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
            (0..6).map(|_| b.next_delay()).collect::<Vec<_>>()
        };
        let runs: Vec<Vec<Duration>> = (0..8).map(delays).collect();
        let distinct = runs
            .iter()
            .enumerate()
            .all(|(i, a)| runs[i + 1..].iter().all(|b| a != b));
        assert!(distinct, "identical schedules: {runs:?}");
    }
}
