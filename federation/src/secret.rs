//! A cluster's federation secret: 32 random bytes, the same on every node of the cluster,
//! from which the document's namespace secret (the write capability) and its author key
//! are derived. Every node of the owner cluster can therefore export after a leader change
//! (they all write as the same author, so a newer segment or heartbeat replaces an older
//! one whoever wrote it), and other regions are given only the public ids: read access,
//! and the author to check entries against.
//!
//! The file holds the secret as 64 hex characters; `aspen federation keygen` writes one.

use std::path::Path;

use iroh_docs::{Author, AuthorId, NamespaceId, NamespaceSecret};

/// Errors of reading or writing a secret file.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file could not be read or written.
    #[error("federation secret file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// The file does not hold 64 hex characters.
    #[error("federation secret file {path} does not hold a secret (64 hex characters); write one with `aspen federation keygen --out {path}`")]
    Malformed { path: String },
}

/// A cluster's federation secret.
#[derive(Clone)]
pub struct FederationSecret([u8; 32]);

impl std::fmt::Debug for FederationSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FederationSecret")
            .field("namespace", &self.namespace_id())
            .finish_non_exhaustive()
    }
}

/// Derives 32 bytes for `purpose` from `secret` (BLAKE3 over a domain-separated input).
fn derive(purpose: &str, secret: &[u8; 32]) -> [u8; 32] {
    let mut input = Vec::with_capacity(purpose.len() + 1 + 32);
    input.extend_from_slice(purpose.as_bytes());
    input.push(0);
    input.extend_from_slice(secret);
    *iroh_blobs::Hash::new(input).as_bytes()
}

impl FederationSecret {
    /// A new random secret.
    pub fn generate() -> FederationSecret {
        FederationSecret(iroh::SecretKey::generate().to_bytes())
    }

    /// The secret from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> FederationSecret {
        FederationSecret(bytes)
    }

    /// Reads a secret file.
    pub fn load(path: &Path) -> Result<FederationSecret, SecretError> {
        let text = std::fs::read_to_string(path).map_err(|source| SecretError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let malformed = || SecretError::Malformed {
            path: path.display().to_string(),
        };
        let text = text.trim();
        if text.len() != 64 {
            return Err(malformed());
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2).ok_or_else(malformed)?, 16)
                .map_err(|_| malformed())?;
        }
        Ok(FederationSecret(bytes))
    }

    /// Writes the secret to `path` (readable by its owner only), atomically; refuses to
    /// replace an existing file, whose loss would cut every replica off.
    pub fn save(&self, path: &Path) -> Result<(), SecretError> {
        let io = |source| SecretError::Io {
            path: path.display().to_string(),
            source,
        };
        if path.exists() {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists already; a new secret would make a new document that no region imports",
            )));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let hex: String = self.0.iter().map(|b| format!("{b:02x}")).collect();
        let tmp = path.with_extension("tmp");
        aspen_net::transport::write_owner_only(&tmp, (hex + "\n").as_bytes()).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// The document's namespace secret: write access.
    pub fn namespace(&self) -> NamespaceSecret {
        NamespaceSecret::from_bytes(&derive("aspen federation namespace v1", &self.0))
    }

    /// The author every node of the cluster writes as.
    pub fn author(&self) -> Author {
        Author::from_bytes(&derive("aspen federation author v1", &self.0))
    }

    /// The document's public id: what other regions import (read access).
    pub fn namespace_id(&self) -> NamespaceId {
        self.namespace().id()
    }

    /// The author's public id: what other regions check entries against.
    pub fn author_id(&self) -> AuthorId {
        self.author().id()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_secret_loads_back_to_the_same_ids_and_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fed.key");
        let secret = FederationSecret::generate();
        secret.save(&path).unwrap();
        let back = FederationSecret::load(&path).unwrap();
        assert_eq!(back.namespace_id(), secret.namespace_id());
        assert_eq!(back.author_id(), secret.author_id());
        assert!(
            FederationSecret::generate().save(&path).is_err(),
            "an existing secret is kept"
        );
    }

    #[test]
    fn namespace_and_author_are_distinct_derivations() {
        let secret = FederationSecret::from_bytes([7; 32]);
        assert_ne!(
            secret.namespace_id().as_bytes(),
            secret.author_id().as_bytes()
        );
        let other = FederationSecret::from_bytes([8; 32]);
        assert_ne!(secret.namespace_id(), other.namespace_id());
    }

    #[test]
    fn a_malformed_file_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.key");
        std::fs::write(&path, "not hex").unwrap();
        let err = FederationSecret::load(&path).unwrap_err();
        assert!(err.to_string().contains("aspen federation keygen"), "{err}");
        std::fs::write(&path, "zz".repeat(32)).unwrap();
        assert!(FederationSecret::load(&path).is_err());
    }
}
