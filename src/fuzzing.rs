//! Entry points for the fuzz targets under `fuzz/` (and for replaying their
//! corpora in `cargo test`). Each one feeds hostile input to one parser and
//! asserts what must hold for every input, not only that nothing panics: a
//! broken property panics, and the fuzzer reports the input.
//!
//! Inputs with several fields are lines: readable seeds, and a grammar the
//! fuzzer finds quickly.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Timelike, Utc};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde_json::Value as Json;

use crate::admin::doc::{Doc, Kind, HIDDEN, READ_ONLY};
use crate::auth::{Authenticator, Check};
use crate::config::path::{PathPattern, Template};
use crate::config::{AuthKind, AuthPolicy, Config, Jwt, JwtKeys, Secret};
use crate::events::cloudevent::Event;
use crate::normalize::normalize_path;
use crate::router::{host_only, Lookup, RouteTable};

fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// The first `n - 1` lines, then the rest (which may hold newlines).
fn fields(data: &str, n: usize) -> Vec<&str> {
    let mut out: Vec<&str> = data.splitn(n, '\n').collect();
    out.resize(n, "");
    out
}

/// Segments of a rendered path, as a server that decodes unreserved escapes
/// reads them (`%2E` is `.`), so `%2E%2E` counts as `..`. Deliberately not
/// `normalize::has_dot_segment`: the aggregate renderer uses that one, and a
/// property checked by the code under test could not fail.
fn dot_segment(path: &str) -> Option<&str> {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    path.split('/').find(|seg| {
        let decoded = seg.replace("%2E", ".").replace("%2e", ".");
        decoded == "." || decoded == ".."
    })
}

const ROUTES: &str = r#"
[backends.b]
urls = ["http://127.0.0.1:9"]

[[routes]]
name = "exact"
path = "/users/me"
backend = "b"

[[routes]]
name = "param"
path = "/users/{id}"
methods = ["GET"]
backend = "b"

[[routes]]
name = "nested"
path = "/users/{id}/files/{*rest}"
backend = "b"

[[routes]]
name = "host"
host = "*.example.com"
path = "/{*all}"
backend = "b"

[[routes]]
name = "slash"
path = "/a/"
backend = "b"
"#;

/// Path normalisation, then routing: normal form is a fixed point, never
/// climbs above `/`, and a match's params lie within the path on char
/// boundaries, a segment param holding no `/`.
pub fn path(data: &[u8]) {
    let Some(input) = text(data) else { return };
    let (authority, target) = input.split_once('\n').unwrap_or(("", input));
    // A request's path never holds `?` or `#`: the URI parser splits them off.
    let path = target.split(['?', '#']).next().unwrap_or_default();
    let host = host_only(authority);
    assert!(!host.bytes().any(|b| b.is_ascii_uppercase()));
    let Ok(normal) = normalize_path(path) else {
        return;
    };
    assert!(normal.starts_with('/'), "{normal:?} is not absolute");
    assert!(!normal.contains("//"), "{normal:?} keeps `//`");
    assert_eq!(dot_segment(&normal), None, "{normal:?} keeps a dot segment");
    let again = normalize_path(&normal).expect("a normal path normalises");
    assert_eq!(again, normal, "normalising is not idempotent");

    thread_local! {
        static TABLE: (Config, RouteTable) = {
            let config = Config::parse(ROUTES, "fuzz.toml", &|_| None).expect("the fuzz routes load");
            let table = RouteTable::build(&config.routes);
            (config, table)
        };
    }
    TABLE.with(|(config, table)| {
        let lookup = Lookup {
            host: (!host.is_empty()).then_some(&*host),
            method: &Method::GET,
            path: &normal,
            preflight: None,
        };
        let Ok(found) = table.resolve(&lookup) else {
            return;
        };
        let route = &config.routes[found.found.route];
        let params = &route.path.params;
        assert_eq!(found.found.params.len(), params.len());
        for (range, param) in found.found.params.iter().zip(params) {
            let value = normal
                .get(range.clone())
                .expect("a param is a slice of the path");
            assert!(!value.is_empty(), "param `{}` is empty", param.name);
            assert!(
                param.catch_all || !value.contains('/'),
                "segment param `{}` = {value:?}",
                param.name
            );
        }
    });
}

