//! The upstream request body: empty, buffered (replayable for retries) or
//! streamed with the `max_body` limit counted as it flows.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};

use crate::body::{Body, BoxError};
use http_body_util::BodyExt;

use super::UpstreamError;
use crate::context::Exchange;

/// Why the client's body could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("request body over the {0}-byte limit")]
    TooLarge(u64),
    #[error("client body failed: {0}")]
    Client(BoxError),
}

/// Bodies up to this size with a known length are buffered, so a failed
/// attempt can be retried (SPEC §2 `retries`).
const REPLAY_LIMIT: u64 = 64 << 10;

/// How a request body travels to the upstream.
pub(crate) enum Prepared {
    Empty,
    Full(Bytes),
    Stream(Body),
}

/// Decides how the body travels: small known-length bodies are buffered so
/// they can be replayed; the rest stream with the limit counted on the way.
pub(crate) async fn prepare(
    body: Body,
    limit: u64,
    log: Option<&Arc<Exchange>>,
) -> Result<Prepared, UpstreamError> {
    if body.is_end_stream() {
        return Ok(Prepared::Empty);
    }
    match body.size_hint().exact() {
        Some(n) if n > limit => Err(UpstreamError::BodyTooLarge { limit }),
        Some(0) => Ok(Prepared::Empty),
        Some(n) if n <= REPLAY_LIMIT => {
            let bytes = body
                .collect()
                .await
                .map_err(UpstreamError::ClientBody)?
                .to_bytes();
            if let Some(log) = log {
                log.add_bytes_in(bytes.len() as u64);
            }
            Ok(Prepared::Full(bytes))
        }
        _ => Ok(Prepared::Stream(body)),
    }
}

/// A streamed body that has not been polled yet can be taken back after a
/// connect failure, so even a streamed request can be retried then.
pub(crate) type Slot = Arc<Mutex<Option<Body>>>;

pub(crate) struct ProxyBody {
    kind: Kind,
}

enum Kind {
    Empty,
    Full(Option<Bytes>),
    // Boxed: a request is moved through hyper's dispatch channel, whose
    // blocks hold 32 requests each, and most have no stream.
    Stream(Box<Streaming>),
}

struct Streaming {
    slot: Slot,
    body: Option<Body>,
    hint: SizeHint,
    seen: u64,
    limit: u64,
    log: Option<Arc<Exchange>>,
}

impl ProxyBody {
    pub(crate) fn empty() -> Self {
        Self { kind: Kind::Empty }
    }

    pub(crate) fn full(bytes: Bytes) -> Self {
        Self {
            kind: Kind::Full(Some(bytes)),
        }
    }

    /// Streams `body`, failing once more than `limit` bytes have passed.
    pub(crate) fn stream(body: Body, limit: u64, log: Option<Arc<Exchange>>) -> (Self, Slot) {
        let hint = body.size_hint();
        let slot = Arc::new(Mutex::new(Some(body)));
        let kind = Kind::Stream(Box::new(Streaming {
            slot: slot.clone(),
            body: None,
            hint,
            seen: 0,
            limit,
            log,
        }));
        (Self { kind }, slot)
    }
}

impl http_body::Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match &mut self.kind {
            Kind::Empty => Poll::Ready(None),
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Stream(s) => {
                if s.body.is_none() {
                    s.body = s.slot.lock().ok().and_then(|mut slot| slot.take());
                }
                let Some(body) = s.body.as_mut() else {
                    return Poll::Ready(None);
                };
                match Pin::new(body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(data) = frame.data_ref() {
                            let n = data.len() as u64;
                            s.seen += n;
                            if let Some(log) = &s.log {
                                log.add_bytes_in(n);
                            }
                            if s.seen > s.limit {
                                return Poll::Ready(Some(Err(BodyError::TooLarge(s.limit))));
                            }
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                    Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BodyError::Client(e)))),
                    Poll::Ready(None) => Poll::Ready(None),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Stream(s) => s.body.as_ref().is_some_and(|b| b.is_end_stream()),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Stream(s) => s.hint,
        }
    }
}

/// Finds our own body error in an upstream error's source chain.
pub(crate) fn body_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a BodyError> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(b) = e.downcast_ref::<BodyError>() {
            return Some(b);
        }
        cur = e.source();
    }
    None
}
