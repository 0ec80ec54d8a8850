//! Configuration loading shared by every binary: one TOML file plus
//! environment overrides.
//!
//! `load::<T>(Some(path), "AGGREGATOR")` reads the file (errors carry its line
//! and column), then applies every environment variable `AGGREGATOR__A__B=v`
//! as key `a.b = v` (`__` separates levels; the value is read as a TOML value
//! when it parses as one, else as a string), then deserializes `T`. Config
//! structs use `deny_unknown_fields`, so a misspelt key is an error that names it.

use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Why a service's configuration could not be loaded: it does not start.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file, as given.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML, or not a valid configuration on its own (e.g. an unknown key).
    #[error("config file {path}: {message}")]
    File {
        /// The file, as given.
        path: PathBuf,
        /// What is wrong, with its line and column.
        message: String,
    },
    /// An environment override could not be applied (an empty key segment, or a key under a value that is not a section).
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable's name, e.g. `INGEST__API_KEYS`.
        var: String,
        /// What is wrong with it.
        message: String,
    },
    /// The file and overrides together do not make a valid configuration (a
    /// wrong or missing value, or a service's own check of it); holds why.
    #[error("configuration: {0}")]
    Invalid(String),
}

impl ConfigError {
    /// The message without the `configuration:` prefix, for an error type
    /// that adds its own.
    pub fn into_message(self) -> String {
        match self {
            ConfigError::Invalid(message) => message,
            e => e.to_string(),
        }
    }
}

/// Load `T` from `path` (optional) and `PREFIX__...` environment variables.
pub fn load<T: DeserializeOwned>(path: Option<&Path>, env_prefix: &str) -> Result<T, ConfigError> {
    load_from(path, env_prefix, std::env::vars())
}

/// [`load`] with the environment given explicitly (for tests).
pub fn load_from<T: DeserializeOwned>(
    path: Option<&Path>,
    env_prefix: &str,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<T, ConfigError> {
    let mut table = toml::Table::new();
    if let Some(path) = path {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        // Deserializing the file on its own gives errors with line numbers.
        toml::from_str::<T>(&text).map_err(|e| ConfigError::File { path: path.to_path_buf(), message: e.to_string() })?;
        table = toml::from_str(&text).map_err(|e| ConfigError::File { path: path.to_path_buf(), message: e.to_string() })?;
    }
    let prefix = format!("{env_prefix}__");
    let mut overrides: Vec<(String, String)> = vars.into_iter().filter(|(k, _)| k.starts_with(&prefix)).collect();
    overrides.sort();
    for (var, raw) in &overrides {
        let path: Vec<String> = var[prefix.len()..].split("__").map(|s| s.to_ascii_lowercase()).collect();
        if path.iter().any(|p| p.is_empty()) {
            return Err(ConfigError::Env { var: var.clone(), message: "empty key segment".into() });
        }
        let value = parse_env_value(raw);
        let mut t = &mut table;
        for seg in &path[..path.len() - 1] {
            let entry = t.entry(seg.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            t = entry.as_table_mut().ok_or_else(|| ConfigError::Env { var: var.clone(), message: format!("`{seg}` is not a section") })?;
        }
        t.insert(path[path.len() - 1].clone(), value);
    }
    T::deserialize(toml::Value::Table(table)).map_err(|e| {
        let msg = e.to_string();
        if overrides.is_empty() {
            ConfigError::Invalid(msg)
        } else {
            let vars: Vec<&str> = overrides.iter().map(|(k, _)| k.as_str()).collect();
            ConfigError::Invalid(format!("{msg} (after environment overrides {})", vars.join(", ")))
        }
    })
}

fn parse_env_value(raw: &str) -> toml::Value {
    #[derive(serde::Deserialize)]
    struct Probe {
        v: toml::Value,
    }
    match toml::from_str::<Probe>(&format!("v = {raw}")) {
        Ok(p) => p.v,
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Inner {
        url: String,
        port: u16,
    }
    #[derive(Debug, Deserialize, PartialEq, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Cfg {
        name: String,
        inner: Inner,
        list: Vec<String>,
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn env_overrides_nested_keys_and_parses_values() {
        let c: Cfg = load_from(
            None,
            "APP",
            env(&[("APP__INNER__PORT", "9000"), ("APP__NAME", "x y"), ("APP__LIST", "[\"a\",\"b\"]"), ("OTHER", "1")]),
        )
        .unwrap();
        assert_eq!(c.inner.port, 9000);
        assert_eq!(c.name, "x y");
        assert_eq!(c.list, vec!["a", "b"]);
    }

    #[test]
    fn unknown_keys_are_named_with_the_line() {
        let dir = std::env::temp_dir().join(format!("cfgtest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.toml");
        std::fs::write(&f, "name = \"a\"\n[inner]\nurl = \"u\"\nprot = 1\n").unwrap();
        let err = load_from::<Cfg>(Some(&f), "APP", vec![]).unwrap_err().to_string();
        assert!(err.contains("prot") && err.contains("line 4"), "{err}");
        let err = load_from::<Cfg>(None, "APP", env(&[("APP__INNER__NOPE", "1")])).unwrap_err().to_string();
        assert!(err.contains("nope") && err.contains("APP__INNER__NOPE"), "{err}");
        let err = load_from::<Cfg>(None, "APP", env(&[("APP__INNER__PORT", "\"x\"")])).unwrap_err().to_string();
        assert!(err.contains("port") || err.contains("u16") || err.contains("invalid type"), "{err}");
    }
}
