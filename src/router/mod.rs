//! The compiled, immutable route table: host, then path, then method.
//!
//! Hosts are tried most specific first (exact, then wildcards by longest
//! suffix, then routes without a host); the first table whose path and method
//! match wins. Each path shape has one matchit entry with a method table, so
//! `GET /orders/{id}` and `POST /orders/{order_id}` can split one path (CQRS).
//! No IO here: unit-testable without a runtime.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use http::{HeaderValue, Method};

use crate::config::{HostPattern, Route, Shapes};

/// A successful match: the route's index in the config and its params.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    pub route: usize,
    /// Byte ranges of each path param (by position) within the matched path.
    pub params: Vec<Range<usize>>,
}

/// Why no route serves a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("no route matches this host and path")]
    NotFound,
    #[error("the path matches but the method is not allowed (allowed: {allow:?})")]
    MethodNotAllowed { allow: HeaderValue },
    #[error("the Host header `{host:?}` differs from the request URI authority `{authority}`")]
    HostMismatch {
        host: HeaderValue,
        authority: String,
    },
    #[error("HTTP/1.1 request without a Host header")]
    MissingHost,
    #[error("no topic named `{0}`")]
    UnknownTopic(String),
    #[error("unsafe path: {0}")]
    BadPath(#[from] crate::normalize::PathError),
}

#[derive(Debug, Default)]
struct Entry {
    methods: Vec<(Method, usize)>,
    any: Option<usize>,
}

#[derive(Debug, Default)]
struct HostTable {
    paths: matchit::Router<usize>,
    entries: Vec<Entry>,
}

/// A request as the router sees it. The data path and `fngate explain` both
/// build one and call [`RouteTable::resolve`], so they cannot disagree.
#[derive(Debug)]
pub struct Lookup<'a> {
    /// Lower-case, without port.
    pub host: Option<&'a str>,
    /// The method routed by (a WebSocket over HTTP/2 is routed as GET).
    pub method: &'a Method,
    /// Normalised.
    pub path: &'a str,
    /// For a CORS preflight, the method it asks about.
    pub preflight: Option<Method>,
}

/// A routed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub found: Match,
    /// A CORS preflight that fngate answers itself (never forwarded).
    pub preflight: bool,
}

#[derive(Debug, Default)]
pub struct RouteTable {
    exact: HashMap<Box<str>, HostTable>,
    /// Longest suffix first, so `*.eu.example.com` beats `*.example.com`.
    wildcard: Vec<(HostPattern, HostTable)>,
    any: HostTable,
    /// Parallel to the routes: which ones answer CORS preflights.
    cors: Vec<bool>,
}

impl HostTable {
    fn find(&self, method: &Method, path: &str, allow: &mut Vec<Method>) -> Option<Match> {
        let found = self.paths.at(path).ok()?;
        let entry = &self.entries[*found.value];
        let route = entry
            .methods
            .iter()
            .find(|(m, _)| m == method)
            .map(|(_, r)| *r)
            .or(entry.any);
        match route {
            Some(route) => {
                let base = path.as_ptr() as usize;
                let params = found
                    .params
                    .iter()
                    .map(|(_, v)| {
                        let start = v.as_ptr() as usize - base;
                        start..start + v.len()
                    })
                    .collect();
                Some(Match { route, params })
            }
            None => {
                for (m, _) in &entry.methods {
                    if !allow.contains(m) {
                        allow.push(m.clone());
                    }
                }
                None
            }
        }
    }
}