/// A whole routes.toml: it loads, or every error it yields names a line
/// and column; a config that loads builds its route table.
pub fn config(data: &[u8]) {
    let Some(input) = text(data) else { return };
    match Config::parse_in(input, "fuzz.toml", Path::new("/nonexistent"), &|_| None) {
        Ok(config) => {
            let _ = RouteTable::build(&config.routes);
        }
        Err(errors) => {
            assert!(!errors.0.is_empty(), "refused without an error");
            for e in &errors.0 {
                assert!(e.line > 0 && e.col > 0, "no position: {e}");
                assert!(!e.message.is_empty(), "no message: {e:?}");
            }
        }
    }
}

/// The admin splice (JSON body → TOML table by name): the document it
/// writes parses back to what the API then shows, and putting back what the
/// API shows changes nothing.
pub fn splice(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Some(input) = text(rest) else { return };
    let (name, body) = input.split_once('\n').unwrap_or((input, "{}"));
    let Ok(body) = serde_json::from_str::<Json>(body) else {
        return;
    };
    let kinds = [
        Kind::Routes,
        Kind::Backends,
        Kind::Auth,
        Kind::RateLimits,
        Kind::Topics,
        Kind::Subscriptions,
        Kind::Schedules,
    ];
    let kind = kinds[usize::from(selector) % kinds.len()];
    thread_local! {
        // Parsed once: the splice, not the shipped file's parse, is under test.
        static BASE: Doc = Doc::parse(include_str!("../routes.toml")).expect("the shipped routes.toml parses");
    }
    let mut doc = BASE.with(Doc::clone);
    if doc.put(kind, name, body.clone()).is_err() {
        return;
    }
    let shown = doc.get(kind, name).expect("a put entity is found");
    let text = doc.text();
    let reread = Doc::parse(&text).unwrap_or_else(|| panic!("the splice wrote bad TOML:\n{text}"));
    assert_eq!(reread.get(kind, name).as_ref(), Some(&shown), "{text}");
    if !contains_hidden(&body) {
        assert_eq!(
            without_read_only(&body, name),
            shown_with_secrets(&shown, &body)
        );
    }
    let mut again = Doc::parse(&text).expect("parsed above");
    again
        .put(kind, name, shown)
        .expect("what the API shows goes back");
    assert_eq!(again.text(), text, "a PUT of a GET changed the document");
}

fn contains_hidden(v: &Json) -> bool {
    match v {
        Json::String(s) => s == HIDDEN,
        Json::Array(a) => a.iter().any(contains_hidden),
        Json::Object(o) => o.values().any(contains_hidden),
        _ => false,
    }
}

/// The body as the API stores it: read-only keys dropped, `name` from the path.
fn without_read_only(body: &Json, name: &str) -> Json {
    let mut fields = body.as_object().cloned().unwrap_or_default();
    for key in READ_ONLY {
        fields.shift_remove(key);
    }
    fields.insert("name".into(), Json::from(name));
    Json::Object(fields)
}

/// `shown` with each hidden value taken from `body` at the same place.
fn shown_with_secrets(shown: &Json, body: &Json) -> Json {
    match (shown, body) {
        (Json::String(s), b) if s == HIDDEN => b.clone(),
        (Json::Object(s), Json::Object(b)) => Json::Object(
            s.iter()
                .map(|(k, v)| {
                    let v = b.get(k).map_or(v.clone(), |bv| shown_with_secrets(v, bv));
                    (k.clone(), v)
                })
                .collect(),
        ),
        (Json::Array(s), Json::Array(b)) => Json::Array(
            s.iter()
                .zip(b)
                .map(|(v, bv)| shown_with_secrets(v, bv))
                .collect(),
        ),
        (s, _) => s.clone(),
    }
}

