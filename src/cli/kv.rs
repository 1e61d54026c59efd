//! `aspen kv`: reads and writes against one node's (or router's) HTTP API. Every command
//! prints a short human answer, or with `--json` the JSON answer of the API. This file
//! holds the arguments and the unconditional commands (get, put, delete, scan, batch);
//! [`conditional`] holds cas, cad and txn, whose failed preconditions exit with 2.

mod conditional;
mod watch;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use aspen_api::json::{BatchRequest, JsonWrite, ScanResponse, WriteResponse};
use aspen_api::lease::LeaseId;
use aspen_api::limits::{MAX_BLOB_VALUE_BYTES, MAX_INLINE_VALUE_BYTES, MAX_SCAN_LIMIT};
use aspen_api::{AspenClient, Consistency};
use clap::{Args, Subcommand};

use super::endpoint::{explain, EndpointArgs};
use super::parse::{self, KeyValue};
use super::{render, EXIT_NOT_FOUND};

/// Arguments of `aspen kv`.
#[derive(Debug, Args)]
pub struct KvArgs {
    #[command(flatten)]
    endpoint: EndpointArgs,
    /// Print the API's JSON answer instead of a human summary.
    #[arg(long, global = true)]
    json: bool,
    /// The operation.
    #[command(subcommand)]
    command: KvCommand,
}

/// The key-value operations.
#[derive(Debug, Subcommand)]
enum KvCommand {
    /// Read one key (linearizable unless --stale).
    ///
    /// Exits 1, with a message on stderr, when the key does not exist.
    Get {
        /// The key.
        #[arg(value_parser = parse::key)]
        key: String,
        /// Read this node's local copy, which may miss the latest writes.
        #[arg(long)]
        stale: bool,
        /// Write the bare value bytes to stdout, nothing else.
        #[arg(long, conflicts_with = "json")]
        raw: bool,
        /// Write the bare value bytes to this file (streamed, however large; with a
        /// progress bar on a terminal) and print a summary.
        #[arg(long, value_name = "PATH", conflicts_with_all = ["json", "raw"])]
        out: Option<PathBuf>,
    },
    /// Set one key to a value given inline or read from a file.
    ///
    /// A value over 1 MiB is kept as a blob (up to 4 GiB): --file streams it without
    /// reading it whole, with a progress bar on a terminal.
    #[command(group = clap::ArgGroup::new("source").required(true).args(["value", "file"]))]
    Put {
        /// The key.
        #[arg(value_parser = parse::key)]
        key: String,
        /// The value, as text.
        value: Option<String>,
        /// Read the value's bytes from this file, streamed (`-` reads stdin).
        #[arg(long, value_name = "PATH")]
        file: Option<PathBuf>,
        /// Grant a lease of this TTL (10s, 5m) and attach the key to it: the key is
        /// deleted unless the printed lease is kept alive (`aspen lease keepalive ID`).
        #[arg(long, value_parser = parse::ttl_secs, conflicts_with = "lease")]
        ttl: Option<u64>,
        /// Attach the key to this existing lease (as `aspen lease grant` printed it).
        #[arg(long, value_name = "ID", value_parser = parse::lease_id)]
        lease: Option<LeaseId>,
    },
    /// Delete one key (succeeds whether or not it existed).
    Delete {
        /// The key.
        #[arg(value_parser = parse::key)]
        key: String,
    },
    /// List keys that start with a prefix, in key order.
    Scan {
        /// The prefix ("" lists every key).
        prefix: String,
        /// Most keys per page (1 to 10000; the server's default is 1000).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=MAX_SCAN_LIMIT as u64))]
        limit: Option<u64>,
        /// Start strictly after this key (the `next` of a previous page).
        #[arg(long, value_name = "KEY")]
        after: Option<String>,
        /// Follow `next` page after page until every key is listed.
        #[arg(long)]
        all: bool,
        /// Read this node's local copy, which may miss the latest writes.
        #[arg(long)]
        stale: bool,
    },
    /// Compare-and-swap: set KEY to --new only if it holds --expected (or is --absent).
    ///
    /// Exits 2, printing what the key actually holds, when the condition does not hold.
    Cas(conditional::CasArgs),
    /// Compare-and-delete: delete KEY only if it holds --expected.
    ///
    /// Exits 2, printing what the key actually holds, when it does not.
    Cad(conditional::CadArgs),
    /// Set and delete several keys atomically (one Raft entry, at most 100 keys).
    #[command(group = clap::ArgGroup::new("ops").required(true).multiple(true).args(["set", "delete"]))]
    Batch {
        /// A key to set, as KEY=VALUE (repeatable).
        #[arg(long, value_name = "KEY=VALUE", value_parser = parse::key_value)]
        set: Vec<KeyValue>,
        /// A key to delete (repeatable).
        #[arg(long, value_name = "KEY", value_parser = parse::key)]
        delete: Vec<String>,
    },
    /// Conditional multi-key write: --set and --delete only if every --require-* holds.
    ///
    /// Preconditions are sent in this order: every --require-exists, then --require-absent,
    /// --require-equals, --require-mod-revision. When one fails nothing is changed; the
    /// command names it (index and condition), prints the key's actual state and exits 2.
    Txn(conditional::TxnArgs),
    /// Follow changes under a prefix (or to one key) as they commit, in order.
    ///
    /// Prints each changed key (with --json, every message of the stream, progress and
    /// resume tokens included). Reconnects and resumes without loss when the connection
    /// drops; exits with an error when the start revision has been compacted.
    Watch(watch::WatchArgs),
}

