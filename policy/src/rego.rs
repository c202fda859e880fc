//! Rego source evaluated by regorus, and `opa test`-style test runs.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;
use foldhash::fast::FixedState;
use regorus::utils::limits::ExecutionTimerConfig;
use serde_json::Value;

use crate::input_paths::{self, Keep};
use crate::{Limits, PolicyError};

/// Rego source files, parsed and prepared (analysed, scheduled) once per
/// revision; a lock-free pool of engines (each a cheap clone of the prepared
/// one) serves concurrent evaluations.
///
/// Per evaluation the only conversions are the input (JSON to a regorus
/// value, built directly, and only the parts the sources can read) and the
/// result back; a package entrypoint is one rule evaluation, not a query.
///
/// regorus 0.14 also has a bytecode VM (RVM), several times faster on simple
/// policies, but it is not used: it turns some evaluation errors (a division
/// by zero in a rule body, even with strict builtin errors) into
/// "undefined", where the interpreter fails the evaluation. Under `not` that
/// difference can turn a deny into an allow.
pub(crate) struct RegoPolicy {
    template: regorus::Engine,
    query: Query,
    pool: ArrayQueue<regorus::Engine>,
    packages: Vec<String>,
    /// The part of the input the sources can read.
    input: Keep,
    /// No call to a builtin whose answer changes with the clock, chance or
    /// the network: the same input always gets the same decision.
    deterministic: bool,
}

/// What the interpreter evaluates.
enum Query {
    /// One rule (possibly the wrapper rule of a package entrypoint).
    Rule(String),
    /// A document that is not a rule (the whole `data`): a query.
    Document(String),
}

impl fmt::Debug for RegoPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let query = match &self.query {
            Query::Rule(r) | Query::Document(r) => r,
        };
        f.debug_struct("RegoPolicy")
            .field("query", query)
            .finish_non_exhaustive()
    }
}

/// The package holding the wrapper rule of a package entrypoint: a package
/// document is evaluated as the value of one rule, `result := data.<pkg>`, so
/// both evaluators run a single rule instead of a query.
const WRAPPER_PACKAGE: &str = "signet_internal_entrypoint";

/// Interpreter steps (statements, loop iterations) between two reads of the
/// clock for the deadline. Reading it at every step took 7 % of a decision;
/// 32 steps are a few microseconds, nothing against a deadline in
/// milliseconds.
const DEADLINE_CHECK_INTERVAL: NonZeroU32 = match NonZeroU32::new(32) {
    Some(n) => n,
    None => NonZeroU32::MIN,
};

/// The whole of `v` as a regorus value.
#[cfg(test)]
fn to_regorus(v: &Value) -> regorus::Value {
    to_regorus_kept(v, &Keep::All)
}

/// The part of `v` that `keep` names (see [`crate::input_paths`]) as a
/// regorus value, built directly (no serde round trip, no clone of the
/// input). Numbers convert as regorus' own deserializer converts them
/// (`u64`, else `i64`, else `f64`). Object keys come from a per-thread
/// interner: the same few dozen keys (`attributes`, `source`, `principal`,
/// ...) arrive in every input, and sharing them saves two allocator calls
/// per key per evaluation.
fn to_regorus_kept(v: &Value, keep: &Keep) -> regorus::Value {
    KEYS.with(|keys| convert_kept(v, keep, &mut keys.borrow_mut()))
}

fn convert_kept(v: &Value, keep: &Keep, keys: &mut Keys) -> regorus::Value {
    match (keep, v) {
        (Keep::Fields(fields), Value::Object(map)) => {
            let mut out = BTreeMap::new();
            for (name, keep) in fields {
                if let Some(item) = map.get(name) {
                    let k = key(name, keys);
                    out.insert(k, convert_kept(item, keep, keys));
                }
            }
            regorus::Value::from(out)
        }
        _ => convert(v, keys),
    }
}

/// The part of `v` that `keep` names, as JSON.
fn kept_json(v: &Value, keep: &Keep) -> Value {
    match (keep, v) {
        (Keep::Fields(fields), Value::Object(map)) => Value::Object(
            fields
                .iter()
                .filter_map(|(name, keep)| {
                    map.get(name)
                        .map(|item| (name.clone(), kept_json(item, keep)))
                })
                .collect(),
        ),
        _ => v.clone(),
    }
}

