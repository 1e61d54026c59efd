//! `[tls]`, the same table in a node's and a router's config: serve the HTTP API over TLS
//! (HTTP/1.1 and HTTP/2, chosen by ALPN) with a certificate and key from PEM files, and
//! optionally require a client certificate signed by a given CA (mutual TLS). Without the
//! table the API is plain HTTP, as `aspen dev` on loopback serves it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::FieldError;

/// TLS of the HTTP listener (`[tls]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the server's certificate chain, its own certificate first.
    pub cert_file: PathBuf,
    /// PEM file with the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM file with the CA certificates a client's certificate must chain to; absent:
    /// clients present none.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

impl TlsConfig {
    /// Every rule, first failure wins; fields relative to `[tls]`. The files themselves
    /// are read when the server starts, which names the file that fails.
    pub(crate) fn check(&self) -> Result<(), FieldError> {
        let files = [
            ("cert_file", Some(&self.cert_file)),
            ("key_file", Some(&self.key_file)),
            ("client_ca_file", self.client_ca_file.as_ref()),
        ];
        for (field, path) in files {
            if path.is_some_and(|p| p.as_os_str().is_empty()) {
                return Err(FieldError::new(
                    field,
                    "is empty; name a PEM file, or leave out the field",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_name_is_refused_naming_the_field() {
        let mut tls = TlsConfig {
            cert_file: "/etc/aspen/cert.pem".into(),
            key_file: "/etc/aspen/key.pem".into(),
            client_ca_file: None,
        };
        tls.check().unwrap();
        tls.client_ca_file = Some(PathBuf::new());
        assert_eq!(tls.check().unwrap_err().field, "client_ca_file");
        tls.key_file = PathBuf::new();
        assert_eq!(tls.check().unwrap_err().field, "key_file");
    }
}
