//! Header names, values and edits as routes.toml writes them.

use http::{HeaderName, HeaderValue};

use super::decode::{Ctx, Obj, Spanned};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeaderEdits {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderEdits {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }
}

pub(super) fn header_pairs(
    ctx: &mut Ctx<'_>,
    obj: &mut Obj<'_>,
    key: &'static str,
) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::new();
    for (name, value) in obj.string_map(ctx, key).unwrap_or_default() {
        let path = format!("{}.{}", obj.key_path(key), name.value);
        let Some(name) = header_name(ctx, &name, &path) else {
            continue;
        };
        match HeaderValue::from_str(&value.value) {
            Ok(v) => out.push((name, v)),
            Err(_) => ctx.error(
                value.span,
                path,
                "not a valid header value (control characters?)",
            ),
        }
    }
    out
}

pub(super) fn header_name(
    ctx: &mut Ctx<'_>,
    name: &Spanned<String>,
    path: &str,
) -> Option<HeaderName> {
    match HeaderName::from_bytes(name.value.as_bytes()) {
        Ok(n) => Some(n),
        Err(_) => {
            ctx.error(
                name.span.clone(),
                path,
                format!("`{}` is not a valid header name", name.value),
            );
            None
        }
    }
}

pub(super) fn header_edits(
    ctx: &mut Ctx<'_>,
    parent: &mut Obj<'_>,
    key: &'static str,
) -> HeaderEdits {
    let Some(mut obj) = parent.table(ctx, key) else {
        return HeaderEdits::default();
    };
    let set = header_pairs(ctx, &mut obj, "set");
    let path = obj.key_path("remove");
    let remove = obj
        .strings(ctx, "remove")
        .unwrap_or_default()
        .iter()
        .filter_map(|n| header_name(ctx, n, &path))
        .collect();
    obj.finish(ctx);
    HeaderEdits { set, remove }
}

/// A list of header names, or `(true, [])` for `["*"]`.
pub(super) fn header_list(
    ctx: &mut Ctx<'_>,
    obj: &mut Obj<'_>,
    key: &'static str,
) -> (bool, Vec<HeaderName>) {
    let path = obj.key_path(key);
    let Some(list) = obj.strings(ctx, key) else {
        return (false, Vec::new());
    };
    if list.iter().any(|h| h.value == "*") {
        return (true, Vec::new());
    }
    (
        false,
        list.iter()
            .filter_map(|h| header_name(ctx, h, &path))
            .collect(),
    )
}