/// Interned keys at most this long, and at most this many per thread; past
/// the bound (inputs with many distinct header names) keys are allocated.
const INTERNED_KEY_LEN: usize = 64;
const INTERNED_KEYS: usize = 2048;

/// Interned object keys: the key text to its regorus value.
type Keys = HashMap<Box<str>, regorus::Value, FixedState>;

thread_local! {
    static KEYS: std::cell::RefCell<Keys> =
        std::cell::RefCell::new(HashMap::default());
}

fn key(k: &str, keys: &mut Keys) -> regorus::Value {
    if let Some(v) = keys.get(k) {
        return v.clone();
    }
    let v = regorus::Value::from(k);
    if k.len() <= INTERNED_KEY_LEN && keys.len() < INTERNED_KEYS {
        keys.insert(k.into(), v.clone());
    }
    v
}

fn convert(v: &Value, keys: &mut Keys) -> regorus::Value {
    match v {
        Value::Null => regorus::Value::Null,
        Value::Bool(b) => regorus::Value::Bool(*b),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                regorus::Value::from(u)
            } else if let Some(i) = n.as_i64() {
                regorus::Value::from(i)
            } else {
                // serde_json numbers are finite; `as_f64` is `Some` for them.
                regorus::Value::from(n.as_f64().unwrap_or(0.0))
            }
        }
        Value::String(s) => regorus::Value::from(s.as_str()),
        Value::Array(items) => regorus::Value::from(
            items
                .iter()
                .map(|item| convert(item, keys))
                .collect::<Vec<_>>(),
        ),
        Value::Object(map) => {
            // serde_json's map iterates in key order, so each insert
            // appends to the last leaf (no sort, no intermediate vector).
            let mut out = BTreeMap::new();
            for (k, item) in map {
                let k = key(k, keys);
                out.insert(k, convert(item, keys));
            }
            regorus::Value::from(out)
        }
    }
}

/// A regorus result as JSON (sets become arrays, as in OPA's JSON output).
fn from_regorus(v: &regorus::Value) -> Result<Value, PolicyError> {
    serde_json::to_value(v).map_err(|e| PolicyError::Eval(e.to_string()))
}

/// Whether a regorus error (its text with causes, `{:#}`) is the deadline.
fn is_deadline(text: &str) -> bool {
    text.contains("time limit") || text.contains("execution exceeded") || text.contains("timed out")
}

/// `signet/authz/allow` -> `data.signet.authz.allow`.
pub(crate) fn rule_path(entrypoint: &str) -> String {
    let trimmed = entrypoint.trim_matches('/');
    if trimmed.starts_with("data.") || trimmed == "data" {
        trimmed.to_string()
    } else {
        format!("data.{}", trimmed.replace('/', "."))
    }
}

/// Every rule the loaded modules declare, as `data.<package>.<rule>`
/// (sorted): what an entrypoint may name.
fn declared_rules(engine: &mut regorus::Engine) -> Vec<String> {
    use regorus::unstable::{Rule, RuleHead};
    let mut rules: Vec<String> = engine
        .get_modules()
        .iter()
        .flat_map(|module| {
            let package = module.package.refr.span().text().to_string();
            module.policy.iter().map(move |rule| {
                let head = match rule.as_ref() {
                    Rule::Spec { head, .. } => match head {
                        RuleHead::Compr { refr, .. }
                        | RuleHead::Set { refr, .. }
                        | RuleHead::Func { refr, .. } => refr,
                    },
                    Rule::Default { refr, .. } => refr,
                };
                // `p.q[x]` declares p.q; a quoted key is left as written.
                let name = head.span().text();
                let name = name.split('[').next().unwrap_or(name).trim();
                format!("data.{package}.{name}")
            })
        })
        .collect();
    rules.sort();
    rules.dedup();
    rules
}

/// `data.signet.authz.allow` as users write entrypoints: `signet/authz/allow`.
fn entrypoint_name(rule: &str) -> String {
    rule.strip_prefix("data.").unwrap_or(rule).replace('.', "/")
}

/// The `.rego` files of `path` (a file, or a directory walked recursively),
/// sorted, with their contents.
pub(crate) fn read_sources(path: &Path) -> Result<Vec<(PathBuf, String)>, PolicyError> {
    let mut files = Vec::new();
    collect(path, &mut files)?;
    files.sort();
    if files.is_empty() {
        return Err(PolicyError::NoRegoFiles(path.to_path_buf()));
    }
    files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).map_err(|source| PolicyError::Io {
                path: f.clone(),
                source,
            })?;
            Ok((f, text))
        })
        .collect()
}

