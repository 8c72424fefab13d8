//! A span-aware reader over a parsed TOML document.
//!
//! serde derive stops at the first error and loses positions inside nested
//! values, so routes.toml is read by hand: every accessor records what it
//! consumed, every problem is collected with its byte span, and `finish`
//! reports the keys nobody asked for (typos must not pass silently).

use std::ops::Range;
use std::time::Duration;

use toml_edit::{Item, TableLike, Value};

use super::error::{ConfigError, Diagnostics};

/// Reads `${VAR}` from the process environment, or from a map in tests.
pub(crate) type EnvLookup<'e> = &'e dyn Fn(&str) -> Option<String>;

/// A string value with where it stood in the file.
#[derive(Debug, Clone)]
pub(crate) struct Spanned<T> {
    pub(crate) value: T,
    pub(crate) span: Option<Range<usize>>,
}

/// The state shared by one decoding pass: diagnostics and the environment.
pub(crate) struct Ctx<'e> {
    pub(crate) diag: Diagnostics,
    env: EnvLookup<'e>,
}

impl<'e> Ctx<'e> {
    pub(crate) fn new(diag: Diagnostics, env: EnvLookup<'e>) -> Self {
        Self { diag, env }
    }

    pub(crate) fn error(
        &mut self,
        span: Option<Range<usize>>,
        key: impl Into<String>,
        message: impl std::fmt::Display,
    ) {
        self.diag.push(span, key.into(), message.to_string());
    }

    pub(crate) fn env(&self, name: &str) -> Option<String> {
        (self.env)(name)
    }

    pub(crate) fn into_errors(self) -> Vec<ConfigError> {
        self.diag.into_errors()
    }

    /// Replaces every `${VAR}` with the variable's value; `$${` stays a literal `${`.
    fn interpolate(&mut self, raw: &str, span: Option<Range<usize>>, key: &str) -> String {
        if !raw.contains('$') {
            return raw.to_owned();
        }
        let mut out = String::with_capacity(raw.len());
        let mut rest = raw;
        while let Some(at) = rest.find('$') {
            out.push_str(&rest[..at]);
            let tail = &rest[at..];
            if let Some(after) = tail.strip_prefix("$${") {
                out.push_str("${");
                rest = after;
            } else if let Some(after) = tail.strip_prefix("${") {
                let Some(end) = after.find('}') else {
                    self.error(
                        span.clone(),
                        key,
                        "unterminated `${` (write `$${` for a literal)",
                    );
                    return out;
                };
                let name = &after[..end];
                let valid = !name.is_empty()
                    && !name.starts_with(|c: char| c.is_ascii_digit())
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid {
                    self.error(
                        span.clone(),
                        key,
                        format!("`${{{name}}}` is not a valid environment variable name"),
                    );
                } else {
                    match (self.env)(name) {
                        Some(value) => out.push_str(&value),
                        None => self.error(
                            span.clone(),
                            key,
                            format!("environment variable {name} is not set"),
                        ),
                    }
                }
                rest = &after[end + 1..];
            } else {
                out.push('$');
                rest = &tail[1..];
            }
        }
        out.push_str(rest);
        out
    }
}

/// Where an item is. An implicit table (`[a.b]` with no `[a]`) has no span
/// of its own: then where its first entry is, so every error has a line.
pub(super) fn span_of(item: &Item) -> Option<Range<usize>> {
    if let Some(span) = item.span() {
        return Some(span);
    }
    if let Some(tables) = item.as_array_of_tables() {
        return tables.iter().find_map(|t| t.span());
    }
    let table = item.as_table_like()?;
    table.iter().find_map(|(key, child)| {
        let key_span = table.get_key_value(key).and_then(|(k, _)| k.span());
        key_span.or_else(|| span_of(child))
    })
}

/// One TOML table (standard or inline) being read. Keys are marked as used
/// when asked for; the rest are reported by [`Obj::finish`].
pub(crate) struct Obj<'a> {
    table: &'a dyn TableLike,
    path: String,
    span: Option<Range<usize>>,
    used: Vec<&'static str>,
}

impl<'a> Obj<'a> {
    /// Reads `item` as a table; reports and returns `None` when it is not one.
    pub(crate) fn from_item(ctx: &mut Ctx<'_>, item: &'a Item, path: String) -> Option<Self> {
        match item.as_table_like() {
            Some(table) => Some(Self {
                table,
                path,
                span: span_of(item),
                used: Vec::new(),
            }),
            None => {
                ctx.error(span_of(item), path, "expected a table");
                None
            }
        }
    }

    pub(crate) fn from_value(ctx: &mut Ctx<'_>, value: &'a Value, path: String) -> Option<Self> {
        match value.as_inline_table() {
            Some(table) => Some(Self {
                table,
                path,
                span: value.span(),
                used: Vec::new(),
            }),
            None => {
                ctx.error(value.span(), path, "expected a table");
                None
            }
        }
    }

    pub(crate) fn path(&self) -> &str {
        &self.path
    }

    pub(crate) fn span(&self) -> Option<Range<usize>> {
        self.span.clone()
    }

