//! The request path as one tower stack, composed top to bottom in [`stack`].

mod access_log;
mod auth;
pub mod cors;
pub mod rate_limit;
mod request_id;
mod route;

use std::convert::Infallible;
use std::sync::Arc;

use http::{Request, Response};
use tower::{Service, ServiceBuilder};

pub use access_log::AccessLogLayer;
pub use auth::{AuthLayer, AuthService};
pub use request_id::{RequestIdLayer, X_REQUEST_ID};
pub use route::RouteLayer;

use crate::body::Body;
use crate::dispatch::Dispatch;
use crate::middleware::rate_limit::Phase;
use crate::state::State;

/// Builds the data-path service. Every layer is always ready; rejections are
/// answers rendered through `error.rs`, never `Err`.
pub fn stack(
    state: Arc<State>,
) -> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future: Send>
       + Clone
       + Send
       + 'static {
    let metrics = state.metrics.clone();
    ServiceBuilder::new()
        // First, so every answer (even a 404) carries the id and the log line has it.
        .layer(RequestIdLayer)
        // Outside the router, so unroutable requests are logged and counted too.
        .layer(AccessLogLayer::new(metrics.clone()))
        // Loads the snapshot once; everything below sees the same config.
        .layer(RouteLayer::new(state))
        // Preflights are answered before any rate limit or auth (SPEC §3).
        .layer(cors::CorsLayer)
        // Everything that refuses comes before the proxy, so a refused request
        // never reaches a backend. `ip` and `global` limits come before
        // authentication, so a flood is cut off before any signature check;
        // the others after it, as they may key on the consumer (SPEC §3).
        .layer(rate_limit::RateLimitLayer::new(
            metrics.clone(),
            Phase::BeforeAuth,
        ))
        .layer(AuthLayer::new(metrics.clone()))
        .layer(rate_limit::RateLimitLayer::new(
            metrics.clone(),
            Phase::AfterAuth,
        ))
        // Forward or aggregate, by the route's action.
        .service(Dispatch::new(metrics))
}
