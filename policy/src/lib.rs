//! Policy engines for Signet: who may talk to whom, decided per connection
//! and per HTTP request.
//!
//! One API over two engines: [`Policy::load`] takes an OPA Wasm module
//! (`policy.wasm`), an OPA bundle (`.tar.gz` from `opa build -t wasm`) or Rego
//! source (a `.rego` file or a directory), and [`Policy::evaluate`] turns an
//! input document (see [`input`]) into a [`Decision`].
//!
//! OPA Wasm runs on our own OPA-ABI host on wasmtime ([`wasm`]), with a
//! registry of host builtins including a Go-compatible `sprintf`
//! ([`builtins`]); Rego source runs on regorus.
//!
//! Invariants:
//! - fail closed: an undefined result, an evaluation error, a deadline or a
//!   memory overrun is a deny carrying the reason;
//! - a module is compiled once per revision; evaluations use a lock-free pool
//!   of instances, each with its own store, deadline and memory cap;
//! - every decision carries the revision (SHA-256 of the policy content);
//! - [`PolicyHandle::reload`] smoke-evaluates a new revision before swapping
//!   it in atomically; a broken revision leaves the previous one serving;
//!   [`PolicyHandle::watch`] calls it whenever the policy's content changes.
//!
//! Depends only on the identity types (`signet-identity`).

pub mod builtins;
mod cache;
mod crypto;
mod decision;
mod glob;
mod globs;
pub mod input;
mod input_paths;
mod jwt;
mod rego;
mod wasm;
mod watch;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use serde_json::Value;
use sha2::{Digest, Sha256};

pub use cache::{DecisionCache, audit, audit_record};
pub use decision::Decision;
pub use rego::{TestCase, TestReport, run_tests};
pub use watch::WatchGuard;

/// The entrypoint evaluated when none is configured or named by a bundle.
pub const DEFAULT_ENTRYPOINT: &str = "signet/authz/allow";

/// Largest policy file or bundle accepted (and largest decompressed bundle).
const MAX_POLICY_BYTES: u64 = 256 * 1024 * 1024;

/// Errors loading or evaluating a policy.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// Reading a policy file failed.
    #[error("cannot read policy {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The path is not a `.wasm`, `.tar.gz`/`.tgz`, `.rego` or directory.
    #[error("unrecognised policy file {0} (want .wasm, .tar.gz, .rego or a directory)")]
    UnknownFormat(PathBuf),
    /// A directory or file held no Rego source.
    #[error("no .rego files in {0}")]
    NoRegoFiles(PathBuf),
    /// The OPA bundle is malformed.
    #[error("invalid opa bundle: {0}")]
    Bundle(String),
    /// The data document is not valid.
    #[error("invalid policy data: {0}")]
    Data(String),
    /// Wasmtime could not compile the module.
    #[error("cannot compile wasm module: {0}")]
    Compile(String),
    /// The module does not follow the OPA Wasm ABI.
    #[error("module does not follow the opa wasm abi: {0}")]
    Abi(String),
    /// The module needs a host builtin this host lacks.
    #[error("policy needs builtin {0:?}, which this host does not provide")]
    MissingBuiltin(String),
    /// The configured entrypoint is not in the policy.
    #[error(
        "entrypoint {entrypoint:?} not found{}; valid entrypoints: {}",
        closest(entrypoint, available).map(|c| format!(" (did you mean {c}?)")).unwrap_or_default(),
        available.join(", ")
    )]
    UnknownEntrypoint {
        /// The entrypoint asked for.
        entrypoint: String,
        /// What the policy offers.
        available: Vec<String>,
    },
    /// Rego source did not parse or compile.
    #[error("invalid rego: {0}")]
    Rego(String),
    /// The wasm engine could not be created.
    #[error("policy engine unavailable: {0}")]
    Engine(String),
    /// Evaluation exceeded its deadline.
    #[error("policy evaluation exceeded its deadline")]
    Deadline,
    /// Evaluation exceeded its memory cap.
    #[error("policy evaluation exceeded its memory limit")]
    MemoryLimit,
    /// The module called `opa_abort`.
    #[error("policy aborted: {0}")]
    Abort(String),
    /// Any other evaluation failure.
    #[error("policy evaluation failed: {0}")]
    Eval(String),
    /// The smoke evaluation of a new revision failed.
    #[error("new policy revision failed its smoke evaluation: {0}")]
    Smoke(String),
}