/// Runs one kv command.
pub async fn run(args: KvArgs) -> anyhow::Result<ExitCode> {
    let client = args.endpoint.client()?;
    let json = args.json;
    match args.command {
        KvCommand::Get {
            key,
            stale,
            out: Some(out),
            ..
        } => get_to_file(&client, &key, consistency(stale), &out).await,
        KvCommand::Get {
            key, stale, raw, ..
        } => get(&client, &key, consistency(stale), raw, json).await,
        KvCommand::Put {
            key,
            value,
            file,
            ttl,
            lease,
        } => {
            let bytes = match (value, file.as_ref()) {
                (Some(value), None) => Some(value.into_bytes()),
                (None, Some(_)) => None,
                _ => anyhow::bail!("give either VALUE or --file PATH"),
            };
            let lease = match (ttl, lease) {
                (Some(ttl), _) => {
                    let granted = client
                        .lease_grant(ttl, Some(&key))
                        .await
                        .map_err(|e| explain(e, &client))?;
                    eprintln!(
                        "lease {} ({ttl} s): keep the key with `aspen lease keepalive {}`",
                        granted.id, granted.id
                    );
                    Some(parse::lease_id(&granted.id).map_err(anyhow::Error::msg)?)
                }
                (None, lease) => lease,
            };
            let answer = match (&bytes, &lease, file) {
                (Some(bytes), Some(lease), _) => client.put_with_lease(&key, bytes, lease).await,
                (Some(bytes), None, _) => client.put(&key, bytes).await,
                (None, lease, Some(path)) => {
                    let (body, len, progress) = file_body(&path).await?;
                    let written = client.put_stream(&key, body, len, lease.as_ref()).await;
                    progress.finish_and_clear();
                    written
                }
                (None, _, None) => anyhow::bail!("give either VALUE or --file PATH"),
            }
            .map_err(|e| explain(e, &client))?;
            let what = match &lease {
                Some(lease) => format!("set {} with lease {lease}", render::quote(&key)),
                None => format!("set {}", render::quote(&key)),
            };
            print_write(&answer, json, &what)
        }
        KvCommand::Delete { key } => {
            let answer = client.delete(&key).await.map_err(|e| explain(e, &client))?;
            let what = match answer.deleted {
                Some(false) => format!("{} did not exist; nothing deleted", render::quote(&key)),
                _ => format!("deleted {}", render::quote(&key)),
            };
            print_write(&answer, json, &what)
        }
        KvCommand::Scan {
            prefix,
            limit,
            after,
            all,
            stale,
        } => {
            let limit = limit.map(|l| l as usize);
            scan(
                &client,
                &prefix,
                after,
                limit,
                all,
                consistency(stale),
                json,
            )
            .await
        }
        KvCommand::Batch { set, delete } => {
            let request = BatchRequest {
                writes: set
                    .iter()
                    .map(|kv| JsonWrite::new(&kv.key, kv.value.as_bytes()))
                    .collect(),
                deletes: delete,
            };
            let answer = client
                .batch(&request)
                .await
                .map_err(|e| explain(e, &client))?;
            let deleted = answer.deleted_count.unwrap_or(0);
            let what = format!("set {} key(s), deleted {deleted}", request.writes.len());
            print_write(&answer, json, &what)
        }
        KvCommand::Cas(cas) => conditional::cas(&client, cas, json).await,
        KvCommand::Cad(cad) => conditional::cad(&client, cad, json).await,
        KvCommand::Txn(txn) => conditional::txn(&client, txn, json).await,
        KvCommand::Watch(args) => watch::watch(&client, args, json).await,
    }
}

