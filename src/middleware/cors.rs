//! Per-route CORS on tower-http's layer. It sits right behind the router
//! (SPEC §3): a preflight is answered here, before any rate limit or
//! authentication, and never reaches a backend.

use std::convert::Infallible;
use std::task::{Context, Poll};

use either::Either;
use http::{Request, Response};
use tower::{Layer, Service};

use crate::body::Body;
use crate::state::RouteContext;

#[derive(Debug, Clone, Default)]
pub(crate) struct CorsLayer;

impl<S> Layer<S> for CorsLayer {
    type Service = CorsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CorsService { inner }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct CorsService<S> {
    inner: S,
}

impl<S> Service<Request<Body>> for CorsService<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Either<S::Future, tower_http::cors::ResponseFuture<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let cors = req
            .extensions()
            .get::<RouteContext>()
            .and_then(|ctx| ctx.active().cors.clone());
        match cors {
            None => Either::Left(self.inner.call(req)),
            // Routes without CORS pay nothing; the others wrap the (always ready) inner service.
            Some(layer) => Either::Right(layer.layer(self.inner.clone()).call(req)),
        }
    }
}
