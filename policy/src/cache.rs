//! Connection-level decision cache and the decision audit record.
//!
//! A connection's decision depends on who the peer is, who we are, the
//! addresses and the TLS parameters, not on the peer's ephemeral source
//! port. The cache key is the input without that field, plus the policy
//! revision, so a reload can never serve a stale decision; `clear` frees the
//! old revision's entries. Only clean decisions are cached: a deny caused by
//! an error, deadline or memory overrun is re-evaluated next time.
//!
//! A lookup hashes the input in place (no key text is built) with a
//! randomly seeded hash (foldhash), then compares the stored input field by field, so two inputs share
//! a decision only when they are equal apart from the source port: a hash
//! collision can cost a miss, never a wrong decision.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};

use foldhash::fast::RandomState;
use std::sync::Mutex;

use serde_json::{Value, json};

use crate::{Decision, Policy};

const SHARDS: usize = 16;

/// One cached decision: the input it was made for (its source port is not
/// compared) under one policy revision.
#[derive(Debug)]
struct Cached {
    revision: String,
    input: Value,
    decision: Decision,
}

/// A shard: entries by hash (a bucket holds the rare collisions).
#[derive(Debug, Default)]
struct Shard {
    by_hash: HashMap<u64, Vec<Cached>>,
    len: usize,
}

/// A bounded, sharded cache of connection-level decisions.
#[derive(Debug)]
pub struct DecisionCache {
    shards: Vec<Mutex<Shard>>,
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

/// The input fields a cache bucket is chosen by.
const BUCKET_FIELDS: [&[&str]; 4] = [
    &["attributes", "source", "principal"],
    &["attributes", "destination", "principal"],
    &[
        "attributes",
        "source",
        "address",
        "socketAddress",
        "address",
    ],
    &["attributes", "destination", "address"],
];

/// The value at `path` (object members only), without allocating.
fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

/// The most entries one bucket holds.
const BUCKET: usize = 8;

/// Where `skip` leads below the member `key`: `None` when that member is
/// the one to leave out, else the rest of the path (or no path).
fn descend<'a>(key: &str, skip: Option<&'a [&'a str]>) -> Option<Option<&'a [&'a str]>> {
    match skip {
        Some([head, rest @ ..]) if key == *head => (!rest.is_empty()).then_some(Some(rest)),
        _ => Some(None),
    }
}

/// Feeds `v` into `h`, leaving out the object member at path `skip`. Every
/// value is tagged and delimited, so distinct documents feed distinct
/// streams.
fn hash_without(h: &mut impl Hasher, v: &Value, skip: Option<&[&str]>) {
    match v {
        Value::Null => h.write_u8(0),
        Value::Bool(b) => h.write_u8(if *b { 2 } else { 1 }),
        Value::Number(n) => {
            h.write_u8(3);
            if let Some(i) = n.as_i64() {
                h.write_i64(i);
            } else if let Some(u) = n.as_u64() {
                h.write_u64(u);
            } else {
                h.write_u64(n.as_f64().unwrap_or(f64::NAN).to_bits());
            }
        }
        Value::String(s) => {
            h.write_u8(4);
            h.write_usize(s.len());
            h.write(s.as_bytes());
        }
        Value::Array(items) => {
            h.write_u8(5);
            h.write_usize(items.len());
            for item in items {
                hash_without(h, item, None);
            }
        }
        Value::Object(obj) => {
            h.write_u8(6);
            for (k, child) in obj {
                let Some(child_skip) = descend(k, skip) else {
                    continue;
                };
                h.write_usize(k.len());
                h.write(k.as_bytes());
                hash_without(h, child, child_skip);
            }
            h.write_u8(7);
        }
    }
}

/// `a == b` leaving out the object member at path `skip` on both sides.
fn eq_without(a: &Value, b: &Value, skip: Option<&[&str]>) -> bool {
    match (a, b, skip) {
        (Value::Object(x), Value::Object(y), Some(_)) => {
            let mut xs = x.iter().filter(|(k, _)| descend(k, skip).is_some());
            let mut ys = y.iter().filter(|(k, _)| descend(k, skip).is_some());
            loop {
                match (xs.next(), ys.next()) {
                    (None, None) => return true,
                    (Some((kx, vx)), Some((ky, vy))) => {
                        if kx != ky || !eq_without(vx, vy, descend(kx, skip).flatten()) {
                            return false;
                        }
                    }
                    _ => return false,
                }
            }
        }
        _ => a == b,
    }
}

impl DecisionCache {
    /// A cache holding up to about `capacity` decisions.
    pub fn new(capacity: usize) -> Self {
        DecisionCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            hasher: RandomState::default(),
        }
    }

    /// The bucket of `input` under `revision`: a seeded hash of the fields
    /// that tell connections apart (both principals, the source address,
    /// the destination), not of the whole input. Inputs that differ only
    /// elsewhere share a bucket; the field-by-field comparison tells them
    /// apart, and a bucket holds at most `BUCKET` entries.
    fn hash(&self, input: &Value, revision: &str) -> u64 {
        let mut h = self.hasher.build_hasher();
        h.write(revision.as_bytes());
        for field in BUCKET_FIELDS {
            h.write_u8(0xff);
            if let Some(v) = at(input, field) {
                hash_without(&mut h, v, None);
            }
        }
        h.finish()
    }

    /// Whether two inputs share a cache entry (equal but for the source port).
    pub fn same_key(a: &Value, b: &Value) -> bool {
        eq_without(a, b, Some(PER_CONNECTION))
    }

    /// The cached decision for `input` under `policy`, or a fresh evaluation
    /// (cached when it completed cleanly).
    pub fn evaluate(&self, policy: &Policy, input: &Value) -> Decision {
        let revision = policy.revision();
        let hash = self.hash(input, revision);
        // `hash % SHARDS < SHARDS == self.shards.len()` by construction.
        let shard = &self.shards[(hash as usize) % SHARDS];
        if let Ok(s) = shard.lock()
            && let Some(hit) = s.by_hash.get(&hash).and_then(|bucket| {
                bucket
                    .iter()
                    .find(|c| c.revision == revision && Self::same_key(&c.input, input))
            })
        {
            return hit.decision.clone();
        }
        let (decision, clean) = policy.evaluate_checked(input);
        if clean && let Ok(mut s) = shard.lock() {
            if s.len >= self.per_shard {
                s.by_hash.clear();
                s.len = 0;
            }
            let bucket = s.by_hash.entry(hash).or_default();
            if bucket.len() >= BUCKET {
                // Oldest out: a flood of near-identical inputs cannot grow
                // the scan of one bucket.
                bucket.remove(0);
            } else {
                s.len += 1;
            }
            let bucket = s.by_hash.entry(hash).or_default();
            bucket.push(Cached {
                revision: revision.to_string(),
                input: input.clone(),
                decision: decision.clone(),
            });
        }
        decision
    }

    /// Drops every entry (on reload).
    pub fn clear(&self) {
        for s in &self.shards {
            if let Ok(mut s) = s.lock() {
                s.by_hash.clear();
                s.len = 0;
            }
        }
    }

    /// Number of cached decisions.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|s| s.len).unwrap_or(0))
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
        let cache = DecisionCache::new(10);
        let a = json!({"attributes": {"source": {"address": {"socketAddress": {"address": "10.0.0.1", "portValue": 1}}}}});
        let b = json!({"attributes": {"source": {"address": {"socketAddress": {"address": "10.0.0.1", "portValue": 2}}}}});
        let c = json!({"attributes": {"source": {"address": {"socketAddress": {"address": "10.0.0.2", "portValue": 2}}}}});
        assert!(DecisionCache::same_key(&a, &b));
        assert_eq!(cache.hash(&a, "r"), cache.hash(&b, "r"));
        assert!(!DecisionCache::same_key(&a, &c));
        assert_ne!(cache.hash(&a, "r"), cache.hash(&c, "r"));
        assert_ne!(cache.hash(&a, "r"), cache.hash(&a, "s"));
        // Exactly the source port is left out; the destination port stays,
        // and a missing source port equals any.
        let d = json!({"attributes": {"destination": {"address": {"socketAddress": {"portValue": 1}}},
                                      "source": {"address": {"socketAddress": {"address": "a", "portValue": 9}}}}, "z": [1]});
        let e = json!({"attributes": {"destination": {"address": {"socketAddress": {"portValue": 2}}},
                                      "source": {"address": {"socketAddress": {"address": "a"}}}}, "z": [1]});
        let f = json!({"attributes": {"destination": {"address": {"socketAddress": {"portValue": 1}}},
                                      "source": {"address": {"socketAddress": {"address": "a"}}}}, "z": [1]});
        assert!(!DecisionCache::same_key(&d, &e));
        assert!(DecisionCache::same_key(&d, &f));
        // Values that would print alike but differ in type do not match.
        let g = json!({"z": ["1"]});
        let h = json!({"z": [1]});
        assert!(!DecisionCache::same_key(&g, &h));
    }

