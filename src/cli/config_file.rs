//! `understudy run --config FILE`: every flag of `run` from a TOML file, with the precedence
//! flags > environment > file > defaults, and `--print-config` to show the result.
//!
//! How: before the command line is parsed, the file's settings are turned into the
//! `UNDERSTUDY_*` environment variables that every flag of `run` already reads, for those
//! not set in the environment. Clap then applies its own order (a flag beats its variable,
//! a variable beats the default), so the file slots in between without a second parser of
//! the flags, and its values go through the same checks and one-line errors as the flags.
//!
//! The file holds `key = value` lines, a key being a flag of `run` without its dashes
//! (`peer-listen = "0.0.0.0:7101"`, `failover-timeout = "500ms"`, `priority = 2`,
//! `no-failover = true`). An unknown key, a table, or a value that is not a string, an
//! integer, a float or a boolean is refused in one line that names the file and the key.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory};

use super::Cli;

/// The settings a config file put into the environment: variable name to flag.
#[derive(Debug, Default)]
pub struct Applied {
    pub file: Option<PathBuf>,
    pub from_file: BTreeSet<String>,
}

/// The `--config` of a `run` command line (`--config FILE` or `--config=FILE`), else
/// `UNDERSTUDY_CONFIG`; `None` for other commands.
fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let run_at = args.iter().position(|a| a == "run")?;
    let mut rest = args[run_at + 1..].iter();
    while let Some(arg) = rest.next() {
        let text = arg.to_string_lossy();
        if text == "--config" {
            return rest.next().map(PathBuf::from);
        }
        if let Some(path) = text.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os("UNDERSTUDY_CONFIG").map(PathBuf::from)
}

/// Every flag of `run` that a file may set: its long name and its environment variable.
fn settable() -> BTreeMap<String, String> {
    let command = Cli::command();
    let Some(run) = command.find_subcommand("run") else {
        return BTreeMap::new();
    };
    // The global flags (--log-format, --log-level) too.
    run.get_arguments()
        .chain(command.get_arguments())
        .filter_map(|arg| {
            let long = arg.get_long()?;
            let env = arg.get_env()?.to_string_lossy().into_owned();
            (long != "config" && long != "print-config").then(|| (long.to_owned(), env))
        })
        .collect()
}

/// Reads the config file of this command line, if any, and sets the environment variables
/// of the settings the environment does not set already. Call before parsing the command
/// line, while the process has one thread.
pub fn apply(args: &[OsString]) -> anyhow::Result<Applied> {
    let Some(path) = config_path(args) else {
        return Ok(Applied::default());
    };
    let settings = read(&path)?;
    let flags = settable();
    let mut applied = Applied {
        file: Some(path.clone()),
        from_file: BTreeSet::new(),
    };
    for (key, value) in settings {
        let Some(env) = flags.get(&key) else {
            bail!(
                "--config {}: unknown setting {key:?} (a setting is a flag of `understudy run` without its dashes, e.g. peer-listen)",
                path.display()
            );
        };
        if std::env::var_os(env).is_some() {
            continue;
        }
        // Edition 2021: safe; the caller runs this before any other thread exists.
        std::env::set_var(env, value);
        applied.from_file.insert(env.clone());
    }
    Ok(applied)
}

/// The file's settings as text values, keys as written.
fn read(path: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("--config {}", path.display()))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let line = e
            .span()
            .map(|span| text[..span.start.min(text.len())].lines().count().max(1));
        let message = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
        match line {
            Some(line) => anyhow!("--config {} line {line}: {message}", path.display()),
            None => anyhow!("--config {}: {message}", path.display()),
        }
    })?;
    let mut settings = BTreeMap::new();
    for (key, value) in table {
        let text = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => bail!(
                "--config {}: {key:?} is a {}; a setting is a string, a number or a boolean",
                path.display(),
                other.type_str()
            ),
        };
        settings.insert(key, text);
    }
    Ok(settings)
}

/// The merged configuration of `run` as TOML, each setting with where it came from:
/// every flag that has a value, in the order `understudy run --help` lists them.
pub fn print(matches: &ArgMatches, applied: &Applied) -> String {
    let command = Cli::command();
    let Some(run) = command.find_subcommand("run") else {
        return String::new();
    };
    let mut out = String::from(
        "# understudy run: the merged configuration (flags > environment > file > defaults)\n",
    );
    if let Some(file) = &applied.file {
        out.push_str(&format!("# file: {}\n", file.display()));
    }
    // The flags of `run`, then the global ones (--log-format, --log-level, --tls-ca).
    let mut seen = BTreeSet::new();
    for arg in run.get_arguments().chain(command.get_arguments()) {
        let id = arg.get_id().as_str();
        let Some(long) = arg.get_long() else { continue };
        if ["config", "print-config", "help", "version"].contains(&long) || !seen.insert(long) {
            continue;
        }
        let Some(source) = matches.value_source(id) else {
            continue;
        };
        let Some(values) = matches.get_raw(id) else {
            continue;
        };
        let values: Vec<String> = values.map(|v| v.to_string_lossy().into_owned()).collect();
        let from_file = arg
            .get_env()
            .is_some_and(|env| applied.from_file.contains(&*env.to_string_lossy()));
        let origin = match source {
            ValueSource::CommandLine => "flag",
            ValueSource::EnvVariable if from_file => "file",
            ValueSource::EnvVariable => "environment",
            _ => "default",
        };
        let value = values.join(",");
        // A JSON string is a valid TOML basic string (same escapes).
        let rendered = if matches!(value.as_str(), "true" | "false") {
            value
        } else {
            serde_json::Value::String(value).to_string()
        };
        out.push_str(&format!("{long} = {rendered}  # {origin}\n"));
    }
    out
}
