//! The retry budget: Finagle's, as tower's `TpsBudget` keeps it. Every request
//! deposits, every retry withdraws, a deposit counts for ten seconds, and a
//! reserve allows `retry_min_per_second` retries a second whatever the traffic.
//!
//! Lock-free: each one-second slot is one atomic holding its second and its
//! balance, so a deposit is one compare-and-swap with the clock reading the
//! attempt already made. tower's takes a mutex and reads the clock per deposit.

use std::sync::atomic::{AtomicU64, Ordering};

/// Slots of one second each: the window a deposit counts in.
const SLOTS: u32 = 10;

pub(crate) struct RetryBudget {
    /// Each slot's second (high 32 bits) and balance (low 32, two's complement).
    slots: [AtomicU64; SLOTS as usize],
    reserve: i64,
    deposit: i32,
    withdraw: i32,
}

fn pack(second: u32, balance: i32) -> u64 {
    (u64::from(second) << 32) | u64::from(balance as u32)
}

fn unpack(v: u64) -> (u32, i32) {
    ((v >> 32) as u32, v as u32 as i32)
}

impl RetryBudget {
    /// `percent` of requests may be retried (0 to 1,000), besides
    /// `min_per_second` retries a second.
    pub(crate) fn new(min_per_second: u32, percent: u32) -> Self {
        // Whole units, as tower's: at most 100% a deposit pays for 1/p of a
        // retry; above it a deposit of 1,000 pays for p/100 retries.
        let (deposit, withdraw) = match percent {
            0 => (0, 1),
            1..=100 => (1, (100 / percent) as i32),
            _ => (1000, (100_000 / percent) as i32),
        };
        Self {
            slots: Default::default(),
            reserve: i64::from(min_per_second) * i64::from(SLOTS) * i64::from(withdraw),
            deposit,
            withdraw,
        }
    }

    /// One request, at `second` on the pool's clock.
    pub(crate) fn deposit(&self, second: u32) {
        if self.deposit != 0 {
            self.add(second, self.deposit);
        }
    }

    /// One retry, if the budget holds it.
    pub(crate) fn withdraw(&self, second: u32) -> bool {
        // Two retries may both see enough for one: tower's budget has the same
        // race, and a budget one retry over is still a budget.
        let held = self.balance(second) >= i64::from(self.withdraw);
        if held {
            self.add(second, -self.withdraw);
        }
        held
    }

    /// The reserve plus every slot written in the last `SLOTS` seconds.
    fn balance(&self, second: u32) -> i64 {
        self.slots
            .iter()
            .map(|s| unpack(s.load(Ordering::Relaxed)))
            .filter(|(at, _)| second.wrapping_sub(*at) < SLOTS)
            .map(|(_, balance)| i64::from(balance))
            .sum::<i64>()
            + self.reserve
    }

    fn add(&self, second: u32, amount: i32) {
        let slot = &self.slots[(second % SLOTS) as usize];
        // A slot last written SLOTS or more seconds ago starts again at `amount`.
        let _ = slot.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            let (at, balance) = unpack(v);
            let balance = if at == second {
                balance.saturating_add(amount)
            } else {
                amount
            };
            Some(pack(second, balance))
        });
    }
}

impl std::fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryBudget")
            .field("deposit", &self.deposit)
            .field("withdraw", &self.withdraw)
            .field("reserve", &self.reserve)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retries(b: &RetryBudget, second: u32) -> usize {
        std::iter::from_fn(|| b.withdraw(second).then_some(()))
            .take(100_000)
            .count()
    }

    #[test]
    fn a_share_of_the_deposits_is_retried() {
        let b = RetryBudget::new(0, 20);
        assert_eq!(retries(&b, 0), 0, "nothing deposited, no reserve");
        for _ in 0..100 {
            b.deposit(3);
        }
        assert_eq!(retries(&b, 3), 20, "20% of 100 requests");
        let b = RetryBudget::new(0, 250);
        for _ in 0..10 {
            b.deposit(0);
        }
        assert_eq!(retries(&b, 0), 25, "above 100%: 2.5 retries a request");
    }

    #[test]
    fn deposits_count_for_ten_seconds_and_the_reserve_always() {
        let b = RetryBudget::new(0, 100);
        for _ in 0..5 {
            b.deposit(100);
        }
        assert_eq!(b.balance(109), 5, "still held nine seconds on");
        assert_eq!(retries(&b, 110), 0, "ten seconds on, gone");
        // A slot reused ten seconds on starts again rather than adding.
        b.deposit(110);
        assert_eq!(b.balance(110), 1);

        let b = RetryBudget::new(2, 0);
        assert_eq!(retries(&b, 7), 20, "2 a second over the ten-second window");
        assert_eq!(retries(&b, 16), 0, "taken, until those withdrawals expire");
        assert_eq!(
            retries(&b, 17),
            20,
            "ten seconds on, the reserve is whole again"
        );
        b.deposit(17);
        assert_eq!(retries(&b, 17), 0, "with 0% a request adds nothing");
    }

    #[test]
    fn concurrent_deposits_are_all_counted() {
        let b = RetryBudget::new(0, 100);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| (0..10_000).for_each(|_| b.deposit(42)));
            }
        });
        assert_eq!(b.balance(42), 40_000);
        // And the clock's wrap past u32::MAX seconds keeps the window.
        let b = RetryBudget::new(0, 100);
        b.deposit(u32::MAX);
        assert_eq!(b.balance(3), 1);
        assert_eq!(b.balance(9), 0);
    }
}