    /// Even when two inputs land in one bucket, each keeps its own decision.
    #[test]
    fn a_hash_collision_never_shares_a_decision() {
        let p = Policy::from_rego(
            "package signet.authz\nimport rego.v1\nallow if input.spiffe.peer_id == \"spiffe://a/b\"\n",
            &PolicyOptions::default(),
        )
        .unwrap();
        let cache = DecisionCache::new(100);
        let yes = json!({"spiffe": {"peer_id": "spiffe://a/b"}});
        let no = json!({"spiffe": {"peer_id": "spiffe://a/c"}});
        // Force both under the hash of `yes`.
        let hash = cache.hash(&yes, p.revision());
        {
            let mut s = cache.shards[(hash as usize) % SHARDS].lock().unwrap();
            s.by_hash.entry(hash).or_default().push(Cached {
                revision: p.revision().to_string(),
                input: no.clone(),
                decision: p.evaluate(&no),
            });
            s.len += 1;
        }
        assert!(
            cache.evaluate(&p, &yes).allow,
            "the colliding deny was not served"
        );
        assert!(cache.evaluate(&p, &yes).allow);
        assert_eq!(cache.len(), 2);
    }

    /// Inputs that differ outside the bucket fields share a bucket, each
    /// with its own decision, and the bucket stays bounded.
    #[test]
    fn a_bucket_is_bounded_and_keeps_decisions_apart() {
        let p = Policy::from_rego(
            "package signet.authz\nimport rego.v1\nallow if input.sni == \"ok\"\n",
            &PolicyOptions::default(),
        )
        .unwrap();
        let cache = DecisionCache::new(10_000);
        for i in 0..100 {
            let input = json!({"sni": format!("n{i}")});
            assert!(!cache.evaluate(&p, &input).allow);
        }
        assert_eq!(cache.len(), BUCKET);
        assert!(cache.evaluate(&p, &json!({"sni": "ok"})).allow);
        assert!(cache.evaluate(&p, &json!({"sni": "ok"})).allow);
        assert!(!cache.evaluate(&p, &json!({"sni": "n99"})).allow);
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