fn consistency(stale: bool) -> Consistency {
    if stale {
        Consistency::Stale
    } else {
        Consistency::Linearizable
    }
}

/// The bytes of `path` (`-`: stdin) as a streamed request body, and their length when
/// known; a value over the inline limit shows a progress bar on a terminal.
async fn file_body(
    path: &std::path::Path,
) -> anyhow::Result<(reqwest::Body, Option<u64>, indicatif::ProgressBar)> {
    use futures::TryStreamExt;
    let (reader, len): (Box<dyn tokio::io::AsyncRead + Send + Unpin>, Option<u64>) = if path
        .as_os_str()
        == "-"
    {
        (Box::new(tokio::io::stdin()), None)
    } else {
        let file = tokio::fs::File::open(path)
            .await
            .with_context(|| format!("cannot open {}", path.display()))?;
        let len = file
            .metadata()
            .await
            .with_context(|| format!("cannot read {}", path.display()))?
            .len();
        if len > MAX_BLOB_VALUE_BYTES {
            anyhow::bail!(
                    "{} has {len} bytes, more than the limit of {MAX_BLOB_VALUE_BYTES} bytes for one value",
                    path.display()
                );
        }
        (Box::new(file), Some(len))
    };
    let progress = match len {
        Some(len) if len > MAX_INLINE_VALUE_BYTES as u64 && std::io::stderr().is_terminal() => {
            super::snapshot::bar(len, "uploading")
        }
        _ => indicatif::ProgressBar::hidden(),
    };
    let ticks = progress.clone();
    let chunks = tokio_util::io::ReaderStream::with_capacity(reader, UPLOAD_CHUNK_BYTES)
        .inspect_ok(move |chunk| ticks.inc(chunk.len() as u64));
    Ok((reqwest::Body::wrap_stream(chunks), len, progress))
}

/// Bytes read from a file at once for an upload.
const UPLOAD_CHUNK_BYTES: usize = 256 * 1024;

