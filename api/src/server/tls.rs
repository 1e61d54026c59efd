//! TLS for the HTTP listener: a rustls server configuration from PEM files (a `[tls]`
//! table), offering HTTP/2 and HTTP/1.1 by ALPN, and optionally requiring client
//! certificates signed by a given CA. Errors name the file and what was wrong with it.

use std::path::Path;
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;

use crate::tls::{certificates, private_key, provider, roots, TlsError};

/// A server configuration from `cert_file` and `key_file`, requiring client certificates
/// that chain to `client_ca_file` when given.
pub fn server_config(
    cert_file: &Path,
    key_file: &Path,
    client_ca_file: Option<&Path>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = certificates("cert_file", cert_file)?;
    let key = private_key("key_file", key_file)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match client_ca_file {
        Some(path) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots("client_ca_file", path)?),
                provider(),
            )
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(format!("cert_file and key_file: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The server configuration a config's `[tls]` describes.
pub fn from_config(config: &aspen_config::TlsConfig) -> Result<Arc<ServerConfig>, TlsError> {
    server_config(
        &config.cert_file,
        &config.key_file,
        config.client_ca_file.as_deref(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_empty_file_is_refused_naming_it() {
        let dir = std::env::temp_dir().join(format!("aspen-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let err = server_config(&missing, &missing, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cert_file") && err.contains("missing.pem"),
            "{err}"
        );
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let err = server_config(&empty, &empty, None).unwrap_err().to_string();
        assert!(err.contains("holds no certificate"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
