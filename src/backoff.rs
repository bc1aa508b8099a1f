//! The one backoff rule: a pause that doubles with every failed attempt, up to a ceiling.
//!
//! The watch daemon uses it for retries of a failed file and for probing an engine that went
//! away; one function keeps the arithmetic (and its overflow) in one place.

use std::time::Duration;

/// `first` doubled `attempt` times, at most `max`: `first`, `2 × first`, `4 × first`, ... for
/// attempts 0, 1, 2, ... Exact for any attempt count, and never overflows.
pub fn doubling(first: Duration, max: Duration, attempt: u32) -> Duration {
    let factor = 1u128 << attempt.min(127);
    match first.as_nanos().checked_mul(factor) {
        Some(n) if n < max.as_nanos() => {
            Duration::new((n / 1_000_000_000) as u64, (n % 1_000_000_000) as u32)
        }
        _ => max,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn doubles_from_first_and_stops_at_max() {
        let got: Vec<_> = (0..8).map(|a| doubling(S(1), S(60), a)).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 32, 60, 60].map(S));
    }

    #[test]
    fn keeps_fractions_of_a_second() {
        let first = Duration::from_millis(150);
        assert_eq!(doubling(first, S(10), 0), first);
        assert_eq!(doubling(first, S(10), 3), Duration::from_millis(1200));
    }

    #[test]
    fn huge_attempt_counts_give_max_without_overflow() {
        for attempt in [31, 32, 64, 94, 127, 128, u32::MAX] {
            assert_eq!(
                doubling(S(10), S(600), attempt),
                S(600),
                "attempt {attempt}"
            );
            assert_eq!(
                doubling(Duration::MAX, Duration::MAX, attempt),
                Duration::MAX
            );
        }
    }

    #[test]
    fn exact_past_32_doublings() {
        let ns = Duration::from_nanos;
        assert_eq!(doubling(ns(1), S(3600), 40), ns(1 << 40));
        assert_eq!(
            doubling(ns(3), Duration::MAX, 80),
            ns(3 << 40) * (1 << 20) * (1 << 20)
        );
    }

    #[test]
    fn a_first_pause_above_max_is_max_and_zero_stays_zero() {
        assert_eq!(doubling(S(90), S(60), 0), S(60));
        assert_eq!(doubling(Duration::ZERO, S(60), u32::MAX), Duration::ZERO);
    }
}
