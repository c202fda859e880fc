//! `signet policy eval|check|test`: for policy authors.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Subcommand;
use serde_json::{Value, json};
use signet_policy::{EngineKind, PolicyOptions};

use crate::admin_cli::Output;

#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// Evaluate a policy (.wasm, OPA bundle .tar.gz, .rego or a directory) on an input.
    Eval {
        /// The policy: .wasm, OPA bundle .tar.gz, .rego or a directory.
        #[arg(long)]
        policy: PathBuf,
        /// Input document (JSON; - for stdin).
        #[arg(long)]
        input: PathBuf,
        /// Data document (JSON), overriding a bundle's data.json.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Entrypoint, e.g. signet/authz/allow.
        #[arg(long)]
        entrypoint: Option<String>,
        /// `value`: the entrypoint's value as JSON, as `opa eval` gives it
        /// (nothing on stdout when undefined); `decision`: what Signet
        /// makes of it (allow, reason, status, headers).
        #[arg(long, value_enum, default_value = "value")]
        format: EvalFormat,
    },
    /// Load a policy and report its engine, entrypoints and builtins.
    Check {
        /// The policy: .wasm, OPA bundle .tar.gz, .rego or a directory.
        policy: PathBuf,
        /// Entrypoint to check for, e.g. signet/authz/allow [default: the
        /// bundle's first, else signet/authz/allow].
        #[arg(long)]
        entrypoint: Option<String>,
    },
    /// Run the Rego test_* rules of a directory, like `opa test`.
    Test {
        /// The directory of .rego files (with their test_* rules).
        dir: PathBuf,
    },
}

/// What `policy eval` prints.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum EvalFormat {
    Value,
    Decision,
}

fn read_json(path: &PathBuf) -> anyhow::Result<Value> {
    let bytes = if path.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
        buf
    } else {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
    };
    serde_json::from_slice(&bytes).with_context(|| format!("{} is not valid JSON", path.display()))
}

fn options(entrypoint: Option<String>, data: Option<Value>) -> PolicyOptions {
    let mut o = PolicyOptions::default();
    if let Some(e) = entrypoint {
        o = o.with_entrypoint(e);
    }
    if let Some(d) = data {
        o = o.with_data(d);
    }
    o
}

pub fn run(cmd: PolicyCmd, output: Output) -> anyhow::Result<()> {
    match cmd {
        PolicyCmd::Eval {
            policy,
            input,
            data,
            entrypoint,
            format,
        } => {
            let input = read_json(&input)?;
            let data = data.as_ref().map(read_json).transpose()?;
            let loaded = signet_policy::Policy::load(&policy, &options(entrypoint, data))
                .with_context(|| format!("cannot load policy {}", policy.display()))?;
            // Values and decisions are data: always JSON.
            let _ = output;
            match format {
                EvalFormat::Decision => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&loaded.evaluate(&input))?
                    )
                }
                EvalFormat::Value => match loaded.evaluate_value(&input).with_context(|| {
                    format!("evaluating {} of {}", loaded.entrypoint(), policy.display())
                })? {
                    Some(value) => println!("{}", serde_json::to_string_pretty(&value)?),
                    None => eprintln!("{} is undefined for this input", loaded.entrypoint()),
                },
            }
        }
        PolicyCmd::Check { policy, entrypoint } => {
            let info = signet_policy::check(&policy, &options(entrypoint, None))
                .with_context(|| format!("policy {} does not load", policy.display()))?;
            let engine = match info.engine {
                EngineKind::Wasm => "wasm",
                EngineKind::Rego => "rego",
                _ => "other",
            };
            match output {
                Output::Json => println!(
                    "{}",
                    json!({
                        "engine": engine, "entrypoint": info.entrypoint, "entrypoints": info.entrypoints,
                        "builtins": info.builtins, "abi": info.abi.map(|(a, b)| format!("{a}.{b}")),
                        "revision": info.revision,
                    })
                ),
                Output::Text => {
                    println!("Policy {} loads ({engine})", policy.display());
                    if let Some((a, b)) = info.abi {
                        println!("  OPA Wasm ABI  {a}.{b}");
                    }
                    println!("  entrypoint    {}", info.entrypoint);
                    println!("  entrypoints   {}", info.entrypoints.join(", "));
                    if !info.builtins.is_empty() {
                        println!("  builtins      {}", info.builtins.join(", "));
                    }
                    println!("  revision      {}", info.revision);
                }
            }
        }
        PolicyCmd::Test { dir } => {
            let report = signet_policy::run_tests(&dir)
                .with_context(|| format!("cannot run the tests in {}", dir.display()))?;
            match output {
                Output::Json => println!(
                    "{}",
                    json!({
                        "passed": report.passed(), "failed": report.failed(),
                        "cases": report.cases.iter().map(|c| json!({"name": c.name, "passed": c.passed, "message": c.message})).collect::<Vec<_>>(),
                    })
                ),
                Output::Text => print!("{report}"),
            }
            if report.cases.is_empty() {
                bail!("no test_* rules found in {}", dir.display());
            }
            if report.failed() > 0 {
                bail!(
                    "{} of {} policy tests failed",
                    report.failed(),
                    report.cases.len()
                );
            }
        }
    }
    Ok(())
}
