//! `[auth]`, the same table in a node's and a router's config: bearer tokens and what each
//! may do. Without the table every request is served (the loopback default of `aspen
//! dev`); with it the HTTP API denies by default. A token is stored only as the SHA-256 of
//! its text, so the config file gives nobody a token; `aspen token new` makes one.
//!
//! ```toml
//! [auth]
//! open_paths = ["/healthz", "/readyz", "/metrics"]   # the default
//! [[auth.tokens]]
//! name = "deploy"
//! sha256 = "…64 hex…"
//! read = ["svc/"]        # may read keys under these prefixes
//! write = ["config/"]    # may read and write keys under these prefixes
//! admin = false          # membership changes and debug endpoints
//! ```

use serde::{Deserialize, Serialize};

use std::path::Path;

use crate::error::{ConfigError, FieldError, INLINE_CONFIG_PATH};
use crate::limits::{MAX_AUTH_TOKENS, MAX_GRANTS_PER_TOKEN, MAX_ROUTE_PREFIX_BYTES};

/// Paths served without a token unless `open_paths` says otherwise: what load balancers,
/// orchestrators and Prometheus poll.
pub const DEFAULT_OPEN_PATHS: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// Length of a token's SHA-256 in hex.
const SHA256_HEX_LEN: usize = 64;

/// Who may use the HTTP API (`[auth]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Exact paths served to anyone, without a token. Default: `/healthz`, `/readyz` and
    /// `/metrics`; `[]` requires a token everywhere.
    #[serde(default = "default_open_paths")]
    pub open_paths: Vec<String>,
    /// The tokens accepted (`[[auth.tokens]]`); at most [`MAX_AUTH_TOKENS`].
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
}

/// One accepted bearer token and what it grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// A name for logs and errors (never the token): 1 to 64 characters.
    pub name: String,
    /// SHA-256 of the token's text, 64 lowercase hex characters (`aspen token new`
    /// prints it; or `printf %s TOKEN | sha256sum`).
    pub sha256: String,
    /// Key prefixes the token may read (get, scan, watch); `""` is every key.
    #[serde(default)]
    pub read: Vec<String>,
    /// Key prefixes the token may read and write (also leases); `""` is every key.
    #[serde(default)]
    pub write: Vec<String>,
    /// Whether the token may change membership, use debug endpoints and read status.
    #[serde(default)]
    pub admin: bool,
}

fn default_open_paths() -> Vec<String> {
    DEFAULT_OPEN_PATHS.iter().map(|p| p.to_string()).collect()
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            open_paths: default_open_paths(),
            tokens: Vec::new(),
        }
    }
}

impl AuthConfig {
    /// Checks every rule a config file's `[auth]` is held to; the error names the field
    /// (`auth.tokens[0].sha256`) and the path [`INLINE_CONFIG_PATH`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check()
            .map_err(|e| e.under("auth").in_file(Path::new(INLINE_CONFIG_PATH)))
    }

    /// Every rule, first failure wins; fields relative to `[auth]`.
    pub(crate) fn check(&self) -> Result<(), FieldError> {
        for (i, path) in self.open_paths.iter().enumerate() {
            if !path.starts_with('/') {
                return Err(FieldError::new(
                    format!("open_paths[{i}]"),
                    format!(
                        "{path:?} is not a path; write it as the URL path, such as \"/healthz\""
                    ),
                ));
            }
        }
        if self.tokens.is_empty() {
            return Err(FieldError::new(
                "tokens",
                "is empty, so nothing but open_paths would be served; add a [[auth.tokens]] \
                 (`aspen token new --name NAME` makes one), or leave out [auth] to serve \
                 everyone",
            ));
        }
        if self.tokens.len() > MAX_AUTH_TOKENS {
            return Err(FieldError::new(
                "tokens",
                format!(
                    "lists {} tokens, at most {MAX_AUTH_TOKENS} are allowed; share a token \
                     between callers that need the same grants",
                    self.tokens.len()
                ),
            ));
        }
        for (i, token) in self.tokens.iter().enumerate() {
            let at = format!("tokens[{i}]");
            token.check().map_err(|e| e.under(&at))?;
            let earlier = &self.tokens[..i];
            if let Some(first) = earlier.iter().position(|t| t.name == token.name) {
                return Err(FieldError::new(
                    format!("{at}.name"),
                    format!(
                        "{:?} is also the name of tokens[{first}]; names must differ",
                        token.name
                    ),
                ));
            }
            if let Some(first) = earlier.iter().position(|t| t.sha256 == token.sha256) {
                return Err(FieldError::new(
                    format!("{at}.sha256"),
                    format!("is also the sha256 of tokens[{first}]; give each caller its own token, or one entry"),
                ));
            }
        }
        Ok(())
    }
}

