//! Layering: built-in defaults < `cloudx.toml` < environment variables < command-line flags.
//!
//! The loader never reads the process environment itself: callers pass it in (the CLI passes
//! `std::env::vars()`, tests pass a handful of pairs), so tests never touch global state.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

/// `CLOUDX_` variables that are not configuration: the file's path, and the API key the Python
/// extension's `cloudx.connect` reads (a notebook may set it and also open an instance).
const CLIENT_VARS: [&str; 2] = ["CLOUDX_CONFIG", "CLOUDX_API_KEY"];

use serde::de::DeserializeOwned;
use toml::{Table, Value};

use super::keys::{self, KeyKind};
use super::{CloudxConfig, validate};
use crate::error::{Error, ErrorKind};

/// Where a configuration value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The configuration file at this path.
    File(PathBuf),
    /// This environment variable.
    Env(String),
    /// This command-line flag.
    Flag(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(path) => write!(f, "set in {}", path.display()),
            Origin::Env(var) => write!(f, "set by {var}"),
            Origin::Flag(flag) => write!(f, "set by {flag}"),
        }
    }
}

/// One problem with the configuration: the key, what is wrong, and where the value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The dotted key (`http.bind`), or the variable or file that could not be read.
    pub key: String,
    /// What is wrong and what is allowed.
    pub message: String,
    /// Where the offending value was set, when known.
    pub origin: Option<Origin>,
}

impl ConfigProblem {
    pub(crate) fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self { key: key.into(), message: message.into(), origin: None }
    }
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)?;
        if let Some(origin) = &self.origin {
            write!(f, " ({origin})")?;
        }
        Ok(())
    }
}

/// The configuration is invalid; every problem found is listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    problems: Vec<ConfigProblem>,
}

impl ConfigError {
    /// Every problem found.
    pub fn problems(&self) -> &[ConfigProblem] {
        &self.problems
    }

