//! `fngate explain`: which route a request would take and why, without
//! sending anything. It runs the same normalisation and route table as the
//! data path, then looks at every route on its own to name the near misses.

use std::fmt::{self, Write as _};

use http::Method;

use crate::config::{Action, Config, HostPattern, Route};
use crate::normalize::normalize_path;
use crate::router::{host_only, Lookup, RouteError, RouteTable};
use crate::upstream::upstream_uri;

/// The outcome: printed as text; `matched` decides the exit status.
#[derive(Debug)]
pub struct Explanation {
    pub matched: bool,
    text: String,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Explains `method target` (`target` is a path with an optional query)
/// with the given request headers (`host`, and for a CORS preflight
/// `origin` and `access-control-request-method`).
pub fn explain(
    config: &Config,
    method: &Method,
    target: &str,
    headers: &[(String, String)],
) -> Explanation {
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    };
    let host = header("host").map(|h| host_only(h).into_owned());
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{method} {target}  (host: {})",
        host.as_deref().unwrap_or("none")
    );
    let normal = match normalize_path(path) {
        Ok(p) => p.into_owned(),
        Err(e) => {
            let _ = writeln!(out, "=> 400 Bad Request: unsafe path: {e}");
            return Explanation {
                matched: false,
                text: out,
            };
        }
    };
    if normal != path {
        let _ = writeln!(out, "normalised path: {normal}");
    }
    let table = RouteTable::build(&config.routes);
    let lookup = Lookup {
        host: host.as_deref(),
        method,
        path: &normal,
        preflight: crate::router::preflight_method(
            method,
            header("origin").is_some(),
            header("access-control-request-method").map(str::as_bytes),
        ),
    };
    let found = table.resolve(&lookup).map(|r| {
        if r.preflight {
            let asked = lookup.preflight.as_ref().map_or("?", Method::as_str);
            let _ = writeln!(
                out,
                "CORS preflight for {asked}: answered by fngate, never forwarded"
            );
        }
        r.found
    });
    let winner = found.as_ref().ok().map(|m| m.route);
    match &found {
        Ok(m) => {
            let route = &config.routes[m.route];
            let values: Vec<&str> = m.params.iter().map(|r| &normal[r.clone()]).collect();
            let _ = writeln!(out, "\nmatched route `{}`", route.name);
            describe(&mut out, route, &values, &normal, query);
        }
        Err(RouteError::MethodNotAllowed { allow }) => {
            let _ = writeln!(
                out,
                "\n=> 405 Method Not Allowed (Allow: {})",
                allow.to_str().unwrap_or_default()
            );
        }
        Err(e) => {
            let _ = writeln!(out, "\n=> 404 Not Found: {e}");
        }
    }
    near_misses(&mut out, config, method, host.as_deref(), &normal, winner);
    Explanation {
        matched: winner.is_some(),
        text: out,
    }
}

