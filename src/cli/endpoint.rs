//! The `--endpoint` argument shared by `kv`, `cluster` and `bench`, and the one place that
//! turns it into an [`AspenClient`] and turns the client's errors into messages that say
//! what to check (is a node running there?).

use aspen_api::client::DEFAULT_REQUEST_TIMEOUT;
use aspen_api::{AspenClient, ClientError};
use clap::Args;

/// Where a node or router serves the HTTP API when nothing else is said: the port the
/// public contract documents, which `aspen dev` listens on by default.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:7070";

/// The HTTP API to talk to.
#[derive(Debug, Clone, Args)]
pub struct EndpointArgs {
    /// Base URL of a node's (or router's) HTTP API, e.g. http://127.0.0.1:7070.
    #[arg(long, global = true, env = "ASPEN_ENDPOINT", default_value = DEFAULT_ENDPOINT)]
    pub endpoint: String,
    /// Speak HTTP/2 to the endpoint from the first byte (cleartext, prior knowledge), so
    /// one connection carries every request and watch of this command; HTTP/1.1 otherwise.
    #[arg(long, global = true, env = "ASPEN_HTTP2")]
    pub http2: bool,
}

impl EndpointArgs {
    /// A client for the endpoint; a bare `host:port` gets `http://` in front.
    pub fn client(&self) -> anyhow::Result<AspenClient> {
        let endpoint = normalize(&self.endpoint)?;
        Ok(if self.http2 {
            AspenClient::http2(&endpoint, DEFAULT_REQUEST_TIMEOUT)
        } else {
            AspenClient::new(&endpoint)
        })
    }
}

/// Checks and completes an endpoint URL.
fn normalize(endpoint: &str) -> anyhow::Result<String> {
    let endpoint = endpoint.trim();
    if endpoint.is_empty() {
        anyhow::bail!("--endpoint is empty; give a URL such as {DEFAULT_ENDPOINT}");
    }
    if endpoint.starts_with("https://") {
        anyhow::bail!("--endpoint {endpoint}: https is not supported by this build; use http://");
    }
    if endpoint.starts_with("http://") {
        return Ok(endpoint.to_string());
    }
    if endpoint.contains("://") {
        anyhow::bail!("--endpoint {endpoint}: only http:// URLs are supported");
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
    fn https_and_other_schemes_are_refused() {
        assert!(normalize("https://h:1").is_err());
        assert!(normalize("ftp://h:1").is_err());
        assert!(normalize("  ").is_err());
    }
}
