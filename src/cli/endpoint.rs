//! The `--endpoint` argument shared by `kv`, `cluster` and `bench`, and the one place that
//! turns it into an [`AspenClient`] and turns the client's errors into messages that say
//! what to check (is a node running there?).

use std::path::PathBuf;

use anyhow::Context;
use aspen_api::client::{ClientOptions, DEFAULT_REQUEST_TIMEOUT};
use aspen_api::{AspenClient, ClientError};
use clap::Args;

/// Where a node or router serves the HTTP API when nothing else is said: the port the
/// public contract documents, which `aspen dev` listens on by default.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:7070";

/// The HTTP API to talk to.
#[derive(Debug, Clone, Args)]
pub struct EndpointArgs {
    /// Base URL of a node's (or router's) HTTP API, e.g. http://127.0.0.1:7070 (https://
    /// with --cacert for a server with `[tls]`).
    #[arg(long, global = true, env = "ASPEN_ENDPOINT", default_value = DEFAULT_ENDPOINT)]
    pub endpoint: String,
    /// Speak HTTP/2 to the endpoint from the first byte (cleartext, prior knowledge), so
    /// one connection carries every request and watch of this command; HTTP/1.1 otherwise.
    #[arg(long, global = true, env = "ASPEN_HTTP2")]
    pub http2: bool,
    /// Bearer token to send (`Authorization: Bearer`), for a server whose config has an
    /// `[auth]` table; `aspen token new` makes one. Prefer the environment variable: a
    /// flag shows in the process list.
    #[arg(long, global = true, env = "ASPEN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM file of the CA that signed an https:// server's certificate.
    #[arg(long, global = true, env = "ASPEN_CACERT", value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// PEM file of this client's certificate, for a server that requires one (its
    /// `[tls] client_ca_file`); with --client-key.
    #[arg(
        long = "client-cert",
        global = true,
        env = "ASPEN_CLIENT_CERT",
        value_name = "FILE",
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,
    /// PEM file of the private key of --client-cert.
    #[arg(
        long = "client-key",
        global = true,
        env = "ASPEN_CLIENT_KEY",
        value_name = "FILE",
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,
}

impl EndpointArgs {
    /// A client for the endpoint; a bare `host:port` gets `http://` in front.
    pub fn client(&self) -> anyhow::Result<AspenClient> {
        let endpoint = normalize(&self.endpoint)?;
        let https = endpoint.starts_with("https://");
        let tls = match (&self.cacert, https) {
            (Some(ca), true) => {
                let identity = self.client_cert.as_deref().zip(self.client_key.as_deref());
                Some(
                    aspen_api::tls::client_config(ca, identity)
                        .context("--cacert/--client-cert/--client-key")?,
                )
            }
            (None, true) => anyhow::bail!(
                "--endpoint {endpoint} is https: give --cacert FILE (or ASPEN_CACERT), the CA \
                 that signed the server's certificate"
            ),
            (Some(_), false) => anyhow::bail!(
                "--cacert is for an https:// endpoint, and --endpoint {endpoint} is plain http"
            ),
            (None, false) => None,
        };
        let options = ClientOptions {
            timeout: DEFAULT_REQUEST_TIMEOUT,
            http2: self.http2,
            tls,
            token: self.token.clone(),
        };
        Ok(AspenClient::with_options(&endpoint, options))
    }
}

/// Checks and completes an endpoint URL.
fn normalize(endpoint: &str) -> anyhow::Result<String> {
    let endpoint = endpoint.trim();
    if endpoint.is_empty() {
        anyhow::bail!("--endpoint is empty; give a URL such as {DEFAULT_ENDPOINT}");
    }
    if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
        return Ok(endpoint.to_string());
    }
    if endpoint.contains("://") {
        anyhow::bail!("--endpoint {endpoint}: only http:// and https:// URLs are supported");
    }
    Ok(format!("http://{endpoint}"))
}

/// Turns a client error into an error message with a hint when nothing answered.
pub fn explain(err: ClientError, client: &AspenClient) -> anyhow::Error {
    match err {
        ClientError::Transport { source, url } if source.is_timeout() => {
            anyhow::anyhow!("request to {url} timed out; a write may or may not have been applied")
        }
        ClientError::Transport { source, .. } => {
            let mut cause: &dyn std::error::Error = &source;
            while let Some(next) = cause.source() {
                cause = next;
            }
            anyhow::anyhow!(
                "no answer from {} ({cause}); is a node running there? Start one with `aspen dev` \
                 or pass --endpoint",
                client.endpoint()
            )
        }
        other => anyhow::Error::new(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_host_port_gets_http_scheme() {
        assert_eq!(
            normalize("127.0.0.1:7070").unwrap(),
            "http://127.0.0.1:7070"
        );
        assert_eq!(normalize("http://h:1/").unwrap(), "http://h:1/");
    }

    #[test]
    fn other_schemes_are_refused() {
        assert_eq!(normalize("https://h:1").unwrap(), "https://h:1");
        assert!(normalize("ftp://h:1").is_err());
        assert!(normalize("  ").is_err());
    }

    #[test]
    fn https_needs_a_ca_and_a_ca_needs_https() {
        let args = |endpoint: &str, cacert: Option<&str>| EndpointArgs {
            endpoint: endpoint.into(),
            http2: false,
            token: None,
            cacert: cacert.map(PathBuf::from),
            client_cert: None,
            client_key: None,
        };
        let err = args("https://h:1", None).client().unwrap_err().to_string();
        assert!(err.contains("--cacert"), "{err}");
        let err = args("http://h:1", Some("/ca.pem")).client().unwrap_err();
        assert!(err.to_string().contains("plain http"), "{err}");
        let err = args("https://h:1", Some("/no/such/ca.pem"))
            .client()
            .unwrap_err();
        assert!(format!("{err:#}").contains("/no/such/ca.pem"), "{err:#}");
    }
}
