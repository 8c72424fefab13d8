//! Schedules (SPEC §9): a loop that wakes at each schedule's next tick, asks
//! `plan` which ticks are due, and turns each into a job whose id names the
//! tick (`{schedule}@{tick}`), so a tick runs once. The last tick dealt with
//! is kept in the store: a restart neither repeats a tick nor, within the
//! starting deadline, loses one.

pub(crate) mod plan;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{SecondsFormat, TimeZone as _, Utc};
use http::{HeaderMap, HeaderValue};

use crate::config::{Concurrency, Schedule, ScheduleTarget};
use crate::events::cloudevent::Event;
use crate::jobs::{self, Fired, Jobs, Kind, Millis, NewEvent, NewJob, StoredRequest, Tick};
use plan::{next_due, plan, Fire};

/// The loop looks at least this often (a reload may add a schedule).
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// RFC 3339 in UTC, milliseconds only when there are some: a tick's name.
pub(crate) fn tick_name(ms: Millis) -> String {
    let t = Utc.timestamp_millis_opt(ms).single().unwrap_or_default();
    let format = if ms % 1000 == 0 {
        SecondsFormat::Secs
    } else {
        SecondsFormat::Millis
    };
    t.to_rfc3339_opts(format, true)
}

pub(crate) fn spawn(jobs: Arc<Jobs>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(jobs))
}

async fn run(jobs: Arc<Jobs>) {
    // The last tick each schedule dealt with, read from the store once.
    let mut last: Option<HashMap<String, Millis>> = None;
    loop {
        if jobs.draining() {
            return;
        }
        let snapshot = jobs.state().load();
        let schedules = &snapshot.config.schedules;
        let mut sleep = LOOK_EVERY;
        if !schedules.is_empty() && jobs.opened().is_some() {
            if last.is_none() {
                match jobs.schedule_states().await {
                    Ok(states) => {
                        last = Some(
                            states
                                .into_iter()
                                .filter_map(|s| Some((s.name, s.last_tick?)))
                                .collect(),
                        );
                    }
                    Err(e) => tracing::warn!("reading schedule state failed: {e}"),
                }
            }
            if let Some(last) = &mut last {
                let now = jobs::now_ms();
                for s in schedules.iter() {
                    let before = last.get(&*s.name).copied();
                    if !s.enabled {
                        // A disabled schedule keeps up, so enabling it runs nothing old.
                        if let Some(p) = plan(s, before, now).last {
                            last.insert(s.name.to_string(), p);
                        }
                        continue;
                    }
                    let p = plan(s, before, now);
                    let metrics = &jobs.state().metrics;
                    if p.missed > 0 {
                        metrics.schedule_fire(&s.name, "missed", p.missed);
                    }
                    let mut dealt = before;
                    let mut failed = false;
                    for fire in &p.fire {
                        match run_tick(&jobs, s, fire, now).await {
                            Ok(outcome) => {
                                // Another instance sharing the store ran it: not a fire here.
                                if outcome != "duplicate" {
                                    metrics.schedule_fire(&s.name, outcome, 1);
                                }
                                dealt = Some(fire.tick);
                            }
                            Err(e) => {
                                tracing::warn!(schedule = %s.name, tick = %tick_name(fire.tick),
                                    "storing the tick failed, it is tried again: {e}");
                                failed = true;
                                break;
                            }
                        }
                    }
                    if !failed {
                        // Ticks looked at but not run (missed, first seen) are dealt with too.
                        if p.last != dealt && p.fire.is_empty() {
                            let t = Tick {
                                schedule: s.name.to_string(),
                                last_tick: p.last,
                                job: None,
                                forbid: false,
                                replace: false,
                                outcome: "ok",
                                now,
                            };
                            if let Err(e) = jobs.tick(t).await {
                                tracing::warn!(schedule = %s.name, "recording the tick failed: {e}");
                            }
                        }
                        dealt = p.last.or(dealt);
                    }
                    if let Some(d) = dealt {
                        last.insert(s.name.to_string(), d);
                        if let Some(next) = next_due(s, d) {
                            let wait = u64::try_from(next - jobs::now_ms()).unwrap_or(0);
                            sleep = sleep.min(Duration::from_millis(wait));
                        }
                    }
                }
            }
        }
        // Not across the sleep: a snapshot held keeps removed backends' pools alive.
        drop(snapshot);
        tokio::time::sleep(sleep).await;
    }
}

