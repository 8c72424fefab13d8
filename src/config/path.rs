//! Route path patterns, host patterns and rewrite templates: parsed once at load.

use std::fmt;

/// One `{name}` or `{*name}` in a route path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    pub name: String,
    pub catch_all: bool,
}

/// `/users/{id}/files/{*rest}`: literal segments, named segments, a final catch-all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    pub raw: String,
    pub params: Vec<Param>,
    /// The pattern with params renamed by position (`/users/{p0}`), so that
    /// `GET /orders/{id}` and `POST /orders/{order_id}` share one router entry.
    pub shape: String,
}

/// Why a path, host or template pattern is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("a {0} must start with `/`")]
    NoLeadingSlash(&'static str),
    #[error("`{{{0}}}`: a parameter name is letters, digits and `_`")]
    ParamName(String),
    #[error("`{{*{0}}}` must be the last segment")]
    CatchAllNotLast(String),
    #[error("parameter `{0}` appears twice")]
    ParamTwice(String),
    #[error("segment `{0}`: a parameter takes a whole segment, as `{{name}}`")]
    PartialParam(String),
    #[error("empty segment (`//`): paths are matched after `//` is collapsed")]
    EmptySegment,
    #[error("dot segments cannot match: request paths are normalised first")]
    DotSegment,
    #[error("a `.` or `..` segment (or `%2E`) would climb out of the upstream path")]
    DotInTarget,
    #[error(
        "segment `{0}` is not in normal form (request paths are normalised before matching: \
         unreserved characters decoded, hex in upper case)"
    )]
    NotNormal(String),
    #[error(
        "`{0}` is not a host name (exact `api.example.com` or wildcard `*.example.com`, no port)"
    )]
    Host(String),
    #[error("unclosed `{{`")]
    Unclosed,
    #[error("unmatched `}}`")]
    Unmatched,
    #[error(
        "placeholder `{{{name}}}` has no source: the path defines {}",
        defined(known)
    )]
    NoSource { name: String, known: Vec<String> },
}

fn defined(known: &[String]) -> String {
    if known.is_empty() {
        "no parameters".to_owned()
    } else {
        format!("{{{}}}", known.join("}, {"))
    }
}

impl PathPattern {
    pub fn parse(raw: &str) -> Result<Self, PatternError> {
        if !raw.starts_with('/') {
            return Err(PatternError::NoLeadingSlash("path"));
        }
        let mut params = Vec::new();
        let mut shape = String::with_capacity(raw.len());
        let segments: Vec<&str> = raw[1..].split('/').collect();
        for (i, seg) in segments.iter().enumerate() {
            shape.push('/');
            if let Some(inner) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                let (name, catch_all) = match inner.strip_prefix('*') {
                    Some(name) => (name, true),
                    None => (inner, false),
                };
                if !is_ident(name) {
                    return Err(PatternError::ParamName(inner.to_owned()));
                }
                if catch_all && i + 1 != segments.len() {
                    return Err(PatternError::CatchAllNotLast(name.to_owned()));
                }
                if params.iter().any(|p: &Param| p.name == name) {
                    return Err(PatternError::ParamTwice(name.to_owned()));
                }
                let n = params.len();
                shape.push_str(&if catch_all {
                    format!("{{*p{n}}}")
                } else {
                    format!("{{p{n}}}")
                });
                params.push(Param {
                    name: name.to_owned(),
                    catch_all,
                });
            } else if seg.contains(['{', '}']) {
                return Err(PatternError::PartialParam((*seg).to_owned()));
            } else if seg.is_empty() && i + 1 != segments.len() {
                return Err(PatternError::EmptySegment);
            } else if *seg == "." || *seg == ".." {
                return Err(PatternError::DotSegment);
            } else if crate::normalize::normalize_segment(seg).as_deref() != Ok(*seg) {
                return Err(PatternError::NotNormal((*seg).to_owned()));
            } else {
                shape.push_str(seg);
            }
        }
        Ok(Self {
            raw: raw.to_owned(),
            params,
            shape,
        })
    }

    /// The literal part before the first parameter.
    pub fn literal_prefix(&self) -> &str {
        match self.raw.find('{') {
            Some(i) => &self.raw[..i],
            None => &self.raw,
        }
    }
}

pub(crate) fn is_ident(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `api.example.com` or `*.example.com` (one or more labels, not the apex).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostPattern {
    Exact(String),
    /// The suffix with its leading dot: `.example.com`.
    Wildcard(String),
}

impl HostPattern {
    pub fn parse(raw: &str) -> Result<Self, PatternError> {
        let host = raw.trim().to_ascii_lowercase();
        let (wild, name) = match host.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, host.as_str()),
        };
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        };
        if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
            return Err(PatternError::Host(raw.to_owned()));
        }
        Ok(if wild {
            Self::Wildcard(format!(".{name}"))
        } else {
            Self::Exact(name.to_owned())
        })
    }
}

impl HostPattern {
    /// `host` is lower-case without port. A wildcard needs at least one label
    /// before its suffix: `*.example.com` never matches `example.com`.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            Self::Exact(h) => h == host,
            Self::Wildcard(suffix) => host.len() > suffix.len() && host.ends_with(suffix.as_str()),
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(h) => f.write_str(h),
            Self::Wildcard(suffix) => write!(f, "*{suffix}"),
        }
    }
}