/// Resource limits of one evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock budget of one evaluation (wasm: epoch interruption with
    /// 1 ms ticks; Rego: regorus' execution timer).
    pub deadline: Duration,
    /// Linear-memory cap of one wasm instance, in bytes.
    pub memory_limit: usize,
    /// Instances (wasm) or engines (Rego) kept warm for reuse.
    pub pool_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline: Duration::from_millis(100),
            memory_limit: 64 * 1024 * 1024,
            pool_size: 64,
        }
    }
}

/// How to load a policy.
#[derive(Debug, Clone, Default)]
pub struct PolicyOptions {
    /// The entrypoint (`pkg/rule`). Default: the bundle manifest's first wasm
    /// entrypoint, else [`DEFAULT_ENTRYPOINT`], else a Wasm module's only
    /// entrypoint.
    pub entrypoint: Option<String>,
    /// The data document (overrides a bundle's `data.json`).
    pub data: Option<Value>,
    /// Top-level documents laid over the data (`data.<key>`), whatever its
    /// source: what the host provides, such as `data.signet.jwt_bundles`.
    pub overlay: serde_json::Map<String, Value>,
    /// Evaluation limits.
    pub limits: Limits,
}

impl PolicyOptions {
    /// Options with a given entrypoint.
    pub fn with_entrypoint(mut self, entrypoint: impl Into<String>) -> Self {
        self.entrypoint = Some(entrypoint.into());
        self
    }

    /// Options with a given data document.
    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    /// The data document with the overlay laid over it: `base` when the
    /// options carry no data of their own.
    fn effective_data(&self, base: Option<Value>) -> Option<Value> {
        let data = self.data.clone().or(base);
        if self.overlay.is_empty() {
            return data;
        }
        let mut map = match data {
            Some(Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        };
        for (k, v) in &self.overlay {
            map.insert(k.clone(), v.clone());
        }
        Some(Value::Object(map))
    }

    /// Options with given limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }
}

/// Which engine a policy runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EngineKind {
    /// OPA-compiled Wasm on wasmtime.
    Wasm,
    /// Rego source on regorus.
    Rego,
}

// One per policy revision, behind an Arc: the size difference is moot.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Engine {
    Wasm {
        policy: wasm::WasmPolicy,
        entrypoint_id: i32,
        /// The path inside the entrypoint's value the chosen entrypoint
        /// names (`example/allow` of a module built with `-e example`).
        inside: Vec<String>,
    },
    Rego(rego::RegoPolicy),
}

/// A loaded policy revision.
#[derive(Debug)]
pub struct Policy {
    engine: Engine,
    entrypoint: String,
    revision: String,
    source: PathBuf,
}

/// What [`check`] reports about a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyInfo {
    /// The engine.
    pub engine: EngineKind,
    /// The entrypoint decisions come from.
    pub entrypoint: String,
    /// Wasm: the module's entrypoints; Rego: its packages.
    pub entrypoints: Vec<String>,
    /// Wasm: the host builtins the module imports.
    pub builtins: Vec<String>,
    /// Wasm: the OPA Wasm ABI version.
    pub abi: Option<(i32, i32)>,
    /// Content hash.
    pub revision: String,
}

/// Loads a policy and reports its entrypoints and builtins
/// (`signet policy check`).
pub fn check(path: impl AsRef<Path>, options: &PolicyOptions) -> Result<PolicyInfo, PolicyError> {
    Ok(Policy::load(path, options)?.info())
}

/// Loads a policy and evaluates one input (`signet policy eval`).
pub fn eval(
    path: impl AsRef<Path>,
    options: &PolicyOptions,
    input: &Value,
) -> Result<Decision, PolicyError> {
    Ok(Policy::load(path, options)?.evaluate(input))
}

