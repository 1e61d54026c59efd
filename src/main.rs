//! The `aspen` binary: parse the command line, set up logging, run one command, and turn
//! its outcome into an exit code. Everything else lives in [`cli`], one file per command
//! group, so this file stays a table of contents.
//!
//! Exit codes: 0 success; 1 an error (printed as one `error: ...` line on stderr), bad
//! usage, or a key that was not found; 2 a precondition that did not hold.

mod cli;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// Log filter used when `RUST_LOG` is not set: our own crates at `info`, everything
/// else (iroh, hyper) at `warn`, so a dev run stays readable;
/// openraft at `error`: its warnings are protocol chatter of normal operation (a vote
/// answered after the election ended, say), which would bury ours. iroh-docs and gossip
/// at `error` too: they warn of every sync round a peer ends first and every peer that
/// refuses them (a node refuses all but its configured peers), while the exporter and
/// importers report what matters; so does iroh's connection acceptor.
const DEFAULT_LOG_FILTER: &str =
    "warn,openraft=error,iroh_docs=error,iroh_gossip=error,iroh::protocol=error,aspen=info,\
     aspen_api=info,aspen_config=info,aspen_cluster_node=info,aspen_federation=info,\
     aspen_net=info,aspen_router=info";

fn main() -> ExitCode {
    let args = match cli::Cli::try_parse() {
        Ok(args) => args,
        // `--help` and `--version` come here too, and are not failures. Usage errors exit
        // with 1 rather than clap's 2, which means "precondition failed" here.
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    if args.is_client() {
        end_quietly_on_closed_stdout();
    }
    init_tracing();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", cli::one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// Lets a closed stdout end the process as it ends other Unix tools (`aspen kv get k |
/// head -c 10`), instead of a panic in `println!`: Rust starts programs with SIGPIPE
/// ignored, and this restores the default. Only for client commands; servers keep
/// SIGPIPE ignored, so a peer that goes away is an error on its connection alone.
fn end_quietly_on_closed_stdout() {
    // SAFETY: called before any other thread exists; it changes only how this process
    // reacts to SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Logs go to stderr so that stdout carries only command output (`--json`, `--raw`).
fn init_tracing() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}
