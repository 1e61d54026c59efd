//! `aspen snapshot`: back a cluster's data up to a file and start a new cluster from it,
//! as etcd's `snapshot save` and `restore` do.
//!
//! - `save FILE`: asks a node to build a snapshot now (so the backup holds every write
//!   applied when it is asked) and downloads it: every key with its revisions and lease,
//!   the leases, and the kept change feed, at one log index. The bytes go to `FILE.partial`,
//!   are read through once (a cut or damaged download is refused), fsynced and renamed, so
//!   `FILE` is only ever a whole backup.
//! - `inspect FILE`: reads a backup through and says what it holds; exit 1 if damaged.
//! - `restore FILE --data-dir DIR`: writes a backup's data into a new node's empty data
//!   dir. Restore the same file into every member's data dir of a new cluster, start the
//!   members, and `aspen cluster init`: the cluster goes on from the backup's revision, so
//!   revisions never go back for clients and watchers.
//!
//! Downloads and restores show a progress bar when stderr is a terminal.

use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use aspen_cluster_node::storage::snapshot::stream::StreamReader;
use aspen_cluster_node::storage::{self, FeedRetention};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use super::endpoint::{explain, EndpointArgs};

/// How long `save` waits for the node to build the snapshot (the server's own bound).
const BUILD_WAIT: Duration = aspen_cluster_node::service::SNAPSHOT_BUILD_WAIT;

/// Arguments of `aspen snapshot`.
#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// The operation.
    #[command(subcommand)]
    command: SnapshotCommand,
}

