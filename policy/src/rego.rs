//! Rego source evaluated by regorus, and `opa test`-style test runs.

use std::fmt;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;
use regorus::utils::limits::ExecutionTimerConfig;
use serde_json::Value;

use crate::{Limits, PolicyError};

/// Rego source files, parsed once per revision; a lock-free pool of engines
/// (each a cheap clone of the parsed one) serves concurrent evaluations.
pub(crate) struct RegoPolicy {
    template: regorus::Engine,
    rule: String,
    /// The entrypoint names a whole package document, evaluated as a query.
    is_package: bool,
    pool: ArrayQueue<regorus::Engine>,
}

impl fmt::Debug for RegoPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegoPolicy")
            .field("rule", &self.rule)
            .finish_non_exhaustive()
    }
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
    let mut engine = regorus::Engine::new();
    for (path, text) in sources {
        engine
            .add_policy(path.display().to_string(), text.clone())
            .map_err(|e| PolicyError::Rego(format!("{e}")))?;
    }
    if !data.is_null() {
        engine
            .add_data(regorus::Value::from(data.clone()))
            .map_err(|e| PolicyError::Data(format!("{e}")))?;
    }
    Ok(engine)
}

impl RegoPolicy {
    pub(crate) fn new(
        sources: &[(PathBuf, String)],
        data: &Value,
        entrypoint: &str,
        limits: Limits,
    ) -> Result<Self, PolicyError> {
        let mut template = new_engine(sources, data)?;
        template.set_execution_timer_config(ExecutionTimerConfig {
            limit: limits.deadline,
            check_interval: NonZeroU32::MIN,
        });
        let rule = rule_path(entrypoint);
        let packages = template
            .get_packages()
            .map_err(|e| PolicyError::Rego(format!("{e}")))?;
        let (pkg, _) = rule.rsplit_once('.').unwrap_or(("data", &rule));
        let prefix = format!("{rule}.");
        let known = packages
            .iter()
            .any(|p| p == pkg || p == &rule || p.starts_with(&prefix));
        if !known && rule != "data" {
            return Err(PolicyError::UnknownEntrypoint {
                entrypoint: entrypoint.to_string(),
                available: packages,
            });
        }
        Ok(RegoPolicy {
            is_package: packages.contains(&rule),
            pool: ArrayQueue::new(limits.pool_size.max(1)),
            template,
            rule,
        })
    }

    pub(crate) fn packages(&self) -> Vec<String> {
        self.template.get_packages().unwrap_or_default()
    }

    /// Evaluates the rule; `None` when it is undefined.
    pub(crate) fn eval(&self, input: &Value) -> Result<Option<Value>, PolicyError> {
        let mut engine = self.pool.pop().unwrap_or_else(|| self.template.clone());
        engine.set_input(regorus::Value::from(input.clone()));
        let outcome = if self.is_package {
            engine.eval_query(self.rule.clone(), false).map(|r| {
                r.result
                    .into_iter()
                    .next()
                    .and_then(|q| q.expressions.into_iter().next())
                    .map_or(regorus::Value::Undefined, |e| e.value)
            })
        } else {
            engine.eval_rule(self.rule.clone())
        };
        match outcome {
            Ok(v) => {
                let _ = self.pool.push(engine);
                if v == regorus::Value::Undefined {
                    return Ok(None);
                }
                let json = v
                    .to_json_str()
                    .map_err(|e| PolicyError::Eval(format!("{e}")))?;
                serde_json::from_str(&json)
                    .map(Some)
                    .map_err(|e| PolicyError::Eval(e.to_string()))
            }
            Err(e) => {
                let text = format!("{e}");
                if text.contains("time limit")
                    || text.contains("execution exceeded")
                    || text.contains("timed out")
                {
                    Err(PolicyError::Deadline)
                } else {
                    Err(PolicyError::Eval(text))
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
}
