//! What a descriptor's backlog means for the client: the requests left and the time until
//! more are available. The admission itself happens atomically in Redis (`gcra.lua`); this is
//! the same arithmetic as the ratelimit filter's local rules, in the script's microseconds.

use crate::config::Limit;

/// A descriptor's state after a request, in the protocol's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// Requests that could still be admitted right now (`limit_remaining`).
    pub remaining: u32,
    /// Microseconds until one more request than `remaining` would be admitted
    /// (`duration_until_reset`); for a rejected request, until it would be admitted.
    pub until_more_micros: u64,
}

/// The standing of a bucket whose TAT is `backlog_micros` ahead of now.
pub fn standing(limit: &Limit, backlog_micros: u64) -> Standing {
    let interval = limit.interval_micros();
    let capacity = interval.saturating_mul(u64::from(limit.burst));
    let remaining = capacity.saturating_sub(backlog_micros) / interval;
    let remaining = u32::try_from(remaining).unwrap_or(u32::MAX).min(limit.burst);
    // One more request fits once the backlog is down to `(burst - remaining - 1)` intervals.
    let allowed_backlog = interval.saturating_mul(u64::from(limit.burst.saturating_sub(remaining).saturating_sub(1)));
    Standing { remaining, until_more_micros: backlog_micros.saturating_sub(allowed_backlog) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Unit;

    fn per_minute(requests_per_unit: u32, burst: u32) -> Limit {
        Limit { requests_per_unit, unit: Unit::Minute, burst }
    }

    #[test]
    fn a_fresh_burst_counts_down() {
        let limit = per_minute(60, 3);
        // After the first request of an idle bucket: one interval (1 s) of backlog.
        assert_eq!(standing(&limit, 1_000_000), Standing { remaining: 2, until_more_micros: 1_000_000 });
        assert_eq!(standing(&limit, 2_000_000), Standing { remaining: 1, until_more_micros: 1_000_000 });
        assert_eq!(standing(&limit, 3_000_000), Standing { remaining: 0, until_more_micros: 1_000_000 });
        // Part of an interval has passed: the next request fits sooner.
        assert_eq!(standing(&limit, 2_600_000), Standing { remaining: 0, until_more_micros: 600_000 });
    }

    #[test]
    fn an_idle_bucket_has_its_whole_burst() {
        let limit = per_minute(100, 100);
        assert_eq!(standing(&limit, 0), Standing { remaining: 100, until_more_micros: 0 });
    }

    #[test]
    fn a_rejected_request_learns_when_it_would_fit() {
        // Burst 2 at 1/s, TAT 2.4 s ahead: one more fits when the backlog is down to 1 s.
        let limit = Limit { requests_per_unit: 1, unit: Unit::Second, burst: 2 };
        assert_eq!(standing(&limit, 2_400_000), Standing { remaining: 0, until_more_micros: 1_400_000 });
    }
}
