//! The bucket arithmetic: GCRA (generic cell rate algorithm), the token bucket expressed as
//! one number per key, the theoretical arrival time (TAT), so one key's state fits one small
//! shared-data entry and one compare-and-swap updates it.
//!
//! Time is counted in ticks of `1 / requests` nanoseconds, which makes the emission interval
//! (`period / requests`) exactly `period` ticks: no rounding, so refill is exact to the
//! nanosecond for any `requests` and `period`. A `u128` holds any wall-clock time in ticks.
//!
//! With burst `B` and interval `T`, a request at `now` is admitted when
//! `TAT - now <= (B - 1) * T`; admitting it sets `TAT = max(TAT, now) + T`. An idle key
//! (`TAT <= now`) has its whole burst available, exactly like a key never seen, which is what
//! lets the table reuse such entries without changing anyone's limit.

const NANOS_PER_SECOND: u128 = 1_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Requests admitted per period at the sustained rate.
    pub requests: u64,
    pub period_seconds: u64,
    /// Requests that can be admitted at once by a key that has been idle.
    pub burst: u64,
}

/// The outcome of one request against one key's bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acquire {
    pub allowed: bool,
    /// The key's new TAT (unchanged when rejected).
    pub tat: u128,
    /// Requests that could still be admitted right now.
    pub remaining: u64,
    /// Whole seconds until more quota is available, i.e. until one more request than
    /// `remaining` would be admitted (rounded up): the draft's `t`. For a rejection it equals
    /// `retry_after_seconds`.
    pub reset_seconds: u64,
    /// For a rejection: whole seconds until a request would be admitted (rounded up, so never
    /// earlier than the real refill). Zero when allowed.
    pub retry_after_seconds: u64,
}

impl Limit {
    fn interval(&self) -> u128 {
        multiply(u128::from(self.period_seconds), NANOS_PER_SECOND)
    }

    /// Seconds to refill the whole burst at the sustained rate, rounded up (the `w` of the
    /// rule's `RateLimit-Policy`).
    pub fn refill_window_seconds(&self) -> u64 {
        let seconds = widening_multiply(self.burst, self.period_seconds);
        u64::try_from(divide_ceil(seconds, u128::from(self.requests))).unwrap_or(u64::MAX)
    }

    pub fn now_ticks(&self, now_nanos: u64) -> u128 {
        widening_multiply(now_nanos, self.requests)
    }

    fn ticks_to_seconds_ceil(&self, ticks: u128) -> u64 {
        let per_second = multiply(NANOS_PER_SECOND, u128::from(self.requests));
        u64::try_from(divide_ceil(ticks, per_second)).unwrap_or(u64::MAX)
    }

    /// True when a key whose TAT is `tat` has its whole burst available again at `now_nanos`.
    pub fn is_idle(&self, tat: u128, now_nanos: u64) -> bool {
        tat <= self.now_ticks(now_nanos)
    }

    pub fn acquire(&self, tat: u128, now_nanos: u64) -> Acquire {
        let now = self.now_ticks(now_nanos);
        let interval = self.interval();
        let tolerance = multiply(interval, u128::from(self.burst.saturating_sub(1)));
        let backlog = tat.saturating_sub(now);
        if backlog <= tolerance {
            let tat = now.max(tat) + interval;
            let remaining = self.remaining(tat - now);
            Acquire {
                allowed: true,
                tat,
                remaining,
                reset_seconds: self.seconds_until_more(tat - now, remaining),
                retry_after_seconds: 0,
            }
        } else {
            let wait = self.seconds_until_more(backlog, 0);
            Acquire { allowed: false, tat, remaining: 0, reset_seconds: wait, retry_after_seconds: wait }
        }
    }

    /// Whole seconds until a key with `backlog` ticks taken, and so `remaining` requests
    /// left, has `remaining + 1`: the backlog must fall to `(burst - remaining - 1) * T`.
    /// Rounded up and at least 1, so a client that waits that long is admitted.
    fn seconds_until_more(&self, backlog: u128, remaining: u64) -> u64 {
        let allowed_backlog =
            multiply(self.interval(), u128::from(self.burst.saturating_sub(remaining).saturating_sub(1)));
        self.ticks_to_seconds_ceil(backlog.saturating_sub(allowed_backlog)).max(1)
    }

    /// How many more requests fit in `burst * T` after `backlog` ticks are taken.
    fn remaining(&self, backlog: u128) -> u64 {
        let capacity = multiply(self.interval(), u128::from(self.burst));
        u64::try_from(divide(capacity.saturating_sub(backlog), self.interval())).unwrap_or(0)
    }
}

/// `dividend / divisor` (`divisor` > 0). Wasm has no 128-bit division: the general one is a
/// long software routine, run on every request. The operands of a request's divisions (a
/// backlog and a second or an interval in ticks) fit 64 bits for any usual limit, and then one
/// 64-bit division gives the same quotient.
fn divide(dividend: u128, divisor: u128) -> u128 {
    match (u64::try_from(dividend), u64::try_from(divisor)) {
        (Ok(dividend), Ok(divisor)) if divisor > 0 => u128::from(dividend / divisor),
        _ => dividend / divisor,
    }
}

