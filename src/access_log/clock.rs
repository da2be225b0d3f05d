//! Wall-clock times for log lines without a wall-clock read per line.
//!
//! A request's line says when it started (wall clock, to the millisecond)
//! and how long it took (monotonic, to the microsecond). Reading both
//! clocks when a request starts costs a clock read per request that the
//! duration does not need; on the virtual machines portcullis runs on a
//! read is tens of nanoseconds, a twentieth of what the whole line costs.
//! Instead each thread keeps one pair of readings (monotonic, wall) and
//! turns a monotonic instant into a wall time from it, taking a new pair
//! once the old one is a second old. A step of the wall clock (NTP, an
//! operator) shows in the lines within a second.

use std::cell::Cell;
use std::time::{Duration, Instant, SystemTime};

/// How long a thread's pair of readings is used for.
const REFRESH: Duration = Duration::from_secs(1);

thread_local! {
    /// The last pair of readings this thread took.
    static ANCHOR: Cell<Option<(Instant, SystemTime)>> = const { Cell::new(None) };
}

/// The wall-clock time of `at` (an instant of the past or the present).
pub fn wall_time(at: Instant) -> SystemTime {
    ANCHOR.with(|anchor| {
        let (mono, wall) = match anchor.get() {
            // An instant before the pair (a request that started before
            // it was taken) is told from it too: a new pair would not be
            // any closer.
            Some(pair) if at.saturating_duration_since(pair.0) < REFRESH => pair,
            _ => {
                let pair = (Instant::now(), SystemTime::now());
                anchor.set(Some(pair));
                pair
            }
        };
        let derived = match at.checked_duration_since(mono) {
            Some(after) => wall.checked_add(after),
            None => wall.checked_sub(mono.saturating_duration_since(at)),
        };
        // Out of SystemTime's range only on a clock set absurdly far.
        derived.unwrap_or(wall)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `a − b` in milliseconds, either way round.
    fn apart_ms(a: SystemTime, b: SystemTime) -> u128 {
        a.duration_since(b)
            .or_else(|_| b.duration_since(a))
            .map_or(u128::MAX, |d| d.as_millis())
    }

    #[test]
    fn now_is_now_and_the_past_is_as_far_back_as_it_was() {
        let now = Instant::now();
        let wall = SystemTime::now();
        // A loaded test machine can pause between two lines; seconds of
        // slack, not a timing test.
        assert!(apart_ms(wall_time(now), wall) < 2_000);
        let earlier = now.checked_sub(Duration::from_secs(3600)).unwrap_or(now);
        let back = now.duration_since(earlier);
        assert_eq!(
            wall_time(now).duration_since(wall_time(earlier)).ok(),
            Some(back),
            "an hour before now is an hour before, to the nanosecond"
        );
    }

    #[test]
    fn later_instants_are_later_times() {
        let a = Instant::now();
        let b = a + Duration::from_millis(250);
        let c = a + Duration::from_secs(5);
        assert_eq!(
            wall_time(b).duration_since(wall_time(a)).ok(),
            Some(Duration::from_millis(250))
        );
        // Past the refresh: a new pair, and still a later time.
        assert!(wall_time(c) > wall_time(b));
    }
}
