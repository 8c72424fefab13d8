//! `[routes.aggregate]`: one request fanned out to several calls whose
//! dependencies come from their path templates.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use serde_json::Value;

use super::decode::{Ctx, Obj};
use super::path::{pieces, PatternError, Piece};
use super::{Backend, Param};

#[derive(Debug, Clone, PartialEq)]
pub struct Aggregate {
    /// Deadline for the whole answer.
    pub timeout: Duration,
    pub merge: Merge,
    /// Each call's answer is buffered up to this many bytes.
    pub max_call_body: u64,
    /// In config order, which is also the order `flat` merges in.
    pub calls: Vec<Call>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// Each call's JSON under its name.
    Object,
    /// Top-level fields of every object answer in one object; later calls win.
    Flat,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub name: Arc<str>,
    pub backend: Arc<Backend>,
    pub method: Method,
    pub path: CallPath,
    pub optional: bool,
    /// Used in place of a failed optional call's answer.
    pub fallback: Option<Value>,
    /// Top-level fields kept; `None` keeps all.
    pub select: Option<Vec<String>>,
    pub timeout: Option<Duration>,
    /// Indices of the calls whose answers the path needs.
    pub needs: Vec<usize>,
}

/// A call's path: literals and placeholders, each known to stand in the path
/// or in the query (where it is percent-encoded as a component).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallPath {
    pub raw: String,
    pub parts: Vec<CallPart>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallPart {
    Literal(String),
    /// A route path param, by index.
    Param(usize),
    /// `{query.NAME}`: a query parameter of the request (empty when absent).
    Query(String),
    /// `{call.a.b}`: a field of an earlier call's JSON answer.
    Field {
        call: usize,
        path: Vec<String>,
    },
}

