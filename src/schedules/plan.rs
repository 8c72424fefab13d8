//! Which ticks of a schedule fire now, given the last one fired: pure, so the
//! rules (on time, catch-up, starting deadline, window) are tested on any
//! clock without waiting for one.

use std::time::Duration;

use chrono::{DateTime, TimeZone as _, Utc};

use crate::config::{CatchUp, Schedule};

/// A fire later than this after its time is past due.
pub(crate) const GRACE: Duration = Duration::from_secs(1);
/// The most ticks one plan looks at.
const MAX_TICKS: usize = 10_000;
/// `catch_up = "all"` runs at most this many.
const MAX_CATCH_UP: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fire {
    /// The tick, in milliseconds since the epoch (its fire time is this plus the offset).
    pub(crate) tick: i64,
    /// Run late, by catch-up.
    pub(crate) past_due: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Plan {
    pub(crate) fire: Vec<Fire>,
    /// Ticks not run: past the starting deadline, or skipped by `catch_up`.
    pub(crate) missed: u64,
    /// The tick the schedule has now dealt with, fired or not.
    pub(crate) last: Option<i64>,
}

fn at(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The ticks due at `now` after `last` (`None`: a schedule seen for the first
/// time starts now, with nothing to catch up).
pub(crate) fn plan(s: &Schedule, last: Option<i64>, now: i64) -> Plan {
    let offset = ms(s.offset());
    let Some(last) = last else {
        // Seen for the first time: every tick due before now was not this schedule's.
        return Plan {
            fire: Vec::new(),
            missed: 0,
            last: Some(now.saturating_sub(offset)),
        };
    };
    // Ticks older than the starting deadline are missed without being listed.
    // Saturating throughout: a window or deadline of centuries is valid config.
    let oldest = now
        .saturating_sub(offset)
        .saturating_sub(ms(s.starting_deadline));
    let mut from = last;
    let mut missed = 0;
    if from < oldest.saturating_sub(1) {
        // Whether anything was skipped there (counted once, not per tick).
        if s.next_tick(at(from))
            .is_some_and(|t| t.timestamp_millis() < oldest)
        {
            missed += 1;
        }
        from = oldest.saturating_sub(1);
    }
    let mut due = Vec::new();
    let mut t = at(from);
    while due.len() < MAX_TICKS {
        let Some(next) = s.next_tick(t) else { break };
        let tick = next.timestamp_millis();
        if tick.saturating_add(offset) > now {
            break;
        }
        due.push(tick);
        t = next;
    }
    let Some(&newest) = due.last() else {
        return Plan {
            fire: Vec::new(),
            missed,
            last: (missed > 0)
                .then_some(oldest.saturating_sub(1))
                .or(Some(last)),
        };
    };
    let late = |tick: i64| now.saturating_sub(tick.saturating_add(offset)) > ms(GRACE);
    let (past, on_time): (Vec<i64>, Vec<i64>) = due.iter().partition(|&&t| late(t));
    let mut fire: Vec<Fire> = Vec::new();
    match s.catch_up {
        CatchUp::Latest => {
            if let Some(&t) = past.last() {
                fire.push(Fire {
                    tick: t,
                    past_due: true,
                });
                missed += past.len() as u64 - 1;
            }
        }
        CatchUp::None => missed += past.len() as u64,
        CatchUp::All => {
            let keep = past.len().min(MAX_CATCH_UP);
            missed += (past.len() - keep) as u64;
            fire.extend(past[past.len() - keep..].iter().map(|&t| Fire {
                tick: t,
                past_due: true,
            }));
        }
    }
    // A tick on time always fires; with `latest`, it stands for the missed ones too.
    if !on_time.is_empty() && s.catch_up == CatchUp::Latest && !past.is_empty() {
        fire.clear();
        missed += 1;
    }
    fire.extend(on_time.iter().map(|&t| Fire {
        tick: t,
        past_due: false,
    }));
    Plan {
        fire,
        missed,
        last: Some(newest),
    }
}

/// When the next tick after `last` is due (its time plus the offset).
pub(crate) fn next_due(s: &Schedule, last: i64) -> Option<i64> {
    let tick = s.next_tick(at(last))?.timestamp_millis();
    Some(tick.saturating_add(ms(s.offset())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn schedule(extra: &str) -> Schedule {
        let text = format!(
            "[backends.b]\nurls = [\"http://127.0.0.1:9\"]\n[[schedules]]\nname = \"s\"\nbackend = \"b\"\n{extra}\n"
        );
        let c = Config::parse(&text, "t.toml", &|_| None).expect("valid");
        (*c.schedules[0]).clone()
    }

    fn t(rfc: &str) -> i64 {
        DateTime::parse_from_rfc3339(rfc)
            .expect("time")
            .timestamp_millis()
    }

    #[test]
    fn a_tick_fires_at_its_time_and_not_before() {
        let s = schedule("cron = \"0 */15 * * * *\"");
        let last = t("2026-12-01T10:00:00Z");
        assert_eq!(plan(&s, Some(last), t("2026-12-01T10:14:59.999Z")).fire, []);
        let p = plan(&s, Some(last), t("2026-12-01T10:15:00.300Z"));
        assert_eq!(
            p.fire,
            [Fire {
                tick: t("2026-12-01T10:15:00Z"),
                past_due: false
            }]
        );
        assert_eq!(p.last, Some(t("2026-12-01T10:15:00Z")));
        assert_eq!(
            next_due(&s, t("2026-12-01T10:15:00Z")),
            Some(t("2026-12-01T10:30:00Z"))
        );
    }

    #[test]
    fn catch_up_runs_the_latest_all_or_none_of_the_missed_ticks() {
        let last = t("2026-12-01T10:00:00Z");
        // Down from 10:00 to 10:03:30: ticks 10:01, 10:02, 10:03 missed.
        let now = t("2026-12-01T10:03:30Z");
        let latest = plan(
            &schedule("cron = \"* * * * *\"\nstarting_deadline = \"10m\""),
            Some(last),
            now,
        );
        assert_eq!(
            latest.fire,
            [Fire {
                tick: t("2026-12-01T10:03:00Z"),
                past_due: true
            }]
        );
        assert_eq!(latest.missed, 2);
        let all = plan(
            &schedule("cron = \"* * * * *\"\ncatch_up = \"all\""),
            Some(last),
            now,
        );
        assert_eq!(all.fire.len(), 3);
        assert!(all.fire.iter().all(|f| f.past_due));
        let none = plan(
            &schedule("cron = \"* * * * *\"\ncatch_up = \"none\""),
            Some(last),
            now,
        );
        assert_eq!((none.fire.len(), none.missed), (0, 3));
        assert_eq!(
            none.last,
            Some(t("2026-12-01T10:03:00Z")),
            "not run, but dealt with"
        );
    }

    #[test]
    fn ticks_past_the_starting_deadline_are_not_run() {
        let s = schedule("cron = \"* * * * *\"\ncatch_up = \"all\"\nstarting_deadline = \"2m\"");
        let p = plan(
            &s,
            Some(t("2026-12-01T09:00:00Z")),
            t("2026-12-01T10:00:30Z"),
        );
        let ticks: Vec<i64> = p.fire.iter().map(|f| f.tick).collect();
        assert_eq!(
            ticks,
            [t("2026-12-01T09:59:00Z"), t("2026-12-01T10:00:00Z")]
        );
        assert!(p.missed >= 1);
    }

    #[test]
    fn a_first_start_runs_nothing_from_before_it() {
        let s = schedule("cron = \"* * * * * *\"");
        let now = t("2026-12-01T10:00:00.500Z");
        let p = plan(&s, None, now);
        assert_eq!(p.fire, []);
        assert_eq!(p.last, Some(now));
        let p = plan(&s, p.last, t("2026-12-01T10:00:01.010Z"));
        assert_eq!(
            p.fire,
            [Fire {
                tick: t("2026-12-01T10:00:01Z"),
                past_due: false
            }]
        );
    }

    #[test]
    fn centuries_of_window_or_deadline_plan_without_overflow() {
        let s = schedule(
            "cron = \"* * * * * *\"\nwindow = \"500years\"\nstarting_deadline = \"900years\"",
        );
        let now = t("2026-12-01T10:00:00Z");
        let p = plan(&s, Some(now - 5_000), now);
        assert!(p.fire.len() <= MAX_TICKS);
        let _ = next_due(&s, now);
        let p = plan(&s, Some(i64::MIN + 1), i64::MAX - 1);
        assert!(p.fire.len() <= MAX_TICKS);
        let every = schedule("cron = \"@every 1s\"\nwindow = \"500years\"");
        assert!(plan(&every, Some(i64::MAX - 1), i64::MAX).fire.len() <= MAX_TICKS);
        let _ = next_due(&every, i64::MAX);
    }

    #[test]
    fn a_schedules_delivery_has_a_routes_defaults_with_or_without_its_table() {
        let bare = schedule("cron = \"@hourly\"");
        let table = schedule("cron = \"@hourly\"\n[schedules.delivery]\nconcurrency = 2");
        assert_eq!(bare.delivery, crate::config::Delivery::default());
        assert_eq!(table.delivery.attempts, bare.delivery.attempts);
        assert_eq!(table.delivery.concurrency, 2);
    }

    #[test]
    fn every_ticks_at_multiples_since_the_epoch() {
        let s = schedule("cron = \"@every 30s\"");
        assert_eq!(
            next_due(&s, t("2026-12-01T10:00:07Z")),
            Some(t("2026-12-01T10:00:30Z"))
        );
        assert_eq!(
            next_due(&s, t("2026-12-01T10:00:30Z")),
            Some(t("2026-12-01T10:01:00Z"))
        );
    }

    #[test]
    fn a_window_delays_every_fire_by_one_fixed_offset() {
        let s = schedule("cron = \"0 * * * *\"\nwindow = \"10m\"");
        let off = s.offset();
        assert!(off < Duration::from_secs(600));
        assert_eq!(
            off,
            schedule("cron = \"0 * * * *\"\nwindow = \"10m\"").offset(),
            "stable"
        );
        let hour = t("2026-12-01T10:00:00Z");
        assert_eq!(next_due(&s, hour - 1), Some(hour + ms(off)));
        assert_eq!(plan(&s, Some(hour - 1), hour + ms(off) - 1).fire, []);
        assert_eq!(plan(&s, Some(hour - 1), hour + ms(off)).fire.len(), 1);
    }

    #[test]
    fn daylight_saving_is_handled_in_the_schedules_time_zone() {
        // Paris: 2026-03-29 02:00 does not exist (clocks go to 03:00);
        // 2026-10-25 02:30 happens twice.
        let s = schedule("cron = \"30 2 * * *\"\ntimezone = \"Europe/Paris\"");
        let spring = next_due(&s, t("2026-03-28T12:00:00Z")).expect("a tick");
        // 02:30 local is skipped: it runs at the first valid time after the gap, 03:00 CEST.
        assert_eq!(spring, t("2026-03-29T01:00:00Z"));
        let fall = next_due(&s, t("2026-10-24T12:00:00Z")).expect("a tick");
        assert_eq!(fall, t("2026-10-25T00:30:00Z"), "the first 02:30 (CEST)");
        let after = next_due(&s, fall).expect("a tick");
        assert_eq!(
            after,
            t("2026-10-26T01:30:00Z"),
            "not again at the second 02:30"
        );
        // 9:00 local is 8:00 UTC in winter and 7:00 UTC in summer.
        let nine = schedule("cron = \"0 9 * * *\"\ntimezone = \"Europe/Paris\"");
        assert_eq!(
            next_due(&nine, t("2026-01-10T00:00:00Z")),
            Some(t("2026-01-10T08:00:00Z"))
        );
        assert_eq!(
            next_due(&nine, t("2026-07-10T00:00:00Z")),
            Some(t("2026-07-10T07:00:00Z"))
        );
    }
}