/// The entrypoint of `available` nearest to the misspelt `wanted`, if one
/// is a typo away (at most two edits, or a third of its length).
fn closest<'a>(wanted: &str, available: &'a [String]) -> Option<&'a str> {
    let distance = |a: &str, b: &str| {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut diagonal = row[0];
            row[0] = i + 1;
            for (j, cb) in b.iter().enumerate() {
                let above = row[j + 1];
                row[j + 1] = (diagonal + usize::from(ca != *cb))
                    .min(row[j] + 1)
                    .min(above + 1);
                diagonal = above;
            }
        }
        row[b.len()]
    };
    available
        .iter()
        .map(|a| (distance(wanted, a), a))
        .filter(|(d, _)| *d <= 2.max(wanted.len() / 3))
        .min()
        .map(|(_, a)| a.as_str())
}

fn read_limited(path: &Path) -> Result<Vec<u8>, PolicyError> {
    let io = |source| PolicyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::new();
    file.take(MAX_POLICY_BYTES)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    Ok(bytes)
}

fn sha256_hex(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    hex::encode(h.finalize())
}

/// The parts of an OPA bundle this host uses.
#[derive(Debug, Default)]
struct Bundle {
    wasm: Option<Vec<u8>>,
    data: Option<Value>,
    entrypoints: Vec<String>,
}

fn read_bundle(bytes: &[u8]) -> Result<Bundle, PolicyError> {
    let gz = flate2::read::GzDecoder::new(bytes).take(MAX_POLICY_BYTES);
    let mut archive = tar::Archive::new(gz);
    let mut bundle = Bundle::default();
    let entries = archive
        .entries()
        .map_err(|e| PolicyError::Bundle(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| PolicyError::Bundle(e.to_string()))?;
        let path = entry
            .path()
            .map_err(|e| PolicyError::Bundle(e.to_string()))?
            .to_string_lossy()
            .trim_start_matches("./")
            .trim_start_matches('/')
            .to_string();
        let mut content = Vec::new();
        entry
            .read_to_end(&mut content)
            .map_err(|e| PolicyError::Bundle(format!("{path}: {e}")))?;
        match path.as_str() {
            "policy.wasm" => bundle.wasm = Some(content),
            "data.json" => {
                bundle.data = Some(
                    serde_json::from_slice(&content)
                        .map_err(|e| PolicyError::Bundle(format!("data.json: {e}")))?,
                );
            }
            ".manifest" => {
                let manifest: Value = serde_json::from_slice(&content)
                    .map_err(|e| PolicyError::Bundle(format!(".manifest: {e}")))?;
                if let Some(wasm) = manifest.get("wasm").and_then(Value::as_array) {
                    bundle.entrypoints = wasm
                        .iter()
                        .filter_map(|w| w.get("entrypoint").and_then(Value::as_str))
                        .map(str::to_string)
                        .collect();
                }
            }
            _ => {}
        }
    }
    Ok(bundle)
}