    pub(crate) fn from_problems(problems: Vec<ConfigProblem>) -> Result<(), Self> {
        if problems.is_empty() { Ok(()) } else { Err(Self { problems }) }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.problems.as_slice() {
            [one] => write!(f, "invalid configuration: {one}"),
            many => {
                write!(f, "invalid configuration ({} problems):", many.len())?;
                for problem in many {
                    write!(f, "\n  - {problem}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigError {}

impl From<ConfigError> for Error {
    fn from(err: ConfigError) -> Self {
        Error::new(ErrorKind::InvalidInput, err.to_string())
    }
}

/// Builds a [`CloudxConfig`] from its layers.
///
/// # Example
/// ```
/// use cloudx_core::config::ConfigLoader;
///
/// let config = ConfigLoader::new()
///     .env([("CLOUDX_HTTP__BIND", "127.0.0.1:9000"), ("HOME", "/root")])
///     .load()
///     .unwrap();
/// assert_eq!(config.http.bind, "127.0.0.1:9000");
/// ```
#[derive(Debug, Default)]
pub struct ConfigLoader {
    file: Option<PathBuf>,
    default_file: Option<PathBuf>,
    env: Vec<(String, String)>,
    flags: Vec<(String, String, Value)>,
}

/// The sections of the configuration, in documentation order.
const SECTIONS: [&str; 7] = ["database", "storage", "sandbox", "auth", "http", "llm", "worker"];
/// The top-level keys that are not sections.
const TOP_LEVEL: [&str; 2] = ["data_dir", "profile"];

impl ConfigLoader {
    /// A loader with no layers but the built-in defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads this configuration file (from `--config`); it must exist.
    #[must_use]
    pub fn file(mut self, path: impl Into<PathBuf>) -> Self {
        self.file = Some(path.into());
        self
    }

    /// Reads this file when it exists and neither [`file`](Self::file) nor `CLOUDX_CONFIG` names
    /// one (the CLI passes `./cloudx.toml`).
    #[must_use]
    pub fn default_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.default_file = Some(path.into());
        self
    }

    /// The environment, as name/value pairs. Only `CLOUDX_*`, `OPENAI_API_KEY` and
    /// `OPENAI_BASE_URL` are read; `CLOUDX_CONFIG` names the file, `CLOUDX_API_KEY` is the
    /// Python client's, `CLOUDX_TEST_*` is reserved for test harnesses, and any other `CLOUDX_`
    /// variable must name a key.
    #[must_use]
    pub fn env<I, K, V>(mut self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.env.extend(vars.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// Sets `key` from a command-line flag named `flag`, over every other layer.
    #[must_use]
    pub fn flag(mut self, key: &str, flag: &str, value: impl Into<Value>) -> Self {
        self.flags.push((key.to_owned(), flag.to_owned(), value.into()));
        self
    }

    /// Merges the layers and validates the result.
    ///
    /// # Errors
    /// Every problem found: unreadable file, unknown keys or variables, values of the wrong
    /// type, invalid values and settings the profile refuses.
    pub fn load(self) -> Result<CloudxConfig, ConfigError> {
        let mut merged = Merged::default();
        merged.read_file(self.config_file());
        merged.read_env(&self.env);
        for (key, flag, value) in self.flags {
            merged.set(&key, value, Origin::Flag(flag));
        }
        merged.finish()
    }

    /// The configuration file to read, if any, and whether it must exist.
    fn config_file(&self) -> Option<(PathBuf, Origin, bool)> {
        if let Some(path) = &self.file {
            return Some((path.clone(), Origin::Flag("--config".into()), true));
        }
        if let Some((_, path)) = self.env.iter().find(|(k, _)| k == "CLOUDX_CONFIG") {
            return Some((PathBuf::from(path), Origin::Env("CLOUDX_CONFIG".into()), true));
        }
        self.default_file.clone().map(|path| (path, Origin::Flag("the default location".into()), false))
    }
}

/// The merged table and where each key came from.
#[derive(Default)]
struct Merged {
    table: Table,
    origins: HashMap<String, Origin>,
    problems: Vec<ConfigProblem>,
}

impl Merged {
    fn read_file(&mut self, file: Option<(PathBuf, Origin, bool)>) {
        let Some((path, named_by, required)) = file else { return };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => return,
            Err(e) => {
                self.problems.push(ConfigProblem {
                    key: path.display().to_string(),
                    message: format!("cannot read the configuration file: {e}"),
                    origin: Some(named_by),
                });
                return;
            }
        };
        let table: Table = match toml::from_str(&text) {
            Ok(table) => table,
            Err(e) => {
                let message = format!("not valid TOML: {}", e.to_string().trim_end());
                self.problems.push(ConfigProblem::new(path.display().to_string(), message));
                return;
            }
        };
        for (name, value) in &table {
            match value {
                Value::Table(section) => {
                    for key in section.keys() {
                        self.origins.insert(format!("{name}.{key}"), Origin::File(path.clone()));
                    }
                }
                _ => {
                    self.origins.insert(name.clone(), Origin::File(path.clone()));
                }
            }
        }
        self.table = table;
    }

    fn read_env(&mut self, env: &[(String, String)]) {
        // The conventional OpenAI variables first, so that CLOUDX_LLM__* wins over them.
        for (var, key) in [("OPENAI_BASE_URL", "llm.base_url"), ("OPENAI_API_KEY", "llm.api_key")] {
            if let Some((_, value)) = env.iter().find(|(k, _)| k == var) {
                self.set(key, Value::String(value.clone()), Origin::Env(var.into()));
            }
        }
        let mut vars: Vec<_> = env.iter().filter(|(k, _)| k.starts_with("CLOUDX_")).collect();
        vars.sort();
        for (var, raw) in vars {
            if CLIENT_VARS.contains(&var.as_str()) || var.starts_with("CLOUDX_TEST_") {
                continue;
            }
            let key = env_var_to_key(var);
            let Some(spec) = keys::find(&key) else {
                self.problems.push(ConfigProblem::new(
                    var.clone(),
                    format!("unknown environment variable: cloudx has no configuration key `{key}` (see docs/configuration.md for the list; remove or rename the variable)"),
                ));
                continue;
            };
            match parse_env_value(spec.kind, raw) {
                Ok(value) => self.set(&key, value, Origin::Env(var.clone())),
                Err(expected) => {
                    let shown = if spec.secret { "<redacted>" } else { raw.as_str() };
                    self.problems.push(ConfigProblem {
                        key,
                        message: format!("`{shown}` is not {expected}"),
                        origin: Some(Origin::Env(var.clone())),
                    });
                }
            }
        }
    }

    /// Sets a dotted key, creating its section.
    fn set(&mut self, key: &str, value: Value, origin: Origin) {
        let (section, name) = match key.split_once('.') {
            Some((section, name)) => (Some(section), name),
            None => (None, key),
        };
        let target = match section {
            None => &mut self.table,
            Some(section) => match self.table.entry(section).or_insert_with(|| Value::Table(Table::new())) {
                Value::Table(t) => t,
                _ => {
                    self.problems.push(ConfigProblem::new(
                        section,
                        format!("must be a table ([{section}]), not a single value"),
                    ));
                    return;
                }
            },
        };
        target.insert(name.to_owned(), value);
        self.origins.insert(key.to_owned(), origin);
    }

    fn finish(mut self) -> Result<CloudxConfig, ConfigError> {
        let mut config = CloudxConfig::default();
        let mut table = std::mem::take(&mut self.table);
        if let Some(v) = table.remove("data_dir") {
            config.data_dir = self.field("data_dir", v).unwrap_or(config.data_dir);
        }
        if let Some(v) = table.remove("profile") {
            config.profile = self.field("profile", v).unwrap_or(config.profile);
        }
        macro_rules! section {
            ($($name:ident),*) => {$(
                if let Some(v) = table.remove(stringify!($name)) {
                    config.$name = self.field(stringify!($name), v).unwrap_or_default();
                }
            )*};
        }
        section!(database, storage, sandbox, auth, http, llm, worker);
        for (unknown, _) in table {
            let allowed = TOP_LEVEL.iter().chain(SECTIONS.iter()).copied().collect::<Vec<_>>().join(", ");
            let origin = self.origins.get(&unknown).cloned();
            self.problems.push(ConfigProblem {
                key: unknown,
                message: format!("unknown key; the top level has {allowed}"),
                origin,
            });
        }
        let mut problems = std::mem::take(&mut self.problems);
        let mut semantic = Vec::new();
        validate(&config, &mut semantic);
        for mut problem in semantic {
            problem.origin = self.origins.get(&problem.key).cloned();
            problems.push(problem);
        }
        ConfigError::from_problems(problems)?;
        Ok(config)
    }

    /// Deserializes one top-level value, recording a problem (with its path) on failure.
    fn field<T: DeserializeOwned>(&mut self, name: &str, value: Value) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(v) => Some(v),
            Err(e) => {
                let path = e.path().to_string();
                let key = if path == "." || path == "?" { name.to_owned() } else { format!("{name}.{path}") };
                let message = describe_serde_error(&e.inner().to_string());
                let origin = self.origins.get(&key).cloned();
                self.problems.push(ConfigProblem { key, message, origin });
                None
            }
        }
    }
}

/// `CLOUDX_DATA_DIR` → `data_dir`; `CLOUDX_DATABASE__URL` → `database.url`.
fn env_var_to_key(var: &str) -> String {
    var.trim_start_matches("CLOUDX_").to_ascii_lowercase().replace("__", ".")
}

/// Reads an environment variable's text as the TOML value its key expects.
fn parse_env_value(kind: KeyKind, raw: &str) -> Result<Value, &'static str> {
    let trimmed = raw.trim();
    Ok(match kind {
        KeyKind::Text | KeyKind::Duration | KeyKind::Size => Value::String(raw.to_owned()),
        KeyKind::Integer => Value::Integer(trimmed.parse().map_err(|_| "a whole number")?),
        KeyKind::Bool => Value::Boolean(match trimmed.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => true,
            "false" | "0" | "no" | "off" => false,
            _ => return Err("true or false"),
        }),
        KeyKind::List => Value::Array(
            trimmed.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| Value::String(s.to_owned())).collect(),
        ),
    })
}

/// Serde's messages are precise but terse; say what the allowed forms are where it helps.
fn describe_serde_error(message: &str) -> String {
    let message = message.trim_end();
    if message.contains("expected a duration") || message.contains("humantime") {
        return format!("{message} (durations look like 500ms, 30s, 5m or 1h)");
    }
    if message.contains("parsable string") {
        return format!("{message} (sizes look like 16MiB, 512KiB or a number of bytes)");
    }
    message.to_owned()
}