/// Writes the bare bytes of `key`'s value to the file `out`, with a progress bar on a
/// terminal; a failed read leaves no partial file.
async fn get_to_file(
    client: &AspenClient,
    key: &str,
    consistency: Consistency,
    out: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    let mut file =
        std::fs::File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
    let progress = if std::io::stderr().is_terminal() {
        super::snapshot::bar(0, "downloading")
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut tick = |written: u64, total: Option<u64>| {
        if let Some(total) = total {
            progress.set_length(total);
        }
        progress.set_position(written);
    };
    let read = client
        .get_raw(key, consistency, &mut file, &mut tick)
        .await
        .map_err(|e| explain(e, client));
    progress.finish_and_clear();
    let written = match read.and_then(|n| Ok((n, file.sync_all()?))) {
        Ok((Some(written), ())) => written,
        Ok((None, ())) => {
            let _ = std::fs::remove_file(out);
            eprintln!("key {} not found", render::quote(key));
            return Ok(ExitCode::from(EXIT_NOT_FOUND));
        }
        Err(e) => {
            let _ = std::fs::remove_file(out);
            return Err(e);
        }
    };
    println!(
        "wrote {written} bytes of {} to {}",
        render::quote(key),
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Prints a write's answer: its JSON, or `what` with the revision and cluster.
pub fn print_write(answer: &WriteResponse, json: bool, what: &str) -> anyhow::Result<ExitCode> {
    if json {
        render::json(answer)?;
    } else {
        println!(
            "{what} (revision {}, cluster {})",
            answer.revision, answer.cluster
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn get(
    client: &AspenClient,
    key: &str,
    consistency: Consistency,
    raw: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let Some(entry) = client
        .get(key, consistency)
        .await
        .map_err(|e| explain(e, client))?
    else {
        eprintln!("key {} not found", render::quote(key));
        return Ok(ExitCode::from(EXIT_NOT_FOUND));
    };
    if json {
        render::json(&entry)?;
    } else if let Some(blob) = entry.blob.as_ref().filter(|_| raw) {
        let mut stdout = std::io::stdout();
        let mut no_progress = |_: u64, _: Option<u64>| {};
        let written = client
            .get_raw(key, consistency, &mut stdout, &mut no_progress)
            .await
            .map_err(|e| explain(e, client))?;
        stdout.flush()?;
        if written != Some(blob.size) {
            anyhow::bail!(
                "the value changed while it was read ({} bytes expected, {written:?} read): read it again",
                blob.size
            );
        }
    } else if let Some(blob) = &entry.blob {
        println!(
            "(a blob of {} bytes, BLAKE3 {}: read it with --raw)",
            blob.size, blob.hash
        );
    } else if raw {
        let bytes = entry
            .into_entry()
            .context("the server sent a value that cannot be decoded")?
            .value;
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(&bytes)?;
        stdout.flush()?;
    } else {
        println!(
            "{}",
            render::value(entry.value.as_deref(), entry.value_base64.as_deref())
        );
        println!(
            "  key {}, mod_revision {}, create_revision {}, version {}, cluster {}",
            render::quote(&entry.key),
            entry.mod_revision,
            entry.create_revision,
            entry.version,
            entry.cluster
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn scan(
    client: &AspenClient,
    prefix: &str,
    mut after: Option<String>,
    limit: Option<usize>,
    all: bool,
    consistency: Consistency,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut collected = ScanResponse {
        kvs: Vec::new(),
        more: false,
        next: None,
    };
    loop {
        let page = client
            .scan(prefix, after.as_deref(), limit, consistency)
            .await
            .map_err(|e| explain(e, client))?;
        if !json {
            for entry in &page.kvs {
                let shown = render::value(entry.value.as_deref(), entry.value_base64.as_deref());
                println!(
                    "{} = {shown}  (mod_revision {})",
                    render::quote(&entry.key),
                    entry.mod_revision
                );
            }
        }
        collected.kvs.extend(page.kvs);
        collected.more = page.more;
        collected.next = page.next;
        // A `next` that does not move forward would loop forever; stop on it.
        let advanced = collected.next.is_some() && collected.next != after;
        if !all || !collected.more || !advanced {
            break;
        }
        after = collected.next.clone();
    }
    if json {
        render::json(&collected)?;
    } else if collected.more {
        let next = collected.next.as_deref().unwrap_or_default();
        println!(
            "{} key(s); more follow: continue with --after {} (or use --all)",
            collected.kvs.len(),
            render::quote(next)
        );
    } else {
        println!("{} key(s)", collected.kvs.len());
    }
    Ok(ExitCode::SUCCESS)
}
