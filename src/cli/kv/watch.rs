//! `aspen kv watch`: follows the changes to every key under a prefix (or to one key) and
//! prints them as they commit. A dropped connection, or a server that closed the watch
//! because the terminal read too slowly, is resumed from the last token received, so no
//! change is missed or printed twice; a start revision that has been compacted ends it.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use aspen_api::client::WatchOptions;
use aspen_api::watch::{EventKind, WatchMessage};
use aspen_api::{AspenClient, ClientError, ErrorCode};
use clap::Args;

use crate::cli::endpoint::explain;
use crate::cli::render;

/// Pause before reconnecting a watch whose connection dropped.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

/// Arguments of `aspen kv watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The prefix watched ("" watches every key); with --exact, the one key.
    prefix: String,
    /// Watch only the key PREFIX itself, not the keys under it.
    #[arg(long)]
    exact: bool,
    /// Start at this revision (every kept change from it on); default: changes from now.
    /// Through a router, it applies to every cluster watched.
    #[arg(long, value_name = "REV")]
    from: Option<u64>,
    /// Resume where an earlier watch stopped: the `resume` token of its last message
    /// (shown with --json).
    #[arg(long, value_name = "TOKEN", conflicts_with = "from")]
    resume: Option<String>,
}

/// Runs the watch until the server ends it with an error, or Ctrl-C.
pub async fn watch(client: &AspenClient, args: WatchArgs, json: bool) -> anyhow::Result<ExitCode> {
    let mut options = WatchOptions {
        prefix: !args.exact,
        start_revision: args.from,
        resume: args.resume,
    };
    let mut connected_once = false;
    loop {
        let mut stream = match client.watch(&args.prefix, &options).await {
            Ok(stream) => stream,
            Err(e @ (ClientError::Transport { .. } | ClientError::Silent { .. }))
                if connected_once =>
            {
                eprintln!("watch: {}; reconnecting", explain(e, client));
                tokio::time::sleep(RECONNECT_PAUSE).await;
                continue;
            }
            Err(e) => return Err(explain(e, client)),
        };
        connected_once = true;
        loop {
            let message = match stream.next().await {
                Ok(Some(message)) => message,
                Ok(None) => break,
                Err(e) => {
                    eprintln!("watch: {}; reconnecting", explain(e, client));
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                    break;
                }
            };
            let resume = match &message {
                WatchMessage::Changes { resume, .. }
                | WatchMessage::Progress { resume, .. }
                | WatchMessage::Error { resume, .. } => resume.clone(),
            };
            print(&message, json)?;
            if let WatchMessage::Error { error, .. } = &message {
                if error.code != ErrorCode::SlowWatcher.as_str() {
                    anyhow::bail!("the watch ended: {}: {}", error.code, error.message);
                }
                eprintln!("watch: the server found this terminal too slow; resuming");
            }
            if !resume.is_empty() {
                options.resume = Some(resume);
            }
        }
    }
}

fn print(message: &WatchMessage, json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, message)?;
        writeln!(out)?;
        return Ok(out.flush()?);
    }
    if let WatchMessage::Changes {
        cluster,
        revision,
        events,
        ..
    } = message
    {
        for event in events {
            match event.kind {
                EventKind::Put => writeln!(
                    out,
                    "put {} = {} (revision {revision}, cluster {cluster})",
                    render::quote(&event.key),
                    render::value(event.value.as_deref(), event.value_base64.as_deref())
                )?,
                EventKind::Delete => writeln!(
                    out,
                    "delete {} (revision {revision}, cluster {cluster})",
                    render::quote(&event.key)
                )?,
            }
        }
        out.flush()?;
    }
    Ok(())
}
