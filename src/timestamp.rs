//! Now as RFC 3339 UTC text for log lines (`2026-12-02T02:57:36.123Z`). The
//! date and time of day are formatted once a second per thread; each line
//! only writes its fraction. humantime's formatter, per line, cost about 700
//! instructions for each of an access-log line's two timestamps.

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

/// `YYYY-MM-DDTHH:MM:SS`.
const SECONDS: usize = 19;

thread_local! {
    /// The second last formatted on this thread, and its text.
    static SECOND: Cell<(u64, [u8; SECONDS])> = const { Cell::new((u64::MAX, [0; SECONDS])) };
}

/// A formatted timestamp, on the stack.
#[derive(Clone, Copy)]
pub(crate) struct Stamp {
    text: [u8; SECONDS + 8],
    len: u8,
}

impl Stamp {
    pub(crate) fn as_str(&self) -> &str {
        // Only ASCII digits and separators are ever written.
        std::str::from_utf8(&self.text[..usize::from(self.len)]).unwrap_or_default()
    }
}

/// Now, with milliseconds (humantime's `format_rfc3339_millis`).
pub(crate) fn millis() -> Stamp {
    at(SystemTime::now(), 3)
}

/// Now, with microseconds (humantime's `format_rfc3339_micros`).
pub(crate) fn micros() -> Stamp {
    at(SystemTime::now(), 6)
}

/// `time` with `digits` (at most 7) digits of the second's fraction. A time
/// before 1970 reads as 1970 (humantime would panic).
fn at(time: SystemTime, digits: u32) -> Stamp {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (cached, mut day) = SECOND.get();
    if cached != secs {
        let whole = UNIX_EPOCH + std::time::Duration::from_secs(secs);
        let text = humantime::format_rfc3339_seconds(whole).to_string();
        day.copy_from_slice(&text.as_bytes()[..SECONDS]);
        SECOND.set((secs, day));
    }
    let mut text = [0u8; SECONDS + 8];
    text[..SECONDS].copy_from_slice(&day);
    text[SECONDS] = b'.';
    let mut fraction = since.subsec_nanos() / 10u32.pow(9 - digits);
    let end = SECONDS + 1 + digits as usize;
    for d in text[SECONDS + 1..end].iter_mut().rev() {
        *d = b'0' + (fraction % 10) as u8;
        fraction /= 10;
    }
    text[end] = b'Z';
    Stamp {
        text,
        len: (end + 1) as u8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Byte for byte humantime's text, across second, day and year boundaries
    /// and with the cache warm and cold.
    #[test]
    fn the_same_text_as_humantime() {
        let base = UNIX_EPOCH + Duration::from_secs(1_798_761_599); // 2026-12-31T23:59:59Z
        for step in [
            0u64,
            1,
            999_999,
            1_000_000,
            999_999_999,
            1_000_000_000,
            1_500_000_001,
        ] {
            for back in [0, 86_400_u64 * 400] {
                let t = base - Duration::from_secs(back) + Duration::from_nanos(step);
                assert_eq!(
                    at(t, 3).as_str(),
                    humantime::format_rfc3339_millis(t).to_string()
                );
                assert_eq!(
                    at(t, 6).as_str(),
                    humantime::format_rfc3339_micros(t).to_string()
                );
            }
        }
        assert_eq!(
            at(UNIX_EPOCH - Duration::from_secs(5), 3).as_str(),
            "1970-01-01T00:00:00.000Z"
        );
        assert_eq!(millis().as_str().len(), 24);
        assert_eq!(micros().as_str().len(), 27);
    }
}
