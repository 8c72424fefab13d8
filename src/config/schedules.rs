//! Schedules (SPEC §9): `[[schedules]]`, each a cron expression (croner: 5
//! or 6 fields, `@hourly`-style aliases) or `@every D`, in an IANA time zone
//! (chrono-tz), calling a backend or publishing to a topic.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, TimeZone as _, Timelike as _, Utc};
use http::Method;

use super::decode::{Ctx, Obj};
use super::load::entry_name;
use super::*;

#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub name: Arc<str>,
    /// As written, for `explain` and the admin API.
    pub cron: String,
    pub when: When,
    pub timezone: chrono_tz::Tz,
    pub target: ScheduleTarget,
    /// Each fire is delayed by a fixed offset within this, per schedule.
    pub window: Duration,
    pub catch_up: CatchUp,
    /// Missed ticks older than this are not run.
    pub starting_deadline: Duration,
    pub concurrency: Concurrency,
    pub enabled: bool,
    pub delivery: Delivery,
}

/// When a schedule ticks.
#[derive(Debug, Clone)]
pub enum When {
    Cron(Box<croner::Cron>),
    /// At multiples of this since the Unix epoch.
    Every(Duration),
}

impl PartialEq for When {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Cron(a), Self::Cron(b)) => a.pattern.to_string() == b.pattern.to_string(),
            (Self::Every(a), Self::Every(b)) => a == b,
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ScheduleTarget {
    Backend {
        backend: Arc<Backend>,
        method: Method,
        path: String,
        /// Sent as application/json.
        body: Option<Bytes>,
    },
    /// Publish an event to this topic instead.
    Topic(Arc<str>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUp {
    /// One run for the missed ticks.
    Latest,
    None,
    /// Every missed tick, at most 100.
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Concurrency {
    /// Skip a tick while the previous run is unfinished.
    Forbid,
    Allow,
    /// Cancel the unfinished run, then start the new one.
    Replace,
}

impl Concurrency {
    pub fn label(self) -> &'static str {
        match self {
            Self::Forbid => "forbid",
            Self::Allow => "allow",
            Self::Replace => "replace",
        }
    }
}

impl When {
    /// The first tick strictly after `t`, in `timezone` for a cron expression.
    pub fn next_tick(&self, timezone: &chrono_tz::Tz, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Self::Every(d) => {
                let step = i64::try_from(d.as_millis()).ok()?.max(1);
                let ms = t.timestamp_millis();
                let next = ms.div_euclid(step).checked_add(1)?.checked_mul(step)?;
                Utc.timestamp_millis_opt(next).single()
            }
            // Cron counts whole seconds (croner would keep t's fraction).
            Self::Cron(c) => c
                .find_next_occurrence(&t.with_nanosecond(0)?.with_timezone(timezone), false)
                .ok()
                .map(|d| d.with_timezone(&Utc)),
        }
    }
}

impl Schedule {
    /// The first tick strictly after `t` (a tick is due at tick + [`Schedule::offset`]).
    pub fn next_tick(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.when.next_tick(&self.timezone, t)
    }

    /// The schedule's fixed delay within `window`: the same on every
    /// instance and every start, different between schedules.
    pub fn offset(&self) -> Duration {
        let window = u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX);
        if window == 0 {
            return Duration::ZERO;
        }
        // FNV-1a of the name: stable across builds, unlike std's hasher.
        let h = self.name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        Duration::from_millis(h % window)
    }
}