fn collect(path: &Path, out: &mut Vec<PathBuf>) -> Result<(), PolicyError> {
    let io = |source| PolicyError::Io {
        path: path.to_path_buf(),
        source,
    };
    if path.is_dir() {
        for entry in std::fs::read_dir(path).map_err(io)? {
            let entry = entry.map_err(io)?;
            collect(&entry.path(), out)?;
        }
    } else if path.extension().is_some_and(|e| e == "rego") {
        out.push(path.to_path_buf());
    }
    Ok(())
}

fn new_engine(sources: &[(PathBuf, String)], data: &Value) -> Result<regorus::Engine, PolicyError> {
    new_engine_and_calls(sources, data).map(|(engine, _)| engine)
}

/// The engine, and every function its policies call (checked: none is
/// missing).
fn new_engine_and_calls(
    sources: &[(PathBuf, String)],
    data: &Value,
) -> Result<(regorus::Engine, Vec<String>), PolicyError> {
    let mut engine = regorus::Engine::new();
    // OPA's glob.match on our per-thread compiled-pattern cache (regorus'
    // own rebuilds its matcher's DFA on every call).
    engine
        .add_extension(
            "glob.match".to_string(),
            3,
            Box::new(crate::glob::regorus_glob_match),
        )
        .map_err(|e| PolicyError::Rego(format!("{e}")))?;
    // Signet's builtins where regorus has none of the name (io.jwt.*,
    // crypto.*, net.cidr_merge, ...): the same functions the Wasm host calls.
    for (name, arity, f) in crate::builtins::with_arity() {
        if name == "glob.match" || regorus::unstable::BUILTINS.contains_key(name) {
            continue;
        }
        engine
            .add_extension(name.to_string(), arity, Box::new(extension(name, f)))
            .map_err(|e| PolicyError::Rego(format!("{e}")))?;
    }
    for (path, text) in sources {
        engine
            .add_policy(path.display().to_string(), text.clone())
            .map_err(|e| PolicyError::Rego(format!("{e}")))?;
    }
    let (calls, functions) = calls(&engine)?;
    if let Some(name) = unknown_builtins(&calls, &functions).into_iter().next() {
        return Err(PolicyError::MissingBuiltin(name));
    }
    if !data.is_null() {
        engine
            .add_data(regorus::Value::from(data.clone()))
            .map_err(|e| PolicyError::Data(format!("{e}")))?;
    }
    Ok((engine, calls))
}

/// A host builtin as a regorus extension. Its errors make the call
/// undefined, as a builtin error does in OPA (non-strict evaluation).
fn extension(
    name: &'static str,
    f: crate::builtins::BuiltinFn,
) -> impl FnMut(Vec<regorus::Value>) -> anyhow::Result<regorus::Value> + Clone + Send + Sync {
    move |args: Vec<regorus::Value>| {
        let args = args
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<Vec<Value>, _>>()?;
        Ok(match f(&args) {
            Ok(v) => regorus::Value::from(v),
            Err(e) => {
                tracing::debug!(builtin = name, error = %e, "builtin call is undefined");
                regorus::Value::Undefined
            }
        })
    }
}

/// regorus builtins that exist by name only: always undefined.
const STUBS: &[&str] = &["http.send"];

/// Functions the policies call that are neither defined by a policy, nor a
/// regorus builtin, nor one of Signet's: OPA refuses such a policy when it
/// compiles it, and so does Signet at load, rather than denying every
/// request at evaluation.
fn unknown_builtins(
    calls: &[String],
    functions: &std::collections::BTreeSet<String>,
) -> Vec<String> {
    let last = |path: &str| path.rsplit('.').next().unwrap_or(path).to_string();
    let mut unknown: Vec<String> = calls
        .iter()
        .filter(|c| {
            *c != "print"
                && (!regorus::unstable::BUILTINS.contains_key(c.as_str())
                    || STUBS.contains(&c.as_str()))
                && crate::builtins::lookup(c).is_none()
                && !functions.contains(&last(c))
        })
        .cloned()
        .collect();
    unknown.sort();
    unknown.dedup();
    unknown
}

