//! Decodes each section of routes.toml into validated types, then checks what
//! spans sections: references, duplicate routes, router conflicts.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use http::Method;
use toml_edit::ImDocument;

use super::auth;
use super::backend::backend;
use super::decode::{Ctx, EnvLookup, Obj, Spanned};
use super::error::{ConfigErrors, Diagnostics};

use super::rate_limit::rate_limit;
use super::route::route;
use super::server::{admin, server, server_defaults};
use super::{Config, Route, Shapes};

/// Sections and keys of SPEC §2 that later releases implement. They are refused
/// rather than ignored: a route that names an auth policy must never be served
/// without it.
const NOT_YET: &str = "is not supported by this version of fngate yet";

pub(super) fn parse(
    text: &str,
    file: Arc<str>,
    base: &Path,
    env: EnvLookup<'_>,
) -> Result<Config, ConfigErrors> {
    let mut ctx = Ctx::new(Diagnostics::new(file, text), env);
    let doc = match ImDocument::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            let message = e.message().trim().to_owned();
            ctx.error(e.span(), "", format!("invalid TOML: {message}"));
            return Err(ConfigErrors(ctx.into_errors()));
        }
    };
    let Some(mut root) = Obj::from_item(&mut ctx, doc.as_item(), String::new()) else {
        return Err(ConfigErrors(ctx.into_errors()));
    };

    let server = match root.table(&mut ctx, "server") {
        Some(obj) => server(&mut ctx, obj, base),
        None => server_defaults(),
    };
    let store = match root.table(&mut ctx, "store") {
        Some(obj) => super::jobs::store(&mut ctx, obj, base),
        None => super::jobs::store_default(base),
    };
    let telemetry = root
        .table(&mut ctx, "telemetry")
        .and_then(|obj| super::telemetry::telemetry(&mut ctx, obj));
    let admin_table = root.table(&mut ctx, "admin");
    let admin = admin(&mut ctx, admin_table);
    let mut backends = Vec::new();
    for (name, obj) in root.named_tables(&mut ctx, "backends") {
        if let Some(b) = backend(&mut ctx, name, obj, base) {
            backends.push(Arc::new(b));
        }
    }
    let mut rate_limits = Vec::new();
    for (name, obj) in root.named_tables(&mut ctx, "rate_limits") {
        if let Some(r) = rate_limit(&mut ctx, name, obj) {
            rate_limits.push(Arc::new(r));
        }
    }
    let mut auth = Vec::new();
    // Every declared name, valid or not: a route naming a broken policy gets
    // that policy's errors, not a second "unknown" one.
    let mut declared = Vec::new();
    for (name, obj) in root.named_tables(&mut ctx, "auth") {
        declared.push(name.value.clone());
        let named = check_name(&mut ctx, &name, obj.path());
        if let Some(p) = auth::policy(&mut ctx, &name, obj, base) {
            if named {
                auth.push(Arc::new(p));
            }
        }
    }
    let mut topics = Vec::new();
    for (name, obj) in root.named_tables(&mut ctx, "topics") {
        if let Some(t) = super::events::topic(&mut ctx, &name, obj, (&auth, &declared)) {
            topics.push(Arc::new(t));
        }
    }
    let mut subscriptions: Vec<Arc<super::Subscription>> = Vec::new();
    for obj in root.table_array(&mut ctx, "subscriptions") {
        let span = obj.span();
        if let Some(s) = super::events::subscription(&mut ctx, obj, &topics, &backends) {
            if subscriptions.iter().any(|o| o.name == s.name) {
                ctx.error(
                    span,
                    format!("subscriptions[{}].name", s.name),
                    format!("subscription name `{}` is used twice", s.name),
                );
            }
            subscriptions.push(Arc::new(s));
        }
    }
    let mut schedules: Vec<Arc<super::Schedule>> = Vec::new();
    for obj in root.table_array(&mut ctx, "schedules") {
        let span = obj.span();
        if let Some(s) = super::schedules::schedule(&mut ctx, obj, &backends, &topics) {
            let clash = if schedules.iter().any(|o| o.name == s.name) {
                Some("schedule name `{}` is used twice")
            } else if subscriptions.iter().any(|o| o.name == s.name) {
                Some("`{}` names a subscription too; jobs are listed by that name, so it must be one or the other")
            } else {
                None
            };
            if let Some(why) = clash {
                ctx.error(
                    span,
                    format!("schedules[{}].name", s.name),
                    why.replace("{}", &s.name),
                );
            }
            schedules.push(Arc::new(s));
        }
    }
    let tables = root.table_array(&mut ctx, "routes");
    let mut routes = Vec::new();
    let mut spans = Vec::new();
    for obj in tables {
        let span = obj.span();
        if let Some(r) = route(
            &mut ctx,
            obj,
            &server,
            &backends,
            (&auth, &declared),
            &rate_limits,
            (&topics, base),
        ) {
            routes.push(Arc::new(r));
            spans.push(span);
        }
    }
    root.finish(&mut ctx);
    check_routes(&mut ctx, &routes, &spans);
    let serves_files = routes
        .iter()
        .any(|r| matches!(r.action, super::Action::Upload(_)));
    if serves_files {
        let files = &server.files_path;
        for (i, r) in routes.iter().enumerate() {
            let literal = r.path.literal_prefix();
            if literal.starts_with(files.as_str())
                && matches!(literal.as_bytes().get(files.len()), None | Some(b'/'))
            {
                ctx.error(
                    spans[i].clone(),
                    format!("routes[{}].path", r.name),
                    format!(
                        "`{}` would take requests under server.files_path `{files}`, where functions read uploaded files",
                        r.path.raw
                    ),
                );
            }
        }
    }
    // Jobs name their route or subscription by name alone (SPEC §11).
    for (i, r) in routes.iter().enumerate() {
        if subscriptions.iter().any(|s| s.name == r.name)
            || schedules.iter().any(|s| s.name == r.name)
        {
            ctx.error(
                spans[i].clone(),
                format!("routes[{}].name", r.name),
                format!(
                    "`{}` names a subscription or schedule too; jobs are listed by that name, so it must be one or the other",
                    r.name
                ),
            );
        }
    }
    // Each topic is published to through a route of its own, after the others.
    routes.extend(
        topics
            .iter()
            .filter_map(|t| super::events::topic_route(t, &server))
            .map(Arc::new),
    );

    let errors = ctx.into_errors();
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    Ok(Config {
        path: None,
        text: text.into(),
        server,
        admin,
        backends,
        auth,
        rate_limits,
        routes,
        store,
        telemetry,
        topics,
        subscriptions,
        schedules,
        serves_files,
    })
}

