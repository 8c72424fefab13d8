//! Admin edits as edits of the routes.toml document.
//!
//! The running config's text is the source of truth. A PUT turns its JSON
//! body into a TOML table and splices it in by name (keeping the position,
//! comments and layout of everything else); the result is then validated as
//! a whole file by the same decoder as a file reload. Reads turn the
//! document's tables into JSON with secrets hidden. Pure: no IO.

use serde_json::{Map, Value as Json};
use toml_edit::{Array, ArrayOfTables, DocumentMut, InlineTable, Item, Table, Value};

use crate::config::json;

/// Shown instead of a secret; sent back in a PUT, it keeps the stored value.
pub(crate) const HIDDEN: &str = "<hidden>";

/// Keys a GET answer adds (state, not config); a PUT ignores them.
pub(crate) const READ_ONLY: [&str; 6] = [
    "status",
    "paused",
    "next_fire",
    "last_fire",
    "last_outcome",
    "last_job",
];

/// The named collections of routes.toml the admin API edits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Routes,
    Backends,
    Auth,
    RateLimits,
    Topics,
    Subscriptions,
    Schedules,
}

impl Kind {
    pub(crate) fn key(self) -> &'static str {
        match self {
            Self::Routes => "routes",
            Self::Backends => "backends",
            Self::Auth => "auth",
            Self::RateLimits => "rate_limits",
            Self::Topics => "topics",
            Self::Subscriptions => "subscriptions",
            Self::Schedules => "schedules",
        }
    }

    /// `[[routes]]`-style: an array of tables, each with its `name`; the
    /// others are tables of named tables (`[backends.NAME]`).
    fn is_array(self) -> bool {
        matches!(self, Self::Routes | Self::Subscriptions | Self::Schedules)
    }
}

/// Why an edit cannot be made (before validation of the result).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum EditError {
    #[error("the body must be a JSON object")]
    NotAnObject,
    #[error("`name` is `{body}` but the path names `{path}`")]
    NameMismatch { body: String, path: String },
    #[error("`{0}` is null; leave a key out instead")]
    Null(String),
    #[error("`{0}` is hidden but has no stored value to keep")]
    HiddenWithoutValue(String),
    #[error("no {kind} named `{name}`")]
    NotFound { kind: &'static str, name: String },
}

/// The document of the running config.
#[derive(Clone)]
pub(crate) struct Doc(DocumentMut);

impl Doc {
    pub(crate) fn parse(text: &str) -> Option<Self> {
        text.parse::<DocumentMut>().ok().map(Self)
    }

    pub(crate) fn text(&self) -> String {
        self.0.to_string()
    }

    /// The whole config as JSON, secrets hidden.
    pub(crate) fn to_json(&self) -> Json {
        table_json(self.0.as_table(), &mut Vec::new())
    }