impl RouteTable {
    /// Compiles validated routes. Index `i` in a [`Match`] is `routes[i]`.
    /// The grouping by host and path shape is validation's own
    /// ([`Shapes`]), so a config that validated builds without conflict.
    pub(crate) fn build(routes: &[Arc<Route>]) -> Self {
        let mut table = Self {
            cors: routes.iter().map(|r| r.cors.is_some()).collect(),
            ..Self::default()
        };
        for shapes in Shapes::of(routes).hosts {
            let entries = shapes
                .entries
                .iter()
                .map(|members| {
                    let mut entry = Entry::default();
                    for &i in members {
                        match &routes[i].methods {
                            None => entry.any = Some(i),
                            Some(methods) => {
                                entry.methods.extend(methods.iter().map(|m| (m.clone(), i)))
                            }
                        }
                    }
                    entry
                })
                .collect();
            let host_table = HostTable {
                paths: shapes.paths,
                entries,
            };
            match shapes.host {
                None => table.any = host_table,
                Some(HostPattern::Exact(h)) => {
                    table.exact.insert(h.as_str().into(), host_table);
                }
                Some(pattern @ HostPattern::Wildcard(_)) => {
                    table.wildcard.push((pattern.clone(), host_table));
                }
            }
        }
        // Longest suffix first: the most specific wildcard wins.
        table
            .wildcard
            .sort_by_key(|(p, _)| std::cmp::Reverse(p.to_string().len()));
        table
    }

    /// Whether any route names a host: else a lookup needs none.
    pub fn by_host(&self) -> bool {
        !self.exact.is_empty() || !self.wildcard.is_empty()
    }

    /// Routes a request. A preflight goes by the method it asks about to a
    /// route with CORS, which answers it even when its methods lack OPTIONS;
    /// any other request by its own method.
    pub fn resolve(&self, l: &Lookup<'_>) -> Result<Resolved, RouteError> {
        if let Some(asked) = &l.preflight {
            if let Ok(found) = self.find(l.host, asked, l.path) {
                if self.cors[found.route] {
                    return Ok(Resolved {
                        found,
                        preflight: true,
                    });
                }
            }
        }
        self.find(l.host, l.method, l.path).map(|found| Resolved {
            found,
            preflight: false,
        })
    }