/// Rewrite and aggregate templates, with values from a matched request and
/// from a call's JSON answer: no rendering makes `.` or `..` a segment.
pub fn template(data: &[u8]) {
    let Some(input) = text(data) else { return };
    let f = fields(input, 5);
    let (pattern, rewrite, call, path, answer) = (f[0], f[1], f[2], f[3], f[4]);
    let Ok(pattern) = PathPattern::parse(pattern) else {
        return;
    };
    let (path, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    if path.contains('#') {
        return;
    }
    let Ok(normal) = normalize_path(path) else {
        return;
    };
    let mut router = matchit::Router::new();
    if router.insert(pattern.shape.clone(), ()).is_err() {
        return;
    }
    let Ok(found) = router.at(&normal) else {
        return;
    };
    let values: Vec<&str> = found.params.iter().map(|(_, v)| v).collect();
    if let Ok(t) = Template::parse(rewrite, &pattern.params) {
        let mut out = String::new();
        t.render(&values, &mut out);
        assert_eq!(
            dot_segment(&out),
            None,
            "rewrite {rewrite:?} of {normal:?} gave {out:?}"
        );
    }
    let answer: Json = serde_json::from_str(answer).unwrap_or(Json::Null);
    if let Some(out) = crate::aggregate::render_call(call, &pattern.params, &values, query, &answer)
    {
        assert_eq!(
            dot_segment(&out),
            None,
            "call {call:?} of {normal:?} gave {out:?}"
        );
    }
}

const SECRET: &[u8] = b"fuzzing-secret-0123456789abcdef!";

fn jwt_policy(keys: JwtKeys, algorithms: Vec<jsonwebtoken::Algorithm>) -> Arc<Authenticator> {
    Authenticator::new(Arc::new(AuthPolicy {
        name: "fuzz".into(),
        kind: AuthKind::Jwt(Box::new(Jwt {
            algorithms,
            keys,
            issuer: None,
            audience: Vec::new(),
            leeway: Duration::from_secs(30),
            scopes: Vec::new(),
            forward_claims: Vec::new(),
            require_exp: false,
            cache_size: 16,
            cache_ttl: Duration::from_secs(60),
        })),
    }))
}

/// The one token the fuzz secret signed: its header and payload, base64url.
pub const SIGNED: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJmdXp6In0";

fn checked(auth: &Authenticator, token: &[u8]) -> Option<bool> {
    let mut headers = HeaderMap::new();
    let mut value = b"Bearer ".to_vec();
    value.extend_from_slice(token);
    headers.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_bytes(&value).ok()?,
    );
    match auth.check(&headers, true) {
        Check::Done(r) => Some(r.is_ok()),
        Check::FetchKeys(_) => panic!("static keys asked for a fetch"),
    }
}

/// JWT header, kid and signature handling: a token is accepted only if the
/// fuzz secret signed its header and payload, whatever its header claims.
pub fn jwt(data: &[u8]) {
    thread_local! {
        static HMAC: Arc<Authenticator> = jwt_policy(
            JwtKeys::Secret(Secret(SECRET.into())),
            vec![jsonwebtoken::Algorithm::HS256, jsonwebtoken::Algorithm::RS256],
        );
    }
    let accepted = HMAC.with(|auth| {
        // Twice: the second look may come from the cache of verified tokens.
        let first = checked(auth, data);
        assert_eq!(first, checked(auth, data), "the cache changed the answer");
        first
    });
    if accepted == Some(true) {
        let token = std::str::from_utf8(data)
            .expect("accepted tokens are text")
            .trim();
        let signed = token.rsplit_once('.').map(|(m, _)| m);
        assert_eq!(
            signed,
            Some(SIGNED),
            "accepted a token the secret did not sign"
        );
    }
}

