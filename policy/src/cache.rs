//! Connection-level decision cache and the decision audit record.
//!
//! A connection's decision depends on who the peer is, who we are, the
//! addresses and the TLS parameters, not on the peer's ephemeral source
//! port. The cache key is the input without that field, plus the policy
//! revision, so a reload can never serve a stale decision; `clear` frees the
//! old revision's entries. Only clean decisions are cached: a deny caused by
//! an error, deadline or memory overrun is re-evaluated next time.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;

use serde_json::{Value, json};

use crate::{Decision, Policy};

const SHARDS: usize = 16;

/// A bounded, sharded cache of connection-level decisions.
#[derive(Debug)]
pub struct DecisionCache {
    shards: Vec<Mutex<HashMap<String, Decision>>>,
    per_shard: usize,
    hasher: RandomState,
}

/// The per-connection field left out of the cache key.
const PER_CONNECTION: &[&str] = &[
    "attributes",
    "source",
    "address",
    "socketAddress",
    "portValue",
];

/// Writes `v` as compact JSON into `out`, leaving out the object member at
/// `skip` (a path from `v`). serde_json's `Map` is ordered (BTreeMap), so the
/// text is canonical.
fn write_without(out: &mut Vec<u8>, v: &Value, skip: Option<&[&str]>) {
    match (v, skip) {
        (Value::Object(obj), Some([head, rest @ ..])) => {
            out.push(b'{');
            let mut first = true;
            for (k, child) in obj {
                let child_skip = if k == head {
                    if rest.is_empty() {
                        continue;
                    }
                    Some(rest)
                } else {
                    None
                };
                if !first {
                    out.push(b',');
                }
                first = false;
                // Writing JSON into a Vec cannot fail.
                let _ = serde_json::to_writer(&mut *out, k);
                out.push(b':');
                write_without(out, child, child_skip);
            }
            out.push(b'}');
        }
        _ => {
            let _ = serde_json::to_writer(&mut *out, v);
        }
    }
}

impl DecisionCache {
    /// A cache holding up to about `capacity` decisions.
    pub fn new(capacity: usize) -> Self {
        DecisionCache {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            hasher: RandomState::new(),
        }
    }

    /// The cache key: revision + canonical input without per-connection fields.
    pub fn key(input: &Value, revision: &str) -> String {
        let mut out = Vec::with_capacity(revision.len() + 512);
        out.extend_from_slice(revision.as_bytes());
        out.push(b'\n');
        write_without(&mut out, input, Some(PER_CONNECTION));
        // Only JSON text and the (hex) revision were written: valid UTF-8.
        String::from_utf8(out)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }

    fn shard(&self, key: &str) -> &Mutex<HashMap<String, Decision>> {
        let i = (self.hasher.hash_one(key) as usize) % SHARDS;
        // `i < SHARDS == self.shards.len()` by construction.
        &self.shards[i]
    }

    /// The cached decision for `input` under `policy`, or a fresh evaluation
    /// (cached when it completed cleanly).
    pub fn evaluate(&self, policy: &Policy, input: &Value) -> Decision {
        let key = Self::key(input, policy.revision());
        let shard = self.shard(&key);
        if let Some(d) = shard.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return d;
        }
        let (decision, clean) = policy.evaluate_checked(input);
        if clean && let Ok(mut m) = shard.lock() {
            if m.len() >= self.per_shard {
                m.clear();
            }
            m.insert(key, decision.clone());
        }
        decision
    }

    /// Drops every entry (on reload).
    pub fn clear(&self) {
        for s in &self.shards {
            if let Ok(mut m) = s.lock() {
                m.clear();
            }
        }
    }

    /// Number of cached decisions.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
            .sum()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One audit record (a JSON line): who, to whom, the decision, why, which