impl Policy {
    /// Loads `path`: `*.wasm`, an OPA bundle `*.tar.gz`/`*.tgz`, a `*.rego`
    /// file or a directory of `.rego` files.
    pub fn load(path: impl AsRef<Path>, options: &PolicyOptions) -> Result<Policy, PolicyError> {
        let path = path.as_ref();
        let name = path.to_string_lossy();
        let mut policy = if path.is_dir() || name.ends_with(".rego") {
            let sources = rego::read_sources(path)?;
            Self::from_rego_sources(&sources, options)?
        } else if name.ends_with(".wasm") {
            let bytes = read_limited(path)?;
            Self::from_wasm(&bytes, options)?
        } else if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
            let bytes = read_limited(path)?;
            Self::from_bundle(&bytes, options)?
        } else {
            return Err(PolicyError::UnknownFormat(path.to_path_buf()));
        };
        policy.source = path.to_path_buf();
        tracing::info!(path = %path.display(), revision = %policy.revision, entrypoint = %policy.entrypoint, "policy loaded");
        Ok(policy)
    }

    /// An OPA bundle (`.tar.gz`) in memory.
    pub fn from_bundle(bytes: &[u8], options: &PolicyOptions) -> Result<Policy, PolicyError> {
        let bundle = read_bundle(bytes)?;
        let wasm = bundle
            .wasm
            .ok_or_else(|| PolicyError::Bundle("no policy.wasm in bundle".into()))?;
        let mut opts = options.clone();
        opts.data = options.effective_data(bundle.data);
        opts.overlay.clear();
        if opts.entrypoint.is_none() {
            opts.entrypoint = bundle.entrypoints.first().cloned();
        }
        let mut policy = Self::from_wasm(&wasm, &opts)?;
        policy.revision = sha256_hex(&[bytes]);
        Ok(policy)
    }

    /// A `policy.wasm` module in memory.
    pub fn from_wasm(wasm: &[u8], options: &PolicyOptions) -> Result<Policy, PolicyError> {
        let data = options
            .effective_data(None)
            .unwrap_or_else(|| Value::Object(Default::default()));
        let policy = wasm::WasmPolicy::new(wasm, &data, options.limits)?;
        // Unnamed: the default, else a module's only entrypoint.
        let only = match policy.entrypoints().collect::<Vec<_>>().as_slice() {
            [only] if policy.entrypoint_id(DEFAULT_ENTRYPOINT).is_none() => Some(only.to_string()),
            _ => None,
        };
        let entrypoint = options
            .entrypoint
            .clone()
            .or(only)
            .unwrap_or_else(|| DEFAULT_ENTRYPOINT.to_string());
        // The entrypoint itself, else the longest one it lies inside.
        let found = policy
            .entrypoint_id(&entrypoint)
            .map(|id| (id, Vec::new()))
            .or_else(|| {
                policy
                    .entrypoints()
                    .filter(|e| entrypoint.starts_with(&format!("{e}/")))
                    .max_by_key(|e| e.len())
                    .and_then(|e| {
                        let inside = entrypoint[e.len() + 1..]
                            .split('/')
                            .map(str::to_string)
                            .collect();
                        policy.entrypoint_id(e).map(|id| (id, inside))
                    })
            });
        let (entrypoint_id, inside) = found.ok_or_else(|| PolicyError::UnknownEntrypoint {
            entrypoint: entrypoint.clone(),
            available: policy.entrypoints().map(str::to_string).collect(),
        })?;
        let data_bytes = serde_json::to_vec(&data).map_err(|e| PolicyError::Data(e.to_string()))?;
        Ok(Policy {
            revision: sha256_hex(&[wasm, &data_bytes]),
            engine: Engine::Wasm {
                policy,
                entrypoint_id,
                inside,
            },
            entrypoint,
            source: PathBuf::new(),
        })
    }

    /// Rego source text (one module) in memory.
    pub fn from_rego(source: &str, options: &PolicyOptions) -> Result<Policy, PolicyError> {
        Self::from_rego_sources(
            &[(PathBuf::from("policy.rego"), source.to_string())],
            options,
        )
    }

    fn from_rego_sources(
        sources: &[(PathBuf, String)],
        options: &PolicyOptions,
    ) -> Result<Policy, PolicyError> {
        let data = options.effective_data(None).unwrap_or(Value::Null);
        let entrypoint = options
            .entrypoint
            .clone()
            .unwrap_or_else(|| DEFAULT_ENTRYPOINT.to_string());
        let policy = rego::RegoPolicy::new(sources, &data, &entrypoint, options.limits)?;
        let mut parts: Vec<&[u8]> = Vec::new();
        let names: Vec<String> = sources
            .iter()
            .map(|(p, _)| p.display().to_string())
            .collect();
        for ((_, text), name) in sources.iter().zip(&names) {
            parts.push(name.as_bytes());
            parts.push(text.as_bytes());
        }
        let data_bytes = serde_json::to_vec(&data).map_err(|e| PolicyError::Data(e.to_string()))?;
        parts.push(&data_bytes);
        Ok(Policy {
            revision: sha256_hex(&parts),
            engine: Engine::Rego(policy),
            entrypoint,
            source: PathBuf::new(),
        })
    }

    /// The content hash (SHA-256, hex) of this revision.
    pub fn revision(&self) -> &str {
        &self.revision
    }

    /// The entrypoint decisions come from.
    pub fn entrypoint(&self) -> &str {
        &self.entrypoint
    }

    /// The file this policy was loaded from (empty for in-memory policies).
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Which engine runs this policy.
    pub fn engine(&self) -> EngineKind {
        match self.engine {
            Engine::Wasm { .. } => EngineKind::Wasm,
            Engine::Rego(_) => EngineKind::Rego,
        }
    }

    /// What `signet policy check` prints.
    pub fn info(&self) -> PolicyInfo {
        match &self.engine {
            Engine::Wasm { policy, .. } => PolicyInfo {
                engine: EngineKind::Wasm,
                entrypoint: self.entrypoint.clone(),
                entrypoints: policy.entrypoints().map(str::to_string).collect(),
                builtins: policy.builtins().to_vec(),
                abi: Some(policy.abi()),
                revision: self.revision.clone(),
            },
            Engine::Rego(policy) => PolicyInfo {
                engine: EngineKind::Rego,
                entrypoint: self.entrypoint.clone(),
                entrypoints: policy.packages(),
                builtins: Vec::new(),
                abi: None,
                revision: self.revision.clone(),
            },
        }
    }

    /// Evaluates the configured entrypoint: `Ok(None)` when it is undefined.
    pub fn evaluate_value(&self, input: &Value) -> Result<Option<Value>, PolicyError> {
        match &self.engine {
            Engine::Wasm {
                policy,
                entrypoint_id,
                inside,
            } => Ok(first_result(policy.eval(*entrypoint_id, input)?)?
                .and_then(|v| inside.iter().try_fold(v, |v, key| v.get(key).cloned()))),
            Engine::Rego(policy) => policy.eval(input),
        }
    }

    /// The part of `input` this revision's decision depends on, when it
    /// depends on nothing else (Rego policies whose input
    /// references are dotted paths and that call no clock, random or network
    /// builtin): equal keys get equal decisions, so a decision may be cached
    /// under it with the revision. `None`: do not cache.
    pub fn cache_key(&self, input: &Value) -> Option<Value> {
        match &self.engine {
            Engine::Rego(policy) => policy.cache_key(input),
            Engine::Wasm { .. } => None,
        }
    }

    /// Evaluates another entrypoint of a wasm module, returning OPA's raw
    /// result set (`[{"result": …}]` or `[]`). Rego policies answer in the
    /// same shape.
    pub fn evaluate_entrypoint(
        &self,
        entrypoint: &str,
        input: &Value,
    ) -> Result<Value, PolicyError> {
        match &self.engine {
            Engine::Wasm { policy, .. } => {
                let id = policy.entrypoint_id(entrypoint).ok_or_else(|| {
                    PolicyError::UnknownEntrypoint {
                        entrypoint: entrypoint.to_string(),
                        available: policy.entrypoints().map(str::to_string).collect(),
                    }
                })?;
                policy.eval(id, input)
            }
            Engine::Rego(_) => Ok(match self.evaluate_value(input)? {
                Some(v) => serde_json::json!([{ "result": v }]),
                None => serde_json::json!([]),
            }),
        }
    }

    /// Decides: never fails; errors, deadlines and memory overruns deny with
    /// the reason.
    pub fn evaluate(&self, input: &Value) -> Decision {
        self.evaluate_checked(input).0
    }

    /// [`Policy::evaluate`], also telling whether evaluation completed
    /// cleanly (no error, deadline or memory overrun), i.e. may be cached.
    pub fn evaluate_checked(&self, input: &Value) -> (Decision, bool) {
        let start = Instant::now();
        let outcome = self.evaluate_value(input);
        let elapsed = start.elapsed();
        let (decision, clean) = match outcome {
            Ok(Some(v)) => (Decision::from_result(&v, &self.revision), true),
            Ok(None) => (
                Decision::deny("policy decision is undefined", &self.revision),
                true,
            ),
            Err(e) => {
                tracing::warn!(revision = %self.revision, error = %e, "policy evaluation failed; denying");
                (Decision::deny(e.to_string(), &self.revision), false)
            }
        };
        (decision.with_eval_time(elapsed), clean)
    }
}

