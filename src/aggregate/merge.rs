//! Pure JSON shaping for aggregates: `select` and the two merges.

use serde_json::{Map, Value};

use crate::config::Merge;

/// Keeps only `fields` of an object answer; other answers pass unchanged.
pub(crate) fn select(value: Value, fields: &[String]) -> Value {
    match value {
        Value::Object(mut map) => {
            let mut kept = Map::with_capacity(fields.len());
            for f in fields {
                if let Some(v) = map.remove(f) {
                    kept.insert(f.clone(), v);
                }
            }
            Value::Object(kept)
        }
        other => other,
    }
}

/// Merges the answers, given in config order (failed calls left out).
/// `Object`: each under its call's name. `Flat`: the top-level fields of
/// every object answer in one object, a later call's field replacing an
/// earlier one's; an answer that is not an object goes under its name.
pub(crate) fn merge(mode: Merge, answers: Vec<(&str, Value)>) -> Value {
    let mut out = Map::new();
    for (name, value) in answers {
        match (mode, value) {
            (Merge::Flat, Value::Object(fields)) => out.extend(fields),
            (_, value) => {
                out.insert(name.to_owned(), value);
            }
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn object_merge_nests_each_answer_under_its_name() {
        let v = merge(
            Merge::Object,
            vec![("a", json!({"x": 1})), ("b", json!([1, 2]))],
        );
        assert_eq!(v, json!({"a": {"x": 1}, "b": [1, 2]}));
    }

    #[test]
    fn flat_merge_lets_later_calls_win_in_config_order() {
        let v = merge(
            Merge::Flat,
            vec![
                ("a", json!({"x": 1, "y": 1})),
                ("b", json!({"y": 2})),
                ("c", json!("s")),
            ],
        );
        assert_eq!(v, json!({"x": 1, "y": 2, "c": "s"}));
    }

    #[test]
    fn select_keeps_listed_fields_of_objects_only() {
        let fields = vec!["items".to_owned(), "missing".to_owned()];
        assert_eq!(
            select(json!({"items": [1], "other": 2}), &fields),
            json!({"items": [1]})
        );
        assert_eq!(select(json!([1]), &fields), json!([1]));
    }
}
