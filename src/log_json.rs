//! `--log-format json`: one JSON object per event, the object
//! tracing-subscriber's JSON format with `flatten_event` writes (timestamp,
//! level, the fields in order, target), built in one string. Theirs serializes
//! each field through serde_json into a `fmt::Write` adapter: 29,000
//! instructions per access-log line under callgrind, a third of a logged
//! request's cost.

use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::sync::OnceLock;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_appender::non_blocking::NonBlocking;
use tracing_log::NormalizeEvent;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The event formatter for `fmt::layer().event_format(Json)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

impl<S, N> FormatEvent<S, N> for Json
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // A `log` record's own target, as tracing-subscriber names it.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        // The same head and tail as the access log's direct lines.
        let mut line = Line::new(*meta.level());
        event.record(&mut Fields(&mut line.0));
        writer.write_str(&line.finish(meta.target()))
    }
}

/// Where `--log-format json` writes, for the lines that skip the tracing
/// event: the access log's, one per request. Going through an event cost
/// 6,800 instructions a line, most of it a dynamic call and an escape scan
/// per field name; the access log knows its fields, so it writes them itself.
static DIRECT: OnceLock<NonBlocking> = OnceLock::new();

/// Lets the access log write its JSON lines to `writer` itself (the same
/// writer the `Json` formatter's layer writes to, so lines stay in order).
pub fn write_access_log_to(writer: NonBlocking) {
    let _ = DIRECT.set(writer);
}

/// One JSON line, built as the `Json` formatter builds an event's: the same
/// bytes for the same fields, keys written as given.
pub(crate) struct Line(String);

impl Line {
    /// A line at `level`, when lines are written directly (`--log-format json`).
    pub(crate) fn direct(level: tracing::Level) -> Option<Self> {
        DIRECT.get()?;
        Some(Self::new(level))
    }

    pub(crate) fn new(level: tracing::Level) -> Self {
        let mut line = String::with_capacity(512);
        line.push_str("{\"timestamp\":\"");
        line.push_str(crate::timestamp::micros().as_str());
        line.push_str("\",\"level\":\"");
        line.push_str(level.as_str());
        line.push('"');
        Self(line)
    }

    /// `key` is a field name, which needs no escape (checked in tests).
    fn key(&mut self, key: &str) {
        debug_assert!(first_escaped(key.as_bytes()).is_none());
        self.0.push_str(",\"");
        self.0.push_str(key);
        self.0.push_str("\":");
    }

    pub(crate) fn str(&mut self, key: &str, value: &str) {
        self.key(key);
        string(&mut self.0, value);
    }

    pub(crate) fn u64(&mut self, key: &str, value: u64) {
        self.key(key);
        self.0.push_str(itoa::Buffer::new().format(value));
    }

    pub(crate) fn f64(&mut self, key: &str, value: f64) {
        self.key(key);
        Fields(&mut self.0).f64(value);
    }

    pub(crate) fn finish(mut self, target: &str) -> String {
        self.0.push_str(",\"target\":");
        string(&mut self.0, target);
        self.0.push_str("}\n");
        self.0
    }

    /// Queues the line for the log's writer thread.
    pub(crate) fn write(self, target: &str) {
        if let Some(writer) = DIRECT.get() {
            let _ = writer.clone().write_all(self.finish(target).as_bytes());
        }
    }
}

/// Appends `,"name":value` per field.
struct Fields<'a>(&'a mut String);

impl Fields<'_> {
    /// The key, unless the field is a `log` record's metadata (`log.target`, ...).
    fn key(&mut self, field: &Field) -> bool {
        if field.name().starts_with("log.") {
            return false;
        }
        self.0.push(',');
        string(self.0, field.name());
        self.0.push(':');
        true
    }
}

impl Fields<'_> {
    fn f64(&mut self, value: f64) {
        // JSON has no NaN or infinity; serde_json writes null too. Finite
        // values are written by serde_json's own float formatter.
        if value.is_finite() {
            self.0.push_str(zmij::Buffer::new().format_finite(value));
        } else {
            self.0.push_str("null");
        }
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.key(field) {
            string(self.0, value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.key(field) {
            // Formatted in place between its quotes; only text that needs
            // escaping is moved out to be escaped.
            self.0.push('"');
            let start = self.0.len();
            let _ = write!(self.0, "{value:?}");
            if first_escaped(&self.0.as_bytes()[start..]).is_some() {
                let text = self.0.split_off(start - 1);
                string(self.0, &text[1..]);
            } else {
                self.0.push('"');
            }
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if self.key(field) {
            string(self.0, &value.to_string());
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.key(field) {
            self.0.push_str(itoa::Buffer::new().format(value));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.key(field) {
            self.0.push_str(itoa::Buffer::new().format(value));
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.key(field) {
            self.0.push_str(if value { "true" } else { "false" });
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if self.key(field) {
            self.f64(value);
        }
    }
}

/// `s` as a JSON string, escaped as serde_json does. Most strings need no
/// escape: a scan eight bytes at a time finds the next byte that does, and
/// the clean run before it is copied whole.
fn string(out: &mut String, s: &str) {
    out.push('"');
    let bytes = s.as_bytes();
    let mut clean = 0;
    while let Some(at) = first_escaped(&bytes[clean..]) {
        let i = clean + at;
        out.push_str(&s[clean..i]);
        match bytes[i] {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x08 => out.push_str("\\b"),
            0x0c => out.push_str("\\f"),
            b => {
                let _ = write!(out, "\\u{b:04x}");
            }
        }
        clean = i + 1;
    }
    out.push_str(&s[clean..]);
    out.push('"');
}

/// A byte JSON strings must escape: a control byte, `"` or `\\`.
fn escaped(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// The index of the first byte to escape. Per eight bytes, the classic
/// has-a-byte-below-n test (`(w - n·0x01…) & !w & 0x80…`) says whether any
/// byte is a control byte or, after an xor, a quote or a backslash; only a
/// word that has one is searched byte by byte.
fn first_escaped(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = ONES << 7;
    let below = |w: u64, n: u64| w.wrapping_sub(ONES * n) & !w & HIGH;
    let mut words = bytes.chunks_exact(8);
    let mut at = 0;
    for word in &mut words {
        let mut w = [0; 8];
        w.copy_from_slice(word);
        let w = u64::from_ne_bytes(w);
        if below(w, 0x20) | below(w ^ (ONES * 0x22), 1) | below(w ^ (ONES * 0x5c), 1) != 0 {
            return word.iter().position(|&b| escaped(b)).map(|i| at + i);
        }
        at += 8;
    }
    let rest = words.remainder();
    rest.iter().position(|&b| escaped(b)).map(|i| at + i)
}

/// The lines `emit` logs through a subscriber with the `Json` formatter.
#[cfg(test)]
pub(crate) fn captured(emit: impl FnOnce()) -> Vec<String> {
    tests::lines(
        |w| {
            Box::new(
                tracing_subscriber::fmt()
                    .event_format(Json)
                    .with_writer(w)
                    .finish(),
            )
        },
        emit,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::fmt::MakeWriter;

    #[derive(Clone, Default)]
    pub(super) struct Buf(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    /// The events of a request's life, as the gateway logs them.
    fn emit() {
        let err = io::Error::other("refused \"now\"");
        tracing::info!(target: "fngate::access", ts = "2026-12-02T00:00:00.000Z",
            request_id = "f2f1", route = "fn", method = "GET", path = "/a\"b\\c\n\u{1}é",
            status = 200u64, duration_ms = 88.359922, whole = 5.0, bytes_in = 0u64,
            client_ip = %"127.0.0.1", consumer = "-", error = "-");
        tracing::warn!(
            attempt = -3i64,
            ok = true,
            nan = f64::NAN,
            why = %"a \"quoted\"\tword",
            big = 1.0e21,
            small = 1.5e-7,
            "upstream attempt failed: {}",
            "why"
        );
        tracing::error!(
            error = &err as &(dyn std::error::Error + 'static),
            "no store"
        );
    }

    pub(super) fn lines(
        make: impl FnOnce(Buf) -> Box<dyn Subscriber + Send + Sync>,
        emit: impl FnOnce(),
    ) -> Vec<String> {
        let buf = Buf::default();
        tracing::subscriber::with_default(make(buf.clone()), emit);
        let bytes = buf.0.lock().expect("lock").clone();
        let text = String::from_utf8(bytes).expect("utf-8");
        assert!(text.ends_with('\n'));
        text.lines().map(str::to_owned).collect()
    }

    /// The line without its timestamp's value (each line reads its own clock).
    fn untimed(line: &str) -> (String, usize) {
        let start = "{\"timestamp\":\"".len();
        let len = line[start..].find('"').expect("a timestamp");
        (format!("{}{}", &line[..start], &line[start + len..]), len)
    }

    /// Byte for byte what tracing-subscriber's JSON format writes, the
    /// timestamps' values aside (of the same length): fields, their order,
    /// escapes and number formats.
    #[test]
    fn the_same_lines_as_tracing_subscribers_json_format() {
        let ours = captured(emit);
        let theirs = lines(
            |w| {
                Box::new(
                    tracing_subscriber::fmt()
                        .json()
                        .flatten_event(true)
                        .with_current_span(false)
                        .with_span_list(false)
                        .with_writer(w)
                        .finish(),
                )
            },
            emit,
        );
        assert_eq!(ours.len(), 3);
        assert_eq!(theirs.len(), 3);
        for (a, b) in ours.iter().zip(&theirs) {
            assert_eq!(untimed(a), untimed(b));
            let v: serde_json::Value =
                serde_json::from_str(a).unwrap_or_else(|e| panic!("{e}: {a}"));
            assert!(v.is_object(), "{a}");
        }
    }

    #[test]
    fn strings_are_escaped_as_json_wants() {
        let raw = "a\"b\\c\n\r\t\u{8}\u{c}\u{1}\u{1f}é\u{7f}";
        let mut s = String::new();
        string(&mut s, raw);
        assert_eq!(
            s,
            format!(r#""a\"b\\c\n\r\t\b\f\u0001\u001fé{}""#, '\u{7f}')
        );
        let back: String = serde_json::from_str(&s).expect("json");
        assert_eq!(back, raw);
    }

    /// The word-at-a-time scan finds what a byte-by-byte one finds, at every
    /// offset and with bytes above 0x7f around (they must not look escaped).
    #[test]
    fn the_scan_finds_the_first_byte_to_escape() {
        for special in [0u8, 0x1f, b'"', b'\\'] {
            for len in 0..20 {
                for pos in 0..=len {
                    let mut v: Vec<u8> = (0..len)
                        .map(|i| [b'a', 0x80, 0xff, 0x21, 0x5b, 0x5d, 0x20][i % 7])
                        .collect();
                    if pos < len {
                        v[pos] = special;
                    }
                    let want = v.iter().position(|&b| escaped(b));
                    assert_eq!(first_escaped(&v), want, "{v:?}");
                }
            }
        }
    }
}
