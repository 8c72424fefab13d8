//! Upgraded connections (WebSocket, over HTTP/1.1 or HTTP/2): once
//! the backend answered 101, bytes are copied both ways until either side
//! closes, the tunnel is idle for `websocket_idle_timeout`, or it reaches
//! `websocket_max_lifetime`.

use std::sync::Arc;
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::gate::Gated;
use crate::idle::{Activity, Tracked};
use crate::telemetry::{KeyValue, Span};

/// Joins the client's and the backend's upgraded connections.
/// A traced tunnel's span ends when it closes, with the bytes it carried.
pub(crate) async fn run(
    client: OnUpgrade,
    upstream: OnUpgrade,
    idle: Duration,
    max: Duration,
    mut span: Option<Span>,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!("upgrade failed: {e}");
            if let Some(span) = span.as_mut().filter(|s| s.recording()) {
                span.fail("upgrade_failed", e.to_string());
            }
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
    let closed = tokio::select! {
        res = copy => match res {
            Ok((up, down)) => {
                if let Some(span) = span.as_mut().filter(|s| s.recording()) {
                    span.set(KeyValue::new("fngate.tunnel.bytes_sent", up as i64));
                    span.set(KeyValue::new("fngate.tunnel.bytes_received", down as i64));
                }
                "closed"
            }
            Err(e) => {
                tracing::debug!("tunnel ended: {e}");
                "error"
            }
        },
        // Gated: polled when their timers fire, not on every frame.
        why = Gated::new(activity.expired(idle, None)) => {
            tracing::debug!("tunnel closed: {why}");
            "idle"
        }
        () = Gated::new(tokio::time::sleep(max)) => {
            tracing::debug!("tunnel closed: max lifetime");
            "max_lifetime"
        }
    };
    if let Some(span) = span.as_mut().filter(|s| s.recording()) {
        span.set(KeyValue::new("fngate.tunnel.end", closed));
    }
}
