//! `aspen router --config FILE`: run a router. Loads and validates the config, binds the
//! HTTP listener, starts the router, prints where it serves and what it routes, and runs
//! until Ctrl-C or SIGTERM. SIGHUP reloads the config file: a valid new file replaces the
//! route table (without dropping requests) and the `[auth]` tokens; an invalid one is
//! refused, with the reason, and the old table and tokens stay.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use aspen_config::RouterConfig;
use aspen_router::RunningRouter;
use clap::Args;
use tokio::signal::unix::{signal, SignalKind};

use super::signal::shutdown_requested;

/// Arguments of `aspen router`.
#[derive(Debug, Args)]
pub struct RouterArgs {
    /// The router's TOML config file: clusters, their nodes and the routes (see
    /// config/examples/router.toml). Send SIGHUP to reload it.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
}

/// Runs the router until a signal asks it to stop.
pub async fn run(args: RouterArgs) -> anyhow::Result<ExitCode> {
    let config = RouterConfig::load(&args.config)?;
    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .with_context(|| {
            format!(
                "cannot listen for HTTP on {} (set `http_addr` in {})",
                config.http_addr,
                args.config.display()
            )
        })?;
    let router = RunningRouter::start(&config, listener)
        .await
        .context("cannot start the router")?;
    println!(
        "aspen router (region {:?}): HTTP {}, {} cluster(s), {} route(s)\n\
         endpoint id {} (from {}): list it in the kv_clients of every node it talks to",
        config.region,
        router.url(),
        config.clusters.len(),
        config.routes.len(),
        router.endpoint_id(),
        config.secret_key_file.display()
    );
    let mut hangup = signal(SignalKind::hangup())?;
    let stop = shutdown_requested();
    tokio::pin!(stop);
    let signal = loop {
        tokio::select! {
            name = &mut stop => break name,
            _ = hangup.recv() => reload(&router, &args.config),
        }
    };
    println!("{} received; stopping the router", signal?);
    router.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// Reloads the route table from `path`, keeping the old one if the file is not valid.
fn reload(router: &RunningRouter, path: &Path) {
    let result = RouterConfig::load(path)
        .map_err(|e| e.to_string())
        .and_then(|config| router.reload(&config).map(|()| config));
    match result {
        Ok(config) => println!(
            "SIGHUP: reloaded {}: {} cluster(s), {} route(s)",
            path.display(),
            config.clusters.len(),
            config.routes.len()
        ),
        Err(e) => eprintln!("SIGHUP: kept the previous route table: {e}"),
    }
}