/// A rewrite target such as `/api/users/{id}`: literals and parameter references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub raw: String,
    pub parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Literal(String),
    /// Index into the route's path params.
    Param(usize),
}

/// A piece of a template: literal text, or the inside of a `{...}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Piece<'a> {
    Literal(&'a str),
    Placeholder(&'a str),
}

/// Splits a template at its `{...}` placeholders (rewrites, aggregate calls).
pub(crate) fn pieces(raw: &str) -> Result<Vec<Piece<'_>>, PatternError> {
    let mut out = Vec::new();
    let mut rest = raw;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            return Err(PatternError::Unclosed);
        };
        if open > 0 {
            out.push(Piece::Literal(&rest[..open]));
        }
        out.push(Piece::Placeholder(&rest[open + 1..open + close]));
        rest = &rest[open + close + 1..];
    }
    if rest.contains('}') {
        return Err(PatternError::Unmatched);
    }
    if !rest.is_empty() {
        out.push(Piece::Literal(rest));
    }
    Ok(out)
}

impl Template {
    /// Parses `raw`, resolving each `{name}` against the route's params.
    pub fn parse(raw: &str, params: &[Param]) -> Result<Self, PatternError> {
        if !raw.starts_with('/') {
            return Err(PatternError::NoLeadingSlash("rewrite"));
        }
        if crate::normalize::has_dot_segment(raw) {
            return Err(PatternError::DotInTarget);
        }
        let mut parts = Vec::new();
        for piece in pieces(raw)? {
            let name = match piece {
                Piece::Literal(l) => {
                    parts.push(Part::Literal(l.to_owned()));
                    continue;
                }
                Piece::Placeholder(name) => name,
            };
            let name = name.strip_prefix('*').unwrap_or(name);
            let Some(index) = params.iter().position(|p| p.name == name) else {
                return Err(PatternError::NoSource {
                    name: name.to_owned(),
                    known: params.iter().map(|p| p.name.clone()).collect(),
                });
            };
            parts.push(Part::Param(index));
        }
        Ok(Self {
            raw: raw.to_owned(),
            parts,
        })
    }

    pub fn render(&self, values: &[&str], out: &mut String) {
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Param(i) => out.push_str(values.get(*i).copied().unwrap_or_default()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_split_at_placeholders_and_refuse_stray_braces() {
        assert_eq!(
            pieces("/a/{id}?x={user.seg}").unwrap(),
            [
                Piece::Literal("/a/"),
                Piece::Placeholder("id"),
                Piece::Literal("?x="),
                Piece::Placeholder("user.seg"),
            ]
        );
        assert_eq!(pieces("/a/{id").unwrap_err().to_string(), "unclosed `{`");
        assert_eq!(pieces("/a/id}").unwrap_err().to_string(), "unmatched `}`");
    }

    #[test]
    fn shapes_rename_params_by_position() {
        let a = PathPattern::parse("/orders/{id}").expect("valid");
        let b = PathPattern::parse("/orders/{order_id}").expect("valid");
        assert_eq!(a.shape, b.shape);
        let c = PathPattern::parse("/files/{*rest}").expect("valid");
        assert_eq!(c.shape, "/files/{*p0}");
        assert!(c.params[0].catch_all);
    }

    #[test]
    fn bad_paths_are_refused() {
        for bad in [
            "users",
            "/a/{*rest}/b",
            "/a/{x}{y}",
            "/a//b",
            "/a/../b",
            "/a/%7euser",
            "/{a}/{a}",
            "/a{b}",
        ] {
            assert!(PathPattern::parse(bad).is_err(), "{bad} should be refused");
        }
        assert!(PathPattern::parse("/users/").is_ok());
    }

    #[test]
    fn hosts_parse_exact_and_wildcard() {
        assert_eq!(
            HostPattern::parse("API.example.com"),
            Ok(HostPattern::Exact("api.example.com".into()))
        );
        assert_eq!(
            HostPattern::parse("*.example.com"),
            Ok(HostPattern::Wildcard(".example.com".into()))
        );
        assert!(HostPattern::parse("example.com:80").is_err());
        assert!(HostPattern::parse("*").is_err());
    }

    #[test]
    fn rewrites_with_dot_segments_are_refused() {
        let p = PathPattern::parse("/u/{id}").expect("valid");
        for bad in ["/a/../{id}", "/./{id}", "/%2E%2e/{id}", "/{id}/.."] {
            assert_eq!(
                Template::parse(bad, &p.params),
                Err(PatternError::DotInTarget),
                "{bad}"
            );
        }
        assert!(Template::parse("/a/...{id}/.x", &p.params).is_ok());
    }

    #[test]
    fn templates_resolve_params_and_refuse_unknown_ones() {
        let p = PathPattern::parse("/u/{id}/{*rest}").expect("valid");
        let t = Template::parse("/api/{rest}/x/{id}", &p.params).expect("valid");
        let mut out = String::new();
        t.render(&["42", "a/b"], &mut out);
        assert_eq!(out, "/api/a/b/x/42");
        let err = Template::parse("/api/{nope}", &p.params).expect_err("unknown");
        assert!(err.to_string().contains("no source"), "{err}");
    }
}