/// Every function the policies call, and the last path segment of every
/// function they define, from regorus' syntax tree.
fn calls(
    engine: &regorus::Engine,
) -> Result<(Vec<String>, std::collections::BTreeSet<String>), PolicyError> {
    let ast = engine
        .get_ast_as_json()
        .map_err(|e| PolicyError::Rego(format!("{e}")))?;
    let modules: Value = serde_json::from_str(&ast)
        .map_err(|e| PolicyError::Rego(format!("policy syntax tree: {e}")))?;
    let mut calls = Vec::new();
    let mut functions = std::collections::BTreeSet::new();
    for module in modules.as_array().into_iter().flatten() {
        let source = module["source"]["contents"].as_str().unwrap_or_default();
        collect_calls(&module["ast"], source, &mut calls, &mut functions);
    }
    Ok((calls, functions))
}

/// Builtins whose answer depends on more than their operands: the clock
/// (`decode_verify` and chain verification check validity against now),
/// chance, the network, the runtime.
const NONDETERMINISTIC: &[&str] = &[
    "time.now_ns",
    "io.jwt.decode_verify",
    "crypto.x509.parse_and_verify_certificates",
    "crypto.x509.parse_and_verify_certificates_with_options",
    "net.lookup_ip_addr",
    "http.send",
    "rand.intn",
    "uuid.rfc4122",
    "opa.runtime",
];

/// The source text an expression spans, without whitespace.
fn span_text(expr: &Value, source: &str) -> Option<String> {
    let (_, inner) = expr.as_object()?.iter().next()?;
    let span = inner.get("span")?;
    let start = usize::try_from(span.get("start")?.as_u64()?).ok()?;
    let end = usize::try_from(span.get("end")?.as_u64()?).ok()?;
    let text = source.get(start..end)?;
    Some(text.chars().filter(|c| !c.is_whitespace()).collect())
}

/// Every called function's name, and the last path segment of every
/// function a policy defines.
fn collect_calls(
    node: &Value,
    source: &str,
    calls: &mut Vec<String>,
    functions: &mut std::collections::BTreeSet<String>,
) {
    match node {
        Value::Object(map) => {
            if let Some(name) = map.get("Call").and_then(|c| span_text(&c["fcn"], source)) {
                calls.push(name);
            }
            if let Some(name) = map.get("Func").and_then(|f| span_text(&f["refr"], source)) {
                functions.insert(name.rsplit('.').next().unwrap_or(&name).to_string());
            }
            for child in map.values() {
                collect_calls(child, source, calls, functions);
            }
        }
        Value::Array(items) => {
            for child in items {
                collect_calls(child, source, calls, functions);
            }
        }
        _ => {}
    }
}

impl RegoPolicy {
    pub(crate) fn new(
        sources: &[(PathBuf, String)],
        data: &Value,
        entrypoint: &str,
        limits: Limits,
    ) -> Result<Self, PolicyError> {
        let (mut template, calls) = new_engine_and_calls(sources, data)?;
        let timer = ExecutionTimerConfig {
            limit: limits.deadline,
            check_interval: DEADLINE_CHECK_INTERVAL,
        };
        template.set_execution_timer_config(timer);
        let rule = rule_path(entrypoint);
        let packages = template
            .get_packages()
            .map_err(|e| PolicyError::Rego(format!("{e}")))?;
        let rules = declared_rules(&mut template);
        let prefix = format!("{rule}.");
        // A package (or a parent of one), a rule, or a path inside a rule's value.
        let known = rule == "data"
            || packages
                .iter()
                .any(|p| p == &rule || p.starts_with(&prefix))
            || rules.iter().any(|r| {
                r == &rule || r.starts_with(&prefix) || rule.starts_with(&format!("{r}."))
            });
        if !known {
            // Test rules are entrypoints too, but not what anyone means.
            let available = rules
                .iter()
                .map(|r| entrypoint_name(r))
                .filter(|r| !r.rsplit('/').next().unwrap_or(r).starts_with("test_"))
                .collect();
            return Err(PolicyError::UnknownEntrypoint {
                entrypoint: entrypoint.to_string(),
                available,
            });
        }
        let query = if rule == "data" {
            Query::Document(rule)
        } else if packages.contains(&rule) {
            let wrapper = format!("package {WRAPPER_PACKAGE}\nimport rego.v1\nresult := {rule}\n");
            match template.add_policy(format!("{WRAPPER_PACKAGE}.rego"), wrapper) {
                Ok(_) => Query::Rule(format!("data.{WRAPPER_PACKAGE}.result")),
                // A package path the wrapper cannot name: query it instead.
                Err(_) => Query::Document(rule),
            }
        } else if rules.contains(&rule) {
            Query::Rule(rule)
        } else {
            // A path inside a rule's value (or a parent of packages).
            Query::Document(rule)
        };
        let deterministic = calls
            .iter()
            .all(|c| !NONDETERMINISTIC.contains(&c.as_str()));
        let policy = RegoPolicy {
            pool: ArrayQueue::new(limits.pool_size.max(1)),
            deterministic,
            template,
            query,
            packages,
            input: input_paths::referenced(sources.iter().map(|(_, text)| text.as_str())),
        };
        // Prepare the template (rule analysis, scheduling) once, so pooled
        // clones start prepared; the outcome of this dry run is irrelevant.
        let _ = policy.eval_interpreter(regorus::Value::new_object());
        Ok(policy)
    }

