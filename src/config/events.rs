//! Events (SPEC §8): `[topics.NAME]` and `[[subscriptions]]`.
//!
//! A topic is published to at `{server.events_path}/{name}`; it becomes a
//! route of its own (`Action::Publish`, named `topic:NAME`), so the request
//! path's authentication, body limit, access log and metrics apply to
//! publishing as to any route.

use std::sync::Arc;
use std::time::Duration;

use http::Method;

use super::decode::{Ctx, Obj, Spanned};
use super::load::{check_name, entry_name, reference};
use super::*;

#[derive(Debug, Clone, PartialEq)]
pub struct Topic {
    pub name: Arc<str>,
    /// Who may publish.
    pub auth: Option<Arc<AuthPolicy>>,
    /// The largest event (or batch) accepted; larger is 413.
    pub max_event: u64,
    /// The same (`source`, `id`) again within this is accepted but not delivered again.
    pub dedupe_window: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    pub name: Arc<str>,
    pub topic: Arc<str>,
    pub backend: Arc<Backend>,
    /// Deliveries are POSTed here (before the endpoint's base path).
    pub path: String,
    pub filter: Filter,
    pub format: Format,
    pub ordering: Ordering,
    pub delivery: Delivery,
}

/// Which events a subscription takes: every condition given must hold.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Filter {
    /// (attribute, exact value)
    pub exact: Vec<(&'static str, String)>,
    /// (attribute, prefix)
    pub prefix: Vec<(&'static str, String)>,
}

impl Filter {
    /// Whether an event with these attributes passes; `attr` looks one up.
    pub fn matches<'a>(&self, attr: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.exact.iter().all(|(k, v)| attr(k) == Some(v.as_str()))
            && self
                .prefix
                .iter()
                .all(|(k, p)| attr(k).is_some_and(|v| v.starts_with(p.as_str())))
    }
}

/// How a delivery carries its event (the CloudEvents HTTP binding's two modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// `ce-*` headers, the data as the body.
    #[default]
    Binary,
    /// The whole event as `application/cloudevents+json`.
    Structured,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ordering {
    #[default]
    None,
    /// Events with the same `partitionkey` go one at a time, in accepted order.
    PartitionKey,
}

pub(super) fn topic(
    ctx: &mut Ctx<'_>,
    name: &Spanned<String>,
    mut obj: Obj<'_>,
    (auth, declared): (&[Arc<AuthPolicy>], &[String]),
) -> Option<Topic> {
    let named = check_name(ctx, name, obj.path());
    let policy = obj.string(ctx, "auth").and_then(|a| {
        let found = auth.iter().find(|p| *p.name == a.value).cloned();
        if found.is_none() && !declared.contains(&a.value) {
            ctx.error(
                a.span,
                obj.key_path("auth"),
                format!("unknown auth policy `{}`", a.value),
            );
        }
        found
    });
    let mut max_event = 1 << 20;
    if let Some(n) = obj.size(ctx, "max_event") {
        if n < 64 << 10 {
            ctx.error(
                obj.key_span("max_event"),
                obj.key_path("max_event"),
                "must be at least 64KiB (CloudEvents publishers may send that much)",
            );
        } else {
            max_event = n;
        }
    }
    let dedupe_window = obj
        .duration(ctx, "dedupe_window")
        .unwrap_or(Duration::from_secs(24 * 3600));
    obj.finish(ctx);
    named.then(|| Topic {
        name: name.value.as_str().into(),
        auth: policy,
        max_event,
        dedupe_window,
    })
}

/// The route that publishes to `topic`.
pub(super) fn topic_route(topic: &Arc<Topic>, server: &Server) -> Option<Route> {
    let path = PathPattern::parse(&format!("{}/{}", server.events_path, topic.name)).ok()?;
    Some(Route {
        name: format!("topic:{}", topic.name).into(),
        path,
        methods: Some(vec![Method::POST]),
        host: None,
        action: Action::Publish(topic.clone()),
        request_headers: HeaderEdits::default(),
        response_headers: HeaderEdits::default(),
        timeout: None,
        max_body: topic.max_event,
        cors: None,
        auth: topic.auth.clone(),
        scopes: Vec::new(),
        rate_limits: Vec::new(),
        invoke: Invoke::Sync,
        delivery: Delivery::default(),
    })
}

pub(super) fn subscription(
    ctx: &mut Ctx<'_>,
    mut obj: Obj<'_>,
    topics: &[Arc<Topic>],
    backends: &[Arc<Backend>],
) -> Option<Subscription> {
    let name = entry_name(ctx, &mut obj, "subscriptions", "subscription");
    let topic = reference(
        ctx,
        &mut obj,
        "topic",
        "topic",
        topics,
        |t| &t.name,
        Some("a subscription needs a topic"),
    )
    .map(|t| t.name.clone());
    let backend = reference(
        ctx,
        &mut obj,
        "backend",
        "backend",
        backends,
        |b| &b.name,
        Some("a subscription needs a backend to deliver to"),
    );
    let path = match obj.string(ctx, "path") {
        Some(p) if p.value.starts_with('/') && !p.value.contains(['?', '#', ' ']) => p.value,
        Some(p) => {
            ctx.error(
                p.span,
                obj.key_path("path"),
                format!("`{}` is not a path such as \"/events/orders\"", p.value),
            );
            String::new()
        }
        None => "/".to_owned(),
    };
    let filter = obj
        .table(ctx, "filter")
        .map(|f| filter(ctx, f))
        .unwrap_or_default();
    let format = match obj.string(ctx, "format") {
        None => Format::Binary,
        Some(s) => match s.value.as_str() {
            "binary" => Format::Binary,
            "structured" => Format::Structured,
            other => {
                ctx.error(
                    s.span,
                    obj.key_path("format"),
                    format!("`{other}` is not one of \"binary\", \"structured\""),
                );
                Format::Binary
            }
        },
    };
    let ordering = match obj.string(ctx, "ordering") {
        None => Ordering::None,
        Some(s) => match s.value.as_str() {
            "none" => Ordering::None,
            "partitionkey" => Ordering::PartitionKey,
            other => {
                ctx.error(
                    s.span,
                    obj.key_path("ordering"),
                    format!("`{other}` is not one of \"none\", \"partitionkey\""),
                );
                Ordering::None
            }
        },
    };
    let delivery = obj
        .table(ctx, "delivery")
        .map(|d| super::jobs::delivery(ctx, d))
        .unwrap_or_default();
    obj.finish(ctx);
    Some(Subscription {
        name: name?.into(),
        topic: topic?,
        backend: backend?,
        path,
        filter,
        format,
        ordering,
        delivery,
    })
}

fn filter(ctx: &mut Ctx<'_>, mut obj: Obj<'_>) -> Filter {
    let mut f = Filter::default();
    for (key, attr) in [
        ("type", "type"),
        ("source", "source"),
        ("subject", "subject"),
    ] {
        if let Some(v) = obj.string(ctx, key) {
            f.exact.push((attr, v.value));
        }
    }
    for (key, attr) in [
        ("type_prefix", "type"),
        ("source_prefix", "source"),
        ("subject_prefix", "subject"),
    ] {
        if let Some(v) = obj.string(ctx, key) {
            f.prefix.push((attr, v.value));
        }
    }
    obj.finish(ctx);
    f
}
