//! CloudEvents 1.0: the JSON event format and the HTTP binding's binary and
//! structured modes, read and written. Pure: no IO.
//!
//! Our own small codec rather than the SDK: the format is a flat object of
//! string-valued attributes plus `data`, and the SDK would bring a URL parser
//! with its Unicode tables and a date library to the gateway for checks we do
//! here in a few lines. The tests hold our output to the SDK's parser.

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value as Json};

pub(crate) const STRUCTURED: &str = "application/cloudevents+json";
pub(crate) const BATCH: &str = "application/cloudevents-batch+json";

/// Why an event is refused: always 400, naming the attribute.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum EventError {
    #[error("the required attribute `{0}` is missing or empty")]
    Missing(&'static str),
    #[error("`specversion` is `{0}`; only 1.0 is accepted")]
    SpecVersion(String),
    #[error("`{0}` is not a valid attribute name (a-z and 0-9, at most 20)")]
    Name(String),
    #[error("the attribute `{name}` is invalid: {why}")]
    Invalid { name: String, why: &'static str },
    #[error("the body is not a CloudEvent: {0}")]
    Body(String),
}

/// An event's data, as it arrived.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Data {
    None,
    /// `data` of a JSON event (or a JSON body in binary mode).
    Json(Json),
    Bytes(Bytes),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Event {
    /// Every context attribute, `specversion` first, with its value as a string.
    attrs: Vec<(String, String)>,
    pub(crate) data: Data,
}

impl Event {
    pub(crate) fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn id(&self) -> &str {
        self.attr("id").unwrap_or_default()
    }

    pub(crate) fn source(&self) -> &str {
        self.attr("source").unwrap_or_default()
    }

    /// A JSON event wrapping a plain JSON body (SPEC §8).
    pub(crate) fn wrap(id: String, source: String, ty: &str, data: Json) -> Self {
        Self {
            attrs: vec![
                ("specversion".into(), "1.0".into()),
                ("id".into(), id),
                ("source".into(), source),
                ("type".into(), ty.to_owned()),
                ("datacontenttype".into(), "application/json".into()),
            ],
            data: Data::Json(data),
        }
    }

    /// Binary mode: `ce-*` headers (percent-decoded), `content-type` as
    /// `datacontenttype`, the body as the data.
    pub(crate) fn from_binary(headers: &HeaderMap, body: Bytes) -> Result<Self, EventError> {
        let mut attrs = Vec::new();
        let mut ce_content_type = None;
        for (name, value) in headers {
            let Some(attr) = name.as_str().strip_prefix("ce-") else {
                continue;
            };
            check_name(attr)?;
            if attr == "data" {
                // The JSON format's member for the data: an attribute of that
                // name could not be written structured.
                return Err(EventError::Invalid {
                    name: attr.to_owned(),
                    why: "reserved for the event's data",
                });
            }
            let value = percent_decode(value.as_bytes()).ok_or_else(|| EventError::Invalid {
                name: attr.to_owned(),
                why: "not UTF-8 once percent-decoded",
            })?;
            let content_type = attr == "datacontenttype";
            if attrs.iter().any(|(k, _)| k == attr) || (content_type && ce_content_type.is_some()) {
                return Err(EventError::Invalid {
                    name: attr.to_owned(),
                    why: "given twice",
                });
            }
            if content_type {
                // Binary mode carries it as Content-Type; a sender's
                // `ce-datacontenttype` is taken for it, after the loop, so the
                // attributes come in the order `to_binary` writes them.
                ce_content_type = Some(value);
                continue;
            }
            attrs.push((attr.to_owned(), value));
        }
        let content_type = match headers.get(http::header::CONTENT_TYPE) {
            Some(ct) => Some(ct.to_str().map_err(|_| EventError::Invalid {
                name: "datacontenttype".into(),
                why: "not ASCII",
            })?),
            None => None,
        };
        match (content_type, ce_content_type) {
            (Some(ct), Some(ce)) if ct != ce => {
                return Err(EventError::Invalid {
                    name: "datacontenttype".into(),
                    why: "given twice (Content-Type and ce-datacontenttype differ)",
                });
            }
            (Some(ct), _) => attrs.push(("datacontenttype".into(), ct.to_owned())),
            (None, Some(ce)) => attrs.push(("datacontenttype".into(), ce)),
            (None, None) => {}
        }
        let data = if body.is_empty() {
            Data::None
        } else {
            Data::Bytes(body)
        };
        Self::checked(attrs, data)
    }

    /// One event in the JSON format.
    pub(crate) fn from_json(value: Json) -> Result<Self, EventError> {
        let Json::Object(members) = value else {
            return Err(EventError::Body("expected a JSON object".into()));
        };
        let mut attrs = Vec::new();
        let mut data = Data::None;
        for (name, value) in members {
            match (name.as_str(), value) {
                ("data", v) => {
                    if data != Data::None {
                        return Err(EventError::Body(
                            "`data` and `data_base64` are both given".into(),
                        ));
                    }
                    data = Data::Json(v);
                }
                ("data_base64", Json::String(s)) => {
                    if data != Data::None {
                        return Err(EventError::Body(
                            "`data` and `data_base64` are both given".into(),
                        ));
                    }
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(s.as_bytes())
                        .map_err(|_| EventError::Invalid {
                            name: "data_base64".into(),
                            why: "not base64",
                        })?;
                    data = Data::Bytes(bytes.into());
                }
                ("data_base64", _) => {
                    return Err(EventError::Invalid {
                        name: "data_base64".into(),
                        why: "not a string",
                    })
                }
                // A null attribute is an absent one.
                (_, Json::Null) => {}
                (n, v) => {
                    check_name(n)?;
                    let value = match v {
                        Json::String(s) => s,
                        Json::Bool(b) => b.to_string(),
                        Json::Number(n) if n.is_i64() => n.to_string(),
                        _ => {
                            return Err(EventError::Invalid {
                                name: name.clone(),
                                why: "not a string, integer or boolean",
                            })
                        }
                    };
                    attrs.push((name, value));
                }
            }
        }
        Self::checked(attrs, data)
    }

    /// The required attributes present, `specversion` 1.0, `time` RFC 3339.
    fn checked(mut attrs: Vec<(String, String)>, data: Data) -> Result<Self, EventError> {
        let get = |attrs: &[(String, String)], n: &str| {
            attrs.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone())
        };
        match get(&attrs, "specversion").as_deref() {
            None | Some("") => return Err(EventError::Missing("specversion")),
            Some("1.0") => {}
            Some(other) => return Err(EventError::SpecVersion(other.to_owned())),
        }
        for required in ["id", "source", "type"] {
            if get(&attrs, required).is_none_or(|v| v.is_empty()) {
                return Err(EventError::Missing(required));
            }
        }
        for optional in ["subject", "dataschema", "datacontenttype"] {
            if get(&attrs, optional).is_some_and(|v| v.is_empty()) {
                return Err(EventError::Invalid {
                    name: optional.into(),
                    why: "empty",
                });
            }
        }
        if let Some(t) = get(&attrs, "time") {
            if !is_rfc3339(&t) {
                return Err(EventError::Invalid {
                    name: "time".into(),
                    why: "not an RFC 3339 timestamp",
                });
            }
        }
        // specversion first, the others as given.
        attrs.sort_by_key(|(k, _)| k != "specversion");
        Ok(Self { attrs, data })
    }

    fn json_data(&self) -> bool {
        self.attr("datacontenttype").is_none_or(is_json_type)
    }

    /// Binary mode: `ce-*` headers and the data as the body, with its content type.
    pub(crate) fn to_binary(&self) -> (Vec<(HeaderName, HeaderValue)>, Bytes) {
        let mut headers = Vec::with_capacity(self.attrs.len() + 1);
        for (name, value) in &self.attrs {
            if name == "datacontenttype" {
                continue;
            }
            if let (Ok(n), Ok(v)) = (
                HeaderName::try_from(format!("ce-{name}")),
                HeaderValue::try_from(percent_encode(value)),
            ) {
                headers.push((n, v));
            }
        }
        let content_type = match (self.attr("datacontenttype"), &self.data) {
            (Some(ct), _) => Some(ct),
            (None, Data::Json(_)) => Some("application/json"),
            (None, _) => None,
        };
        if let Some(v) = content_type.and_then(|ct| HeaderValue::try_from(ct).ok()) {
            headers.push((http::header::CONTENT_TYPE, v));
        }
        let body = match &self.data {
            Data::None => Bytes::new(),
            Data::Bytes(b) => b.clone(),
            // A string for a non-JSON type is the data itself (the JSON format, §3.1).
            Data::Json(Json::String(s)) if !self.json_data() => Bytes::from(s.clone()),
            Data::Json(v) => Bytes::from(v.to_string()),
        };
        (headers, body)
    }

    /// The event in the JSON format.
    pub(crate) fn to_json(&self) -> Json {
        let mut out = Map::new();
        for (name, value) in &self.attrs {
            out.insert(name.clone(), Json::String(value.clone()));
        }
        match &self.data {
            Data::None => {}
            Data::Json(v) => {
                out.insert("data".into(), v.clone());
            }
            Data::Bytes(b) => {
                let parsed = self
                    .json_data()
                    .then(|| serde_json::from_slice::<Json>(b).ok())
                    .flatten();
                match parsed {
                    Some(v) => out.insert("data".into(), v),
                    None => out.insert(
                        "data_base64".into(),
                        Json::String(base64::engine::general_purpose::STANDARD.encode(b)),
                    ),
                };
            }
        }
        Json::Object(out)
    }
}