/// Fires one tick; the outcome for `fngate_schedule_fires_total`.
async fn run_tick(
    jobs: &Arc<Jobs>,
    s: &Schedule,
    fire: &Fire,
    now: Millis,
) -> Result<&'static str, jobs::StoreError> {
    let id = format!("{}@{}", s.name, tick_name(fire.tick));
    let outcome = if fire.past_due { "caught_up" } else { "ok" };
    let fired = fire_job(jobs, s, id, Some(fire.tick), fire.past_due, outcome, now).await?;
    Ok(match fired {
        Fired::Busy => {
            tracing::info!(schedule = %s.name, tick = %tick_name(fire.tick),
                "skipped: the previous run is unfinished (concurrency = \"forbid\")");
            "skipped"
        }
        Fired::Duplicate => "duplicate",
        _ => outcome,
    })
}

/// `POST /schedules/{name}/run`: a run now, enabled or not, whatever runs already.
pub(crate) async fn run_now(jobs: &Arc<Jobs>, s: &Schedule) -> Result<String, jobs::StoreError> {
    let suffix = jobs::new_id().ok_or_else(|| jobs::StoreError::Failed("no randomness".into()))?;
    let id = format!("{}@manual-{suffix}", s.name);
    let now = jobs::now_ms();
    fire_job(jobs, s, id.clone(), None, false, "manual", now).await?;
    jobs.state().metrics.schedule_fire(&s.name, "manual", 1);
    Ok(id)
}

/// Stores the run `id` of `s` (a job to its backend, or an event to its topic).
async fn fire_job(
    jobs: &Arc<Jobs>,
    s: &Schedule,
    id: String,
    tick: Option<Millis>,
    past_due: bool,
    outcome: &'static str,
    now: Millis,
) -> Result<Fired, jobs::StoreError> {
    let scheduled = tick_name(tick.unwrap_or(now));
    match &s.target {
        ScheduleTarget::Backend {
            backend,
            method,
            path,
            body,
        } => {
            let mut headers = HeaderMap::new();
            if body.is_some() {
                headers.insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
            }
            if let Ok(v) = HeaderValue::try_from(scheduled.as_str()) {
                headers.insert("x-fngate-scheduled-time", v);
            }
            if past_due {
                headers.insert("x-fngate-past-due", HeaderValue::from_static("true"));
            }
            let job = NewJob {
                id,
                kind: Kind::Schedule,
                route: s.name.to_string(),
                partition: None,
                backend: backend.name.to_string(),
                consumer: None,
                idempotency: None,
                request: StoredRequest {
                    method: method.as_str().to_owned(),
                    target: path.clone(),
                    headers: jobs::encode_headers(&headers),
                    body: body.clone().unwrap_or_default(),
                    host: None,
                },
                traceparent: None,
                policy: jobs::policy_of(&s.delivery),
                now,
            };
            let manual = tick.is_none();
            jobs.tick(Tick {
                schedule: s.name.to_string(),
                last_tick: tick,
                job: Some(job),
                forbid: !manual && s.concurrency == Concurrency::Forbid,
                replace: !manual && s.concurrency == Concurrency::Replace,
                outcome,
                now,
            })
            .await
        }
        ScheduleTarget::Topic(topic) => {
            // The event first, then the tick: a crash between them publishes
            // the tick again, and the topic's dedupe window drops the repeat.
            let data = serde_json::json!({"schedule": &*s.name, "scheduled_time": scheduled, "past_due": past_due});
            let event = Event::wrap(
                id.clone(),
                format!("/fngate/schedules/{}", s.name),
                "fngate.schedule.tick",
                data,
            );
            let snapshot = jobs.state().load();
            let Some(t) = snapshot.config.topic(topic) else {
                return Ok(Fired::Recorded);
            };
            let deliveries = crate::events::deliveries_of(&snapshot.config, t, &event, None, now)
                .map_err(|e| jobs::StoreError::Failed(e.to_string()))?;
            let window = u64::try_from(t.dedupe_window.as_millis()).unwrap_or(u64::MAX);
            let published = NewEvent {
                topic: t.name.to_string(),
                source: event.source().to_owned(),
                id: event.id().to_owned(),
                dedupe_until: (window > 0)
                    .then(|| now.saturating_add(i64::try_from(window).unwrap_or(i64::MAX))),
                deliveries,
            };
            jobs.publish(&t.name, vec![published], now)
                .await
                .map_err(|e| jobs::StoreError::Failed(e.to_string()))?;
            jobs.tick(Tick {
                schedule: s.name.to_string(),
                last_tick: tick,
                job: None,
                forbid: false,
                replace: false,
                outcome,
                now,
            })
            .await?;
            Ok(Fired::Stored {
                replaced: Vec::new(),
            })
        }
    }
}
