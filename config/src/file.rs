//! What every config file type shares: reading the file, parsing TOML with errors that name
//! the file, and running the type's rules with errors that name the field.

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::error::{ConfigError, FieldError, INLINE_CONFIG_PATH};

/// A config schema with validation rules.
pub(crate) trait Rules: DeserializeOwned {
    /// All rules, first failure wins, in the order the fields appear in a file.
    fn check(&self) -> Result<(), FieldError>;
}

/// Reads, parses and validates the file at `path`.
pub(crate) fn load<T: Rules>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path)
}

/// Parses and validates TOML `text`; errors name `path_for_errors`.
pub(crate) fn parse<T: Rules>(text: &str, path_for_errors: &Path) -> Result<T, ConfigError> {
    let config: T = toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path_for_errors.to_path_buf(),
        message: e.to_string(),
    })?;
    config.check().map_err(|e| e.in_file(path_for_errors))?;
    Ok(config)
}

/// Runs the rules on a config that came from no file.
pub(crate) fn validate<T: Rules>(config: &T) -> Result<(), ConfigError> {
    config
        .check()
        .map_err(|e| e.in_file(Path::new(INLINE_CONFIG_PATH)))
}
