//! Signed, expiring URLs for uploaded files (SPEC §8): HMAC-SHA256 over the
//! file's path and the expiry, so a function reads the file it was told of
//! and nothing else, for `url_ttl`. Pure: no IO.

use bytes::Bytes;
use ring::hmac;

/// A delivery's marker: the file's URL under `files_path`; the deliverer
/// swaps it for one signed as the delivery is sent.
pub(crate) const FILE_MARKER: &str = "x-fngate-file";

/// The query that signs `path` until `expires` (Unix seconds).
pub(crate) fn sign(key: &[u8], path: &str, expires: u64) -> String {
    let tag = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, key),
        &message(path, expires),
    );
    format!("expires={expires}&sig={}", to_hex(tag.as_ref()))
}

/// Whether `query` (from [`sign`]) signs `path` and has not expired at `now`.
pub(crate) fn verify(key: &[u8], path: &str, query: Option<&str>, now: u64) -> bool {
    let (mut expires, mut sig) = (None, None);
    for pair in query.unwrap_or_default().split('&') {
        match pair.split_once('=') {
            Some(("expires", v)) => expires = v.parse::<u64>().ok(),
            Some(("sig", v)) => sig = from_hex(v),
            _ => {}
        }
    }
    let (Some(expires), Some(sig)) = (expires, sig) else {
        return false;
    };
    // Constant time: ring compares the tags.
    expires > now
        && hmac::verify(
            &hmac::Key::new(hmac::HMAC_SHA256, key),
            &message(path, expires),
            &sig,
        )
        .is_ok()
}

fn message(path: &str, expires: u64) -> Vec<u8> {
    format!("{path}\n{expires}").into_bytes()
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 128 {
        return None;
    }
    // Digits only: `from_str_radix` alone takes "+1" for 01, so a tag
    // would verify in spellings other than the one issued.
    if !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A delivery's request headers and body once its file marker is swapped for
/// a signed URL, valid for `ttl` from now: into `url` of the event's data.
pub(crate) fn sign_delivery(
    headers: &mut http::HeaderMap,
    body: &mut Bytes,
    key: &[u8],
    files_path: &str,
    ttl: std::time::Duration,
) {
    let Some(marker) = headers.remove(FILE_MARKER) else {
        return;
    };
    let Ok(marker) = marker.to_str() else { return };
    // The path signed is the one the file is read at; the marker may carry a base.
    let at = marker.find(files_path).unwrap_or(0);
    let path = &marker[at..];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let expires = now.saturating_add(ttl.as_secs().max(1));
    let url = format!("{marker}?{}", sign(key, path, expires));
    let Ok(mut json) = serde_json::from_slice::<serde_json::Value>(body) else {
        return;
    };
    // Structured mode nests the data; binary mode sends it as the body.
    let data = if json.get("specversion").is_some() {
        &mut json["data"]
    } else {
        &mut json
    };
    if data.is_object() {
        data["url"] = url.into();
        *body = Bytes::from(json.to_string());
        headers.remove(http::header::CONTENT_LENGTH);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn a_tag_is_hex_digits_only() {
        // Found by fuzz/signed_url: "+1" was read as the byte 01, so a tag
        // verified in spellings other than the one issued.
        assert_eq!(from_hex("+1ff"), None);
        assert_eq!(from_hex("-1"), None);
        assert_eq!(from_hex("01fF"), Some(vec![1, 255]));
        let q = sign(KEY, "/f", 1_000);
        let upper = q
            .replace("sig=", "SIG=")
            .to_uppercase()
            .replace("SIG=", "sig=")
            .replace("EXPIRES", "expires");
        assert!(
            verify(KEY, "/f", Some(&upper), 10),
            "hex in either case is the same tag"
        );
    }

    #[test]
    fn a_signature_holds_for_its_path_until_it_expires() {
        let q = sign(KEY, "/files/up/a/b.png", 1_000);
        assert!(verify(KEY, "/files/up/a/b.png", Some(&q), 999));
        assert!(
            !verify(KEY, "/files/up/a/b.png", Some(&q), 1_000),
            "expired"
        );
        assert!(
            !verify(KEY, "/files/up/a/c.png", Some(&q), 10),
            "another file"
        );
        assert!(!verify(
            b"another key of at least 32 bytes!",
            "/files/up/a/b.png",
            Some(&q),
            10
        ));
        let later = q.replace("expires=1000", "expires=9999");
        assert!(
            !verify(KEY, "/files/up/a/b.png", Some(&later), 10),
            "tampered expiry"
        );
        let flipped = format!("{}0", &q[..q.len() - 1]);
        assert!(!verify(KEY, "/files/up/a/b.png", Some(&flipped), 10) || q.ends_with('0'));
        for bad in [None, Some(""), Some("expires=5"), Some("sig=zz&expires=5")] {
            assert!(!verify(KEY, "/p", bad, 1));
        }
    }
}
