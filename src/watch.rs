//! Reloads routes.toml when it or a certificate of `[server.tls]` changes on
//! disk (`server.watch`).
//!
//! Directories are watched, not files, so editors (and cert managers) that
//! write a new file and rename it over the old one are followed. Events are
//! debounced; a config whose text and certificates equal the running ones is
//! ignored. The files watched are those named at start.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio_util::sync::CancellationToken;

use crate::state::{Source, State};

const DEBOUNCE: Duration = Duration::from_millis(150);

pub fn spawn(state: Arc<State>, path: &Path, stop: CancellationToken) -> Result<(), notify::Error> {
    let mut files: Vec<PathBuf> = vec![path.to_owned()];
    if let Some(tls) = &state.load().config.server.tls {
        for c in &tls.certs {
            files.push(c.cert.path.clone());
            files.push(c.key.path.clone());
        }
        files.extend(tls.client_ca.as_ref().map(|ca| ca.path.clone()));
    }
    let names: Vec<OsString> = files
        .iter()
        .filter_map(|f| f.file_name())
        .map(ToOwned::to_owned)
        .collect();
    let mut dirs: Vec<PathBuf> = files
        .iter()
        .map(|f| match f.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => Path::new(".").to_owned(),
        })
        .collect();
    dirs.sort();
    dirs.dedup();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            let ours = event
                .paths
                .iter()
                .any(|p| p.file_name().is_some_and(|n| names.iter().any(|x| x == n)));
            if ours {
                // A full channel already holds a pending reload.
                let _ = tx.try_send(());
            }
        }
    })?;
    for dir in &dirs {
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
    }
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