fn describe(out: &mut String, route: &Route, params: &[&str], path: &str, query: Option<&str>) {
    let _ = writeln!(out, "  path      {}", route.path.raw);
    for (p, v) in route.path.params.iter().zip(params) {
        let _ = writeln!(out, "  param     {} = {v}", p.name);
    }
    let _ = writeln!(out, "  methods   {}", methods(route));
    let _ = writeln!(
        out,
        "  host      {}",
        route
            .host
            .as_ref()
            .map_or("any".to_owned(), HostPattern::to_string)
    );
    if let Action::Forward(f) = &route.action {
        let b = &f.backend;
        let _ = writeln!(
            out,
            "  backend   {} ({} over {} endpoint{}, {} retr{}, {:?} per attempt)",
            b.name,
            b.balance.as_str(),
            b.endpoints.len(),
            if b.endpoints.len() == 1 { "" } else { "s" },
            b.retries,
            if b.retries == 1 { "y" } else { "ies" },
            b.timeout
        );
        let suffix = f.target.render(path, params);
        for ep in &b.endpoints {
            match upstream_uri(ep, &suffix, query, None) {
                Ok(uri) => {
                    let _ = writeln!(out, "  upstream  {uri}");
                }
                Err(e) => {
                    let _ = writeln!(out, "  upstream  cannot be built: {e}");
                }
            }
        }
    }
    if let Action::Aggregate(a) = &route.action {
        let _ = writeln!(
            out,
            "  aggregate {} calls, {:?} deadline, merge {}",
            a.calls.len(),
            a.timeout,
            match a.merge {
                crate::config::Merge::Object => "object",
                crate::config::Merge::Flat => "flat",
            }
        );
        for c in &a.calls {
            let needs: Vec<&str> = c.needs.iter().map(|&i| &*a.calls[i].name).collect();
            let _ = writeln!(
                out,
                "  call      {}: {} {} on {}{}{}",
                c.name,
                c.method,
                c.path.raw,
                c.backend.name,
                if needs.is_empty() {
                    String::new()
                } else {
                    format!(", after {}", needs.join(", "))
                },
                if c.optional { ", optional" } else { "" }
            );
        }
    }
    let host = if matches!(&route.action, Action::Forward(f) if f.preserve_host) {
        "the client's (preserve_host)"
    } else {
        "the backend's"
    };
    let _ = writeln!(out, "  Host      {host}");
    if let Some(t) = route.timeout {
        let _ = writeln!(out, "  deadline  {t:?} (route timeout)");
    }
    for (what, edits) in [
        ("request", &route.request_headers),
        ("response", &route.response_headers),
    ] {
        if !edits.is_empty() {
            let set: Vec<String> = edits
                .set
                .iter()
                .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("?")))
                .collect();
            let remove: Vec<&str> = edits.remove.iter().map(|h| h.as_str()).collect();
            let _ = writeln!(
                out,
                "  {what} headers  set [{}] remove [{}]",
                set.join(", "),
                remove.join(", ")
            );
        }
    }
    if let Some(b) = match &route.action {
        Action::Forward(f) if !f.backend.headers.is_empty() => Some(&f.backend),
        _ => None,
    } {
        let names: Vec<&str> = b.headers.iter().map(|(k, _)| k.as_str()).collect();
        let _ = writeln!(
            out,
            "  backend headers  {} (values not shown)",
            names.join(", ")
        );
    }
    match &route.cors {
        Some(c) => {
            let origins = c.origins.as_ref().map_or("*".to_owned(), |o| {
                o.iter()
                    .map(|v| v.to_str().unwrap_or("?"))
                    .collect::<Vec<_>>()
                    .join(", ")
            });
            let _ = writeln!(
                out,
                "  cors      origins {origins}{}",
                if c.credentials { ", credentials" } else { "" }
            );
        }
        None => {
            let _ = writeln!(out, "  cors      none");
        }
    }
    let auth = match &route.auth {
        None => "none".to_owned(),
        Some(p) => {
            let kind = match &p.kind {
                crate::config::AuthKind::Jwt(_) => "JWT",
                crate::config::AuthKind::ApiKey(_) => "API key",
            };
            let mut s = format!("{} ({kind})", p.name);
            if let crate::config::AuthKind::Jwt(jwt) = &p.kind {
                let scopes: Vec<&str> = jwt
                    .scopes
                    .iter()
                    .chain(&route.scopes)
                    .map(String::as_str)
                    .collect();
                if !scopes.is_empty() {
                    let _ = write!(s, ", scopes {}", scopes.join(" "));
                }
            }
            s
        }
    };
    let _ = writeln!(out, "  auth      {auth}");
    if route.rate_limits.is_empty() {
        let _ = writeln!(out, "  limits    none");
    }
    // In the order they run: `ip` and `global` before authentication.
    let (before, after): (Vec<_>, Vec<_>) =
        route.rate_limits.iter().partition(|l| l.key.before_auth());
    for l in before.iter().chain(&after) {
        let key = match &l.key {
            crate::config::LimitKey::Ip => "ip".to_owned(),
            crate::config::LimitKey::Global => "global".to_owned(),
            crate::config::LimitKey::Consumer => "consumer".to_owned(),
            crate::config::LimitKey::Header(h) => format!("header:{h}"),
            crate::config::LimitKey::Claim(c) => format!("claim:{c}"),
        };
        let _ = writeln!(
            out,
            "  limit     {}: {} per {:?}, burst {}, by {key}",
            l.name, l.requests, l.per, l.burst
        );
    }
}

/// Every other route whose path matches, and what kept it from serving.
fn near_misses(
    out: &mut String,
    config: &Config,
    method: &Method,
    host: Option<&str>,
    path: &str,
    winner: Option<usize>,
) {
    let mut header = false;
    for (i, route) in config.routes.iter().enumerate() {
        if Some(i) == winner || !path_matches(route, path) {
            continue;
        }
        let host_ok = match (&route.host, host) {
            (None, _) => true,
            (Some(p), Some(h)) => p.matches(h),
            (Some(_), None) => false,
        };
        let method_ok = route.methods.as_ref().is_none_or(|m| m.contains(method));
        let why = match (host_ok, method_ok) {
            (false, _) => format!(
                "the path matches, but the host must be {}",
                route.host.as_ref().map_or(String::new(), ToString::to_string)
            ),
            (true, false) => format!("the path matches, but its methods are {}", methods(route)),
            (true, true) => match winner {
                Some(w) => format!(
                    "it matches too, but `{}` is more specific (exact host > wildcard > none; static path > param)",
                    config.routes[w].name
                ),
                None => "it matches, but a more specific path shape took this request".to_owned(),
            },
        };
        if !header {
            out.push_str("\nnear misses:\n");
            header = true;
        }
        let _ = writeln!(out, "  `{}` ({}): {why}", route.name, route.path.raw);
    }
}

fn path_matches(route: &Route, path: &str) -> bool {
    let mut r = matchit::Router::new();
    r.insert(route.path.shape.clone(), ()).is_ok() && r.at(path).is_ok()
}

fn methods(route: &Route) -> String {
    route.methods.as_ref().map_or("any".to_owned(), |m| {
        m.iter().map(Method::as_str).collect::<Vec<_>>().join(", ")
    })
}