fn first_result(set: Value) -> Result<Option<Value>, PolicyError> {
    match set {
        Value::Array(mut items) => {
            if items.len() > 1 {
                return Err(PolicyError::Eval(
                    "entrypoint produced more than one result".into(),
                ));
            }
            Ok(items
                .pop()
                .and_then(|mut r| r.get_mut("result").map(Value::take)))
        }
        other => Err(PolicyError::Eval(format!("unexpected result set {other}"))),
    }
}

/// The policy currently in force, swappable atomically; evaluation reads it
/// lock-free.
#[derive(Debug)]
pub struct PolicyHandle {
    current: ArcSwap<Policy>,
    path: PathBuf,
    options: std::sync::Mutex<PolicyOptions>,
    smoke_input: Value,
    cache: Option<DecisionCache>,
}

impl PolicyHandle {
    /// Loads `path`; a load error refuses to start.
    pub fn load(path: impl AsRef<Path>, options: PolicyOptions) -> Result<Self, PolicyError> {
        let path = path.as_ref().to_path_buf();
        let policy = Policy::load(&path, &options)?;
        let smoke_input = input::InputBuilder::default().build();
        smoke(&policy, &smoke_input)?;
        Ok(PolicyHandle {
            current: ArcSwap::from_pointee(policy),
            path,
            options: std::sync::Mutex::new(options),
            smoke_input,
            cache: None,
        })
    }