/// `application/json`, `text/json` or any `+json` type, parameters aside.
pub(crate) fn is_json_type(ct: &str) -> bool {
    let essence = ct.split(';').next().unwrap_or_default().trim();
    let essence = essence.to_ascii_lowercase();
    essence == "application/json" || essence == "text/json" || essence.ends_with("+json")
}

/// CloudEvents attribute names: lowercase letters and digits, at most 20.
fn check_name(name: &str) -> Result<(), EventError> {
    let ok = !name.is_empty()
        && name.len() <= 20
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(EventError::Name(name.to_owned()))
    }
}

/// The HTTP binding (§3.1.3.2): space, `"`, `%` and anything outside
/// printable ASCII are percent-encoded as UTF-8.
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for &b in value.as_bytes() {
        if (0x21..=0x7e).contains(&b) && b != b'"' && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Percent-decoding; a `%` that starts no escape is kept as it is (some
/// publishers do not encode), but the result must be UTF-8.
fn percent_decode(raw: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let escape = (raw[i] == b'%')
            .then(|| raw.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match escape {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(raw[i]);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// `2026-12-01T13:45:00Z`, with optional fractions and a numeric offset.
fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    if b.len() < 20
        || !digits(0..4)
        || b[4] != b'-'
        || !digits(5..7)
        || b[7] != b'-'
        || !digits(8..10)
        || !matches!(b[10], b'T' | b't')
        || !digits(11..13)
        || b[13] != b':'
        || !digits(14..16)
        || b[16] != b':'
        || !digits(17..19)
    {
        return false;
    }
    let num = |r: std::ops::Range<usize>| s[r].parse::<u32>().unwrap_or(99);
    if !(1..=12).contains(&num(5..7))
        || !(1..=31).contains(&num(8..10))
        || num(11..13) > 23
        || num(14..16) > 59
        || num(17..19) > 60
    {
        return false;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return false;
        }
        rest = &frac[n..];
    }
    match rest.as_bytes() {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => [h1, h2, m1, m2].iter().all(|d| d.is_ascii_digit()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binary_attribute_named_data_is_refused() {
        // Found by fuzz/cloudevent: it parsed, then its JSON form had `data` twice.
        let e = binary(
            &[
                ("ce-specversion", "1.0"),
                ("ce-id", "1"),
                ("ce-source", "/s"),
                ("ce-type", "t"),
                ("ce-data", "x"),
            ],
            "body",
        );
        assert!(
            matches!(e, Err(EventError::Invalid { ref name, .. }) if name == "data"),
            "{e:?}"
        );
    }

    fn binary(pairs: &[(&str, &str)], body: &'static str) -> Result<Event, EventError> {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        Event::from_binary(&h, Bytes::from_static(body.as_bytes()))
    }

    const MINIMAL: [(&str, &str); 4] = [
        ("ce-specversion", "1.0"),
        ("ce-id", "A234-1234-1234"),
        ("ce-source", "/mycontext"),
        ("ce-type", "com.example.someevent"),
    ];

    #[test]
    fn a_ce_datacontenttype_header_is_the_content_type_and_round_trips() {
        // Found by the cloudevent fuzz target: it came back after `type`, as
        // `to_binary` writes it as Content-Type, and the events differed.
        let mut pairs = MINIMAL.to_vec();
        pairs.insert(3, ("ce-datacontenttype", "text/plain"));
        let e = binary(&pairs, "").unwrap();
        let (written, body) = e.to_binary();
        let mut h = HeaderMap::new();
        for (name, value) in written {
            h.append(name, value);
        }
        assert_eq!(Event::from_binary(&h, body).unwrap(), e);
        pairs.push(("content-type", "text/plain"));
        assert_eq!(
            binary(&pairs, "").unwrap().attr("datacontenttype"),
            Some("text/plain")
        );
        pairs.last_mut().unwrap().1 = "application/json";
        assert!(matches!(
            binary(&pairs, "").unwrap_err(),
            EventError::Invalid { ref name, .. } if name == "datacontenttype"
        ));
    }

    #[test]
    fn binary_mode_reads_headers_and_names_what_is_missing() {
        let mut pairs = MINIMAL.to_vec();
        pairs.push(("ce-subject", "caf%C3%A9%20au%20lait"));
        pairs.push(("content-type", "text/plain"));
        pairs.push(("x-other", "ignored"));
        let e = binary(&pairs, "hello").unwrap();
        assert_eq!(e.attr("subject"), Some("café au lait"));
        assert_eq!(e.attr("datacontenttype"), Some("text/plain"));
        assert_eq!(e.data, Data::Bytes(Bytes::from_static(b"hello")));
        for (i, name) in ["specversion", "id", "source", "type"].iter().enumerate() {
            let mut missing = MINIMAL.to_vec();
            missing.remove(i);
            assert_eq!(binary(&missing, "").unwrap_err(), EventError::Missing(name));
        }
        let mut v03 = MINIMAL.to_vec();
        v03[0].1 = "0.3";
        assert_eq!(
            binary(&v03, "").unwrap_err(),
            EventError::SpecVersion("0.3".into())
        );
        let mut bad_time = MINIMAL.to_vec();
        bad_time.push(("ce-time", "yesterday"));
        assert!(
            matches!(binary(&bad_time, ""), Err(EventError::Invalid { name, .. }) if name == "time")
        );
        let mut bad_name = MINIMAL.to_vec();
        bad_name.push(("ce-my_ext", "1"));
        assert_eq!(
            binary(&bad_name, "").unwrap_err(),
            EventError::Name("my_ext".into())
        );
    }

    #[test]
    fn the_json_format_takes_data_or_data_base64_and_typed_extensions() {
        let e = Event::from_json(serde_json::json!({
            "specversion": "1.0", "id": "1", "source": "/s", "type": "t",
            "time": "2026-12-01T13:45:00.123+01:00", "count": 3, "flag": true, "gone": null,
            "data": {"order": 17}
        }))
        .unwrap();
        assert_eq!(e.attr("count"), Some("3"));
        assert_eq!(e.attr("flag"), Some("true"));
        assert_eq!(e.attr("gone"), None);
        assert_eq!(e.data, Data::Json(serde_json::json!({"order": 17})));
        let b = Event::from_json(serde_json::json!({
            "specversion": "1.0", "id": "1", "source": "/s", "type": "t", "data_base64": "AAEC"
        }))
        .unwrap();
        assert_eq!(b.data, Data::Bytes(Bytes::from_static(&[0, 1, 2])));
        let both = Event::from_json(serde_json::json!({
            "specversion": "1.0", "id": "1", "source": "/s", "type": "t", "data": 1, "data_base64": "AA=="
        }));
        assert!(matches!(both, Err(EventError::Body(_))));
        let float = Event::from_json(serde_json::json!({
            "specversion": "1.0", "id": "1", "source": "/s", "type": "t", "ratio": 0.5
        }));
        assert!(matches!(float, Err(EventError::Invalid { name, .. }) if name == "ratio"));
        assert!(matches!(
            Event::from_json(serde_json::json!([1])),
            Err(EventError::Body(_))
        ));
    }

    #[test]
    fn binary_output_percent_encodes_and_carries_the_data_type() {
        let mut pairs = MINIMAL.to_vec();
        pairs.push(("ce-subject", "a \"b\" 100%"));
        let e = binary(&pairs, "").unwrap();
        let (headers, body) = e.to_binary();
        let subject = headers.iter().find(|(n, _)| n == "ce-subject").unwrap();
        assert_eq!(subject.1, "a%20%22b%22%20100%25");
        assert!(body.is_empty());
        // A JSON string for a text type is the text itself.
        let text = Event::from_json(serde_json::json!({
            "specversion": "1.0", "id": "1", "source": "/s", "type": "t",
            "datacontenttype": "text/plain", "data": "hi"
        }))
        .unwrap();
        let (headers, body) = text.to_binary();
        assert_eq!(body, Bytes::from_static(b"hi"));
        assert!(headers
            .iter()
            .any(|(n, v)| n == http::header::CONTENT_TYPE && v == "text/plain"));
    }

    #[test]
    fn json_output_keeps_json_data_and_base64s_the_rest() {
        let mut pairs = MINIMAL.to_vec();
        pairs.push(("content-type", "application/json"));
        let j = binary(&pairs, r#"{"a":1}"#).unwrap().to_json();
        assert_eq!(j["data"], serde_json::json!({"a": 1}));
        pairs.pop();
        pairs.push(("content-type", "image/png"));
        let b = binary(&pairs, "\u{1}\u{2}").unwrap().to_json();
        assert_eq!(b["data_base64"], "AQI=");
        assert_eq!(b["specversion"], "1.0");
    }

    #[test]
    fn rfc3339_timestamps() {
        for ok in [
            "2026-12-01T13:45:00Z",
            "2026-12-01t13:45:00.5z",
            "2026-12-01T13:45:00-05:30",
        ] {
            assert!(is_rfc3339(ok), "{ok}");
        }
        for bad in [
            "2026-12-01 13:45:00Z",
            "2026-13-01T13:45:00Z",
            "2026-12-01T13:45:00",
            "2026-12-01T13:45:00.Z",
            "yesterday",
        ] {
            assert!(!is_rfc3339(bad), "{bad}");
        }
    }
}
