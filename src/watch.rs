//! Reloads routes.toml when it changes on disk (`server.watch`).
//!
//! The directory is watched, not the file, so editors that write a new file
//! and rename it over the old one are followed. Events are debounced; a file
//! whose text equals the running config's is ignored.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio_util::sync::CancellationToken;

use crate::state::{Source, State};

const DEBOUNCE: Duration = Duration::from_millis(150);

pub fn spawn(state: Arc<State>, path: &Path, stop: CancellationToken) -> Result<(), notify::Error> {
    let name = path.file_name().map(ToOwned::to_owned);
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => Path::new(".").to_owned(),
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            if event.paths.iter().any(|p| p.file_name() == name.as_deref()) {
                // A full channel already holds a pending reload.
                let _ = tx.try_send(());
            }
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    tokio::spawn(async move {
        let _watcher = watcher;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                got = rx.recv() => {
                    if got.is_none() {
                        return;
                    }
                    tokio::time::sleep(DEBOUNCE).await;
                    while rx.try_recv().is_ok() {}
                    let _ = state.reload(Source::File).await;
                }
            }
        }
    });
    Ok(())
}
