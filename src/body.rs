//! The data path's body and error types.

use bytes::Bytes;

pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The body type of every request and response on the data path.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;
