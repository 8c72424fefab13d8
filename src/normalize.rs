//! Request path normalisation (SPEC §3), shared by config validation and routing.
//!
//! Dot segments (also `%2e%2e`) are resolved, `//` collapsed, percent-encoded
//! unreserved characters decoded and other escapes upper-cased. `%2F` stays
//! encoded, so it is never a separator. A path that climbs above `/` is refused.

use std::borrow::Cow;

/// Why a request path cannot be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path does not start with `/`")]
    NotAbsolute,
    #[error("the path has an invalid percent-encoding")]
    BadEscape,
    #[error("the path climbs above `/`")]
    AboveRoot,
}

/// Normalises a request path (without its query). Most paths are already
/// normal and come back borrowed.
pub(crate) fn normalize_path(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let bytes = path.as_bytes();
    let needs_work = bytes
        .windows(2)
        .any(|w| w[0] == b'%' || (w[0] == b'/' && (w[1] == b'/' || w[1] == b'.')))
        || bytes.last() == Some(&b'%');
    if !needs_work {
        return Ok(Cow::Borrowed(path));
    }
    let mut out: Vec<String> = Vec::new();
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len() - 1;
    let mut trailing_slash = false;
    for (i, raw) in segments.iter().enumerate() {
        let seg = normalize_segment(raw)?;
        trailing_slash = i == last;
        match seg.as_str() {
            "" | "." => {}
            ".." => {
                if out.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
            }
            _ => {
                out.push(seg);
                trailing_slash = false;
            }
        }
    }
    let mut normal = String::with_capacity(path.len());
    for seg in &out {
        normal.push('/');
        normal.push_str(seg);
    }
    if trailing_slash || normal.is_empty() {
        normal.push('/');
    }
    Ok(Cow::Owned(normal))
}

/// Decodes escaped unreserved characters and upper-cases the other escapes.
pub(crate) fn normalize_segment(seg: &str) -> Result<String, PathError> {
    let bytes = seg.as_bytes();
    let mut out = String::with_capacity(seg.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadEscape)?;
            let hi = hex_val(hex[0]).ok_or(PathError::BadEscape)?;
            let lo = hex_val(hex[1]).ok_or(PathError::BadEscape)?;
            let c = hi << 4 | lo;
            if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                out.push(c as char);
            } else {
                out.push('%');
                out.push(char::from(b"0123456789ABCDEF"[usize::from(hi)]));
                out.push(char::from(b"0123456789ABCDEF"[usize::from(lo)]));
            }
            i += 3;
        } else {
            // The URI parser admits only ASCII here; anything else is refused.
            if !bytes[i].is_ascii() {
                return Err(PathError::BadEscape);
            }
            out.push(bytes[i] as char);
            i += 1;
        }
    }
    Ok(out)
}

/// Whether a path (up to its query) has a `.` or `..` segment, escaped
/// (`%2E`) or not: what a server resolving dot segments would climb by.
pub(crate) fn has_dot_segment(path: &str) -> bool {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    path.split('/').any(|seg| {
        // Without allocating: aggregates check every call path they render.
        let (mut rest, mut dots) = (seg.as_bytes(), 0);
        while let Some(next) = rest.strip_prefix(b".").or_else(|| {
            rest.get(..3)
                .filter(|e| e.eq_ignore_ascii_case(b"%2e"))
                .map(|_| &rest[3..])
        }) {
            rest = next;
            dots += 1;
        }
        rest.is_empty() && matches!(dots, 1 | 2)
    })
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Result<String, PathError> {
        normalize_path(p).map(Cow::into_owned)
    }

    #[test]
    fn normal_paths_are_borrowed() {
        assert!(matches!(normalize_path("/users/42"), Ok(Cow::Borrowed(_))));
        assert!(matches!(normalize_path("/users/"), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn dot_segments_and_double_slashes_are_resolved() {
        assert_eq!(n("/a/./b/../c").as_deref(), Ok("/a/c"));
        assert_eq!(n("/a//b///c").as_deref(), Ok("/a/b/c"));
        assert_eq!(n("/a/%2e%2E/b").as_deref(), Ok("/b"));
        assert_eq!(n("/a/b/..").as_deref(), Ok("/a/"));
        assert_eq!(n("/a/.").as_deref(), Ok("/a/"));
        assert_eq!(n("//").as_deref(), Ok("/"));
        assert_eq!(n("/users/").as_deref(), Ok("/users/"));
    }

    #[test]
    fn unreserved_escapes_decode_and_slash_stays_encoded() {
        assert_eq!(n("/%7euser/%41").as_deref(), Ok("/~user/A"));
        assert_eq!(n("/a%2fb/%2F").as_deref(), Ok("/a%2Fb/%2F"));
        assert_eq!(n("/a%20b").as_deref(), Ok("/a%20b"));
    }

    #[test]
    fn dot_segments_are_found_escaped_or_not() {
        for dotted in ["/a/..", "/a/./b", "/%2E%2e/x", "/a/%2E?q", "/.", ".."] {
            assert!(has_dot_segment(dotted), "{dotted}");
        }
        for clean in ["/a/...", "/a/.b/", "/x%2E", "/a?x=/../", "/", "/a/b"] {
            assert!(!has_dot_segment(clean), "{clean}");
        }
    }

    #[test]
    fn unsafe_paths_are_refused() {
        assert_eq!(n("/.."), Err(PathError::AboveRoot));
        assert_eq!(n("/a/../../etc/passwd"), Err(PathError::AboveRoot));
        assert_eq!(n("/%2e%2e/x"), Err(PathError::AboveRoot));
        assert_eq!(n("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(n("/a%4"), Err(PathError::BadEscape));
        assert_eq!(n("*"), Err(PathError::NotAbsolute));
    }
}
