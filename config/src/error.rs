//! [`ConfigError`], the one error type of this crate. Every variant names the file it is
//! about; validation errors also name the field by its dotted path (`raft.heartbeat_interval_ms`,
//! `peers[1].endpoint_id`) and say what is wrong and how to fix it.

use std::path::{Path, PathBuf};

/// The path reported in errors for a config that came from no file: one built in code and
/// checked with [`NodeConfig::validate`](crate::NodeConfig::validate).
pub const INLINE_CONFIG_PATH: &str = "<inline>";

/// Why a config could not be loaded or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (missing, unreadable, not UTF-8).
    #[error("cannot read config {}: {source}", .path.display())]
    Io {
        /// The file that was being read.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema: a syntax error, a missing required
    /// field, a value of the wrong type or an unknown field.
    #[error("cannot parse config {}: {message}", .path.display())]
    Parse {
        /// The file (or [`INLINE_CONFIG_PATH`]) that was being parsed.
        path: PathBuf,
        /// The TOML parser's message, which names the line, column and field.
        message: String,
    },
    /// The file parsed but a value breaks a rule (a range, a format, a uniqueness rule).
    #[error("invalid config {}: field `{field}`: {reason}", .path.display())]
    Invalid {
        /// The file (or [`INLINE_CONFIG_PATH`]) that holds the bad value.
        path: PathBuf,
        /// Dotted path of the field, e.g. `raft.election_timeout_min_ms` or `peers[1].addrs`.
        field: String,
        /// What is wrong, with the bad value where useful, and what to do instead.
        reason: String,
    },
}

/// A validation failure before it is tied to a file: validation code builds these, and
/// the entry points turn them into [`ConfigError::Invalid`] with the right path.
#[derive(Debug)]
pub(crate) struct FieldError {
    pub(crate) field: String,
    pub(crate) reason: String,
}

impl FieldError {
    /// A failure of `field` (relative to the struct being checked) for `reason`.
    pub(crate) fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The same failure seen from the parent struct, where this struct is field `parent`.
    pub(crate) fn under(self, parent: &str) -> Self {
        Self {
            field: format!("{parent}.{}", self.field),
            reason: self.reason,
        }
    }

    /// The public error for this failure in the config read from `path`.
    pub(crate) fn in_file(self, path: &Path) -> ConfigError {
        ConfigError::Invalid {
            path: path.to_path_buf(),
            field: self.field,
            reason: self.reason,
        }
    }
}
