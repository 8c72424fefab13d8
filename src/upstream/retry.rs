//! Whether a failed attempt is tried again (SPEC §2 `retries`): a pure
//! decision, so every case is a unit test.

use std::time::Duration;

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// The backend answered with this status; `retry_after` is its
    /// `Retry-After` in seconds (`u64::MAX` for a date), read on 429 and 503 only.
    Answered {
        status: u16,
        retry_after: Option<u64>,
    },
    /// No connection was made: nothing reached the backend.
    ConnectFailed,
    /// The connection broke after the request went out (a reset, say).
    Failed,
    TimedOut,
}

/// What the attempt loop does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Another endpoint, after this pause.
    Retry {
        after: Duration,
    },
    Stop,
}

/// What is true of the request being sent.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Request {
    pub(crate) idempotent: bool,
    /// The body can be sent again (empty, buffered, or a stream never polled).
    pub(crate) replayable: bool,
    /// Attempts left under the backend's `retries`.
    pub(crate) retries_left: bool,
    /// Time left until the request's deadline.
    pub(crate) remaining: Duration,
}

/// The longest `Retry-After` a synchronous request waits out.
const MAX_PAUSE: u64 = 1;

impl Attempt {
    /// 429, or 503 with `Retry-After`: busy, not broken (never ejected).
    pub(crate) fn overloaded(self) -> bool {
        matches!(
            self,
            Self::Answered { status: 429, .. }
                | Self::Answered {
                    status: 503,
                    retry_after: Some(_)
                }
        )
    }

    /// What passive health counts as a failure of the endpoint.
    pub(crate) fn failed(self) -> bool {
        match self {
            Self::Answered { status, .. } => !self.overloaded() && matches!(status, 502..=504),
            Self::ConnectFailed | Self::Failed | Self::TimedOut => true,
        }
    }
}

/// Retries a connection failure for any method whose body can go again; a
/// reset, a timeout or a 502/503/504 only for idempotent methods; an
/// overloaded answer only when its `Retry-After` is short and fits the
/// deadline. `budget` is asked last, and only when all else allows a retry
/// (asking spends from it).
pub(crate) fn decide(attempt: Attempt, req: Request, budget: impl FnOnce() -> bool) -> Decision {
    let after = match attempt {
        Attempt::ConnectFailed if req.replayable => Duration::ZERO,
        Attempt::ConnectFailed => return Decision::Stop,
        _ if !(req.idempotent && req.replayable) => return Decision::Stop,
        Attempt::Failed | Attempt::TimedOut => Duration::ZERO,
        Attempt::Answered { retry_after, .. } if attempt.overloaded() => {
            match retry_after
                .filter(|s| *s <= MAX_PAUSE)
                .map(Duration::from_secs)
            {
                Some(pause) if pause < req.remaining => pause,
                _ => return Decision::Stop,
            }
        }
        Attempt::Answered { .. } if attempt.failed() => Duration::ZERO,
        Attempt::Answered { .. } => return Decision::Stop,
    };
    if req.retries_left && budget() {
        Decision::Retry { after }
    } else {
        Decision::Stop
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GET: Request = Request {
        idempotent: true,
        replayable: true,
        retries_left: true,
        remaining: Duration::from_secs(10),
    };
    const POST: Request = Request {
        idempotent: false,
        ..GET
    };
    const NOW: Decision = Decision::Retry {
        after: Duration::ZERO,
    };

    fn answered(status: u16, retry_after: Option<u64>) -> Attempt {
        Attempt::Answered {
            status,
            retry_after,
        }
    }

    fn yes() -> bool {
        true
    }

    #[test]
    fn connect_failures_are_retried_for_any_method_with_a_replayable_body() {
        assert_eq!(decide(Attempt::ConnectFailed, GET, yes), NOW);
        assert_eq!(decide(Attempt::ConnectFailed, POST, yes), NOW);
        let streamed = Request {
            replayable: false,
            ..POST
        };
        assert_eq!(
            decide(Attempt::ConnectFailed, streamed, yes),
            Decision::Stop
        );
    }

    #[test]
    fn resets_timeouts_and_gateway_errors_are_retried_only_when_idempotent() {
        for attempt in [
            Attempt::Failed,
            Attempt::TimedOut,
            answered(502, None),
            answered(503, None),
            answered(504, None),
        ] {
            assert_eq!(decide(attempt, GET, yes), NOW, "{attempt:?}");
            assert_eq!(decide(attempt, POST, yes), Decision::Stop, "{attempt:?}");
            let streamed = Request {
                replayable: false,
                ..GET
            };
            assert_eq!(
                decide(attempt, streamed, yes),
                Decision::Stop,
                "{attempt:?}"
            );
        }
    }

    #[test]
    fn other_answers_are_final() {
        for status in [200, 201, 304, 400, 404, 500, 501] {
            assert_eq!(
                decide(answered(status, None), GET, yes),
                Decision::Stop,
                "{status}"
            );
        }
    }

    #[test]
    fn an_overloaded_answer_is_waited_out_only_when_short_and_within_the_deadline() {
        let one = Decision::Retry {
            after: Duration::from_secs(1),
        };
        assert_eq!(decide(answered(429, Some(1)), GET, yes), one);
        assert_eq!(decide(answered(503, Some(0)), GET, yes), NOW);
        assert_eq!(decide(answered(429, Some(2)), GET, yes), Decision::Stop);
        assert_eq!(decide(answered(429, None), GET, yes), Decision::Stop);
        let late = Request {
            remaining: Duration::from_millis(500),
            ..GET
        };
        assert_eq!(decide(answered(429, Some(1)), late, yes), Decision::Stop);
        assert!(answered(503, Some(1)).overloaded() && !answered(503, Some(1)).failed());
        assert!(answered(503, None).failed() && !answered(503, None).overloaded());
    }

    #[test]
    fn the_budget_is_asked_last_and_only_when_a_retry_is_allowed() {
        let mut asked = 0;
        assert_eq!(
            decide(answered(500, None), GET, || {
                asked += 1;
                true
            }),
            Decision::Stop
        );
        let spent = Request {
            retries_left: false,
            ..GET
        };
        assert_eq!(
            decide(Attempt::Failed, spent, || {
                asked += 1;
                true
            }),
            Decision::Stop
        );
        assert_eq!(asked, 0, "a refused retry spends nothing");
        assert_eq!(
            decide(Attempt::Failed, GET, || false),
            Decision::Stop,
            "an empty budget stops"
        );
    }
}
