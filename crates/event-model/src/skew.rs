//! The device's clock skew, derived once per batch: how far the server's clock when the body had
//! been read (`received_at`) is from the device's clock when it sent the batch (`sent_at`).
//!
//! A device whose clock is wrong stamps every event wrong by the same amount, and stamps
//! `sent_at` wrong by that amount too. Past a threshold the batch's events are stored at their
//! corrected time, `timestamp + (received_at − sent_at)` (Snowplow's "derived timestamp":
//! `received_at − (sent_at − timestamp)`), and the window of `docs/contract.md` judges that
//! corrected time. Below the threshold the skew is mostly network latency and nothing changes.

use time::{Duration, OffsetDateTime};

/// The server's clock for one batch, and the correction its device's clock needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchClock {
    /// The server's clock when the body had been read, truncated to the microsecond (as it is
    /// stored), so that the stored `received_at − sent_at` is exactly the correction applied.
    pub received_at: OffsetDateTime,
    /// What is added to each event's timestamp: `received_at − sent_at`, when its magnitude is
    /// over the threshold; `None` otherwise, and for a batch without `sent_at`.
    pub correction: Option<Duration>,
}

impl BatchClock {
    /// The clock of a batch received at `now` and sent at `sent_at` by the device's clock,
    /// corrected when the skew's magnitude is over `threshold`.
    pub fn new(
        sent_at: Option<OffsetDateTime>,
        now: OffsetDateTime,
        threshold: Duration,
    ) -> BatchClock {
        let received_at = to_micros(now);
        let correction = sent_at
            .map(|sent| received_at - sent)
            .filter(|skew| skew.abs() > threshold);
        BatchClock {
            received_at,
            correction,
        }
    }

    /// A clock that corrects nothing (the batch's `sent_at` is not looked at).
    pub fn uncorrected(now: OffsetDateTime) -> BatchClock {
        BatchClock {
            received_at: now,
            correction: None,
        }
    }
}

/// `t` with its nanoseconds cut to whole microseconds, as the entry and the row hold it.
fn to_micros(t: OffsetDateTime) -> OffsetDateTime {
    let nanos = t.nanosecond();
    t.replace_nanosecond(nanos - nanos % 1000).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-03-04 05:06:07.123456789 UTC);
    const THRESHOLD: Duration = Duration::seconds(300);

    #[test]
    fn corrects_only_past_the_threshold() {
        let at = |sent: Option<OffsetDateTime>| BatchClock::new(sent, NOW, THRESHOLD).correction;
        let received = datetime!(2026-03-04 05:06:07.123456 UTC);
        assert_eq!(BatchClock::new(None, NOW, THRESHOLD).received_at, received);
        for (sent, want) in [
            (None, None),
            (Some(received), None),
            (Some(received - THRESHOLD), None),
            (Some(received + THRESHOLD), None),
            (
                Some(received - THRESHOLD - Duration::MICROSECOND),
                Some(THRESHOLD + Duration::MICROSECOND),
            ),
            (
                Some(received + THRESHOLD + Duration::MICROSECOND),
                Some(-THRESHOLD - Duration::MICROSECOND),
            ),
            // Three days ahead: events are moved three days back.
            (Some(received + Duration::days(3)), Some(-Duration::days(3))),
            (
                Some(received - Duration::days(365)),
                Some(Duration::days(365)),
            ),
        ] {
            assert_eq!(at(sent), want, "{sent:?}");
        }
    }

    #[test]
    fn uncorrected_keeps_the_clock() {
        let c = BatchClock::uncorrected(NOW);
        assert_eq!((c.received_at, c.correction), (NOW, None));
    }
}
