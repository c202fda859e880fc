//! One way every command reads its settings: a TOML file, with the flags
//! given on the command line laid over it.
//!
//! A settings type is one struct that is both the file's schema (serde,
//! `deny_unknown_fields`) and the command's flags (clap), a key per flag of
//! the same name. [`overlay`] lays the flags that were given over the
//! file's keys by name, for every field at once: no list of fields to keep
//! in step, so no field can be forgotten. Checking the result, with every
//! problem reported at once, is the settings type's own.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// Why settings could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read config file {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("config file {path} is invalid: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("the flags and the config file disagree on a key's type: {0}")]
    Merge(String),
}

/// `flags` laid over the TOML file at `path` (none: the flags alone).
///
/// A flag that was given (not unset, not an empty list, not `false`)
/// replaces the file's key of the same name; every other key comes from
/// the file. A table (`[federation]`, flags of a flattened struct) is laid
/// over the file's table of that name the same way, key by key. Keys the type skips (`#[serde(skip)]`) come back as their
/// default: take them out of `flags` before, if they are needed after.
pub fn overlay<S>(flags: &S, path: Option<&Path>) -> Result<S, SettingsError>
where
    S: Serialize + DeserializeOwned,
{
    let mut merged = match path {
        Some(path) => read_file::<S>(path)?,
        None => Map::new(),
    };
    let given = serde_json::to_value(flags).map_err(|e| SettingsError::Merge(e.to_string()))?;
    if let Value::Object(given) = given {
        lay_over(&mut merged, given);
    }
    serde_json::from_value(Value::Object(merged)).map_err(|e| SettingsError::Merge(e.to_string()))
}

/// Lays the given keys of `given` over `file`, tables key by key.
fn lay_over(file: &mut Map<String, Value>, given: Map<String, Value>) {
    for (key, value) in given {
        match (file.get_mut(&key), value) {
            (Some(Value::Object(table)), Value::Object(inner)) => lay_over(table, inner),
            (None, Value::Object(inner)) => {
                let mut table = Map::new();
                lay_over(&mut table, inner);
                if !table.is_empty() {
                    file.insert(key, Value::Object(table));
                }
            }
            (_, value) if is_given(&value) => {
                file.insert(key, value);
            }
            _ => {}
        }
    }
}

/// The file's keys, once the file has been checked against `S` (so its
/// errors name the line and the unknown or mistyped key).
fn read_file<S: DeserializeOwned>(path: &Path) -> Result<Map<String, Value>, SettingsError> {
    let text = std::fs::read_to_string(path).map_err(|e| SettingsError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let invalid = |reason: String| SettingsError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    toml::from_str::<S>(&text).map_err(|e| invalid(e.to_string()))?;
    toml::from_str::<Map<String, Value>>(&text).map_err(|e| invalid(e.to_string()))
}

/// Whether a serialized flag was given on the command line: clap leaves an
/// absent option `None`, an absent list empty and an absent switch `false`.
fn is_given(value: &Value) -> bool {
    match value {
        Value::Null | Value::Bool(false) => false,
        Value::Array(items) => !items.is_empty(),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Table {
        listen: Option<String>,
        cert: Option<String>,
    }

    #[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Settings {
        #[serde(default)]
        table: Table,
        name: Option<String>,
        ttl: Option<String>,
        #[serde(default)]
        addresses: Vec<String>,
        #[serde(default)]
        once: bool,
        #[serde(skip)]
        config: Option<PathBuf>,
    }

    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("settings.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn every_given_flag_wins_and_the_file_fills_the_rest() {
        let (_dir, path) =
            file("name = \"file\"\nttl = \"1h\"\naddresses = [\"a\"]\nonce = true\n");
        let flags = Settings {
            ttl: Some("5m".into()),
            ..Default::default()
        };
        let got = overlay(&flags, Some(&path)).unwrap();
        assert_eq!(
            got,
            Settings {
                name: Some("file".into()),
                ttl: Some("5m".into()),
                addresses: vec!["a".into()],
                once: true,
                config: None,
                table: Table::default(),
            }
        );
        let flags = Settings {
            addresses: vec!["b".into(), "c".into()],
            ..Default::default()
        };
        assert_eq!(
            overlay(&flags, Some(&path)).unwrap().addresses,
            vec!["b".to_string(), "c".into()]
        );
    }

    #[test]
    fn a_table_is_laid_over_key_by_key() {
        let (_dir, path) = file("[table]\nlisten = \"file:1\"\ncert = \"file.pem\"\n");
        let flags = Settings {
            table: Table {
                listen: Some("flag:2".into()),
                cert: None,
            },
            ..Default::default()
        };
        let got = overlay(&flags, Some(&path)).unwrap();
        assert_eq!(got.table.listen.as_deref(), Some("flag:2"));
        assert_eq!(got.table.cert.as_deref(), Some("file.pem"));
        // No table in the file and no flag of it given: the default.
        let (_dir, path) = file("name = \"x\"\n");
        let got = overlay(&Settings::default(), Some(&path)).unwrap();
        assert_eq!(got.table, Table::default());
    }

    #[test]
    fn without_a_file_the_flags_are_the_settings() {
        let flags = Settings {
            name: Some("flag".into()),
            once: true,
            ..Default::default()
        };
        assert_eq!(
            overlay(&flags, None).unwrap(),
            Settings {
                name: Some("flag".into()),
                once: true,
                ..Default::default()
            }
        );
    }

    #[test]
    fn a_bad_file_is_named_with_its_problem() {
        let (_dir, path) = file("nmae = \"typo\"\n");
        let err = overlay(&Settings::default(), Some(&path))
            .unwrap_err()
            .to_string();
        assert!(err.contains("settings.toml is invalid"), "{err}");
        assert!(err.contains("nmae"), "{err}");
        let (_dir, path) = file("once = \"yes\"\n");
        let err = overlay(&Settings::default(), Some(&path))
            .unwrap_err()
            .to_string();
        assert!(err.contains("once"), "{err}");
        let missing = Path::new("/nonexistent/settings.toml");
        let err = overlay(&Settings::default(), Some(missing))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cannot read config file /nonexistent/settings.toml"),
            "{err}"
        );
    }
}
