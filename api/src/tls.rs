//! PEM files into rustls types, for the HTTP listener's TLS (`server::tls`) and the
//! client's ([`crate::client::ClientOptions::tls`]). Errors name the file and what was
//! wrong with it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read, or holds nothing usable.
    #[error("TLS {what} {}: {reason}", .path.display())]
    File {
        /// Which file (`cert_file`, `key_file`, `client_ca_file`).
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// rustls refused the combination (a key that does not match the certificate, say).
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::File {
        what,
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// The certificates of a PEM file; at least one.
pub fn certificates(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(what, path)?;
    let bad = |reason: String| TlsError::File {
        what,
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(bad(
            "holds no certificate (no BEGIN CERTIFICATE block)".into()
        ));
    }
    Ok(certs)
}

/// The private key of a PEM file.
pub fn private_key(what: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(what, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::File {
        what,
        path: path.to_path_buf(),
        reason: format!("holds no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}"),
    })
}

/// A root store of the certificates in a PEM file.
pub fn roots(what: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in certificates(what, path)? {
        store.add(cert).map_err(|e| TlsError::File {
            what,
            path: path.to_path_buf(),
            reason: format!("a certificate is not usable as a CA: {e}"),
        })?;
    }
    Ok(store)
}

/// The provider every Aspen TLS endpoint uses, named explicitly so nothing depends on
/// process-global state.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client configuration trusting the CAs in `ca_file`, presenting the certificate and
/// key of `identity` (cert file, key file) to a server that asks for one.
pub fn client_config(
    ca_file: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<rustls::ClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots("CA file", ca_file)?);
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                certificates("client certificate", cert)?,
                private_key("client key", key)?,
            )
            .map_err(|e| TlsError::Config(format!("client certificate and key: {e}"))),
    }
}