pub(super) fn schedule(
    ctx: &mut Ctx<'_>,
    mut obj: Obj<'_>,
    backends: &[Arc<Backend>],
    topics: &[Arc<Topic>],
) -> Option<Schedule> {
    let name = entry_name(ctx, &mut obj, "schedules", "schedule");
    let cron = obj.string(ctx, "cron");
    let when = match &cron {
        Some(c) => match parse_when(&c.value) {
            Ok(w) => Some(w),
            Err(why) => {
                ctx.error(c.span.clone(), obj.key_path("cron"), why);
                None
            }
        },
        // Present but not a string: already reported.
        None if obj.has("cron") => None,
        None => {
            ctx.error(
                obj.span(),
                obj.key_path("cron"),
                "missing: a schedule needs `cron` (\"0 */15 * * * *\", \"@hourly\", \"@every 30s\")",
            );
            None
        }
    };
    let timezone = match obj.string(ctx, "timezone") {
        None => Some(chrono_tz::UTC),
        Some(t) => match t.value.parse::<chrono_tz::Tz>() {
            Ok(tz) => Some(tz),
            Err(_) => {
                ctx.error(
                    t.span,
                    obj.key_path("timezone"),
                    format!(
                        "`{}` is not an IANA time zone such as \"Europe/Paris\"",
                        t.value
                    ),
                );
                None
            }
        },
    };
    let backend = obj.string(ctx, "backend");
    let topic = obj.string(ctx, "topic");
    let method = obj.string(ctx, "method");
    let path = obj.string(ctx, "path");
    let body = obj.string(ctx, "body");
    let target = match (backend, topic) {
        (Some(b), None) => {
            let found = backends.iter().find(|x| *x.name == b.value).cloned();
            if found.is_none() {
                ctx.error(
                    b.span,
                    obj.key_path("backend"),
                    format!("unknown backend `{}`", b.value),
                );
            }
            let method = match method {
                None => Some(Method::POST),
                Some(m) => {
                    let parsed = Method::from_bytes(m.value.to_ascii_uppercase().as_bytes()).ok();
                    if parsed.is_none() {
                        ctx.error(
                            m.span,
                            obj.key_path("method"),
                            format!("`{}` is not an HTTP method", m.value),
                        );
                    }
                    parsed
                }
            };
            let path = match path {
                None => Some("/".to_owned()),
                Some(p) if p.value.starts_with('/') && !p.value.contains(['#', ' ']) => {
                    Some(p.value)
                }
                Some(p) => {
                    ctx.error(
                        p.span,
                        obj.key_path("path"),
                        format!("`{}` is not a path such as \"/scrub\"", p.value),
                    );
                    None
                }
            };
            if let Some(b) = &body {
                if serde_json::from_str::<serde_json::Value>(&b.value).is_err() {
                    ctx.error(
                        b.span.clone(),
                        obj.key_path("body"),
                        "is sent as application/json, so it must be JSON",
                    );
                }
            }
            match (found, method, path) {
                (Some(backend), Some(method), Some(path)) => Some(ScheduleTarget::Backend {
                    backend,
                    method,
                    path,
                    body: body.map(|b| Bytes::from(b.value)),
                }),
                _ => None,
            }
        }
        (None, Some(t)) => {
            for key in ["method", "path"] {
                if obj.has(key) {
                    ctx.error(
                        obj.key_span(key),
                        obj.key_path(key),
                        format!("`{key}` is for a backend target; a topic gets an event"),
                    );
                }
            }
            match topics.iter().find(|x| *x.name == t.value) {
                Some(found) => Some(ScheduleTarget::Topic(found.name.clone())),
                None => {
                    ctx.error(
                        t.span,
                        obj.key_path("topic"),
                        format!("unknown topic `{}`", t.value),
                    );
                    None
                }
            }
        }
        (Some(_), Some(t)) => {
            ctx.error(
                t.span,
                obj.key_path("topic"),
                "give either `backend` or `topic`, not both",
            );
            None
        }
        (None, None) => {
            ctx.error(
                obj.span(),
                obj.key_path("backend"),
                "missing: a schedule calls a `backend` or publishes to a `topic`",
            );
            None
        }
    };
    let window = obj.duration(ctx, "window").unwrap_or_default();
    let catch_up = match obj.string(ctx, "catch_up") {
        None => CatchUp::Latest,
        Some(s) => match s.value.as_str() {
            "latest" => CatchUp::Latest,
            "none" => CatchUp::None,
            "all" => CatchUp::All,
            other => {
                ctx.error(
                    s.span,
                    obj.key_path("catch_up"),
                    format!("`{other}` is not one of \"latest\", \"none\", \"all\""),
                );
                CatchUp::Latest
            }
        },
    };
    let starting_deadline = obj
        .duration(ctx, "starting_deadline")
        .unwrap_or(Duration::from_secs(600));
    let concurrency = match obj.string(ctx, "concurrency") {
        None => Concurrency::Forbid,
        Some(s) => match s.value.as_str() {
            "forbid" => Concurrency::Forbid,
            "allow" => Concurrency::Allow,
            "replace" => Concurrency::Replace,
            other => {
                ctx.error(
                    s.span,
                    obj.key_path("concurrency"),
                    format!("`{other}` is not one of \"forbid\", \"allow\", \"replace\""),
                );
                Concurrency::Forbid
            }
        },
    };
    let enabled = obj.bool(ctx, "enabled").unwrap_or(true);
    let delivery = obj
        .table(ctx, "delivery")
        .map(|d| super::jobs::delivery(ctx, d))
        .unwrap_or_default();
    obj.finish(ctx);
    Some(Schedule {
        name: name?.into(),
        cron: cron?.value,
        when: when?,
        timezone: timezone?,
        target: target?,
        window,
        catch_up,
        starting_deadline,
        concurrency,
        enabled,
        delivery,
    })
}

