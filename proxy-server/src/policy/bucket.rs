//! A token bucket: an identity's `rate_limit` (`crate::worker` `limits`).

use std::time::{Duration, Instant};

/// A token bucket of `rate` a second, holding one second's worth.
#[derive(Debug)]
pub struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Default for Bucket {
    fn default() -> Self {
        Self {
            tokens: f64::MAX,
            at: Instant::now(),
        }
    }
}

impl Bucket {
    /// Takes a turn: how long to wait for it, or `Err` when that is over `max_wait` (no turn
    /// taken).
    pub fn take(&mut self, rate: f64, max_wait: Duration) -> Result<Duration, ()> {
        let now = Instant::now();
        let elapsed = now.duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens.min(rate) + elapsed * rate).min(rate);
        self.at = now;
        let after = self.tokens - 1.0;
        if after >= 0.0 {
            self.tokens = after;
            return Ok(Duration::ZERO);
        }
        let wait = Duration::from_secs_f64(-after / rate);
        if wait > max_wait {
            return Err(());
        }
        self.tokens = after;
        Ok(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX_WAIT: Duration = Duration::from_secs(1);

    #[test]
    fn a_burst_of_one_seconds_worth_then_turns_at_the_rate() {
        let mut b = Bucket::default();
        for _ in 0..10 {
            assert_eq!(b.take(10.0, MAX_WAIT), Ok(Duration::ZERO));
        }
        let wait = b.take(10.0, MAX_WAIT).unwrap();
        assert!(
            wait > Duration::from_millis(90) && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        // Nine more queued: the tenth would wait past a second.
        for _ in 0..9 {
            assert!(b.take(10.0, MAX_WAIT).is_ok());
        }
        assert_eq!(b.take(10.0, MAX_WAIT), Err(()));
    }
}
