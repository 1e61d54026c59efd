//! Waiting for the signal to stop: Ctrl-C (SIGINT) from a terminal or SIGTERM from a
//! service manager, container runtime or `kill`. Long-running commands (`node`, `dev`)
//! await [`shutdown_requested`] and then shut down cleanly.

use tokio::signal::unix::{signal, SignalKind};

/// Completes on the first SIGINT or SIGTERM and returns the signal's name.
pub async fn shutdown_requested() -> anyhow::Result<&'static str> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let name = tokio::select! {
        _ = interrupt.recv() => "Ctrl-C",
        _ = terminate.recv() => "SIGTERM",
    };
    Ok(name)
}
