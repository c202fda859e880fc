//! Decision logs as JSON lines, one per Check, in the shape of OPA's
//! decision log events: `decision_id`, `timestamp`, `path` (the rule),
//! `input` (masked), `result` or `error`, `revision`, `metrics`, and
//! Signet's `allowed` and `dry_run`. Masks are JSON pointers into the
//! event (`/input/attributes/request/http/headers/authorization`) whose
//! values are removed, as OPA's `mask` rules remove them; the
//! `authorization` and `cookie` request headers are masked unless
//! `without_default_masks` says otherwise.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

/// Masked unless told otherwise: credentials have no place in a log.
pub const DEFAULT_MASKS: [&str; 2] = [
    "/input/attributes/request/http/headers/authorization",
    "/input/attributes/request/http/headers/cookie",
];

/// Where decisions are logged.
pub struct DecisionLog {
    out: Mutex<Box<dyn Write + Send>>,
    masks: Vec<String>,
}

impl std::fmt::Debug for DecisionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionLog")
            .field("masks", &self.masks)
            .finish_non_exhaustive()
    }
}

/// One decision, as it is logged.
#[derive(Debug)]
pub(crate) struct Event<'a> {
    pub decision_id: &'a str,
    pub path: &'a str,
    pub revision: &'a str,
    pub input: Option<&'a Value>,
    pub outcome: Result<&'a Value, String>,
    pub allowed: bool,
    pub dry_run: bool,
    pub took: Duration,
}

impl DecisionLog {
    /// Appends to `path` (`-`: standard output).
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let out: Box<dyn Write + Send> = if path == Path::new("-") {
            Box::new(std::io::stdout())
        } else {
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            )
        };
        Ok(Self::to_writer(out))
    }

    pub fn to_writer(out: Box<dyn Write + Send>) -> Self {
        Self {
            out: Mutex::new(out),
            masks: DEFAULT_MASKS.iter().map(|m| (*m).to_owned()).collect(),
        }
    }

    /// Also removes the values at these JSON pointers.
    pub fn with_masks(mut self, masks: impl IntoIterator<Item = String>) -> Self {
        self.masks.extend(masks);
        self
    }

    /// Removes the default masks (for a policy author who wants to see
    /// what the policy saw).
    pub fn without_default_masks(mut self) -> Self {
        self.masks.retain(|m| !DEFAULT_MASKS.contains(&m.as_str()));
        self
    }

    pub(crate) fn record(&self, e: &Event<'_>) {
        let mut event = json!({
            "decision_id": e.decision_id,
            "timestamp": humantime::format_rfc3339_nanos(SystemTime::now()).to_string(),
            "path": e.path,
            "input": e.input.cloned().unwrap_or(Value::Null),
            "revision": e.revision,
            "allowed": e.allowed,
            "metrics": {"timer_eval_ns": u64::try_from(e.took.as_nanos()).unwrap_or(u64::MAX)},
        });
        match &e.outcome {
            Ok(result) => event["result"] = (*result).clone(),
            Err(message) => event["error"] = json!({ "message": message }),
        }
        if e.dry_run {
            event["dry_run"] = true.into();
        }
        for mask in &self.masks {
            remove_pointer(&mut event, mask);
        }
        let mut line = event.to_string();
        line.push('\n');
        let mut out = self
            .out
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Err(err) = out.write_all(line.as_bytes()).and_then(|()| out.flush()) {
            tracing::warn!(error = %err, "cannot write the decision log");
        }
    }
}

/// Removes the value at a JSON pointer (RFC 6901), if there is one.
fn remove_pointer(doc: &mut Value, pointer: &str) {
    let Some((parent, last)) = pointer.rsplit_once('/') else {
        return;
    };
    let key = last.replace("~1", "/").replace("~0", "~");
    match doc.pointer_mut(parent) {
        Some(Value::Object(m)) => {
            m.remove(&key);
        }
        Some(Value::Array(items)) => {
            if let Ok(i) = key.parse::<usize>()
                && i < items.len()
            {
                items.remove(i);
            }
        }
        _ => {}
    }
}
