//! Config errors: YAML syntax errors with line/column, and validation issues with key paths.

use std::fmt;

/// One validation problem: the key path and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// Dotted key path, e.g. `routes[2].upstream`.
    pub path: String,
    /// Why the value is wrong.
    pub reason: String,
}

/// Collects validation problems (errors) and warnings while a config is compiled.
#[derive(Debug, Default)]
pub struct Issues {
    /// Problems that make the config unusable.
    pub errors: Vec<Issue>,
    /// Things that work but are probably wrong.
    pub warnings: Vec<Issue>,
}

impl Issues {
    /// Records an error at `path`.
    pub fn error(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.errors.push(Issue {
            path: path.into(),
            reason: reason.into(),
        });
    }
    /// Records a warning at `path`.
    pub fn warn(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.warnings.push(Issue {
            path: path.into(),
            reason: reason.into(),
        });
    }
}

/// Why a config could not be used.
#[derive(Debug)]
pub enum ConfigError {
    /// The file could not be read.
    Read(String, std::io::Error),
    /// YAML syntax or shape error (serde_yaml's message names the key path, line and column).
    Yaml(serde_yaml::Error),
    /// Validation problems, each with its key path.
    Invalid(Vec<Issue>),
    /// The text is too large or too deeply nested to be a config (refused before parsing).
    Shape(String),
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            ConfigError::Read(p, e) => write!(f, "cannot read config file {p}: {e}"),
            ConfigError::Yaml(e) => match e.location() {
                Some(l) if !e.to_string().contains("line ") => {
                    write!(f, "{e} (line {} column {})", l.line(), l.column())
                }
                _ => write!(f, "{e}"),
            },
            ConfigError::Shape(m) => f.write_str(m),
            ConfigError::Invalid(v) => {
                for (i, issue) in v.iter().enumerate() {
                    if i > 0 {
                        writeln!(f)?;
                    }
                    write!(f, "{issue}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigError {}