    pub(crate) fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// The raw item under `key`, marked as used.
    pub(crate) fn item(&mut self, key: &'static str) -> Option<&'a Item> {
        self.used.push(key);
        self.table.get(key).filter(|item| !item.is_none())
    }

    /// Span of the key itself (for errors about the key's presence).
    pub(crate) fn key_span(&self, key: &str) -> Option<Range<usize>> {
        self.table
            .get_key_value(key)
            .and_then(|(k, item)| k.span().or_else(|| span_of(item)))
    }

    pub(crate) fn has(&self, key: &str) -> bool {
        self.table.contains_key(key)
    }

    pub(crate) fn string(
        &mut self,
        ctx: &mut Ctx<'_>,
        key: &'static str,
    ) -> Option<Spanned<String>> {
        let item = self.item(key)?;
        let path = self.key_path(key);
        string_of(ctx, item.as_value(), span_of(item), &path)
    }

    pub(crate) fn bool(&mut self, ctx: &mut Ctx<'_>, key: &'static str) -> Option<bool> {
        let item = self.item(key)?;
        match item.as_bool() {
            Some(b) => Some(b),
            None => {
                ctx.error(span_of(item), self.key_path(key), "expected true or false");
                None
            }
        }
    }

    /// A non-negative integer that fits `max`.
    pub(crate) fn uint(&mut self, ctx: &mut Ctx<'_>, key: &'static str, max: u64) -> Option<u64> {
        let item = self.item(key)?;
        match item.as_integer() {
            Some(n) if n >= 0 && (n as u64) <= max => Some(n as u64),
            Some(_) => {
                ctx.error(
                    span_of(item),
                    self.key_path(key),
                    format!("expected an integer from 0 to {max}"),
                );
                None
            }
            None => {
                ctx.error(span_of(item), self.key_path(key), "expected an integer");
                None
            }
        }
    }

    /// A duration written as a string: "250ms", "5s", "1m".
    pub(crate) fn duration(&mut self, ctx: &mut Ctx<'_>, key: &'static str) -> Option<Duration> {
        let s = self.string(ctx, key)?;
        match humantime::parse_duration(s.value.trim()) {
            Ok(d) => Some(d),
            Err(e) => {
                ctx.error(
                    s.span,
                    self.key_path(key),
                    format!(
                        "`{}` is not a duration ({e}); write e.g. \"250ms\", \"5s\", \"1m\"",
                        s.value
                    ),
                );
                None
            }
        }
    }

    /// A duration that must be longer than zero (zero is reported and dropped).
    pub(crate) fn positive_duration(
        &mut self,
        ctx: &mut Ctx<'_>,
        key: &'static str,
    ) -> Option<Duration> {
        let d = self.duration(ctx, key)?;
        if d.is_zero() {
            ctx.error(
                self.key_span(key),
                self.key_path(key),
                "must be longer than zero",
            );
            return None;
        }
        Some(d)
    }

    /// A size: an integer number of bytes, or a string such as "10MiB".
    pub(crate) fn size(&mut self, ctx: &mut Ctx<'_>, key: &'static str) -> Option<u64> {
        let item = self.item(key)?;
        let path = self.key_path(key);
        if let Some(n) = item.as_integer() {
            if n < 0 {
                ctx.error(span_of(item), path, "a size cannot be negative");
                return None;
            }
            return Some(n as u64);
        }
        let s = string_of(ctx, item.as_value(), span_of(item), &path)?;
        match parse_size(&s.value) {
            Some(n) => Some(n),
            None => {
                ctx.error(
                    s.span,
                    path,
                    format!(
                        "`{}` is not a size; write e.g. \"64KiB\", \"10MiB\" or a number of bytes",
                        s.value
                    ),
                );
                None
            }
        }
    }

    pub(crate) fn strings(
        &mut self,
        ctx: &mut Ctx<'_>,
        key: &'static str,
    ) -> Option<Vec<Spanned<String>>> {
        let item = self.item(key)?;
        let path = self.key_path(key);
        let Some(array) = item.as_array() else {
            ctx.error(span_of(item), path, "expected an array of strings");
            return None;
        };
        let mut out = Vec::with_capacity(array.len());
        for (i, v) in array.iter().enumerate() {
            if let Some(s) = string_of(ctx, Some(v), v.span(), &format!("{path}[{i}]")) {
                out.push(s);
            }
        }
        Some(out)
    }

    /// A table of string values, e.g. `headers = { "x-key" = "v" }`.
    pub(crate) fn string_map(
        &mut self,
        ctx: &mut Ctx<'_>,
        key: &'static str,
    ) -> Option<Vec<(Spanned<String>, Spanned<String>)>> {
        let item = self.item(key)?;
        let obj = Obj::from_item(ctx, item, self.key_path(key))?;
        let mut out = Vec::new();
        for (k, v) in obj.table.iter() {
            let kspan = obj.table.get_key_value(k).and_then(|(key, _)| key.span());
            let path = obj.key_path(k);
            if let Some(value) = string_of(ctx, v.as_value(), span_of(v), &path) {
                out.push((
                    Spanned {
                        value: k.to_owned(),
                        span: kspan,
                    },
                    value,
                ));
            }
        }
        Some(out)
    }

    pub(crate) fn table(&mut self, ctx: &mut Ctx<'_>, key: &'static str) -> Option<Obj<'a>> {
        let item = self.item(key)?;
        Obj::from_item(ctx, item, self.key_path(key))
    }

