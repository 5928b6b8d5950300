//! Per-source rate limits: events per second and a burst, one limit per source whatever the
//! number of ingest-api instances, kept in Redis (Sentry Relay keeps its quotas there too, as
//! counters of fixed windows; this is GCRA instead, exact across any window).
//!
//! The algorithm is GCRA (a token bucket stored as one timestamp, the "theoretical arrival
//! time"), run as one Lua script on Redis's own clock: atomic, so instances never race, and
//! exact to the microsecond across them. A batch is admitted whole or refused whole. When Redis
//! does not answer within `--redis-timeout-ms` the batch is admitted (fail open: the write that
//! follows needs Redis anyway, and a slow Redis must not turn into 429s for everyone).

use std::collections::HashMap;

use redis_queue::{QueueError, Shared, scripts};

/// One source's limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    /// Sustained events per second.
    pub per_sec: f64,
    /// Events a source may send at once after a quiet time (at least one batch).
    pub burst: u64,
}

impl Limit {
    /// Parses `RATE` or `RATE/BURST` (burst defaults to one second of rate).
    pub fn parse(s: &str) -> Result<Limit, String> {
        let (rate, burst) = match s.split_once('/') {
            Some((r, b)) => (r, Some(b)),
            None => (s, None),
        };
        let per_sec: f64 = rate
            .trim()
            .parse()
            .ok()
            .filter(|r: &f64| r.is_finite() && *r > 0.0 && *r <= 1e9)
            .ok_or_else(|| format!("{s:?}: the rate must be a number of events/s in (0, 1e9]"))?;
        let burst = match burst {
            Some(b) => b
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|b| (1..=1_000_000_000).contains(b))
                .ok_or_else(|| format!("{s:?}: the burst must be a whole number in 1..=1e9"))?,
            None => per_sec.ceil() as u64,
        };
        Ok(Limit { per_sec, burst })
    }
}

/// What the limiter decided for one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Admitted,
    /// Refused; the client may try again after this many seconds.
    Limited {
        retry_after_secs: u32,
    },
}

/// The limits of the configured sources, and where their state lives.
pub struct RateLimiter {
    limits: HashMap<String, Limit>,
    prefix: String,
}

impl RateLimiter {
    /// `stream_key` names the state keys (`<stream_key>:ratelimit:<source>`).
    pub fn new(limits: HashMap<String, Limit>, stream_key: &str) -> Self {
        RateLimiter {
            limits,
            prefix: format!("{stream_key}:ratelimit:"),
        }
    }

    pub fn limit(&self, source: &str) -> Option<Limit> {
        self.limits.get(source).copied()
    }

    /// Admits `events` events of `source`, or not. Sources without a limit are always admitted
    /// without a round trip.
    pub async fn admit(
        &self,
        redis: &Shared,
        source: &str,
        events: usize,
    ) -> Result<Admission, QueueError> {
        let Some(limit) = self.limit(source) else {
            return Ok(Admission::Admitted);
        };
        let interval_us = 1e6 / limit.per_sec;
        let key = format!("{}{source}", self.prefix);
        let mut cmd = scripts::evalsha(&scripts::GCRA);
        cmd.arg(1)
            .arg(&key)
            .arg(interval_us)
            .arg(limit.burst)
            .arg(events);
        let wait_us: i64 = scripts::query(redis, &scripts::GCRA, &cmd).await?;
        if wait_us <= 0 {
            return Ok(Admission::Admitted);
        }
        let secs = (wait_us as u64)
            .div_ceil(1_000_000)
            .clamp(1, u64::from(u32::MAX));
        Ok(Admission::Limited {
            retry_after_secs: secs as u32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse() {
        assert_eq!(
            Limit::parse("100/500"),
            Ok(Limit {
                per_sec: 100.0,
                burst: 500
            })
        );
        assert_eq!(
            Limit::parse("2.5"),
            Ok(Limit {
                per_sec: 2.5,
                burst: 3
            })
        );
        for bad in [
            "", "0", "-1", "x", "1/0", "1/x", "inf", "NaN", "1/-3", "1e10",
        ] {
            assert!(Limit::parse(bad).is_err(), "{bad}");
        }
    }
}