    /// Finds the route for a request. `host` is lower-case without port.
    pub fn find(
        &self,
        host: Option<&str>,
        method: &Method,
        path: &str,
    ) -> Result<Match, RouteError> {
        let mut allow = Vec::new();
        if let Some(host) = host {
            if let Some(t) = self.exact.get(host) {
                if let Some(m) = t.find(method, path, &mut allow) {
                    return Ok(m);
                }
            }
            for (pattern, t) in &self.wildcard {
                if pattern.matches(host) {
                    if let Some(m) = t.find(method, path, &mut allow) {
                        return Ok(m);
                    }
                }
            }
        }
        if let Some(m) = self.any.find(method, path, &mut allow) {
            return Ok(m);
        }
        if allow.is_empty() {
            return Err(RouteError::NotFound);
        }
        let list = allow
            .iter()
            .map(Method::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        Err(RouteError::MethodNotAllowed {
            allow: HeaderValue::from_str(&list).unwrap_or(HeaderValue::from_static("")),
        })
    }
}

/// The method a CORS preflight asks about, when the request is one: OPTIONS
/// with an `Origin` and an `Access-Control-Request-Method`.
pub(crate) fn preflight_method(
    method: &Method,
    has_origin: bool,
    requested: Option<&[u8]>,
) -> Option<Method> {
    if *method != Method::OPTIONS || !has_origin {
        return None;
    }
    Method::from_bytes(requested?).ok()
}

/// The host of an authority or Host value, lower-cased, without port.
pub(crate) fn host_only(authority: &str) -> std::borrow::Cow<'_, str> {
    let host = if authority.starts_with('[') {
        authority
            .find(']')
            .map_or(authority, |end| &authority[..=end])
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn table(routes: &str) -> (Config, RouteTable) {
        let text = format!("[backends.b]\nurls = [\"http://127.0.0.1:1\"]\n{routes}");
        let config = Config::parse(&text, "test.toml", &|_| None).expect("valid config");
        let table = RouteTable::build(&config.routes);
        (config, table)
    }

    fn name(config: &Config, m: Result<Match, RouteError>) -> String {
        match m {
            Ok(m) => config.routes[m.route].name.to_string(),
            Err(e) => format!("{e:?}"),
        }
    }

    #[test]
    fn methods_split_one_path_between_routes() {
        let (c, t) = table(
            r#"
            [[routes]]
            name = "read"
            path = "/orders/{id}"
            methods = ["GET"]
            backend = "b"
            [[routes]]
            name = "write"
            path = "/orders/{order_id}"
            methods = ["POST", "PUT"]
            backend = "b"
            "#,
        );
        assert_eq!(name(&c, t.find(None, &Method::GET, "/orders/1")), "read");
        assert_eq!(name(&c, t.find(None, &Method::PUT, "/orders/1")), "write");
        match t.find(None, &Method::DELETE, "/orders/1") {
            Err(RouteError::MethodNotAllowed { allow }) => assert_eq!(allow, "GET, POST, PUT"),
            other => panic!("expected 405, got {other:?}"),
        }
        assert_eq!(
            t.find(None, &Method::GET, "/orders"),
            Err(RouteError::NotFound)
        );
    }

    #[test]
    fn params_and_catch_all_are_captured_by_position() {
        let (_, t) = table(
            r#"
            [[routes]]
            name = "files"
            path = "/u/{user}/files/{*rest}"
            backend = "b"
            "#,
        );
        let path = "/u/ann/files/a/b.txt";
        let m = t.find(None, &Method::GET, path).expect("match");
        let values: Vec<&str> = m.params.iter().map(|r| &path[r.clone()]).collect();
        assert_eq!(values, ["ann", "a/b.txt"]);
        // A catch-all needs at least one character.
        assert_eq!(
            t.find(None, &Method::GET, "/u/ann/files/"),
            Err(RouteError::NotFound)
        );
    }

    #[test]
    fn exact_host_beats_wildcard_beats_no_host() {
        let (c, t) = table(
            r#"
            [[routes]]
            name = "exact"
            path = "/x"
            host = "api.example.com"
            backend = "b"
            [[routes]]
            name = "wild"
            path = "/x"
            host = "*.example.com"
            backend = "b"
            [[routes]]
            name = "deeper-wild"
            path = "/x"
            host = "*.eu.example.com"
            backend = "b"
            [[routes]]
            name = "anyhost"
            path = "/x"
            backend = "b"
            "#,
        );
        let find = |h: &str| name(&c, t.find(Some(h), &Method::GET, "/x"));
        assert_eq!(find("api.example.com"), "exact");
        assert_eq!(find("web.example.com"), "wild");
        assert_eq!(find("a.b.example.com"), "wild");
        assert_eq!(find("x.eu.example.com"), "deeper-wild");
        assert_eq!(
            find("example.com"),
            "anyhost",
            "a wildcard never matches the apex"
        );
        assert_eq!(find("other.org"), "anyhost");
        assert_eq!(name(&c, t.find(None, &Method::GET, "/x")), "anyhost");
    }

    #[test]
    fn trailing_slash_is_a_different_path() {
        let (_, t) = table(
            r#"
            [[routes]]
            name = "users"
            path = "/users"
            backend = "b"
            "#,
        );
        assert!(t.find(None, &Method::GET, "/users").is_ok());
        assert_eq!(
            t.find(None, &Method::GET, "/users/"),
            Err(RouteError::NotFound)
        );
    }

    #[test]
    fn host_only_strips_port_and_case() {
        assert_eq!(host_only("API.Example.com:8080"), "api.example.com");
        assert_eq!(host_only("[::1]:80"), "[::1]");
        assert_eq!(host_only("example.com."), "example.com");
        assert_eq!(host_only("Example.COM.:443"), "example.com");
        assert_eq!(host_only("[::1]"), "[::1]");
        assert_eq!(host_only("[FE80::1"), "[fe80::1");
        assert_eq!(host_only("a:b:c"), "a:b");
        assert_eq!(host_only("host:"), "host");
        assert_eq!(host_only(""), "");
        assert_eq!(host_only("."), "");
        assert_eq!(host_only("ÄB.example:80"), "Äb.example");
    }

    /// The router against a plain reference matcher, over generated route
    /// sets and requests: hosts (exact, wildcard, none), literal segments,
    /// params, catch-alls, trailing slashes and method lists.
    mod differential {
        use super::*;
        use proptest::prelude::*;
        use proptest::sample::select;

        #[derive(Debug, Clone)]
        struct GenRoute {
            host: Option<&'static str>,
            /// Segments after the leading `/`: a literal, `{}` a param, `{*}` a catch-all.
            segments: Vec<&'static str>,
            methods: Option<Vec<&'static str>>,
        }

        fn route() -> impl Strategy<Value = GenRoute> {
            let host = select(vec![None, Some("x.com"), Some("*.com"), Some("*.x.com")]);
            let segment = select(vec!["a", "b", "", "{}", "{}"]);
            let last = select(vec!["a", "b", "", "{}", "{*}"]);
            let methods = select(vec![
                None,
                Some(vec!["GET"]),
                Some(vec!["POST"]),
                Some(vec!["GET", "POST"]),
            ]);
            (host, prop::collection::vec(segment, 0..3), last, methods).prop_map(
                |(host, mut segments, last, methods)| {
                    segments.push(last);
                    GenRoute {
                        host,
                        segments,
                        methods,
                    }
                },
            )
        }

        fn request() -> impl Strategy<Value = (Option<&'static str>, &'static str, String)> {
            let host = select(vec![
                None,
                Some("x.com"),
                Some("y.x.com"),
                Some("z.com"),
                Some("com"),
            ]);
            let method = select(vec!["GET", "POST", "DELETE"]);
            let segments = prop::collection::vec(select(vec!["a", "b", "c"]), 0..4);
            let slash = any::<bool>();
            (host, method, segments, slash).prop_map(|(host, method, segments, slash)| {
                let mut path = format!("/{}", segments.join("/"));
                if slash && !segments.is_empty() {
                    path.push('/');
                }
                (host, method, path)
            })
        }

        fn toml(routes: &[GenRoute]) -> String {
            let mut out = String::from("[backends.b]\nurls = [\"http://127.0.0.1:1\"]\n");
            for (i, r) in routes.iter().enumerate() {
                let mut n = 0;
                let path: Vec<String> = r
                    .segments
                    .iter()
                    .map(|s| {
                        n += 1;
                        match *s {
                            "{}" => format!("{{p{n}}}"),
                            "{*}" => format!("{{*p{n}}}"),
                            lit => lit.to_owned(),
                        }
                    })
                    .collect();
                out += &format!(
                    "[[routes]]\nname = \"r{i}\"\npath = \"/{}\"\nbackend = \"b\"\n",
                    path.join("/")
                );
                if let Some(h) = r.host {
                    out += &format!("host = \"{h}\"\n");
                }
                if let Some(m) = &r.methods {
                    out += &format!("methods = {m:?}\n");
                }
            }
            out
        }

        /// The pattern's rank per segment (literal 2, param 1, catch-all 0)
        /// and the param values, when it matches `path`.
        fn reference_match(r: &GenRoute, path: &str) -> Option<(Vec<u8>, Vec<String>)> {
            let segs: Vec<&str> = path[1..].split('/').collect();
            let (mut rank, mut values) = (Vec::new(), Vec::new());
            for (i, p) in r.segments.iter().enumerate() {
                match *p {
                    "{*}" => {
                        let rest = segs.get(i..).map(|s| s.join("/")).unwrap_or_default();
                        if rest.is_empty() {
                            return None;
                        }
                        rank.push(0);
                        values.push(rest);
                        return Some((rank, values));
                    }
                    "{}" => {
                        let seg = segs.get(i).filter(|s| !s.is_empty())?;
                        rank.push(1);
                        values.push((*seg).to_owned());
                    }
                    lit => {
                        if segs.get(i) != Some(&lit) {
                            return None;
                        }
                        rank.push(2);
                    }
                }
            }
            (segs.len() == r.segments.len()).then_some((rank, values))
        }

        fn host_fits(pattern: Option<&str>, host: Option<&str>) -> bool {
            match (pattern, host) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(p), Some(h)) => match p.strip_prefix('*') {
                    Some(suffix) => h.len() > suffix.len() && h.ends_with(suffix),
                    None => p == h,
                },
            }
        }

