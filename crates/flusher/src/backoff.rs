//! The one backoff of the flusher: a wait that starts at `--backoff-initial-ms` and doubles after
//! each failure up to `--backoff-max-ms`, back to the start after a success. Used by a shard
//! whose Redis node fails, a write PostgreSQL cannot take, and the wait for the queue's layout
//! at start.

use std::time::Duration;

use crate::config::RunConfig;

/// A doubling wait, capped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `first`, doubles up to `max` (a `first` above `max` is waited once, then `max`).
    pub fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            max,
            next: first,
        }
    }

    /// `--backoff-initial-ms` up to `--backoff-max-ms`.
    pub fn of(config: &RunConfig) -> Self {
        Backoff::new(
            Duration::from_millis(config.backoff_initial_ms),
            Duration::from_millis(config.backoff_max_ms),
        )
    }

    /// The wait after the next failure, without counting one.
    pub fn peek(&self) -> Duration {
        self.next
    }

    /// A failure: the wait it takes; the one after is twice as long (at most the maximum).
    pub fn failed(&mut self) -> Duration {
        let wait = self.next;
        self.next = (wait * 2).min(self.max);
        wait
    }

    /// A success: the next failure waits the first wait again.
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn waits_double_up_to_the_maximum() {
        let mut b = Backoff::new(ms(100), ms(500));
        let waits: Vec<Duration> = (0..5).map(|_| b.failed()).collect();
        assert_eq!(waits, [ms(100), ms(200), ms(400), ms(500), ms(500)]);
        assert_eq!(b.peek(), ms(500));
    }

    #[test]
    fn a_success_starts_over() {
        let mut b = Backoff::new(ms(100), ms(500));
        b.failed();
        b.failed();
        assert_eq!(b.peek(), ms(400));
        b.reset();
        assert_eq!(b.peek(), ms(100));
        assert_eq!(b.failed(), ms(100));
    }

    #[test]
    fn a_first_wait_above_the_maximum_is_waited_once() {
        let mut b = Backoff::new(ms(800), ms(500));
        assert_eq!(b.failed(), ms(800));
        assert_eq!(b.failed(), ms(500));
    }

    #[test]
    fn a_zero_wait_stays_zero() {
        let mut b = Backoff::new(Duration::ZERO, ms(500));
        assert_eq!(b.failed(), Duration::ZERO);
        assert_eq!(b.failed(), Duration::ZERO);
    }
}