/// `fngate explain --schedule NAME`: the next 5 fire times after `now`, in
/// UTC and in the schedule's time zone (window offset included).
pub fn schedule(config: &Config, name: &str, now: std::time::SystemTime) -> Option<String> {
    use std::fmt::Write as _;
    let s = config.schedule(name)?;
    let mut out = String::new();
    let target = match &s.target {
        crate::config::ScheduleTarget::Backend {
            backend,
            method,
            path,
            ..
        } => format!("{method} {path} on backend `{}`", backend.name),
        crate::config::ScheduleTarget::Topic(t) => format!("an event to topic `{t}`"),
    };
    let _ = writeln!(
        out,
        "schedule `{}`: \"{}\" in {}, {target}{}",
        s.name,
        s.cron,
        s.timezone,
        if s.enabled { "" } else { " (disabled)" }
    );
    let offset = chrono::Duration::from_std(s.offset()).unwrap_or_default();
    if !offset.is_zero() {
        let _ = writeln!(
            out,
            "each fire {}ms after its tick (window)",
            offset.num_milliseconds()
        );
    }
    let mut t: chrono::DateTime<chrono::Utc> = now.into();
    for _ in 0..5 {
        let Some(tick) = s.next_tick(t) else { break };
        let fire = tick + offset;
        let _ = writeln!(
            out,
            "  {}  {}",
            fire.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            fire.with_timezone(&s.timezone)
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
        );
        t = tick;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        let text = r#"
            [backends.users]
            urls = ["http://10.0.0.1:9000/api", "http://10.0.0.2:9000/api"]
            [[routes]]
            name = "get-user"
            path = "/users/{id}"
            methods = ["GET"]
            backend = "users"
            rewrite = "/people/{id}"
            [[routes]]
            name = "update-user"
            path = "/users/{id}"
            methods = ["PUT"]
            backend = "users"
            [[routes]]
            name = "tenant"
            path = "/users/{id}"
            methods = ["GET"]
            host = "*.tenant.example"
            backend = "users"
        "#;
        Config::parse(text, "t.toml", &|_| None).expect("valid")
    }

    #[test]
    fn a_match_shows_params_upstreams_and_near_misses() {
        let e = explain(&config(), &Method::GET, "/users/42?x=1", &[]);
        assert!(e.matched);
        let t = e.to_string();
        assert!(t.contains("matched route `get-user`"), "{t}");
        assert!(t.contains("param     id = 42"), "{t}");
        assert!(
            t.contains("upstream  http://10.0.0.1:9000/api/people/42?x=1"),
            "{t}"
        );
        assert!(
            t.contains("upstream  http://10.0.0.2:9000/api/people/42?x=1"),
            "{t}"
        );
        assert!(
            t.contains("`update-user` (/users/{id}): the path matches, but its methods are PUT"),
            "{t}"
        );
        assert!(
            t.contains(
                "`tenant` (/users/{id}): the path matches, but the host must be *.tenant.example"
            ),
            "{t}"
        );
    }

    #[test]
    fn a_more_specific_host_wins_and_the_loser_is_named() {
        let headers = [("Host".to_owned(), "a.tenant.example:8080".to_owned())];
        let t = explain(&config(), &Method::GET, "/users/1", &headers).to_string();
        assert!(t.contains("matched route `tenant`"), "{t}");
        assert!(
            t.contains("`get-user` (/users/{id}): it matches too, but `tenant` is more specific"),
            "{t}"
        );
    }

    #[test]
    fn no_match_gives_405_or_404_and_unsafe_paths_400() {
        let e = explain(&config(), &Method::DELETE, "/users/1", &[]);
        assert!(!e.matched);
        assert!(
            e.to_string()
                .contains("405 Method Not Allowed (Allow: GET, PUT)"),
            "{e}"
        );
        let e = explain(&config(), &Method::GET, "/nothing", &[]);
        assert!(!e.matched && e.to_string().contains("404 Not Found"), "{e}");
        let e = explain(&config(), &Method::GET, "/../etc", &[]);
        assert!(
            !e.matched && e.to_string().contains("400 Bad Request"),
            "{e}"
        );
    }

    #[test]
    fn a_preflight_is_explained_by_the_method_it_asks_about() {
        let text = r#"
            [backends.b]
            urls = ["http://10.0.0.1:9000"]
            [[routes]]
            name = "api"
            path = "/api"
            methods = ["PUT"]
            backend = "b"
            cors = { origins = ["https://app.example"] }
        "#;
        let config = Config::parse(text, "t.toml", &|_| None).expect("valid");
        let headers = [
            ("Origin".to_owned(), "https://app.example".to_owned()),
            ("Access-Control-Request-Method".to_owned(), "PUT".to_owned()),
        ];
        let e = explain(&config, &Method::OPTIONS, "/api", &headers);
        assert!(e.matched, "{e}");
        assert!(e.to_string().contains("CORS preflight for PUT"), "{e}");
        let plain = explain(&config, &Method::OPTIONS, "/api", &[]);
        assert!(!plain.matched, "a plain OPTIONS is a 405 here: {plain}");
    }
}