        /// Ok(route, params), or Err(allowed methods; empty for 404).
        fn reference(
            routes: &[GenRoute],
            host: Option<&str>,
            method: &str,
            path: &str,
        ) -> Result<(usize, Vec<String>), Vec<String>> {
            // Host tiers: exact, wildcards by longest suffix, then none.
            let mut tiers: Vec<Option<&str>> = routes.iter().map(|r| r.host).collect();
            tiers.sort_by_key(|h| match h {
                Some(h) if !h.starts_with('*') => (0, 0),
                Some(h) => (1, usize::MAX - h.len()),
                None => (2, 0),
            });
            tiers.dedup();
            let mut allow = Vec::new();
            for tier in tiers.into_iter().filter(|t| host_fits(*t, host)) {
                let found: Vec<(usize, Vec<u8>, Vec<String>)> = routes
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.host == tier)
                    .filter_map(|(i, r)| reference_match(r, path).map(|(rank, v)| (i, rank, v)))
                    .collect();
                let Some(best) = found.iter().map(|(_, rank, _)| rank).max() else {
                    continue;
                };
                let entry: Vec<&(usize, Vec<u8>, Vec<String>)> =
                    found.iter().filter(|(_, rank, _)| rank == best).collect();
                let by_method = entry.iter().find(|(i, _, _)| {
                    routes[*i]
                        .methods
                        .as_ref()
                        .is_some_and(|m| m.contains(&method))
                });
                let any = entry.iter().find(|(i, _, _)| routes[*i].methods.is_none());
                if let Some((i, _, v)) = by_method.or(any) {
                    return Ok((*i, v.clone()));
                }
                for (i, _, _) in &entry {
                    for m in routes[*i].methods.iter().flatten() {
                        if !allow.iter().any(|a| a == m) {
                            allow.push((*m).to_owned());
                        }
                    }
                }
            }
            Err(allow)
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

            #[test]
            fn the_route_table_agrees_with_the_reference(
                routes in prop::collection::vec(route(), 1..6),
                requests in prop::collection::vec(request(), 1..12),
            ) {
                let text = toml(&routes);
                // Sets that validation refuses (two routes of one shape and method) have no table.
                let Ok(config) = Config::parse(&text, "gen.toml", &|_| None) else {
                    return Ok(());
                };
                let table = RouteTable::build(&config.routes);
                for (host, method, path) in &requests {
                    let m = Method::from_bytes(method.as_bytes()).expect("a method");
                    let got = match table.find(*host, &m, path) {
                        Ok(found) => Ok((
                            found.route,
                            found.params.iter().map(|r| path[r.clone()].to_owned()).collect(),
                        )),
                        Err(RouteError::NotFound) => Err(Vec::new()),
                        Err(RouteError::MethodNotAllowed { allow }) => {
                            let allow = allow.to_str().expect("ASCII");
                            Err(allow.split(", ").map(str::to_owned).collect())
                        }
                        Err(other) => panic!("{other:?}"),
                    };
                    let want = reference(&routes, *host, method, path);
                    prop_assert_eq!(&got, &want, "{} {:?} {}\n{}", method, host, path, text);
                }
            }
        }
    }
}