    /// Every entry of a table of named tables (`[backends.NAME]`), in file order.
    pub(crate) fn named_tables(
        &mut self,
        ctx: &mut Ctx<'_>,
        key: &'static str,
    ) -> Vec<(Spanned<String>, Obj<'a>)> {
        let Some(outer) = self.table(ctx, key) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (name, item) in outer.table.iter() {
            let span = outer.table.get_key_value(name).and_then(|(k, _)| k.span());
            if let Some(obj) = Obj::from_item(ctx, item, format!("{key}.{name}")) {
                out.push((
                    Spanned {
                        value: name.to_owned(),
                        span,
                    },
                    obj,
                ));
            }
        }
        out
    }

    /// `[[key]]` or `key = [{..}, {..}]`: every element as a table.
    pub(crate) fn table_array(&mut self, ctx: &mut Ctx<'_>, key: &'static str) -> Vec<Obj<'a>> {
        let Some(item) = self.item(key) else {
            return Vec::new();
        };
        let path = self.key_path(key);
        if let Some(aot) = item.as_array_of_tables() {
            return aot
                .iter()
                .enumerate()
                .map(|(i, t)| Obj {
                    table: t,
                    path: format!("{path}[{i}]"),
                    span: t.span(),
                    used: Vec::new(),
                })
                .collect();
        }
        if let Some(array) = item.as_array() {
            return array
                .iter()
                .enumerate()
                .filter_map(|(i, v)| Obj::from_value(ctx, v, format!("{path}[{i}]")))
                .collect();
        }
        ctx.error(span_of(item), path, "expected an array of tables");
        Vec::new()
    }

    /// Renames this table's path once its name is known (`routes[2]` -> `routes[get-user]`).
    pub(crate) fn rename(&mut self, path: String) {
        self.path = path;
    }

    /// Reports every key of this table that no accessor asked for.
    pub(crate) fn finish(self, ctx: &mut Ctx<'_>) {
        for (key, item) in self.table.iter() {
            if !self.used.contains(&key) {
                let span = self
                    .table
                    .get_key_value(key)
                    .and_then(|(k, _)| k.span())
                    .or_else(|| span_of(item));
                ctx.error(span, self.key_path(key), "unknown key");
            }
        }
    }

    /// Marks keys as handled elsewhere (or deliberately unsupported).
    pub(crate) fn mark(&mut self, key: &'static str) {
        self.used.push(key);
    }
}

fn string_of(
    ctx: &mut Ctx<'_>,
    value: Option<&Value>,
    span: Option<Range<usize>>,
    path: &str,
) -> Option<Spanned<String>> {
    match value.and_then(Value::as_str) {
        Some(raw) => {
            let value = ctx.interpolate(raw, span.clone(), path);
            Some(Spanned { value, span })
        }
        None => {
            ctx.error(span, path, "expected a string");
            None
        }
    }
}

/// "10MiB", "64 KiB", "1mb", "512" -> bytes. Binary (KiB) and decimal (KB) units.
pub(crate) fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn an_implicit_table_in_the_wrong_shape_is_refused_with_a_position() {
        // Found by fuzz/config: `[schedules.delivery]` alone makes `schedules` a
        // table with no span of its own, and the error had no line.
        let text = "[server]\nlisten = \"127.0.0.1:0\"\n\n[schedules.delivery]\nattempts = 3\n";
        let errors = crate::config::Config::parse(text, "r.toml", &|_| None).expect_err("refused");
        let e = &errors.0[0];
        assert_eq!((e.line, e.key.as_str()), (4, "schedules"), "{errors}");
        assert!(e.message.contains("array of tables"), "{errors}");
    }

    #[test]
    fn a_dotted_key_where_a_value_belongs_is_refused_with_a_position() {
        // Found by fuzz/config: `cron.0.1 = ".."` makes `cron` a dotted table, again spanless.
        let text = "[backends.b]\nurls = [\"http://127.0.0.1:9\"]\n[[schedules]]\nname = \"s\"\n\
                    cron.0.1 = \"0 0 * * *\"\nbackend = \"b\"\n";
        let errors = crate::config::Config::parse(text, "r.toml", &|_| None).expect_err("refused");
        let e = errors
            .0
            .iter()
            .find(|e| e.message == "expected a string")
            .expect("cron refused");
        assert_eq!(e.line, 5, "{errors}");
        assert!(errors.0.iter().all(|e| e.line > 0), "{errors}");
        assert_eq!(errors.0.len(), 1, "one error, not also `missing`: {errors}");
    }

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse_size("10MiB"), Some(10 << 20));
        assert_eq!(parse_size("64 KiB"), Some(64 << 10));
        assert_eq!(parse_size("1kb"), Some(1000));
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("ten"), None);
        assert_eq!(parse_size("1XB"), None);
        assert_eq!(parse_size("99999999999999999999GiB"), None);
    }
}
