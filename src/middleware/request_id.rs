//! Request identity: `x-request-id` (kept when sane, else generated, echoed on
//! the answer) and W3C `traceparent` (kept when valid, else created).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::{HeaderName, HeaderValue, Request, Response};
use tower::{Layer, Service};

use crate::body::Body;
use crate::context::{Exchange, RequestId};
use crate::hex::hex;
use crate::telemetry::TRACEPARENT;

pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

#[derive(Debug, Clone, Default)]
pub(crate) struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestIdService { inner }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct RequestIdService<S> {
    inner: S,
}

impl<S> Service<Request<Body>> for RequestIdService<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = RequestIdFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let id = match req.headers().get(&X_REQUEST_ID) {
            Some(v) if is_sane_id(v.as_bytes()) => v.clone(),
            _ => {
                let v = new_id();
                req.headers_mut().insert(X_REQUEST_ID.clone(), v.clone());
                v
            }
        };
        let traced = req
            .headers()
            .get(&TRACEPARENT)
            .is_some_and(|v| is_valid_traceparent(v.as_bytes()));
        if !traced {
            req.headers_mut()
                .insert(TRACEPARENT.clone(), new_traceparent());
        }
        Exchange::of_mut(req.extensions_mut()).set_id(RequestId(id.clone(), traced));
        RequestIdFuture {
            inner: self.inner.call(req),
            id: Some(id),
        }
    }
}

pin_project_lite::pin_project! {
    /// Echoes the request id on the answer.
    pub struct RequestIdFuture<F> {
        #[pin]
        inner: F,
        id: Option<HeaderValue>,
    }
}

impl<F> Future for RequestIdFuture<F>
where
    F: Future<Output = Result<Response<Body>, Infallible>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = ready!(this.inner.poll(cx))?;
        if let Some(mut id) = this.id.take() {
            // Unique per request: HPACK would add each to the connection's
            // table, evicting the answer headers that do repeat (server,
            // content-type), and search it first. Sent as never indexed.
            id.set_sensitive(true);
            res.headers_mut().insert(X_REQUEST_ID.clone(), id);
        }
        Poll::Ready(Ok(res))
    }
}

/// Up to 128 visible characters from a conservative set: anything else could
/// be a log-injection or header-smuggling attempt, so it is replaced.
fn is_sane_id(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:+/=".contains(b))
}

fn new_id() -> HeaderValue {
    let mut buf = [0u8; 32];
    hex(&mut buf, fastrand::u128(..));
    HeaderValue::from_bytes(&buf).unwrap_or(HeaderValue::from_static("-"))
}

fn new_traceparent() -> HeaderValue {
    let mut buf = *b"00-00000000000000000000000000000000-0000000000000000-01";
    hex(&mut buf[3..35], fastrand::u128(1..));
    hex(&mut buf[36..52], u128::from(fastrand::u64(1..)));
    HeaderValue::from_bytes(&buf).unwrap_or(HeaderValue::from_static("-"))
}

/// `00-<32 hex trace id, not all zero>-<16 hex parent id, not all zero>-<2 hex flags>`.
pub(crate) fn is_valid_traceparent(v: &[u8]) -> bool {
    let lower_hex = |s: &[u8]| {
        s.iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    };
    let nonzero = |s: &[u8]| s.iter().any(|&b| b != b'0');
    v.len() == 55
        && v[2] == b'-'
        && v[35] == b'-'
        && v[52] == b'-'
        && lower_hex(&v[..2])
        && &v[..2] != b"ff"
        && lower_hex(&v[3..35])
        && nonzero(&v[3..35])
        && lower_hex(&v[36..52])
        && nonzero(&v[36..52])
        && lower_hex(&v[53..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_and_traceparents_are_valid() {
        let id = new_id();
        assert_eq!(id.len(), 32);
        assert!(is_sane_id(id.as_bytes()));
        let tp = new_traceparent();
        assert!(is_valid_traceparent(tp.as_bytes()), "{tp:?}");
        assert_ne!(new_id(), new_id());
        assert_ne!(new_traceparent(), new_traceparent());
    }

    #[test]
    fn insane_ids_and_bad_traceparents_are_refused() {
        assert!(!is_sane_id(b""));
        assert!(!is_sane_id(b"a b"));
        assert!(!is_sane_id(&[b'a'; 129]));
        assert!(!is_valid_traceparent(
            b"00-00000000000000000000000000000000-0000000000000001-01"
        ));
        assert!(!is_valid_traceparent(
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"
        ));
        assert!(is_valid_traceparent(
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
    }
}
