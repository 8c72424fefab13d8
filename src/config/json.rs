//! TOML to JSON: one converter for aggregate fallbacks and the admin API's
//! reads. Pure.

use serde_json::{Map, Value as Json};
use toml_edit::{Item, TableLike, Value};

/// How string values are written: given the key path and the string. The
/// admin API hides secrets here; everything else takes strings as they are.
pub type Strings<'a> = &'a dyn Fn(&[String], &str) -> Json;

/// Takes every string as it is.
pub fn plain(_: &[String], s: &str) -> Json {
    Json::from(s)
}

/// `item` as JSON, with `path` its key path (array items by index). `None`
/// where JSON cannot hold a value: an empty item, a NaN or infinite float.
pub fn item_json(item: &Item, path: &mut Vec<String>, strings: Strings<'_>) -> Option<Json> {
    match item {
        Item::None => None,
        Item::Value(v) => value_json(v, path, strings),
        Item::Table(t) => table_json(t, path, strings),
        Item::ArrayOfTables(a) => a
            .iter()
            .enumerate()
            .map(|(i, t)| nested(path, i.to_string(), |path| table_json(t, path, strings)))
            .collect::<Option<_>>()
            .map(Json::Array),
    }
}

pub fn table_json(t: &dyn TableLike, path: &mut Vec<String>, strings: Strings<'_>) -> Option<Json> {
    let mut out = Map::new();
    for (k, v) in t.iter() {
        let v = nested(path, k.to_owned(), |path| item_json(v, path, strings))?;
        out.insert(k.to_owned(), v);
    }
    Some(Json::Object(out))
}

fn value_json(v: &Value, path: &mut Vec<String>, strings: Strings<'_>) -> Option<Json> {
    Some(match v {
        Value::String(s) => strings(path, s.value()),
        Value::Integer(i) => Json::from(*i.value()),
        Value::Float(f) => Json::Number(serde_json::Number::from_f64(*f.value())?),
        Value::Boolean(b) => Json::from(*b.value()),
        Value::Datetime(d) => Json::from(d.value().to_string()),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, x)| nested(path, i.to_string(), |path| value_json(x, path, strings)))
            .collect::<Option<_>>()
            .map(Json::Array)?,
        Value::InlineTable(t) => table_json(t, path, strings)?,
    })
}

fn nested<T>(path: &mut Vec<String>, key: String, f: impl FnOnce(&mut Vec<String>) -> T) -> T {
    path.push(key);
    let out = f(path);
    path.pop();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_arrays_and_inline_tables_become_json_and_strings_see_their_path() {
        let doc: toml_edit::DocumentMut =
            "a = 1\nb = [true, \"x\"]\n[t]\nc = { d = \"e\" }\n[[l]]\nf = 2.5\n"
                .parse()
                .expect("toml");
        let seen = std::cell::RefCell::new(Vec::new());
        let strings = |path: &[String], s: &str| {
            seen.borrow_mut().push(path.join("."));
            Json::from(s.to_uppercase())
        };
        let json = table_json(doc.as_table(), &mut Vec::new(), &strings).expect("json");
        assert_eq!(
            json,
            serde_json::json!({"a": 1, "b": [true, "X"], "t": {"c": {"d": "E"}}, "l": [{"f": 2.5}]})
        );
        assert_eq!(*seen.borrow(), ["b.1", "t.c.d"]);
        let nan: toml_edit::DocumentMut = "x = nan".parse().expect("toml");
        assert_eq!(table_json(nan.as_table(), &mut Vec::new(), &plain), None);
    }
}