    pub(crate) fn packages(&self) -> Vec<String> {
        self.packages.clone()
    }

    /// What of `input` decides, when a decision depends on nothing else:
    /// the parts the policy can read, if that is not all of it and no
    /// builtin it calls looks at the clock, chance or the network.
    pub(crate) fn cache_key(&self, input: &Value) -> Option<Value> {
        if !self.deterministic || self.input == Keep::All {
            return None;
        }
        Some(kept_json(input, &self.input))
    }

    /// Evaluates the entrypoint; `None` when it is undefined.
    pub(crate) fn eval(&self, input: &Value) -> Result<Option<Value>, PolicyError> {
        let value = self.eval_interpreter(to_regorus_kept(input, &self.input))?;
        if value == regorus::Value::Undefined {
            return Ok(None);
        }
        from_regorus(&value).map(Some)
    }

    fn eval_interpreter(&self, input: regorus::Value) -> Result<regorus::Value, PolicyError> {
        let mut engine = self.pool.pop().unwrap_or_else(|| self.template.clone());
        engine.set_input(input);
        let outcome = match &self.query {
            Query::Document(doc) => engine.eval_query(doc.clone(), false).map(|r| {
                r.result
                    .into_iter()
                    .next()
                    .and_then(|q| q.expressions.into_iter().next())
                    .map_or(regorus::Value::Undefined, |e| e.value)
            }),
            Query::Rule(rule) => engine.eval_rule(rule.clone()),
        };
        match outcome {
            Ok(v) => {
                let _ = self.pool.push(engine);
                Ok(v)
            }
            Err(e) => {
                if is_deadline(&format!("{e:#}")) {
                    Err(PolicyError::Deadline)
                } else {
                    Err(PolicyError::Eval(format!("{e}")))
                }
            }
        }
    }
}

/// The outcome of one Rego `test_*` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestCase {
    /// `data.pkg.test_name`.
    pub name: String,
    /// Whether the rule evaluated to `true`.
    pub passed: bool,
    /// Why it failed (an evaluation error, or the value it produced).
    pub message: Option<String>,
    /// Evaluation time.
    pub duration: Duration,
}

/// The outcome of [`run_tests`], printable like `opa test`.
#[derive(Debug, Clone, Default)]
pub struct TestReport {
    /// Every test, in package then name order.
    pub cases: Vec<TestCase>,
}

impl TestReport {
    /// Number of passing tests.
    pub fn passed(&self) -> usize {
        self.cases.iter().filter(|c| c.passed).count()
    }

    /// Number of failing tests.
    pub fn failed(&self) -> usize {
        self.cases.len() - self.passed()
    }

    /// Whether every test passed (and there was at least one).
    pub fn success(&self) -> bool {
        !self.cases.is_empty() && self.failed() == 0
    }
}

impl fmt::Display for TestReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.cases {
            let status = if c.passed { "PASS" } else { "FAIL" };
            write!(f, "{}: {status} ({:?})", c.name, c.duration)?;
            if let Some(m) = &c.message {
                write!(f, "\n  {m}")?;
            }
            writeln!(f)?;
        }
        writeln!(f, "{}", "-".repeat(80))?;
        if self.failed() == 0 {
            writeln!(f, "PASS: {}/{}", self.passed(), self.cases.len())
        } else {
            writeln!(f, "PASS: {}/{}", self.passed(), self.cases.len())?;
            writeln!(f, "FAIL: {}/{}", self.failed(), self.cases.len())
        }
    }
}