/// Refuses keys a later release implements (and marks them, so they are not also "unknown").
pub(super) fn not_yet(ctx: &mut Ctx<'_>, obj: &mut Obj<'_>, keys: &[&'static str]) {
    for &key in keys {
        if obj.has(key) {
            ctx.error(
                obj.key_span(key),
                obj.key_path(key),
                format!("`{key}` {NOT_YET}"),
            );
        }
        obj.mark(key);
    }
}

pub(super) fn address(
    ctx: &mut Ctx<'_>,
    obj: &mut Obj<'_>,
    key: &'static str,
) -> Option<SocketAddr> {
    let s = obj.string(ctx, key)?;
    match s.value.parse() {
        Ok(addr) => Some(addr),
        Err(_) => {
            ctx.error(
                s.span,
                obj.key_path(key),
                format!("`{}` is not an address such as \"127.0.0.1:8080\"", s.value),
            );
            None
        }
    }
}

/// The `name` of one `[[section]]` entry, checked; the table is renamed
/// `section[name]` for the errors that follow. `None` (reported) when missing
/// or invalid.
pub(super) fn entry_name(
    ctx: &mut Ctx<'_>,
    obj: &mut Obj<'_>,
    section: &str,
    what: &str,
) -> Option<String> {
    let Some(name) = obj.string(ctx, "name") else {
        ctx.error(
            obj.span(),
            obj.key_path("name"),
            format!("missing: every {what} needs a name"),
        );
        return None;
    };
    if !check_name(ctx, &name, &obj.key_path("name")) {
        return None;
    }
    obj.rename(format!("{section}[{}]", name.value));
    Some(name.value)
}

/// The entity `key` names among `known` (`what`: "topic", "backend"); an
/// error when it names none, or when it is missing and `missing` says why.
pub(super) fn reference<T>(
    ctx: &mut Ctx<'_>,
    obj: &mut Obj<'_>,
    key: &'static str,
    what: &str,
    known: &[Arc<T>],
    name_of: impl Fn(&T) -> &str,
    missing: Option<&str>,
) -> Option<Arc<T>> {
    let Some(given) = obj.string(ctx, key) else {
        if let Some(why) = missing {
            ctx.error(obj.span(), obj.key_path(key), format!("missing: {why}"));
        }
        return None;
    };
    let found = known.iter().find(|x| name_of(x) == given.value).cloned();
    if found.is_none() {
        ctx.error(
            given.span,
            obj.key_path(key),
            format!("unknown {what} `{}`", given.value),
        );
    }
    found
}

pub(super) fn check_name(ctx: &mut Ctx<'_>, name: &Spanned<String>, what: &str) -> bool {
    let ok = !name.value.is_empty()
        && name.value.len() <= 64
        && name
            .value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !ok {
        ctx.error(
            name.span.clone(),
            what,
            format!(
                "`{}` is not a valid name: use a-z, 0-9, `_` and `-` (at most 64)",
                name.value
            ),
        );
    }
    ok
}

/// Route names are unique; no two routes match the same host, path shape and
/// method; every host's shapes fit into one router without conflict.
fn check_routes(
    ctx: &mut Ctx<'_>,
    routes: &[Arc<Route>],
    spans: &[Option<std::ops::Range<usize>>],
) {
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (i, r) in routes.iter().enumerate() {
        if let Some(first) = names.insert(&r.name, i) {
            ctx.error(
                spans[i].clone(),
                format!("routes[{}].name", r.name),
                format!(
                    "route name `{}` is used twice (first at route #{})",
                    r.name,
                    first + 1
                ),
            );
        }
    }
    let shapes = Shapes::of(routes);
    for (i, e) in &shapes.conflicts {
        let r = &routes[*i];
        ctx.error(
            spans[*i].clone(),
            format!("routes[{}].path", r.name),
            format!("`{}` conflicts with another route's path: {e}", r.path.raw),
        );
    }
    // Routes of one shape and host may split it by method, never share one.
    for members in shapes.hosts.iter().flat_map(|h| &h.entries) {
        for (k, &i) in members.iter().enumerate() {
            let r = &routes[i];
            let Some(&j) = members[..k].iter().find(|&&j| {
                let other = &routes[j];
                match (&r.methods, &other.methods) {
                    (None, _) | (_, None) => true,
                    (Some(a), Some(b)) => a.iter().any(|m| b.contains(m)),
                }
            }) else {
                continue;
            };
            ctx.error(
                spans[i].clone(),
                format!("routes[{}]", r.name),
                format!(
                    "matches the same host, path and method as route `{}` ({} {}{})",
                    routes[j].name,
                    r.host
                        .as_ref()
                        .map_or("any host".to_owned(), ToString::to_string),
                    r.path.raw,
                    method_list(&r.methods),
                ),
            );
        }
    }
}

fn method_list(methods: &Option<Vec<Method>>) -> String {
    match methods {
        None => String::new(),
        Some(m) => format!(
            " [{}]",
            m.iter().map(Method::as_str).collect::<Vec<_>>().join(", ")
        ),
    }
}