/// A JWKS document: whatever it holds, looking a token's key up never
/// panics, and a token no key signed is refused.
pub fn jwks(data: &[u8]) {
    let Ok(set) = serde_json::from_slice::<jsonwebtoken::jwk::JwkSet>(data) else {
        return;
    };
    let kids: Vec<String> = set
        .keys
        .iter()
        .filter_map(|k| k.common.key_id.clone())
        .collect();
    let auth = jwt_policy(
        JwtKeys::Jwks(Arc::new(set)),
        vec![
            jsonwebtoken::Algorithm::RS256,
            jsonwebtoken::Algorithm::ES256,
            jsonwebtoken::Algorithm::EdDSA,
            jsonwebtoken::Algorithm::HS256,
        ],
    );
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    for alg in ["RS256", "ES256", "EdDSA", "HS256"] {
        for kid in kids.iter().map(Some).chain([None]) {
            let mut header = serde_json::json!({ "alg": alg, "typ": "JWT" });
            if let Some(kid) = kid {
                header["kid"] = Json::from(kid.as_str());
            }
            let token = format!(
                "{}.{}.{}",
                b64.encode(header.to_string()),
                b64.encode(r#"{"sub":"fuzz"}"#),
                b64.encode([7u8; 64])
            );
            assert_eq!(checked(&auth, token.as_bytes()), Some(false), "{token}");
        }
    }
}

/// CloudEvents in both modes: what parses writes back to what parses the
/// same, and both modes agree on the attributes.
pub fn cloudevent(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let Ok(json) = serde_json::from_slice::<Json>(rest) else {
            return;
        };
        let Ok(event) = Event::from_json(json) else {
            return;
        };
        let again = Event::from_json(event.to_json()).expect("a written event parses");
        assert_eq!(again, event);
        return;
    }
    let split = rest.windows(2).position(|w| w == b"\n\n");
    let (head, body) = match split {
        Some(i) => (&rest[..i], &rest[i + 2..]),
        None => (rest, &[][..]),
    };
    let mut headers = HeaderMap::new();
    for line in head.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    let Ok(event) = Event::from_binary(&headers, Bytes::copy_from_slice(body)) else {
        return;
    };
    let (written, body) = event.to_binary();
    let mut headers = HeaderMap::new();
    for (name, value) in written {
        headers.append(name, value);
    }
    let again = Event::from_binary(&headers, body).expect("a written event parses");
    assert_eq!(again, event);
    let structured = Event::from_json(event.to_json()).expect("the JSON form parses");
    for name in ["specversion", "id", "source", "type", "subject", "time"] {
        assert_eq!(structured.attr(name), event.attr(name), "attribute {name}");
    }
}

/// Cron expressions and time zones: a schedule that parses has ticks, and
/// they go strictly forward, on whole seconds.
pub fn cron(data: &[u8]) {
    let Some(input) = text(data) else { return };
    let f = fields(input, 3);
    let Ok(when) = crate::config::parse_when(f[0]) else {
        return;
    };
    let Ok(timezone) = f[1].trim().parse::<chrono_tz::Tz>() else {
        return;
    };
    let seed = f[2]
        .bytes()
        .fold(0i64, |h, b| h.wrapping_mul(31).wrapping_add(i64::from(b)));
    // Any instant from 1970 to 2100.
    let start = seed.rem_euclid(4_102_444_800_000);
    let Some(mut t) = DateTime::<Utc>::from_timestamp_millis(start) else {
        return;
    };
    for _ in 0..4 {
        // What parses fires: a cron with no such date is refused.
        let Some(next) = when.next_tick(&timezone, t) else {
            panic!("{} parsed but has no tick after {t}", f[0]);
        };
        assert!(next > t, "{} ticks from {t} back to {next}", f[0]);
        if matches!(when, crate::config::When::Cron(_)) {
            assert_eq!(next.nanosecond(), 0, "a cron tick off a whole second");
        }
        t = next;
    }
}

