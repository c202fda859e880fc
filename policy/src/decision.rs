//! A policy result turned into an allow/deny decision.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

/// An authorization decision. The result of the entrypoint is either a
/// boolean or an object in the OPA-Envoy plugin's shape:
/// `{"allowed"|"allow": bool, "reason"?, "http_status"?, "headers"?, "body"?}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Decision {
    /// Whether the connection or request is allowed.
    pub allow: bool,
    /// Why (from the policy, or the failure that denied).
    pub reason: Option<String>,
    /// HTTP mode: the status to answer a denied request with.
    pub http_status: Option<u16>,
    /// HTTP mode: headers to add (to the response when denied, the upstream
    /// request when allowed).
    pub headers: BTreeMap<String, String>,
    /// HTTP mode: the body of a deny response.
    pub body: Option<String>,
    /// The content hash of the policy revision that decided.
    pub revision: String,
    /// Evaluation time.
    #[serde(with = "duration_micros")]
    pub eval_time: Duration,
}

mod duration_micros {
    use serde::Serializer;
    use std::time::Duration;

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Decision {
    /// A deny with a reason.
    pub fn deny(reason: impl Into<String>, revision: &str) -> Decision {
        Decision {
            allow: false,
            reason: Some(reason.into()),
            http_status: None,
            headers: BTreeMap::new(),
            body: None,
            revision: revision.to_string(),
            eval_time: Duration::ZERO,
        }
    }

    pub(crate) fn with_eval_time(mut self, d: Duration) -> Decision {
        self.eval_time = d;
        self
    }

    /// Interprets an entrypoint's (defined) result.
    pub fn from_result(result: &Value, revision: &str) -> Decision {
        match result {
            Value::Bool(allow) => Decision {
                allow: *allow,
                reason: None,
                ..Decision::deny("", revision)
            },
            Value::Object(obj) => {
                let allow = obj.get("allowed").or_else(|| obj.get("allow"));
                let Some(Value::Bool(allow)) = allow else {
                    return Decision::deny(
                        "policy result object has no boolean \"allowed\" or \"allow\"",
                        revision,
                    );
                };
                let http_status = match obj.get("http_status") {
                    None | Some(Value::Null) => None,
                    Some(v) => match v.as_u64().and_then(|s| u16::try_from(s).ok()) {
                        Some(s) if (100..=599).contains(&s) => Some(s),
                        _ => {
                            return Decision::deny(
                                format!("policy result has invalid http_status {v}"),
                                revision,
                            );
                        }
                    },
                };
                let mut headers = BTreeMap::new();
                if let Some(Value::Object(h)) = obj.get("headers") {
                    for (k, v) in h {
                        let value = match v {
                            Value::Array(items) => {
                                items.iter().map(text).collect::<Vec<_>>().join(", ")
                            }
                            other => text(other),
                        };
                        headers.insert(k.clone(), value);
                    }
                }
                Decision {
                    allow: *allow,
                    reason: obj.get("reason").filter(|r| !r.is_null()).map(text),
                    http_status,
                    headers,
                    body: obj.get("body").filter(|b| !b.is_null()).map(text),
                    revision: revision.to_string(),
                    eval_time: Duration::ZERO,
                }
            }
            other => Decision::deny(
                format!("policy result is not a boolean or an object: {other}"),
                revision,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn results_to_decisions() {
        let rows = [
            (json!(true), true, None),
            (json!(false), false, None),
            (json!({"allowed": true}), true, None),
            (json!({"allow": true, "reason": "ok"}), true, Some("ok")),
            (json!({"allowed": false, "reason": "no"}), false, Some("no")),
            (
                json!({"allowed": "yes"}),
                false,
                Some("policy result object has no boolean \"allowed\" or \"allow\""),
            ),
            (
                json!(1),
                false,
                Some("policy result is not a boolean or an object: 1"),
            ),
            (
                json!({"allowed": true, "http_status": 99}),
                false,
                Some("policy result has invalid http_status 99"),
            ),
        ];
        for (result, allow, reason) in rows {
            let d = Decision::from_result(&result, "rev");
            assert_eq!(d.allow, allow, "{result}");
            assert_eq!(d.reason.as_deref(), reason, "{result}");
            assert_eq!(d.revision, "rev");
        }
        let d = Decision::from_result(
            &json!({"allowed": false, "http_status": 403, "headers": {"x-a": "1", "x-b": ["2", 3]}, "body": "denied"}),
            "r",
        );
        assert_eq!(d.http_status, Some(403));
        assert_eq!(d.headers.get("x-b").map(String::as_str), Some("2, 3"));
        assert_eq!(d.body.as_deref(), Some("denied"));
    }
}