pub(super) fn aggregate(
    ctx: &mut Ctx<'_>,
    mut obj: Obj<'_>,
    params: &[Param],
    backends: &[Arc<Backend>],
    default_timeout: Duration,
    max_body: u64,
) -> Option<Aggregate> {
    let timeout = obj
        .positive_duration(ctx, "timeout")
        .unwrap_or(default_timeout);
    let merge = match obj.string(ctx, "merge") {
        None => Merge::Object,
        Some(m) if m.value == "object" => Merge::Object,
        Some(m) if m.value == "flat" => Merge::Flat,
        Some(m) => {
            ctx.error(
                m.span,
                obj.key_path("merge"),
                format!("`{}`: expected \"object\" or \"flat\"", m.value),
            );
            Merge::Object
        }
    };
    let max_call_body = obj
        .size(ctx, "max_call_body")
        .unwrap_or((1 << 20).min(max_body));
    let tables = obj.table_array(ctx, "calls");
    if tables.is_empty() {
        ctx.error(
            obj.span(),
            obj.key_path("calls"),
            "missing: at least one [[routes.aggregate.calls]]",
        );
    }
    // Names first: a template may name any call, in any order.
    let mut names: Vec<String> = Vec::new();
    let mut calls_raw = Vec::new();
    for mut c in tables {
        let name = c.string(ctx, "name");
        match &name {
            Some(n) if names.contains(&n.value) => {
                ctx.error(
                    n.span.clone(),
                    c.key_path("name"),
                    format!("two calls are named `{}`", n.value),
                );
            }
            Some(n) if n.value == "query" || params.iter().any(|p| p.name == n.value) => {
                ctx.error(
                    n.span.clone(),
                    c.key_path("name"),
                    format!(
                        "`{}` is a route param or `query`; name the call otherwise",
                        n.value
                    ),
                );
            }
            Some(n)
                if n.value.is_empty()
                    || n.value
                        .contains(|ch: char| ch == '.' || ch == ',' || ch.is_whitespace()) =>
            {
                ctx.error(
                    n.span.clone(),
                    c.key_path("name"),
                    "must be non-empty, without dots, commas or spaces",
                );
            }
            Some(n) => {
                c.rename(format!("{}.calls[{}]", obj.path(), n.value));
                names.push(n.value.clone());
            }
            None => ctx.error(
                c.span(),
                c.key_path("name"),
                "missing: every call needs a name",
            ),
        }
        calls_raw.push((name.map(|n| n.value), c));
    }
    let mut calls = Vec::new();
    let mut ok = true;
    for (name, mut c) in calls_raw {
        let backend = match c.string(ctx, "backend") {
            Some(b) => match backends.iter().find(|x| *x.name == b.value) {
                Some(found) => Some(found.clone()),
                None => {
                    ctx.error(
                        b.span,
                        c.key_path("backend"),
                        format!("unknown backend `{}`", b.value),
                    );
                    None
                }
            },
            None => {
                ctx.error(
                    c.span(),
                    c.key_path("backend"),
                    "missing: the backend this call goes to",
                );
                None
            }
        };
        let path = match c.string(ctx, "path") {
            Some(p) => match parse_path(&p.value, params, &names) {
                Ok(path) => Some(path),
                Err(why) => {
                    ctx.error(p.span, c.key_path("path"), why);
                    None
                }
            },
            None => {
                ctx.error(
                    c.span(),
                    c.key_path("path"),
                    "missing: the call's path, e.g. \"/users/{id}\"",
                );
                None
            }
        };
        let method = match c.string(ctx, "method") {
            None => Some(Method::GET),
            Some(m) => match Method::from_bytes(m.value.to_ascii_uppercase().as_bytes()) {
                Ok(method) => Some(method),
                Err(_) => {
                    ctx.error(
                        m.span,
                        c.key_path("method"),
                        format!("`{}` is not an HTTP method", m.value),
                    );
                    None
                }
            },
        };
        let optional = c.bool(ctx, "optional").unwrap_or(false);
        let fallback = c.item("fallback").and_then(|item| {
            match super::json::item_json(item, &mut Vec::new(), &super::json::plain) {
                Some(v) => Some(v),
                None => {
                    ctx.error(
                        super::decode::span_of(item),
                        c.key_path("fallback"),
                        "expected a value that JSON can hold",
                    );
                    None
                }
            }
        });
        if fallback.is_some() && !optional {
            ctx.error(
                c.key_span("fallback"),
                c.key_path("fallback"),
                "a fallback stands in for an optional call: set `optional = true`",
            );
        }
        let select = c
            .strings(ctx, "select")
            .map(|list| list.into_iter().map(|s| s.value).collect());
        let timeout = c.positive_duration(ctx, "timeout");
        c.finish(ctx);
        match (name, backend, path, method) {
            (Some(name), Some(backend), Some(path), Some(method)) => {
                let mut needs: Vec<usize> = path
                    .parts
                    .iter()
                    .filter_map(|p| match p {
                        CallPart::Field { call, .. } => Some(*call),
                        _ => None,
                    })
                    .collect();
                needs.sort_unstable();
                needs.dedup();
                calls.push(Call {
                    name: name.into(),
                    backend,
                    method,
                    path,
                    optional,
                    fallback,
                    select,
                    timeout,
                    needs,
                });
            }
            _ => ok = false,
        }
    }
    if ok {
        if let Some(cycle) = find_cycle(&calls) {
            ctx.error(
                obj.key_span("calls"),
                obj.key_path("calls"),
                format!("the calls form a cycle: {cycle}"),
            );
            ok = false;
        }
    }
    obj.finish(ctx);
    ok.then_some(Aggregate {
        timeout,
        merge,
        max_call_body,
        calls,
    })
}

