//! Authentication (SPEC §3): between the `ip`/`global` rate limits and the
//! others, so a flood is cut off before any signature check and consumer
//! limits know the consumer.
//!
//! On success the backend gets the forwarded claims and `x-consumer-id`;
//! same-named headers the client sent are removed first, whatever the token
//! holds, so they cannot be spoofed.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use either::Either;
use http::{HeaderName, HeaderValue, Request, Response};
use serde_json::Value;
use tower::{Layer, Service};

use crate::auth::{self, AuthError, Authenticator, Check, Verified};
use crate::body::Body;
use crate::config::AuthKind;
use crate::context;
use crate::error;
use crate::metrics::Metrics;
use crate::state::RouteContext;

static X_CONSUMER_ID: HeaderName = HeaderName::from_static("x-consumer-id");

#[derive(Debug, Clone)]
pub(crate) struct AuthLayer {
    metrics: Arc<Metrics>,
}

impl AuthLayer {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct AuthService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

type Ready = std::future::Ready<Result<Response<Body>, Infallible>>;
type Boxed = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl<S> Service<Request<Body>> for AuthService<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Either<S::Future, Either<Ready, Boxed>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let Some(ctx) = req.extensions().get::<RouteContext>() else {
            return Either::Left(self.inner.call(req));
        };
        let active = ctx.active();
        let Some(authn) = active.auth.clone() else {
            return Either::Left(self.inner.call(req));
        };
        let route = active.config.name.clone();
        let scopes = active.scopes.clone();
        match authn.check(req.headers(), false) {
            Check::Done(result) => {
                match result.and_then(|v| auth::authorize(&v, &scopes).map(|()| v)) {
                    Ok(verified) => {
                        admit(&mut req, &authn, verified);
                        Either::Left(self.inner.call(req))
                    }
                    Err(e) => Either::Right(Either::Left(std::future::ready(Ok(reject(
                        &self.metrics,
                        &route,
                        e,
                        &req,
                    ))))),
                }
            }
            // The key may be new at the provider: fetch (rate-limited), then look once more.
            Check::FetchKeys(seen) => {
                let inner = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, inner);
                let metrics = self.metrics.clone();
                Either::Right(Either::Right(Box::pin(async move {
                    authn.fetch_keys(seen).await;
                    let result = match authn.check(req.headers(), true) {
                        Check::Done(r) => r,
                        Check::FetchKeys(_) => Err(AuthError::Invalid {
                            challenge: authn.challenge(),
                            reason: auth::Reason::UnknownKey,
                        }),
                    };
                    match result.and_then(|v| auth::authorize(&v, &scopes).map(|()| v)) {
                        Ok(verified) => {
                            admit(&mut req, &authn, verified);
                            // Boxed so the generator never holds `S::Future`
                            // (rustc cannot prove such a future `Send` for all lifetimes).
                            let call: Boxed = Box::pin(inner.call(req));
                            call.await
                        }
                        Err(e) => Ok(reject(&metrics, &route, e, &req)),
                    }
                })))
            }
        }
    }
}

fn reject(
    metrics: &Metrics,
    route: &Arc<str>,
    e: AuthError,
    req: &Request<Body>,
) -> Response<Body> {
    metrics.auth_failed(route, e.label());
    let id = context::request_id(req.extensions()).map(|r| &r.0);
    error::respond(e, id)
}

/// Sets what the backend learns about the caller, after removing whatever
/// the client sent under the same names.
fn admit(req: &mut Request<Body>, authn: &Authenticator, verified: Arc<Verified>) {
    let headers = req.headers_mut();
    headers.remove(&X_CONSUMER_ID);
    match &authn.policy.kind {
        AuthKind::ApiKey(keys) => {
            if keys.hide_credentials {
                headers.remove(&keys.header);
            }
        }
        AuthKind::Jwt(jwt) => {
            for (claim, header) in &jwt.forward_claims {
                headers.remove(header);
                if let Some(v) = verified.claims.get(claim).and_then(claim_value) {
                    headers.insert(header.clone(), v);
                }
            }
        }
    }
    if let Some(id) = &verified.consumer_value {
        headers.insert(X_CONSUMER_ID.clone(), id.clone());
    }
    if let Some(log) = context::exchange(req.extensions()) {
        let consumer = verified.consumer.clone();
        log.update(|f| f.consumer = consumer);
    }
    req.extensions_mut().insert(verified);
}

/// A claim as a header value: strings as they are, numbers and booleans as
/// text, arrays of strings joined by commas; anything else is not forwarded.
fn claim_value(v: &Value) -> Option<HeaderValue> {
    let text = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Array(items) => {
            let parts: Option<Vec<&str>> = items.iter().map(Value::as_str).collect();
            parts?.join(",")
        }
        Value::Null | Value::Object(_) => return None,
    };
    HeaderValue::from_str(&text).ok()
}
