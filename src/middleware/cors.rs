//! Per-route CORS on tower-http's layer. It sits right behind the router
//! (SPEC §3): a preflight is answered here, before any rate limit or
//! authentication, and never reaches a backend.

use std::convert::Infallible;
use std::task::{Context, Poll};

use either::Either;
use http::{Request, Response};
use tower::{Layer, Service};
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer as TowerCors, ExposeHeaders};

use crate::body::Body;
use crate::config;
use crate::state::RouteContext;

/// Compiles a route's validated CORS settings once per snapshot.
pub fn compile(cfg: &config::Cors) -> TowerCors {
    let mut layer = TowerCors::new()
        .allow_methods(cfg.methods.clone())
        .allow_credentials(cfg.credentials)
        .allow_origin(match &cfg.origins {
            None => AllowOrigin::any(),
            Some(list) => AllowOrigin::list(list.iter().cloned()),
        })
        .allow_headers(match &cfg.headers {
            None => AllowHeaders::any(),
            Some(list) => AllowHeaders::list(list.iter().cloned()),
        })
        .expose_headers(ExposeHeaders::list(cfg.expose_headers.iter().cloned()));
    if let Some(age) = cfg.max_age {
        layer = layer.max_age(age);
    }
    layer
}

#[derive(Debug, Clone, Default)]
pub struct CorsLayer;

impl<S> Layer<S> for CorsLayer {
    type Service = CorsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CorsService { inner }
    }
}

#[derive(Debug, Clone)]
pub struct CorsService<S> {
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