impl TokenConfig {
    fn check(&self) -> Result<(), FieldError> {
        let len = self.name.chars().count();
        if len == 0 || len > 64 {
            return Err(FieldError::new(
                "name",
                format!("has {len} characters; give the token a name of 1 to 64 characters"),
            ));
        }
        let hex_ok = self.sha256.len() == SHA256_HEX_LEN
            && self
                .sha256
                .chars()
                .all(|c| matches!(c, '0'..='9' | 'a'..='f'));
        if !hex_ok {
            return Err(FieldError::new(
                "sha256",
                "is not 64 lowercase hex characters; write the SHA-256 of the token \
                 (`aspen token new` prints it), never the token itself",
            ));
        }
        for (field, prefixes) in [("read", &self.read), ("write", &self.write)] {
            if prefixes.len() > MAX_GRANTS_PER_TOKEN {
                return Err(FieldError::new(
                    field,
                    format!(
                        "lists {} prefixes, at most {MAX_GRANTS_PER_TOKEN} are allowed; grant \
                         a shorter common prefix",
                        prefixes.len()
                    ),
                ));
            }
            for (i, prefix) in prefixes.iter().enumerate() {
                if prefix.len() > MAX_ROUTE_PREFIX_BYTES {
                    return Err(FieldError::new(
                        format!("{field}[{i}]"),
                        format!(
                            "has {} bytes, at most {MAX_ROUTE_PREFIX_BYTES} (a key's length)",
                            prefix.len()
                        ),
                    ));
                }
            }
        }
        if self.read.is_empty() && self.write.is_empty() && !self.admin {
            return Err(FieldError::new(
                "read",
                "the token grants nothing (no read, no write, not admin); grant something \
                 or remove it",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(name: &str, n: usize) -> TokenConfig {
        TokenConfig {
            name: name.into(),
            sha256: format!("{n:064x}"),
            read: vec!["svc/".into()],
            write: vec![],
            admin: false,
        }
    }

    fn field(result: Result<(), FieldError>) -> String {
        result.unwrap_err().field
    }

    #[test]
    fn tokens_up_to_the_most_are_accepted_and_one_more_refused() {
        let mut auth = AuthConfig {
            tokens: (0..MAX_AUTH_TOKENS)
                .map(|n| token(&format!("t{n}"), n))
                .collect(),
            ..AuthConfig::default()
        };
        auth.check().unwrap();
        auth.tokens.push(token("one-more", MAX_AUTH_TOKENS));
        assert_eq!(field(auth.check()), "tokens");
    }

    #[test]
    fn grants_up_to_the_most_are_accepted_and_one_more_refused() {
        let mut t = token("t", 1);
        t.write = (0..MAX_GRANTS_PER_TOKEN)
            .map(|n| format!("p{n}/"))
            .collect();
        t.check().unwrap();
        t.write.push("one-more/".into());
        assert_eq!(field(t.check()), "write");
    }

    #[test]
    fn a_bad_hash_name_or_grant_is_refused_naming_the_field() {
        let auth = |t: TokenConfig| AuthConfig {
            tokens: vec![token("a", 1), t],
            ..AuthConfig::default()
        };
        let mut t = token("b", 2);
        t.sha256 = "ABC".into();
        assert_eq!(field(auth(t).check()), "tokens[1].sha256");
        let mut t = token("b", 2);
        t.name = String::new();
        assert_eq!(field(auth(t).check()), "tokens[1].name");
        assert_eq!(field(auth(token("a", 2)).check()), "tokens[1].name");
        assert_eq!(field(auth(token("b", 1)).check()), "tokens[1].sha256");
        let mut t = token("b", 2);
        t.read.clear();
        assert_eq!(field(auth(t).check()), "tokens[1].read");
        let mut t = token("b", 2);
        t.read = vec!["k".repeat(MAX_ROUTE_PREFIX_BYTES + 1)];
        assert_eq!(field(auth(t).check()), "tokens[1].read[0]");
        let mut t = token("b", 2);
        t.read = vec!["k".repeat(MAX_ROUTE_PREFIX_BYTES)];
        auth(t).check().unwrap();
    }

    #[test]
    fn an_empty_token_list_or_a_relative_open_path_is_refused() {
        assert_eq!(field(AuthConfig::default().check()), "tokens");
        let auth = AuthConfig {
            open_paths: vec!["healthz".into()],
            tokens: vec![token("a", 1)],
        };
        assert_eq!(field(auth.check()), "open_paths[0]");
    }
}