/// policy revision, how long.
pub fn audit_record(decision: &Decision, input: &Value) -> Value {
    let peer = input
        .pointer("/spiffe/peer_id")
        .or_else(|| input.pointer("/attributes/source/principal"));
    let own = input
        .pointer("/spiffe/own_id")
        .or_else(|| input.pointer("/attributes/destination/principal"));
    let mut rec = json!({
        "peer": peer,
        "own_id": own,
        "decision": if decision.allow { "allow" } else { "deny" },
        "reason": decision.reason,
        "revision": decision.revision,
        "eval_us": u64::try_from(decision.eval_time.as_micros()).unwrap_or(u64::MAX),
    });
    if let Some(http) = input.pointer("/attributes/request/http")
        && let Some(obj) = rec.as_object_mut()
    {
        obj.insert(
            "method".into(),
            http.get("method").cloned().unwrap_or(Value::Null),
        );
        obj.insert(
            "path".into(),
            http.get("path").cloned().unwrap_or(Value::Null),
        );
    }
    rec
}

/// Emits the audit record as a `tracing` event (target `signet::policy::audit`).
pub fn audit(decision: &Decision, input: &Value) {
    // The record is built only when someone listens.
    if !tracing::enabled!(target: "signet::policy::audit", tracing::Level::INFO) {
        return;
    }
    let rec = audit_record(decision, input);
    tracing::info!(target: "signet::policy::audit", record = %rec, allow = decision.allow, revision = %decision.revision, "policy decision");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PolicyOptions;

    #[test]
    fn key_ignores_source_port_only() {
        let a = json!({"attributes": {"source": {"address": {"socketAddress": {"address": "10.0.0.1", "portValue": 1}}}}});
        let b = json!({"attributes": {"source": {"address": {"socketAddress": {"address": "10.0.0.1", "portValue": 2}}}}});
        let c = json!({"attributes": {"source": {"address": {"socketAddress": {"address": "10.0.0.2", "portValue": 2}}}}});
        assert_eq!(DecisionCache::key(&a, "r"), DecisionCache::key(&b, "r"));
        assert_ne!(DecisionCache::key(&a, "r"), DecisionCache::key(&c, "r"));
        assert_ne!(DecisionCache::key(&a, "r"), DecisionCache::key(&a, "s"));
        // Exactly the source port is left out; the destination port stays.
        let d = json!({"attributes": {"destination": {"address": {"socketAddress": {"portValue": 1}}},
                                      "source": {"address": {"socketAddress": {"address": "a", "portValue": 9}}}}, "z": [1]});
        let e = json!({"attributes": {"destination": {"address": {"socketAddress": {"portValue": 2}}},
                                      "source": {"address": {"socketAddress": {"address": "a"}}}}, "z": [1]});
        assert_eq!(
            DecisionCache::key(&d, "r"),
            "r\n{\"attributes\":{\"destination\":{\"address\":{\"socketAddress\":{\"portValue\":1}}},\"source\":{\"address\":{\"socketAddress\":{\"address\":\"a\"}}}},\"z\":[1]}"
        );
        assert_ne!(DecisionCache::key(&d, "r"), DecisionCache::key(&e, "r"));
    }

    #[test]
    fn caches_clean_decisions_only() {
        let p = Policy::from_rego(
            "package signet.authz\nimport rego.v1\nallow if input.spiffe.peer_id == \"spiffe://a/b\"\nallow if 1 / input.zero\n",
            &PolicyOptions::default(),
        )
        .unwrap();
        let cache = DecisionCache::new(100);
        let ok = json!({"spiffe": {"peer_id": "spiffe://a/b"}});
        assert!(cache.evaluate(&p, &ok).allow);
        assert!(cache.evaluate(&p, &ok).allow);
        assert_eq!(cache.len(), 1);
        cache.clear();
        assert!(cache.is_empty());
        let rec = audit_record(&p.evaluate(&ok), &ok);
        assert_eq!(rec["peer"], "spiffe://a/b");
        assert_eq!(rec["decision"], "allow");
        assert_eq!(rec["revision"], p.revision());
    }
}