/// `a * b`. Wasm has no 128-bit multiplication either: the general one is a software routine
/// (`__multi3`), which a request's arithmetic called about fourteen times. Nearly every product
/// here fits 64 bits (an interval in ticks times a burst) and then costs one 64-bit
/// multiplication; whether it fits is told by the operands' leading zeros (`checked_mul`
/// would itself call the routine to find out).
fn multiply(a: u128, b: u128) -> u128 {
    match (u64::try_from(a), u64::try_from(b)) {
        (Ok(a), Ok(b)) if a.leading_zeros() + b.leading_zeros() >= u64::BITS => {
            // a < 2^(64 - zeros(a)) and b < 2^(64 - zeros(b)), so a * b < 2^64.
            u128::from(a.wrapping_mul(b))
        }
        _ => wide_product(a, b),
    }
}

/// The full product of two 64-bit numbers (the clock in ticks).
fn widening_multiply(a: u64, b: u64) -> u128 {
    multiply(u128::from(a), u128::from(b))
}

/// The routine, out of line: inline, the compiler computes it on both paths and picks one.
#[cold]
#[inline(never)]
fn wide_product(a: u128, b: u128) -> u128 {
    a.wrapping_mul(b)
}

/// `dividend / divisor` rounded up, through [`divide`].
fn divide_ceil(dividend: u128, divisor: u128) -> u128 {
    let quotient = divide(dividend, divisor);
    // `quotient * divisor` is at most `dividend`: no overflow.
    if multiply(quotient, divisor) < dividend {
        quotient + 1
    } else {
        quotient
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_multiplications_give_the_full_product() {
        let values =
            [0, 1, 2, 3, 1_000_000_000, u64::from(u32::MAX), 1 << 32, 1_764_000_000 * SECOND, u64::MAX - 1, u64::MAX];
        for a in values {
            for b in values {
                assert_eq!(widening_multiply(a, b), u128::from(a) * u128::from(b), "{a} * {b}");
                assert_eq!(multiply(u128::from(a), u128::from(b)), u128::from(a) * u128::from(b), "{a} * {b}");
            }
        }
        let big = u128::from(u64::MAX) + 5;
        assert_eq!(multiply(big, 3), big * 3);
        assert_eq!(multiply(3, big), big * 3);
    }

    const SECOND: u64 = 1_000_000_000;
    const START: u64 = 1_764_000_000 * SECOND;

    fn limit(requests: u64, period_seconds: u64, burst: u64) -> Limit {
        Limit { requests, period_seconds, burst }
    }

    /// Runs `count` requests at `at`, threading the TAT; returns how many were admitted.
    fn admit(limit: &Limit, tat: &mut u128, at: u64, count: u64) -> u64 {
        (0..count)
            .filter(|_| {
                let outcome = limit.acquire(*tat, at);
                *tat = outcome.tat;
                outcome.allowed
            })
            .count() as u64
    }

    #[test]
    fn the_64_bit_division_gives_the_128_bit_quotient() {
        let edges = [
            0,
            1,
            7,
            NANOS_PER_SECOND,
            u128::from(u64::MAX) - 1,
            u128::from(u64::MAX),
            u128::from(u64::MAX) + 1,
            u128::MAX / 3,
            u128::MAX,
        ];
        for dividend in edges {
            for divisor in edges.into_iter().filter(|divisor| *divisor > 0) {
                assert_eq!(divide(dividend, divisor), dividend / divisor, "{dividend} / {divisor}");
                assert_eq!(divide_ceil(dividend, divisor), dividend.div_ceil(divisor), "{dividend} / {divisor}, up");
            }
        }
    }

    #[test]
    fn an_idle_key_admits_exactly_its_burst() {
        for (requests, period, burst) in [(1, 1, 1), (10, 1, 10), (10, 1, 25), (100, 60, 5), (3, 1, 3)] {
            let limit = limit(requests, period, burst);
            let mut tat = 0;
            assert_eq!(admit(&limit, &mut tat, START, 1000), burst, "{limit:?}");
        }
    }

    #[test]
    fn remaining_counts_down_to_zero() {
        let limit = limit(5, 1, 5);
        let mut tat = 0;
        let seen: Vec<u64> = (0..6)
            .map(|_| {
                let outcome = limit.acquire(tat, START);
                tat = outcome.tat;
                outcome.remaining
            })
            .collect();
        assert_eq!(seen, [4, 3, 2, 1, 0, 0]);
    }

    #[test]
    fn refill_is_exact_to_the_nanosecond() {
        // 3 per second: one request refills every 333_333_333.33 ns, which a nanosecond
        // interval would have to round.
        let limit = limit(3, 1, 3);
        let admitted_after = |elapsed: u64| {
            let mut tat = 0;
            assert_eq!(admit(&limit, &mut tat, START, 3), 3);
            admit(&limit, &mut tat, START + elapsed, 10)
        };
        assert_eq!(admitted_after(333_333_333), 0);
        assert_eq!(admitted_after(333_333_334), 1);
        assert_eq!(admitted_after(666_666_666), 1);
        assert_eq!(admitted_after(666_666_667), 2);
        assert_eq!(admitted_after(SECOND - 1), 2);
        assert_eq!(admitted_after(SECOND), 3);
        assert_eq!(admitted_after(100 * SECOND), 3, "never more than the burst");
    }

    #[test]
    fn sustained_rate_over_a_long_run_is_exact() {
        // 7 per 10 s with burst 2, one attempt every 100 ms for 1000 s.
        let limit = limit(7, 10, 2);
        let mut tat = 0;
        let admitted: u64 = (0..10_000).map(|i| admit(&limit, &mut tat, START + i * SECOND / 10, 1)).sum();
        // Burst 2 up front, then 7 per 10 s: at most 2 + 700 - 1 in 999.9 s.
        assert_eq!(admitted, 2 + 699);
    }

    #[test]
    fn retry_after_is_never_earlier_than_the_refill() {
        let limit = limit(1, 60, 2);
        let mut tat = 0;
        assert_eq!(admit(&limit, &mut tat, START, 2), 2);
        let rejected = limit.acquire(tat, START);
        assert!(!rejected.allowed);
        assert_eq!(rejected.retry_after_seconds, 60);
        assert_eq!(rejected.reset_seconds, 60, "t is when more quota is available, as Retry-After");
        // Exactly at the promised time a request fits; a nanosecond before it does not.
        assert!(!limit.acquire(tat, START + 60 * SECOND - 1).allowed);
        assert!(limit.acquire(tat, START + 60 * SECOND).allowed);
        // Rounded up: 0.4 s of waiting is reported as 1 s.
        let fast = Limit { requests: 10, period_seconds: 4, burst: 1 };
        let tat = fast.acquire(0, START).tat;
        let rejected = fast.acquire(tat, START);
        assert_eq!(rejected.retry_after_seconds, 1);
        assert!(fast.acquire(tat, START + 400_000_000).allowed);
    }

    /// draft-ietf-httpapi-ratelimit-headers-10: `t` is the seconds until more quota is
    /// available, so for 5 per minute (one every 12 s) it is 12 on every grant and on the
    /// rejection, where it equals `Retry-After`; and waiting `t` seconds really admits one more.
    #[test]
    fn reset_is_the_wait_for_more_quota() {
        let limit = limit(5, 60, 5);
        let mut tat = 0;
        for expected_remaining in [4, 3, 2, 1, 0] {
            let granted = limit.acquire(tat, START);
            assert!(granted.allowed);
            assert_eq!((granted.remaining, granted.reset_seconds), (expected_remaining, 12));
            tat = granted.tat;
        }
        let rejected = limit.acquire(tat, START);
        assert_eq!((rejected.reset_seconds, rejected.retry_after_seconds), (12, 12));
        // Part way through a refill step the wait is what is left of it, rounded up.
        let later = limit.acquire(tat, START + 5 * SECOND);
        assert_eq!((later.allowed, later.reset_seconds), (false, 7));
        let at_t = limit.acquire(tat, START + 12 * SECOND);
        assert!(at_t.allowed);
        assert_eq!((at_t.remaining, at_t.reset_seconds), (0, 12));
        // A grant that leaves the bucket below its burst after a partial refill: 3 per second.
        let fast = Limit { requests: 3, period_seconds: 1, burst: 3 };
        let tat = fast.acquire(0, START).tat;
        let next = fast.acquire(tat, START + 100_000_000);
        assert_eq!((next.remaining, next.reset_seconds), (1, 1));
    }

    #[test]
    fn a_rejection_does_not_consume() {
        let limit = limit(1, 1, 1);
        let tat = limit.acquire(0, START).tat;
        let rejected = limit.acquire(tat, START + SECOND / 2);
        assert_eq!(rejected.tat, tat);
        assert!(limit.acquire(tat, START + SECOND).allowed);
    }

    #[test]
    fn a_clock_step_backwards_only_makes_the_bucket_stricter() {
        let limit = limit(10, 1, 10);
        let mut tat = 0;
        assert_eq!(admit(&limit, &mut tat, START, 5), 5);
        // The clock jumps back 10 s: no extra grants appear.
        assert_eq!(admit(&limit, &mut tat, START - 10 * SECOND, 100), 0);
    }

    #[test]
    fn idle_means_full() {
        let limit = limit(2, 1, 4);
        let tat = limit.acquire(0, START).tat;
        assert!(!limit.is_idle(tat, START));
        assert!(!limit.is_idle(tat, START + SECOND / 2 - 1));
        assert!(limit.is_idle(tat, START + SECOND / 2));
        assert_eq!(limit.acquire(tat, START + SECOND / 2).remaining, 3);
    }
}
