//! The innermost service: does what the matched route's action says, forward
//! or aggregate, and renders what failed. It is the only place that knows both
//! actions, so `proxy` and `aggregate` never import each other.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};

use crate::aggregate::{self, Inputs};
use crate::body::Body;
use crate::context;
use crate::error;
use crate::jobs::{self, Jobs};
use crate::metrics::Metrics;
use crate::proxy;
use crate::state::{ActiveAction, RouteContext};

#[derive(Debug, Clone)]
pub(crate) struct Dispatch {
    metrics: Arc<Metrics>,
    jobs: Arc<Jobs>,
}

impl Dispatch {
    pub(crate) fn new(metrics: Arc<Metrics>, jobs: Arc<Jobs>) -> Self {
        Self { metrics, jobs }
    }
}

impl tower::Service<Request<Body>> for Dispatch {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let metrics = self.metrics.clone();
        let jobs = self.jobs.clone();
        Box::pin(async move {
            let id = context::request_id(req.extensions()).map(|r| r.0.clone());
            // `{jobs_path}/{id}`: routed as the job's route, answered from the store.
            if req.extensions().get::<jobs::JobRequest>().is_some() {
                let answer = jobs::job_answer(&jobs, req).await;
                return Ok(answer.unwrap_or_else(|e| error::respond(e, id.as_ref())));
            }
            // The route layer runs first and always leaves the context.
            let Some(ctx) = req.extensions_mut().remove::<RouteContext>() else {
                return Ok(error::respond(error::Error::Unrouted, id.as_ref()));
            };
            let active = ctx.active();
            let answer = match &active.action {
                ActiveAction::Forward { to, .. }
                    if jobs::wants_async(active.config.invoke, req.headers()) =>
                {
                    jobs::accept(&jobs, req, &ctx, to)
                        .await
                        .map_err(error::Error::from)
                }
                ActiveAction::Forward { to, upstream } => proxy::forward(req, &ctx, to, upstream)
                    .await
                    .map_err(error::Error::from),
                ActiveAction::Publish(topic) => crate::events::publish(&jobs, req, &ctx, topic)
                    .await
                    .map_err(error::Error::from),
                ActiveAction::Upload(upload) => crate::uploads::receive(&jobs, req, &ctx, upload)
                    .await
                    .map_err(error::Error::from),
                ActiveAction::Aggregate(plan) => {
                    let inputs = Inputs {
                        route: &active.config,
                        params: ctx.params().map(str::to_owned).collect(),
                        host: ctx.host.as_ref(),
                        telemetry: ctx.snapshot.telemetry.as_ref(),
                    };
                    aggregate::run(req, inputs, plan, &metrics)
                        .await
                        .map_err(error::Error::from)
                }
            };
            Ok(answer.unwrap_or_else(|e| error::respond(e, id.as_ref())))
        })
    }
}