/// The snapshot operations.
#[derive(Debug, Subcommand)]
enum SnapshotCommand {
    /// Back up a node's data: build a snapshot now and download it to FILE. Point
    /// --endpoint at a node (not a router); any member will do, a follower spares the
    /// leader the work.
    Save {
        #[command(flatten)]
        endpoint: EndpointArgs,
        /// Where to write the backup; an existing file is replaced only once the new one
        /// is whole.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Read a backup through and print what it holds; exit 1 if it is damaged.
    Inspect {
        /// The backup file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Write a backup's data into a new node's empty data dir (before its first start).
    /// Do it for every member of the new cluster, start them, then `aspen cluster init`.
    Restore {
        /// The backup file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// The new node's data dir (its config's `data_dir`): empty, or holding only its
        /// identity (`iroh.key`, as `aspen keygen` writes it).
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
    },
}

/// Runs one snapshot command.
pub async fn run(args: SnapshotArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        SnapshotCommand::Save { endpoint, file } => save(endpoint, &file).await,
        SnapshotCommand::Inspect { file } => {
            tokio::task::spawn_blocking(move || inspect(&file)).await?
        }
        SnapshotCommand::Restore { file, data_dir } => {
            tokio::task::spawn_blocking(move || restore(&file, &data_dir)).await?
        }
    }
}

pub(super) fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("a valid progress template")
        .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

async fn save(endpoint: EndpointArgs, file: &Path) -> anyhow::Result<ExitCode> {
    let client = endpoint.client()?;
    eprintln!("building a snapshot on the node...");
    let built = client
        .snapshot_build(BUILD_WAIT)
        .await
        .map_err(|e| explain(e, &client))?;
    let mut download = client
        .snapshot_download()
        .await
        .map_err(|e| explain(e, &client))?;
    let info = download.info.clone();
    if info.last_log_index < built.last_log_index {
        bail!(
            "the node offered snapshot {} (log index {}), older than the one it just built ({})",
            info.snapshot_id,
            info.last_log_index,
            built.last_log_index
        );
    }
    let partial = partial_path(file);
    let progress = bar(info.bytes, "downloading");
    let written = async {
        let mut out = std::fs::File::create(&partial)
            .with_context(|| format!("cannot create {}", partial.display()))?;
        let mut got = 0u64;
        while let Some(chunk) = download.chunk().await.map_err(|e| explain(e, &client))? {
            out.write_all(&chunk)
                .with_context(|| format!("cannot write {}", partial.display()))?;
            got += chunk.len() as u64;
            progress.set_position(got);
        }
        if got != info.bytes {
            bail!("the download ended after {got} of {} bytes", info.bytes);
        }
        out.sync_all()?;
        anyhow::Ok(())
    }
    .await;
    progress.finish_and_clear();
    let checked = written.and_then(|()| {
        read_through(&partial, false).context("the downloaded snapshot is not whole")
    });
    let held = match checked {
        Ok(held) => held,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    std::fs::rename(&partial, file)
        .with_context(|| format!("cannot rename {} to {}", partial.display(), file.display()))?;
    println!(
        "saved snapshot {} (log index {}, revision {}: {} keys, {} leases, {} change sets, {} bytes) to {}",
        info.snapshot_id,
        info.last_log_index,
        held.revision,
        held.keys,
        held.leases,
        held.changes,
        info.bytes,
        file.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn partial_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

/// What a backup holds.
struct Held {
    snapshot_id: String,
    last_log_index: u64,
    revision: u64,
    keys: u64,
    changes: u64,
    leases: u64,
}

/// Reads the backup at `path` through, checking it is whole.
fn read_through(path: &Path, show_progress: bool) -> anyhow::Result<Held> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let progress = if show_progress {
        bar(file.metadata()?.len(), "reading")
    } else {
        ProgressBar::hidden()
    };
    let mut reader = StreamReader::open(BufReader::new(progress.wrap_read(file)))?;
    while reader.next_item()?.is_some() {}
    progress.finish_and_clear();
    let counts = reader.counts();
    Ok(Held {
        snapshot_id: reader.meta().snapshot_id.clone(),
        last_log_index: reader.meta().last_log_id.map_or(0, |l| l.index),
        revision: reader.header().revision,
        keys: counts.keys,
        changes: counts.changes,
        leases: counts.leases,
    })
}

fn inspect(file: &Path) -> anyhow::Result<ExitCode> {
    let held = read_through(file, true)
        .with_context(|| format!("{} is not a whole Aspen snapshot", file.display()))?;
    println!("snapshot:       {}", held.snapshot_id);
    println!("log index:      {}", held.last_log_index);
    println!("revision:       {}", held.revision);
    println!("keys:           {}", held.keys);
    println!("leases:         {}", held.leases);
    println!("change sets:    {}", held.changes);
    Ok(ExitCode::SUCCESS)
}

fn restore(file: &Path, data_dir: &Path) -> anyhow::Result<ExitCode> {
    for db in ["log.db", "state.db"] {
        if data_dir.join(db).exists() {
            bail!(
                "{} already holds a node ({db}): restore into a new, empty data dir",
                data_dir.display()
            );
        }
    }
    let input =
        std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let progress = bar(input.metadata()?.len(), "restoring");
    let (log, state) = storage::open(data_dir, FeedRetention::default())
        .with_context(|| format!("cannot create a node's storage in {}", data_dir.display()))?;
    let restored = state.restore(progress.wrap_read(input));
    progress.finish_and_clear();
    drop((log, state));
    let restored = match restored {
        Ok(restored) => restored,
        Err(e) => {
            // Nothing was restored (the transaction rolled back): leave the dir as it was,
            // so the restore can be run again.
            remove_databases(data_dir);
            return Err(anyhow::Error::new(e).context(format!(
                "cannot restore {} into {}",
                file.display(),
                data_dir.display()
            )));
        }
    };
    println!(
        "restored revision {} ({} keys, {} leases, {} change sets) into {}; start the node, \
         then `aspen cluster init` once the new cluster's members are up",
        restored.revision,
        restored.counts.keys,
        restored.counts.leases,
        restored.counts.changes,
        data_dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Removes the databases a failed restore created in `dir`.
fn remove_databases(dir: &Path) {
    for db in ["log.db", "state.db"] {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(dir.join(format!("{db}{suffix}")));
        }
    }
}
