//! `aspen federation`: the values one region needs from another, so nobody copies ids by
//! hand. `keygen` writes a cluster's federation secret (every node of the cluster uses the
//! same file) and prints the document ids it gives; `info` prints, for one node's config,
//! the `[[federation.import]]` block other regions paste to import its cluster and the
//! `readers` line the clusters it imports list it in.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use aspen_cluster_node::transport::load_or_create_secret_key;
use aspen_config::NodeConfig;
use aspen_federation::secret::FederationSecret;
use clap::{Args, Subcommand};

/// Arguments of `aspen federation`.
#[derive(Debug, Args)]
pub struct FederationArgs {
    #[command(subcommand)]
    command: FederationCommand,
}

#[derive(Debug, Subcommand)]
enum FederationCommand {
    /// Write a new federation secret for a cluster and print its namespace and author ids.
    /// Copy the file to every node of the cluster and name it as `secret_file` under
    /// `[federation]`. It refuses to overwrite an existing file: a new secret makes a new
    /// document, which no other region imports.
    Keygen {
        /// Where to write the secret (64 hex characters, readable by its owner only).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Print what other regions need to import this node's cluster (its document's ids
    /// and this node's endpoint), and this node's endpoint id for the `readers` of the
    /// clusters it imports. Creates the node's identity key if it does not exist yet, so
    /// every config can be written before any node starts.
    Info {
        /// The node's TOML config file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// An address other regions reach this node's iroh endpoint at (repeat for
        /// several). Defaults to the config's `iroh_bind_addr`, which must then be one
        /// others can dial: not 0.0.0.0 or [::], and not port 0.
        #[arg(long = "addr", value_name = "HOST:PORT")]
        addrs: Vec<SocketAddr>,
    },
}

/// Runs a federation command.
pub async fn run(args: FederationArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        FederationCommand::Keygen { out } => keygen(&out),
        FederationCommand::Info { config, addrs } => info(&config, &addrs),
    }
}

fn keygen(out: &Path) -> anyhow::Result<ExitCode> {
    let secret = FederationSecret::generate();
    secret.save(out)?;
    println!("wrote a federation secret to {}", out.display());
    println!("namespace = \"{}\"", secret.namespace_id());
    println!("author = \"{}\"", secret.author_id());
    Ok(ExitCode::SUCCESS)
}

/// Where other regions dial this node: `given`, or else the config's bind address if
/// others can dial it.
fn own_addrs(
    path: &Path,
    config: &NodeConfig,
    given: &[SocketAddr],
) -> anyhow::Result<Vec<SocketAddr>> {
    if !given.is_empty() {
        if let Some(bad) = given.iter().find(|a| !dialable(a)) {
            anyhow::bail!(
                "--addr {bad} cannot be dialed by another host; give the address (not 0.0.0.0 \
                 or [::], not port 0) other regions reach this node's iroh endpoint at"
            );
        }
        return Ok(given.to_vec());
    }
    let bind = config.iroh_bind_addr;
    if !dialable(&bind) {
        anyhow::bail!(
            "iroh_bind_addr in {} is {bind}, which other regions cannot dial; pass --addr \
             HOST:PORT, the address they reach this node's iroh endpoint at (and set a fixed \
             port in iroh_bind_addr)",
            path.display()
        );
    }
    Ok(vec![bind])
}

fn dialable(addr: &SocketAddr) -> bool {
    !addr.ip().is_unspecified() && addr.port() != 0
}

fn info(path: &Path, given_addrs: &[SocketAddr]) -> anyhow::Result<ExitCode> {
    let config = NodeConfig::load(path)?;
    let federation = config.federation.as_ref().with_context(|| {
        format!(
            "{} has no [federation] table; add one with this node's region first",
            path.display()
        )
    })?;
    let key = load_or_create_secret_key(&config.data_dir).with_context(|| {
        format!(
            "cannot read or create the node's identity in {}",
            config.data_dir.display()
        )
    })?;
    let endpoint_id = key.public().to_string();
    let addrs = |addrs: &[SocketAddr]| {
        addrs
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "# Node {} of cluster {} (region {})",
        config.node_id, config.cluster, federation.region
    );
    println!("# endpoint id: {endpoint_id}");
    match &federation.secret_file {
        Some(secret_file) => {
            let own = own_addrs(path, &config, given_addrs)?;
            let secret = FederationSecret::load(secret_file)?;
            println!();
            println!(
                "# For nodes of other regions that import {}, under [federation]:",
                config.cluster
            );
            println!("[[federation.import]]");
            println!("cluster = \"{}\"", config.cluster);
            println!("region = \"{}\"", federation.region);
            println!("namespace = \"{}\"", secret.namespace_id());
            println!("author = \"{}\"", secret.author_id());
            println!("nodes = [");
            println!(
                "  {{ endpoint_id = \"{endpoint_id}\", addrs = [{}] }},  # node {}",
                addrs(&own),
                config.node_id
            );
            for peer in &config.peers {
                println!(
                    "  {{ endpoint_id = \"{}\", addrs = [{}] }},  # node {}",
                    peer.endpoint_id,
                    addrs(&peer.addrs),
                    peer.node_id
                );
            }
            println!("]");
        }
        None => {
            println!("# This cluster exports nothing (no secret_file under [federation]).");
        }
    }
    println!();
    println!(
        "# For the clusters this node imports: list it among the readers of their \
         [[federation.export]] entry for region \"{}\":",
        federation.region
    );
    println!("readers = [\"{endpoint_id}\"]");
    Ok(ExitCode::SUCCESS)
}
