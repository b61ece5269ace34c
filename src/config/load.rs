//! Loading: built-in defaults, then the TOML file, then `WORKSPACED_*` variables, merged
//! by figment; every error names the source, the line where the file has the key, the key
//! path and what is wrong.

use std::fmt;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Toml};

use super::schema::Config;

/// The config file used when `--config` is not given and this file exists.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/workspaced/workspaced.toml";

/// Prefix of environment variables that override config keys.
pub const ENV_PREFIX: &str = "WORKSPACED_";

/// Where the config came from: a file (maybe none) plus the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigSource {
    /// The TOML file, or `None` for built-in defaults plus environment only.
    pub file: Option<PathBuf>,
}

impl ConfigSource {
    /// `--config PATH` when given; otherwise the default path if it exists; otherwise none.
    pub fn resolve(explicit: Option<&Path>) -> ConfigSource {
        match explicit {
            Some(path) => ConfigSource { file: Some(path.to_path_buf()) },
            None => {
                let default = PathBuf::from(DEFAULT_CONFIG_PATH);
                ConfigSource { file: default.exists().then_some(default) }
            }
        }
    }

    /// Names the source for messages: the file path or "built-in defaults".
    pub fn describe(&self) -> String {
        match &self.file {
            Some(path) => path.display().to_string(),
            None => "built-in defaults".to_owned(),
        }
    }
}

/// A config that cannot be used. `source` is the file path or the environment variable,
/// `key` the dotted key path (`server.listen`), `reason` what is wrong with its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub source_name: String,
    /// The line of the key in the file, when the file has it.
    pub line: Option<usize>,
    pub key: Option<String>,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.source_name)?;
        if let Some(line) = self.line {
            write!(f, ": line {line}")?;
        }
        match &self.key {
            Some(key) => write!(f, ": key `{key}`: {}", self.reason),
            None => write!(f, ": {}", self.reason),
        }
    }
}

impl ConfigError {
    pub fn metric_label(&self) -> &'static str {
        if self.key.is_some() { "invalid_value" } else { "unreadable" }
    }

    fn in_file(path: &Path, key: Option<&str>, reason: impl Into<String>) -> Self {
        ConfigError {
            source_name: path.display().to_string(),
            line: None,
            key: key.map(str::to_owned),
            reason: reason.into(),
        }
    }
}

/// Loads and validates the configuration from `source` and the process environment.
pub fn load(source: &ConfigSource) -> Result<Config, ConfigError> {
    let mut figment = Figment::new();
    let mut text = None;
    if let Some(path) = &source.file {
        // figment silently skips a missing file; an operator who named a file wants it.
        text = Some(std::fs::read_to_string(path).map_err(|error| {
            ConfigError::in_file(path, None, format!("cannot read config file: {error}"))
        })?);
        figment = figment.merge(Toml::file_exact(path));
    }
    figment = figment.merge(env_provider());
    let with_line = |mut error: ConfigError| {
        if error.line.is_none()
            && let (Some(text), Some(key), Some(path)) = (&text, &error.key, &source.file)
            && error.source_name == path.display().to_string()
        {
            error.line = line_of(text, key);
        }
        error
    };
    let config: Config =
        figment.extract().map_err(|error| with_line(from_figment(source, error)))?;
    config.validate(source).map_err(with_line)?;
    Ok(config)
}

/// `WORKSPACED_SERVER__LISTEN=…` → `server.listen`. `WORKSPACED_CONFIG` names the file
/// itself, and `WORKSPACED_TOKEN`, `_TOKEN_FILE` and `_URL` are the API client's (`ws`,
/// `pool`): none of them is a key.
fn env_provider() -> Env {
    Env::prefixed(ENV_PREFIX).ignore(&["config", "token", "token_file", "url"]).split("__")
}

fn from_figment(source: &ConfigSource, error: figment::Error) -> ConfigError {
    // figment chains several errors; the first is the one to fix first.
    let error = error.into_iter().next().unwrap_or_else(|| figment::Error::from("unknown error"));
    let path = error.path.clone();
    let key = (!path.is_empty()).then(|| key_path(&path));
    let source_name = match &error.metadata {
        Some(metadata) => match &metadata.source {
            Some(figment::Source::File(file)) => file.display().to_string(),
            _ if metadata.name.contains("environment") => match &key {
                Some(_) => format!(
                    "environment variable {ENV_PREFIX}{}",
                    path.iter().map(|part| part.to_uppercase()).collect::<Vec<_>>().join("__")
                ),
                None => "environment".to_owned(),
            },
            _ => source.describe(),
        },
        None => source.describe(),
    };
    let reason = match &error.kind {
        figment::error::Kind::UnknownField(field, _) => format!("unknown key `{field}`"),
        kind => one_line(&kind.to_string()),
    };
    ConfigError { source_name, line: None, key, reason }
}

/// `["templates", "0", "name"]` → `templates[0].name`.
fn key_path(parts: &[String]) -> String {
    let mut key = String::new();
    for part in parts {
        if part.parse::<usize>().is_ok() {
            key.push_str(&format!("[{part}]"));
        } else {
            if !key.is_empty() {
                key.push('.');
            }
            key.push_str(part);
        }
    }
    key
}

/// The line of `key` (`templates[0].presets[1].name`) in the TOML `text`, or of the
/// deepest part of it that exists.
fn line_of(text: &str, key: &str) -> Option<usize> {
    let document = toml_edit::ImDocument::parse(text).ok()?;
    let mut item = document.as_item();
    let mut span = None;
    for segment in key.split('.') {
        let (name, indexes) = match segment.find('[') {
            Some(at) => (&segment[..at], &segment[at..]),
            None => (segment, ""),
        };
        if !name.is_empty() {
            let table = item.as_table_like()?;
            let (key, value) = match table.get_key_value(name) {
                Some(found) => found,
                None => break,
            };
            span = key.span().or_else(|| value.span()).or(span);
            item = value;
        }
        for index in indexes.split(['[', ']']).filter(|part| !part.is_empty()) {
            let index: usize = index.parse().ok()?;
            let Some(next) = item.get(index) else { break };
            span = next.span().or(span);
            item = next;
        }
    }
    let offset = span?.start;
    Some(text.get(..offset)?.matches('\n').count() + 1)
}

/// Folds a multi-line message (TOML parse errors draw the offending line with a caret)
/// into one line: the snippet is dropped, the position and the explanation are kept.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.contains('|'))
        .collect::<Vec<_>>()
        .join("; ")
}
