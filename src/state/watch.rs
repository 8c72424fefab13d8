//! Reloads routes.toml when it or a certificate of `[server.tls]` changes on
//! disk (`server.watch`).
//!
//! Directories are watched, not files, so editors (and cert managers) that
//! write a new file and rename it over the old one are followed. Events are
//! debounced; a config whose text and certificates equal the running ones is
//! ignored. The set of files follows the running config within seconds.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio_util::sync::CancellationToken;

use crate::state::{Source, State};

const DEBOUNCE: Duration = Duration::from_millis(150);

/// How often the set of watched files is brought up to date with the
/// running config (a reload may name certificates elsewhere).
const REFRESH: Duration = Duration::from_secs(5);

/// The config file and the certificate files the running config names, and
/// the directories that hold them.
fn wanted(path: &Path, state: &State) -> (Vec<OsString>, Vec<PathBuf>) {
    let mut files: Vec<PathBuf> = vec![path.to_owned()];
    if let Some(tls) = &state.load().config.server.tls {
        for c in &tls.certs {
            files.push(c.cert.path.clone());
            files.push(c.key.path.clone());
        }
        files.extend(tls.client_ca.as_ref().map(|ca| ca.path.clone()));
    }
    let names = files
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
    (names, dirs)
}

pub fn spawn(state: Arc<State>, path: &Path, stop: CancellationToken) -> Result<(), notify::Error> {
    let (names, mut dirs) = wanted(path, &state);
    let names = Arc::new(std::sync::Mutex::new(names));
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let ours = names.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            // Opening and reading a file are events too, and every reload reads
            // the files: reacting to them would reload forever.
            if matches!(
                event.kind,
                notify::EventKind::Access(_)
                    | notify::EventKind::Modify(notify::event::ModifyKind::Metadata(
                        notify::event::MetadataKind::AccessTime
                    ))
            ) {
                return;
            }
            let Ok(names) = ours.lock() else { return };
            let hit = event
                .paths
                .iter()
                .any(|p| p.file_name().is_some_and(|n| names.iter().any(|x| x == n)));
            if hit {
                // A full channel already holds a pending reload.
                let _ = tx.try_send(());
            }
        }
    })?;
    for dir in &dirs {
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
    }
    let path = path.to_owned();
    tokio::spawn(async move {
        let mut refresh = tokio::time::interval_at(tokio::time::Instant::now() + REFRESH, REFRESH);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = refresh.tick() => {
                    // Follow certificates a reload (from any source) moved elsewhere.
                    let (now_names, now_dirs) = wanted(&path, &state);
                    for dir in now_dirs.iter().filter(|d| !dirs.contains(d)) {
                        if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
                            tracing::warn!(dir = %dir.display(), "cannot watch: {e}");
                        }
                    }
                    dirs = now_dirs;
                    if let Ok(mut n) = names.lock() {
                        *n = now_names;
                    }
                }
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