    pub(crate) fn list(&self, kind: Kind) -> Vec<Json> {
        match kind {
            k if k.is_array() => self
                .array(k)
                .map(|a| {
                    a.iter()
                        .map(|t| table_json(t, &mut vec![k.key().into(), "*".into()]))
                        .collect()
                })
                .unwrap_or_default(),
            _ => self
                .named(kind)
                .map(|t| {
                    t.iter()
                        .filter_map(|(name, item)| self.named_json(kind, name, item))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    pub(crate) fn get(&self, kind: Kind, name: &str) -> Option<Json> {
        match kind {
            k if k.is_array() => {
                let tables = self.array(k)?;
                let t = tables.iter().find(|t| route_name(t) == Some(name))?;
                Some(table_json(t, &mut vec![k.key().into(), "*".into()]))
            }
            _ => {
                let item = self.named(kind)?.get(name)?;
                self.named_json(kind, name, item)
            }
        }
    }

    /// Creates or replaces one entity from its JSON; returns whether it is new.
    pub(crate) fn put(&mut self, kind: Kind, name: &str, body: Json) -> Result<bool, EditError> {
        let Json::Object(mut fields) = body else {
            return Err(EditError::NotAnObject);
        };
        match fields.get("name") {
            Some(Json::String(n)) if n != name => {
                return Err(EditError::NameMismatch {
                    body: n.clone(),
                    path: name.to_owned(),
                })
            }
            Some(Json::String(_)) | None => {}
            Some(_) => {
                return Err(EditError::NameMismatch {
                    body: fields["name"].to_string(),
                    path: name.to_owned(),
                })
            }
        }
        // Read-only parts of a GET answer are ignored on input. `shift_remove`:
        // `remove` swaps the last key into the hole, reordering the file.
        for read_only in READ_ONLY {
            fields.shift_remove(read_only);
        }
        let existing = self.get_raw(kind, name);
        let mut table = Table::new();
        let mut path = vec![kind.key().to_owned(), "*".to_owned()];
        if kind.is_array() {
            table.insert("name", Item::Value(Value::from(name)));
        }
        fields.shift_remove("name");
        for (key, value) in &fields {
            path.push(key.clone());
            let v = json_value(value, &mut path, existing.as_ref())?;
            path.pop();
            table.insert(key, Item::Value(v));
        }
        let created = existing.is_none();
        match kind {
            k if k.is_array() => {
                let routes = self
                    .0
                    .entry(k.key())
                    .or_insert(Item::ArrayOfTables(ArrayOfTables::new()))
                    .as_array_of_tables_mut()
                    .ok_or(EditError::NotAnObject)?;
                let found = routes.iter().position(|t| route_name(t) == Some(name));
                match found {
                    Some(i) => {
                        if let Some(t) = routes.get_mut(i) {
                            replace_contents(t, table);
                        }
                    }
                    None => routes.push(table),
                }
            }
            _ => {
                let outer = self.0.entry(kind.key()).or_insert_with(|| {
                    let mut t = Table::new();
                    t.set_implicit(true);
                    Item::Table(t)
                });
                let Some(outer) = outer.as_table_mut() else {
                    return Err(EditError::NotAnObject);
                };
                match outer.get_mut(name).and_then(Item::as_table_mut) {
                    Some(t) => replace_contents(t, table),
                    None => {
                        outer.insert(name, Item::Table(table));
                    }
                }
            }
        }
        Ok(created)
    }

    pub(crate) fn delete(&mut self, kind: Kind, name: &str) -> Result<(), EditError> {
        let not_found = || EditError::NotFound {
            kind: kind.key(),
            name: name.to_owned(),
        };
        match kind {
            k if k.is_array() => {
                let routes = self
                    .0
                    .get_mut(k.key())
                    .and_then(Item::as_array_of_tables_mut)
                    .ok_or_else(not_found)?;
                let i = routes
                    .iter()
                    .position(|t| route_name(t) == Some(name))
                    .ok_or_else(not_found)?;
                routes.remove(i);
            }
            _ => {
                let outer = self
                    .0
                    .get_mut(kind.key())
                    .and_then(Item::as_table_like_mut)
                    .ok_or_else(not_found)?;
                outer.remove(name).ok_or_else(not_found)?;
            }
        }
        Ok(())
    }

    fn array(&self, kind: Kind) -> Option<&ArrayOfTables> {
        self.0.get(kind.key()).and_then(Item::as_array_of_tables)
    }

    fn named(&self, kind: Kind) -> Option<&dyn toml_edit::TableLike> {
        self.0.get(kind.key()).and_then(Item::as_table_like)
    }

    fn named_json(&self, kind: Kind, name: &str, item: &Item) -> Option<Json> {
        let table = item.as_table_like()?;
        let mut path = vec![kind.key().to_owned(), "*".to_owned()];
        let mut out = Map::new();
        out.insert("name".into(), Json::from(name));
        for (k, v) in table.iter() {
            path.push(k.to_owned());
            out.insert(k.to_owned(), item_json(v, &mut path));
            path.pop();
        }
        Some(Json::Object(out))
    }

    /// The stored entity as raw JSON (secrets not hidden), to keep hidden values.
    fn get_raw(&self, kind: Kind, name: &str) -> Option<Json> {
        let item = match kind {
            k if k.is_array() => {
                return self
                    .array(k)?
                    .iter()
                    .find(|t| route_name(t) == Some(name))
                    .map(raw_table_json);
            }
            _ => self.named(kind)?.get(name)?,
        };
        item.as_table_like().map(|t| {
            Json::Object(
                t.iter()
                    .map(|(k, v)| (k.to_owned(), raw_item_json(v)))
                    .collect(),
            )
        })
    }
}

fn route_name(t: &Table) -> Option<&str> {
    t.get("name").and_then(Item::as_str)
}

/// Swaps a table's entries for new ones, keeping its header, comments and position.
fn replace_contents(target: &mut Table, new: Table) {
    target.clear();
    for (k, v) in new {
        target.insert(&k, v);
    }
}

/// Secrets live at these paths (`*` any one name): function keys in backend
/// headers, API-key hashes. A `${VAR}` reference is no secret and is shown.
fn is_secret(path: &[String]) -> bool {
    matches!(
        path.iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice(),
        ["backends", _, "headers", _]
            | ["auth", _, "keys", _, "sha256"]
            | ["auth", _, "secret"]
            | ["telemetry", "headers", _]
            | ["store", "url"]
    )
}

fn is_env_reference(s: &str) -> bool {
    s.starts_with("${") && s.ends_with('}') && s.matches("${").count() == 1
}

/// Shown JSON: secrets hidden (a running config holds no value JSON cannot).
fn table_json(t: &dyn toml_edit::TableLike, path: &mut Vec<String>) -> Json {
    json::table_json(t, path, &shown).unwrap_or(Json::Null)
}

fn item_json(item: &Item, path: &mut Vec<String>) -> Json {
    json::item_json(item, path, &shown).unwrap_or(Json::Null)
}

fn shown(path: &[String], s: &str) -> Json {
    if is_secret(path) && !is_env_reference(s) {
        Json::from(HIDDEN)
    } else {
        Json::from(s)
    }
}

fn raw_table_json(t: &Table) -> Json {
    Json::Object(
        t.iter()
            .map(|(k, v)| (k.to_owned(), raw_item_json(v)))
            .collect(),
    )
}

fn raw_item_json(item: &Item) -> Json {
    // The raw form differs from the shown one only in secrets; an empty path never is one.
    let mut path = vec!["raw".to_owned()];
    item_json(item, &mut path)
}

/// JSON to a TOML value. `existing` is the stored entity, for hidden secrets.
fn json_value(
    v: &Json,
    path: &mut Vec<String>,
    existing: Option<&Json>,
) -> Result<Value, EditError> {
    Ok(match v {
        Json::Null => return Err(EditError::Null(path[2..].join("."))),
        Json::Bool(b) => Value::from(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::from(i),
            None => Value::from(n.as_f64().unwrap_or_default()),
        },
        Json::String(s) if s == HIDDEN && is_secret(path) => {
            let mut stored = existing;
            for key in &path[2..] {
                stored = stored.and_then(|c| match c {
                    Json::Object(m) => m.get(key),
                    Json::Array(a) => key.parse::<usize>().ok().and_then(|i| a.get(i)),
                    _ => None,
                });
            }
            let stored = stored.and_then(Json::as_str);
            match stored {
                Some(s) => Value::from(s),
                None => return Err(EditError::HiddenWithoutValue(path[2..].join("."))),
            }
        }
        Json::String(s) => Value::from(s.as_str()),
        Json::Array(items) => {
            let mut a = Array::new();
            for (i, x) in items.iter().enumerate() {
                path.push(i.to_string());
                a.push(json_value(x, path, existing)?);
                path.pop();
            }
            Value::Array(a)
        }
        Json::Object(fields) => {
            let mut t = InlineTable::new();
            for (k, x) in fields {
                path.push(k.clone());
                t.insert(k, json_value(x, path, existing)?);
                path.pop();
            }
            Value::InlineTable(t)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const TEXT: &str = r#"# top comment
[backends.users]   # the users function
urls = ["http://127.0.0.1:9101"]
headers = { "x-key" = "literal-secret", "x-env" = "${ENV_KEY}" }

# routes below
[[routes]]
name = "a"
path = "/a"
backend = "users"

[[routes]]
name = "b"   # keep me
path = "/b"
backend = "users"
"#;

    #[test]
    fn reads_hide_secrets_but_show_env_references() {
        let d = Doc::parse(TEXT).expect("parses");
        let b = d.get(Kind::Backends, "users").expect("found");
        assert_eq!(b["name"], "users");
        assert_eq!(b["headers"]["x-key"], HIDDEN);
        assert_eq!(b["headers"]["x-env"], "${ENV_KEY}");
        assert_eq!(d.list(Kind::Routes).len(), 2);
        assert!(!d.to_json().to_string().contains("literal-secret"));
    }

    #[test]
    fn a_collectors_api_key_is_hidden_like_a_function_key() {
        let text = format!(
            "{TEXT}[telemetry]\notlp_endpoint = \"https://otel.example\"\nheaders = {{ \"x-api-key\" = \"collector-secret\" }}\n"
        );
        let d = Doc::parse(&text).expect("parses");
        let shown = d.to_json();
        assert_eq!(
            shown["telemetry"]["headers"]["x-api-key"], HIDDEN,
            "{shown}"
        );
        assert_eq!(shown["telemetry"]["otlp_endpoint"], "https://otel.example");
        assert!(!shown.to_string().contains("collector-secret"));
    }

    #[test]
    fn a_put_keeps_the_bodys_key_order_and_a_get_put_back_keeps_the_file() {
        // Found by fuzz/splice: taking `name` out swapped the last key into its place.
        let mut d = Doc::parse(TEXT).expect("parses");
        let body = json!({ "name": "c", "path": "/c", "backend": "users", "methods": ["GET"] });
        d.put(Kind::Routes, "c", body).expect("put");
        let text = d.text();
        let c = &text[text.find("name = \"c\"").expect("written")..];
        assert!(
            c.starts_with("name = \"c\"\npath = \"/c\"\nbackend = \"users\"\nmethods"),
            "{c}"
        );
        let shown = d.get(Kind::Routes, "c").expect("found");
        d.put(Kind::Routes, "c", shown).expect("put back");
        assert_eq!(d.text(), text);
    }

    #[test]
    fn a_get_answer_put_back_changes_nothing_and_keeps_hidden_values() {
        let mut d = Doc::parse(TEXT).expect("parses");
        let b = d.get(Kind::Backends, "users").expect("found");
        assert!(!d.put(Kind::Backends, "users", b).expect("put"));
        let r = d.get(Kind::Routes, "b").expect("found");
        assert!(!d.put(Kind::Routes, "b", r).expect("put"));
        let text = d.text();
        assert!(text.contains("literal-secret"), "{text}");
        assert!(
            text.contains("# top comment") && text.contains("# routes below"),
            "{text}"
        );
        assert!(
            text.contains("[backends.users]   # the users function"),
            "{text}"
        );
    }

    #[test]
    fn put_splices_by_name_and_delete_removes() {
        let mut d = Doc::parse(TEXT).expect("parses");
        let created = d
            .put(
                Kind::Routes,
                "c",
                json!({"path": "/c", "backend": "users", "methods": ["GET"]}),
            )
            .expect("put");
        assert!(created);
        d.put(
            Kind::Routes,
            "a",
            json!({"name": "a", "path": "/a2", "backend": "users"}),
        )
        .expect("put");
        let text = d.text();
        assert!(
            text.find("\"/a2\"") < text.find("\"/b\""),
            "a stays first:\n{text}"
        );
        assert!(text.contains("name = \"c\""));
        d.delete(Kind::Routes, "b").expect("delete");
        assert!(d.get(Kind::Routes, "b").is_none());
        assert_eq!(
            d.delete(Kind::Backends, "nope"),
            Err(EditError::NotFound {
                kind: "backends",
                name: "nope".into()
            })
        );
    }

    #[test]
    fn bad_bodies_are_refused() {
        let mut d = Doc::parse(TEXT).expect("parses");
        assert_eq!(
            d.put(Kind::Routes, "a", json!([1])),
            Err(EditError::NotAnObject)
        );
        assert!(matches!(
            d.put(Kind::Routes, "a", json!({"name": "z"})),
            Err(EditError::NameMismatch { .. })
        ));
        assert!(matches!(
            d.put(Kind::Routes, "a", json!({"path": null})),
            Err(EditError::Null(_))
        ));
        assert!(matches!(
            d.put(
                Kind::Backends,
                "new",
                json!({"urls": ["http://x"], "headers": {"k": HIDDEN}})
            ),
            Err(EditError::HiddenWithoutValue(_))
        ));
    }
}