    /// Caches connection-level decisions (see [`DecisionCache`]); the cache
    /// is cleared on every successful reload.
    pub fn with_decision_cache(mut self, capacity: usize) -> Self {
        self.cache = Some(DecisionCache::new(capacity));
        self
    }

    /// Decides a connection, through the decision cache when configured.
    pub fn evaluate_connection(&self, input: &Value) -> Decision {
        let policy = self.current.load();
        match &self.cache {
            Some(cache) => cache.evaluate(&policy, input),
            None => policy.evaluate(input),
        }
    }

    /// Uses `input` as the smoke-evaluation input of later reloads.
    pub fn with_smoke_input(mut self, input: Value) -> Self {
        self.smoke_input = input;
        self
    }

    /// The policy in force.
    pub fn current(&self) -> Arc<Policy> {
        self.current.load_full()
    }

    /// The revision in force.
    pub fn revision(&self) -> String {
        self.current.load().revision.clone()
    }

    /// Decides with the policy in force.
    pub fn evaluate(&self, input: &Value) -> Decision {
        self.current.load().evaluate(input)
    }

    /// Reloads from the same path: loads, smoke-evaluates, then swaps. On
    /// error the previous revision stays in force and the error is returned
    /// (and logged). Returns whether the revision changed.
    pub fn reload(&self) -> Result<bool, PolicyError> {
        let options = self
            .options
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let result = Policy::load(&self.path, &options).and_then(|p| {
            smoke(&p, &self.smoke_input)?;
            Ok(p)
        });
        match result {
            Ok(policy) => {
                let old = self.revision();
                let changed = old != policy.revision;
                tracing::info!(old_revision = %old, revision = %policy.revision, "policy reloaded");
                self.current.store(Arc::new(policy));
                if let Some(cache) = &self.cache {
                    cache.clear();
                }
                Ok(changed)
            }
            Err(e) => {
                tracing::error!(path = %self.path.display(), revision = %self.revision(), error = %e, "policy reload failed; keeping previous revision");
                Err(e)
            }
        }
    }

    /// Lays `value` over the data as `data.<key>` and reloads, unless it
    /// is already there. A failed reload keeps the revision in force (and
    /// the new value, for the next reload).
    pub fn set_overlay(&self, key: &str, value: Value) -> Result<bool, PolicyError> {
        {
            let mut options = self.options.lock().unwrap_or_else(|e| e.into_inner());
            if options.overlay.get(key) == Some(&value) {
                return Ok(false);
            }
            options.overlay.insert(key.to_string(), value);
        }
        self.reload()
    }
}

/// A new revision must evaluate without an error (undefined is fine: it
/// denies).
fn smoke(policy: &Policy, input: &Value) -> Result<(), PolicyError> {
    policy
        .evaluate_value(input)
        .map(|_| ())
        .map_err(|e| PolicyError::Smoke(e.to_string()))
}
