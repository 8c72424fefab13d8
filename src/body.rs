//! The data path's body and error types.

use bytes::Bytes;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The body type of every request and response on the data path.
pub(crate) type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// An error and its sources, `: `-separated, for logs.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}