/// Why an aggregate call's path is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CallPathError {
    #[error("must start with `/`")]
    NoLeadingSlash,
    #[error(transparent)]
    Pattern(#[from] PatternError),
    #[error("`{{{0}}}` is not a placeholder")]
    NotAPlaceholder(String),
    #[error("`{{{inner}}}`: the route param `{root}` has no fields")]
    ParamField { inner: String, root: String },
    #[error("`{{{0}}}`: write `{{query.NAME}}`")]
    Query(String),
    #[error("`{{{inner}}}`: name a field of `{root}`, e.g. `{{{root}.id}}`")]
    WholeCall { inner: String, root: String },
    #[error("the placeholder `{{{inner}}}` has no source (known: {})", known.join(", "))]
    NoSource { inner: String, known: Vec<String> },
}

/// `/recs/{user.segment}?limit={query.n}`: placeholders name a route param,
/// `query.NAME`, or a field of a call.
pub(crate) fn parse_path(
    raw: &str,
    params: &[Param],
    calls: &[String],
) -> Result<CallPath, CallPathError> {
    if !raw.starts_with('/') {
        return Err(CallPathError::NoLeadingSlash);
    }
    if crate::normalize::has_dot_segment(raw) {
        return Err(PatternError::DotInTarget.into());
    }
    let mut parts = Vec::new();
    for piece in pieces(raw)? {
        let inner = match piece {
            Piece::Literal(l) => {
                parts.push(CallPart::Literal(l.to_owned()));
                continue;
            }
            Piece::Placeholder(inner) => inner,
        };
        let mut segments = inner.split('.');
        let root = segments.next().unwrap_or_default();
        let fields: Vec<String> = segments.map(str::to_owned).collect();
        if fields.iter().any(String::is_empty) || root.is_empty() {
            return Err(CallPathError::NotAPlaceholder(inner.to_owned()));
        }
        let part = if let Some(i) = params.iter().position(|p| p.name == root) {
            if !fields.is_empty() {
                return Err(CallPathError::ParamField {
                    inner: inner.to_owned(),
                    root: root.to_owned(),
                });
            }
            CallPart::Param(i)
        } else if root == "query" {
            match fields.as_slice() {
                [name] => CallPart::Query(name.clone()),
                _ => return Err(CallPathError::Query(inner.to_owned())),
            }
        } else if let Some(call) = calls.iter().position(|c| c == root) {
            if fields.is_empty() {
                return Err(CallPathError::WholeCall {
                    inner: inner.to_owned(),
                    root: root.to_owned(),
                });
            }
            CallPart::Field { call, path: fields }
        } else {
            let known: Vec<String> = params
                .iter()
                .map(|p| format!("{{{}}}", p.name))
                .chain(["{query.NAME}".to_owned()])
                .chain(calls.iter().map(|c| format!("{{{c}.FIELD}}")))
                .collect();
            return Err(CallPathError::NoSource {
                inner: inner.to_owned(),
                known,
            });
        };
        parts.push(part);
    }
    Ok(CallPath {
        raw: raw.to_owned(),
        parts,
    })
}

/// A cycle among the calls' dependencies, as `a -> b -> a`.
fn find_cycle(calls: &[Call]) -> Option<String> {
    // 0 unvisited, 1 on the current path, 2 done.
    fn visit(i: usize, calls: &[Call], mark: &mut [u8], stack: &mut Vec<usize>) -> Option<String> {
        mark[i] = 1;
        stack.push(i);
        for &j in &calls[i].needs {
            if mark[j] == 1 {
                let from = stack.iter().position(|&k| k == j).unwrap_or(0);
                let mut names: Vec<&str> = stack[from..].iter().map(|&k| &*calls[k].name).collect();
                names.push(&calls[j].name);
                return Some(names.join(" -> "));
            }
            if mark[j] == 0 {
                if let Some(c) = visit(j, calls, mark, stack) {
                    return Some(c);
                }
            }
        }
        stack.pop();
        mark[i] = 2;
        None
    }
    let mut mark = vec![0u8; calls.len()];
    let mut stack = Vec::new();
    (0..calls.len()).find_map(|i| {
        if mark[i] == 0 {
            visit(i, calls, &mut mark, &mut stack)
        } else {
            None
        }
    })
}
