//! `aspen keygen --out FILE`: make an iroh identity (a secret key file) and print its
//! endpoint id, so every config can name a router or node before anything starts: a
//! router's `secret_key_file`, or a node's `DATA_DIR/iroh.key`. An existing file is never
//! overwritten: its id is printed, so running it twice is safe.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use aspen_cluster_node::transport::load_or_create_secret_key_file;
use clap::Args;

/// Arguments of `aspen keygen`.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// The secret key file to write (readable by its owner only): a router's
    /// `secret_key_file`, or `DATA_DIR/iroh.key` for a node. If it exists it is kept, and
    /// its endpoint id printed.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

/// Writes (or keeps) the key and prints its endpoint id on stdout, what happened on
/// stderr.
pub async fn run(args: KeygenArgs) -> anyhow::Result<ExitCode> {
    let existed = args.out.exists();
    let key = load_or_create_secret_key_file(&args.out)
        .with_context(|| format!("cannot make an identity in {}", args.out.display()))?;
    println!("{}", key.public());
    if existed {
        eprintln!(
            "kept the existing key in {}; its endpoint id is above",
            args.out.display()
        );
    } else {
        eprintln!(
            "wrote a new secret key to {}; its endpoint id is above. Keep the file like a \
             private key; list the id in the kv_clients of the nodes it talks to (a router) \
             or in its peers' [[peers]] (a node)",
            args.out.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
