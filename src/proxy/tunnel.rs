//! Upgraded connections (WebSocket, over HTTP/1.1 or HTTP/2): once
//! the backend answered 101, bytes are copied both ways until either side
//! closes, the tunnel is idle for `websocket_idle_timeout`, or it reaches
//! `websocket_max_lifetime`.

use std::sync::Arc;
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::idle::{Activity, Tracked};

/// Joins the client's and the backend's upgraded connections.
pub(crate) async fn run(client: OnUpgrade, upstream: OnUpgrade, idle: Duration, max: Duration) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!("upgrade failed: {e}");
            return;
        }
    };
    let activity = Arc::new(Activity::new());
    let mut client = Tracked {
        inner: TokioIo::new(client),
        activity: activity.clone(),
    };
    let mut upstream = Tracked {
        inner: TokioIo::new(upstream),
        activity: activity.clone(),
    };
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    tokio::select! {
        res = copy => {
            if let Err(e) = res {
                tracing::debug!("tunnel ended: {e}");
            }
        }
        why = activity.expired(idle, None) => tracing::debug!("tunnel closed: {why}"),
        () = tokio::time::sleep(max) => tracing::debug!("tunnel closed: max lifetime"),
    }
}