/// `@every 30s`, or a cron expression of 5 or 6 fields (seconds first) or an alias.
pub(crate) fn parse_when(text: &str) -> Result<When, String> {
    let t = text.trim();
    let when = if let Some(d) = t.strip_prefix("@every") {
        match humantime::parse_duration(d.trim()) {
            Ok(d) if d >= Duration::from_secs(1) => When::Every(d),
            Ok(_) => return Err("`@every` needs at least 1s".into()),
            Err(_) => {
                return Err(format!(
                    "`{}` is not a duration; write e.g. \"@every 30s\"",
                    d.trim()
                ))
            }
        }
    } else {
        let fields = t.split_whitespace().count();
        if !t.starts_with('@') && !(5..=6).contains(&fields) {
            return Err(format!(
                "`{t}` has {fields} fields; a cron expression has 5 (minute first) or 6 (second first)"
            ));
        }
        // croner reads "," or "1,,2" as a list with nothing in it, a field no
        // time matches: the tick search below would then run for years.
        if let Some(field) = t
            .split_whitespace()
            .find(|f| f.split(',').any(str::is_empty))
        {
            return Err(format!("`{t}`: the field `{field}` has an empty list item"));
        }
        croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Optional)
            .year(croner::parser::Year::Disallowed)
            .build()
            .parse(t)
            .map(|c| When::Cron(Box::new(c)))
            .map_err(|e| format!("`{t}` is not a cron expression: {e}"))?
    };
    // "0 0 31 2 *" parses but has no date, and asking it for a tick searches
    // for years (most of a second); "@every 1000000y" overflows the clock.
    // Either is refused here, once, rather than never firing.
    match when.next_tick(&chrono_tz::UTC, Utc::now()) {
        Some(_) => Ok(when),
        None => Err(format!("`{t}` never fires")),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_when;

    #[test]
    fn a_cron_expression_that_never_fires_is_refused() {
        // Found by fuzz/cron: it parsed, and each tick asked of it searched for
        // most of a second (on whichever thread asked).
        for never in ["0 0 31 2 *", "0 0 0 30 2 *", "0 0 31 4 *"] {
            let e = parse_when(never)
                .err()
                .unwrap_or_else(|| panic!("{never} accepted"));
            assert!(e.contains("never fires"), "{e}");
        }
        assert!(
            parse_when("0 0 29 2 *").is_ok(),
            "every leap year is a tick"
        );
        assert!(
            parse_when("@every 100000000y").is_err(),
            "past the clock's end"
        );
        // Found by the CI fuzz run: an empty list searched past the 10 s timeout.
        for empty in [",  30 2 * * *", "0 1,,2 * * *", "0 0 1, * *"] {
            let e = parse_when(empty)
                .err()
                .unwrap_or_else(|| panic!("{empty} accepted"));
            assert!(e.contains("empty list item"), "{e}");
        }
        let text = "[backends.b]\nurls = [\"http://127.0.0.1:9\"]\n[[schedules]]\nname = \"s\"\n\
                    cron = \"0 0 31 2 *\"\nbackend = \"b\"\n";
        let errors = crate::config::Config::parse(text, "r.toml", &|_| None).expect_err("refused");
        assert_eq!((errors.0[0].line, errors.0[0].col), (5, 8), "{errors}");
    }
}
