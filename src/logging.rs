//! Logs: human-readable on a terminal, JSON lines otherwise. In JSON, a
//! policy audit record is an object inside the line (`fields.record`), not
//! a string holding JSON, so log pipelines can index its fields.

use std::fmt;
use std::path::{Path, PathBuf};

use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The `tracing` target of policy audit records (`signet_policy::audit`).
const AUDIT_TARGET: &str = "signet::policy::audit";

/// Sets up logging with `filter` (falling back to `info` if it does not
/// parse), changeable at run time through the admin API.
pub fn init(filter: &str) {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let launch = if EnvFilter::try_new(filter).is_ok() {
        filter.to_owned()
    } else {
        "info".to_owned()
    };
    let (layer, handle) = tracing_subscriber::reload::Layer::new(EnvFilter::new(&launch));
    let registry = tracing_subscriber::registry().with(layer);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    if std::io::stderr().is_terminal() {
        registry.with(fmt).init();
    } else {
        registry
            .with(fmt.json().map_event_format(RecordAsObject))
            .init();
    }
    signet_server::logger::install(Box::new(Reloadable {
        handle,
        current: std::sync::Mutex::new(launch.clone()),
        launch,
    }));
}

type Handle = tracing_subscriber::reload::Handle<EnvFilter, tracing_subscriber::Registry>;

/// The filter layer's reload handle, and the filter texts.
struct Reloadable {
    handle: Handle,
    current: std::sync::Mutex<String>,
    launch: String,
}

impl signet_server::logger::LogControl for Reloadable {
    fn current(&self) -> String {
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn launch(&self) -> String {
        self.launch.clone()
    }

    fn set(&self, filter: &str) -> Result<(), String> {
        let parsed = EnvFilter::try_new(filter).map_err(|e| e.to_string())?;
        self.handle.reload(parsed).map_err(|e| e.to_string())?;
        *self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = filter.to_owned();
        Ok(())
    }
}

/// Wraps the JSON event format: audit events are formatted, then their
/// `record` field (recorded by `tracing` as a string) is put back as the
/// JSON object it is. Other events pass through untouched.
struct RecordAsObject<F>(F);

impl<S, N, F> FormatEvent<S, N> for RecordAsObject<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if event.metadata().target() != AUDIT_TARGET {
            return self.0.format_event(ctx, writer, event);
        }
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        match record_as_object(&line) {
            Some(fixed) => writeln!(writer, "{fixed}"),
            None => writer.write_str(&line),
        }
    }
}

/// The JSON log `line` with `fields.record` parsed, if it holds JSON.
fn record_as_object(line: &str) -> Option<serde_json::Value> {
    let mut doc: serde_json::Value = serde_json::from_str(line.trim_end()).ok()?;
    let record = doc.pointer_mut("/fields/record")?;
    *record = serde_json::from_str(record.as_str()?).ok()?;
    Some(doc)
}

/// Applies the config file's `log_level` (if it has one) now, and again
/// each time SIGHUP asks for the file to be reread. An invalid level is
/// refused with the reason and changes nothing; at start it fails the
/// start, as any other bad setting does.
pub fn follow_config_level(file: Option<PathBuf>, level: Option<&str>) -> anyhow::Result<()> {
    if let Some(level) = level {
        apply(level).map_err(|e| anyhow::anyhow!("log_level {level:?}: {e}"))?;
    }
    let Some(file) = file else {
        return Ok(());
    };
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| anyhow::anyhow!("cannot listen for SIGHUP: {e}"))?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match config_level(&file) {
                Ok(Some(level)) => match apply(&level) {
                    Ok(()) => {
                        tracing::info!(file = %file.display(), filter = %level, "SIGHUP: log filter reread from the config file")
                    }
                    Err(e) => {
                        tracing::warn!(file = %file.display(), filter = %level, reason = %e, "SIGHUP: the config file's log_level is invalid; the filter is unchanged")
                    }
                },
                Ok(None) => {
                    tracing::info!(file = %file.display(), "SIGHUP: the config file sets no log_level; the filter is unchanged")
                }
                Err(e) => {
                    tracing::warn!(file = %file.display(), reason = %e, "SIGHUP: cannot reread the config file; the filter is unchanged")
                }
            }
        }
    });
    Ok(())
}

fn apply(level: &str) -> Result<(), String> {
    match signet_server::logger::control() {
        Some(control) => control.set(level),
        None => Err("logging cannot be changed in this process".into()),
    }
}

/// The top-level `log_level` of a TOML config file.
fn config_level(file: &Path) -> Result<Option<String>, String> {
    let text = std::fs::read_to_string(file).map_err(|e| e.to_string())?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
    match table.get("log_level") {
        None => Ok(None),
        Some(toml::Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!(
            "log_level must be a string, not {}",
            other.type_str()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_audit_record_becomes_an_object_and_other_lines_stay() {
        let line = r#"{"timestamp":"t","level":"INFO","fields":{"message":"policy decision","record":"{\"allow\":true,\"peer\":\"spiffe://a/b\"}","allow":true},"target":"signet::policy::audit"}"#;
        let doc = record_as_object(line).unwrap();
        assert_eq!(doc["fields"]["record"]["allow"], true);
        assert_eq!(doc["fields"]["record"]["peer"], "spiffe://a/b");
        assert_eq!(doc["fields"]["message"], "policy decision");
        assert!(record_as_object(r#"{"fields":{"message":"x"}}"#).is_none());
        assert!(record_as_object(r#"{"fields":{"record":"not json"}}"#).is_none());
    }
}
