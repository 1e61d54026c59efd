//! A running router: its iroh endpoint (with the identity kept in the config's
//! `secret_key_file`, which nodes list in their `kv_clients`: a router keeps no other
//! state), its [`RouterService`], and its HTTP server on a listener the caller bound.

use std::net::SocketAddr;
use std::sync::Arc;

use aspen_api::server::auth::{Policy, PolicyCell};
use aspen_config::{RelayModeConfig, RouterConfig};
use aspen_net::{bind_endpoint, load_or_create_secret_key_file, Access, Transport};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::http::app;
use crate::metrics::RouterMetrics;
use crate::service::RouterService;

/// Why a router could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The iroh endpoint could not be bound.
    #[error("router iroh endpoint: {0}")]
    Endpoint(String),
    /// The identity file could not be read or created.
    #[error("router secret_key_file {path}: {source}")]
    SecretKey {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The config describes no usable route table.
    #[error("router config: {0}")]
    Config(String),
    /// The HTTP listener has no local address.
    #[error("router HTTP listener: {0}")]
    Http(#[from] std::io::Error),
}

/// A router serving HTTP until [`RunningRouter::shutdown`].
pub struct RunningRouter {
    service: Arc<RouterService>,
    http_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<std::io::Result<()>>,
    endpoint: iroh::Endpoint,
    transport: Arc<Transport>,
    /// The `[auth]` in force, which a reload replaces.
    policy: PolicyCell,
}

impl RunningRouter {
    /// Starts a router for `config`, serving HTTP on `listener`.
    pub async fn start(
        config: &RouterConfig,
        listener: tokio::net::TcpListener,
    ) -> Result<RunningRouter, StartError> {
        config
            .validate()
            .map_err(|e| StartError::Config(e.to_string()))?;
        // Read first, so a bad certificate or key stops the start before anything runs.
        let tls = match &config.tls {
            Some(tls) => Some(
                aspen_api::server::tls::from_config(tls)
                    .map_err(|e| StartError::Config(e.to_string()))?,
            ),
            None => None,
        };
        let relays = config.relay == RelayModeConfig::Default;
        // A router serves no iroh protocol (it only dials nodes), so nothing is restricted.
        let access = Access::open();
        let key = load_or_create_secret_key_file(&config.secret_key_file).map_err(|source| {
            StartError::SecretKey {
                path: config.secret_key_file.display().to_string(),
                source,
            }
        })?;
        let endpoint = bind_endpoint(key, config.iroh_bind_addr, relays, &access)
            .await
            .map_err(StartError::Endpoint)?;
        let transport = Transport::new(endpoint.clone(), access);
        let service =
            Arc::new(RouterService::new(config, transport.clone()).map_err(StartError::Config)?);
        let metrics = Arc::new(RouterMetrics::default());
        let http_addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let http_stats = metrics.http.clone();
        let policy = PolicyCell::new(config.auth.as_ref().map(Policy::from_config));
        let app = aspen_api::server::auth::guard(app(service.clone(), metrics), policy.clone());
        let shutdown = async {
            let _ = stopped.await;
        };
        let limits = aspen_api::server::ServeOptions {
            tls,
            ..aspen_api::server::ServeOptions::default()
        };
        let server = tokio::spawn(aspen_api::server::serve_with(
            listener, app, shutdown, limits, http_stats,
        ));
        Ok(RunningRouter {
            service,
            http_addr,
            stop: Some(stop),
            server,
            endpoint,
            transport,
            policy,
        })
    }

    /// The router's iroh identity, which nodes list in their `kv_clients`.
    pub fn endpoint_id(&self) -> iroh::EndpointId {
        self.endpoint.id()
    }

    /// The router's iroh transport (fault injection in tests: cut it off from nodes).
    pub fn transport(&self) -> &Arc<Transport> {
        &self.transport
    }

    /// The HTTP address it serves on.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// `http://` URL of its API.
    pub fn url(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// The request logic (for reloading and tests).
    pub fn service(&self) -> &Arc<RouterService> {
        &self.service
    }

    /// Replaces the route table and the `[auth]` tokens with `config`'s; an invalid config
    /// changes nothing. (`[tls]` and the identity are read at start only.)
    pub fn reload(&self, config: &RouterConfig) -> Result<(), String> {
        config.validate().map_err(|e| e.to_string())?;
        self.service.reload(config)?;
        self.policy
            .set(config.auth.as_ref().map(Policy::from_config));
        Ok(())
    }

    /// Stops serving (requests in flight finish) and closes the endpoint.
    pub async fn shutdown(mut self) {
        self.service.stop_watches();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.server).await;
        self.endpoint.close().await;
    }
}