/// Signed file URLs: a query verifies only as the signature of this path
/// and an unexpired time, made with this key.
pub fn signed_url(data: &[u8]) {
    let Some(input) = text(data) else { return };
    let f = fields(input, 4);
    let (key, path, query, now) = (f[0].as_bytes(), f[1], f[2], f[3]);
    // A clock, not the end of time: room for the expiry signed below.
    let now: u64 = now.trim().parse().unwrap_or(1_000_000).min(u64::MAX / 2);
    let query = (!query.is_empty()).then_some(query);
    if crate::signed_url::verify(key, path, query, now) {
        let query = query.expect("no query never verifies");
        let expires: u64 = query
            .split('&')
            .filter_map(|p| p.strip_prefix("expires="))
            .filter_map(|v| v.parse().ok())
            .next_back()
            .expect("a verified query has an expiry");
        assert!(expires > now, "expired at {expires}, verified at {now}");
        let sig = crate::signed_url::sign(key, path, expires);
        let tag = sig.split_once("&sig=").map(|(_, t)| t).unwrap_or_default();
        assert!(
            query.split('&').any(|p| p
                .strip_prefix("sig=")
                .is_some_and(|s| s.eq_ignore_ascii_case(tag))),
            "{query:?} verified without the signature of {path:?}"
        );
    }
    // What is signed verifies, for this path only.
    let expires = now.saturating_add(60);
    let good = crate::signed_url::sign(key, path, expires);
    assert!(crate::signed_url::verify(key, path, Some(&good), now));
    let other = format!("{path}x");
    assert!(!crate::signed_url::verify(key, &other, Some(&good), now));
}

/// `Idempotency-Key` values: a key is 1 to 255 characters, and written
/// back as an RFC 8941 string it reads as the same key.
pub fn idempotency(data: &[u8]) {
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert("idempotency-key", value);
    let Ok(Some(key)) = crate::jobs::idempotency_key(&headers) else {
        return;
    };
    assert!((1..=255).contains(&key.len()), "{key:?}");
    let quoted = format!("\"{}\"", key.replace('\\', "\\\\").replace('"', "\\\""));
    headers.insert(
        "idempotency-key",
        HeaderValue::from_str(&quoted).expect("a key is header-safe"),
    );
    let again = crate::jobs::idempotency_key(&headers).expect("its string form parses");
    assert_eq!(again.as_deref(), Some(key.as_str()), "{quoted}");
}

/// A `traceparent` as a client sends it. The two readers agree (the request
/// id layer's check, which decides whether the caller's trace is kept, and
/// the telemetry parser, which makes the parent of the server span), and a
/// parsed context written back reads as the same context.
pub fn traceparent(data: &[u8]) {
    let parsed = crate::telemetry::parse_traceparent(data);
    if data.len() == 55 {
        assert_eq!(
            parsed.is_some(),
            crate::middleware::request_id::is_valid_traceparent(data),
            "{:?}",
            String::from_utf8_lossy(data)
        );
    }
    let Some(sc) = parsed else { return };
    let written = crate::telemetry::format_traceparent(&sc);
    assert!(
        crate::middleware::request_id::is_valid_traceparent(written.as_bytes()),
        "{written:?}"
    );
    let again = crate::telemetry::parse_traceparent(written.as_bytes()).expect("ours parses");
    assert_eq!(
        (again.trace_id(), again.span_id(), again.is_sampled()),
        (sc.trace_id(), sc.span_id(), sc.is_sampled())
    );
    // The ids are the caller's, verbatim; only the sampled flag is kept of its flags.
    assert_eq!(&written.as_bytes()[3..52], &data[3..52]);
}

/// A fuzz target: one input, properties asserted.
pub type Target = fn(&[u8]);

/// Every fuzz target by name, for replaying corpora in tests.
pub const TARGETS: &[(&str, Target)] = &[
    ("path", path),
    ("config", config),
    ("splice", splice),
    ("template", template),
    ("jwt", jwt),
    ("jwks", jwks),
    ("cloudevent", cloudevent),
    ("cron", cron),
    ("signed_url", signed_url),
    ("idempotency", idempotency),
    ("traceparent", traceparent),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Every seed and every input a fuzzer once failed on (fuzz/corpus and
    /// fuzz/regressions) still holds its target's properties.
    #[test]
    fn fuzz_corpora_replay() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        let mut replayed = 0;
        for (name, target) in TARGETS {
            for dir in ["corpus", "regressions"] {
                let Ok(entries) = std::fs::read_dir(root.join(dir).join(name)) else {
                    continue;
                };
                for entry in entries.flatten() {
                    let data = std::fs::read(entry.path()).expect("a corpus file reads");
                    target(&data);
                    replayed += 1;
                }
            }
        }
        assert!(replayed >= TARGETS.len(), "only {replayed} inputs replayed");
    }
}
