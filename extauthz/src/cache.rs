//! Decisions remembered by what they depend on.
//!
//! A Check's input carries per-request values (the request id, timestamps,
//! ports), so it is never the same twice; but a policy that reads only
//! the method, the path and the caller decides the same for every request
//! that agrees on those. [`signet_policy::Policy::cache_key`] gives that
//! part of the input when the decision depends on nothing else (no clock,
//! chance or network), and this cache keeps the policy's result under it
//! and the revision, so a reload never serves a stale decision. Only
//! results are kept, never errors.
//!
//! Bounded: a shard that fills up is emptied (the working set of a mesh is
//! its routes times its callers, far below the bound, so this is rare).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;

use foldhash::fast::RandomState;
use serde_json::Value;

const SHARDS: usize = 16;

/// (revision, key as JSON text) -> the policy's result (`None`: undefined).
type Shard = HashMap<(String, String), Option<Value>>;

#[derive(Debug)]
pub(crate) struct ResultCache {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
    hasher: RandomState,
}

impl ResultCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            hasher: RandomState::default(),
        }
    }

    fn shard(&self, key: &(String, String)) -> &Mutex<Shard> {
        // The modulo keeps the index in range.
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    pub(crate) fn key(revision: &str, key: &Value) -> (String, String) {
        (revision.to_owned(), key.to_string())
    }

    pub(crate) fn get(&self, key: &(String, String)) -> Option<Option<Value>> {
        let shard = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
        shard.get(key).cloned()
    }

    pub(crate) fn put(&self, key: (String, String), result: Option<Value>) {
        let mut shard = self.shard(&key).lock().unwrap_or_else(|e| e.into_inner());
        if shard.len() >= self.per_shard {
            shard.clear();
        }
        shard.insert(key, result);
    }

    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }
}