/// Runs every `test_*` rule in the `.rego` files under `dir` (a file or a
/// directory), like `opa test`. `data.json` files beside them are not read;
/// tests use `with data.… as …` or inline data.
pub fn run_tests(dir: impl AsRef<Path>) -> Result<TestReport, PolicyError> {
    let sources = read_sources(dir.as_ref())?;
    let engine = new_engine(&sources, &Value::Null)?;
    let mut names = Vec::new();
    for (path, text) in &sources {
        let package = text
            .lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix("package "))
            .map(|p| p.trim().to_string())
            .ok_or_else(|| PolicyError::Rego(format!("{}: no package", path.display())))?;
        for line in text.lines() {
            let line = line.trim_start();
            if let Some(rest) = line.strip_prefix("test_") {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let full = format!("data.{package}.test_{name}");
                if !names.contains(&full) {
                    names.push(full);
                }
            }
        }
    }
    let mut report = TestReport::default();
    for name in names {
        let mut e = engine.clone();
        let start = Instant::now();
        let outcome = e.eval_rule(name.clone());
        let duration = start.elapsed();
        let (passed, message) = match outcome {
            Ok(regorus::Value::Bool(true)) => (true, None),
            Ok(regorus::Value::Undefined) => (false, Some("test is undefined".to_string())),
            Ok(v) => (false, Some(format!("test produced {v}"))),
            Err(err) => (false, Some(format!("error: {err}"))),
        };
        report.cases.push(TestCase {
            name,
            passed,
            message,
            duration,
        });
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(src: &str, entrypoint: &str) -> Result<RegoPolicy, PolicyError> {
        RegoPolicy::new(
            &[(PathBuf::from("p.rego"), src.to_string())],
            &Value::Null,
            entrypoint,
            Limits::default(),
        )
    }

    #[test]
    fn entrypoints_rule_and_package() {
        let src = "package example\nimport rego.v1\ndefault allow := false\nallow if input.ok\n";
        let p = policy(src, "example/allow").unwrap();
        assert_eq!(p.eval(&json!({"ok": true})).unwrap(), Some(json!(true)));
        let p = policy(src, "example").unwrap();
        assert_eq!(
            p.eval(&json!({"ok": true})).unwrap(),
            Some(json!({"allow": true}))
        );
        assert!(matches!(
            policy(src, "other/allow"),
            Err(PolicyError::UnknownEntrypoint { .. })
        ));
    }

    #[test]
    fn input_conversion_matches_regorus_deserializer() {
        let docs = [
            json!(null),
            json!({"a": [1, -2, 3.5, 18446744073709551615u64, -9223372036854775808i64, 1e300]}),
            json!({"attributes": {"source": {"principal": "spiffe://a/b"}}, "x": [true, false, null, "s", {}, []]}),
            json!({"": {"é": "\u{0}"}}),
        ];
        for d in docs {
            assert_eq!(to_regorus(&d), regorus::Value::from(d.clone()), "{d}");
        }
    }

    #[test]
    fn package_entrypoint_equals_package_query() {
        let src = "package example\nimport rego.v1\ndefault allow := false\nallow if input.ok\nreason := \"r\" if input.ok\nf(x) := x\n";
        let p = policy(src, "example").unwrap();
        let mut reference =
            new_engine(&[(PathBuf::from("p.rego"), src.to_string())], &Value::Null).unwrap();
        for input in [json!({"ok": true}), json!({"ok": false}), json!({})] {
            reference.set_input(to_regorus(&input));
            let q = reference.eval_query("data.example".into(), false).unwrap();
            let expected = from_regorus(&q.result[0].expressions[0].value).unwrap();
            assert_eq!(p.eval(&input).unwrap(), Some(expected), "{input}");
        }
        assert_eq!(p.packages(), vec!["data.example".to_string()]);
    }

    #[test]
    fn glob_match_is_opas() {
        let src = "package g\nimport rego.v1\nm := glob.match(input.p, input.d, input.s)\n";
        let p = policy(src, "g/m").unwrap();
        let m = |pattern: &str, d: Value, s: &str| p.eval(&json!({"p": pattern, "d": d, "s": s}));
        assert_eq!(
            m("*.org", json!(null), "a.b.org").unwrap(),
            Some(json!(true))
        );
        assert_eq!(
            m("*.org", json!([]), "a.b.org").unwrap(),
            Some(json!(false))
        );
        assert_eq!(
            m("/ns/*", json!(["/"]), "/ns/a").unwrap(),
            Some(json!(true))
        );
        assert_eq!(
            m("/ns/*", json!(["/"]), "/ns/a/b").unwrap(),
            Some(json!(false))
        );
        // A bad pattern or delimiter is an evaluation error, never a match.
        assert!(m("[ab", json!(null), "a").is_err());
        assert!(m("*", json!(["ab"]), "a").is_err());
    }

    #[test]
    fn signets_builtins_run_in_rego() {
        let src = r#"package b
import rego.v1
d := crypto.sha256(input.s)
h := crypto.hmac.sha256(input.s, "k")
m := net.cidr_merge(["10.0.0.0/25", "10.0.0.128/25"])
i := net.cidr_intersects("10.0.0.0/8", "10.1.0.0/16")
v := io.jwt.decode_verify(input.s, {"secret": "k"})
g := regex.globs_match("a+", "b*a")
"#;
        let p = policy(src, "b").unwrap();
        let out = p.eval(&json!({"s": "abc"})).unwrap().unwrap();
        assert_eq!(
            out["d"],
            json!("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        assert_eq!(out["h"].as_str().map(str::len), Some(64));
        assert_eq!(out["m"], json!(["10.0.0.0/24"]));
        assert_eq!(out["i"], json!(true));
        assert_eq!(out["g"], json!(true));
        // "abc" is no JWT: an error, so `v` is undefined (OPA, non-strict).
        assert!(out.get("v").is_none(), "{out}");
    }

    #[test]
    fn a_policy_calling_an_unknown_builtin_is_refused_at_load() {
        let unknown = "package u\nimport rego.v1\nallow if no.such.builtin(input.x)\n";
        // regorus knows http.send by name but it is always undefined.
        let stub = "package u\nimport rego.v1\nallow if http.send({\"url\": input.u}).status_code == 200\n";
        for (src, builtin) in [(unknown, "no.such.builtin"), (stub, "http.send")] {
            match policy(src, "u/allow") {
                Err(PolicyError::MissingBuiltin(name)) => assert_eq!(name, builtin),
                other => panic!("loaded: {:?}", other.map(|_| ())),
            }
        }
        // A policy's own functions, called locally, through `data.` or an
        // import, are no builtins.
        let lib = "package lib\nimport rego.v1\ntwice(x) := x * 2\n";
        let main = "package main\nimport rego.v1\nimport data.lib\nown(x) := x + 1\nr := [own(1), lib.twice(2), data.lib.twice(3)]\n";
        let sources = [
            (PathBuf::from("lib.rego"), lib.to_string()),
            (PathBuf::from("main.rego"), main.to_string()),
        ];
        let p = RegoPolicy::new(&sources, &Value::Null, "main/r", Limits::default()).unwrap();
        assert_eq!(p.eval(&json!({})).unwrap(), Some(json!([2, 4, 6])));
    }

    #[test]
    fn pruned_input_decides_like_the_whole_input() {
        let input = json!({
            "attributes": {"source": {"principal": "spiffe://a/x", "address": {"socketAddress": {"portValue": 7}}},
                           "request": {"http": {"method": "GET", "headers": {"h": "1", "k": "2"}}}},
            "spiffe": {"peer_path": "/x", "peer_trust_domain": "a"},
            "tls": {"version": "TLSv1.3"},
            "list": [1, {"a": 2}],
        });
        let policies = [
            "r := [input.spiffe.peer_path, input.attributes.request.http.headers]",
            "r := {k | input.attributes.request.http.headers[k]}",
            "r := count(input.attributes.source)",
            "r := input.list[1].a",
            "r := input.attributes.source.address.socketAddress.portValue + 1",
            "r := object.keys(input)",
            "r := input.missing.deeper",
            "r := input.tls.version.nope",
        ];
        for body in policies {
            let src = format!("package t\nimport rego.v1\n{body}\n");
            let pruned = policy(&src, "t/r").unwrap();
            let mut whole =
                new_engine(&[(PathBuf::from("p.rego"), src.clone())], &Value::Null).unwrap();
            whole.set_input(to_regorus(&input));
            let expected = whole.eval_rule("data.t.r".to_string()).unwrap();
            let expected = if expected == regorus::Value::Undefined {
                None
            } else {
                Some(from_regorus(&expected).unwrap())
            };
            assert_eq!(pruned.eval(&input).unwrap(), expected, "{body}");
        }
    }
}
