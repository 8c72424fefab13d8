//! The rate-limit layer: checks a route's policies (`ratelimit/`) in two
//! phases around authentication and writes the `RateLimit` fields.

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use either::Either;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use tower::{Layer, Service};

use crate::auth::Verified;
use crate::body::Body;
use crate::context;
use crate::error;
use crate::metrics::Metrics;
use crate::ratelimit::{Limiter, RateLimited};
use crate::state::RouteContext;

/// Which of a route's policies a layer checks (SPEC §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// `ip` and `global`: before authentication, so floods never cost a signature check.
    BeforeAuth,
    /// The others, which may need the consumer or its claims.
    AfterAuth,
}

#[derive(Debug, Clone)]
pub(crate) struct RateLimitLayer {
    metrics: Arc<Metrics>,
    phase: Phase,
}

impl RateLimitLayer {
    pub(crate) fn new(metrics: Arc<Metrics>, phase: Phase) -> Self {
        Self { metrics, phase }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService {
            inner,
            metrics: self.metrics.clone(),
            phase: self.phase,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct RateLimitService<S> {
    inner: S,
    metrics: Arc<Metrics>,
    phase: Phase,
}

static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

type Ready = std::future::Ready<Result<Response<Body>, Infallible>>;

/// What the checks of one request found so far; carried from the first
/// phase to the second in the request's extensions.
#[derive(Clone, Default)]
struct Report {
    /// `RateLimit` items of the policies checked.
    state: String,
    /// The policy with the least remaining: (limiter, remaining, reset).
    least: Option<(Arc<Limiter>, u32, u64)>,
}

impl Report {
    fn check(
        &mut self,
        l: &Arc<Limiter>,
        ctx: &RouteContext,
        req: &Request<Body>,
    ) -> Option<RateLimited> {
        let verified = req.extensions().get::<Arc<Verified>>().map(|v| &**v);
        let v = l.check(l.key(ctx.client_ip, req.headers(), verified));
        self.record(l, v)
    }

    /// As `check`, on buckets kept in Redis.
    async fn check_shared(
        &mut self,
        l: &Arc<Limiter>,
        key: crate::ratelimit::Key,
    ) -> Option<RateLimited> {
        match l.check_shared(key).await {
            Some(v) => self.record(l, v),
            None => Some(RateLimited {
                policy: l.policy.name.clone(),
                retry_after: 1,
                unavailable: true,
            }),
        }
    }

    fn record(&mut self, l: &Arc<Limiter>, v: crate::ratelimit::Verdict) -> Option<RateLimited> {
        // `"name";r=R;t=T`, without the formatting machinery: this runs per request.
        let mut n = itoa::Buffer::new();
        if self.state.is_empty() {
            self.state.reserve(l.state_prefix().len() + 24);
        } else {
            self.state.push_str(", ");
        }
        self.state.push_str(l.state_prefix());
        self.state.push_str(n.format(v.remaining));
        self.state.push_str(";t=");
        self.state.push_str(n.format(v.reset));
        if self.least.as_ref().is_none_or(|(_, r, _)| v.remaining < *r) {
            self.least = Some((l.clone(), v.remaining, v.reset));
        }
        (!v.allowed).then(|| RateLimited {
            policy: l.policy.name.clone(),
            retry_after: v.wait,
            unavailable: false,
        })
    }

    fn fields(self, policy: HeaderValue) -> Fields {
        Fields {
            policy,
            state: HeaderValue::try_from(self.state).ok(),
            least: self
                .least
                .map(|(l, remaining, reset)| (l.burst_value().clone(), remaining, reset)),
        }
    }
}

/// Checks on Redis: the request waits for their answers (bounded in `ratelimit::shared`).
type Shared =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl<S> Service<Request<Body>> for RateLimitService<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Either<S::Future, Either<Ready, Either<Headed<S::Future>, Shared>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let Some(ctx) = req.extensions().get::<RouteContext>() else {
            return Either::Left(self.inner.call(req));
        };
        let active = ctx.active();
        let Some(policy) = &active.limit_policy else {
            return Either::Left(self.inner.call(req));
        };
        // No policy of its own: the first phase checked them all and writes the
        // answer's fields, which would overwrite this phase's.
        if self.phase == Phase::AfterAuth && active.limits_after.is_empty() {
            return Either::Left(self.inner.call(req));
        }
        // Reading a job is no new work for the function: polling spends no tokens.
        // (Asked only on limited routes, so unlimited ones pay no lookup.)
        if req.extensions().get::<crate::jobs::JobRequest>().is_some() {
            return Either::Left(self.inner.call(req));
        }
        let (limits, mut report) = match self.phase {
            Phase::BeforeAuth => (&active.limits_before, Report::default()),
            Phase::AfterAuth => (
                &active.limits_after,
                req.extensions()
                    .get::<Report>()
                    .cloned()
                    .unwrap_or_default(),
            ),
        };
        if limits.iter().any(|l| l.is_shared()) {
            let limits = limits.clone();
            let keys: Vec<_> = {
                let verified = req.extensions().get::<Arc<Verified>>().map(|v| &**v);
                limits
                    .iter()
                    .map(|l| l.key(ctx.client_ip, req.headers(), verified))
                    .collect()
            };
            let (policy, route) = (policy.clone(), active.config.name.clone());
            let second = !active.limits_after.is_empty();
            let (metrics, phase) = (self.metrics.clone(), self.phase);
            // The service that was made ready serves this request; its clone waits for the next.
            let clone = self.inner.clone();
            let mut inner = std::mem::replace(&mut self.inner, clone);
            return Either::Right(Either::Right(Either::Right(Box::pin(async move {
                let mut refused = None;
                for (l, key) in limits.iter().zip(keys) {
                    refused = report.check_shared(l, key).await;
                    if refused.is_some() {
                        break;
                    }
                }
                let route = refused.as_ref().map(|_| route);
                match decide(
                    &metrics,
                    phase,
                    route.as_ref(),
                    second,
                    policy,
                    refused,
                    report,
                    req,
                ) {
                    Either::Left(res) => Ok(res),
                    Either::Right((req, fields, overwrite)) => {
                        // Boxed at once: an `S::Future` held across the await
                        // trips the compiler's check that this block is Send.
                        let call: Shared = Box::pin(inner.call(req));
                        let mut res = call.await?;
                        fields.write(res.headers_mut(), overwrite);
                        Ok(res)
                    }
                }
            }))));
        }
        // Checked in order; a policy that refuses does not give back what earlier ones took.
        let refused = limits.iter().find_map(|l| report.check(l, ctx, &req));
        // The route's name only for a refusal's metric: an admitted request copies nothing.
        let route = refused.as_ref().map(|_| active.config.name.clone());
        let second = !active.limits_after.is_empty();
        let policy = policy.clone();
        match decide(
            &self.metrics,
            self.phase,
            route.as_ref(),
            second,
            policy,
            refused,
            report,
            req,
        ) {
            Either::Left(res) => Either::Right(Either::Left(std::future::ready(Ok(res)))),
            Either::Right((req, fields, overwrite)) => {
                Either::Right(Either::Right(Either::Left(Headed {
                    inner: self.inner.call(req),
                    fields: Some((fields, overwrite)),
                })))
            }
        }
    }
}

/// After a phase's checks: the refusal (left), or the request to pass on
/// with the fields its answer gets and whether they replace the first phase's.
#[allow(clippy::too_many_arguments)]
fn decide(
    metrics: &Metrics,
    phase: Phase,
    route: Option<&Arc<str>>,
    second_phase: bool,
    policy: HeaderValue,
    refused: Option<RateLimited>,
    report: Report,
    mut req: Request<Body>,
) -> Either<Response<Body>, (Request<Body>, Fields, bool)> {
    if let Some(limited) = refused {
        if let Some(route) = route.filter(|_| !limited.unavailable) {
            metrics.rate_limited(route);
        }
        let id = context::request_id(req.extensions()).map(|r| &r.0);
        let mut res = error::respond(limited, id);
        report.fields(policy).write(res.headers_mut(), true);
        return Either::Left(res);
    }
    // The first phase's fields stand unless the second phase ran (an
    // answer refused by authentication carries them too). Only then is
    // the report copied, for the second phase to continue.
    Either::Right(match phase {
        Phase::BeforeAuth if second_phase => {
            let fields = report.clone().fields(policy);
            req.extensions_mut().insert(report);
            (req, fields, false)
        }
        _ => {
            let fields = report.fields(policy);
            (req, fields, true)
        }
    })
}

/// The rate-limit fields of one answer.
struct Fields {
    policy: HeaderValue,
    state: Option<HeaderValue>,
    /// `RateLimit-Limit` (the burst), remaining and reset of the policy with the least remaining.
    least: Option<(HeaderValue, u32, u64)>,
}

impl Fields {
    fn write(self, headers: &mut HeaderMap, overwrite: bool) {
        if !overwrite && headers.contains_key(&RATELIMIT_POLICY) {
            return;
        }
        // Room for all five at once: one growth of the map, not several.
        headers.reserve(5);
        headers.insert(RATELIMIT_POLICY.clone(), self.policy);
        if let Some(state) = self.state.filter(|s| !s.is_empty()) {
            headers.insert(RATELIMIT.clone(), state);
        }
        if let Some((limit, remaining, reset)) = self.least {
            headers.insert(RATELIMIT_LIMIT.clone(), limit);
            headers.insert(RATELIMIT_REMAINING.clone(), number(u64::from(remaining)));
            headers.insert(RATELIMIT_RESET.clone(), number(reset));
        }
    }
}

/// Small numbers are the common case: their header values are made once.
fn number(n: u64) -> HeaderValue {
    static SMALL: OnceLock<Vec<HeaderValue>> = OnceLock::new();
    let small = SMALL.get_or_init(|| (0..1024u64).map(HeaderValue::from).collect());
    small
        .get(n as usize)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from(n))
}

pin_project_lite::pin_project! {
    /// Adds the rate-limit headers to an allowed request's answer.
    pub struct Headed<F> {
        #[pin]
        inner: F,
        fields: Option<(Fields, bool)>,
    }
}

impl<F> std::future::Future for Headed<F>
where
    F: std::future::Future<Output = Result<Response<Body>, Infallible>>,
{
    type Output = F::Output;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = std::task::ready!(this.inner.poll(cx))?;
        if let Some((f, overwrite)) = this.fields.take() {
            f.write(res.headers_mut(), overwrite);
        }
        Poll::Ready(Ok(res))
    }
}
